//! The link's thread: its connection state machine (down, connecting, up,
//! and down again with a backoff), the jobs it is given, and the routing of
//! each connection's replies back to the link's users.

use super::socket::{Broken, Socket, SubTag, Tag, preload, pump, subscribe};
use super::{COMMANDS, Job, LinkConfig, SUBSCRIBER, Shared, WAKER};
use crate::broker::resp::{Event, Resp, Value};
use crate::broker::{Incoming, RemoteError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll};
use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

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

pub(super) struct Driver<T> {
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

impl<T: Send + 'static> Driver<T> {
    pub(super) fn new(config: LinkConfig, poll: Poll, jobs: Receiver<Job<T>>, shared: Arc<Shared<T>>) -> Driver<T> {
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

    pub(super) fn run(mut self) {
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
