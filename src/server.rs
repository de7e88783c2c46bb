//! The event loop: the one place that touches sockets [Rust in Detail, Part 1].
//!
//! A mio `Poll` watches the listener and every connection. Each readiness
//! event is turned into calls on the connection's [`WebSocketClient`]:
//! read until `WouldBlock` and hand every byte to the client; write its
//! outgoing queue until empty or `WouldBlock`; then ask it what it wants
//! next. WRITABLE interest is registered only while output is queued, and
//! re-registered only when that changes.
//!
//! The chat is the one piece of state shared between connections. What it
//! says lands in its outbox; at the end of each turn of the loop the server
//! delivers every frame to the queues of its recipients (the bytes shared,
//! not copied), closes recipients whose queue would pass its cap, and writes
//! each touched connection once. Consecutive frames to the same recipients
//! (a busy room) are joined into one shared buffer first, so a member gets
//! one queue entry and one contiguous write per turn, not one per message.
//!
//! Time: each connection has at most one live entry in a heap of deadlines
//! (handshake, keepalive ping, idle timeout, close). An entry that fires
//! early, because the connection was active since, is simply re-armed, so a
//! busy connection costs no heap work per message and an idle one costs one
//! wake-up per ping interval. `poll` sleeps until the soonest entry.
//!
//! mio's readiness is edge-triggered: an event says "something changed", not
//! "there is data", so every read and accept loop runs until `WouldBlock`,
//! and spurious events (for a connection already removed, or with nothing to
//! read) are expected and ignored.

use crate::chat::{Chat, ConnId};
use crate::client::{CloseInfo, Endpoint, Handler, Reply, TimerAction, WebSocketClient};
use crate::config::{Config, ConfigError};
use crate::deflate::SharedDeflaters;
use crate::frame::{DecodeRules, FrameHeader, OpCode, RSV1};
use crate::handshake;
use crate::message::{Message, close_code};
use crate::outgoing::SharedFrame;
use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// The listening socket's token. Connections use their slot index.
const LISTENER: Token = Token(usize::MAX);
/// The token of the waker that [`ServerHandle`] pokes.
const WAKER: Token = Token(usize::MAX - 1);
/// The token of the pipe that SIGINT and SIGTERM write to.
const SIGNALS: Token = Token(usize::MAX - 2);

/// Reads one connection may do per turn of the loop (16 × 64 KiB = 1 MiB by
/// default). A client that sends faster than we can process would otherwise
/// never let its socket reach `WouldBlock`, and everyone else would wait.
/// A connection that uses up its budget goes on the ready list and is served
/// again after the others, without waiting for a new event.
const READ_BUDGET: usize = 16;

/// During a long write phase, the loop looks for new input after this many
/// writes ([`Server::deliver`]), at most [`MAX_LOOKS`] times per turn.
const WRITES_PER_LOOK: usize = 64;
const MAX_LOOKS: usize = 16;

/// How long to stop accepting after the process runs out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often a repeated warning (connection limit, out of descriptors, slow
/// consumers) may be logged; the ones in between are counted, not printed.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The operating system says "try again later": not an error, just the end of this burst.
fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// A signal arrived during the call: retry it.
fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

/// The process (EMFILE) or the system (ENFILE) has no file descriptor left,
/// or the kernel no buffer memory (ENOBUFS, ENOMEM): accepting must pause.
fn out_of_resources(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// One accepted TCP connection and the WebSocket state that goes with it.
struct Connection {
    /// Who this is to the chat: the slot and a generation unique to this connection.
    id: ConnId,
    stream: TcpStream,
    peer: SocketAddr,
    client: WebSocketClient,
    /// What the registry currently watches for this connection.
    interest: Interest,
    /// We have shut down our writing side (the close is sent and flushed).
    write_shut: bool,
    /// The peer has closed its writing side (read returned 0).
    peer_eof: bool,
    /// The time of this connection's live entry in the timer heap, if any.
    timer: Option<Instant>,
    /// Reading stopped because the outgoing queue was over its limit; resume
    /// as soon as it drains, whatever event reports the drain.
    read_paused: bool,
    /// On the ready list: it used up its read budget with input possibly left.
    in_ready: bool,
    /// Chat frames were queued for it this turn: write them at the end of the turn.
    dirty: bool,
    /// Counted among the handshakes in progress.
    pending: bool,
    /// The poller reported a hang-up or error: read on to EOF or the error,
    /// rather than stopping at a short read.
    hangup: bool,
}

/// Connections by token: a vector of slots and a list of free ones.
#[derive(Default)]
struct Slab {
    slots: Vec<Option<Connection>>,
    free: Vec<usize>,
    len: usize,
}

impl Slab {
    /// The index the next `insert` will use.
    fn next_index(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    fn insert(&mut self, conn: Connection) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(conn);
                index
            }
            None => {
                self.slots.push(Some(conn));
                self.slots.len() - 1
            }
        }
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut Connection> {
        self.slots.get_mut(index).and_then(Option::as_mut)
    }

    /// The connection `id` names, if it is still open (not a later one in its slot).
    fn get_id(&mut self, id: ConnId) -> Option<&mut Connection> {
        self.get_mut(id.index).filter(|conn| conn.id == id)
    }

    fn remove(&mut self, index: usize) -> Option<Connection> {
        let conn = self.slots.get_mut(index).and_then(Option::take)?;
        self.free.push(index);
        self.len -= 1;
        Some(conn)
    }

    fn indices(&self) -> Vec<usize> {
        self.slots.iter().enumerate().filter(|(_, slot)| slot.is_some()).map(|(i, _)| i).collect()
    }
}

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

/// What a [`ServerHandle`] asks of the loop.
#[derive(Default)]
struct Control {
    stop: AtomicBool,
    shutdown: AtomicBool,
    open: AtomicUsize,
}

/// Controls a running [`Server`] from another thread.
#[derive(Clone)]
pub struct ServerHandle {
    waker: Arc<Waker>,
    control: Arc<Control>,
}

impl ServerHandle {
    /// Makes [`Server::run`] return at once. Open connections are dropped without a Close.
    pub fn stop(&self) {
        self.control.stop.store(true, Ordering::SeqCst);
        // If the wake fails the loop is gone already.
        let _ = self.waker.wake();
    }

    /// Starts a graceful shutdown, as SIGTERM does: stop accepting, send
    /// every client Close 1001, and return from [`Server::run`] once they are
    /// gone or the drain timeout has passed.
    pub fn shutdown(&self) {
        self.control.shutdown.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }

    /// The number of open connections, as of the end of the loop's last turn.
    pub fn connections(&self) -> usize {
        self.control.open.load(Ordering::Relaxed)
    }
}

/// How [`Server::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// [`ServerHandle::stop`] was called.
    Stopped,
    /// A graceful shutdown finished: every connection closed, or the drain
    /// timeout passed with this many still open.
    Drained {
        /// Connections still open when the drain timeout ended the wait.
        left: usize,
    },
    /// A second signal arrived during the drain: the server gave up waiting.
    Forced,
}

/// A bound WebSocket server, ready to [`run`](Server::run).
pub struct Server {
    poll: Poll,
    /// `None` once a shutdown has begun.
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    config: Config,
    connections: Slab,
    /// Connection deadlines, soonest first; at most one live entry per
    /// connection (the one its `timer` names), the rest stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The one read buffer, shared by all connections in turn.
    read_buf: Vec<u8>,
    /// Connections that used up their read budget and may have input waiting.
    ready: Vec<usize>,
    /// Connections with chat frames queued this turn, to be written at its end, in order.
    dirty: VecDeque<usize>,
    /// The events buffer for [`Server::look_for_input`].
    look_events: Events,
    /// A second signal arrived: [`Server::run`] returns at once.
    forced: bool,
    chat: Chat,
    /// Compressors for connections without server context takeover, shared by all.
    deflaters: SharedDeflaters,
    /// Numbers connections, so a reused slot is never mistaken for its last owner.
    generation: u64,
    /// Handshakes in progress, oldest first (entries that finished are skipped).
    pending: VecDeque<ConnId>,
    pending_count: usize,
    /// Accepting is paused until then (out of file descriptors).
    accept_paused_until: Option<Instant>,
    /// A graceful shutdown is under way and ends at the latest then.
    draining_until: Option<Instant>,
    signals: Option<UnixStream>,
    signals_seen: usize,
    waker: Arc<Waker>,
    control: Arc<Control>,
    limit_warning: Throttle,
    fd_warning: Throttle,
    slow_warning: Throttle,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// Binding the address or setting up the poller failed.
    Io(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(err) => write!(f, "invalid configuration: {err}"),
            StartError::Io(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(err: io::Error) -> StartError {
        StartError::Io(err)
    }
}

impl Server {
    /// Validates `config`, binds its address and registers the listener.
    pub fn bind(config: Config) -> Result<Server, StartError> {
        config.validate().map_err(StartError::Config)?;
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.bind)?;
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            read_buf: vec![0; config.read_buffer_size],
            ready: Vec::new(),
            dirty: VecDeque::new(),
            look_events: Events::with_capacity(256),
            forced: false,
            chat: Chat::new(&config),
            deflaters: SharedDeflaters::default(),
            generation: 0,
            pending: VecDeque::new(),
            pending_count: 0,
            config,
            connections: Slab::default(),
            timers: BinaryHeap::new(),
            accept_paused_until: None,
            draining_until: None,
            signals: None,
            signals_seen: 0,
            waker,
            control: Arc::new(Control::default()),
            limit_warning: Throttle::default(),
            fd_warning: Throttle::default(),
            slow_warning: Throttle::default(),
        })
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The number of open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len
    }

    /// A handle that can stop the server from another thread.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle { waker: Arc::clone(&self.waker), control: Arc::clone(&self.control) }
    }

    /// Makes SIGINT and SIGTERM start a graceful shutdown (and a second one
    /// end it at once). The signal handler only writes a byte to a pipe that
    /// the loop watches, so no work happens in signal context.
    pub fn shutdown_on_signals(&mut self) -> io::Result<()> {
        let (read, write) = std::os::unix::net::UnixStream::pair()?;
        read.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, write.try_clone()?)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, write)?;
        let mut read = UnixStream::from_std(read);
        self.poll.registry().register(&mut read, SIGNALS, Interest::READABLE)?;
        self.signals = Some(read);
        Ok(())
    }

    /// Serves until stopped, or until a graceful shutdown has drained.
    pub fn run(&mut self) -> io::Result<Exit> {
        let c = &self.config;
        info!(
            addr = %self.local_addr,
            max_connections = c.max_connections,
            max_pending_handshakes = c.max_pending_handshakes,
            max_message_size = c.max_message_size,
            max_outgoing_bytes = c.max_outgoing_bytes,
            handshake_timeout = ?c.handshake_timeout,
            ping_interval = ?c.ping_interval,
            idle_timeout = ?c.idle_timeout,
            rate_limit = c.rate_limit_per_sec,
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
            if self.forced {
                return Ok(Exit::Forced);
            }
            for index in std::mem::take(&mut self.ready) {
                if let Some(conn) = self.connections.get_mut(index) {
                    conn.in_ready = false;
                    self.service(index, true, now);
                }
            }
            if self.control.stop.load(Ordering::SeqCst) {
                return Ok(Exit::Stopped);
            }
            if self.control.shutdown.load(Ordering::SeqCst) && self.draining_until.is_none() {
                self.begin_shutdown(now);
            }
            self.expire(now);
            self.deliver(now);
            if self.forced {
                return Ok(Exit::Forced);
            }
            self.control.open.store(self.connections.len, Ordering::Relaxed);
            if let Some(until) = self.draining_until {
                let left = self.connections.len;
                if left == 0 || now >= until {
                    info!(left, "shutdown complete");
                    return Ok(Exit::Drained { left });
                }
            }
        }
    }

    /// Handles what the poller reported: new connections, signals, and
    /// connections to read or write.
    fn dispatch(&mut self, events: &Events, now: Instant) {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(now),
                WAKER => {}
                SIGNALS => {
                    if self.handle_signals(now) {
                        warn!(open = self.connections.len, "second signal: exiting without waiting for the drain");
                        self.forced = true;
                    }
                }
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

    /// In the middle of a long write phase, reads what has arrived since the
    /// turn began (without waiting), so that it joins the deliveries still
    /// to be written instead of waiting for a turn of its own.
    fn look_for_input(&mut self) {
        let mut events = std::mem::replace(&mut self.look_events, Events::with_capacity(0));
        // An error (interrupted, or one the next full turn will report) just ends the look.
        if self.poll.poll(&mut events, Some(Duration::ZERO)).is_ok() {
            self.dispatch(&events, Instant::now());
        }
        self.look_events = events;
    }

    /// How long `poll` may sleep: until the soonest deadline, or forever.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO); // connections with input waiting: only look for new events
        }
        // A stop or shutdown request whose wake-up was taken by a look for
        // input during delivery: act on it now rather than at the next event.
        let control = &self.control;
        if control.stop.load(Ordering::SeqCst)
            || (control.shutdown.load(Ordering::SeqCst) && self.draining_until.is_none())
        {
            return Some(Duration::ZERO);
        }
        let soonest = [self.timers.peek().map(|Reverse((at, _))| *at), self.accept_paused_until, self.draining_until]
            .into_iter()
            .flatten()
            .min();
        soonest.map(|at| at.saturating_duration_since(now))
    }

    /// Reads the signal pipe. Returns `true` when the server should exit at once.
    fn handle_signals(&mut self, now: Instant) -> bool {
        let mut buf = [0u8; 16];
        let mut count = 0;
        if let Some(pipe) = self.signals.as_mut() {
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => count += n,
                    Err(err) if interrupted(&err) => continue,
                    Err(_) => break,
                }
            }
        }
        if count == 0 {
            return false;
        }
        self.signals_seen += count;
        if self.signals_seen >= 2 {
            return true;
        }
        self.begin_shutdown(now);
        false
    }

    /// Graceful shutdown: stop accepting, close every connection with 1001,
    /// and give them [`Config::drain_timeout`] to finish.
    fn begin_shutdown(&mut self, now: Instant) {
        if self.draining_until.is_some() {
            return;
        }
        info!(open = self.connections.len, drain_timeout = ?self.config.drain_timeout, "shutting down");
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.draining_until = Some(now + self.config.drain_timeout);
        for index in self.connections.indices() {
            let Some(conn) = self.connections.get_mut(index) else { continue };
            if conn.client.is_awaiting_handshake() {
                // It has been told nothing yet, and there is nothing to finish.
                remove(&mut self.connections, self.poll.registry(), &mut self.chat, &mut self.pending_count, index);
                continue;
            }
            conn.client.close(close_code::GOING_AWAY, "server shutting down", now, &self.config);
            self.service(index, false, now);
        }
    }

    /// Accepts every pending connection, unless accepting is paused.
    fn accept(&mut self, now: Instant) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_ref() else { return };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now),
                Err(err) if would_block(&err) => return,
                Err(err) if interrupted(&err) => continue,
                // The peer gave up while queued: nothing to do.
                Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(err) => {
                    // Out of descriptors (or another failure): pause instead of
                    // spinning on a listener that stays readable; the clients
                    // already connected are served meanwhile.
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    if let Some(skipped) = self.fd_warning.ready(now) {
                        let kind = if out_of_resources(&err) { "out of resources" } else { "failed" };
                        warn!(error = %err, open = self.connections.len, skipped, "accept {kind}: pausing accepts for 100 ms");
                    }
                    return;
                }
            }
        }
    }

    /// Takes in one accepted connection, or turns it away with 503.
    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        if self.connections.len >= self.config.max_connections {
            if let Some(skipped) = self.limit_warning.ready(now) {
                warn!(
                    max_connections = self.config.max_connections,
                    skipped, "connection limit reached: answering 503"
                );
            }
            refuse(&mut stream, &mut self.read_buf);
            return;
        }
        if self.pending_count >= self.config.max_pending_handshakes {
            self.evict_oldest_handshake(now);
        }
        // Replies are small and already batched per turn: send them now.
        let _ = stream.set_nodelay(true);
        let index = self.connections.next_index();
        if self.poll.registry().register(&mut stream, Token(index), Interest::READABLE).is_err() {
            return;
        }
        self.generation += 1;
        let id = ConnId { index, generation: self.generation };
        let conn = Connection {
            id,
            stream,
            peer,
            client: WebSocketClient::new(now, &self.config),
            interest: Interest::READABLE,
            write_shut: false,
            peer_eof: false,
            timer: None,
            read_paused: false,
            in_ready: false,
            dirty: false,
            pending: true,
            hangup: false,
        };
        let inserted = self.connections.insert(conn);
        debug_assert_eq!(inserted, index);
        self.pending.push_back(id);
        self.pending_count += 1;
        debug!(conn = index, %peer, "accepted");
        // Arms the handshake timer.
        self.service(index, false, now);
    }

    /// Makes room among the handshakes in progress by answering the oldest with 503.
    fn evict_oldest_handshake(&mut self, now: Instant) {
        while let Some(id) = self.pending.pop_front() {
            let Some(conn) = self.connections.get_id(id) else { continue };
            if !conn.pending {
                continue;
            }
            debug!(conn = id.index, peer = %conn.peer, "too many handshakes in progress: dropping the oldest");
            conn.client.reject(
                &service_unavailable("too many connections are still handshaking"),
                503,
                now,
                &self.config,
            );
            self.service(id.index, false, now);
            return;
        }
    }

    /// Reads, processes and writes for one connection, then updates its
    /// interest and timer, or removes it when it is finished.
    fn service(&mut self, index: usize, readable: bool, now: Instant) {
        let Server { connections, read_buf, config, poll, timers, ready, chat, deflaters, pending_count, .. } = self;
        let Some(conn) = connections.get_mut(index) else {
            return; // a spurious event for a connection already removed
        };
        let mut endpoints = Endpoints { chat, deflaters, id: conn.id, now };
        let mut budget = READ_BUDGET;
        let mut want_read = readable;
        let finished = loop {
            if want_read
                && !conn.peer_eof
                && read_into(conn, read_buf, config, &mut endpoints, now, &mut budget).is_err()
            {
                break true; // reset by peer, or another hard error
            }
            if conn.client.write_to(&mut Sock::of(&conn.stream)).is_err() {
                break true;
            }
            if conn.client.is_done_writing() {
                if conn.peer_eof {
                    break true;
                }
                if !conn.write_shut {
                    // Our Close (or HTTP response) is out: send FIN, and keep
                    // reading until the peer's FIN so our last bytes are not
                    // lost to a reset caused by unread input.
                    conn.write_shut = true;
                    if conn.stream.shutdown(Shutdown::Write).is_err() {
                        break true;
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
        if finished {
            remove(connections, poll.registry(), chat, pending_count, index);
            return;
        }
        if conn.pending && !conn.client.is_awaiting_handshake() {
            conn.pending = false;
            *pending_count -= 1;
        }
        if budget == 0 && !conn.in_ready {
            conn.in_ready = true;
            ready.push(index);
        }
        let wanted =
            if conn.client.wants_write() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        if wanted != conn.interest {
            if poll.registry().reregister(&mut conn.stream, Token(index), wanted).is_err() {
                remove(connections, poll.registry(), chat, pending_count, index);
                return;
            }
            conn.interest = wanted;
        }
        // Arm the timer if the connection now needs one sooner than its live entry.
        if let Some(at) = conn.client.next_deadline(config)
            && conn.timer.is_none_or(|armed| at < armed)
        {
            conn.timer = Some(at);
            timers.push(Reverse((at, index)));
        }
    }

    /// Runs every timer that is due, and resumes accepting after a pause.
    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((at, index))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.connections.get_mut(index) else { continue };
            if conn.timer != Some(at) {
                continue; // stale: superseded by a sooner entry, or the slot's last owner's
            }
            conn.timer = None;
            match conn.client.on_timer(now, &self.config) {
                TimerAction::Drop => {
                    remove(&mut self.connections, self.poll.registry(), &mut self.chat, &mut self.pending_count, index)
                }
                // Writes what the timer queued (a Ping, a 408, a Close) and re-arms.
                TimerAction::Continue => self.service(index, false, now),
            }
        }
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
            self.accept(now);
        }
    }

    /// Delivers what the chat said this turn, then writes every connection that got something.
    ///
    /// A long write phase (a room of thousands) stops every
    /// [`WRITES_PER_LOOK`] writes to read what has arrived meanwhile; what
    /// that input makes the chat say is queued at once, so connections not
    /// yet written carry it in the same write.
    fn deliver(&mut self, now: Instant) {
        let mut looks = MAX_LOOKS;
        let mut writes = 0usize;
        loop {
            if !self.chat.outbox().is_empty() {
                self.queue_outbox(now);
                continue;
            }
            let Some(index) = self.dirty.pop_front() else { break };
            let Some(conn) = self.connections.get_mut(index) else { continue };
            conn.dirty = false;
            self.service(index, false, now);
            writes += 1;
            if looks > 0 && writes.is_multiple_of(WRITES_PER_LOOK) && !self.dirty.is_empty() {
                looks -= 1;
                self.look_for_input();
            }
        }
    }

    /// Puts what the chat said on its recipients' queues (marking them to be written).
    ///
    /// A recipient whose queue would pass its cap is a slow consumer: it is
    /// closed with 1008 and leaves the chat, and the `leave` events that
    /// causes are queued in the next round.
    fn queue_outbox(&mut self, now: Instant) {
        let cap = self.config.max_outgoing_bytes;
        let threshold = self.config.deflate_threshold;
        let mut slow = Vec::new();
        let outbox = self.chat.take_outbox();
        for (frames, recipients) in outbox.runs() {
            // A run (consecutive frames to the same recipients) is joined
            // into one buffer, made on first need: raw, and compressed
            // once per window size for every recipient without server
            // context takeover.
            let mut raw: Option<SharedFrame> = None;
            let mut compressed: [Option<SharedFrame>; 16] = Default::default();
            let raw_len: usize = frames.iter().map(|f| f.len()).sum();
            for &id in recipients {
                let Some(conn) = self.connections.get_id(id) else { continue };
                if !conn.client.is_open() {
                    continue;
                }
                let shared = match conn.client.deflate_agreement() {
                    Some(agreed) if agreed.server_no_context_takeover => {
                        let agreed = *agreed;
                        let slot = &mut compressed[usize::from(agreed.server_max_window_bits)];
                        Some(
                            &*slot.get_or_insert_with(|| compress_run(&mut self.deflaters, &agreed, frames, threshold)),
                        )
                    }
                    // With its own compressor (context takeover), a connection compresses for itself.
                    Some(_) => None,
                    None => Some(&*raw.get_or_insert_with(|| join(frames, raw_len))),
                };
                let queued = conn.client.outgoing.len();
                let size = shared.map_or(raw_len, |bytes| bytes.len());
                // A run always fits an empty queue, however large.
                if queued > 0 && queued + size > cap {
                    if !slow.contains(&id) {
                        slow.push(id);
                    }
                    continue;
                }
                match shared {
                    Some(bytes) => conn.client.outgoing.push_shared(bytes),
                    None => {
                        for frame in frames {
                            conn.client.reply(&self.config).send(
                                OpCode::Text,
                                frame_payload(frame),
                                &mut self.deflaters,
                            );
                        }
                    }
                }
                mark_dirty(conn, &mut self.dirty);
            }
        }
        self.chat.restore_outbox(outbox);
        for id in slow.drain(..) {
            self.chat.disconnect(id);
            if let Some(conn) = self.connections.get_id(id) {
                if let Some(skipped) = self.slow_warning.ready(now) {
                    warn!(conn = id.index, peer = %conn.peer, queued = conn.client.outgoing.len(), skipped, "closing a slow consumer (1008)");
                }
                conn.client.close_slow_consumer("slow consumer: too much unread data", now, &self.config);
                mark_dirty(conn, &mut self.dirty);
            }
        }
    }
}

/// The payload of a frame the chat encoded (an unmasked text frame).
fn frame_payload(frame: &[u8]) -> &[u8] {
    match FrameHeader::decode(frame, &DecodeRules::client(u64::MAX)) {
        Ok(Some((_, header_len))) => &frame[header_len..],
        _ => &[],
    }
}

/// The frames of a run as one buffer (the frame itself when it is alone).
fn join(frames: &[SharedFrame], len: usize) -> SharedFrame {
    match frames {
        [one] => Arc::clone(one),
        _ => {
            let mut bytes = Vec::with_capacity(len);
            for frame in frames {
                bytes.extend_from_slice(frame);
            }
            SharedFrame::from(bytes)
        }
    }
}

/// The frames of a run as sent to every connection with this agreement, in
/// one buffer: each message compressed on its own (no context takeover), or
/// left raw where the shared compressors' rule says it is not worth it.
fn compress_run(
    deflaters: &mut SharedDeflaters,
    agreed: &crate::deflate::Agreement,
    frames: &[SharedFrame],
    threshold: usize,
) -> SharedFrame {
    let mut out = Vec::new();
    let mut body = Vec::new();
    for frame in frames {
        body.clear();
        if !deflaters.compress_if_worth(agreed, frame_payload(frame), threshold, &mut body) {
            out.extend_from_slice(frame);
            continue;
        }
        let header = FrameHeader { rsv: RSV1, ..FrameHeader::new(OpCode::Text, body.len() as u64) };
        header.encode(&mut out);
        out.extend_from_slice(&body);
    }
    SharedFrame::from(out)
}

/// The 503 response for a connection the server cannot take now.
fn service_unavailable(why: &str) -> Vec<u8> {
    handshake::http_response(
        503,
        "Service Unavailable",
        &["Retry-After: 5"],
        "text/plain",
        format!("{why}\n").as_bytes(),
    )
}

/// Answers a connection over the limit with 503 and closes it, without ever
/// registering it. Best effort: a fresh socket's send buffer is empty, so
/// the short response goes out in one non-blocking write.
fn refuse(stream: &mut TcpStream, scratch: &mut [u8]) {
    // Read what the client already sent, so closing does not reset the connection.
    let _ = stream.read(scratch);
    let _ = stream.write(&service_unavailable("the server is at its connection limit; try again shortly"));
    let _ = stream.shutdown(Shutdown::Write);
}

/// What the endpoints do, for one connection: `/echo` answers in place, the
/// chat speaks through its outbox.
struct Endpoints<'a> {
    chat: &'a mut Chat,
    deflaters: &'a mut SharedDeflaters,
    id: ConnId,
    now: Instant,
}

impl Handler for Endpoints<'_> {
    fn on_open(&mut self, endpoint: Endpoint, query: &str, _: &mut Reply<'_>) -> Result<(), (u16, &'static str)> {
        debug!(conn = self.id.index, ?endpoint, "upgraded");
        match endpoint {
            Endpoint::Echo => Ok(()),
            Endpoint::Chat => {
                self.chat.connect(self.id, query, self.now).map_err(|refusal| (close_code::POLICY, refusal.0))
            }
        }
    }

    fn on_message(&mut self, endpoint: Endpoint, message: Message<'_>, reply: &mut Reply<'_>) {
        match (endpoint, message) {
            (Endpoint::Echo, message) => reply.send(message.opcode(), message.as_bytes(), self.deflaters),
            // The wall clock is read only for a chat message, which carries the time.
            (Endpoint::Chat, Message::Text(text)) => self.chat.handle_text(self.id, text, self.now, unix_millis()),
            (Endpoint::Chat, Message::Binary(_)) => self.chat.handle_binary(self.id, self.now),
        }
    }
}

/// Puts a connection on the list to be written at the end of the turn (once).
fn mark_dirty(conn: &mut Connection, dirty: &mut VecDeque<usize>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push_back(conn.id.index);
    }
}

fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Reads until the socket is drained, feeding every byte to the client,
/// unless the client's outgoing queue is full (then `read_paused` is set) or
/// the read budget runs out.
///
/// A read that fills less than the buffer has drained the socket: on Linux,
/// epoll reports every later arrival as a new edge, so the extra read that
/// would only say `WouldBlock` is skipped (a third of the system calls of a
/// busy echo). The exception is a hang-up already reported: then the FIN came
/// with that same edge and we read on until EOF.
fn read_into<H: Handler>(
    conn: &mut Connection,
    read_buf: &mut [u8],
    config: &Config,
    handler: &mut H,
    now: Instant,
    budget: &mut usize,
) -> io::Result<()> {
    loop {
        conn.read_paused = !conn.client.wants_read(config);
        if conn.read_paused || *budget == 0 {
            return Ok(());
        }
        *budget -= 1;
        match Sock::of(&conn.stream).read(read_buf) {
            Ok(0) => {
                conn.peer_eof = true;
                conn.client.handle_eof(now, config);
                return Ok(());
            }
            Ok(n) => {
                conn.client.handle_input(&mut read_buf[..n], now, config, handler);
                if n < read_buf.len() && !conn.hangup {
                    return Ok(());
                }
            }
            Err(err) if would_block(&err) => return Ok(()),
            Err(err) if interrupted(&err) => continue,
            Err(err) => return Err(err),
        }
    }
}

/// A connected socket, read with `recv` and written with `send`/`sendmsg`
/// rather than `read`/`write`/`writev`: the same bytes, without the
/// file-system layer's work on every call (see BENCHMARKS.md).
struct Sock<'a>(socket2::SockRef<'a>);

impl<'a> Sock<'a> {
    fn of(stream: &'a TcpStream) -> Sock<'a> {
        Sock(socket2::SockRef::from(stream))
    }
}

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match bufs {
            [one] => self.0.send(one),
            _ => self.0.send_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Closes a connection for good: it leaves the chat, and its socket is closed.
fn remove(connections: &mut Slab, registry: &Registry, chat: &mut Chat, pending_count: &mut usize, index: usize) {
    let Some(mut conn) = connections.remove(index) else { return };
    if conn.pending {
        *pending_count -= 1;
    }
    chat.disconnect(conn.id);
    let clean = matches!(conn.client.close_info(), Some(CloseInfo::Handshake(_)));
    match conn.client.close_info() {
        Some(info) => debug!(conn = index, peer = %conn.peer, clean, close = %info, "closed"),
        None => debug!(conn = index, peer = %conn.peer, clean, "closed (reset or error)"),
    }
    // Dropping the stream closes the socket; deregistering first keeps the
    // registry tidy even if the descriptor number is soon reused.
    let _ = registry.deregister(&mut conn.stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_or_shutdown_request_never_waits_for_another_event() {
        // The waker's event may be taken by a look for input during delivery;
        // the request itself must still end the next wait at once.
        let config = Config { bind: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
        for request in [ServerHandle::stop, ServerHandle::shutdown] {
            let server = Server::bind(config.clone()).unwrap();
            let now = Instant::now();
            assert_eq!(server.poll_timeout(now), None, "nothing to wait for: sleep until an event");
            request(&server.handle());
            assert_eq!(server.poll_timeout(now), Some(Duration::ZERO));
        }
    }

    #[test]
    fn a_connection_is_small() {
        // Idle memory per connection is mostly this slot (see BENCHMARKS.md).
        let slot = std::mem::size_of::<Option<Connection>>();
        let client = std::mem::size_of::<WebSocketClient>();
        eprintln!("Option<Connection>: {slot} bytes; WebSocketClient: {client} bytes");
        assert!(slot <= 384, "{slot}");
    }
}
