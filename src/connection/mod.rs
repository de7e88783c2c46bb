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
mod input;
pub mod outgoing;

pub use config::{ConnectionConfig, DeflateConfig};

use crate::protocol::close_code;
use crate::protocol::deflate::{Agreement, DeflateState, SharedDeflaters};
use crate::protocol::frame::{OpCode, RSV1};
use crate::protocol::handshake::{HttpResponse, Request};
use crate::protocol::message::{self, Message};
use input::FrameReader;
use outgoing::{Outgoing, SharedFrame};
use std::io::{self, Write};
use std::time::Instant;

/// What a connection asks of whoever drives it: how to answer a request,
/// and what to do when it opens and with each message.
pub trait Handler {
    /// A complete `GET` request head arrived: route it.
    fn route(&mut self, request: &Request<'_, '_>) -> Route;

    /// The upgrade was accepted and its `101` is queued: frames may follow.
    fn on_open(&mut self, reply: &mut Reply<'_>);

    /// One complete text or binary message arrived.
    fn on_message(&mut self, message: Message<'_>, reply: &mut Reply<'_>);

    /// The most bytes (once inflated) the next message may have for whoever
    /// receives it; a longer one is read to its end without being kept, and
    /// [`on_message_too_long`](Self::on_message_too_long) is called instead
    /// of `on_message`. Asked at each message's first frame. Beyond
    /// [`ConnectionConfig::max_message_size`] a message fails the connection
    /// (1009) whatever this says.
    fn message_limit(&mut self) -> usize {
        usize::MAX
    }

    /// A message passed [`message_limit`](Self::message_limit) and was read past.
    fn on_message_too_long(&mut self, _reply: &mut Reply<'_>) {}
}

/// A [`Handler`]'s answer to a request.
#[derive(Debug)]
pub enum Route {
    /// Upgrade to WebSocket, if the request is a valid upgrade (the
    /// connection answers 400 or 426 if it is not, as RFC 6455 §4.2.1 says).
    Upgrade,
    /// Answer with this plain HTTP response and close.
    Respond(HttpResponse),
    /// Nothing lives at this path: 404.
    NotFound,
}

/// The reason a slow consumer's connection is closed with (1008), as the
/// application's [`Closed`](crate::app::Closed) and the metrics see it.
pub const SLOW_CONSUMER: &str = "slow consumer: too much unread data";

/// Where a handler's messages to one connection go: its outgoing queue,
/// compressed when the connection negotiated permessage-deflate.
pub struct Reply<'a> {
    outgoing: &'a mut Outgoing,
    deflate: Option<&'a mut DeflateState>,
    threshold: usize,
    /// What the handler asked of the connection; acted on once it returns.
    asks: &'a mut Asks,
}

/// What a handler asked of its connection during one call: usually nothing,
/// so one null pointer to make and test on every message.
#[derive(Debug, Default)]
pub(crate) struct Asks(Option<Box<Asked>>);

/// What a handler asked, when it asked anything.
#[derive(Debug, Default)]
struct Asked {
    /// Start the closing handshake with this code and reason.
    close: Option<(u16, String)>,
    /// Process no more input until then.
    pause_until: Option<Instant>,
}

impl Asks {
    fn asked(&mut self) -> &mut Asked {
        self.0.get_or_insert_with(Box::default)
    }

    /// Takes the close asked for, if any.
    pub(crate) fn take_close(&mut self) -> Option<(u16, String)> {
        self.0.as_mut().and_then(|asked| asked.close.take())
    }
}

impl<'a> Reply<'a> {
    /// A channel to `outgoing`, compressing with `deflate` where it pays, and
    /// recording into `asks` a close or pause the handler asks for.
    fn new(
        outgoing: &'a mut Outgoing,
        deflate: Option<&'a mut DeflateState>,
        config: &ConnectionConfig,
        asks: &'a mut Asks,
    ) -> Reply<'a> {
        Reply { outgoing, deflate, threshold: config.deflate.threshold, asks }
    }

    /// Sends one message as one frame, compressed if the connection agreed
    /// to permessage-deflate and compression pays for this message.
    pub fn send(&mut self, opcode: OpCode, payload: &[u8], shared: &mut SharedDeflaters) {
        if let Some(state) = self.deflate.as_deref_mut() {
            let mut compressed = Vec::new();
            if state.compress(payload, self.threshold, shared, &mut compressed) {
                self.outgoing.push_frame_rsv(opcode, RSV1, &compressed);
                return;
            }
        }
        self.outgoing.push_frame(opcode, payload);
    }

    /// Asks the connection to start its closing handshake with `code` and
    /// `reason` once the handler returns. Messages sent before it still go out.
    pub fn close(&mut self, code: u16, reason: &str) {
        self.asks.asked().close.get_or_insert_with(|| (code, reason.to_string()));
    }

    /// Asks the connection to process no more of its input until `until`
    /// (flood control): what the peer already sent waits unread, in the
    /// connection's buffer and then in the socket's, so TCP slows the peer
    /// down and nothing it sent is lost or reordered. Control frames wait
    /// too; the idle timeout does not run meanwhile.
    pub fn pause_reading_until(&mut self, until: Instant) {
        let asked = self.asks.asked();
        asked.pause_until = Some(asked.pause_until.map_or(until, |before| before.max(until)));
    }

    /// The same channel, borrowed for a shorter time (to hand on).
    pub fn reborrow(&mut self) -> Reply<'_> {
        Reply {
            outgoing: &mut *self.outgoing,
            deflate: self.deflate.as_deref_mut(),
            threshold: self.threshold,
            asks: &mut *self.asks,
        }
    }
}

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

    /// Bytes waiting in the outgoing queue.
    pub fn queued(&self) -> usize {
        self.outgoing.len()
    }

    /// Whether the outgoing queue has bytes to write (the driver then wants WRITABLE).
    pub fn wants_write(&self) -> bool {
        !self.outgoing.is_empty()
    }

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
    fn is_stopped(&self) -> bool {
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

    /// Fails the connection with 1013 ("try again later"): the server holds
    /// as much input in progress as it may, and this connection's would pass it.
    pub fn fail_server_busy(&mut self, now: Instant, config: &ConnectionConfig) {
        self.fail_with(close_code::TRY_AGAIN_LATER, "server busy: too many large messages arriving", now, config);
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

    /// Sets or ends the pause of an open connection's input.
    fn set_pause(&mut self, until: Option<Instant>) {
        self.stop = until.is_some();
        match &mut self.state {
            ClientState::HandshakeResponse { paused_until, .. } | ClientState::Connected { paused_until, .. } => {
                *paused_until = until;
            }
            _ => {}
        }
    }

    /// Acts on what a handler asked during a call: a pause, then a close.
    #[inline(always)]
    fn act_on(&mut self, asks: Asks, now: Instant, config: &ConnectionConfig) {
        if let Some(asked) = asks.0 {
            self.act_on_asked(*asked, now, config);
        }
    }

    #[cold]
    fn act_on_asked(&mut self, asks: Asked, now: Instant, config: &ConnectionConfig) {
        if let Some(until) = asks.pause_until
            && until > now
        {
            self.set_pause(Some(until));
        }
        if let Some((code, reason)) = asks.close {
            self.close(code, &reason, now, config);
        }
    }

    fn enter_closed(&mut self, now: Instant, config: &ConnectionConfig) {
        self.state = ClientState::Closed { deadline: now + config.close_timeout };
        self.reader = FrameReader::default();
    }
}

#[cfg(test)]
mod tests;
