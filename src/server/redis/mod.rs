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
//!
//! [`RemoteError::Down`]: crate::broker::RemoteError::Down
//! [`RemoteError::Busy`]: crate::broker::RemoteError::Busy

mod driver;
mod socket;

use crate::broker::{Incoming, Remote, Wake};
use driver::Driver;
use mio::{Poll, Token, Waker};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

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
