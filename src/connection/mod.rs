//! One connection's state machine: [`WebSocketClient`] and [`ClientState`]
//! [Rust in Detail, Part 1 and Part 2 §17, §19–20].
//!
//! ```text
//! AwaitingHandshake ──request ok──▶ HandshakeResponse ──101 written──▶ Connected
//!        │ bad request, page           │ (frames already flow)            │
//!        ▼                             ▼                                  │ we start a close
//!     Closed ◀── protocol error, peer's Close, EOF ── Connected ───────────▼
//!        ▲                                                             Closing
//!        └──────────────────────── peer's Close answers ours ─────────────┘
//! ```
//!
//! The client never touches a socket or a clock. Whoever drives it (the
//! server, a test, a fuzz target) calls, in any order:
//!
//! * input: [`handle_input`](WebSocketClient::handle_input) with the bytes it
//!   read, [`handle_eof`](WebSocketClient::handle_eof) when the peer closed
//!   TCP, [`handle_timeout`](WebSocketClient::handle_timeout) when the time
//!   that [`poll_timeout`](WebSocketClient::poll_timeout) named has come;
//! * output: [`write_to`](WebSocketClient::write_to) a `Write` (the socket),
//!   and the predicates ([`wants_write`](WebSocketClient::wants_write),
//!   [`wants_read`](WebSocketClient::wants_read),
//!   [`is_done_writing`](WebSocketClient::is_done_writing)) that decide
//!   interest, shutdown and removal.
//!
//! Time comes in as a `now: Instant` argument, so tests drive it with a
//! virtual clock. What the connection does with a request and its messages
//! is asked of a [`Handler`] (the application interface's glue, in
//! [`crate::app`]).
//!
//! Input is processed in place in the buffer it arrives in (`input.rs`); what
//! is left over between reads is at most an incomplete frame header or
//! control frame, so an idle connection holds no read buffer at all.

pub mod config;
mod handler;
mod input;
pub mod outgoing;
mod reading;
mod timeout;
mod writing;

pub use config::{ConnectionConfig, DeflateConfig};
pub(crate) use handler::Asks;
pub use handler::{Handler, Reply, Route};

use crate::protocol::close_code;
use crate::protocol::deflate::{Agreement, DeflateState};
use crate::protocol::frame::OpCode;
use crate::protocol::handshake::HttpResponse;
use crate::protocol::message;
use input::FrameReader;
use outgoing::Outgoing;
use std::time::Instant;

/// The reason a slow consumer's connection is closed with (1008), as the
/// application's [`Closed`](crate::app::Closed) and the metrics see it.
pub const SLOW_CONSUMER: &str = "slow consumer: too much unread data";

/// Where a connection is in its life [Part 2 §17].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientState {
    /// Reading the HTTP upgrade request, as the blog's version held its HTTP parser.
    AwaitingHandshake {
        /// The request head received so far.
        head: Vec<u8>,
        /// When the whole head must have arrived (then: 408).
        deadline: Instant,
    },
    /// The `101` response is queued; the state becomes `Connected` once the
    /// outgoing queue has written `ends_at` bytes. Frames the client sends
    /// meanwhile are processed already; replies queue up behind the response.
    HandshakeResponse {
        /// The value of the outgoing queue's total at the end of the response.
        ends_at: u64,
        /// Input is not processed until then (see [`Reply::pause_reading_until`]).
        paused_until: Option<Instant>,
    },
    /// Open: messages flow both ways.
    Connected {
        /// Since when deliveries have kept the outgoing queue over its cap
        /// without the peer reading it back under: a slow consumer's grace
        /// (see [`ConnectionConfig::slow_consumer_grace`]).
        over_cap_since: Option<Instant>,
        /// Input is not processed until then (see [`Reply::pause_reading_until`]).
        paused_until: Option<Instant>,
    },
    /// We sent a Close frame and wait for the peer's (§7.1.2). Messages that
    /// still arrive are read and dropped.
    Closing {
        /// When we stop waiting for the peer's Close.
        deadline: Instant,
    },
    /// Nothing more will be processed: the close handshake is done, the
    /// connection failed, or the request was answered with plain HTTP. The
    /// queue is flushed, the write side shut down, and input discarded until
    /// the peer closes TCP or the deadline passes.
    Closed {
        /// When the connection is dropped whatever the peer does.
        deadline: Instant,
    },
}

/// Why and how a connection ended, for logs, tests and the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseInfo {
    /// The close handshake happened with this code from the peer (`None`: no code given).
    Handshake(Option<u16>),
    /// We failed the connection with this close code.
    Failed(u16, &'static str),
    /// The request was answered with plain HTTP (a page, or an error) with this status.
    Http(u16),
    /// The peer closed TCP without a close handshake.
    Abrupt,
}

impl std::fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseInfo::Handshake(Some(code)) => write!(f, "close handshake, code {code}"),
            CloseInfo::Handshake(None) => write!(f, "close handshake, no code"),
            CloseInfo::Failed(code, reason) => write!(f, "closed by the server with {code} ({reason})"),
            CloseInfo::Http(status) => write!(f, "answered with HTTP {status}"),
            CloseInfo::Abrupt => write!(f, "the peer closed TCP without a close handshake"),
        }
    }
}

/// What a timer asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    /// Nothing more than writing what may now be queued (a Ping, a 408, a Close).
    Continue,
    /// Drop the connection now.
    Drop,
}

/// One connection [Part 1, Part 2 §17]: its state, the frame reader, and
/// the outgoing queue.
#[derive(Debug)]
pub struct WebSocketClient {
    state: ClientState,
    /// Frames and messages in progress (see [`input`]).
    reader: FrameReader,
    /// Encoded bytes waiting for the socket [Part 2 §19 "the outgoing queue"].
    outgoing: Outgoing,
    /// permessage-deflate, when negotiated (boxed: most connections have none).
    deflate: Option<Box<DeflateState>>,
    /// When the peer last sent anything: the idle clock of an open connection.
    last_input: Instant,
    /// A keepalive Ping has gone out since the last input.
    ping_sent: bool,
    /// The input may be paused (the state's `paused_until` decides): a byte
    /// that the loop over frames can test cheaply.
    stop: bool,
    close_info: Option<CloseInfo>,
}

impl WebSocketClient {
    /// A connection accepted at `now`, waiting for its upgrade request.
    pub fn new(now: Instant, config: &ConnectionConfig) -> WebSocketClient {
        WebSocketClient {
            state: ClientState::AwaitingHandshake { head: Vec::new(), deadline: now + config.handshake_timeout },
            reader: FrameReader::default(),
            outgoing: Outgoing::default(),
            deflate: None,
            last_input: now,
            ping_sent: false,
            stop: false,
            close_info: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> &ClientState {
        &self.state
    }

    /// How the connection ended, once it has.
    pub fn close_info(&self) -> Option<&CloseInfo> {
        self.close_info.as_ref()
    }

    /// What the connection agreed to for compression, if anything.
    pub fn deflate_agreement(&self) -> Option<&Agreement> {
        self.deflate.as_deref().map(|state| &state.agreement)
    }

    /// Whether the request head is still being awaited.
    pub fn is_awaiting_handshake(&self) -> bool {
        matches!(self.state, ClientState::AwaitingHandshake { .. })
    }

    /// Whether messages may still be sent (the handshake is done and no Close has gone out).
    pub fn is_open(&self) -> bool {
        matches!(self.state, ClientState::HandshakeResponse { .. } | ClientState::Connected { .. })
    }

    /// Whether nothing more will be processed (see [`ClientState::Closed`]).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, ClientState::Closed { .. })
    }

    /// Fails the connection with 1013 ("try again later"): the server holds
    /// as much input in progress as it may, and this connection's would pass it.
    pub fn fail_server_busy(&mut self, now: Instant, config: &ConnectionConfig) {
        self.fail_with(close_code::TRY_AGAIN_LATER, "server busy: too many large messages arriving", now, config);
    }

    /// Starts the closing handshake from our side (§7.1.2): on shutdown, or
    /// when the application asks. A connection still awaiting its request
    /// is simply closed.
    pub fn close(&mut self, code: u16, reason: &str, now: Instant, config: &ConnectionConfig) {
        if self.is_open() {
            self.outgoing.push_frame(OpCode::Close, &message::close_payload(code, reason));
            self.state = ClientState::Closing { deadline: now + config.close_timeout };
        } else if self.is_awaiting_handshake() {
            self.enter_closed(now, config);
        }
    }

    /// The peer is not reading fast enough to keep up (its queue would pass
    /// its cap): drop what it has not started receiving, send Close 1008 with
    /// `reason`, and close (§7.4.1: "a message that violates its policy").
    pub fn close_slow_consumer(&mut self, reason: &'static str, now: Instant, config: &ConnectionConfig) {
        if self.is_open() {
            self.outgoing.discard_unsent();
            self.fail_with(close_code::POLICY, reason, now, config);
        }
    }

    /// Answers a connection that has not finished its handshake with an HTTP
    /// error (503 when the server makes room for others) and closes it.
    pub fn reject(&mut self, response: &HttpResponse, now: Instant, config: &ConnectionConfig) {
        if self.is_awaiting_handshake() {
            self.answer_http(response, now, config);
        }
    }

    /// _Fail the WebSocket Connection_ (§7.1.7): send a Close with `code`
    /// unless we already sent one, and stop reading frames. The one way the
    /// server ends a WebSocket on its own.
    fn fail_with(&mut self, code: u16, reason: &'static str, now: Instant, config: &ConnectionConfig) {
        self.end_with_close(code, reason, reason, now, config);
    }

    /// The application refused the connection as it opened: Close with its
    /// `code` and `reason` at once, and read nothing more.
    fn refuse(&mut self, code: u16, reason: &str, now: Instant, config: &ConnectionConfig) {
        self.end_with_close(code, reason, "refused by the application", now, config);
    }

    /// Sends Close (`code`, `reason`) unless one went out already, records
    /// `logged` as why, and stops reading frames.
    fn end_with_close(
        &mut self,
        code: u16,
        reason: &str,
        logged: &'static str,
        now: Instant,
        config: &ConnectionConfig,
    ) {
        if self.is_open() {
            self.outgoing.push_frame(OpCode::Close, &message::close_payload(code, reason));
        }
        self.close_info = Some(CloseInfo::Failed(code, logged));
        self.enter_closed(now, config);
    }

    /// Answers the request with plain HTTP and closes: the one way a
    /// connection that never became a WebSocket ends.
    fn answer_http(&mut self, response: &HttpResponse, now: Instant, config: &ConnectionConfig) {
        self.outgoing.push(&response.encode());
        self.close_info = Some(CloseInfo::Http(response.status));
        self.enter_closed(now, config);
    }

    fn enter_closed(&mut self, now: Instant, config: &ConnectionConfig) {
        self.state = ClientState::Closed { deadline: now + config.close_timeout };
        self.reader = FrameReader::default();
    }
}

#[cfg(test)]
mod tests;
