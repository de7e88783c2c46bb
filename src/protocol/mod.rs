//! The WebSocket protocol itself, sans-IO: RFC 6455 and RFC 7692 on byte
//! buffers [Rust in Detail, Part 2].
//!
//! Nothing in this layer touches a socket, a clock or an application: every
//! function takes bytes (and limits) and returns bytes, frames or errors.
//! That is what lets the same code be unit-tested byte by byte, fuzzed, and
//! driven by any event loop.
//!
//! | file | what |
//! |---|---|
//! | [`frame`] | `OpCode`, `FrameHeader`, `WebSocketFrame`: decode and encode (§5) |
//! | [`mask`] | `apply_mask` (§5.3) |
//! | [`handshake`] | the HTTP upgrade: parsing, validation, `gen_key`, responses (§4) |
//! | [`message`] | reassembly of fragments, incremental UTF-8, Close payloads (§5.4, §5.5.1, §8.1) |
//! | [`deflate`] | permessage-deflate (RFC 7692): negotiation, bounded inflate, compression |
//!
//! This file holds what every one of them shares: [`ProtocolError`], the
//! error of the whole layer, and the [`close_code`]s it maps onto, so that
//! `frame` and `message` need not import each other.

pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod origin;
pub(crate) mod pool;

pub use frame::{OpCode, WebSocketFrame};
pub use mask::{apply_mask, apply_mask_naive};

use std::fmt;

/// Close status codes (RFC 6455 §7.4.1).
pub mod close_code {
    /// The purpose of the connection has been fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (server shutting down, page navigated away).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The peer sent a kind of data the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Reserved: "no status code was present". Never sent on the wire.
    pub const NO_STATUS: u16 = 1005;
    /// Reserved: "closed abnormally". Never sent on the wire.
    pub const ABNORMAL: u16 = 1006;
    /// Data inconsistent with the message type, such as invalid UTF-8 in text.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The message violates the endpoint's policy.
    pub const POLICY: u16 = 1008;
    /// The message is too big to process.
    pub const TOO_BIG: u16 = 1009;
    /// The server hit an unexpected condition.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// 1013 (registered with IANA): the server is overloaded for now; try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Why a peer's bytes break the protocol. Each variant knows the close code
/// it is answered with ([`ProtocolError::close_code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// An RSV bit was set that no negotiated extension defines (§5.2).
    ReservedBits,
    /// An opcode from the reserved ranges (§5.2).
    UnknownOpCode(u8),
    /// A client frame without the mask bit (§5.1: "MUST close the connection").
    UnmaskedFrame,
    /// A server frame with the mask bit (§5.1), seen by a client.
    MaskedFrame,
    /// A control frame with FIN clear (§5.5: "MUST NOT be fragmented").
    FragmentedControl,
    /// A control frame longer than 125 bytes (§5.5).
    ControlTooLong,
    /// A 64-bit length with its most significant bit set (§5.2).
    LengthTopBit,
    /// A frame longer than the configured maximum.
    FrameTooLarge,
    /// A message longer than the configured maximum.
    MessageTooLarge,
    /// A continuation frame with no message to continue (§5.4).
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is unfinished (§5.4).
    ExpectedContinuation,
    /// A text message, or a close reason, that is not valid UTF-8 (§8.1).
    InvalidUtf8,
    /// A close frame whose payload is one byte long (§5.5.1: a code is two bytes).
    InvalidClosePayload,
    /// A close code that may not be sent on the wire (§7.4).
    InvalidCloseCode(u16),
    /// A close reason that is not valid UTF-8 (§5.5.1).
    InvalidCloseReason,
    /// RSV1 (compressed) on a control frame or a continuation frame (RFC 7692 §6.1).
    MisplacedCompressionBit,
    /// A compressed message whose payload is not valid DEFLATE data (RFC 7692 §8).
    InvalidCompressedData,
}

impl ProtocolError {
    /// The status code of the Close frame that answers this error (§7.4.1).
    pub fn close_code(&self) -> u16 {
        use close_code::*;
        match self {
            ProtocolError::FrameTooLarge | ProtocolError::MessageTooLarge => TOO_BIG,
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCompressedData => INVALID_PAYLOAD,
            _ => PROTOCOL_ERROR,
        }
    }

    /// A short reason for the Close frame and the logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::UnknownOpCode(_) => "unknown opcode",
            ProtocolError::UnmaskedFrame => "client frame not masked",
            ProtocolError::MaskedFrame => "server frame masked",
            ProtocolError::FragmentedControl => "fragmented control frame",
            ProtocolError::ControlTooLong => "control frame payload over 125 bytes",
            ProtocolError::LengthTopBit => "64-bit payload length has its top bit set",
            ProtocolError::FrameTooLarge => "frame too large",
            ProtocolError::MessageTooLarge => "message too large",
            ProtocolError::UnexpectedContinuation => "continuation frame without a message",
            ProtocolError::ExpectedContinuation => "new message inside a fragmented message",
            ProtocolError::InvalidUtf8 => "text is not valid UTF-8",
            ProtocolError::InvalidClosePayload => "close payload of one byte",
            ProtocolError::InvalidCloseCode(_) => "invalid close code",
            ProtocolError::InvalidCloseReason => "close reason is not valid UTF-8",
            ProtocolError::MisplacedCompressionBit => "RSV1 on a control or continuation frame",
            ProtocolError::InvalidCompressedData => "compressed data is not valid DEFLATE",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnknownOpCode(op) => write!(f, "unknown opcode {op:#x}"),
            ProtocolError::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for ProtocolError {}
