//! The limits and timeouts of one connection, with their defaults and why.

use crate::protocol::origin::OriginPolicy;
use std::time::Duration;

/// What one connection may do, and how long it may take. Part of
/// [`Config`](crate::Config); the connection layer takes only this part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Largest payload one frame may declare, in bytes. Default 16 MiB.
    /// A larger declared length is answered with close 1009 before any of
    /// its payload is read. Frames are streamed, not buffered whole, so this
    /// bounds work rather than memory; the message limit bounds memory. On a
    /// connection that negotiated permessage-deflate a frame may be longer by
    /// what DEFLATE can add to incompressible data
    /// ([`max_compressed_len`](crate::protocol::deflate::max_compressed_len)),
    /// so that a message within the message limit always passes compressed.
    pub max_frame_size: usize,

    /// Largest message, summed over its fragments, in bytes. Default 16 MiB,
    /// because the conformance suite's 9.* cases send 16 MiB messages. This is
    /// the most a connection can make the server buffer for one message;
    /// a larger one is answered with close 1009 as soon as its frames declare it
    /// (a compressed one, as soon as it inflates to more). An application can
    /// set a lower limit of its own ([`App::max_message_size`](crate::App::max_message_size)).
    pub max_message_size: usize,

    /// Largest HTTP request head (request line and headers), in bytes.
    /// Default 8 KiB, like most web servers. Longer heads get HTTP 431.
    pub max_handshake_bytes: usize,

    /// How long a new connection may take to send its complete HTTP upgrade
    /// request. Default 10 s. A request trickled in a byte at a time does not
    /// extend it: the clock starts at accept. Too slow gets HTTP 408.
    pub handshake_timeout: Duration,

    /// Keepalive: after this long without a byte from an open connection the
    /// server sends it a Ping. Default 60 s. Zero turns pings off.
    pub ping_interval: Duration,

    /// After this long without a byte from an open connection (a Pong, or any
    /// frame, counts as life) the server closes it with 1001 "idle timeout".
    /// Default 120 s. Zero turns the idle timeout off.
    pub idle_timeout: Duration,

    /// How long a closing connection may take: after the server sends a Close
    /// frame it waits this long for the peer's Close (and after the close
    /// handshake, for the peer to close TCP) before dropping the connection.
    /// Default 5 s.
    pub close_timeout: Duration,

    /// The cap on a connection's outgoing queue, in bytes. Default 1 MiB.
    ///
    /// It works two ways. While more than this waits to be sent, the server
    /// stops reading from the connection (backpressure), so an echo client
    /// that sends without reading its replies is held back; a single reply
    /// larger than this is still queued whole. And a delivery to a topic's
    /// subscriber that would push the queue past this closes the connection
    /// with 1008 ("slow consumer") and frees its queue, so one stalled reader
    /// cannot make the server hold everything a room says.
    pub max_outgoing_bytes: usize,

    /// How long deliveries may keep a connection's outgoing queue over
    /// `max_outgoing_bytes` before it is closed as a slow consumer (1008).
    /// Default 5 s. A reader that keeps up reads its queue back under the cap
    /// between bursts, and every time it does the grace starts again, so a
    /// room's bursts never close a member that reads at full speed; a stalled
    /// one is closed when the grace runs out, or at once if its queue would
    /// pass the hard cap ([`hard_outgoing_cap`](Self::hard_outgoing_cap)).
    /// Zero closes at the cap itself, with no grace.
    pub slow_consumer_grace: Duration,

    /// permessage-deflate (RFC 7692).
    pub deflate: DeflateConfig,

    /// Which `Origin` may open a WebSocket and which `Host` names are
    /// answered. Default: an upgrade from a browser page of another origin
    /// is refused with 403 (one without `Origin` is not from a page, and
    /// passes); any `Host` is answered (the server restricts it when bound
    /// to loopback: see [`ServerConfig::allowed_hosts`](crate::server::ServerConfig::allowed_hosts)).
    pub origin: OriginPolicy,
}

/// permessage-deflate (RFC 7692) settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Whether to accept a client's offer to compress messages. Default on
    /// (`--no-deflate` turns it off).
    pub enabled: bool,

    /// Messages shorter than this many bytes are sent raw, because
    /// compressing them costs more than it saves; so are messages that
    /// compression would not make smaller. Default 256. `0` compresses every
    /// message on a connection that negotiated the extension, whatever its
    /// size (the conformance run uses this).
    pub threshold: usize,

    /// Keep a compressor per connection and carry its context from message
    /// to message (better ratios for streams of similar messages, about
    /// 256 KiB per connection that receives compressed replies). Default off:
    /// the server answers every offer with `server_no_context_takeover` and
    /// compresses with a few shared compressors, so a message published to a
    /// topic is compressed once for all its subscribers.
    pub context_takeover: bool,
}

impl Default for ConnectionConfig {
    fn default() -> ConnectionConfig {
        ConnectionConfig {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_handshake_bytes: 8 << 10,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            close_timeout: Duration::from_secs(5),
            max_outgoing_bytes: 1 << 20,
            slow_consumer_grace: Duration::from_secs(5),
            deflate: DeflateConfig::default(),
            origin: OriginPolicy::default(),
        }
    }
}

impl Default for DeflateConfig {
    fn default() -> DeflateConfig {
        DeflateConfig { enabled: true, threshold: 256, context_takeover: false }
    }
}

impl ConnectionConfig {
    /// What deliveries may queue for one connection at the most: four times
    /// `max_outgoing_bytes` while a slow consumer's grace runs (so 4 MiB by
    /// default), `max_outgoing_bytes` itself without a grace.
    pub fn hard_outgoing_cap(&self) -> usize {
        if self.slow_consumer_grace.is_zero() {
            self.max_outgoing_bytes
        } else {
            self.max_outgoing_bytes.saturating_mul(4)
        }
    }

    /// Checks that the settings make sense together; the message says which does not.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_size == 0 {
            return Err("max frame size must be at least 1 byte".into());
        }
        if self.max_message_size == 0 {
            return Err("max message size must be at least 1 byte".into());
        }
        // Below this not even a modest browser request fits.
        if self.max_handshake_bytes < 256 {
            return Err(format!("max handshake bytes must be at least 256, not {}", self.max_handshake_bytes));
        }
        if self.max_outgoing_bytes == 0 {
            return Err("max outgoing bytes must be at least 1 byte".into());
        }
        if self.close_timeout.is_zero() {
            return Err("close timeout must be longer than zero".into());
        }
        if self.handshake_timeout.is_zero() {
            return Err("the handshake timeout must be longer than zero".into());
        }
        if !self.idle_timeout.is_zero() && !self.ping_interval.is_zero() && self.ping_interval >= self.idle_timeout {
            return Err(
                "the ping interval must be shorter than the idle timeout, or a ping could never save a connection"
                    .into(),
            );
        }
        Ok(())
    }
}
