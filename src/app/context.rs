//! What an application can do from a call ([`Context`]): send to and close
//! its connection, pause its input, publish and subscribe; done at once on
//! the hub, or written down as [`Effect`]s by a recording context.

#[cfg(doc)]
use super::App;
use super::{ConnId, Effect, Hub, Message};
use crate::connection::Reply;
use crate::protocol::OpCode;
use crate::protocol::close_code;
use crate::protocol::message::is_valid_close_code;
use std::time::Instant;

/// What an application can do from a call: about this connection (send,
/// close) and about topics (publish, subscribe, unsubscribe).
pub struct Context<'a> {
    pub(super) id: ConnId,
    pub(super) now: Instant,
    /// This connection's queue; `None` in a detached context (and so in `on_close`).
    pub(super) reply: Option<Reply<'a>>,
    pub(super) out: Out<'a>,
}

/// Writes a send down (out of line: the hot path is the queue's).
#[cold]
#[inline(never)]
fn record_send(effects: &mut Vec<Effect>, to: ConnId, opcode: OpCode, payload: &[u8]) {
    effects.push(Effect::Send { to, opcode, bytes: payload.into() });
}

/// Where a context's effects go.
pub(super) enum Out<'a> {
    /// Done at once, on this server's topics and outbox.
    Hub(&'a mut Hub),
    /// Written down (see [`Context::recording`]).
    Record { effects: &'a mut Vec<Effect>, clock: fn() -> u64 },
}

impl<'a> Context<'a> {
    /// A context without a connection queue: what it sends to its
    /// connection goes through the outbox like a publish. For tests, tools
    /// and [`App::on_close`].
    pub fn detached(id: ConnId, now: Instant, hub: &'a mut Hub) -> Context<'a> {
        Context { id, now, reply: None, out: Out::Hub(hub) }
    }

    /// A context that does nothing but write down, in order, what the call
    /// asks for, into `effects` (to be [applied](Hub::apply) later, perhaps
    /// on other servers). `clock` is the wall clock it reports.
    pub fn recording(id: ConnId, now: Instant, clock: fn() -> u64, effects: &'a mut Vec<Effect>) -> Context<'a> {
        Context { id, now, reply: None, out: Out::Record { effects, clock } }
    }

    /// The connection this call is about.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The time of the loop's turn (monotonic).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The wall-clock time, in milliseconds since the Unix epoch.
    pub fn unix_time_ms(&self) -> u64 {
        (self.clock())()
    }

    /// The wall clock this context reports (for a [recording](Context::recording) one made from it).
    pub fn clock(&self) -> fn() -> u64 {
        match &self.out {
            Out::Hub(hub) => hub.clock,
            Out::Record { clock, .. } => *clock,
        }
    }

    /// Does what `effect` says (see [`Hub::apply`]); an effect on this
    /// connection goes through this call's own means (its queue, its close,
    /// its pause). In a recording context, writes it down.
    pub fn apply(&mut self, effect: Effect) {
        if effect.connection() == Some(self.id) {
            match effect {
                Effect::Send { opcode, bytes, .. } => return self.send_frame(opcode, &bytes),
                Effect::Close { code, reason, .. } => return self.close(code, &reason),
                Effect::Pause { until, .. } => return self.pause_reading_until(until),
                _ => {}
            }
        }
        match &mut self.out {
            Out::Hub(hub) => hub.apply(effect),
            Out::Record { effects, .. } => effects.push(effect),
        }
    }

    /// Sends a text message to this connection.
    #[inline]
    pub fn send_text(&mut self, text: &str) {
        self.send_frame(OpCode::Text, text.as_bytes());
    }

    /// Sends a binary message to this connection.
    #[inline]
    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.send_frame(OpCode::Binary, bytes);
    }

    /// Sends `message` (text or binary, as it is) to this connection.
    #[inline]
    pub fn send(&mut self, message: Message<'_>) {
        self.send_frame(message.opcode(), message.as_bytes());
    }

    #[inline(always)]
    fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        match (&mut self.reply, &mut self.out) {
            // Straight onto the queue, unless something for this connection
            // waits in the outbox (a publish earlier in the turn): then behind
            // it, so that it receives everything in the order it was said.
            (Some(reply), Out::Hub(hub)) if !hub.topics.has_waiting(self.id) => {
                reply.send(opcode, payload, &mut hub.deflaters);
                hub.tally.messages_sent += 1;
            }
            (_, Out::Hub(hub)) => hub.topics.send_to(self.id, opcode, payload),
            (_, Out::Record { effects, .. }) => record_send(effects, self.id, opcode, payload),
        }
    }

    /// Starts closing this connection (the close handshake, RFC 6455 §7.1.2)
    /// with `code` and `reason` once the call returns; everything sent to it
    /// before goes out first. A code that may not be sent on the wire (1005,
    /// 1006, 1015, or one outside the ranges of §7.4) is sent as 1011. In
    /// [`App::on_open`] it refuses the connection: the Close goes out at once
    /// and nothing more is read. In [`App::on_close`] there is nothing left to close.
    pub fn close(&mut self, code: u16, reason: &str) {
        let code = if is_valid_close_code(code) { code } else { close_code::INTERNAL_ERROR };
        match &mut self.out {
            Out::Record { effects, .. } => effects.push(Effect::Close { id: self.id, code, reason: reason.into() }),
            Out::Hub(hub) if hub.topics.has_waiting(self.id) => hub.closes.push((self.id, code, reason.to_string())),
            Out::Hub(_) => {
                if let Some(reply) = &mut self.reply {
                    reply.close(code, reason);
                }
            }
        }
    }

    /// Stops reading this connection until `until` (flood control: the IRC
    /// servers' way). What it has sent already waits unread, first in the
    /// server's buffer and then in the kernel's, so TCP slows the sender
    /// down and nothing it sent is lost or reordered; the idle timeout does
    /// not run meanwhile. A later call may only lengthen the pause. Nothing
    /// in a detached context.
    pub fn pause_reading_until(&mut self, until: Instant) {
        if let Out::Record { effects, .. } = &mut self.out {
            effects.push(Effect::Pause { id: self.id, until });
        } else if let Some(reply) = &mut self.reply {
            reply.pause_reading_until(until);
        }
    }

    /// Publishes a text message to every subscriber of `topic` (this
    /// connection too, if it subscribes).
    pub fn publish_text(&mut self, topic: &str, text: &str) {
        self.publish_frame(topic, OpCode::Text, text.as_bytes());
    }

    /// Publishes a binary message to every subscriber of `topic`.
    pub fn publish_binary(&mut self, topic: &str, bytes: &[u8]) {
        self.publish_frame(topic, OpCode::Binary, bytes);
    }

    /// Publishes `message` (text or binary) to every subscriber of `topic`.
    pub fn publish(&mut self, topic: &str, message: Message<'_>) {
        self.publish_frame(topic, message.opcode(), message.as_bytes());
    }

    fn publish_frame(&mut self, topic: &str, opcode: OpCode, payload: &[u8]) {
        match &mut self.out {
            Out::Hub(hub) => hub.topics.publish(topic, opcode, payload),
            Out::Record { effects, .. } => {
                effects.push(Effect::Publish { topic: topic.into(), opcode, bytes: payload.into() })
            }
        }
    }

    /// Subscribes this connection to `topic`.
    pub fn subscribe(&mut self, topic: &str) {
        match &mut self.out {
            Out::Hub(hub) => hub.topics.subscribe(self.id, topic),
            Out::Record { effects, .. } => effects.push(Effect::Subscribe { id: self.id, topic: topic.into() }),
        }
    }

    /// Unsubscribes this connection from `topic`.
    pub fn unsubscribe(&mut self, topic: &str) {
        match &mut self.out {
            Out::Hub(hub) => hub.topics.unsubscribe(self.id, topic),
            Out::Record { effects, .. } => effects.push(Effect::Unsubscribe { id: self.id, topic: topic.into() }),
        }
    }

    /// The number of subscribers `topic` has on this server (0 in a recording context).
    pub fn subscriber_count(&self, topic: &str) -> usize {
        match &self.out {
            Out::Hub(hub) => hub.topics.subscribers(topic).len(),
            Out::Record { .. } => 0,
        }
    }
}
