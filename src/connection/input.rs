//! Input: the request head, then frames, processed in place in the buffer
//! they arrive in [Part 2 §14–18, §20].
//!
//! The payload of a data frame is consumed piece by piece as it arrives —
//! unmasked, checked for UTF-8, and either appended to the message being
//! reassembled or, when a whole single-frame message is already in the
//! buffer, handed to the handler without any copy. What is left over between
//! reads is at most an incomplete frame header or control frame.

use super::{Asks, ClientState, CloseInfo, ConnectionConfig, Handler, Reply, Route, WebSocketClient};
use crate::protocol::ProtocolError;
use crate::protocol::deflate::{self, DeflateState};
use crate::protocol::frame::{DecodeRules, FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode, RSV1};
use crate::protocol::handshake::{self, HandshakeError, HttpResponse};
use crate::protocol::mask::apply_mask;
use crate::protocol::message::{self, ClosePayload, Message, MessageAssembler};
use std::time::Instant;

/// The longest unit that must be whole before it is processed: a control
/// frame with its header. Everything longer (data payloads) is streamed.
pub(super) const MAX_UNIT: usize = MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD;

/// The frame-level input state of an open (or closing) connection.
#[derive(Debug, Default)]
pub(super) struct FrameReader {
    /// An incomplete frame header or control frame left over from the last read.
    pub(super) leftover: Vec<u8>,
    /// A frame or message that spans reads or frames. Most connections never
    /// send one (a whole message in one read takes the fast path), so this
    /// state is boxed the first time one does: a pointer in every slot
    /// instead of 64 bytes. It is kept from then on, for the next such message.
    reassembly: Option<Box<Reassembly>>,
}

/// What a frame or message in progress needs.
#[derive(Debug, Default)]
struct Reassembly {
    /// The data frame whose payload is arriving.
    frame: Option<PayloadInProgress>,
    /// The message being reassembled.
    message: MessageAssembler,
}

impl FrameReader {
    /// The data frame whose payload is arriving, if any.
    #[inline]
    fn frame(&self) -> Option<PayloadInProgress> {
        self.reassembly.as_ref().and_then(|r| r.frame)
    }

    fn set_frame(&mut self, frame: Option<PayloadInProgress>) {
        match (&mut self.reassembly, frame) {
            (Some(r), frame) => r.frame = frame,
            (None, None) => {}
            (None, frame) => self.reassembly = Some(Box::new(Reassembly { frame, ..Reassembly::default() })),
        }
    }

    /// Whether a fragmented or streamed message is being reassembled.
    #[inline]
    fn message_in_progress(&self) -> bool {
        self.reassembly.as_ref().is_some_and(|r| r.message.in_progress())
    }

    /// The reassembly of the message in progress (allocated the first time).
    fn message(&mut self) -> &mut MessageAssembler {
        &mut self.reassembly.get_or_insert_with(Box::default).message
    }

    /// Bytes held by the reassembly buffer.
    #[cfg(test)]
    pub(super) fn reassembled(&self) -> usize {
        self.reassembly.as_ref().map_or(0, |r| r.message.buffered())
    }

    /// What the reassembly buffer has reserved, in bytes.
    #[inline]
    pub(super) fn reserved(&self) -> usize {
        self.leftover.capacity() + self.reassembly.as_ref().map_or(0, |r| r.message.capacity())
    }
}

/// The payload of the data frame now arriving.
#[derive(Debug, Clone, Copy)]
struct PayloadInProgress {
    key: [u8; 4],
    /// Where the next byte falls in the mask (payload bytes consumed, mod 4:
    /// one byte rather than eight, in every connection).
    offset: u8,
    remaining: u64,
    /// Read and drop: the connection is closing.
    discard: bool,
}

/// How a complete request head is answered.
enum Answer {
    /// Switch to WebSocket.
    Upgrade { accept: String, deflate: Option<deflate::Agreement>, head_len: usize },
    /// Plain HTTP: a page, or an error.
    Http(HttpResponse),
}

impl WebSocketClient {
    /// Adds `input` to the request head and answers it once it is complete.
    pub(super) fn handle_head<H: Handler>(
        &mut self,
        input: &mut [u8],
        now: Instant,
        config: &ConnectionConfig,
        handler: &mut H,
    ) {
        let ClientState::AwaitingHandshake { head, .. } = &mut self.state else { return };
        head.extend_from_slice(input);
        // Parse again only when a line may have ended (or the limit is
        // reached): a client that trickles a byte at a time then costs a
        // scan of each byte, not a parse of the whole head per byte.
        if !input.contains(&b'\n') && head.len() < config.max_handshake_bytes {
            return;
        }
        let mut head = std::mem::take(head);
        let answer = answer_request(&head, config, handler);
        match answer {
            Ok(None) => {
                if let ClientState::AwaitingHandshake { head: kept, .. } = &mut self.state {
                    *kept = head;
                }
            }
            Ok(Some(Answer::Upgrade { accept, deflate, head_len })) => {
                let extension = deflate.map(|agreement| agreement.response_header());
                self.outgoing.push(&handshake::accept_response(&accept, extension.as_deref()));
                self.deflate = deflate.map(|agreement| Box::new(DeflateState::new(agreement)));
                let ends_at = self.outgoing.queued_total();
                self.state = ClientState::HandshakeResponse { ends_at, paused_until: None };
                let mut asks = Asks::default();
                handler.on_open(&mut Reply::new(&mut self.outgoing, self.deflate.as_deref_mut(), config, &mut asks));
                if let Some((code, reason)) = asks.take_close() {
                    // Refused on opening: the Close goes out at once, and what
                    // the client sent after its request is not read.
                    self.refuse(code, &reason, now, config);
                    return;
                }
                self.act_on(asks, now, config);
                // A first frame sent in the same write as the request.
                if head_len < head.len() {
                    self.handle_frames(&mut head[head_len..], now, config, handler);
                }
            }
            Ok(Some(Answer::Http(response))) => self.answer_http(&response, now, config),
            Err(err) => self.answer_http(&err.http_response(), now, config),
        }
    }

    /// Processes frames from `input`, after finishing the incomplete unit of the last read.
    pub(super) fn handle_frames<H: Handler>(
        &mut self,
        input: &mut [u8],
        now: Instant,
        config: &ConnectionConfig,
        handler: &mut H,
    ) {
        if self.reader.leftover.is_empty() {
            self.feed_frames(input, now, config, handler);
            return;
        }
        // Finish the incomplete unit from the last read with as few of the new
        // bytes as it can need, then go on in `input` itself.
        let mut buf = std::mem::take(&mut self.reader.leftover);
        let old = buf.len();
        let take = input.len().min(MAX_UNIT);
        buf.extend_from_slice(&input[..take]);
        let used = self.process_frames(&mut buf, now, config, handler);
        if used >= old {
            // The old unit is done; `used - old` bytes of `input` went with it.
            // Drop the copy buffer: an idle connection holds no read buffer.
            drop(buf);
            self.feed_frames(&mut input[used - old..], now, config, handler);
        } else if !self.is_closed() {
            // The old unit is still incomplete (so all of `input` is in `buf`),
            // or the handler paused the input (then the rest of it waits too).
            buf.drain(..used);
            buf.extend_from_slice(&input[take..]);
            self.reader.leftover = buf;
        }
    }

    /// Processes `buf` and keeps whatever incomplete unit is left at its end.
    fn feed_frames<H: Handler>(&mut self, buf: &mut [u8], now: Instant, config: &ConnectionConfig, handler: &mut H) {
        let used = self.process_frames(buf, now, config, handler);
        if used < buf.len() && !self.is_closed() {
            self.reader.leftover.extend_from_slice(&buf[used..]);
        }
    }

    /// Processes every complete unit in `buf`; returns how many bytes were consumed.
    fn process_frames<H: Handler>(
        &mut self,
        buf: &mut [u8],
        now: Instant,
        config: &ConnectionConfig,
        handler: &mut H,
    ) -> usize {
        let mut pos = 0;
        while pos < buf.len() {
            if self.is_closed() {
                return buf.len();
            }
            if self.is_stopped() {
                break; // the rest waits in `leftover` until the pause ends
            }
            match self.step(&mut buf[pos..], now, config, handler) {
                Ok(Some(used)) => pos += used,
                Ok(None) => break,
                Err(err) => {
                    self.fail_with(err.close_code(), err.reason(), now, config);
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
        config: &ConnectionConfig,
        handler: &mut H,
    ) -> Result<Option<usize>, ProtocolError> {
        if let Some(frame) = self.reader.frame() {
            return self.step_payload(frame, buf, now, config, handler).map(Some);
        }
        let mut rules = DecodeRules::server(config.max_frame_size as u64);
        if self.deflate.is_some() {
            rules.allowed_rsv = RSV1;
            // A compressed frame may be a little longer than what it holds.
            rules.max_payload = deflate::max_compressed_len(rules.max_payload);
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
        if matches!(self.state, ClientState::Closing { .. }) {
            // We are closing: the peer's messages are read past, not delivered.
            if header.payload_len > 0 {
                let remaining = header.payload_len;
                self.reader.set_frame(Some(PayloadInProgress { key, offset: 0, remaining, discard: true }));
            }
            return Ok(Some(header_len));
        }
        self.step_data(&header, header_len, buf, now, config, handler)
    }

    /// The next piece of the payload of `frame`, the data frame in progress.
    fn step_payload<H: Handler>(
        &mut self,
        mut frame: PayloadInProgress,
        buf: &mut [u8],
        now: Instant,
        config: &ConnectionConfig,
        handler: &mut H,
    ) -> Result<usize, ProtocolError> {
        let n = usize::try_from(frame.remaining).unwrap_or(usize::MAX).min(buf.len());
        let piece = &mut buf[..n];
        apply_mask(piece, frame.key, usize::from(frame.offset));
        frame.offset = ((usize::from(frame.offset) + n) % 4) as u8;
        frame.remaining -= n as u64;
        let done = frame.remaining == 0;
        self.reader.set_frame((!done).then_some(frame));
        if !frame.discard {
            self.feed_payload(piece, config)?;
            if done {
                self.end_data_frame(now, config, handler)?;
            }
        }
        Ok(n)
    }

    /// A data frame's header has been decoded from the front of `buf`.
    fn step_data<H: Handler>(
        &mut self,
        header: &FrameHeader,
        header_len: usize,
        buf: &mut [u8],
        now: Instant,
        config: &ConnectionConfig,
        handler: &mut H,
    ) -> Result<Option<usize>, ProtocolError> {
        let key = header.mask.unwrap_or_default();
        let in_progress = self.reader.message_in_progress();
        let end = usize::try_from(header.payload_len).ok().and_then(|len| len.checked_add(header_len));
        // Fast path: a whole single-frame, uncompressed message is in the
        // buffer, within the limits. Unmask it in place and hand it over
        // without copying it anywhere (nor touching the reassembly state).
        if header.fin
            && !in_progress
            && header.rsv == 0
            && header.opcode != OpCode::Continuation
            && header.payload_len <= config.max_message_size as u64
            && let Some(payload) = end.and_then(|end| buf.get_mut(header_len..end))
            && payload.len() <= handler.message_limit()
        {
            apply_mask(payload, key, 0);
            let message = match header.opcode {
                OpCode::Text => Message::Text(std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?),
                _ => Message::Binary(payload),
            };
            let used = header_len + payload.len();
            let mut asks = Asks::default();
            handler.on_message(
                message,
                &mut Reply::new(&mut self.outgoing, self.deflate.as_deref_mut(), config, &mut asks),
            );
            self.act_on(asks, now, config);
            return Ok(Some(used));
        }
        // The receiver's own limit is asked for at a message's first frame only.
        let limit = if in_progress { u64::MAX } else { handler.message_limit() as u64 };
        self.reader.message().begin_frame(header, config.max_message_size as u64, limit)?;
        // Otherwise stream the payload into the reassembly buffer as it arrives.
        if header.payload_len == 0 {
            self.end_data_frame(now, config, handler)?;
        } else {
            let remaining = header.payload_len;
            self.reader.set_frame(Some(PayloadInProgress { key, offset: 0, remaining, discard: false }));
        }
        Ok(Some(header_len))
    }

    /// Adds a piece of (unmasked) payload to the message, through the inflater if it is compressed.
    fn feed_payload(&mut self, piece: &[u8], config: &ConnectionConfig) -> Result<(), ProtocolError> {
        let message = self.reader.message();
        if !message.is_compressed() {
            return message.feed(piece);
        }
        // RSV1 passed the decoder, so permessage-deflate was negotiated.
        let Some(state) = self.deflate.as_deref_mut() else { return Err(ProtocolError::ReservedBits) };
        state.inflater().inflate(piece, config.max_message_size, &mut |out| message.feed(out))
    }

    fn end_data_frame<H: Handler>(
        &mut self,
        now: Instant,
        config: &ConnectionConfig,
        handler: &mut H,
    ) -> Result<(), ProtocolError> {
        let message = self.reader.message();
        if message.is_compressed()
            && message.is_final_frame()
            && let Some(state) = self.deflate.as_deref_mut()
        {
            let reset = state.agreement.client_no_context_takeover;
            state.inflater().finish_message(config.max_message_size, reset, &mut |out| message.feed(out))?;
        }
        if message.end_frame()? {
            let mut asks = Asks::default();
            let mut reply = Reply::new(&mut self.outgoing, self.deflate.as_deref_mut(), config, &mut asks);
            if message.is_over() {
                handler.on_message_too_long(&mut reply);
            } else {
                handler.on_message(message.message(), &mut reply);
            }
            message.reset();
            self.act_on(asks, now, config);
        }
        Ok(())
    }

    /// Answers a control frame (§5.5) [Part 2 §20].
    fn handle_control(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        now: Instant,
        config: &ConnectionConfig,
    ) -> Result<(), ProtocolError> {
        match opcode {
            // §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a
            // Pong frame in response ... with identical Application data".
            // Not once we have sent a Close: nothing may follow it (§5.5.1).
            OpCode::Ping if self.is_open() => self.outgoing.push_frame(OpCode::Pong, payload),
            OpCode::Close => {
                let code = match message::parse_close_payload(payload)? {
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
}

/// Parses the request head and decides its answer: `Ok(None)` while it is
/// incomplete, an error for a request that is not acceptable.
fn answer_request<H: Handler>(
    head: &[u8],
    config: &ConnectionConfig,
    handler: &mut H,
) -> Result<Option<Answer>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
    let Some((request, head_len)) = handshake::parse_request(head, &mut headers, config.max_handshake_bytes)? else {
        return Ok(None);
    };
    if request.method != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    config.origin.check_host(request.header_values("Host"))?;
    match handler.route(&request) {
        Route::NotFound => Err(HandshakeError::NotFound),
        Route::Respond(response) => Ok(Some(Answer::Http(response))),
        Route::Upgrade => {
            let accept = request.validate_upgrade()?;
            config.origin.check_origin(request.header_values("Origin"), request.header("Host"))?;
            let deflate = if config.deflate.enabled {
                let offers = request.header_values("Sec-WebSocket-Extensions");
                deflate::negotiate(offers, config.deflate.context_takeover).map_err(HandshakeError::BadRequest)?
            } else {
                None
            };
            Ok(Some(Answer::Upgrade { accept, deflate, head_len }))
        }
    }
}
