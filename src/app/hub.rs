//! What every connection's context shares ([`Hub`]: topics, the outbox, the
//! compressors, the counts), and the effects a recording context writes
//! down for it to apply later ([`Effect`]).

#[cfg(doc)]
use super::Context;
use super::topics::Topics;
use super::{ConnId, stats};
use crate::protocol::OpCode;
use crate::protocol::deflate::SharedDeflaters;
use std::sync::Arc;
use std::time::Instant;

/// What every connection's [`Context`] shares: the topics (and the outbox of
/// what was published to them), and the compressors for connections without
/// server context takeover.
#[derive(Debug)]
pub struct Hub {
    /// Subscriptions and the outbox.
    pub topics: Topics,
    /// One compressor per window size, reset after every message.
    pub deflaters: SharedDeflaters,
    /// The wall clock (milliseconds since the Unix epoch); the server's, or a test's.
    pub clock: fn() -> u64,
    /// Closes asked for while something for the connection still waited in
    /// the outbox: the driver starts them once that has been delivered.
    pub closes: Vec<(ConnId, u16, String)>,
    /// What this loop counts for the metrics (its own; a scrape sums every worker's).
    pub stats: Arc<stats::Stats>,
    /// What it counts per message and per read, published into `stats` by [`Hub::publish_stats`].
    pub tally: stats::Tally,
}

impl Hub {
    /// Topics whose runs of deliveries stay within `run_limit` bytes, and the wall clock `clock`.
    pub fn new(run_limit: usize, clock: fn() -> u64) -> Hub {
        Hub {
            topics: Topics::new(run_limit),
            deflaters: SharedDeflaters::default(),
            clock,
            closes: Vec::new(),
            stats: Arc::default(),
            tally: stats::Tally::default(),
        }
    }

    /// Publishes the tally into this loop's [`Stats`](stats::Stats), for whoever scrapes them.
    pub fn publish_stats(&self) {
        self.stats.publish(&self.tally);
    }
}

/// What a call asked for, written down instead of done: by a
/// [recording](Context::recording) context, for an application whose state
/// is shared by several workers and whose effects must reach each worker in
/// one order. [`Hub::apply`] (or [`Context::apply`]) does it later.
#[derive(Debug, Clone)]
pub enum Effect {
    /// A message to one connection.
    Send {
        /// Its connection.
        to: ConnId,
        /// Text or binary.
        opcode: OpCode,
        /// The message.
        bytes: std::sync::Arc<[u8]>,
    },
    /// A message to every subscriber of a topic.
    Publish {
        /// The topic.
        topic: std::sync::Arc<str>,
        /// Text or binary.
        opcode: OpCode,
        /// The message.
        bytes: std::sync::Arc<[u8]>,
    },
    /// A connection subscribes to a topic.
    Subscribe {
        /// Its connection.
        id: ConnId,
        /// The topic.
        topic: std::sync::Arc<str>,
    },
    /// A connection unsubscribes from a topic.
    Unsubscribe {
        /// Its connection.
        id: ConnId,
        /// The topic.
        topic: std::sync::Arc<str>,
    },
    /// A connection is to be closed with this code and reason.
    Close {
        /// Its connection.
        id: ConnId,
        /// The close code (already checked to be one that may be sent).
        code: u16,
        /// The reason.
        reason: String,
    },
    /// A connection's input is to pause until then ([`Context::pause_reading_until`]).
    Pause {
        /// Its connection.
        id: ConnId,
        /// Until when.
        until: Instant,
    },
}

impl Effect {
    /// The connection this effect is about, if it is about one (not a publish).
    pub fn connection(&self) -> Option<ConnId> {
        match self {
            Effect::Send { to: id, .. }
            | Effect::Subscribe { id, .. }
            | Effect::Unsubscribe { id, .. }
            | Effect::Close { id, .. }
            | Effect::Pause { id, .. } => Some(*id),
            Effect::Publish { .. } => None,
        }
    }
}

impl Hub {
    /// Does what `effect` says on this server: sends and closes go behind
    /// whatever the connection has waiting (through the outbox), publishes to
    /// this server's subscribers. A pause can only be asked for in a call
    /// about its own connection: here it does nothing.
    pub fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Send { to, opcode, bytes } => self.topics.send_to(to, opcode, &bytes),
            Effect::Publish { topic, opcode, bytes } => self.topics.publish(&topic, opcode, &bytes),
            Effect::Subscribe { id, topic } => self.topics.subscribe(id, &topic),
            Effect::Unsubscribe { id, topic } => self.topics.unsubscribe(id, &topic),
            Effect::Close { id, code, reason } => self.closes.push((id, code, reason)),
            Effect::Pause { .. } => {}
        }
    }
}
