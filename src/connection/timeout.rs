//! The connection's timers: when it next needs one, and what it does when it
//! fires (408 for a slow request, a pause's end, a keepalive Ping, the idle
//! close, a slow consumer's grace, a close that does not finish).

use super::{ClientState, ConnectionConfig, SLOW_CONSUMER, TimerAction, WebSocketClient};
use crate::protocol::close_code;
use crate::protocol::frame::OpCode;
use crate::protocol::handshake::HttpResponse;
use std::time::Instant;

impl WebSocketClient {
    /// When the connection next needs [`handle_timeout`](Self::handle_timeout):
    /// the end of the handshake, the next keepalive Ping, the idle timeout, or
    /// the end of the close. `None` when no timer applies.
    #[inline]
    pub fn poll_timeout(&self, config: &ConnectionConfig) -> Option<Instant> {
        match self.state {
            ClientState::AwaitingHandshake { deadline, .. }
            | ClientState::Closing { deadline }
            | ClientState::Closed { deadline } => Some(deadline),
            ClientState::HandshakeResponse { paused_until: Some(until), .. }
            | ClientState::Connected { paused_until: Some(until), over_cap_since: None } => Some(until),
            ClientState::Connected { paused_until: Some(until), over_cap_since: Some(since) } => {
                Some(until.min(since + config.slow_consumer_grace))
            }
            ClientState::HandshakeResponse { .. } | ClientState::Connected { .. } => {
                let ping = (!config.ping_interval.is_zero() && !self.ping_sent)
                    .then(|| self.last_input + config.ping_interval);
                let idle = (!config.idle_timeout.is_zero()).then(|| self.last_input + config.idle_timeout);
                let soonest = match (ping, idle) {
                    (Some(ping), Some(idle)) => Some(ping.min(idle)),
                    (ping, idle) => ping.or(idle),
                };
                match self.state {
                    ClientState::Connected { over_cap_since: Some(since), .. } => {
                        let grace_ends = since + config.slow_consumer_grace;
                        Some(soonest.map_or(grace_ends, |soonest| soonest.min(grace_ends)))
                    }
                    _ => soonest,
                }
            }
        }
    }

    /// Acts on whatever timer is due at `now`: answers a handshake that took
    /// too long with 408, ends a pause, pings a quiet connection, closes an
    /// idle one with 1001, and gives up on a close that is not finishing.
    pub fn handle_timeout(&mut self, now: Instant, config: &ConnectionConfig) -> TimerAction {
        if let Some(until) = self.paused_until() {
            if now >= until {
                // The pause ends; it did not count as silence.
                self.set_pause(None);
                self.last_input = now;
                self.ping_sent = false;
            }
            if !matches!(self.state, ClientState::Connected { over_cap_since: Some(_), .. }) {
                return TimerAction::Continue;
            }
        }
        match self.state {
            ClientState::AwaitingHandshake { deadline, .. } if now >= deadline => {
                let response = HttpResponse {
                    content_type: "text/plain",
                    ..HttpResponse::error(408, "the request took too long to arrive")
                };
                self.answer_http(&response, now, config);
            }
            ClientState::Closing { deadline } | ClientState::Closed { deadline } if now >= deadline => {
                return TimerAction::Drop;
            }
            ClientState::Connected { over_cap_since: Some(since), paused_until }
                if now >= since + config.slow_consumer_grace =>
            {
                if self.outgoing.len() > config.max_outgoing_bytes {
                    self.close_slow_consumer(SLOW_CONSUMER, now, config);
                } else {
                    self.state = ClientState::Connected { over_cap_since: None, paused_until };
                }
            }
            ClientState::HandshakeResponse { paused_until: None, .. }
            | ClientState::Connected { paused_until: None, .. } => {
                if !config.idle_timeout.is_zero() && now >= self.last_input + config.idle_timeout {
                    self.fail_with(close_code::GOING_AWAY, "idle timeout", now, config);
                } else if !config.ping_interval.is_zero()
                    && !self.ping_sent
                    && now >= self.last_input + config.ping_interval
                {
                    // §5.5.2: a Ping "may serve either as a keepalive or as a
                    // means to verify that the remote endpoint is still responsive".
                    self.outgoing.push_frame(OpCode::Ping, b"");
                    self.ping_sent = true;
                }
            }
            _ => {}
        }
        TimerAction::Continue
    }
}
