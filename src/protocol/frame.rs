//! WebSocket frames: the codec of RFC 6455 §5 [Rust in Detail, Part 2 §14–20].
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               | Masking-key, if MASK set to 1 |
//! +-------------------------------+-------------------------------+
//! | Masking-key (continued)       |          Payload Data         |
//! +-------------------------------- - - - - - - - - - - - - - - - +
//! ```
//!
//! Everything here works on byte slices and never touches a socket. The
//! blog read a frame straight off the socket with `read_u16`/`read_exact`,
//! which breaks the moment a frame arrives in two TCP segments. Here
//! [`FrameHeader::decode`] looks at whatever bytes have arrived and answers
//! `Ok(None)` ("need more") without consuming anything, and every length is
//! checked against a limit *before* anything is allocated for it.

use super::ProtocolError;
use super::mask::apply_mask;

/// Control frames carry at most this many payload bytes (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest possible header: 2 fixed bytes, 8 bytes of extended length, 4 of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// A 7-bit length of 126 means "the real length follows as a u16".
const PAYLOAD_LEN_U16: u8 = 126;
/// A 7-bit length of 127 means "the real length follows as a u64".
const PAYLOAD_LEN_U64: u8 = 127;

const FIN_BIT: u8 = 0x80;
const RSV_BITS: u8 = 0x70;
const OPCODE_BITS: u8 = 0x0F;
const MASK_BIT: u8 = 0x80;
const LEN_BITS: u8 = 0x7F;

/// The RSV1 bit, which permessage-deflate (RFC 7692) uses to mark a compressed message.
pub const RSV1: u8 = 0x40;

/// What a frame carries (RFC 6455 §5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// More of a fragmented message.
    Continuation = 0x0,
    /// The first frame of a UTF-8 text message.
    Text = 0x1,
    /// The first frame of a binary message.
    Binary = 0x2,
    /// The closing handshake (§5.5.1).
    Close = 0x8,
    /// A keepalive or liveness probe; must be answered with a Pong (§5.5.2).
    Ping = 0x9,
    /// The answer to a Ping, or an unsolicited heartbeat (§5.5.3).
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for a 4-bit value, or `None` for the reserved values 3–7 and 0xB–0xF.
    pub fn from_u8(value: u8) -> Option<OpCode> {
        match value {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Control opcodes have the high bit of the nibble set (§5.5).
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// What a decoder accepts: which side it is on and how large a frame may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeRules {
    /// `true` on a server: every client frame must be masked (§5.1).
    /// `false` on a client: no server frame may be.
    pub expect_masked: bool,
    /// RSV bits a negotiated extension has given a meaning to (e.g. [`RSV1`]).
    pub allowed_rsv: u8,
    /// The largest payload a single frame may declare.
    pub max_payload: u64,
}

impl DecodeRules {
    /// Rules for a server reading client frames.
    pub fn server(max_payload: u64) -> DecodeRules {
        DecodeRules { expect_masked: true, allowed_rsv: 0, max_payload }
    }

    /// Rules for a client reading server frames.
    pub fn client(max_payload: u64) -> DecodeRules {
        DecodeRules { expect_masked: false, allowed_rsv: 0, max_payload }
    }
}

/// A parsed frame header [Part 2 §15 "Unpacking Header"].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The final frame of a message.
    pub fin: bool,
    /// RSV1–RSV3 in their wire positions (`0x40`, `0x20`, `0x10`).
    pub rsv: u8,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The masking key, present on every client-to-server frame.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

impl FrameHeader {
    /// A final, unmasked frame header, as a server sends it.
    pub fn new(opcode: OpCode, payload_len: u64) -> FrameHeader {
        FrameHeader { fin: true, rsv: 0, opcode, mask: None, payload_len }
    }

    /// Parses and validates a header at the start of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold the whole header, and
    /// `Ok(Some((header, header_len)))` when it does. Checks run in the
    /// order of RFC 6455 §5.2 (RSV bits, opcode, mask, control-frame rules,
    /// length) and each runs as soon as its byte has arrived, so a bad frame
    /// fails on its first two bytes rather than after its payload.
    #[inline]
    pub fn decode(buf: &[u8], rules: &DecodeRules) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let rsv = first & RSV_BITS;
        // §5.2: "If a nonzero value is received and none of the negotiated
        // extensions defines the meaning of such a nonzero value, the
        // receiving endpoint MUST _Fail the WebSocket Connection_."
        if rsv & !rules.allowed_rsv != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        let raw_opcode = first & OPCODE_BITS;
        let opcode = OpCode::from_u8(raw_opcode).ok_or(ProtocolError::UnknownOpCode(raw_opcode))?;
        let fin = first & FIN_BIT != 0;
        // §5.5: "All control frames ... MUST NOT be fragmented."
        if opcode.is_control() && !fin {
            return Err(ProtocolError::FragmentedControl);
        }

        let Some(&second) = buf.get(1) else {
            return Ok(None);
        };
        let masked = second & MASK_BIT != 0;
        if masked != rules.expect_masked {
            return Err(if rules.expect_masked { ProtocolError::UnmaskedFrame } else { ProtocolError::MaskedFrame });
        }
        let len7 = second & LEN_BITS;
        // §5.5: "All control frames MUST have a payload length of 125 bytes or less."
        if opcode.is_control() && usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::ControlTooLong);
        }

        let (payload_len, mut pos) = match len7 {
            PAYLOAD_LEN_U16 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            PAYLOAD_LEN_U64 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(bytes) => (u64::from_be_bytes(bytes), 10),
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        // §5.2: "the most significant bit MUST be 0". The RFC also asks
        // senders for the minimal length encoding; like most peers we accept a
        // longer one, since nothing is ambiguous about it.
        if payload_len > i64::MAX as u64 {
            return Err(ProtocolError::LengthTopBit);
        }
        if payload_len > rules.max_payload {
            return Err(ProtocolError::FrameTooLarge);
        }

        let mask = if masked {
            match buf.get(pos..pos + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                Some(key) => {
                    pos += 4;
                    Some(key)
                }
                None => return Ok(None),
            }
        } else {
            None
        };

        let header = FrameHeader { fin, rsv, opcode, mask, payload_len };
        Ok(Some((header, pos)))
    }

    /// The number of bytes [`FrameHeader::encode`] writes for this header.
    pub fn encoded_len(&self) -> usize {
        let len_bytes = match self.payload_len {
            0..=125 => 0,
            126..=0xFFFF => 2,
            _ => 8,
        };
        2 + len_bytes + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Appends the header to `out`, always with the shortest length encoding
    /// (§5.2: "the minimal number of bytes MUST be used").
    #[inline]
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (bytes, len) = self.to_bytes();
        // A fixed-size copy is a couple of moves; a variable one, a call to memcpy.
        let start = out.len();
        out.extend_from_slice(&bytes);
        out.truncate(start + len);
    }

    /// The header's bytes, and how many of them there are: one copy into the
    /// output instead of a capacity check per byte.
    #[inline]
    pub fn to_bytes(&self) -> ([u8; MAX_HEADER_LEN], usize) {
        let mut bytes = [0u8; MAX_HEADER_LEN];
        bytes[0] = self.opcode.as_u8() | (self.rsv & RSV_BITS) | if self.fin { FIN_BIT } else { 0 };
        let mask_bit = if self.mask.is_some() { MASK_BIT } else { 0 };
        let mut len = match self.payload_len {
            short @ 0..=125 => {
                bytes[1] = mask_bit | short as u8;
                2
            }
            medium @ 126..=0xFFFF => {
                bytes[1] = mask_bit | PAYLOAD_LEN_U16;
                bytes[2..4].copy_from_slice(&(medium as u16).to_be_bytes());
                4
            }
            long => {
                bytes[1] = mask_bit | PAYLOAD_LEN_U64;
                bytes[2..10].copy_from_slice(&long.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            bytes[len..len + 4].copy_from_slice(&key);
            len += 4;
        }
        (bytes, len)
    }
}

/// A whole frame with its (unmasked) payload [Part 2 §18].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketFrame {
    /// The header as it was on the wire (including the mask key, if any).
    pub header: FrameHeader,
    /// The payload, already unmasked.
    pub payload: Vec<u8>,
}

impl WebSocketFrame {
    /// A final, unmasked frame, as a server sends it.
    pub fn new(opcode: OpCode, payload: impl Into<Vec<u8>>) -> WebSocketFrame {
        let payload = payload.into();
        WebSocketFrame { header: FrameHeader::new(opcode, payload.len() as u64), payload }
    }

    /// Appends the frame to `out`, masking the payload if the header has a key.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.header.encode(out);
        let start = out.len();
        out.extend_from_slice(&self.payload);
        if let Some(key) = self.header.mask {
            apply_mask(&mut out[start..], key, 0);
        }
    }
}

/// Decodes one whole frame from the front of `buf`.
///
/// `Ok(None)` means the frame is not complete yet; nothing is consumed, so the
/// caller appends more bytes and calls again. On `Ok(Some(frame))` exactly the
/// frame's bytes have been removed from `buf`. The payload is allocated only
/// after its declared length has passed `rules.max_payload`.
///
/// The server itself streams payloads instead (see `client.rs`), so that a
/// 16 MiB frame is checked for UTF-8 as it arrives; this function serves
/// clients, tests and tools that want whole frames.
pub fn decode(buf: &mut Vec<u8>, rules: &DecodeRules) -> Result<Option<WebSocketFrame>, ProtocolError> {
    let Some((header, header_len)) = FrameHeader::decode(buf, rules)? else {
        return Ok(None);
    };
    // The length fits in usize: it passed max_payload, which the caller chose.
    let Ok(payload_len) = usize::try_from(header.payload_len) else {
        return Err(ProtocolError::FrameTooLarge);
    };
    let Some(end) = header_len.checked_add(payload_len) else {
        return Err(ProtocolError::FrameTooLarge);
    };
    if buf.len() < end {
        return Ok(None);
    }
    let mut payload = buf[header_len..end].to_vec();
    if let Some(key) = header.mask {
        apply_mask(&mut payload, key, 0);
    }
    buf.drain(..end);
    Ok(Some(WebSocketFrame { header, payload }))
}

/// Appends an unmasked final frame (header and payload) to `out`.
pub fn encode(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    FrameHeader::new(opcode, payload.len() as u64).encode(out);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests;
