//! Topics: the server's fan-out primitive. A connection subscribes to a
//! topic by name; a message published to it reaches every subscriber.
//!
//! Publishing does not write anything: it frames the payload once, fixes
//! its recipients (the subscribers at that moment, so a member who says
//! something and then leaves the room in the same read still gets what it
//! said), and puts it in the [`Outbox`]. At the end of the loop's turn the
//! server's delivery puts every frame on its recipients' queues, the bytes
//! shared and compressed once per window size, and closes recipients that
//! cannot keep up.

use super::{ConnId, IdMap};
use crate::protocol::frame::{FrameHeader, OpCode};
use std::collections::HashMap;
use std::ops::Range;

use std::sync::Arc;

/// The most bytes of frames one run holds; a frame that would pass it starts a new run.
pub const RUN_LIMIT: usize = 64 * 1024;

/// The largest payload [`OutFrame::new_in`] frames in its scratch buffer.
const SCRATCH_LIMIT: usize = 4096;

/// One framed message: header and payload in one shared buffer.
#[derive(Debug, Clone)]
pub struct OutFrame {
    bytes: Arc<[u8]>,
    header_len: usize,
}

/// Appends `payload` as one unmasked frame to `into`; returns its header's length.
fn frame_into(into: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) -> usize {
    let header = FrameHeader::new(opcode, payload.len() as u64);
    let start = into.len();
    header.encode(into);
    let header_len = into.len() - start;
    into.extend_from_slice(payload);
    header_len
}

impl OutFrame {
    /// Frames `payload` as one unmasked, final frame.
    pub fn new(opcode: OpCode, payload: &[u8]) -> OutFrame {
        let mut bytes = Vec::with_capacity(payload.len() + crate::protocol::frame::MAX_HEADER_LEN);
        let header_len = frame_into(&mut bytes, opcode, payload);
        OutFrame { bytes: Arc::from(bytes), header_len }
    }

    /// [`OutFrame::new`], a small frame put together in `scratch` first (kept
    /// from one frame to the next): one allocation, its `Arc`'s, instead of two.
    pub fn new_in(opcode: OpCode, payload: &[u8], scratch: &mut Vec<u8>) -> OutFrame {
        if payload.len() > SCRATCH_LIMIT {
            // Large: the allocation is little beside the copy, and the scratch stays small.
            return OutFrame::new(opcode, payload);
        }
        scratch.clear();
        let header_len = frame_into(scratch, opcode, payload);
        OutFrame { bytes: Arc::from(scratch.as_slice()), header_len }
    }

    /// The whole frame, as it goes on the wire uncompressed.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// The payload alone (to compress it, or to read it back in tests).
    pub fn payload(&self) -> &[u8] {
        self.bytes.get(self.header_len..).unwrap_or_default()
    }

    /// The frame's opcode.
    pub fn opcode(&self) -> OpCode {
        self.bytes.first().and_then(|b| OpCode::from_u8(b & 0x0F)).unwrap_or(OpCode::Text)
    }

    /// The frame's length on the wire, uncompressed.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the frame is empty (it never is: a header has at least two bytes).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Frames waiting to be delivered, each with its recipients, in order.
///
/// Consecutive frames that go to exactly the same connections (a busy room)
/// form one *run*, up to [`RUN_LIMIT`] bytes (or the outgoing queue's cap, if
/// smaller, so that a run fits wherever a frame would). Delivery joins a
/// run's frames into one buffer that every recipient's queue shares: one
/// queue entry and one contiguous copy into the kernel per member per turn,
/// however many messages the room had.
#[derive(Debug)]
pub struct Outbox {
    frames: Vec<OutFrame>,
    runs: Vec<Run>,
    recipients: Vec<ConnId>,
    run_limit: usize,
}

/// Frames `frames` of the outbox, all to `recipients`, `bytes` long together.
#[derive(Debug)]
struct Run {
    frames: Range<usize>,
    recipients: Range<usize>,
    bytes: usize,
}

impl Outbox {
    /// An empty outbox whose runs stay within `run_limit` bytes.
    pub fn new(run_limit: usize) -> Outbox {
        Outbox { frames: Vec::new(), runs: Vec::new(), recipients: Vec::new(), run_limit }
    }

    /// Queues `frame` for `to` (nothing if `to` is empty).
    pub fn push(&mut self, frame: OutFrame, to: impl IntoIterator<Item = ConnId>) {
        let start = self.recipients.len();
        self.recipients.extend(to);
        if self.recipients.len() == start {
            return;
        }
        let len = frame.len();
        self.frames.push(frame);
        let (earlier, new) = self.recipients.split_at(start);
        if let Some(last) = self.runs.last_mut()
            && last.bytes + len <= self.run_limit
            && earlier.get(last.recipients.clone()) == Some(new)
        {
            self.recipients.truncate(start);
            last.frames.end += 1;
            last.bytes += len;
            return;
        }
        let index = self.frames.len() - 1;
        self.runs.push(Run { frames: index..index + 1, recipients: start..self.recipients.len(), bytes: len });
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Every frame with its recipients, in the order they were made.
    pub fn iter(&self) -> impl Iterator<Item = (&OutFrame, &[ConnId])> {
        self.runs().flat_map(|(frames, to)| frames.iter().map(move |frame| (frame, to)))
    }

    /// Runs of consecutive frames with the same recipients, in order.
    pub fn runs(&self) -> impl Iterator<Item = (&[OutFrame], &[ConnId])> {
        self.runs.iter().filter_map(|run| {
            Some((self.frames.get(run.frames.clone())?, self.recipients.get(run.recipients.clone())?))
        })
    }

    /// Empties the outbox, keeping its capacity.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.runs.clear();
        self.recipients.clear();
    }
}

/// Marks slot `id` as having something queued in round `round`.
fn mark(queued_in: &mut Vec<u32>, id: ConnId, round: u32) {
    if queued_in.len() <= id.index {
        queued_in.resize(id.index + 1, 0);
    }
    if let Some(slot) = queued_in.get_mut(id.index) {
        *slot = round;
    }
}

/// Who subscribes to what, and the outbox of what was published.
#[derive(Debug)]
pub struct Topics {
    /// Subscribers of each topic, in the order they subscribed.
    subscribers: HashMap<Arc<str>, Vec<ConnId>>,
    /// The topics of each connection that has any, so that a connection
    /// that goes away leaves them all at once.
    subscriptions: IdMap<Vec<Arc<str>>>,
    outbox: Outbox,
    /// For each connection slot, the round of the outbox in which something
    /// was last queued for it: what tells whether a connection has anything
    /// waiting (see [`Topics::has_waiting`]) at the cost of one store per
    /// recipient.
    queued_in: Vec<u32>,
    /// The outbox's round: one more each time delivery takes it.
    round: u32,
    /// Where a small frame is put together (see [`OutFrame::new_in`]).
    scratch: Vec<u8>,
}

impl Topics {
    /// No topics yet; runs of deliveries within `run_limit` bytes.
    pub fn new(run_limit: usize) -> Topics {
        Topics {
            subscribers: HashMap::new(),
            subscriptions: IdMap::default(),
            outbox: Outbox::new(run_limit),
            queued_in: Vec::new(),
            round: 1,
            scratch: Vec::new(),
        }
    }

    /// Subscribes `id` to `topic` (once: subscribing again changes nothing).
    pub fn subscribe(&mut self, id: ConnId, topic: &str) {
        if self.queued_in.len() <= id.index {
            self.queued_in.resize(id.index + 1, 0);
        }
        let mine = self.subscriptions.entry(id).or_default();
        if mine.iter().any(|t| &**t == topic) {
            return;
        }
        let name: Arc<str> = match self.subscribers.get_key_value(topic) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(topic),
        };
        mine.push(Arc::clone(&name));
        self.subscribers.entry(name).or_default().push(id);
    }

    /// Unsubscribes `id` from `topic`; a topic without subscribers is forgotten.
    pub fn unsubscribe(&mut self, id: ConnId, topic: &str) {
        if let Some(mine) = self.subscriptions.get_mut(&id) {
            mine.retain(|t| &**t != topic);
            if mine.is_empty() {
                self.subscriptions.remove(&id);
            }
        }
        self.leave(id, topic);
    }

    /// Unsubscribes `id` from every topic (it is gone).
    pub fn unsubscribe_all(&mut self, id: ConnId) {
        for topic in self.subscriptions.remove(&id).unwrap_or_default() {
            self.leave(id, &topic);
        }
    }

    fn leave(&mut self, id: ConnId, topic: &str) {
        if let Some(members) = self.subscribers.get_mut(topic) {
            members.retain(|member| *member != id);
            if members.is_empty() {
                self.subscribers.remove(topic);
            }
        }
    }

    /// The subscribers of `topic`, in the order they subscribed.
    pub fn subscribers(&self, topic: &str) -> &[ConnId] {
        self.subscribers.get(topic).map_or(&[], Vec::as_slice)
    }

    /// Frames `payload` once and queues it for every subscriber of `topic`.
    pub fn publish(&mut self, topic: &str, opcode: OpCode, payload: &[u8]) {
        let Some(members) = self.subscribers.get(topic) else { return };
        // Every subscriber has its mark already (see `subscribe`): one store each.
        for member in members {
            if let Some(slot) = self.queued_in.get_mut(member.index) {
                *slot = self.round;
            }
        }
        self.outbox.push(OutFrame::new_in(opcode, payload, &mut self.scratch), members.iter().copied());
    }

    /// Queues `payload` for one connection, in order with what was published before.
    pub fn send_to(&mut self, id: ConnId, opcode: OpCode, payload: &[u8]) {
        mark(&mut self.queued_in, id, self.round);
        self.outbox.push(OutFrame::new_in(opcode, payload, &mut self.scratch), [id]);
    }

    /// Whether something waits in the outbox for `id`: then what is sent to
    /// it must wait behind that, or it would arrive first.
    pub fn has_waiting(&self, id: ConnId) -> bool {
        !self.outbox.is_empty() && self.queued_in.get(id.index) == Some(&self.round)
    }

    /// What waits for delivery.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// Takes the outbox out (so delivery can call back into the application,
    /// which may publish more); give it back with [`Topics::restore_outbox`]
    /// to keep its capacity.
    pub fn take_outbox(&mut self) -> Outbox {
        // What is published from now on is a new round; the marks of this one are spent.
        self.round = self.round.wrapping_add(1).max(1);
        let fresh = Outbox::new(self.outbox.run_limit);
        std::mem::replace(&mut self.outbox, fresh)
    }

    /// Returns an outbox taken with [`Topics::take_outbox`], after delivery.
    pub fn restore_outbox(&mut self, mut outbox: Outbox) {
        if self.outbox.is_empty() {
            outbox.clear();
            self.outbox = outbox;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(index: usize) -> ConnId {
        ConnId { index, generation: 1 }
    }

    #[test]
    fn a_frame_made_in_the_scratch_buffer_is_the_frame_made_alone() {
        // Both header lengths' edges, the scratch's limit on either side, and a large frame.
        let mut scratch = vec![0xAA; 70_000];
        for len in [0, 1, 125, 126, 127, 4095, SCRATCH_LIMIT, SCRATCH_LIMIT + 1, 65_535, 65_536, 70_000] {
            for opcode in [OpCode::Text, OpCode::Binary] {
                let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let (alone, shared) =
                    (OutFrame::new(opcode, &payload), OutFrame::new_in(opcode, &payload, &mut scratch));
                assert_eq!(shared.bytes(), alone.bytes(), "{len}");
                assert_eq!((shared.payload(), shared.opcode()), (&payload[..], opcode));
            }
        }
    }

    #[test]
    fn only_a_connection_with_something_in_the_outbox_has_anything_waiting() {
        let mut topics = Topics::new(RUN_LIMIT);
        topics.subscribe(id(1), "room");
        topics.subscribe(id(2), "room");
        assert!(!topics.has_waiting(id(1)));
        topics.publish("room", OpCode::Text, b"hi");
        assert!(topics.has_waiting(id(1)) && topics.has_waiting(id(2)));
        // Someone outside the room (an echo connection) may still be answered directly.
        assert!(!topics.has_waiting(id(3)));
        topics.send_to(id(3), OpCode::Text, b"you");
        assert!(topics.has_waiting(id(3)));
        // Once delivery has taken the outbox, nothing waits any more.
        let outbox = topics.take_outbox();
        assert_eq!(outbox.iter().count(), 2);
        assert!(!topics.has_waiting(id(1)) && !topics.has_waiting(id(3)));
        topics.restore_outbox(outbox);
        assert!(topics.outbox().is_empty());
    }

    #[test]
    fn a_connection_that_goes_leaves_every_topic_and_empty_topics_are_forgotten() {
        let mut topics = Topics::new(RUN_LIMIT);
        topics.subscribe(id(1), "a");
        topics.subscribe(id(1), "b");
        topics.subscribe(id(1), "a");
        topics.subscribe(id(2), "a");
        assert_eq!(topics.subscribers("a"), [id(1), id(2)], "once each, in order");
        topics.unsubscribe_all(id(1));
        assert_eq!(topics.subscribers("a"), [id(2)]);
        assert!(topics.subscribers("b").is_empty());
        assert!(!topics.subscribers.contains_key("b") && !topics.subscriptions.contains_key(&id(1)));
        topics.unsubscribe(id(2), "a");
        assert!(topics.subscribers.is_empty() && topics.subscriptions.is_empty());
    }
}
