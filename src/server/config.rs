//! The server's own settings: the address, connection limits, the read
//! buffer and the drain, with their defaults and why.

use crate::connection::ConnectionConfig;
use std::net::SocketAddr;
use std::time::Duration;

/// How the server listens and how much it takes on. Holds the
/// [`ConnectionConfig`] that every connection it accepts gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:10000`: the blog's port, and
    /// loopback only, so that trying the server out exposes nothing. Use
    /// `0.0.0.0:10000` to serve other machines, or port 0 for a free port.
    pub bind: SocketAddr,

    /// The most connections open at once. Default: the process's open-file
    /// limit less 64 for the listener, the poller and headroom (so 19,936
    /// with a limit of 20,000). Beyond it a new connection is answered with
    /// HTTP 503 and `Retry-After`, then closed.
    pub max_connections: usize,

    /// The most connections open at once from one client address (IP). 0,
    /// the default, sets no such limit. Beyond it a new connection from that
    /// address gets 503, like the global limit. Behind a reverse proxy every
    /// client has the proxy's address: leave it at 0 there (or set it to what
    /// the proxy itself may open), and limit per client at the proxy.
    pub max_connections_per_ip: usize,

    /// The most connections still sending their upgrade request at once.
    /// Default 1,024. When a new connection would pass it, the one that has
    /// been waiting longest is answered with 503 and closed: real clients
    /// send their request at once, so a flood of slow ones (slowloris) only
    /// pushes out its own kind.
    pub max_pending_handshakes: usize,

    /// Size of the one read buffer the event loop shares among all
    /// connections. Default 256 KiB, so that a 64 KiB frame usually arrives
    /// whole in one read. Idle connections hold no read buffer of
    /// their own; only an incomplete frame header or control frame is kept
    /// per connection (at most 139 bytes).
    pub read_buffer_size: usize,

    /// What all connections together may hold of input not yet complete:
    /// messages being reassembled (a message is held whole until its last
    /// byte: up to [`max_message_size`](ConnectionConfig::max_message_size)
    /// each) and input waiting while a connection is paused. Default 256 MiB.
    /// A connection whose input would pass it is closed with 1013 ("try
    /// again later"), so that many connections streaming large messages at
    /// once cannot grow the process without bound; messages that arrive
    /// whole in one read are never held and never count.
    pub max_buffered_bytes: usize,

    /// Graceful shutdown (SIGINT, SIGTERM): how long the server waits for
    /// connections to finish their close handshakes before it exits anyway.
    /// Default 5 s.
    pub drain_timeout: Duration,

    /// Host names the server answers to besides the loopback ones
    /// (`localhost`, `127.0.0.1`, `[::1]`), compared with each request's
    /// `Host` without its port. Bound to a loopback address the server
    /// answers only those names (403 for others, page and upgrade alike), so
    /// that a page whose name an attacker points at 127.0.0.1 (DNS
    /// rebinding) cannot reach it; bound elsewhere, any name is answered
    /// unless this list is not empty. Default empty. Not used when
    /// `connection.origin.allowed_hosts` is set already.
    pub allowed_hosts: Vec<String>,

    /// TLS: serve `https://` and `wss://` on the port with this certificate
    /// and key. Default `None` (plain `http://` and `ws://`). SIGHUP reads
    /// the files again (when the server handles signals).
    pub tls: Option<super::TlsFiles>,

    /// Where `GET /metrics` (Prometheus) and `GET /healthz` are answered:
    /// nowhere (the default here, so that every path is the application's),
    /// on the main port before the application's routes (the binary's
    /// default), or on a port of their own, in plain HTTP.
    pub metrics: super::MetricsEndpoint,

    /// What each connection may do.
    pub connection: ConnectionConfig,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 10000)),
            max_connections: open_file_limit().saturating_sub(FD_HEADROOM).max(1),
            max_connections_per_ip: 0,
            max_pending_handshakes: 1024,
            read_buffer_size: 256 << 10,
            max_buffered_bytes: 256 << 20,
            drain_timeout: Duration::from_secs(5),
            allowed_hosts: Vec::new(),
            tls: None,
            metrics: super::MetricsEndpoint::Off,
            connection: ConnectionConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Checks that the settings make sense together; the message says which does not.
    pub fn validate(&self) -> Result<(), String> {
        if self.read_buffer_size < 1024 {
            return Err(format!("read buffer size must be at least 1024 bytes, not {}", self.read_buffer_size));
        }
        if self.max_buffered_bytes < self.connection.max_message_size {
            return Err(format!(
                "max buffered bytes ({}) must be at least the max message size ({}), or no message that size could arrive",
                self.max_buffered_bytes, self.connection.max_message_size
            ));
        }
        if self.drain_timeout.is_zero() {
            return Err("the drain timeout must be longer than zero".into());
        }
        if self.max_connections == 0 || self.max_pending_handshakes == 0 {
            return Err("max connections and max pending handshakes must be at least 1".into());
        }
        self.connection.validate()
    }
}

/// File descriptors kept back from [`ServerConfig::max_connections`]: the
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
            line.get("Max open files".len()..)?.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(1024)
}
