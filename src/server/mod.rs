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
//! | `mod.rs` | the loop: poll, dispatch, service one connection, remove |
//! | [`config`] | the server's settings ([`ServerConfig`]) |
//! | `connections.rs` | the connection table, socket reads and writes |
//! | `accept.rs` | accepting, the connection and handshake limits (503), out of descriptors |
//! | `timers.rs` | one heap of deadlines, one live entry per connection |
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
mod metrics;
pub mod redis;
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
use crate::connection::{CloseInfo, TimerAction, WebSocketClient};
use accept::Admission;
use connections::{Slab, interrupted, read_into, read_tls_into};
use delivery::Delivery;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token};
use shutdown::Shutdown;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use timers::Timers;
use tracing::{debug, info, warn};

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

/// Reads one connection may do per turn of the loop (16 × 64 KiB = 1 MiB by
/// default). A client that sends faster than we can process would otherwise
/// never let its socket reach `WouldBlock`, and everyone else would wait.
/// A connection that uses up its budget goes on the ready list and is served
/// again after the others, without waiting for a new event.
const READ_BUDGET: usize = 16;

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

    fn serve(&mut self) -> io::Result<Exit> {
        let c = &self.config;
        info!(
            addr = %self.local_addr,
            max_connections = c.max_connections,
            max_pending_handshakes = c.max_pending_handshakes,
            max_message_size = c.connection.max_message_size,
            max_buffered_bytes = c.max_buffered_bytes,
            max_outgoing_bytes = c.connection.max_outgoing_bytes,
            handshake_timeout = ?c.connection.handshake_timeout,
            ping_interval = ?c.connection.ping_interval,
            idle_timeout = ?c.connection.idle_timeout,
            "rust-chat listening"
        );
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if interrupted(&err) {
                    continue;
                }
                return Err(err);
            }
            let now = Instant::now();
            self.dispatch(&events, now);
            if self.shutdown.forced {
                return Ok(Exit::Forced);
            }
            if self.shutdown.take_notified() {
                self.app.on_notify(&mut self.hub, now);
            }
            for index in std::mem::take(&mut self.ready) {
                if let Some(conn) = self.connections.get_mut(index) {
                    conn.in_ready = false;
                    self.service(index, true, now);
                }
            }
            if self.shutdown.stop_requested() {
                return Ok(Exit::Stopped);
            }
            if self.shutdown.shutdown_requested() {
                self.begin_shutdown(now);
            }
            self.expire(now);
            if self.app.next_deadline().is_some_and(|at| at <= now) {
                self.app.on_deadline(&mut self.hub, now);
            }
            self.app.on_turn_end();
            self.deliver(now);
            if std::mem::take(&mut self.delivery.looked) {
                // Delivery read (and so called the application) again: end that part of the turn too.
                self.app.on_turn_end();
            }
            if self.shutdown.forced {
                return Ok(Exit::Forced);
            }
            // The metrics first: whoever sees the new count may scrape at once.
            self.hub.publish_stats();
            self.hub.stats.connections.set(self.connections.len() as u64);
            self.hub.stats.handshaking.set(self.admission.handshakes_in_progress() as u64);
            self.shutdown.publish_count(self.connections.len());
            if let Some(left) = self.shutdown.drained(self.connections.len(), now)
                && !(left == 0 && self.peers_draining())
            {
                info!(left, "shutdown complete");
                return Ok(Exit::Drained { left });
            }
        }
    }

    /// Handles what the poller reported: new connections, signals, and
    /// connections to read or write.
    fn dispatch(&mut self, events: &Events, now: Instant) {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(now),
                METRICS => self.accept_metrics(now),
                WAKER => {}
                SIGNALS => self.handle_signals(now),
                RELOAD => self.reload_tls(),
                Token(index) => {
                    // Errors and hang-ups show up as a read that fails or returns 0.
                    let hangup = event.is_read_closed() || event.is_error();
                    if hangup && let Some(conn) = self.connections.get_mut(index) {
                        conn.hangup = true;
                    }
                    self.service(index, event.is_readable() || hangup, now);
                }
            }
        }
    }

    /// How long `poll` may sleep: until the soonest deadline, or forever.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO); // connections with input waiting: only look for new events
        }
        // A stop or shutdown request, or a notify, whose wake-up was taken by
        // a look for input during delivery: act on it now rather than at the
        // next event (which, for a notify, may be the idle timer's).
        if self.shutdown.stop_requested() || self.shutdown.shutdown_requested() || self.shutdown.notify_pending() {
            return Some(Duration::ZERO);
        }
        // Drained, but serving the metrics port until the other workers are too: look again soon.
        let peers = (self.shutdown.draining_until().is_some() && self.peers_draining())
            .then(|| now + Duration::from_millis(20));
        let soonest = [
            peers,
            self.timers.next(),
            self.admission.paused_until(),
            self.shutdown.draining_until(),
            self.app.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        soonest.map(|at| at.saturating_duration_since(now))
    }

    /// Runs every timer that is due, and resumes accepting after a pause.
    fn expire(&mut self, now: Instant) {
        while let Some((at, index)) = self.timers.pop_due(now) {
            let Some(conn) = self.connections.get_mut(index) else { continue };
            if conn.timer != Some(at) {
                continue; // stale: superseded by a sooner entry, or the slot's last owner's
            }
            conn.timer = None;
            match conn.client.handle_timeout(now, &self.config.connection) {
                TimerAction::Drop => self.remove(index, now),
                // Writes what the timer queued (a Ping, a 408, a Close) and re-arms.
                TimerAction::Continue => self.service(index, false, now),
            }
        }
        if self.admission.resume_at(now) {
            self.accept(now);
            self.accept_metrics(now);
        }
    }

    /// Reads, processes and writes for one connection, then updates its
    /// interest and timer, or removes it when it is finished.
    fn service(&mut self, index: usize, readable: bool, now: Instant) {
        let Server { connections, read_buf, config, app, hub, buffered, endpoints, admission, .. } = self;
        let max_buffered = config.max_buffered_bytes;
        let config = &config.connection;
        let Some(conn) = connections.get_mut(index) else {
            return; // a spurious event for a connection already removed
        };
        // What this connection may hold: what the others leave of the bound.
        let allowance = max_buffered.saturating_sub(*buffered - conn.buffered as usize);
        let mut budget = READ_BUDGET;
        let mut want_read = readable;
        let finished = loop {
            if want_read && !conn.peer_eof {
                let session = Session {
                    app: &mut *app,
                    conn: &mut conn.app,
                    hub: &mut *hub,
                    id: ConnId { index, generation: conn.generation },
                    now,
                };
                let ops = metrics::Ops { endpoints, admission, metrics_port: conn.metrics_port };
                let mut session = metrics::Served { session, ops };
                if conn.read_paused {
                    // Input read before a pause comes first, before anything new.
                    conn.client.resume(now, config, &mut session);
                }
                let read = match conn.tls.as_deref_mut() {
                    None => read_into(
                        &conn.stream,
                        &mut conn.client,
                        conn.hangup,
                        read_buf,
                        config,
                        &mut session,
                        now,
                        &mut budget,
                        allowance,
                    ),
                    Some(tls) => read_tls_into(
                        tls,
                        &conn.stream,
                        &mut conn.client,
                        read_buf,
                        config,
                        &mut session,
                        now,
                        &mut budget,
                        allowance,
                    ),
                };
                match read {
                    Ok(read) => {
                        session.session.hub.tally.bytes_received += read.bytes as u64;
                        conn.peer_eof |= read.eof;
                        conn.read_paused = read.paused;
                    }
                    Err(err) => {
                        // Reset by peer, another hard error, or (TLS) a bad handshake or record.
                        if err.kind() == std::io::ErrorKind::InvalidData {
                            debug!(conn = conn.generation, error = %err, "tls: closing the connection");
                        }
                        break true;
                    }
                }
            }
            match conn.write() {
                Ok(written) => hub.tally.bytes_sent += written as u64,
                Err(_) => break true,
            }
            if conn.client.is_done_writing() && !conn.tls_wants_write() {
                if conn.peer_eof {
                    break true;
                }
                if !conn.write_shut {
                    // Our Close (or HTTP response) is out: send FIN (after
                    // TLS's close_notify), and keep reading until the peer's
                    // FIN so our last bytes are not lost to a reset caused by
                    // unread input.
                    let mut shut_now = true;
                    if let Some(tls) = conn.tls.as_deref_mut() {
                        tls.notify_close();
                        if tls.flush(&conn.stream).is_err() {
                            break true;
                        }
                        shut_now = !tls.wants_write();
                    }
                    if shut_now {
                        conn.write_shut = true;
                        if conn.stream.shutdown(std::net::Shutdown::Write).is_err() {
                            break true;
                        }
                    }
                }
            }
            // Reading stopped for backpressure and the queue has drained since:
            // read again now, since no new READABLE edge will come for data
            // that is already waiting.
            if conn.read_paused && conn.client.wants_read(config) && budget > 0 {
                want_read = true;
                continue;
            }
            break false;
        };
        let held = u32::try_from(conn.client.buffered_bytes()).unwrap_or(u32::MAX);
        *buffered = *buffered - conn.buffered as usize + held as usize;
        conn.buffered = held;
        if let Some(CloseInfo::Failed(crate::protocol::close_code::TRY_AGAIN_LATER, _)) = conn.client.close_info()
            && conn.app.is_open()
            && let Some(skipped) = self.busy_warning.ready(now)
        {
            let (total, max) = (*buffered, max_buffered);
            warn!(conn = conn.generation, total, max, skipped, "input in progress at its bound: closing with 1013");
        }
        // The application hears of the end as soon as it is known.
        if conn.app.is_open() && conn.client.close_info().is_some() {
            Session {
                app: &mut *app,
                conn: &mut conn.app,
                hub: &mut *hub,
                id: ConnId { index, generation: conn.generation },
                now,
            }
            .close(conn.client.close_info());
        }
        if finished {
            self.remove(index, now);
            return;
        }
        let registry = self.poll.registry();
        let settled =
            settle(conn, index, budget == 0, registry, &mut self.admission, &mut self.ready, &mut self.timers, config);
        if !settled {
            self.remove(index, now);
        }
    }

    /// Closes a connection for good: the application is told (if it has not
    /// been), it leaves every topic, and its socket is closed.
    fn remove(&mut self, index: usize, now: Instant) {
        let Some(mut conn) = self.connections.remove(index) else { return };
        self.buffered -= conn.buffered as usize;
        if conn.handshaking {
            self.admission.handshake_done();
        }
        self.admission.closed(index);
        let info = conn.client.close_info();
        if let Some(CloseInfo::Http(status)) = info {
            self.hub.stats.refused(*status);
        }
        // Tells the application (if it has not been told) and leaves every topic.
        Session {
            app: &mut self.app,
            conn: &mut conn.app,
            hub: &mut self.hub,
            id: ConnId { index, generation: conn.generation },
            now,
        }
        .close(info);
        let clean = matches!(info, Some(CloseInfo::Handshake(_)));
        match info {
            Some(info) => debug!(conn = conn.generation, peer = %conn.peer(), clean, close = %info, "closed"),
            None => debug!(conn = conn.generation, peer = %conn.peer(), clean, "closed (reset or error)"),
        }
        deregister(self.poll.registry(), &mut conn.stream);
    }

    /// A new connection's client, with the settings every connection gets.
    fn new_client(&self, now: Instant) -> WebSocketClient {
        WebSocketClient::new(now, &self.config.connection)
    }
}

/// After a service: counts a finished handshake, queues a connection that
/// used up its read budget, and brings its interest and timer up to date.
/// `false` if the poller would not take the new interest (then it must go).
#[allow(clippy::too_many_arguments)]
fn settle<C>(
    conn: &mut connections::Connection<C>,
    index: usize,
    budget_spent: bool,
    registry: &Registry,
    admission: &mut Admission,
    ready: &mut Vec<usize>,
    timers: &mut Timers,
    config: &crate::connection::ConnectionConfig,
) -> bool {
    if conn.handshaking && !conn.client.is_awaiting_handshake() {
        conn.handshaking = false;
        admission.handshake_done();
    }
    if budget_spent && !conn.in_ready {
        conn.in_ready = true;
        ready.push(index);
    }
    let writing = conn.client.wants_write() || conn.tls_wants_write();
    let wanted = if writing { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
    if wanted != conn.interest {
        if registry.reregister(&mut conn.stream, Token(index), wanted).is_err() {
            return false;
        }
        conn.interest = wanted;
    }
    // Arm the timer if the connection now needs one sooner than its live entry.
    if let Some(at) = conn.client.poll_timeout(config) {
        timers.arm(&mut conn.timer, at, index);
    }
    true
}

/// Dropping the stream closes the socket; deregistering first keeps the
/// registry tidy even if the descriptor number is soon reused.
fn deregister(registry: &Registry, stream: &mut mio::net::TcpStream) {
    let _ = registry.deregister(stream);
}

/// The wall clock, for applications that stamp their messages (the chat).
fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::Echo;

    fn config() -> ServerConfig {
        ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() }
    }

    #[test]
    fn a_stop_or_shutdown_request_never_waits_for_another_event() {
        // The waker's event may be taken by a look for input during delivery;
        // the request itself must still end the next wait at once.
        for request in [ServerHandle::stop, ServerHandle::shutdown] {
            let server = Server::bind(config(), Echo).unwrap();
            let now = Instant::now();
            assert_eq!(server.poll_timeout(now), None, "nothing to wait for: sleep until an event");
            request(&server.handle());
            assert_eq!(server.poll_timeout(now), Some(Duration::ZERO));
        }
    }

    #[test]
    fn a_connection_is_small() {
        // Idle memory per connection is mostly this slot (see BENCHMARKS.md):
        // 320 bytes in a release build since the redesign, 312 with the mask
        // position kept mod 4 in a byte, 256 with the reassembly state boxed
        // until a message spans reads or frames (and still 256 with a TLS
        // pointer, the slot's index no longer kept in it). A debug build's is
        // 16 more: mio keeps a selector id in every socket there, to check
        // registrations (`cargo test` runs this in debug, the benchmarks run release).
        type Conn = <crate::app::Both<Echo, crate::chat::Chat> as App>::Conn;
        let slot = std::mem::size_of::<Option<connections::Connection<Conn>>>();
        let client = std::mem::size_of::<WebSocketClient>();
        eprintln!("Option<Connection>: {slot} bytes; WebSocketClient: {client} bytes");
        let limit = if cfg!(debug_assertions) { 272 } else { 256 };
        assert!(slot <= limit, "{slot}");
    }
}
