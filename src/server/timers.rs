//! Connection deadlines: one heap, at most one live entry per connection.
//!
//! An entry that fires early, because the connection was active since, is
//! simply re-armed, so a busy connection costs no heap work per message and
//! an idle one costs one wake-up per ping interval. Entries superseded by a
//! sooner one, or left by a connection that has gone, are stale: the
//! connection's `timer` field names its live one, and the rest are skipped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Deadlines by connection slot, soonest first.
#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Timers {
    /// Arms `slot`'s timer for `at`, unless its live entry (`armed`) is sooner already.
    pub fn arm(&mut self, armed: &mut Option<Instant>, at: Instant, slot: usize) {
        if armed.is_none_or(|live| at < live) {
            *armed = Some(at);
            self.heap.push(Reverse((at, slot)));
        }
    }

    /// The soonest entry, live or stale.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the soonest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(entry)| entry),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_a_sooner_deadline_adds_an_entry() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut armed = None;
        timers.arm(&mut armed, t0 + Duration::from_secs(10), 3);
        timers.arm(&mut armed, t0 + Duration::from_secs(20), 3);
        assert_eq!(timers.heap.len(), 1, "a later deadline waits for the live entry to fire");
        timers.arm(&mut armed, t0 + Duration::from_secs(5), 3);
        assert_eq!(armed, Some(t0 + Duration::from_secs(5)));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(4)), None);
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(5)), Some((t0 + Duration::from_secs(5), 3)));
        // The superseded entry is still there, and stale: it no longer matches `armed` once re-armed.
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(60)), Some((t0 + Duration::from_secs(10), 3)));
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(60)), None);
    }
}
