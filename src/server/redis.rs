//! A process's link to Redis: one thread, two connections, never a wait in
//! an event loop.
//!
//! Event loops hand the [`Link`] commands and subscriptions and go on; the
//! link's own thread writes them to Redis (pipelined, on one command
//! connection), reads the replies and the messages of the subscribed
//! channels (on one subscriber connection), and hands them back through an
//! outbox and a [`Wake`] — for a server, a `ServerHandle::notify`, which
//! wakes the loop through its `mio::Waker`. Why a thread and not a Redis
//! socket in every worker: a process has one subscription connection that
//! way (Redis fans a room's message out once per process, not once per
//! worker), the loops' polls stay as they are, and a publish costs a loop a
//! channel send and nothing else; the replies come back in batches, one
//! wake per batch.
//!
//! When Redis cannot be reached — it is down, restarting, or the connection
//! broke — the link says so ([`Incoming::Down`], one warning in the log per
//! outage), answers every command that was waiting and every new one with
//! [`RemoteError::Down`] (so a caller can refuse a message rather than lose
//! it), and tries again with a backoff from [`LinkConfig::retry_min`]
//! doubling to [`LinkConfig::retry_max`]. Once both connections are back it
//! says [`Incoming::Up`] (one line in the log) and subscribes again to every
//! channel it held: what was published in between is not delivered, and a
//! caller recovers it from history (the chat's `since`). A command whose
//! connection broke after it was written may or may not have run: `Down`
//! means "not known to have happened".
//!
//! Bounds: at most [`LinkConfig::max_waiting`] commands wait for replies
//! (more are answered [`RemoteError::Busy`]); a reply larger than
//! [`LinkConfig::max_reply`] breaks the connection; and while the outbox
//! holds [`LinkConfig::max_outbox`] items the link stops reading, so a loop
//! that falls behind makes Redis hold (and, past its own client output
//! limit, drop) the connection rather than this process grow.

use crate::broker::resp::{Event, Resp, Value};
use crate::broker::{Incoming, Remote, RemoteError, Wake};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where Redis is and the link's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Redis's address.
    pub addr: SocketAddr,
    /// The database the commands use (`SELECT`ed on connecting; pub/sub is
    /// the same in every database).
    pub db: u32,
    /// The longest reply or message read (Redis's own default bulk limit is 512 MiB; ours is lower).
    pub max_reply: usize,
    /// Commands sent and not yet answered, at most.
    pub max_waiting: usize,
    /// Replies and messages not yet taken, at most, before the link stops reading.
    pub max_outbox: usize,
    /// The first wait before connecting again.
    pub retry_min: Duration,
    /// The longest wait before connecting again.
    pub retry_max: Duration,
    /// How long a connection may take to be made.
    pub connect_timeout: Duration,
    /// Commands sent first on every new command connection (after `SELECT`),
    /// their replies not handed back: `SCRIPT LOAD`s, so that callers can use
    /// `EVALSHA`. They are sent again whenever a reply says `NOSCRIPT` (the
    /// script cache was flushed).
    pub preload: Vec<Vec<Vec<u8>>>,
}

impl LinkConfig {
    /// The defaults for Redis at `addr`, database 0: replies up to 64 MiB,
    /// 100,000 commands in flight and 100,000 items in the outbox, retries
    /// from 100 ms doubling to 1 s (so service is back within about a
    /// second of Redis), 2 s to connect.
    pub fn new(addr: SocketAddr) -> LinkConfig {
        LinkConfig {
            addr,
            db: 0,
            max_reply: 64 << 20,
            max_waiting: 100_000,
            max_outbox: 100_000,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            preload: Vec::new(),
        }
    }
}

enum Job<T> {
    Command(T, Vec<Vec<u8>>),
    Subscribe(Vec<u8>),
    Unsubscribe(Vec<u8>),
    Stop,
}

/// What the link's thread and its users share.
struct Shared<T> {
    outbox: Mutex<Vec<Incoming<T>>>,
    /// The outbox was full and the thread stopped reading: a take must wake it.
    paused: AtomicBool,
    up: AtomicBool,
    notify: Wake,
}

impl<T> Shared<T> {
    fn outbox(&self) -> MutexGuard<'_, Vec<Incoming<T>>> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A process's link to Redis. See the [module](self).
pub struct Link<T: Send + 'static> {
    jobs: Mutex<Sender<Job<T>>>,
    waker: Arc<Waker>,
    shared: Arc<Shared<T>>,
    thread: Option<JoinHandle<()>>,
}

const WAKER: Token = Token(0);
const COMMANDS: Token = Token(1);
const SUBSCRIBER: Token = Token(2);

impl<T: Send + 'static> Link<T> {
    /// Starts the link's thread, which connects at once (and keeps trying);
    /// `notify` is called whenever there is something to [take](Link::take).
    pub fn start(config: LinkConfig, notify: Wake) -> io::Result<Link<T>> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (jobs, receiver) = mpsc::channel();
        let shared = Arc::new(Shared {
            outbox: Mutex::new(Vec::new()),
            paused: AtomicBool::new(false),
            up: AtomicBool::new(false),
            notify,
        });
        let driver = Driver::new(config, poll, receiver, Arc::clone(&shared));
        let thread = std::thread::Builder::new().name("redis".into()).spawn(move || driver.run())?;
        Ok(Link { jobs: Mutex::new(jobs), waker, shared, thread: Some(thread) })
    }

    /// Sends `command` (its name first); its reply comes back with `tag`.
    pub fn command(&self, tag: T, command: Vec<Vec<u8>>) {
        self.give(Job::Command(tag, command));
    }

    /// Subscribes to `channel` (confirmed by [`Incoming::Subscribed`]); a
    /// channel subscribed already is left as it is. The link subscribes
    /// again by itself after an outage.
    pub fn subscribe(&self, channel: &[u8]) {
        self.give(Job::Subscribe(channel.to_vec()));
    }

    /// No longer receives what is published on `channel`.
    pub fn unsubscribe(&self, channel: &[u8]) {
        self.give(Job::Unsubscribe(channel.to_vec()));
    }

    /// Moves what came back, oldest first, to the end of `into`.
    pub fn take(&self, into: &mut Vec<Incoming<T>>) {
        into.append(&mut self.shared.outbox());
        if self.shared.paused.swap(false, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
    }

    /// Whether both connections are up now.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    fn give(&self, job: Job<T>) {
        let sent = self.jobs.lock().unwrap_or_else(PoisonError::into_inner).send(job);
        if sent.is_ok() {
            let _ = self.waker.wake();
        }
    }
}

impl<T: Send + 'static> Remote<T> for Link<T> {
    fn command(&self, tag: T, command: Vec<Vec<u8>>) {
        Link::command(self, tag, command);
    }

    fn subscribe(&self, channel: &[u8]) {
        Link::subscribe(self, channel);
    }

    fn unsubscribe(&self, channel: &[u8]) {
        Link::unsubscribe(self, channel);
    }

    fn take(&self, into: &mut Vec<Incoming<T>>) {
        Link::take(self, into);
    }

    fn is_up(&self) -> bool {
        Link::is_up(self)
    }
}

impl<T: Send + 'static> Drop for Link<T> {
    fn drop(&mut self) {
        self.give(Job::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One of the two connections.
struct Socket<U> {
    stream: TcpStream,
    resp: Resp<U>,
    connected: bool,
}

/// What the command connection's replies answer.
enum Tag<T> {
    Caller(T),
    /// The `SELECT` sent on connecting.
    Select,
    /// A command of [`LinkConfig::preload`].
    Preload,
}

/// What the subscriber connection's replies answer.
enum SubTag {
    Subscribe(Vec<u8>),
    Unsubscribe,
}

enum State<T> {
    /// Waiting until `retry_at` to connect again.
    Down {
        retry_at: Instant,
    },
    /// Connecting, given up at `deadline`.
    Connecting {
        commands: Socket<Tag<T>>,
        subscriber: Socket<SubTag>,
        deadline: Instant,
    },
    Up {
        commands: Socket<Tag<T>>,
        subscriber: Socket<SubTag>,
    },
}

struct Driver<T> {
    config: LinkConfig,
    poll: Poll,
    jobs: Receiver<Job<T>>,
    shared: Arc<Shared<T>>,
    state: State<T>,
    /// The channels subscribed to (made again after an outage).
    channels: HashSet<Vec<u8>>,
    /// The next wait before connecting again.
    backoff: Duration,
    /// When the current outage began (`None` while up, and before the first connection).
    down_since: Option<Instant>,
    /// This outage was logged.
    warned: bool,
    /// Gathered during one turn, handed over at its end.
    pending: Vec<Incoming<T>>,
    buf: Box<[u8]>,
}

/// A turn's I/O failed: the link goes down.
struct Broken(String);

impl<T: Send + 'static> Driver<T> {
    fn new(config: LinkConfig, poll: Poll, jobs: Receiver<Job<T>>, shared: Arc<Shared<T>>) -> Driver<T> {
        let backoff = config.retry_min;
        Driver {
            config,
            poll,
            jobs,
            shared,
            state: State::Down { retry_at: Instant::now() },
            channels: HashSet::new(),
            backoff,
            down_since: None,
            warned: false,
            pending: Vec::new(),
            buf: vec![0; 64 << 10].into_boxed_slice(),
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(16);
        loop {
            let now = Instant::now();
            let timeout = match &self.state {
                State::Down { retry_at } => Some(retry_at.saturating_duration_since(now)),
                State::Connecting { deadline, .. } => Some(deadline.saturating_duration_since(now)),
                // Stopped reading for a full outbox: look again soon even if
                // the take's wake-up raced the pause.
                State::Up { .. } if self.shared.paused.load(Ordering::Acquire) => Some(Duration::from_millis(10)),
                State::Up { .. } => None,
            };
            if let Err(err) = self.poll.poll(&mut events, timeout)
                && err.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(%err, "redis: the link's poll failed; the link stops");
                self.fail("the link stopped".into());
                self.hand_over();
                return;
            }
            let mut io = false;
            for event in &events {
                io |= event.token() != WAKER;
            }
            if !self.take_jobs() {
                self.finish();
                return;
            }
            if (io || matches!(self.state, State::Up { .. }))
                && let Err(Broken(why)) = self.drive()
            {
                self.fail(why);
            }
            self.on_time(Instant::now());
            self.hand_over();
        }
    }

    /// The link is stopping: what was given to it before is written (for a
    /// second at most, so that a node's last `leave` events and releases
    /// reach Redis as it shuts down); replies are not waited for.
    fn finish(&mut self) {
        let State::Up { commands, .. } = &mut self.state else { return };
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut events = Events::with_capacity(4);
        while !commands.resp.output().is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            match commands.stream.write(commands.resp.output()) {
                Ok(0) => return,
                Ok(n) => commands.resp.written(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    let _ = self.poll.poll(&mut events, Some(deadline - now));
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Takes the jobs given; `false` when asked to stop (or every `Link` is gone).
    fn take_jobs(&mut self) -> bool {
        loop {
            match self.jobs.try_recv() {
                Ok(Job::Command(tag, command)) => self.command(tag, command),
                Ok(Job::Subscribe(channel)) => {
                    if self.channels.insert(channel.clone())
                        && let State::Up { subscriber, .. } = &mut self.state
                    {
                        subscribe(subscriber, channel);
                    }
                }
                Ok(Job::Unsubscribe(channel)) => {
                    if self.channels.remove(&channel)
                        && let State::Up { subscriber, .. } = &mut self.state
                    {
                        subscriber.resp.command(SubTag::Unsubscribe, &[b"UNSUBSCRIBE", &channel]);
                    }
                }
                Ok(Job::Stop) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn command(&mut self, tag: T, command: Vec<Vec<u8>>) {
        let State::Up { commands, .. } = &mut self.state else {
            self.pending.push(Incoming::Reply(tag, Err(RemoteError::Down)));
            return;
        };
        if commands.resp.waiting() >= self.config.max_waiting {
            self.pending.push(Incoming::Reply(tag, Err(RemoteError::Busy)));
            return;
        }
        let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
        commands.resp.command(Tag::Caller(tag), &args);
    }

    /// Writes what is queued and reads what came, on both connections.
    fn drive(&mut self) -> Result<(), Broken> {
        let room = self.config.max_outbox.saturating_sub(self.shared.outbox().len() + self.pending.len());
        let (commands, subscriber) = match &mut self.state {
            State::Connecting { commands, subscriber, .. } | State::Up { commands, subscriber } => {
                (commands, subscriber)
            }
            State::Down { .. } => return Ok(()),
        };
        let mut events = Vec::new();
        let mut paused = !pump(commands, &mut self.buf, room, &mut events)?;
        for event in events.drain(..) {
            match event {
                Event::Reply(Tag::Caller(tag), value) => {
                    if matches!(&value, Value::Error(why) if why.starts_with("NOSCRIPT")) {
                        preload(commands, &self.config.preload);
                    }
                    self.pending.push(Incoming::Reply(tag, Ok(value)));
                }
                Event::Reply(Tag::Preload, Value::Error(why)) => {
                    tracing::warn!(addr = %self.config.addr, "redis: a script did not load: {why}");
                }
                Event::Reply(Tag::Preload, _) => {}
                Event::Reply(Tag::Select, Value::Error(why)) => return Err(Broken(format!("SELECT failed: {why}"))),
                Event::Reply(Tag::Select, _) => self.backoff = self.config.retry_min,
                Event::Message { .. } => {}
            }
        }
        let mut events = Vec::new();
        paused |= !pump(subscriber, &mut self.buf, room, &mut events)?;
        if paused {
            // Reading stopped before the sockets were drained: a take wakes
            // the thread to go on (their readiness will not be signalled again).
            self.shared.paused.store(true, Ordering::Release);
        }
        for event in events {
            match event {
                Event::Message { channel, payload } => self.pending.push(Incoming::Message { channel, payload }),
                Event::Reply(SubTag::Subscribe(channel), Value::Error(why)) => {
                    return Err(Broken(format!("SUBSCRIBE {} failed: {why}", String::from_utf8_lossy(&channel))));
                }
                Event::Reply(SubTag::Subscribe(channel), _) => {
                    // A channel let go of before its confirmation came is not reported.
                    if self.channels.contains(&channel) {
                        self.pending.push(Incoming::Subscribed(channel));
                    }
                }
                Event::Reply(SubTag::Unsubscribe, _) => {}
            }
        }
        if let State::Connecting { commands, subscriber, .. } = &self.state
            && commands.connected
            && subscriber.connected
        {
            self.up();
            // What the new connections were given (SELECT, SUBSCRIBEs) goes out now.
            return self.drive();
        }
        Ok(())
    }

    fn up(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Down { retry_at: Instant::now() });
        let State::Connecting { commands, mut subscriber, .. } = state else {
            self.state = state;
            return;
        };
        for channel in &self.channels {
            subscribe(&mut subscriber, channel.clone());
        }
        self.state = State::Up { commands, subscriber };
        // (With a database to select, the backoff starts again once SELECT
        // answered: a wrong one must not make the link flap at full speed.)
        if self.config.db == 0 {
            self.backoff = self.config.retry_min;
        }
        self.shared.up.store(true, Ordering::Release);
        match self.down_since.take() {
            Some(since) if self.warned => {
                let secs = since.elapsed().as_secs_f64();
                tracing::info!(addr = %self.config.addr, "redis: reachable again after {secs:.1} s");
            }
            _ => tracing::info!(addr = %self.config.addr, "redis: connected"),
        }
        self.warned = false;
        self.pending.push(Incoming::Up);
    }

    /// The link goes down: every waiting command fails, and a new try is scheduled.
    fn fail(&mut self, why: String) {
        let now = Instant::now();
        let state = std::mem::replace(&mut self.state, State::Down { retry_at: now + self.backoff });
        let was_up = matches!(state, State::Up { .. });
        if let State::Connecting { mut commands, .. } | State::Up { mut commands, .. } = state {
            for tag in commands.resp.abandon() {
                if let Tag::Caller(tag) = tag {
                    self.pending.push(Incoming::Reply(tag, Err(RemoteError::Down)));
                }
            }
        }
        self.backoff = (self.backoff * 2).min(self.config.retry_max);
        self.shared.up.store(false, Ordering::Release);
        if was_up {
            self.pending.push(Incoming::Down);
        }
        if self.down_since.is_none() {
            self.down_since = Some(now);
        }
        if !self.warned {
            self.warned = true;
            tracing::warn!(addr = %self.config.addr, "redis: unavailable ({why}); messages are refused until it is back, retrying");
        }
    }

    fn on_time(&mut self, now: Instant) {
        match &self.state {
            State::Down { retry_at } if *retry_at <= now => {
                if let Err(Broken(why)) = self.connect(now) {
                    self.fail(why);
                }
            }
            State::Connecting { deadline, .. } if *deadline <= now => {
                self.fail(format!("no connection within {:?}", self.config.connect_timeout));
            }
            _ => {}
        }
    }

    fn connect(&mut self, now: Instant) -> Result<(), Broken> {
        let open = |token| -> Result<TcpStream, Broken> {
            let mut stream = TcpStream::connect(self.config.addr).map_err(|err| Broken(err.to_string()))?;
            let interest = Interest::READABLE | Interest::WRITABLE;
            self.poll.registry().register(&mut stream, token, interest).map_err(|err| Broken(err.to_string()))?;
            Ok(stream)
        };
        let mut commands = Socket { stream: open(COMMANDS)?, resp: Resp::new(self.config.max_reply), connected: false };
        let subscriber =
            Socket { stream: open(SUBSCRIBER)?, resp: Resp::new(self.config.max_reply).subscriber(), connected: false };
        if self.config.db != 0 {
            commands.resp.command(Tag::Select, &[b"SELECT", self.config.db.to_string().as_bytes()]);
        }
        preload(&mut commands, &self.config.preload);
        self.state = State::Connecting { commands, subscriber, deadline: now + self.config.connect_timeout };
        Ok(())
    }

    /// Hands what this turn gathered to the users, and wakes them once.
    fn hand_over(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let was_empty = {
            let mut outbox = self.shared.outbox();
            let was_empty = outbox.is_empty();
            outbox.append(&mut self.pending);
            was_empty
        };
        if was_empty {
            (self.shared.notify)();
        }
    }
}

/// Queues the preload commands (their replies are dropped).
fn preload<T>(commands: &mut Socket<Tag<T>>, preload: &[Vec<Vec<u8>>]) {
    for command in preload {
        let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
        commands.resp.command(Tag::Preload, &args);
    }
}

fn subscribe(subscriber: &mut Socket<SubTag>, channel: Vec<u8>) {
    subscriber.resp.command(SubTag::Subscribe(channel.clone()), &[b"SUBSCRIBE", &channel]);
}

/// One connection's I/O: finishes connecting, writes what is queued, reads
/// until the socket has no more or `room` events have come. Returns whether
/// the socket was drained.
fn pump<U>(socket: &mut Socket<U>, buf: &mut [u8], room: usize, events: &mut Vec<Event<U>>) -> Result<bool, Broken> {
    if !socket.connected {
        if let Ok(Some(err)) | Err(err) = socket.stream.take_error() {
            return Err(Broken(err.to_string()));
        }
        match socket.stream.peer_addr() {
            Ok(_) => {
                socket.connected = true;
                let _ = socket.stream.set_nodelay(true);
            }
            Err(err) if err.kind() == io::ErrorKind::NotConnected => return Ok(true),
            Err(err) => return Err(Broken(err.to_string())),
        }
    }
    while !socket.resp.output().is_empty() {
        match socket.stream.write(socket.resp.output()) {
            Ok(0) => return Err(Broken("redis closed the connection".into())),
            Ok(n) => socket.resp.written(n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Broken(err.to_string())),
        }
    }
    loop {
        if events.len() >= room {
            return Ok(false);
        }
        match socket.stream.read(buf) {
            Ok(0) => return Err(Broken("redis closed the connection".into())),
            Ok(n) => {
                let bytes = buf.get(..n).unwrap_or_default();
                socket.resp.feed(bytes, events).map_err(|err| Broken(err.to_string()))?;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Broken(err.to_string())),
        }
    }
}
