//! The chat on a node's durable store (issue 20; the store's side is
//! [`broker::store`](crate::broker::store)): a message is shown, its
//! sender's own copy included, only once the batch holding it is committed.
//!
//! A message said is numbered at once (from its room's `assigned`), made
//! into the event its room will see, and waits in `pending`. At the end of
//! the loop's turn, if no batch is being written, everything pending is
//! handed to the store as one batch (group commit: one transaction, one
//! fsync, for the whole turn). When the store says the batch is on the disk
//! its messages go into the memory history and out to their rooms (the
//! sender's copy, with its `seq`, is its acknowledgement), and the next
//! batch goes. When it says the batch failed (a full disk, an I/O error),
//! nothing of it was kept: each room's numbering goes back to its last
//! committed message, each sender is told `unavailable`, and the room's
//! messages still pending are numbered again after it.
//!
//! While too much waits ([`MAX_PENDING`], [`MAX_PENDING_BYTES`]) senders'
//! input pauses; past twice that (many senders, each with a read's worth of
//! messages already in) a message is refused with `unavailable`, so the
//! memory that waits for the disk stays bounded.
//!
//! A room with no members keeps its numbering while its history holds a
//! message (it is *dormant*: not counted by `--max-rooms`, not listed), so a
//! client that comes back, or the server after a restart, goes on from the
//! same `seq` in the same `epoch`. The disk holds what the memory history
//! holds: what the bound on all rooms' bytes pushes out is dropped from the
//! disk in the next batch, and a dormant room whose last message went is
//! forgotten there too.

use super::{Chat, LOBBY, Room, code, events, is_valid_name};
use crate::app::{ConnId, Context, Effect, Hub};
use crate::broker::store::{Batch, Committed, Loaded, Record, RoomState, Store};
use crate::protocol::OpCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How many messages may wait for the disk before their senders' input is
/// paused (then each sender's next message waits in TCP).
pub const MAX_PENDING: usize = 16_384;

/// How many bytes of events may wait for the disk before senders are paused.
pub const MAX_PENDING_BYTES: usize = 16 << 20;

/// How long a sender's input pauses while the store is behind; it is read
/// again then, and paused again if the store is still behind.
const BEHIND_PAUSE: Duration = Duration::from_millis(10);

/// The chat's part of a store. See the [module](self).
pub(super) struct Persist {
    store: Box<dyn Store>,
    /// Said since the last batch went, numbered, in order; with their senders.
    pending: Vec<Record>,
    pending_from: Vec<ConnId>,
    /// The events' bytes in `pending`.
    pending_bytes: usize,
    /// The batch being written.
    in_flight: Option<InFlight>,
    next_id: u64,
    /// What the memory history pushed out, to drop from the disk next.
    drops: Vec<(Arc<str>, u64)>,
    /// Rooms to forget on the disk next.
    forgets: Vec<Arc<str>>,
    /// Rooms without members whose numbering is kept (see the module).
    dormant: HashMap<String, Room>,
    /// Outcomes taken from the store (kept for its capacity).
    outcomes: Vec<Committed>,
    /// Batches committed and failed, messages refused, pauses: for the metrics.
    committed: u64,
    failed: u64,
    refused: u64,
    behind: u64,
}

impl std::fmt::Debug for Persist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persist")
            .field("pending", &self.pending.len())
            .field("in_flight", &self.in_flight.as_ref().map(|flight| flight.records.len()))
            .field("dormant", &self.dormant.len())
            .finish_non_exhaustive()
    }
}

/// A batch being written: what to show once it is committed.
#[derive(Debug)]
struct InFlight {
    id: u64,
    /// Its messages (shared with the store), and each one's sender.
    records: Arc<Vec<Record>>,
    from: Vec<ConnId>,
    /// Each room's last number in it.
    rooms: Vec<(Arc<str>, u64)>,
    /// Given back to be tried again if the batch fails.
    drops: Vec<(Arc<str>, u64)>,
    forgets: Vec<Arc<str>>,
}

/// Where a batch's outcome goes: straight to this loop's [`Hub`] (one
/// worker: nothing copied, nothing written down), or written down as
/// [`Effect`]s for every worker (the shared chat, the tests).
pub trait Outlet {
    /// `event` to every member of `room`.
    fn publish(&mut self, room: &Arc<str>, event: &Arc<str>);
    /// `bytes` (a text frame's) to the connection `to`.
    fn send(&mut self, to: ConnId, bytes: &Arc<[u8]>);
}

impl Outlet for Hub {
    fn publish(&mut self, room: &Arc<str>, event: &Arc<str>) {
        self.topics.publish(room, OpCode::Text, event.as_bytes());
    }

    fn send(&mut self, to: ConnId, bytes: &Arc<[u8]>) {
        self.topics.send_to(to, OpCode::Text, bytes);
    }
}

impl Outlet for Vec<Effect> {
    fn publish(&mut self, room: &Arc<str>, event: &Arc<str>) {
        let bytes: Arc<str> = Arc::clone(event);
        self.push(Effect::Publish { topic: Arc::clone(room), opcode: OpCode::Text, bytes: bytes.into() });
    }

    fn send(&mut self, to: ConnId, bytes: &Arc<[u8]>) {
        self.push(Effect::Send { to, opcode: OpCode::Text, bytes: Arc::clone(bytes) });
    }
}

impl Persist {
    /// Whether so much waits that senders should be slowed down.
    fn is_behind(&self) -> bool {
        self.pending.len() >= MAX_PENDING || self.pending_bytes >= MAX_PENDING_BYTES
    }

    /// Whether so much waits that a message is refused.
    fn is_full(&self) -> bool {
        self.pending.len() >= 2 * MAX_PENDING || self.pending_bytes >= 2 * MAX_PENDING_BYTES
    }

    /// The messages waiting for the disk (pending and being written).
    fn waiting(&self) -> usize {
        self.pending.len() + self.in_flight.as_ref().map_or(0, |flight| flight.records.len())
    }

    /// The store's numbers for the metrics.
    pub(super) fn report(&self, report: &mut crate::app::stats::Report) {
        report.counter("rust_chat_store_commits", "Batches of messages the store committed.", self.committed);
        report.counter(
            "rust_chat_store_failures",
            "Batches the store could not commit (their messages were refused with unavailable).",
            self.failed,
        );
        report.counter(
            "rust_chat_store_refused",
            "Messages refused because the store failed or was too far behind.",
            self.refused,
        );
        report.counter(
            "rust_chat_store_behind",
            "Times a sender's input was paused because too much waited for the disk.",
            self.behind,
        );
        report.gauge("rust_chat_store_waiting", "Messages waiting for the disk now.", self.waiting() as i64);
        report.gauge(
            "rust_chat_dormant_rooms",
            "Rooms without members whose history is kept.",
            self.dormant.len() as i64,
        );
    }
}

impl Chat {
    /// Keeps this chat's rooms in `store` from now on, starting from what it
    /// held (`loaded`): rooms, their numbering and epochs, their history.
    /// Call it before anyone joins (and not with rooms across nodes).
    pub fn persist(&mut self, store: Box<dyn Store>, loaded: Loaded) {
        let mut persist = Persist {
            store,
            pending: Vec::new(),
            pending_from: Vec::new(),
            pending_bytes: 0,
            in_flight: None,
            next_id: 1,
            drops: Vec::new(),
            forgets: Vec::new(),
            dormant: HashMap::new(),
            outcomes: Vec::new(),
            committed: 0,
            failed: 0,
            refused: 0,
            behind: 0,
        };
        for (state, records) in loaded.rooms {
            let name = state.name.to_string();
            let lobby = name == LOBBY;
            if !is_valid_name(&name) || name != name.to_ascii_lowercase() || (records.is_empty() && !lobby) {
                // No room of ours, or one with nothing left to resume from.
                persist.forgets.push(state.name);
                continue;
            }
            let room = Room { seq: state.seq, assigned: state.seq, epoch: state.epoch, ..Room::new() };
            for record in records.into_iter().filter(|record| record.seq <= state.seq) {
                self.history.push_evicting(&name, record.seq, record.event, &mut persist.drops);
            }
            if lobby {
                self.rooms.insert(name, room);
            } else {
                persist.dormant.insert(name, room);
            }
        }
        tracing::info!(
            rooms = persist.dormant.len() + 1,
            messages = self.history.bytes(),
            "store: rooms restored (messages is their history's bytes)"
        );
        self.persist = Some(Box::new(persist));
        // Rooms the restored history could not hold go at once.
        let gone: Vec<(Arc<str>, u64)> = self.persist.as_ref().map(|p| p.drops.clone()).unwrap_or_default();
        self.settle(gone.iter().map(|(room, _)| &**room));
    }

    /// Whether this chat keeps its rooms in a store.
    pub fn persists(&self) -> bool {
        self.persist.is_some()
    }

    /// `say` with a store: the message is numbered and waits for the end of
    /// the turn. The sender's input pauses while the store is behind; past
    /// twice the bound the message is refused.
    pub(super) fn said(&mut self, text: &str, action: bool, ctx: &mut Context<'_>) -> bool {
        let Some(persist) = self.persist.as_mut() else { return false };
        let Some(member) = self.members.get(&ctx.id()) else { return true };
        if persist.is_full() {
            persist.refused += 1;
            let message = "the server is behind writing messages to its disk; this one was not sent";
            ctx.send_text(&events::error(code::UNAVAILABLE, message));
            ctx.pause_reading_until(ctx.now() + BEHIND_PAUSE);
            return true;
        }
        let Some(room) = self.rooms.get_mut(&member.room) else { return true };
        room.assigned += 1;
        let seq = room.assigned;
        // A busy room's messages come one after another: share its name.
        let name = match persist.pending.last().filter(|last| *last.room == *member.room) {
            Some(last) => Arc::clone(&last.room),
            None => Arc::from(member.room.as_str()),
        };
        let words = (&*name, member.nick.as_str(), text);
        let event = events::shared_message(&mut self.scratch, words, ctx.unix_time_ms(), seq, action);
        persist.pending_bytes += event.len();
        persist.pending.push(Record { room: name, seq, event });
        persist.pending_from.push(ctx.id());
        if persist.is_behind() {
            persist.behind += 1;
            ctx.pause_reading_until(ctx.now() + BEHIND_PAUSE);
        }
        true
    }

    /// The room `name`, with or without members.
    fn any_room(&mut self, name: &str) -> Option<&mut Room> {
        match self.rooms.get_mut(name) {
            Some(room) => Some(room),
            None => self.persist.as_mut()?.dormant.get_mut(name),
        }
    }

    /// With a store: the room `name` has lost its last member. It stays
    /// dormant while it has something to resume from; returns `false` if
    /// there is no store (the room is then removed).
    pub(super) fn make_dormant(&mut self, name: &str) -> bool {
        if self.persist.is_none() {
            return false;
        }
        if let (Some(room), Some(persist)) = (self.rooms.remove(name), self.persist.as_mut()) {
            persist.dormant.insert(name.to_string(), room);
        }
        self.settle(std::iter::once(name));
        true
    }

    /// A dormant room being entered again, with its numbering.
    pub(super) fn wake_room(&mut self, name: &str) -> Option<Room> {
        self.persist.as_mut()?.dormant.remove(name)
    }

    /// Forgets the dormant rooms among `names` that have nothing left: no
    /// history, nothing waiting for the disk.
    fn settle<'a>(&mut self, names: impl Iterator<Item = &'a str>) {
        let Some(persist) = self.persist.as_mut() else { return };
        for name in names {
            let Some(room) = persist.dormant.get(name) else { continue };
            if self.history.holds_any(name) || room.assigned > room.seq {
                continue;
            }
            let ever = room.seq > 0;
            persist.dormant.remove(name);
            if ever {
                // Its last messages were pushed out: the drops are covered by the forget.
                persist.drops.retain(|(room, _)| &**room != name);
                persist.forgets.push(Arc::from(name));
            }
        }
    }

    /// The end of the loop's turn: if no batch is being written, hand what
    /// is pending to the store as one batch.
    pub fn flush_store(&mut self) {
        let Some(persist) = self.persist.as_mut() else { return };
        if persist.in_flight.is_some()
            || (persist.pending.is_empty() && persist.drops.is_empty() && persist.forgets.is_empty())
        {
            return;
        }
        // The next turn's as many again, without growing from nothing.
        let (len, from_len) = (persist.pending.len(), persist.pending_from.len());
        let records = Arc::new(std::mem::replace(&mut persist.pending, Vec::with_capacity(len)));
        let from = std::mem::replace(&mut persist.pending_from, Vec::with_capacity(from_len));
        persist.pending_bytes = 0;
        let mut states: Vec<RoomState> = Vec::new();
        let mut index: HashMap<Arc<str>, usize> = HashMap::new();
        // A stretch of messages to one room at a time: one look-up for each stretch.
        let mut last: Option<usize> = None;
        for record in records.iter() {
            if let Some(state) = last.and_then(|at| states.get_mut(at)).filter(|state| *state.name == *record.room) {
                state.seq = record.seq;
                continue;
            }
            last = match index.get(&record.room) {
                Some(&at) => {
                    if let Some(state) = states.get_mut(at) {
                        state.seq = record.seq;
                    }
                    Some(at)
                }
                None => {
                    // A room with messages waiting is kept (dormant if it has no members).
                    let Some(room) = self.any_room(&record.room) else { continue };
                    let state =
                        RoomState { name: Arc::clone(&record.room), epoch: room.epoch.clone(), seq: record.seq };
                    index.insert(Arc::clone(&record.room), states.len());
                    states.push(state);
                    Some(states.len() - 1)
                }
            };
        }
        let Some(persist) = self.persist.as_mut() else { return };
        let id = persist.next_id;
        persist.next_id += 1;
        let (mut drops, forgets) = (std::mem::take(&mut persist.drops), std::mem::take(&mut persist.forgets));
        // A drop beside a forget of its room is of the room's old life (given back by a failed
        // batch): the forget covers it, and on the disk it would raise a new room's floor.
        drops.retain(|(room, _)| !forgets.contains(room));
        let rooms = states.iter().map(|state| (Arc::clone(&state.name), state.seq)).collect();
        let batch =
            Batch { id, rooms: states, records: Arc::clone(&records), drop: drops.clone(), forget: forgets.clone() };
        persist.in_flight = Some(InFlight { id, records, from, rooms, drops, forgets });
        persist.store.commit(batch);
    }

    /// Takes in what the store has finished: the messages of a committed
    /// batch go into the history and to their rooms (as `effects`); those
    /// of a failed one are refused (`unavailable` to each sender).
    pub fn take_committed(&mut self, out: &mut impl Outlet) {
        let Some(persist) = self.persist.as_mut() else { return };
        let mut outcomes = std::mem::take(&mut persist.outcomes);
        persist.store.take(&mut outcomes);
        for outcome in outcomes.drain(..) {
            let Some(persist) = self.persist.as_mut() else { break };
            let Some(flight) = persist.in_flight.take_if(|flight| flight.id == outcome.id) else { continue };
            match outcome.result {
                Ok(()) => self.show(flight, out),
                Err(why) => self.refuse(flight, &why, out),
            }
        }
        if let Some(persist) = self.persist.as_mut() {
            persist.outcomes = outcomes;
        }
    }

    /// A committed batch: into the history, out to the rooms.
    fn show(&mut self, flight: InFlight, out: &mut impl Outlet) {
        let mut evicted = Vec::new();
        for (name, seq) in &flight.rooms {
            if let Some(room) = self.any_room(name) {
                room.seq = room.seq.max(*seq);
            }
        }
        for record in flight.records.iter() {
            self.history.push_evicting(&record.room, record.seq, Arc::clone(&record.event), &mut evicted);
            out.publish(&record.room, &record.event);
        }
        if let Some(persist) = self.persist.as_mut() {
            persist.committed += 1;
            persist.drops.extend(evicted.iter().cloned());
        }
        // A room left while its messages waited for the disk may have nothing left now.
        let names = flight.rooms.iter().map(|(room, _)| &**room);
        self.settle(evicted.iter().map(|(room, _)| &**room).chain(names));
    }

    /// A failed batch: nothing of it is on the disk, none of it is shown.
    fn refuse(&mut self, flight: InFlight, why: &str, out: &mut impl Outlet) {
        let error = events::error(code::UNAVAILABLE, "the server could not store this message; it was not sent");
        let error: Arc<[u8]> = Arc::from(error.into_bytes());
        let rooms: Vec<Arc<str>> = flight.rooms.iter().map(|(name, _)| Arc::clone(name)).collect();
        for from in &flight.from {
            out.send(*from, &error);
        }
        for name in &rooms {
            if let Some(room) = self.any_room(name) {
                // Its numbers go back to its last committed message.
                room.assigned = room.seq;
            }
        }
        // The rooms' messages said since were numbered after this batch's: number them again.
        if let Some(mut pending) = self.persist.as_mut().map(|persist| std::mem::take(&mut persist.pending)) {
            let failed: std::collections::HashSet<&Arc<str>> = rooms.iter().collect();
            for record in pending.iter_mut().filter(|record| failed.contains(&record.room)) {
                let Some(room) = self.any_room(&record.room) else { continue };
                room.assigned += 1;
                record.seq = room.assigned;
                if let Some(event) = events::renumbered(&record.event, record.seq) {
                    record.event = Arc::from(event);
                }
            }
            if let Some(persist) = self.persist.as_mut() {
                persist.pending = pending;
            }
        }
        let Some(persist) = self.persist.as_mut() else { return };
        persist.failed += 1;
        persist.refused += flight.records.len() as u64;
        tracing::warn!(messages = flight.records.len(), "store: a batch failed, its messages were refused: {why}");
        persist.drops.extend(flight.drops);
        persist.forgets.extend(flight.forgets);
        self.settle(rooms.iter().map(|room| &**room));
    }
}

#[cfg(test)]
mod tests;
