//! The event loop: the one place that touches sockets and the clock
//! [Rust in Detail, Part 1].
//!
//! A mio `Poll` watches the listener and every connection. Each readiness
//! event is turned into calls on the connection's [`WebSocketClient`]:
//! read until `WouldBlock` and hand every byte to the client (which calls
//! the application through a [`Session`]); write its outgoing queue until
//! empty or `WouldBlock`; then ask it what it wants next. WRITABLE interest
//! is registered only while output is queued, and re-registered only when
//! that changes.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | [`Server`]: binding, start-up, the public API, [`run`](Server::run) |
//! | `event_loop.rs` | the loop: poll, dispatch, timers due, how long to wait |
//! | `service.rs` | service one connection (read, write, shut down), settle, remove |
//! | [`config`] | the server's settings ([`ServerConfig`]) |
//! | `connections.rs` | the connection table, socket reads and writes |
//! | `accept.rs` | accepting, the connection and handshake limits (503), out of descriptors |
//! | `timers.rs` | one heap of 8-byte deadlines, one live entry per connection |
//! | `delivery.rs` | what was published: onto the subscribers' queues, slow consumers closed |
//! | `shutdown.rs` | signals, the stop handle, the graceful drain |
//! | `workers.rs` | several loops on one port (`SO_REUSEPORT`), one thread each |
//! | `metrics.rs` | `GET /metrics` and `GET /healthz`, in front of the application's routes |
//!
//! mio's readiness is edge-triggered: an event says "something changed", not
//! "there is data", so every read and accept loop runs until `WouldBlock`,
//! and spurious events (for a connection already removed, or with nothing to
//! read) are expected and ignored.

mod accept;
pub mod config;
mod connections;
mod delivery;
mod event_loop;
mod metrics;
pub mod redis;
mod service;
mod shutdown;
pub mod store;
mod timers;
mod tls;
mod workers;

pub use config::{ServerConfig, open_file_limit};
pub use metrics::MetricsEndpoint;
pub use shutdown::{Exit, ServerHandle};
pub use tls::{TLS_BUFFER_LIMIT, TlsFiles};
pub use workers::{WorkerError, Workers, available_workers};

use crate::app::topics::RUN_LIMIT;
use crate::app::{App, ConnId, Hub, Session};
use crate::connection::WebSocketClient;
use accept::Admission;
use connections::Slab;
use delivery::Delivery;
use mio::net::TcpListener;
use mio::{Interest, Poll, Token};
use shutdown::Shutdown;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use timers::Timers;

/// The listening socket's token. Connections use their slot index.
const LISTENER: Token = Token(usize::MAX);
/// The token of the waker that [`ServerHandle`] pokes.
const WAKER: Token = Token(usize::MAX - 1);
/// The token of the pipe that SIGINT and SIGTERM write to.
const SIGNALS: Token = Token(usize::MAX - 2);
/// The token of the pipe that SIGHUP writes to (reload the TLS certificate).
const RELOAD: Token = Token(usize::MAX - 3);
/// The token of the metrics listener ([`MetricsEndpoint::Bind`]).
const METRICS: Token = Token(usize::MAX - 4);

/// How often a repeated warning (connection limit, out of descriptors, slow
/// consumers) may be logged; the ones in between are counted, not printed.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Logs a repeated warning at most once per [`WARN_EVERY`], with a count of the ones skipped.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    skipped: u64,
}

impl Throttle {
    /// `Some(skipped)` when it is time to log again.
    fn ready(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now < last + WARN_EVERY) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// A bound WebSocket server serving the application `A`, ready to [`run`](Server::run).
pub struct Server<A: App> {
    poll: Poll,
    /// `None` once a shutdown has begun.
    listener: Option<TcpListener>,
    /// The metrics port's listener (on the first worker), open until the server returns.
    metrics_listener: Option<TcpListener>,
    /// What `/metrics` and `/healthz` need: every worker's counts, which is this one, whether it drains.
    endpoints: metrics::Endpoints,
    /// The other workers still serving, for the one that outlives them (see [`Server::outlive`]).
    peers: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    local_addr: SocketAddr,
    config: ServerConfig,
    connections: Slab<A::Conn>,
    timers: Timers,
    /// The one read buffer, shared by all connections in turn.
    read_buf: Vec<u8>,
    /// Connections that used up their read budget and may have input waiting.
    ready: Vec<usize>,
    app: A,
    /// Topics, the outbox and the shared compressors.
    hub: Hub,
    delivery: Delivery,
    admission: Admission,
    shutdown: Shutdown,
    /// What all connections hold of input not yet complete (the sum of their
    /// `buffered`), bounded by [`ServerConfig::max_buffered_bytes`].
    buffered: usize,
    busy_warning: Throttle,
    /// The TLS settings new connections get, when serving TLS (replaced on SIGHUP).
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid.
    Config(String),
    /// Binding the address or setting up the poller failed.
    Io(io::Error),
    /// The data directory cannot be used (corrupt, unreadable, taken).
    Store(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(err) => write!(f, "invalid configuration: {err}"),
            StartError::Io(err) => write!(f, "{err}"),
            StartError::Store(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(err: io::Error) -> StartError {
        StartError::Io(err)
    }
}

impl<A: App> Server<A> {
    /// Validates `config`, binds its address and registers the listener.
    pub fn bind(config: ServerConfig, app: A) -> Result<Server<A>, StartError> {
        config.validate().map_err(StartError::Config)?;
        let listener = TcpListener::bind(config.bind)?;
        let metrics = match config.metrics {
            MetricsEndpoint::Bind(addr) => Some(TcpListener::bind(addr)?),
            _ => None,
        };
        Server::on_listener(config, app, listener, metrics)
    }

    /// A server on a listener bound already (one of several on a port: see
    /// [`Workers`]), with the metrics port's listener if it has it.
    fn on_listener(
        mut config: ServerConfig,
        app: A,
        mut listener: TcpListener,
        mut metrics_listener: Option<TcpListener>,
    ) -> Result<Server<A>, StartError> {
        let poll = Poll::new()?;
        let local_addr = listener.local_addr()?;
        let tls = match &config.tls {
            Some(files) => Some(files.load().map_err(StartError::Config)?),
            None => None,
        };
        let origin = &mut config.connection.origin;
        origin.serving_tls = tls.is_some();
        if origin.allowed_hosts.is_none() && (local_addr.ip().is_loopback() || !config.allowed_hosts.is_empty()) {
            // The address it is bound to is a name it answers to (127.0.0.2, say).
            let own = match local_addr.ip() {
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            };
            origin.restrict_hosts(config.allowed_hosts.iter().map(String::as_str).chain([own.as_str()]));
        }
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let shutdown = Shutdown::new(poll.registry(), WAKER)?;
        // A run of deliveries fits wherever one frame would.
        let run_limit = RUN_LIMIT.min(config.connection.max_outgoing_bytes);
        if let Some(metrics) = metrics_listener.as_mut() {
            poll.registry().register(metrics, METRICS, Interest::READABLE)?;
        }
        let hub = Hub::new(run_limit, unix_millis);
        let endpoints = metrics::Endpoints::new(config.metrics, &hub.stats);
        Ok(Server {
            poll,
            listener: Some(listener),
            metrics_listener,
            endpoints,
            peers: None,
            local_addr,
            read_buf: vec![0; config.read_buffer_size],
            ready: Vec::new(),
            app,
            hub,
            delivery: Delivery::default(),
            admission: Admission::default(),
            shutdown,
            buffered: 0,
            busy_warning: Throttle::default(),
            config,
            connections: Slab::default(),
            timers: Timers::default(),
            tls,
        })
    }

    /// Numbers connections as worker `worker` of `workers` does, so that
    /// [`ConnId`](crate::app::ConnId)s are unique across all of them and
    /// `(generation - 1) % workers` names the worker of a connection.
    pub(crate) fn number_as_worker(&mut self, worker: usize, workers: usize) {
        self.admission.id_stride_less_one = workers as u64 - 1;
        self.admission.generation = (worker as u64 + 1).wrapping_sub(workers as u64);
    }

    /// Counts into `all[worker]`, and shows all of them at a scrape (one per worker).
    pub(crate) fn share_stats(
        &mut self,
        all: std::sync::Arc<[std::sync::Arc<crate::app::stats::Stats>]>,
        worker: usize,
    ) {
        if let Some(mine) = all.get(worker) {
            self.hub.stats = std::sync::Arc::clone(mine);
            self.endpoints.worker = worker;
            self.endpoints.stats = all;
        }
    }

    /// Makes a drained server wait for `running` (the other workers still
    /// serving) to reach 0 before it returns: the first worker, which serves
    /// the metrics port, so that `/healthz` says 503 for the whole drain.
    pub(crate) fn outlive(&mut self, running: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        self.peers = Some(running);
    }

    /// Other workers this one outlives are still serving.
    fn peers_draining(&self) -> bool {
        self.peers.as_ref().is_some_and(|running| running.load(std::sync::atomic::Ordering::Acquire) > 0)
    }

    /// The metrics port's address, when the server has one ([`MetricsEndpoint::Bind`]).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The number of open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// The application.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// Serves until stopped, or until a graceful shutdown has drained. The
    /// application is told of every connection still open when it returns.
    pub fn run(&mut self) -> io::Result<Exit> {
        let exit = self.serve();
        let now = Instant::now();
        for index in self.connections.indices() {
            let Some(conn) = self.connections.get_mut(index) else { continue };
            let info = conn.client.close_info();
            Session {
                app: &mut self.app,
                conn: &mut conn.app,
                hub: &mut self.hub,
                id: ConnId { index, generation: conn.generation },
                now,
            }
            .close(info);
        }
        exit
    }

    /// A new connection's client, with the settings every connection gets.
    fn new_client(&self, now: Instant) -> WebSocketClient {
        WebSocketClient::new(now, &self.config.connection)
    }
}

/// The wall clock, for applications that stamp their messages (the chat).
fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
