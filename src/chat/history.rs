//! The rooms' recent messages: at most `history_len` per room, and at most
//! `history_bytes` for all rooms together, the oldest going first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What one entry costs beyond its text: the shared string's counts, its
/// place in the room's queue and in the server-wide order (an estimate,
/// rounded up).
pub const ENTRY_OVERHEAD: usize = 64;

/// One `message` event, serialised, with its sequence number.
#[derive(Debug)]
struct Entry {
    seq: u64,
    event: Arc<str>,
}

impl Entry {
    fn cost(&self) -> usize {
        self.event.len() + ENTRY_OVERHEAD
    }
}

/// Every room's recent messages.
#[derive(Debug)]
pub struct History {
    per_room: usize,
    max_bytes: usize,
    rooms: HashMap<Arc<str>, VecDeque<Entry>>,
    /// Every entry in the order it was kept, oldest first, as (room, seq).
    /// Entries since dropped by their room's own count are skipped when
    /// they come up, and swept out when they are as many as the live ones.
    order: VecDeque<(Arc<str>, u64)>,
    /// What the entries held cost together.
    bytes: usize,
    /// How many entries are held.
    held: usize,
}

impl History {
    /// Keeps `per_room` messages per room, and `max_bytes` for all of them.
    pub fn new(per_room: usize, max_bytes: usize) -> History {
        History { per_room, max_bytes, rooms: HashMap::new(), order: VecDeque::new(), bytes: 0, held: 0 }
    }

    /// What the messages held cost, in bytes (see [`ENTRY_OVERHEAD`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `event` (message `seq` of `room`), dropping what no longer fits.
    pub fn push(&mut self, room: &str, seq: u64, event: Arc<str>) {
        self.push_evicting(room, seq, event, &mut Vec::new());
    }

    /// As [`History::push`], and says in `evicted` which messages (room,
    /// seq) the bound on all rooms' bytes pushed out: each is the oldest its
    /// room held, so a room's history is always a contiguous run of its
    /// latest messages. (A room's own count drops its oldest without a word:
    /// the store trims by the same count.)
    pub fn push_evicting(&mut self, room: &str, seq: u64, event: Arc<str>, evicted: &mut Vec<(Arc<str>, u64)>) {
        let entry = Entry { seq, event };
        if self.per_room == 0 {
            return;
        }
        if entry.cost() > self.max_bytes {
            // Larger than all history together: not kept, and neither is
            // anything older in its room (the history would have a gap).
            self.forget(room);
            evicted.push((Arc::from(room), seq));
            return;
        }
        let name: Arc<str> = match self.rooms.get_key_value(room) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(room),
        };
        let kept = self.rooms.entry(Arc::clone(&name)).or_default();
        if kept.len() == self.per_room
            && let Some(oldest) = kept.pop_front()
        {
            self.bytes -= oldest.cost();
            self.held -= 1;
        }
        self.bytes += entry.cost();
        self.held += 1;
        kept.push_back(entry);
        self.order.push_back((name, seq));
        while self.bytes > self.max_bytes {
            match self.drop_oldest() {
                Some(gone) => evicted.push(gone),
                None => break,
            }
        }
        if self.order.len() > 2 * self.held + 64 {
            let rooms = &self.rooms;
            self.order.retain(|(room, seq)| rooms.get(room).is_some_and(|kept| holds(kept, *seq)));
        }
    }

    /// Drops the oldest message held, in whichever room it is, and says which.
    fn drop_oldest(&mut self) -> Option<(Arc<str>, u64)> {
        while let Some((room, seq)) = self.order.pop_front() {
            let Some(kept) = self.rooms.get_mut(&room) else { continue };
            if kept.front().is_some_and(|oldest| oldest.seq == seq)
                && let Some(oldest) = kept.pop_front()
            {
                self.bytes -= oldest.cost();
                self.held -= 1;
                if kept.is_empty() {
                    self.rooms.remove(&room);
                }
                return Some((room, seq));
            }
        }
        None
    }

    /// Whether `room` holds any message.
    pub fn holds_any(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|kept| !kept.is_empty())
    }

    /// The messages `room` holds, oldest first.
    pub fn of(&self, room: &str) -> impl Iterator<Item = &Arc<str>> {
        self.rooms.get(room).into_iter().flatten().map(|entry| &entry.event)
    }

    /// The messages of `room` after `seq`, oldest first, if the history
    /// still holds every one of them up to `last` (the room's latest);
    /// `None` if some are gone, or `seq` is past `last`.
    pub fn after(&self, room: &str, seq: u64, last: u64) -> Option<impl Iterator<Item = &Arc<str>>> {
        let kept = self.rooms.get(room);
        if seq > last {
            return None;
        }
        if seq < last {
            // Entries are contiguous and go oldest first, so the first one held decides.
            let first = kept.and_then(VecDeque::front)?.seq;
            if first > seq + 1 {
                return None;
            }
        }
        Some(kept.into_iter().flatten().filter(move |entry| entry.seq > seq).map(|entry| &entry.event))
    }

    /// Forgets `room`'s messages (the room is gone).
    pub fn forget(&mut self, room: &str) {
        if let Some(kept) = self.rooms.remove(room) {
            self.bytes -= kept.iter().map(Entry::cost).sum::<usize>();
            self.held -= kept.len();
        }
    }
}

/// Whether `kept` (in order of seq) still holds message `seq`.
fn holds(kept: &VecDeque<Entry>, seq: u64) -> bool {
    kept.front().is_some_and(|first| first.seq <= seq) && kept.back().is_some_and(|last| seq <= last.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(history: &'a History, room: &str) -> Vec<&'a str> {
        history.of(room).map(|event| &**event).collect()
    }

    #[test]
    fn each_room_keeps_its_last_messages_by_count() {
        let mut history = History::new(2, 1 << 20);
        for (seq, text) in ["one", "two", "three"].iter().enumerate() {
            history.push("a", seq as u64 + 1, Arc::from(*text));
        }
        assert_eq!(texts(&history, "a"), ["two", "three"]);
        assert_eq!(history.bytes(), 3 + 5 + 2 * ENTRY_OVERHEAD);
    }

    #[test]
    fn all_rooms_together_keep_no_more_than_the_bytes_allowed_oldest_first() {
        let entry = 100 + ENTRY_OVERHEAD;
        let mut history = History::new(100, 3 * entry);
        let text = |c: char| Arc::<str>::from(c.to_string().repeat(100));
        history.push("a", 1, text('a'));
        history.push("b", 1, text('b'));
        history.push("a", 2, text('c'));
        assert_eq!(history.bytes(), 3 * entry);
        // A fourth pushes out the oldest of all: room a's first.
        history.push("b", 2, text('d'));
        assert_eq!(history.bytes(), 3 * entry);
        assert_eq!(texts(&history, "a"), [&*text('c')]);
        assert_eq!(texts(&history, "b").len(), 2);
        // A room that goes takes its bytes with it.
        history.forget("b");
        assert_eq!(history.bytes(), entry);
        // A message larger than everything allowed is not kept at all, and
        // its room keeps nothing older (no gap before what comes next).
        let mut evicted = Vec::new();
        history.push_evicting("a", 3, Arc::from("x".repeat(4 * entry)), &mut evicted);
        assert_eq!(history.bytes(), 0);
        assert_eq!(evicted, [(Arc::<str>::from("a"), 3)]);
        history.push_evicting("a", 4, text('e'), &mut evicted);
        assert!(history.after("a", 2, 4).is_none(), "3 is not held: no resume across it");
        assert_eq!(history.after("a", 3, 4).map(Iterator::count), Some(1));
    }

    #[test]
    fn after_a_sequence_number_only_while_every_later_message_is_held() {
        let mut history = History::new(3, 1 << 20);
        for seq in 1..=5 {
            history.push("a", seq, Arc::from(format!("m{seq}")));
        }
        let after = |seq| history.after("a", seq, 5).map(|events| events.map(|e| e.to_string()).collect::<Vec<_>>());
        // Held: 3, 4, 5.
        assert_eq!(after(2), Some(vec!["m3".into(), "m4".into(), "m5".into()]));
        assert_eq!(after(4), Some(vec!["m5".into()]));
        assert_eq!(after(5), Some(vec![]), "nothing missed");
        assert_eq!(after(1), None, "message 2 is gone");
        assert_eq!(after(0), None);
        assert_eq!(after(6), None, "from the future: another epoch's number");
        // A room that holds nothing can still say "nothing missed".
        assert_eq!(history.after("empty", 0, 0).map(Iterator::count), Some(0));
        assert!(history.after("empty", 0, 3).is_none());
    }

    #[test]
    fn the_order_list_stays_near_the_entries_held() {
        // Rooms of one message each, over and over: every push drops its room's last.
        let mut history = History::new(1, 1 << 30);
        for seq in 1..=10_000 {
            history.push("busy", seq, Arc::from("m"));
        }
        assert_eq!(history.held, 1);
        assert!(history.order.len() <= 2 + 64 + 1, "{}", history.order.len());
        assert_eq!(texts(&history, "busy"), ["m"]);
    }
}
