//! Connection deadlines: one heap of 8-byte entries, at most one live entry per connection.
//!
//! An entry that fires early, because the connection was active since, is
//! simply re-armed, so a busy connection costs no heap work per message and
//! an idle one costs one wake-up per ping interval. Entries superseded by a
//! sooner one, or left by a connection that has gone, are stale: the
//! connection's `timer` field names its live one, and the rest are skipped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Bits of an entry that name its slot; the other 40 count milliseconds
/// (34 years of them).
const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const MAX_MS: u64 = u64::MAX >> SLOT_BITS;

/// Deadlines by connection slot, soonest first.
///
/// An entry is one `u64`, the deadline in whole milliseconds since the heap
/// was made, then the slot: 8 bytes a connection, where an `(Instant, usize)`
/// takes 24 (a third of what an idle connection costs beyond its slot). A
/// deadline is rounded up to its millisecond, so it never fires early, and
/// the rounded time is what `armed` holds. Slots past 2^24 (more connections
/// than one process has descriptors, in practice) keep their entries whole.
#[derive(Debug)]
pub(super) struct Timers {
    origin: Instant,
    heap: BinaryHeap<Reverse<u64>>,
    wide: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The soonest entry's time, kept so that the loop's look at every turn
    /// is one comparison.
    soonest: Option<Instant>,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers { origin: Instant::now(), heap: BinaryHeap::new(), wide: BinaryHeap::new(), soonest: None }
    }
}

impl Timers {
    /// Arms `slot`'s timer for `at`, unless its live entry (`armed`) is sooner already.
    #[inline]
    pub fn arm(&mut self, armed: &mut Option<Instant>, at: Instant, slot: usize) {
        // Checked before rounding (the common case, once a message: not sooner): rounding up keeps it so.
        if armed.is_some_and(|live| at >= live) {
            return;
        }
        self.push(armed, at, slot);
    }

    /// [`Timers::arm`]'s rare part, out of the way of its every-message check.
    #[inline(never)]
    fn push(&mut self, armed: &mut Option<Instant>, at: Instant, slot: usize) {
        let since = at.saturating_duration_since(self.origin);
        let ms =
            since.as_secs().saturating_mul(1000).saturating_add(u64::from(since.subsec_nanos().div_ceil(1_000_000)));
        let ms = ms.min(MAX_MS);
        let at = self.origin + Duration::from_millis(ms);
        if *armed == Some(at) {
            return; // sooner, but within the live entry's millisecond
        }
        *armed = Some(at);
        if self.soonest.is_none_or(|soonest| at < soonest) {
            self.soonest = Some(at);
        }
        match u64::try_from(slot) {
            Ok(narrow) if narrow <= SLOT_MASK => self.heap.push(Reverse(ms << SLOT_BITS | narrow)),
            _ => self.wide.push(Reverse((at, slot))),
        }
    }

    /// The soonest entry, live or stale.
    pub fn next(&self) -> Option<Instant> {
        self.soonest
    }

    /// Takes the soonest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        if self.soonest.is_none_or(|soonest| soonest > now) {
            return None;
        }
        let (entry, from_wide) = self.top()?;
        if from_wide {
            self.wide.pop();
        } else {
            self.heap.pop();
        }
        self.soonest = self.top().map(|((at, _), _)| at);
        Some(entry)
    }

    /// The soonest entry of the two heaps, and whether it is a whole one.
    fn top(&self) -> Option<((Instant, usize), bool)> {
        let narrow = self.heap.peek().map(|&Reverse(entry)| (self.instant(entry), (entry & SLOT_MASK) as usize));
        match (narrow, self.wide.peek().map(|&Reverse(entry)| entry)) {
            (Some(narrow), Some(wide)) if wide.0 < narrow.0 => Some((wide, true)),
            (Some(narrow), _) => Some((narrow, false)),
            (None, wide) => wide.map(|wide| (wide, true)),
        }
    }

    fn instant(&self, entry: u64) -> Instant {
        self.origin + Duration::from_millis(entry >> SLOT_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sooner_deadline_adds_an_entry() {
        let mut timers = Timers::default();
        let t0 = timers.origin;
        let mut armed = None;
        timers.arm(&mut armed, t0 + Duration::from_secs(10), 3);
        timers.arm(&mut armed, t0 + Duration::from_secs(20), 3);
        assert_eq!(timers.heap.len(), 1, "a later deadline waits for the live entry to fire");
        timers.arm(&mut armed, t0 + Duration::from_secs(5), 3);
        assert_eq!(armed, Some(t0 + Duration::from_secs(5)));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(4)), None);
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(5)), Some((t0 + Duration::from_secs(5), 3)));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(10)), "the next soonest, once the first is taken");
        // The superseded entry is still there, and stale: it no longer matches `armed` once re-armed.
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(60)), Some((t0 + Duration::from_secs(10), 3)));
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(60)), None);
        assert_eq!(timers.next(), None);
    }

    #[test]
    fn a_deadline_is_rounded_up_to_its_millisecond_and_never_fires_early() {
        let mut timers = Timers::default();
        let t0 = timers.origin;
        let mut armed = None;
        let at = t0 + Duration::from_micros(2_300);
        timers.arm(&mut armed, at, 7);
        let rounded = t0 + Duration::from_millis(3);
        assert_eq!(armed, Some(rounded), "what the connection holds is what the heap gives back");
        assert_eq!(timers.next(), Some(rounded));
        assert_eq!(timers.pop_due(at), None, "not due before its rounded time");
        assert_eq!(timers.pop_due(rounded - Duration::from_nanos(1)), None);
        assert_eq!(timers.pop_due(rounded), Some((rounded, 7)));
        // Two deadlines within the same millisecond: the second is not sooner, so no second entry.
        let mut armed = None;
        timers.arm(&mut armed, t0 + Duration::from_micros(4_900), 8);
        timers.arm(&mut armed, t0 + Duration::from_micros(4_100), 8);
        assert_eq!(timers.heap.len(), 1);
        // A deadline already past (before the heap was made) is due at once.
        let mut armed = None;
        timers.arm(&mut armed, t0 - Duration::from_millis(5), 9);
        assert_eq!(timers.pop_due(t0), Some((t0, 9)));
    }

    #[test]
    fn slots_and_times_at_the_edges_of_an_entry_keep_their_order() {
        let mut timers = Timers::default();
        let t0 = timers.origin;
        let wide = (SLOT_MASK + 1) as usize;
        let mut armed = [None; 4];
        timers.arm(&mut armed[0], t0 + Duration::from_millis(30), wide);
        timers.arm(&mut armed[1], t0 + Duration::from_millis(10), SLOT_MASK as usize);
        timers.arm(&mut armed[2], t0 + Duration::from_millis(20), 0);
        timers.arm(&mut armed[3], t0 + Duration::from_millis(5), wide + 1);
        assert_eq!((timers.heap.len(), timers.wide.len()), (2, 2), "slots past 2^24 keep whole entries");
        let order: Vec<usize> =
            std::iter::from_fn(|| timers.pop_due(t0 + Duration::from_secs(1)).map(|(_, slot)| slot)).collect();
        assert_eq!(order, [wide + 1, SLOT_MASK as usize, 0, wide], "soonest first, across both heaps");
        // Beyond 2^40 ms (34 years) a deadline is held at the last one an entry can say.
        let mut armed = None;
        timers.arm(&mut armed, t0 + Duration::from_secs(u64::from(u32::MAX) * 1000), 1);
        assert_eq!(timers.next(), Some(t0 + Duration::from_millis(MAX_MS)));
        assert_eq!(std::mem::size_of::<Reverse<u64>>(), 8);
    }
}
