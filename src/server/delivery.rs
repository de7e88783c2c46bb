//! Delivery: what the application published this turn goes onto its
//! recipients' queues, and every connection that got something is written
//! once at the end of the turn.
//!
//! A run (consecutive frames to the same recipients: a busy room) is joined
//! into one shared buffer, made on first need: raw, and compressed once per
//! window size for every recipient without server context takeover. A
//! member gets one queue entry and one contiguous write per turn, not one
//! per message. A recipient whose queue stays over its cap for longer than
//! the slow-consumer grace, or would pass four times the cap, is a slow
//! consumer: it is closed with 1008 and its unsent queue dropped, so one
//! stalled reader cannot make the server hold everything a room says, while
//! a reader that keeps up is never closed for a burst.

use super::Server;
use crate::app::topics::{OutFrame, Outbox};
use crate::app::{App, ConnId};
use crate::connection::outgoing::SharedFrame;
use crate::connection::{ConnectionConfig, WebSocketClient};
use crate::protocol::deflate::{Agreement, SharedDeflaters};
use crate::protocol::frame::{FrameHeader, RSV1};
use mio::Events;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::warn;

/// During a long write phase, the loop looks for new input after this many
/// writes, at most [`MAX_LOOKS`] times per turn.
const WRITES_PER_LOOK: usize = 64;
const MAX_LOOKS: usize = 16;

/// What delivery keeps between turns.
pub(super) struct Delivery {
    /// Connections with deliveries queued this turn, to be written at its end, in order.
    dirty: VecDeque<usize>,
    /// The events buffer for a look for input in the middle of a write phase.
    look_events: Events,
    slow_warning: super::Throttle,
    /// A look for input happened (so the application may have been called) since this was last cleared.
    pub(super) looked: bool,
}

impl Default for Delivery {
    fn default() -> Delivery {
        Delivery {
            dirty: VecDeque::new(),
            look_events: Events::with_capacity(256),
            slow_warning: Default::default(),
            looked: false,
        }
    }
}

/// Where delivery finds a recipient's connection.
pub(crate) trait Recipients {
    /// The connection `id` names, if it is still there.
    fn get(&mut self, id: ConnId) -> Option<Recipient<'_>>;
}

/// A connection that may be delivered to, and the list of those that got
/// something this turn (to be written at its end).
pub(crate) struct Recipient<'a> {
    pub client: &'a mut WebSocketClient,
    /// Whether it is on `written` already.
    listed: &'a mut bool,
    written: &'a mut VecDeque<usize>,
    index: usize,
}

impl Recipient<'_> {
    /// It got something: write it at the end of the turn (once).
    fn touched(self) {
        mark_dirty(self.listed, self.index, self.written);
    }
}

/// Puts every run of `outbox` on its recipients' queues; adds the
/// recipients whose queue would pass its hard cap to `slow` (once each),
/// and queues nothing more for them. (Those over the soft cap for longer
/// than their grace are closed by their own timer.) Returns the number of
/// messages queued (each recipient's copy counts).
pub(crate) fn queue_runs(
    outbox: &Outbox,
    to: &mut impl Recipients,
    deflaters: &mut SharedDeflaters,
    config: &ConnectionConfig,
    now: Instant,
    slow: &mut Vec<ConnId>,
) -> u64 {
    let mut sent = 0;
    let threshold = config.deflate.threshold;
    let hard_cap = config.hard_outgoing_cap();
    for (frames, recipients) in outbox.runs() {
        let mut raw: Option<SharedFrame> = None;
        let mut compressed: [Option<SharedFrame>; 16] = Default::default();
        let raw_len: usize = frames.iter().map(OutFrame::len).sum();
        for &id in recipients {
            let Some(recipient) = to.get(id) else { continue };
            let client = &mut *recipient.client;
            if !client.is_open() {
                continue;
            }
            let shared = match client.deflate_agreement() {
                Some(agreed) if agreed.server_no_context_takeover => {
                    let agreed = *agreed;
                    let slot = &mut compressed[usize::from(agreed.server_max_window_bits) % 16];
                    Some(&*slot.get_or_insert_with(|| compress_run(deflaters, &agreed, frames, threshold)))
                }
                // With its own compressor (context takeover), a connection compresses for itself.
                Some(_) => None,
                None => Some(&*raw.get_or_insert_with(|| join(frames, raw_len))),
            };
            let queued = client.queued();
            let size = shared.map_or(raw_len, |bytes| bytes.len());
            if !client.admits(size, hard_cap) {
                if !slow.contains(&id) {
                    slow.push(id);
                }
                continue;
            }
            match shared {
                Some(bytes) => client.queue_shared(bytes),
                None => {
                    for frame in frames {
                        client.send(frame.opcode(), frame.payload(), deflaters, config);
                    }
                }
            }
            client.note_backlog(queued, now, config);
            recipient.touched();
            sent += frames.len() as u64;
        }
    }
    sent
}

/// The frames of a run as one buffer (the frame itself when it is alone).
fn join(frames: &[OutFrame], len: usize) -> SharedFrame {
    match frames {
        [one] => Arc::clone(one.bytes()),
        _ => {
            let mut bytes = Vec::with_capacity(len);
            for frame in frames {
                bytes.extend_from_slice(frame.bytes());
            }
            SharedFrame::from(bytes)
        }
    }
}

/// The frames of a run as sent to every connection with this agreement, in
/// one buffer: each message compressed on its own (no context takeover), or
/// left raw where the shared compressors' rule says it is not worth it.
fn compress_run(
    deflaters: &mut SharedDeflaters,
    agreed: &Agreement,
    frames: &[OutFrame],
    threshold: usize,
) -> SharedFrame {
    let mut out = Vec::new();
    let mut body = Vec::new();
    for frame in frames {
        body.clear();
        if !deflaters.compress_if_worth(agreed, frame.payload(), threshold, &mut body) {
            out.extend_from_slice(frame.bytes());
            continue;
        }
        let header = FrameHeader { rsv: RSV1, ..FrameHeader::new(frame.opcode(), body.len() as u64) };
        header.encode(&mut out);
        out.extend_from_slice(&body);
    }
    SharedFrame::from(out)
}

/// The server's connections as delivery sees them.
struct Table<'a, C> {
    connections: &'a mut super::connections::Slab<C>,
    dirty: &'a mut VecDeque<usize>,
}

impl<C> Recipients for Table<'_, C> {
    fn get(&mut self, id: ConnId) -> Option<Recipient<'_>> {
        let conn = self.connections.get_id(id)?;
        Some(Recipient { client: &mut conn.client, listed: &mut conn.dirty, written: self.dirty, index: id.index })
    }
}

/// Puts a connection on the list to be written at the end of the turn (once).
fn mark_dirty(flag: &mut bool, index: usize, dirty: &mut VecDeque<usize>) {
    if !*flag {
        *flag = true;
        dirty.push_back(index);
    }
}

impl<A: App> Server<A> {
    /// Delivers what was published this turn, then writes every connection that got something.
    ///
    /// A long write phase (a room of thousands) stops every
    /// [`WRITES_PER_LOOK`] writes to read what has arrived meanwhile; what
    /// that input publishes is queued at once, so connections not yet
    /// written carry it in the same write.
    pub(super) fn deliver(&mut self, now: Instant) {
        let mut looks = MAX_LOOKS;
        let mut writes = 0usize;
        loop {
            // (A close can come alone too: from `App::on_deadline`, or another worker.)
            if !self.hub.topics.outbox().is_empty() || !self.hub.closes.is_empty() {
                self.queue_outbox(now);
                self.start_closes(now);
                continue;
            }
            let Some(index) = self.delivery.dirty.pop_front() else { break };
            let Some(conn) = self.connections.get_mut(index) else { continue };
            conn.dirty = false;
            self.service(index, false, now);
            writes += 1;
            if looks > 0 && writes.is_multiple_of(WRITES_PER_LOOK) && !self.delivery.dirty.is_empty() {
                looks -= 1;
                self.look_for_input();
            }
        }
    }

    /// Puts the outbox on its recipients' queues (marking them to be
    /// written), and closes the slow consumers. The application hears of
    /// each close when the connection is next serviced, in this same turn.
    fn queue_outbox(&mut self, now: Instant) {
        let mut slow = Vec::new();
        let outbox = self.hub.topics.take_outbox();
        let mut table = Table { connections: &mut self.connections, dirty: &mut self.delivery.dirty };
        let sent = queue_runs(&outbox, &mut table, &mut self.hub.deflaters, &self.config.connection, now, &mut slow);
        self.hub.tally.messages_sent += sent;
        self.hub.topics.restore_outbox(outbox);
        for id in slow {
            let Some(conn) = self.connections.get_id(id) else { continue };
            if let Some(skipped) = self.delivery.slow_warning.ready(now) {
                let queued = conn.client.queued();
                warn!(conn = id.generation, peer = %conn.peer(), queued, skipped, "closing a slow consumer (1008)");
            }
            conn.client.close_slow_consumer(crate::connection::SLOW_CONSUMER, now, &self.config.connection);
            mark_dirty(&mut conn.dirty, id.index, &mut self.delivery.dirty);
        }
    }

    /// Starts the closes that applications asked for while their
    /// connections still had deliveries waiting (now queued ahead of the Close).
    fn start_closes(&mut self, now: Instant) {
        for (id, code, reason) in std::mem::take(&mut self.hub.closes) {
            let Some(conn) = self.connections.get_id(id) else { continue };
            conn.client.close(code, &reason, now, &self.config.connection);
            mark_dirty(&mut conn.dirty, id.index, &mut self.delivery.dirty);
        }
    }

    /// In the middle of a long write phase, reads what has arrived since the
    /// turn began (without waiting), so that it joins the deliveries still
    /// to be written instead of waiting for a turn of its own.
    fn look_for_input(&mut self) {
        self.delivery.looked = true;
        let mut events = std::mem::replace(&mut self.delivery.look_events, Events::with_capacity(0));
        // An error (interrupted, or one the next full turn will report) just ends the look.
        if self.poll.poll(&mut events, Some(Duration::ZERO)).is_ok() {
            self.dispatch(&events, Instant::now());
        }
        self.delivery.look_events = events;
    }
}

#[cfg(test)]
mod tests;
