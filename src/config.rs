//! Every limit and timeout of the server, in one place, with its default and
//! the reason for it. The command line only maps flags onto these fields.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The server's settings. `Config::default()` is what `cargo run` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:10000`: the blog's port, and
    /// loopback only, so that trying the server out exposes nothing. Use
    /// `0.0.0.0:10000` to serve other machines, or port 0 for a free port.
    pub bind: SocketAddr,

    /// Largest payload one frame may declare, in bytes. Default 16 MiB.
    /// A larger declared length is answered with close 1009 before any of
    /// its payload is read. Frames are streamed, not buffered whole, so this
    /// bounds work rather than memory; the message limit bounds memory.
    pub max_frame_size: usize,

    /// Largest message, summed over its fragments, in bytes. Default 16 MiB,
    /// because the conformance suite's 9.* cases send 16 MiB messages. This is
    /// the most a connection can make the server buffer for one message;
    /// a larger one is answered with close 1009 as soon as its frames declare it.
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

    /// Graceful shutdown (SIGINT, SIGTERM): how long the server waits for
    /// connections to finish their close handshakes before it exits anyway.
    /// Default 5 s.
    pub drain_timeout: Duration,

    /// The most connections open at once. Default: the process's open-file
    /// limit less 64 for the listener, the poller and headroom (so 19,936
    /// with a limit of 20,000). Beyond it a new connection is answered with
    /// HTTP 503 and `Retry-After`, then closed.
    pub max_connections: usize,

    /// The most connections still sending their upgrade request at once.
    /// Default 1,024. When a new connection would pass it, the one that has
    /// been waiting longest is answered with 503 and closed: real clients
    /// send their request at once, so a flood of slow ones (slowloris) only
    /// pushes out its own kind.
    pub max_pending_handshakes: usize,

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
    /// larger than this is still queued whole. And a chat delivery that would
    /// push the queue past this closes the connection with 1008 ("slow
    /// consumer") and frees its queue, so one stalled reader cannot make the
    /// server hold everything the room says.
    pub max_outgoing_bytes: usize,

    /// Size of the one read buffer the event loop shares among all
    /// connections. Default 256 KiB, so that a 64 KiB frame usually arrives
    /// whole in one read. Idle connections hold no read buffer of
    /// their own; only an incomplete frame header or control frame is kept
    /// per connection (at most 139 bytes).
    pub read_buffer_size: usize,

    /// permessage-deflate (RFC 7692): whether to accept a client's offer to
    /// compress messages. Default on (`--no-deflate` turns it off).
    pub deflate: bool,

    /// permessage-deflate: messages shorter than this many bytes are sent
    /// raw, because compressing them costs more than it saves; so are
    /// messages that compression would not make smaller. Default 256. `0`
    /// compresses every message on a connection that negotiated the
    /// extension, whatever its size (the conformance run uses this).
    pub deflate_threshold: usize,

    /// permessage-deflate: keep a compressor per connection and carry its
    /// context from message to message (better ratios for streams of similar
    /// messages, about 256 KiB per connection that receives compressed
    /// replies). Default off: the server answers every offer with
    /// `server_no_context_takeover` and compresses with a few shared
    /// compressors, so broadcasts are compressed once for all recipients.
    pub deflate_context_takeover: bool,

    /// Chat: how many recent messages each room keeps and sends to newcomers
    /// (in `welcome`, and on `/join`). Default 100.
    pub history_len: usize,

    /// Chat: the longest message text, in bytes of UTF-8. Default 4 KiB.
    /// Longer messages get an `error` event and are dropped.
    pub max_text_bytes: usize,

    /// Chat: how many rooms may exist at once. Default 1,000. Empty rooms
    /// (other than `lobby`) are removed, with their history.
    pub max_rooms: usize,

    /// Chat: how many members one room may have. Default 1,000.
    pub max_room_members: usize,

    /// Chat: messages and commands one connection may send per second, on
    /// average (a token bucket). Default 10. `0` turns the limit off (for
    /// benchmarks). Excess messages get an `error` event and are dropped;
    /// the connection stays.
    pub rate_limit_per_sec: u32,

    /// Chat: how many messages a connection may send in a burst before the
    /// per-second rate applies. Default 20.
    pub rate_limit_burst: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 10000)),
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_handshake_bytes: 8 << 10,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(5),
            max_connections: open_file_limit().saturating_sub(FD_HEADROOM).max(1),
            max_pending_handshakes: 1024,
            close_timeout: Duration::from_secs(5),
            max_outgoing_bytes: 1 << 20,
            read_buffer_size: 256 << 10,
            deflate: true,
            deflate_threshold: 256,
            deflate_context_takeover: false,
            history_len: 100,
            max_text_bytes: 4 << 10,
            max_rooms: 1000,
            max_room_members: 1000,
            rate_limit_per_sec: 10,
            rate_limit_burst: 20,
        }
    }
}

/// File descriptors kept back from [`Config::max_connections`]: the
/// listener, the poller, the signal pipe, log files, and a margin.
const FD_HEADROOM: usize = 64;

/// The soft limit on open files (`ulimit -n`), read from `/proc/self/limits`
/// (the standard library has no `getrlimit`, and this keeps the crate free of
/// `unsafe`). 1,024, the usual default, where it cannot be read.
pub fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
            line["Max open files".len()..].split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(1024)
}

/// A setting that cannot work, found by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks that the settings make sense together. The server calls this at start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        if self.max_frame_size == 0 {
            return fail("max frame size must be at least 1 byte".into());
        }
        if self.max_message_size == 0 {
            return fail("max message size must be at least 1 byte".into());
        }
        // Below this not even a modest browser request fits.
        if self.max_handshake_bytes < 256 {
            return fail(format!("max handshake bytes must be at least 256, not {}", self.max_handshake_bytes));
        }
        if self.read_buffer_size < 1024 {
            return fail(format!("read buffer size must be at least 1024 bytes, not {}", self.read_buffer_size));
        }
        if self.max_outgoing_bytes == 0 {
            return fail("max outgoing bytes must be at least 1 byte".into());
        }
        if self.close_timeout.is_zero() {
            return fail("close timeout must be longer than zero".into());
        }
        if self.handshake_timeout.is_zero() || self.drain_timeout.is_zero() {
            return fail("handshake and drain timeouts must be longer than zero".into());
        }
        if !self.idle_timeout.is_zero() && !self.ping_interval.is_zero() && self.ping_interval >= self.idle_timeout {
            return fail(
                "the ping interval must be shorter than the idle timeout, or a ping could never save a connection"
                    .into(),
            );
        }
        if self.max_connections == 0 || self.max_pending_handshakes == 0 {
            return fail("max connections and max pending handshakes must be at least 1".into());
        }
        if self.max_text_bytes == 0 {
            return fail("max text bytes must be at least 1".into());
        }
        if self.max_rooms == 0 || self.max_room_members == 0 {
            return fail("max rooms and max room members must be at least 1".into());
        }
        if self.rate_limit_per_sec > 0 && self.rate_limit_burst == 0 {
            return fail("a rate limit needs a burst of at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let config = Config::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.bind.to_string(), "127.0.0.1:10000");
        assert_eq!(config.max_message_size, 16 * 1024 * 1024);
        assert_eq!(config.max_handshake_bytes, 8192);
        assert_eq!(config.close_timeout, Duration::from_secs(5));
        assert_eq!(config.max_connections, open_file_limit() - 64);
    }

    #[test]
    fn the_open_file_limit_is_read() {
        // Whatever the machine's limit, it is the one `ulimit -n` reports.
        let limit = open_file_limit();
        assert!(limit >= 64, "{limit}");
    }

    #[test]
    fn impossible_settings_are_refused() {
        let bad = [
            Config { max_frame_size: 0, ..Config::default() },
            Config { max_message_size: 0, ..Config::default() },
            Config { max_handshake_bytes: 255, ..Config::default() },
            Config { read_buffer_size: 1023, ..Config::default() },
            Config { max_outgoing_bytes: 0, ..Config::default() },
            Config { close_timeout: Duration::ZERO, ..Config::default() },
            Config { max_text_bytes: 0, ..Config::default() },
            Config { handshake_timeout: Duration::ZERO, ..Config::default() },
            Config { ping_interval: Duration::from_secs(120), ..Config::default() },
            Config { max_connections: 0, ..Config::default() },
            Config { max_pending_handshakes: 0, ..Config::default() },
            Config { max_rooms: 0, ..Config::default() },
            Config { max_room_members: 0, ..Config::default() },
            Config { rate_limit_burst: 0, ..Config::default() },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
        let edge = Config {
            ping_interval: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            max_handshake_bytes: 256,
            read_buffer_size: 1024,
            rate_limit_per_sec: 0,
            rate_limit_burst: 0,
            ..Config::default()
        };
        assert_eq!(edge.validate(), Ok(()));
    }
}
