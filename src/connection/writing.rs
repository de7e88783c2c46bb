//! The write path: queueing messages and shared deliveries, admitting them
//! against the queue's caps, writing the queue out, and the interest and
//! shutdown that follow from it. The queue itself is `outgoing.rs`.

use super::outgoing::SharedFrame;
use super::{Asks, ClientState, ConnectionConfig, Reply, WebSocketClient};
use crate::protocol::deflate::SharedDeflaters;
use crate::protocol::frame::OpCode;
use std::io::{self, Write};
use std::time::Instant;

impl WebSocketClient {
    /// Bytes waiting in the outgoing queue.
    pub fn queued(&self) -> usize {
        self.outgoing.len()
    }

    /// Whether the outgoing queue has bytes to write (the driver then wants WRITABLE).
    pub fn wants_write(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether everything is said and written: time to shut down our side of TCP.
    pub fn is_done_writing(&self) -> bool {
        self.is_closed() && self.outgoing.is_empty()
    }

    /// Sends one message as one frame, compressed if the connection agreed to
    /// permessage-deflate and it pays: for messages that do not come from
    /// its own handler (a delivery to a connection with its own compressor).
    pub fn send(&mut self, opcode: OpCode, payload: &[u8], shared: &mut SharedDeflaters, config: &ConnectionConfig) {
        let mut asks = Asks::default();
        Reply::new(&mut self.outgoing, self.deflate.as_deref_mut(), config, &mut asks).send(opcode, payload, shared);
    }

    /// Whether a delivery of `size` bytes may be queued: into an empty queue
    /// always (however large); otherwise while the queue stays within the
    /// hard cap (`hard_cap`: [`ConnectionConfig::hard_outgoing_cap`]). A connection that
    /// does not admit a delivery is a slow consumer, to be closed.
    #[inline]
    pub fn admits(&self, size: usize, hard_cap: usize) -> bool {
        let queued = self.outgoing.len();
        queued == 0 || queued.saturating_add(size) <= hard_cap
    }

    /// Deliveries were queued at `now`, onto a queue of `before` bytes: a
    /// queue that had been read back within its cap ends a grace, and one
    /// now over its cap starts one ([`ConnectionConfig::slow_consumer_grace`]).
    #[inline]
    pub fn note_backlog(&mut self, before: usize, now: Instant, config: &ConnectionConfig) {
        let cap = config.max_outgoing_bytes;
        if let ClientState::Connected { over_cap_since, .. } = &mut self.state {
            if before <= cap {
                *over_cap_since = None;
            }
            if self.outgoing.len() > cap && over_cap_since.is_none() {
                *over_cap_since = Some(now);
            }
        }
    }

    /// Queues bytes shared with other connections (an already framed
    /// delivery), without copying them.
    pub fn queue_shared(&mut self, bytes: &SharedFrame) {
        self.outgoing.push_shared(bytes);
    }

    /// Writes as much of the outgoing queue as `writer` takes without blocking.
    pub fn write_to<W: Write + ?Sized>(&mut self, writer: &mut W) -> io::Result<usize> {
        let written = self.outgoing.write_to(writer)?;
        if let ClientState::HandshakeResponse { ends_at, paused_until } = self.state
            && self.outgoing.written_total() >= ends_at
        {
            self.state = ClientState::Connected { over_cap_since: None, paused_until };
            // Most connections then wait for a while: give the queue's memory back.
            self.outgoing.release();
        }
        if self.ping_sent {
            // A keepalive went out to a quiet connection: it is idle, so free its queue.
            self.outgoing.release();
        }
        Ok(written)
    }
}
