//! One connection's state machine: [`WebSocketClient`] and [`ClientState`]
//! [Rust in Detail, Part 1 and Part 2 §17, §19–20].
//!
//! ```text
//! AwaitingHandshake(head) ──request ok──▶ HandshakeResponse ──101 written──▶ Connected
//!        │ bad request                         │ (frames already flow)          │
//!        ▼                                     ▼                                │ we start a close
//!     Closed ◀── protocol error, peer's Close, EOF ── Connected ─────────────────▼
//!        ▲                                                                   Closing
//!        └───────────────────────── peer's Close answers ours ──────────────────┘
//! ```
//!
//! The client never touches a socket. The event loop hands it the bytes it
//! read ([`WebSocketClient::handle_input`]), asks it to write its outgoing
//! queue into a `Write` ([`WebSocketClient::write_to`]), and reads its
//! predicates to decide on interest, shutdown and removal. Time comes in as
//! a `now: Instant` argument, so tests drive it with a virtual clock.
//!
//! Input is processed in place in the buffer it arrives in. The payload of a
//! data frame is consumed piece by piece as it arrives — unmasked, checked for
//! UTF-8, and either appended to the message being reassembled or, when a
//! whole single-frame message is already in the buffer, handed to the
//! endpoint without any copy. What is left over between reads is at most an
//! incomplete frame header or control frame, so an idle connection holds no
//! read buffer at all.

use crate::config::Config;
use crate::deflate::{self, Agreement, DeflateState, SharedDeflaters};
use crate::frame::{
    DecodeRules, FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode, ProtocolError, RSV1, apply_mask,
};
use crate::handshake::{self, HandshakeError};
use crate::message::{self, ClosePayload, Message, MessageAssembler};
use crate::outgoing::Outgoing;
use std::io::{self, Write};
use std::time::Instant;

/// The longest unit that must be whole before it is processed: a control
/// frame with its header. Everything longer (data payloads) is streamed.
const MAX_UNIT: usize = MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD;

/// What a connection does when it opens and with the messages it receives.
///
/// The server picks an endpoint by the request path and passes it along;
/// the implementation (the server's, or a test's) decides what each does.
pub trait Handler {
    /// The upgrade to `endpoint` was accepted (the 101 is queued); `query` is
    /// the request's query string. An `Err((code, reason))` closes the new
    /// connection at once with that close code.
    fn on_open(&mut self, endpoint: Endpoint, query: &str, reply: &mut Reply<'_>) -> Result<(), (u16, &'static str)>;

    /// Called once for each complete text or binary message. Replies go
    /// through `reply`, to this connection.
    fn on_message(&mut self, endpoint: Endpoint, message: Message<'_>, reply: &mut Reply<'_>);
}

/// Where a handler's replies to one connection go: its outgoing queue,
/// compressed when the connection negotiated permessage-deflate.
pub struct Reply<'a> {
    /// The connection's outgoing queue.
    pub outgoing: &'a mut Outgoing,
    deflate: Option<&'a mut DeflateState>,
    threshold: usize,
}

impl Reply<'_> {
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

    /// What the connection agreed to for compression, if anything.
    pub fn deflate(&self) -> Option<&Agreement> {
        self.deflate.as_deref().map(|state| &state.agreement)
    }
}

/// Sends every message back unchanged: same type, same bytes, one frame.
/// The blog's server, and what `/echo` does.
#[derive(Debug, Default)]
pub struct Echo {
    deflaters: SharedDeflaters,
}

impl Handler for Echo {
    fn on_open(&mut self, _: Endpoint, _: &str, _: &mut Reply<'_>) -> Result<(), (u16, &'static str)> {
        Ok(())
    }

    fn on_message(&mut self, _: Endpoint, message: Message<'_>, reply: &mut Reply<'_>) {
        reply.send(message.opcode(), message.as_bytes(), &mut self.deflaters);
    }
}

/// The WebSocket endpoints a request path can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Every message comes back as it was sent (`/echo`).
    Echo,
    /// The chat service (`/` and `/chat`).
    Chat,
}

impl Endpoint {
    /// The endpoint served at `path`, if any.
    pub fn for_path(path: &str) -> Option<Endpoint> {
        match path {
            "/" | "/chat" => Some(Endpoint::Chat),
            "/echo" => Some(Endpoint::Echo),
            _ => None,
        }
    }
}

/// Where a connection is in its life [Part 2 §17].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientState {
    /// Reading the HTTP upgrade request. Holds the request head received so
    /// far, as the blog's version held its HTTP parser.
    AwaitingHandshake(Vec<u8>),
    /// The `101` response is queued; the state becomes `Connected` once the
    /// outgoing queue has written `ends_at` bytes. Frames the client sends
    /// meanwhile are processed already; replies queue up behind the response.
    HandshakeResponse {
        /// The value of the outgoing queue's total at the end of the response.
        ends_at: u64,
    },
    /// Open: messages flow both ways.
    Connected,
    /// We sent a Close frame and wait for the peer's (§7.1.2). Messages that
    /// still arrive are read and dropped.
    Closing,
    /// Nothing more will be processed: the close handshake is done, the
    /// connection failed, or the request was refused. The queue is flushed,
    /// the write side shut down, and input discarded until the peer closes
    /// TCP or the close timeout passes.
    Closed,
}

/// The chat page served to a plain `GET /`, embedded in the binary.
const INDEX_HTML: &[u8] = include_bytes!("../static/index.html");

/// How a complete request head is answered.
enum Answer {
    /// Switch to WebSocket.
    Upgrade { endpoint: Endpoint, query: String, accept: String, deflate: Option<Agreement>, head_len: usize },
    /// Serve the page.
    Page,
}

/// The payload of the data frame now arriving.
#[derive(Debug, Clone, Copy)]
struct PayloadInProgress {
    key: [u8; 4],
    /// Payload bytes already consumed (the position in the mask).
    offset: usize,
    remaining: u64,
    /// Read and drop: the connection is closing.
    discard: bool,
}

/// Why and how a connection ended, for logs and tests.
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

/// One connection [Part 1, Part 2 §17]: its state, the bytes of an
/// incomplete unit, the message being reassembled and the outgoing queue.
#[derive(Debug)]
pub struct WebSocketClient {
    state: ClientState,
    endpoint: Option<Endpoint>,
    /// An incomplete frame header or control frame left over from the last read.
    pending: Vec<u8>,
    frame: Option<PayloadInProgress>,
    message: MessageAssembler,
    /// Encoded bytes waiting for the socket [Part 2 §19 "the outgoing queue"].
    pub outgoing: Outgoing,
    /// permessage-deflate, when negotiated (boxed: most connections have none).
    deflate: Option<Box<DeflateState>>,
    /// The end of the handshake (while awaiting it) or of the close (once closing).
    deadline: Instant,
    /// When the peer last sent anything: the idle clock of an open connection.
    last_input: Instant,
    /// A keepalive Ping has gone out since the last input.
    ping_sent: bool,
    close_info: Option<CloseInfo>,
}

/// What a timer asks of the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    /// Nothing more than writing what may now be queued (a Ping, a 408, a Close).
    Continue,
    /// Drop the connection now.
    Drop,
}

impl WebSocketClient {
    /// A connection accepted at `now`, waiting for its upgrade request.
    pub fn new(now: Instant, config: &Config) -> WebSocketClient {
        WebSocketClient {
            state: ClientState::AwaitingHandshake(Vec::new()),
            endpoint: None,
            pending: Vec::new(),
            frame: None,
            message: MessageAssembler::default(),
            outgoing: Outgoing::default(),
            deflate: None,
            deadline: now + config.handshake_timeout,
            last_input: now,
            ping_sent: false,
            close_info: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> &ClientState {
        &self.state
    }

    /// The endpoint the upgrade request chose, once it has been accepted.
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.endpoint
    }

    /// What the connection agreed to for compression, if anything.
    pub fn deflate_agreement(&self) -> Option<&Agreement> {
        self.deflate.as_deref().map(|state| &state.agreement)
    }

    /// This connection's reply channel, as handlers get it.
    pub fn reply(&mut self, config: &Config) -> Reply<'_> {
        Reply {
            outgoing: &mut self.outgoing,
            deflate: self.deflate.as_deref_mut(),
            threshold: config.deflate_threshold,
        }
    }

    /// When the connection next needs [`on_timer`](Self::on_timer): the end
    /// of the handshake, the next keepalive Ping, the idle timeout, or the end
    /// of the close. `None` when no timer applies.
    pub fn next_deadline(&self, config: &Config) -> Option<Instant> {
        if !self.is_open() {
            return Some(self.deadline);
        }
        let ping = (!config.ping_interval.is_zero() && !self.ping_sent).then(|| self.last_input + config.ping_interval);
        let idle = (!config.idle_timeout.is_zero()).then(|| self.last_input + config.idle_timeout);
        match (ping, idle) {
            (Some(ping), Some(idle)) => Some(ping.min(idle)),
            (ping, idle) => ping.or(idle),
        }
    }

    /// Acts on whatever timer is due at `now`: answers a handshake that took
    /// too long with 408, pings a quiet connection, closes an idle one with
    /// 1001, and gives up on a close that is not finishing.
    pub fn on_timer(&mut self, now: Instant, config: &Config) -> TimerAction {
        match self.state {
            ClientState::AwaitingHandshake(_) if now >= self.deadline => {
                let body = "the request took too long to arrive\n";
                self.outgoing.push(&handshake::http_response(
                    408,
                    "Request Timeout",
                    &[],
                    "text/plain",
                    body.as_bytes(),
                ));
                self.close_info = Some(CloseInfo::Http(408));
                self.enter_closed(now, config);
            }
            ClientState::Closing | ClientState::Closed if now >= self.deadline => return TimerAction::Drop,
            ClientState::HandshakeResponse { .. } | ClientState::Connected => {
                if !config.idle_timeout.is_zero() && now >= self.last_input + config.idle_timeout {
                    let code = message::close_code::GOING_AWAY;
                    self.outgoing.push_frame(OpCode::Close, &message::close_payload(code, "idle timeout"));
                    self.close_info = Some(CloseInfo::Failed(code, "idle timeout"));
                    self.enter_closed(now, config);
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

    /// How the connection ended, once it has.
    pub fn close_info(&self) -> Option<&CloseInfo> {
        self.close_info.as_ref()
    }

    /// Whether the outgoing queue has bytes to write (the loop then wants WRITABLE).
    pub fn wants_write(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether the loop should read more from this connection now. `false`
    /// while the outgoing queue is over its limit: the peer must read what it
    /// already has before it may send more (backpressure).
    pub fn wants_read(&self, config: &Config) -> bool {
        self.outgoing.len() <= config.max_outgoing_bytes
    }

    /// Whether everything is said and written: time to shut down our side of TCP.
    pub fn is_done_writing(&self) -> bool {
        self.state == ClientState::Closed && self.outgoing.is_empty()
    }

    /// Handles bytes read from the connection.
    pub fn handle_input<H: Handler>(&mut self, input: &mut [u8], now: Instant, config: &Config, handler: &mut H) {
        // Any byte from the peer is a sign of life (a Pong, or anything else).
        self.last_input = now;
        self.ping_sent = false;
        if let ClientState::AwaitingHandshake(head) = &mut self.state {
            let mut head = std::mem::take(head);
            head.extend_from_slice(input);
            // Parse again only when a line may have ended (or the limit is
            // reached): a client that trickles a byte at a time then costs a
            // scan of each byte, not a parse of the whole head per byte.
            if !input.contains(&b'\n') && head.len() < config.max_handshake_bytes {
                self.state = ClientState::AwaitingHandshake(head);
                return;
            }
            match self.handle_handshake(&head, now, config, handler) {
                None => self.state = ClientState::AwaitingHandshake(head),
                Some(used) => {
                    // A first frame sent in the same write as the request.
                    if used < head.len() {
                        self.feed_frames(&mut head[used..], now, config, handler);
                    }
                }
            }
            return;
        }
        if self.pending.is_empty() {
            self.feed_frames(input, now, config, handler);
            return;
        }
        // Finish the incomplete unit from the last read with as few of the new
        // bytes as it can need, then go on in `input` itself.
        let mut buf = std::mem::take(&mut self.pending);
        let old = buf.len();
        let take = input.len().min(MAX_UNIT);
        buf.extend_from_slice(&input[..take]);
        let used = self.process_frames(&mut buf, now, config, handler);
        if used >= old {
            // The old unit is done; `used - old` bytes of `input` went with it.
            // Drop the copy buffer: an idle connection holds no read buffer.
            drop(buf);
            self.feed_frames(&mut input[used - old..], now, config, handler);
        } else {
            // Still incomplete, so `input` was shorter than `take` could be: all of it is in `buf`.
            buf.drain(..used);
            self.pending = buf;
        }
    }

    /// Processes `buf` and keeps whatever incomplete unit is left at its end.
    fn feed_frames<H: Handler>(&mut self, buf: &mut [u8], now: Instant, config: &Config, handler: &mut H) {
        let used = self.process_frames(buf, now, config, handler);
        if used < buf.len() && self.state != ClientState::Closed {
            self.pending.extend_from_slice(&buf[used..]);
        }
    }

    /// Parses the request head. Returns the bytes it took, or `None` while incomplete.
    fn handle_handshake<H: Handler>(
        &mut self,
        head: &[u8],
        now: Instant,
        config: &Config,
        handler: &mut H,
    ) -> Option<usize> {
        let mut headers = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
        let result = handshake::parse_request(head, &mut headers, config.max_handshake_bytes).and_then(|parsed| {
            let Some((request, used)) = parsed else { return Ok(None) };
            if request.method != "GET" {
                return Err(HandshakeError::MethodNotAllowed);
            }
            let endpoint = Endpoint::for_path(request.path()).ok_or(HandshakeError::NotFound)?;
            // A browser visiting `/` gets a page that can talk to us.
            if request.path() == "/" && !request.is_upgrade() {
                return Ok(Some(Answer::Page));
            }
            let accept = request.validate_upgrade()?;
            let query = request.target.split_once('?').map_or("", |(_, query)| query).to_string();
            let deflate = if config.deflate {
                let offers = request.header_values("Sec-WebSocket-Extensions");
                deflate::negotiate(offers, config.deflate_context_takeover).map_err(HandshakeError::BadRequest)?
            } else {
                None
            };
            Ok(Some(Answer::Upgrade { endpoint, query, accept, deflate, head_len: used }))
        });
        match result {
            Ok(None) => None,
            Ok(Some(Answer::Upgrade { endpoint, query, accept, deflate, head_len: used })) => {
                let extension = deflate.map(|agreement| agreement.response_header());
                self.outgoing.push(&handshake::accept_response(&accept, extension.as_deref()));
                self.deflate = deflate.map(|agreement| Box::new(DeflateState::new(agreement)));
                self.endpoint = Some(endpoint);
                self.state = ClientState::HandshakeResponse { ends_at: self.outgoing.queued_total() };
                if let Err((code, reason)) = handler.on_open(endpoint, &query, &mut self.reply(config)) {
                    self.outgoing.push_frame(OpCode::Close, &message::close_payload(code, reason));
                    self.close_info = Some(CloseInfo::Failed(code, reason));
                    self.enter_closed(now, config);
                    return Some(head.len());
                }
                Some(used)
            }
            Ok(Some(Answer::Page)) => {
                self.outgoing.push(&handshake::http_response(200, "OK", &[], "text/html; charset=utf-8", INDEX_HTML));
                self.close_info = Some(CloseInfo::Http(200));
                self.enter_closed(now, config);
                Some(head.len())
            }
            Err(err) => {
                self.outgoing.push(&err.response());
                self.close_info = Some(CloseInfo::Http(err.status().0));
                self.enter_closed(now, config);
                Some(head.len())
            }
        }
    }

    /// Processes every complete unit in `buf`; returns how many bytes were consumed.
    fn process_frames<H: Handler>(&mut self, buf: &mut [u8], now: Instant, config: &Config, handler: &mut H) -> usize {
        let mut pos = 0;
        while pos < buf.len() {
            if self.state == ClientState::Closed {
                return buf.len();
            }
            match self.step(&mut buf[pos..], now, config, handler) {
                Ok(Some(used)) => pos += used,
                Ok(None) => break,
                Err(err) => {
                    self.fail(&err, now, config);
                    return buf.len();
                }
            }
        }
        pos
    }

    /// Processes one unit at the front of `buf`: a frame header, a piece of
    /// data payload, or a whole control frame. `Ok(None)`: need more bytes.
    fn step<H: Handler>(
        &mut self,
        buf: &mut [u8],
        now: Instant,
        config: &Config,
        handler: &mut H,
    ) -> Result<Option<usize>, ProtocolError> {
        if let Some(frame) = &mut self.frame {
            let n = usize::try_from(frame.remaining).unwrap_or(usize::MAX).min(buf.len());
            let piece = &mut buf[..n];
            apply_mask(piece, frame.key, frame.offset);
            frame.offset += n;
            frame.remaining -= n as u64;
            let (done, discard) = (frame.remaining == 0, frame.discard);
            if !discard {
                self.feed_payload(piece, config)?;
            }
            if done {
                self.frame = None;
                self.end_data_frame(discard, config, handler)?;
            }
            return Ok(Some(n));
        }

        let mut rules = DecodeRules::server(config.max_frame_size as u64);
        if self.deflate.is_some() {
            rules.allowed_rsv = RSV1;
        }
        let Some((header, header_len)) = FrameHeader::decode(buf, &rules)? else {
            return Ok(None);
        };
        let key = header.mask.unwrap_or_default();

        if header.opcode.is_control() {
            if header.rsv != 0 {
                return Err(ProtocolError::MisplacedCompressionBit);
            }
            // At most 125 bytes (checked by decode): wait for the whole frame.
            let end = header_len + header.payload_len as usize;
            let Some(payload) = buf.get_mut(header_len..end) else {
                return Ok(None);
            };
            apply_mask(payload, key, 0);
            self.handle_control(header.opcode, payload, now, config)?;
            return Ok(Some(end));
        }

        let discard = self.state == ClientState::Closing;
        if discard {
            // We are closing: the peer's messages are read past, not delivered.
            if header.payload_len == 0 {
                return Ok(Some(header_len));
            }
            self.frame = Some(PayloadInProgress { key, offset: 0, remaining: header.payload_len, discard });
            return Ok(Some(header_len));
        }

        let was_in_progress = self.message.in_progress();
        self.message.begin_frame(&header, config.max_message_size as u64)?;
        let end = usize::try_from(header.payload_len).ok().and_then(|len| len.checked_add(header_len));
        // Fast path: a whole single-frame message is in the buffer. Unmask it
        // in place and hand it over without copying it anywhere.
        if header.fin
            && !was_in_progress
            && !self.message.is_compressed()
            && let Some(payload) = end.and_then(|end| buf.get_mut(header_len..end))
        {
            apply_mask(payload, key, 0);
            let message = match header.opcode {
                OpCode::Text => Message::Text(std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?),
                _ => Message::Binary(payload),
            };
            let used = header_len + payload.len();
            let endpoint = self.routed_endpoint();
            let mut reply = Reply {
                outgoing: &mut self.outgoing,
                deflate: self.deflate.as_deref_mut(),
                threshold: config.deflate_threshold,
            };
            handler.on_message(endpoint, message, &mut reply);
            self.message.reset();
            return Ok(Some(used));
        }
        // Otherwise stream the payload into the reassembly buffer as it arrives.
        if header.payload_len == 0 {
            self.end_data_frame(false, config, handler)?;
        } else {
            self.frame = Some(PayloadInProgress { key, offset: 0, remaining: header.payload_len, discard });
        }
        Ok(Some(header_len))
    }

    /// Adds a piece of (unmasked) payload to the message, through the inflater if it is compressed.
    fn feed_payload(&mut self, piece: &[u8], config: &Config) -> Result<(), ProtocolError> {
        if !self.message.is_compressed() {
            return self.message.feed(piece);
        }
        // RSV1 passed the decoder, so permessage-deflate was negotiated.
        let Some(state) = self.deflate.as_deref_mut() else { return Err(ProtocolError::ReservedBits) };
        let message = &mut self.message;
        state.inflater().inflate(piece, config.max_message_size, &mut |out| message.feed(out))
    }

    fn end_data_frame<H: Handler>(
        &mut self,
        discard: bool,
        config: &Config,
        handler: &mut H,
    ) -> Result<(), ProtocolError> {
        if discard {
            return Ok(());
        }
        if self.message.is_compressed()
            && self.message.is_final_frame()
            && let Some(state) = self.deflate.as_deref_mut()
        {
            let reset = state.agreement.client_no_context_takeover;
            let message = &mut self.message;
            state.inflater().finish_message(config.max_message_size, reset, &mut |out| message.feed(out))?;
        }
        if self.message.end_frame()? {
            let endpoint = self.routed_endpoint();
            let mut reply = Reply {
                outgoing: &mut self.outgoing,
                deflate: self.deflate.as_deref_mut(),
                threshold: config.deflate_threshold,
            };
            handler.on_message(endpoint, self.message.message(), &mut reply);
            self.message.reset();
        }
        Ok(())
    }

    /// The endpoint messages go to. Frames are only processed after an
    /// accepted upgrade, which always sets it.
    fn routed_endpoint(&self) -> Endpoint {
        self.endpoint.unwrap_or(Endpoint::Echo)
    }

    /// Answers a control frame (§5.5) [Part 2 §20].
    fn handle_control(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        now: Instant,
        config: &Config,
    ) -> Result<(), ProtocolError> {
        match opcode {
            // §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a
            // Pong frame in response ... with identical Application data".
            // Not once we have sent a Close: nothing may follow it (§5.5.1).
            OpCode::Ping if self.is_open() => self.outgoing.push_frame(OpCode::Pong, payload),
            OpCode::Close => {
                let close = message::parse_close_payload(payload)?;
                let code = match close {
                    ClosePayload::Empty => None,
                    ClosePayload::Code(code, _) => Some(code),
                };
                if self.is_open() {
                    // §5.5.1: answer with a Close, "typically echoing the status code it received".
                    let reply = code.map(|code| code.to_be_bytes().to_vec()).unwrap_or_default();
                    self.outgoing.push_frame(OpCode::Close, &reply);
                }
                self.close_info = Some(CloseInfo::Handshake(code));
                self.enter_closed(now, config);
            }
            // Unsolicited pongs are allowed and need no answer (§5.5.3).
            _ => {}
        }
        Ok(())
    }

    /// Whether messages may still be sent (the handshake is done and no Close has gone out).
    pub fn is_open(&self) -> bool {
        matches!(self.state, ClientState::HandshakeResponse { .. } | ClientState::Connected)
    }

    /// _Fail the WebSocket Connection_ (§7.1.7): send a Close with the
    /// error's code unless we already sent one, and stop reading frames.
    fn fail(&mut self, err: &ProtocolError, now: Instant, config: &Config) {
        if self.is_open() {
            self.outgoing.push_frame(OpCode::Close, &message::close_payload(err.close_code(), err.reason()));
        }
        self.close_info = Some(CloseInfo::Failed(err.close_code(), err.reason()));
        self.enter_closed(now, config);
    }

    /// Starts the closing handshake from our side (§7.1.2), e.g. on shutdown.
    pub fn close(&mut self, code: u16, reason: &str, now: Instant, config: &Config) {
        if self.is_open() {
            self.outgoing.push_frame(OpCode::Close, &message::close_payload(code, reason));
            self.state = ClientState::Closing;
            self.deadline = now + config.close_timeout;
        } else if matches!(self.state, ClientState::AwaitingHandshake(_)) {
            self.enter_closed(now, config);
        }
    }

    /// The peer is not reading fast enough to keep up (its queue would pass
    /// its cap): drop what it has not started receiving, send Close 1008 with
    /// `reason`, and close (§7.4.1: "a message that violates its policy").
    pub fn close_slow_consumer(&mut self, reason: &'static str, now: Instant, config: &Config) {
        if !self.is_open() {
            return;
        }
        self.outgoing.discard_unsent();
        self.outgoing.push_frame(OpCode::Close, &message::close_payload(message::close_code::POLICY, reason));
        self.close_info = Some(CloseInfo::Failed(message::close_code::POLICY, reason));
        self.enter_closed(now, config);
    }

    /// Answers a connection that has not finished its handshake with an HTTP
    /// error (`response`, of status `status`) and closes it.
    pub fn reject(&mut self, response: &[u8], status: u16, now: Instant, config: &Config) {
        if !self.is_awaiting_handshake() {
            return;
        }
        self.outgoing.push(response);
        self.close_info = Some(CloseInfo::Http(status));
        self.enter_closed(now, config);
    }

    /// The peer closed its side of TCP (read returned 0).
    pub fn handle_eof(&mut self, now: Instant, config: &Config) {
        if self.close_info.is_none() {
            self.close_info = Some(CloseInfo::Abrupt);
        }
        if self.state != ClientState::Closed {
            self.enter_closed(now, config);
        }
    }

    fn enter_closed(&mut self, now: Instant, config: &Config) {
        self.state = ClientState::Closed;
        self.frame = None;
        self.pending = Vec::new();
        self.message = MessageAssembler::default();
        self.deadline = now + config.close_timeout;
    }

    /// Writes as much of the outgoing queue as `writer` takes without blocking.
    pub fn write_to<W: Write + ?Sized>(&mut self, writer: &mut W) -> io::Result<usize> {
        let written = self.outgoing.write_to(writer)?;
        if let ClientState::HandshakeResponse { ends_at } = self.state
            && self.outgoing.written_total() >= ends_at
        {
            self.state = ClientState::Connected;
            // Most connections then wait for a while: give the queue's memory back.
            self.outgoing.release();
        }
        if self.ping_sent {
            // A keepalive went out to a quiet connection: it is idle, so free its queue.
            self.outgoing.release();
        }
        Ok(written)
    }

    /// Whether the request head is still being awaited.
    pub fn is_awaiting_handshake(&self) -> bool {
        matches!(self.state, ClientState::AwaitingHandshake(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{self, WebSocketFrame};
    use std::time::Duration;

    const REQUEST: &[u8] = b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn masked(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let header =
            FrameHeader { fin, mask: Some([0x37, 0xfa, 0x21, 0x3d]), ..FrameHeader::new(opcode, payload.len() as u64) };
        let mut out = Vec::new();
        WebSocketFrame { header, payload: payload.to_vec() }.encode(&mut out);
        out
    }

    /// Drains the client's outgoing queue and decodes it: the HTTP head (if any) and frames.
    fn take_output(client: &mut WebSocketClient) -> (String, Vec<WebSocketFrame>) {
        let mut bytes = Vec::new();
        client.write_to(&mut bytes).unwrap();
        let mut head = String::new();
        if bytes.starts_with(b"HTTP/1.1") {
            let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            // After a refusal the rest is the response body, not frames.
            let end = if bytes.starts_with(b"HTTP/1.1 101 ") { end } else { bytes.len() };
            head = String::from_utf8(bytes[..end].to_vec()).unwrap();
            bytes.drain(..end);
        }
        let mut frames = Vec::new();
        while let Some(frame) = frame::decode(&mut bytes, &DecodeRules::client(u64::MAX)).unwrap() {
            frames.push(frame);
        }
        assert!(bytes.is_empty(), "trailing bytes: {bytes:?}");
        (head, frames)
    }

    fn connected(config: &Config, now: Instant) -> WebSocketClient {
        let mut client = WebSocketClient::new(now, config);
        client.handle_input(&mut REQUEST.to_vec(), now, config, &mut Echo::default());
        let (head, frames) = take_output(&mut client);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(frames.is_empty());
        assert_eq!(client.state(), &ClientState::Connected);
        client
    }

    fn feed(client: &mut WebSocketClient, bytes: &[u8], now: Instant, config: &Config) {
        client.handle_input(&mut bytes.to_vec(), now, config, &mut Echo::default());
    }

    fn close_code_of(frame: &WebSocketFrame) -> Option<u16> {
        assert_eq!(frame.header.opcode, OpCode::Close);
        frame.payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    #[test]
    fn handshake_and_first_frame_in_one_read() {
        let config = Config::default();
        let now = Instant::now();
        let mut client = WebSocketClient::new(now, &config);
        let mut input = REQUEST.to_vec();
        input.extend(masked(OpCode::Text, true, b"first"));
        client.handle_input(&mut input, now, &config, &mut Echo::default());
        assert!(matches!(client.state(), ClientState::HandshakeResponse { .. }));
        let (head, frames) = take_output(&mut client);
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert_eq!(frames, vec![WebSocketFrame::new(OpCode::Text, "first")]);
        assert_eq!(client.state(), &ClientState::Connected);
        assert_eq!(client.endpoint(), Some(Endpoint::Echo));
    }

    #[test]
    fn handshake_and_frames_split_at_every_byte_echo_the_same() {
        let config = Config::default();
        let now = Instant::now();
        let mut stream = REQUEST.to_vec();
        stream.extend(masked(OpCode::Text, false, "κό".as_bytes()));
        stream.extend(masked(OpCode::Ping, true, b"p"));
        stream.extend(masked(OpCode::Continuation, true, "σμε".as_bytes()));
        stream.extend(masked(OpCode::Binary, true, &[7; 300]));
        stream.extend(masked(OpCode::Text, true, b""));
        let expected = vec![
            WebSocketFrame::new(OpCode::Pong, "p"),
            WebSocketFrame::new(OpCode::Text, "κόσμε"),
            WebSocketFrame::new(OpCode::Binary, vec![7; 300]),
            WebSocketFrame::new(OpCode::Text, ""),
        ];
        for size in 1..=stream.len() {
            let mut client = WebSocketClient::new(now, &config);
            for chunk in stream.chunks(size) {
                feed(&mut client, chunk, now, &config);
            }
            let (head, frames) = take_output(&mut client);
            assert!(head.starts_with("HTTP/1.1 101 "), "size {size}");
            assert_eq!(frames, expected, "size {size}");
            assert!(client.pending.len() <= MAX_UNIT);
        }
        // And cut at every single point into two reads.
        for cut in 0..stream.len() {
            let mut client = WebSocketClient::new(now, &config);
            feed(&mut client, &stream[..cut], now, &config);
            feed(&mut client, &stream[cut..], now, &config);
            assert_eq!(take_output(&mut client).1, expected, "cut {cut}");
        }
    }

    #[test]
    fn refused_requests_get_their_status_and_close() {
        let config = Config::default();
        let now = Instant::now();
        let cases: [(&[u8], &str); 5] = [
            (b"POST /echo HTTP/1.1\r\nHost: a\r\n\r\n", "405"),
            (b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n", "404"),
            (b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n", "426"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "200"),
            (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", "400"),
        ];
        for (request, status) in cases {
            let mut client = WebSocketClient::new(now, &config);
            feed(&mut client, request, now, &config);
            assert_eq!(client.state(), &ClientState::Closed);
            let (head, _) = take_output(&mut client);
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(client.is_done_writing());
            assert_eq!(client.next_deadline(&config), Some(now + config.close_timeout));
        }
        // A head that never ends: 431 once it reaches the limit.
        let mut client = WebSocketClient::new(now, &config);
        feed(&mut client, b"GET / HTTP/1.1\r\nX: ", now, &config);
        for _ in 0..config.max_handshake_bytes {
            feed(&mut client, b"a", now, &config);
        }
        assert!(take_output(&mut client).0.starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn close_handshake_echoes_the_code_then_closes() {
        let config = Config::default();
        let now = Instant::now();
        let mut client = connected(&config, now);
        feed(&mut client, &masked(OpCode::Close, true, b"\x03\xe8bye"), now, &config);
        let (_, frames) = take_output(&mut client);
        assert_eq!(frames.len(), 1);
        assert_eq!(close_code_of(&frames[0]), Some(1000));
        assert!(client.is_done_writing());
        assert_eq!(client.close_info(), Some(&CloseInfo::Handshake(Some(1000))));
        // Anything after the close is ignored.
        feed(&mut client, &masked(OpCode::Text, true, b"late"), now, &config);
        assert!(take_output(&mut client).1.is_empty());
    }

    #[test]
    fn an_empty_close_is_answered_with_an_empty_close() {
        let config = Config::default();
        let now = Instant::now();
        let mut client = connected(&config, now);
        feed(&mut client, &masked(OpCode::Close, true, b""), now, &config);
        let (_, frames) = take_output(&mut client);
        assert_eq!(frames, vec![WebSocketFrame::new(OpCode::Close, Vec::new())]);
    }

    #[test]
    fn every_close_payload_rule() {
        let config = Config::default();
        let now = Instant::now();
        let mut cases: Vec<(Vec<u8>, Option<u16>)> = vec![
            (vec![0x03], Some(1002)),
            (b"\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80".to_vec(), Some(1002)),
        ];
        for code in [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999] {
            cases.push((code.to_be_bytes().to_vec(), Some(code)));
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1012, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            cases.push((code.to_be_bytes().to_vec(), Some(1002)));
        }
        for (payload, answer) in cases {
            let mut client = connected(&config, now);
            feed(&mut client, &masked(OpCode::Close, true, &payload), now, &config);
            let (_, frames) = take_output(&mut client);
            assert_eq!(frames.len(), 1, "{payload:?}");
            assert_eq!(close_code_of(&frames[0]), answer, "{payload:?}");
        }
    }

    #[test]
    fn protocol_errors_close_with_their_codes() {
        let config = Config { max_message_size: 1000, max_frame_size: 500, ..Config::default() };
        let now = Instant::now();
        let mut rsv = masked(OpCode::Text, true, b"x");
        rsv[0] |= 0x40;
        let mut unmasked = Vec::new();
        frame::encode(&mut unmasked, OpCode::Text, b"x");
        let mut too_long_ping = masked(OpCode::Ping, true, &[0; 126]);
        too_long_ping.truncate(4);
        let mut opcode3 = masked(OpCode::Text, true, b"");
        opcode3[0] = 0x83;
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (rsv, 1002),
            (opcode3, 1002),
            (unmasked, 1002),
            (masked(OpCode::Ping, false, b""), 1002),
            (too_long_ping, 1002),
            (masked(OpCode::Continuation, true, b"x"), 1002),
            ([masked(OpCode::Text, false, b"a"), masked(OpCode::Text, true, b"b")].concat(), 1002),
            (masked(OpCode::Text, true, &[0xC0, 0xAF]), 1007),
            (
                [
                    masked(OpCode::Text, false, "€".as_bytes().get(..1).unwrap()),
                    masked(OpCode::Continuation, true, b"x"),
                ]
                .concat(),
                1007,
            ),
            (masked(OpCode::Binary, true, &[0; 501]), 1009),
            (
                [
                    masked(OpCode::Binary, false, &[0; 500]),
                    masked(OpCode::Continuation, false, &[0; 500]),
                    masked(OpCode::Continuation, true, &[0; 1]),
                ]
                .concat(),
                1009,
            ),
        ];
        for (bytes, code) in cases {
            let mut client = connected(&config, now);
            feed(&mut client, &bytes, now, &config);
            let (_, frames) = take_output(&mut client);
            let last = frames.last().unwrap();
            assert_eq!(close_code_of(last), Some(code), "{bytes:02x?}");
            assert_eq!(client.state(), &ClientState::Closed);
            assert!(matches!(client.close_info(), Some(CloseInfo::Failed(c, _)) if *c == code));
        }
        // At the edge: exactly the limits pass.
        let mut client = connected(&config, now);
        feed(&mut client, &masked(OpCode::Binary, true, &[1; 500]), now, &config);
        feed(
            &mut client,
            &[masked(OpCode::Binary, false, &[2; 500]), masked(OpCode::Continuation, true, &[3; 500])].concat(),
            now,
            &config,
        );
        let (_, frames) = take_output(&mut client);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].payload.len(), 1000);
        assert_eq!(client.state(), &ClientState::Connected);
    }

    #[test]
    fn invalid_utf8_fails_before_the_rest_of_the_frame_arrives() {
        let config = Config::default();
        let now = Instant::now();
        let mut client = connected(&config, now);
        let mut payload = b"hello ".to_vec();
        payload.extend_from_slice(&[0xF4, 0x90, 0x80, 0x80]); // above U+10FFFF
        payload.extend_from_slice(&[b'x'; 10_000]);
        let wire = masked(OpCode::Text, true, &payload);
        // Only the header and the first 8 payload bytes arrive.
        feed(&mut client, &wire[..4 + 4 + 8], now, &config);
        let (_, frames) = take_output(&mut client);
        assert_eq!(close_code_of(&frames[0]), Some(1007));
    }

    #[test]
    fn a_close_we_start_waits_for_the_peer_then_times_out() {
        let config = Config { close_timeout: Duration::from_secs(5), ..Config::default() };
        let t0 = Instant::now();
        let mut client = connected(&config, t0);
        client.close(1001, "going away", t0, &config);
        assert_eq!(client.state(), &ClientState::Closing);
        let (_, frames) = take_output(&mut client);
        assert_eq!(close_code_of(&frames[0]), Some(1001));
        // Messages still arriving are read past; pings are not answered.
        feed(&mut client, &masked(OpCode::Text, true, b"in flight"), t0, &config);
        feed(&mut client, &masked(OpCode::Ping, true, b""), t0, &config);
        assert!(take_output(&mut client).1.is_empty());
        assert_eq!(client.next_deadline(&config), Some(t0 + Duration::from_secs(5)));
        assert_eq!(client.on_timer(t0 + Duration::from_millis(4999), &config), TimerAction::Continue);
        assert_eq!(client.on_timer(t0 + Duration::from_secs(5), &config), TimerAction::Drop);
        // The peer's Close completes the handshake without a second Close from us.
        feed(&mut client, &masked(OpCode::Close, true, b"\x03\xe9"), t0, &config);
        assert!(take_output(&mut client).1.is_empty());
        assert!(client.is_done_writing());
    }

    #[test]
    fn backpressure_stops_reading_while_replies_pile_up() {
        let config = Config { max_outgoing_bytes: 1000, ..Config::default() };
        let now = Instant::now();
        let mut client = connected(&config, now);
        feed(&mut client, &masked(OpCode::Binary, true, &[0; 990]), now, &config);
        assert!(client.wants_read(&config));
        feed(&mut client, &masked(OpCode::Binary, true, &[0; 10]), now, &config);
        assert!(!client.wants_read(&config));
        take_output(&mut client);
        assert!(client.wants_read(&config));
    }

    #[test]
    fn a_handshake_that_takes_too_long_gets_408_however_it_trickles() {
        let config = Config { handshake_timeout: Duration::from_secs(10), ..Config::default() };
        let t0 = Instant::now();
        let mut client = WebSocketClient::new(t0, &config);
        // A byte a second keeps arriving: the deadline stays where it was.
        for (i, byte) in REQUEST[..REQUEST.len() - 1].iter().take(12).enumerate() {
            feed(&mut client, &[*byte], t0 + Duration::from_secs(i as u64), &config);
            assert_eq!(client.next_deadline(&config), Some(t0 + Duration::from_secs(10)));
        }
        assert_eq!(client.on_timer(t0 + Duration::from_millis(9999), &config), TimerAction::Continue);
        assert!(client.outgoing.is_empty());
        assert_eq!(client.on_timer(t0 + Duration::from_secs(10), &config), TimerAction::Continue);
        assert!(take_output(&mut client).0.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        assert_eq!(client.close_info(), Some(&CloseInfo::Http(408)));
        assert_eq!(client.on_timer(t0 + Duration::from_secs(15), &config), TimerAction::Drop);
    }

    #[test]
    fn a_quiet_connection_is_pinged_then_closed_when_it_stays_silent() {
        let config = Config {
            ping_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            ..Config::default()
        };
        let t0 = Instant::now();
        let mut client = connected(&config, t0);
        assert_eq!(client.next_deadline(&config), Some(t0 + Duration::from_secs(60)));
        client.on_timer(t0 + Duration::from_secs(60), &config);
        assert_eq!(take_output(&mut client).1, vec![WebSocketFrame::new(OpCode::Ping, Vec::new())]);
        // One ping per quiet spell.
        assert_eq!(client.next_deadline(&config), Some(t0 + Duration::from_secs(120)));
        client.on_timer(t0 + Duration::from_secs(90), &config);
        assert!(take_output(&mut client).1.is_empty());
        // A pong is life: the clocks start again from it.
        let t1 = t0 + Duration::from_secs(100);
        feed(&mut client, &masked(OpCode::Pong, true, b""), t1, &config);
        assert_eq!(client.next_deadline(&config), Some(t1 + Duration::from_secs(60)));
        client.on_timer(t1 + Duration::from_secs(60), &config);
        assert_eq!(take_output(&mut client).1[0].header.opcode, OpCode::Ping);
        // Silence after that ping: closed with 1001.
        client.on_timer(t1 + Duration::from_secs(120), &config);
        let (_, frames) = take_output(&mut client);
        assert_eq!(close_code_of(&frames[0]), Some(1001));
        assert_eq!(client.state(), &ClientState::Closed);
    }

    #[test]
    fn keepalive_can_be_turned_off() {
        let config = Config { ping_interval: Duration::ZERO, idle_timeout: Duration::ZERO, ..Config::default() };
        let t0 = Instant::now();
        let client = connected(&config, t0);
        assert_eq!(client.next_deadline(&config), None);
    }

    #[test]
    fn eof_without_close_is_abrupt() {
        let config = Config::default();
        let now = Instant::now();
        let mut client = connected(&config, now);
        client.handle_eof(now, &config);
        assert_eq!(client.close_info(), Some(&CloseInfo::Abrupt));
        assert!(client.is_done_writing());
    }
}
