//! The read path's entry points: bytes and EOF handed in, input held over a
//! pause and resumed, and whether to read now (backpressure, flood control).
//! The request head and the frames themselves are processed in `input.rs`.

use super::{ClientState, CloseInfo, ConnectionConfig, Handler, WebSocketClient};
use std::time::Instant;

impl WebSocketClient {
    /// Whether the driver should read more from this connection now. `false`
    /// while the outgoing queue is over its limit (the peer must read what it
    /// already has before it may send more: backpressure), and while the
    /// handler has paused its input (flood control).
    #[inline]
    pub fn wants_read(&self, config: &ConnectionConfig) -> bool {
        self.outgoing.len() <= config.max_outgoing_bytes && !self.is_stopped()
    }

    /// Whether input processing is paused now (cheap while it is not).
    #[inline(always)]
    pub(super) fn is_stopped(&self) -> bool {
        self.stop && self.paused_until().is_some()
    }

    /// Until when the handler paused this connection's input, if it did.
    #[inline]
    pub fn paused_until(&self) -> Option<Instant> {
        match self.state {
            ClientState::HandshakeResponse { paused_until, .. } | ClientState::Connected { paused_until, .. } => {
                paused_until
            }
            _ => None,
        }
    }

    /// Input that arrived while the connection was paused and still waits
    /// to be processed, in bytes (at most one read's worth).
    pub fn held_input(&self) -> usize {
        self.reader.leftover.len()
    }

    /// What this connection holds for input not yet complete, in bytes: the
    /// message being reassembled and what is left over between reads. (The
    /// driver bounds the sum over all connections.)
    #[inline]
    pub fn buffered_bytes(&self) -> usize {
        self.reader.reserved()
    }

    /// Processes input that waited while the connection was paused, now
    /// that it no longer is (the driver calls it before reading anew, since
    /// no new readiness event may come for bytes it already read).
    pub fn resume<H: Handler>(&mut self, now: Instant, config: &ConnectionConfig, handler: &mut H) {
        if !self.reader.leftover.is_empty() && self.paused_until().is_none() && !self.is_awaiting_handshake() {
            self.handle_frames(&mut [], now, config, handler);
        }
    }

    /// Handles bytes read from the connection (processed in place, see `input.rs`).
    pub fn handle_input<H: Handler>(
        &mut self,
        input: &mut [u8],
        now: Instant,
        config: &ConnectionConfig,
        handler: &mut H,
    ) {
        // Any byte from the peer is a sign of life (a Pong, or anything else).
        self.last_input = now;
        self.ping_sent = false;
        if self.is_awaiting_handshake() {
            self.handle_head(input, now, config, handler);
        } else {
            self.handle_frames(input, now, config, handler);
        }
    }

    /// The peer closed its side of TCP (read returned 0).
    pub fn handle_eof(&mut self, now: Instant, config: &ConnectionConfig) {
        if self.close_info.is_none() {
            self.close_info = Some(CloseInfo::Abrupt);
        }
        if !self.is_closed() {
            self.enter_closed(now, config);
        }
    }

    /// Sets or ends the pause of an open connection's input.
    pub(super) fn set_pause(&mut self, until: Option<Instant>) {
        self.stop = until.is_some();
        match &mut self.state {
            ClientState::HandshakeResponse { paused_until, .. } | ClientState::Connected { paused_until, .. } => {
                *paused_until = until;
            }
            _ => {}
        }
    }
}
