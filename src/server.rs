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
//! each touched connection once.
//!
//! mio's readiness is edge-triggered: an event says "something changed", not
//! "there is data", so every read and accept loop runs until `WouldBlock`,
//! and spurious events (for a connection already removed, or with nothing to
//! read) are expected and ignored.

use crate::chat::{Chat, ConnId};
use crate::client::{Endpoint, Handler, WebSocketClient};
use crate::config::{Config, ConfigError};
use crate::message::Message;
use crate::outgoing::Outgoing;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The listening socket's token. Connections use their slot index.
const LISTENER: Token = Token(usize::MAX);
/// The token of the waker that [`ServerHandle::stop`] pokes.
const WAKER: Token = Token(usize::MAX - 1);

/// Reads one connection may do per turn of the loop (16 × 64 KiB = 1 MiB by
/// default). A client that sends faster than we can process would otherwise
/// never let its socket reach `WouldBlock`, and everyone else would wait.
/// A connection that uses up its budget goes on the ready list and is served
/// again after the others, without waiting for a new event.
const READ_BUDGET: usize = 16;

/// The operating system says "try again later": not an error, just the end of this burst.
fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// A signal arrived during the call: retry it.
fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

/// One accepted TCP connection and the WebSocket state that goes with it.
struct Connection {
    /// Who this is to the chat: the slot and a generation unique to this connection.
    id: ConnId,
    stream: TcpStream,
    client: WebSocketClient,
    /// What the registry currently watches for this connection.
    interest: Interest,
    /// We have shut down our writing side (the close is sent and flushed).
    write_shut: bool,
    /// The peer has closed its writing side (read returned 0).
    peer_eof: bool,
    /// The deadline last pushed onto the timer heap, to push each one once.
    timer: Option<Instant>,
    /// Reading stopped because the outgoing queue was over its limit; resume
    /// as soon as it drains, whatever event reports the drain.
    read_paused: bool,
    /// On the ready list: it used up its read budget with input possibly left.
    in_ready: bool,
    /// Chat frames were queued for it this turn: write them at the end of the turn.
    dirty: bool,
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
}

/// Stops a running [`Server`] from another thread.
#[derive(Clone)]
pub struct ServerHandle {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
}

impl ServerHandle {
    /// Asks the server to return from [`Server::run`]. Open connections are dropped.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // If the wake fails the loop is gone already.
        let _ = self.waker.wake();
    }

    /// The number of open connections, as of the end of the loop's last turn.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// A bound WebSocket server, ready to [`run`](Server::run).
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Config,
    connections: Slab,
    /// Connection deadlines, soonest first. Entries may be stale (the
    /// connection is gone or has a new deadline); each is checked when it fires.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The one read buffer, shared by all connections in turn.
    read_buf: Vec<u8>,
    /// Connections that used up their read budget and may have input waiting.
    ready: Vec<usize>,
    /// Connections with chat frames queued this turn, to be written at its end.
    dirty: Vec<usize>,
    chat: Chat,
    /// Numbers connections, so a reused slot is never mistaken for its last owner.
    generation: u64,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    /// Open connections, published for [`ServerHandle::connections`].
    open: Arc<AtomicUsize>,
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
            listener,
            local_addr,
            read_buf: vec![0; config.read_buffer_size],
            ready: Vec::new(),
            dirty: Vec::new(),
            chat: Chat::new(&config),
            generation: 0,
            config,
            connections: Slab::default(),
            timers: BinaryHeap::new(),
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            open: Arc::new(AtomicUsize::new(0)),
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
        ServerHandle { waker: Arc::clone(&self.waker), stop: Arc::clone(&self.stop), open: Arc::clone(&self.open) }
    }

    /// Serves until [`ServerHandle::stop`] is called.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            // With connections on the ready list, only look for new events.
            let timeout = if self.ready.is_empty() { self.next_timeout(Instant::now()) } else { Some(Duration::ZERO) };
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if interrupted(&err) {
                    continue;
                }
                return Err(err);
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(index) => {
                        // Errors and hang-ups show up as a read that fails or returns 0.
                        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                        self.service(index, readable, now);
                    }
                }
            }
            for index in std::mem::take(&mut self.ready) {
                if let Some(conn) = self.connections.get_mut(index) {
                    conn.in_ready = false;
                    self.service(index, true, now);
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.expire(now);
            self.deliver(now);
            self.open.store(self.connections.len, Ordering::Relaxed);
        }
    }

    /// Accepts every pending connection.
    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _addr)) => {
                    // Replies are small and already batched per turn: send them now.
                    let _ = stream.set_nodelay(true);
                    let index = self.connections.next_index();
                    if self.poll.registry().register(&mut stream, Token(index), Interest::READABLE).is_err() {
                        continue;
                    }
                    self.generation += 1;
                    let conn = Connection {
                        id: ConnId { index, generation: self.generation },
                        stream,
                        client: WebSocketClient::new(),
                        interest: Interest::READABLE,
                        write_shut: false,
                        peer_eof: false,
                        timer: None,
                        read_paused: false,
                        in_ready: false,
                        dirty: false,
                    };
                    let inserted = self.connections.insert(conn);
                    debug_assert_eq!(inserted, index);
                }
                Err(err) if would_block(&err) => return,
                Err(err) if interrupted(&err) => continue,
                // A connection that died while queued (ECONNABORTED) and the
                // like: skip it. Running out of file descriptors ends this
                // burst; the next connection attempt wakes us again.
                Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(_) => return,
            }
        }
    }

    /// Reads, processes and writes for one connection, then updates its
    /// interest and deadline, or removes it when it is finished.
    fn service(&mut self, index: usize, readable: bool, now: Instant) {
        let Server { connections, read_buf, config, poll, timers, ready, chat, .. } = self;
        let Some(conn) = connections.get_mut(index) else {
            return; // a spurious event for a connection already removed
        };
        let mut endpoints = Endpoints { chat, id: conn.id, now, time_ms: unix_millis() };
        let mut budget = READ_BUDGET;
        let mut want_read = readable;
        let finished = loop {
            if want_read
                && !conn.peer_eof
                && read_into(conn, read_buf, config, &mut endpoints, now, &mut budget).is_err()
            {
                break true; // reset by peer, or another hard error
            }
            if conn.client.write_to(&mut conn.stream).is_err() {
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
            remove(connections, poll.registry(), chat, index);
            return;
        }
        if budget == 0 && !conn.in_ready {
            conn.in_ready = true;
            ready.push(index);
        }
        let wanted =
            if conn.client.wants_write() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        if wanted != conn.interest {
            if poll.registry().reregister(&mut conn.stream, Token(index), wanted).is_err() {
                remove(connections, poll.registry(), chat, index);
                return;
            }
            conn.interest = wanted;
        }
        let deadline = conn.client.deadline();
        if deadline != conn.timer {
            conn.timer = deadline;
            if let Some(at) = deadline {
                timers.push(Reverse((at, index)));
            }
        }
    }

    /// Delivers what the chat said this turn, then writes every connection that got something.
    ///
    /// A recipient whose queue would pass its cap is a slow consumer: it is
    /// closed with 1008 and leaves the chat, and the `leave` events that
    /// causes are delivered in the next round of the same loop.
    fn deliver(&mut self, now: Instant) {
        let cap = self.config.max_outgoing_bytes;
        let mut slow = Vec::new();
        // Writing may remove a connection, and its `leave` is more to deliver.
        while !self.chat.outbox().is_empty() || !self.dirty.is_empty() {
            let outbox = self.chat.take_outbox();
            for (frame, recipients) in outbox.iter() {
                for &id in recipients {
                    let Some(conn) = self.connections.get_id(id) else { continue };
                    if !conn.client.is_open() {
                        continue;
                    }
                    let queued = conn.client.outgoing.len();
                    // A frame always fits an empty queue, however large.
                    if queued > 0 && queued + frame.len() > cap {
                        if !slow.contains(&id) {
                            slow.push(id);
                        }
                        continue;
                    }
                    conn.client.outgoing.push_shared(frame);
                    mark_dirty(conn, &mut self.dirty);
                }
            }
            self.chat.restore_outbox(outbox);
            for id in slow.drain(..) {
                self.chat.disconnect(id);
                if let Some(conn) = self.connections.get_id(id) {
                    conn.client.close_slow_consumer("slow consumer: too much unread data", now, &self.config);
                    mark_dirty(conn, &mut self.dirty);
                }
            }
            if !self.chat.outbox().is_empty() {
                continue; // the leave events of slow consumers
            }
            for index in std::mem::take(&mut self.dirty) {
                if let Some(conn) = self.connections.get_mut(index) {
                    conn.dirty = false;
                    self.service(index, false, now);
                }
            }
        }
    }

    /// How long `poll` may sleep: until the soonest deadline, or forever.
    fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.timers.peek().map(|Reverse((at, _))| at.saturating_duration_since(now))
    }

    /// Drops every connection whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((at, index))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let expired = self.connections.get_mut(index).is_some_and(|conn| conn.client.is_expired(now));
            if expired {
                remove(&mut self.connections, self.poll.registry(), &mut self.chat, index);
            }
        }
    }
}

/// What the endpoints do, for one connection: `/echo` answers in place, the
/// chat speaks through its outbox.
struct Endpoints<'a> {
    chat: &'a mut Chat,
    id: ConnId,
    now: Instant,
    /// Wall-clock time for chat timestamps, in milliseconds since 1970.
    time_ms: u64,
}

impl Handler for Endpoints<'_> {
    fn on_open(&mut self, endpoint: Endpoint, query: &str, _: &mut Outgoing) -> Result<(), (u16, &'static str)> {
        match endpoint {
            Endpoint::Echo => Ok(()),
            Endpoint::Chat => self
                .chat
                .connect(self.id, query, self.now)
                .map_err(|refusal| (crate::message::close_code::POLICY, refusal.0)),
        }
    }

    fn on_message(&mut self, endpoint: Endpoint, message: Message<'_>, out: &mut Outgoing) {
        match (endpoint, message) {
            (Endpoint::Echo, message) => out.push_frame(message.opcode(), message.as_bytes()),
            (Endpoint::Chat, Message::Text(text)) => self.chat.handle_text(self.id, text, self.now, self.time_ms),
            (Endpoint::Chat, Message::Binary(_)) => self.chat.handle_binary(self.id, self.now),
        }
    }
}

/// Puts a connection on the list to be written at the end of the turn (once).
fn mark_dirty(conn: &mut Connection, dirty: &mut Vec<usize>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(conn.id.index);
    }
}

fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Reads until `WouldBlock`, feeding every byte to the client, unless the
/// client's outgoing queue is full (then `read_paused` is set) or the read
/// budget runs out.
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
        match conn.stream.read(read_buf) {
            Ok(0) => {
                conn.peer_eof = true;
                conn.client.handle_eof(now, config);
                return Ok(());
            }
            Ok(n) => conn.client.handle_input(&mut read_buf[..n], now, config, handler),
            Err(err) if would_block(&err) => return Ok(()),
            Err(err) if interrupted(&err) => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Closes a connection for good: it leaves the chat, and its socket is closed.
fn remove(connections: &mut Slab, registry: &Registry, chat: &mut Chat, index: usize) {
    if let Some(mut conn) = connections.remove(index) {
        chat.disconnect(conn.id);
        // Dropping the stream closes the socket; deregistering first keeps the
        // registry tidy even if the descriptor number is soon reused.
        let _ = registry.deregister(&mut conn.stream);
    }
}
