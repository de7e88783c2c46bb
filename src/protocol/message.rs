//! From frames to messages: fragment reassembly, incremental UTF-8 checking,
//! message size limits and the close-frame rules (RFC 6455 §5.4, §5.5.1, §7.4, §8.1).
//!
//! This is where rust-chat goes past the blog, which treated every frame as a
//! whole message. Here a message may span many frames, control frames may
//! arrive between them, and a text message is checked for UTF-8 piece by
//! piece as its bytes arrive, so a bad byte fails the connection at once
//! instead of after the rest of a 16 MiB message.

use super::ProtocolError;
use super::frame::{FrameHeader, OpCode};

/// Whether `code` may appear in a Close frame on the wire (§7.4).
///
/// 1000–1003 and 1007–1011 are defined by the RFC; 3000–3999 are registered
/// with IANA for libraries and frameworks; 4000–4999 are for private use.
/// 1004 is reserved, 1005, 1006 and 1015 must never be sent, and everything
/// else below 3000 is unassigned.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// The parsed payload of a Close frame (§5.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosePayload<'a> {
    /// An empty payload: the peer gave no code.
    Empty,
    /// A status code and a UTF-8 reason (possibly empty).
    Code(u16, &'a str),
}

/// Parses and validates a Close frame's payload.
///
/// "If there is a body, the first two bytes of the body MUST be a 2-byte
/// unsigned integer (in network byte order) representing a status code"; the
/// rest is a UTF-8 reason. A 1-byte body, a code that may not be sent, or a
/// reason that is not UTF-8 fails the connection with 1002.
pub fn parse_close_payload(payload: &[u8]) -> Result<ClosePayload<'_>, ProtocolError> {
    match payload {
        [] => Ok(ClosePayload::Empty),
        [_] => Err(ProtocolError::InvalidClosePayload),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok(ClosePayload::Code(code, reason))
        }
    }
}

/// Builds a Close payload: the code in network order, then the reason,
/// cut at a character boundary so the whole fits in a control frame.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(super::frame::MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

/// A UTF-8 check that takes its input in pieces.
///
/// A piece may end in the middle of a character; the validator keeps those
/// (at most three) bytes and finishes the character with the next piece. An
/// invalid sequence is reported as soon as the first byte that makes it
/// invalid arrives: std's validator reports `error_len() == None` only when
/// the input could still become valid with more bytes.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    partial: [u8; 4],
    partial_len: u8,
}

impl Utf8Validator {
    /// Checks the next piece of the text.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), ProtocolError> {
        // First complete the character left over from the previous piece.
        while self.partial_len > 0 {
            let Some((&byte, rest)) = input.split_first() else {
                return Ok(());
            };
            input = rest;
            let n = usize::from(self.partial_len);
            self.partial[n] = byte;
            match std::str::from_utf8(&self.partial[..=n]) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_some() => return Err(ProtocolError::InvalidUtf8),
                // Still incomplete; a valid character has at most four bytes,
                // and std reports an error before the fifth.
                Err(_) => self.partial_len += 1,
            }
        }
        match std::str::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(ProtocolError::InvalidUtf8),
            Err(e) => {
                let tail = &input[e.valid_up_to()..];
                self.partial[..tail.len()].copy_from_slice(tail);
                self.partial_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Ends the text: an unfinished character at the end is an error.
    pub fn finish(&mut self) -> Result<(), ProtocolError> {
        let complete = self.partial_len == 0;
        self.partial_len = 0;
        if complete { Ok(()) } else { Err(ProtocolError::InvalidUtf8) }
    }
}

/// The kind of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8 text.
    Text,
    /// Arbitrary bytes.
    Binary,
}

/// A complete message, handed to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, already checked to be UTF-8.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The message's kind.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Text(_) => MessageKind::Text,
            Message::Binary(_) => MessageKind::Binary,
        }
    }

    /// The message's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes,
        }
    }

    /// The opcode a single-frame message of this kind is sent with.
    pub fn opcode(&self) -> OpCode {
        match self {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        }
    }
}

/// Reassembles data frames into messages (§5.4).
///
/// Call [`begin_frame`](Self::begin_frame) with each data frame's header,
/// [`feed`](Self::feed) with its payload as it arrives (in any number of
/// pieces), and [`end_frame`](Self::end_frame) when the payload is complete.
/// The buffer grows only as bytes arrive, and only after the declared
/// length has passed the message limit.
#[derive(Debug)]
pub struct MessageAssembler {
    /// The kind of the message in progress, `None` between messages.
    kind: Option<MessageKind>,
    /// The current frame is the final one of its message.
    fin: bool,
    /// The message is compressed (RSV1 on its first frame): its payload goes through the inflater.
    compressed: bool,
    /// Bytes declared so far by the message's frames (checked against the limit).
    declared: u64,
    buf: Vec<u8>,
    utf8: Utf8Validator,
    /// The receiving application's limit on this message's (inflated) size
    /// (4 bytes, not 8: every connection holds an assembler).
    limit: u32,
    /// The message has passed `limit`: its bytes are still checked (UTF-8)
    /// as they arrive, but no longer kept.
    over: bool,
}

impl Default for MessageAssembler {
    fn default() -> MessageAssembler {
        MessageAssembler {
            kind: None,
            fin: false,
            compressed: false,
            declared: 0,
            buf: Vec::new(),
            utf8: Utf8Validator::default(),
            limit: u32::MAX,
            over: false,
        }
    }
}

/// Capacity above which the reassembly buffer is freed after a message, so
/// that one large message does not pin memory for the rest of a connection.
const KEEP_CAPACITY: usize = 4096;

impl MessageAssembler {
    /// Whether a fragmented message has started and not yet finished.
    pub fn in_progress(&self) -> bool {
        self.kind.is_some()
    }

    /// Bytes held by the reassembly buffer.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the reassembly buffer has reserved (what it costs in memory).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether the message in progress is compressed.
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// Whether the current frame is the last of its message.
    pub fn is_final_frame(&self) -> bool {
        self.fin
    }

    /// Whether the message in progress has passed the application's limit
    /// (see [`begin_frame`](Self::begin_frame)): it is read to its end, but not kept.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Starts a data frame: checks the continuation rules and the message
    /// size limit. `max_message` is the protocol's limit: a message over it
    /// fails the connection (1009). `limit` (taken from a message's first
    /// frame) is the application's, which may be lower: a message over it is
    /// read past without being kept ([`is_over`](Self::is_over)), so that the
    /// connection can go on. An uncompressed message is over as soon as its
    /// frames declare more; a compressed one when its inflated bytes do.
    #[inline]
    pub fn begin_frame(&mut self, header: &FrameHeader, max_message: u64, limit: u64) -> Result<(), ProtocolError> {
        let kind = match (header.opcode, self.kind) {
            (OpCode::Continuation, Some(kind)) => kind,
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            (OpCode::Text, None) => MessageKind::Text,
            (OpCode::Binary, None) => MessageKind::Binary,
            // Control frames never reach the assembler.
            (_, None) => return Err(ProtocolError::UnknownOpCode(header.opcode.as_u8())),
        };
        // RFC 7692 §6.1: RSV1 marks a compressed message on its first frame only.
        let rsv1 = header.rsv & super::frame::RSV1 != 0;
        let first = header.opcode != OpCode::Continuation;
        if !first && rsv1 {
            return Err(ProtocolError::MisplacedCompressionBit);
        }
        let compressed = if first { rsv1 } else { self.compressed };
        // A compressed message's frames carry its DEFLATE data, which can be a
        // little longer than the message itself: allow for that, so that every
        // message within the limit passes compressed too. (The inflated bytes
        // are held to `max_message` as they come out of the inflater.)
        let max = if compressed { super::deflate::max_compressed_len(max_message) } else { max_message };
        // Overflow-safe: `declared` never exceeds `max`.
        if header.payload_len > max.saturating_sub(self.declared) {
            return Err(ProtocolError::MessageTooLarge);
        }
        if first {
            self.compressed = rsv1;
            self.limit = u32::try_from(limit).unwrap_or(u32::MAX);
        }
        self.declared += header.payload_len;
        if !self.compressed && self.declared > u64::from(self.limit) {
            self.pass_limit();
        }
        if !self.over
            && self.buf.capacity() == 0
            && header.payload_len as usize >= super::pool::MIN_BUFFER
            && header.payload_len <= u64::from(self.limit)
        {
            self.take_buffer(header.payload_len as usize);
        }
        self.kind = Some(kind);
        self.fin = header.fin;
        Ok(())
    }

    /// Adds a piece of the current frame's (unmasked, inflated) payload.
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), ProtocolError> {
        if self.kind == Some(MessageKind::Text) {
            self.utf8.feed(piece)?;
        }
        if self.over {
            return Ok(());
        }
        if (self.buf.len() + piece.len()) as u64 > u64::from(self.limit) {
            self.pass_limit();
            return Ok(());
        }
        self.buf.extend_from_slice(piece);
        Ok(())
    }

    /// A large message: start from a pooled buffer sized for this frame.
    #[cold]
    fn take_buffer(&mut self, len: usize) {
        self.buf = super::pool::take(len);
    }

    /// The message is over the application's limit: let go of what was kept.
    #[cold]
    fn pass_limit(&mut self) {
        self.over = true;
        if self.buf.capacity() > KEEP_CAPACITY {
            super::pool::give(std::mem::take(&mut self.buf));
        } else {
            self.buf.clear();
        }
    }

    /// Ends the current frame. Returns `true` when it completed the message,
    /// which [`message`](Self::message) then yields until [`reset`](Self::reset).
    pub fn end_frame(&mut self) -> Result<bool, ProtocolError> {
        if !self.fin {
            return Ok(false);
        }
        if self.kind == Some(MessageKind::Text) {
            self.utf8.finish()?;
        }
        Ok(true)
    }

    /// The completed message.
    pub fn message(&self) -> Message<'_> {
        match self.kind {
            // The validator has passed every byte of it.
            Some(MessageKind::Text) => match std::str::from_utf8(&self.buf) {
                Ok(text) => Message::Text(text),
                Err(_) => Message::Binary(&self.buf),
            },
            _ => Message::Binary(&self.buf),
        }
    }

    /// Forgets the current message and gets ready for the next one.
    #[inline]
    pub fn reset(&mut self) {
        self.kind = None;
        self.fin = false;
        self.compressed = false;
        self.declared = 0;
        self.utf8 = Utf8Validator::default();
        self.limit = u32::MAX;
        self.over = false;
        if self.buf.capacity() > KEEP_CAPACITY {
            super::pool::give(std::mem::take(&mut self.buf));
        } else {
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests;
