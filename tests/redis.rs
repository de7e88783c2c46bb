//! The Redis side of rooms across nodes (issue 14), against a real
//! `redis-server` started on a free port: the publishing script numbers a
//! topic's messages without gaps however many connections publish at once,
//! every subscriber receives them in that order, history reads back what
//! was kept (and says when some is gone), and it all survives a restart of
//! Redis with its append-only file on. `.ci/run` installs `redis-server`;
//! elsewhere the tests skip loudly when it is missing (and fail under CI).

use rust_chat::broker::redis::{self, Since, TopicKeys};
use rust_chat::broker::resp::{Event, Resp, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of our own, stopped on drop.
struct RedisServer {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts one (with its append-only file in `dir`), or `None` outside CI when there is none.
    fn start(dir: Option<PathBuf>) -> Option<RedisServer> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "redis-server is missing under CI (.ci/run installs it)");
            eprintln!("\n*** SKIPPED redis test: apt-get install redis-server ***\n");
            return None;
        }
        let dir = dir.unwrap_or_else(|| {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("rust-chat-redis-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        Some(RedisServer { child: spawn(addr, &dir), addr, dir })
    }

    /// Stops it (SHUTDOWN, so the append-only file is complete) and starts it again on the same files.
    fn restart(mut self) -> RedisServer {
        self.stop();
        self.child = spawn(self.addr, &self.dir);
        self
    }

    /// Stops it as an operator would (SHUTDOWN: the append-only file is complete).
    fn stop(&mut self) {
        let mut conn = Conn::connect(self.addr, false);
        conn.resp.command(0, &[b"SHUTDOWN"]);
        conn.flush();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and files (after [`stop`](Self::stop)).
    fn start_again(&mut self) {
        self.child = spawn(self.addr, &self.dir);
    }
}

/// Starts `redis-server` on `addr` with its append-only file in `dir`, and waits until it answers.
fn spawn(addr: SocketAddr, dir: &std::path::Path) -> Child {
    let port = addr.port().to_string();
    let child = Command::new("redis-server")
        .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking driver for the sans-IO connection (the test's, not the server's).
struct Conn {
    stream: TcpStream,
    resp: Resp<u64>,
    events: Vec<Event<u64>>,
}

impl Conn {
    fn connect(addr: SocketAddr, subscriber: bool) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let resp = Resp::new(16 << 20);
        let resp = if subscriber { resp.subscriber() } else { resp };
        Conn { stream, resp, events: Vec::new() }
    }

    fn flush(&mut self) {
        let out = self.resp.output().to_vec();
        self.stream.write_all(&out).unwrap();
        self.resp.written(out.len());
    }

    /// Reads until `n` events have arrived; returns them.
    fn events(&mut self, n: usize) -> Vec<Event<u64>> {
        self.flush();
        let mut buf = [0u8; 65536];
        while self.events.len() < n {
            let got = self.stream.read(&mut buf).unwrap();
            assert!(got > 0, "redis closed the connection");
            self.resp.feed(&buf[..got], &mut self.events).unwrap();
        }
        self.events.drain(..n).collect()
    }

    fn reply(&mut self) -> Value {
        match self.events(1).pop() {
            Some(Event::Reply(_, value)) => value,
            other => panic!("not a reply: {other:?}"),
        }
    }
}

fn subscribe(addr: SocketAddr, topic: &TopicKeys) -> Conn {
    let mut sub = Conn::connect(addr, true);
    sub.resp.command(0, &[b"SUBSCRIBE", topic.channel.as_bytes()]);
    assert!(matches!(sub.reply(), Value::Array(_)), "subscribed");
    sub
}

#[test]
fn concurrent_publishers_get_one_gapless_order_that_every_subscriber_sees() {
    let Some(server) = RedisServer::start(None) else { return };
    let room = TopicKeys::of("lobby");
    let mut subscribers = [subscribe(server.addr, &room), subscribe(server.addr, &room)];
    const EACH: u64 = 200;
    // Three publishers, pipelined, at once: the script runs one at a time.
    let publishers: Vec<_> = (0..3u64)
        .map(|p| {
            let (addr, room) = (server.addr, room.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::connect(addr, false);
                for i in 0..EACH {
                    redis::publish(&mut conn.resp, i, &room, format!("p{p} m{i}").as_bytes(), 1000);
                }
                let replies = conn.events(EACH as usize);
                replies
                    .into_iter()
                    .map(|event| match event {
                        Event::Reply(_, value) => redis::published(&value).unwrap(),
                        other => panic!("{other:?}"),
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acknowledged: Vec<u64> = Vec::new();
    let mut epochs = std::collections::HashSet::new();
    for publisher in publishers {
        for published in publisher.join().unwrap() {
            acknowledged.push(published.seq);
            epochs.insert(published.epoch);
        }
    }
    acknowledged.sort_unstable();
    assert_eq!(acknowledged, (1..=3 * EACH).collect::<Vec<_>>(), "every number once, no gap");
    assert_eq!(epochs.len(), 1, "one life of the topic");
    let mut orders = Vec::new();
    for sub in &mut subscribers {
        let order: Vec<(u64, Vec<u8>)> = sub
            .events(3 * EACH as usize)
            .into_iter()
            .map(|event| match event {
                Event::Message { payload, .. } => {
                    let got = redis::received(&payload).unwrap();
                    assert!(epochs.contains(got.epoch));
                    (got.seq, got.payload.to_vec())
                }
                other => panic!("{other:?}"),
            })
            .collect();
        let seqs: Vec<u64> = order.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=3 * EACH).collect::<Vec<_>>(), "delivered in number order");
        orders.push(order);
    }
    assert_eq!(orders[0], orders[1], "both subscribers saw the same messages in the same order");
}

#[test]
fn history_survives_a_restart_and_says_when_some_is_gone() {
    let Some(server) = RedisServer::start(None) else { return };
    let room = TopicKeys::of("den");
    let mut conn = Conn::connect(server.addr, false);
    for i in 1..=5 {
        redis::publish(&mut conn.resp, i, &room, format!("m{i}").as_bytes(), 1000);
    }
    let epoch = match conn.events(5).pop() {
        Some(Event::Reply(_, value)) => redis::published(&value).unwrap().epoch,
        other => panic!("{other:?}"),
    };
    drop(conn);
    let server = server.restart();
    let mut conn = Conn::connect(server.addr, false);

    redis::history(&mut conn.resp, 0, &room, Since::After(2), 100);
    let kept = redis::kept(&conn.reply()).unwrap();
    assert_eq!(kept.epoch.as_deref(), Some(epoch.as_str()), "the same life after the restart");
    assert_eq!(kept.last, 5);
    assert!(kept.complete);
    assert_eq!(kept.messages, (3..=5).map(|i| (i, format!("m{i}").into_bytes())).collect::<Vec<_>>());

    redis::history(&mut conn.resp, 0, &room, Since::Last, 2);
    let last_two = redis::kept(&conn.reply()).unwrap();
    assert_eq!(last_two.messages.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [4, 5]);

    // The numbers go on where they were.
    redis::publish(&mut conn.resp, 0, &room, b"m6", 1000);
    assert_eq!(redis::published(&conn.reply()).unwrap().seq, 6);

    // Trimmed (an exact trim, to be sure of what is gone): asking from 0 is partial.
    conn.resp.command(0, &[b"XTRIM", room.log.as_bytes(), b"MAXLEN", b"2"]);
    conn.reply();
    redis::history(&mut conn.resp, 0, &room, Since::After(0), 100);
    let partial = redis::kept(&conn.reply()).unwrap();
    assert!(!partial.complete, "1 to 4 are gone");
    assert_eq!(partial.messages.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [5, 6]);

    // A topic whose keys were lost starts a new life: a new epoch, numbers from 1.
    conn.resp.command(0, &[b"DEL", room.epoch.as_bytes()]);
    conn.reply();
    redis::publish(&mut conn.resp, 0, &room, b"again", 1000);
    let reborn = redis::published(&conn.reply()).unwrap();
    assert_eq!(reborn.seq, 1);
    assert_ne!(reborn.epoch, epoch);
}

#[test]
fn a_redis_error_is_a_failure_not_a_number() {
    let Some(server) = RedisServer::start(None) else { return };
    let room = TopicKeys::of("x");
    let mut conn = Conn::connect(server.addr, false);
    // The seq key holds something INCR cannot count: the script fails, and so does the publish.
    redis::publish(&mut conn.resp, 0, &room, b"first", 10);
    conn.reply();
    conn.resp.command(0, &[b"SET", room.seq.as_bytes(), b"not a number"]);
    conn.reply();
    redis::publish(&mut conn.resp, 0, &room, b"second", 10);
    assert!(matches!(redis::published(&conn.reply()), Err(redis::Failed::Redis(_))));
}

// The link: a process's Redis connections on a thread of their own.

use rust_chat::broker::link::{Incoming, Link, LinkConfig, LinkError};
use std::sync::mpsc;

/// A link whose wakes are counted on a channel, and what it handed back so far.
struct Node {
    link: Link<u64>,
    woken: mpsc::Receiver<()>,
    got: Vec<Incoming<u64>>,
}

impl Node {
    fn start(addr: SocketAddr) -> Node {
        Node::with(LinkConfig::new(addr))
    }

    fn with(config: LinkConfig) -> Node {
        let (tx, woken) = mpsc::channel();
        let link = Link::start(
            config,
            Box::new(move || {
                let _ = tx.send(());
            }),
        )
        .unwrap();
        Node { link, woken, got: Vec::new() }
    }

    /// Waits (at most `within`) until what came back satisfies `done`.
    fn wait(&mut self, what: &str, within: Duration, done: impl Fn(&Node) -> bool) {
        let start = Instant::now();
        loop {
            self.link.take(&mut self.got);
            if done(self) {
                return;
            }
            let left = within.checked_sub(start.elapsed()).unwrap_or_else(|| panic!("timed out waiting for {what}"));
            let _ = self.woken.recv_timeout(left.min(Duration::from_millis(100)));
        }
    }

    fn has(&self, incoming: &Incoming<u64>) -> bool {
        self.got.contains(incoming)
    }

    fn subscribed(&self, channel: &str) -> bool {
        self.has(&Incoming::Subscribed(channel.as_bytes().to_vec()))
    }

    fn messages(&self, channel: &str) -> Vec<(u64, Vec<u8>)> {
        self.got
            .iter()
            .filter_map(|incoming| match incoming {
                Incoming::Message { channel: on, payload } if on == channel.as_bytes() => {
                    let got = redis::received(payload).unwrap();
                    Some((got.seq, got.payload.to_vec()))
                }
                _ => None,
            })
            .collect()
    }

    fn replies(&self) -> Vec<(u64, Result<Value, LinkError>)> {
        self.got
            .iter()
            .filter_map(|incoming| match incoming {
                Incoming::Reply(tag, result) => Some((*tag, result.clone())),
                _ => None,
            })
            .collect()
    }
}

const PATIENCE: Duration = Duration::from_secs(10);

#[test]
fn two_links_publishing_at_once_see_one_order_with_contiguous_numbers() {
    let Some(server) = RedisServer::start(None) else { return };
    let room = TopicKeys::of("lobby");
    let mut nodes = [Node::start(server.addr), Node::start(server.addr)];
    for node in &mut nodes {
        node.link.subscribe(room.channel.as_bytes());
        node.wait("subscribed", PATIENCE, |n| n.has(&Incoming::Up) && n.subscribed(&room.channel));
    }
    const EACH: u64 = 300;
    for i in 0..EACH {
        for (n, node) in nodes.iter().enumerate() {
            node.link.command(i, redis::publish_command(&room, format!("n{n} m{i}").as_bytes(), 1000));
        }
    }
    let mut acknowledged = Vec::new();
    for (n, node) in nodes.iter_mut().enumerate() {
        let channel = room.channel.clone();
        node.wait("every reply and message", PATIENCE, |node| {
            node.replies().len() == EACH as usize && node.messages(&channel).len() == 2 * EACH as usize
        });
        let replies = node.replies();
        assert_eq!(replies.iter().map(|(tag, _)| *tag).collect::<Vec<_>>(), (0..EACH).collect::<Vec<_>>());
        for (i, (_, reply)) in replies.iter().enumerate() {
            let seq = redis::published(reply.as_ref().unwrap()).unwrap().seq;
            acknowledged.push((seq, format!("n{n} m{i}").into_bytes()));
        }
    }
    acknowledged.sort();
    assert_eq!(acknowledged.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), (1..=2 * EACH).collect::<Vec<_>>());
    let order = nodes[0].messages(&room.channel);
    assert_eq!(order, acknowledged, "delivered in number order, each with the number its publisher was told");
    assert_eq!(nodes[1].messages(&room.channel), order, "both links, one order");
}

#[test]
fn while_redis_is_down_commands_fail_and_the_link_comes_back_by_itself_and_resubscribes() {
    let Some(mut server) = RedisServer::start(None) else { return };
    let room = TopicKeys::of("den");
    let mut node = Node::start(server.addr);
    node.link.subscribe(room.channel.as_bytes());
    node.wait("subscribed", PATIENCE, |n| n.subscribed(&room.channel));
    for i in 1..=3 {
        node.link.command(i, redis::publish_command(&room, format!("before {i}").as_bytes(), 1000));
    }
    node.wait("3 replies", PATIENCE, |n| n.replies().len() == 3);
    assert!(node.link.is_up());

    server.stop();
    node.wait("down", PATIENCE, |n| n.has(&Incoming::Down));
    assert!(!node.link.is_up());
    node.got.clear();
    // Five seconds without Redis: every publish is refused at once, none is lost in silence.
    let outage = Instant::now();
    let mut tag = 100;
    while outage.elapsed() < Duration::from_secs(5) {
        tag += 1;
        node.link.command(tag, redis::publish_command(&room, b"during", 1000));
        node.wait("a refusal", PATIENCE, |n| n.replies().iter().any(|(t, _)| *t == tag));
        assert_eq!(node.replies().last(), Some(&(tag, Err(LinkError::Down))));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(node.replies().len() >= 15);

    server.start_again();
    let back = Instant::now();
    node.wait("up again and subscribed", PATIENCE, |n| n.has(&Incoming::Up) && n.subscribed(&room.channel));
    assert!(back.elapsed() < Duration::from_secs(5), "back {:?} after Redis", back.elapsed());
    assert_eq!(node.got.iter().filter(|i| **i == Incoming::Down).count(), 0, "one outage, one Down");

    // Service goes on where it was: the numbers follow the three acknowledged ones, and
    // the resubscribed channel delivers.
    node.got.clear();
    node.link.command(1000, redis::publish_command(&room, b"after", 1000));
    node.wait("the message", PATIENCE, |n| !n.messages(&room.channel).is_empty() && !n.replies().is_empty());
    assert_eq!(redis::published(node.replies()[0].1.as_ref().unwrap()).unwrap().seq, 4);
    assert_eq!(node.messages(&room.channel), vec![(4, b"after".to_vec())]);
    let mut conn = Conn::connect(server.addr, false);
    redis::history(&mut conn.resp, 0, &room, Since::After(0), 100);
    let kept = redis::kept(&conn.reply()).unwrap();
    let texts: Vec<Vec<u8>> = kept.messages.into_iter().map(|(_, m)| m).collect();
    assert_eq!(texts, [&b"before 1"[..], b"before 2", b"before 3", b"after"], "every acknowledged message, in order");
}

#[test]
fn a_link_that_starts_before_redis_connects_when_it_comes() {
    let Some(mut server) = RedisServer::start(None) else { return };
    server.stop();
    let mut node = Node::start(server.addr);
    node.link.command(1, vec![b"PING".to_vec()]);
    node.wait("a refusal", PATIENCE, |n| !n.replies().is_empty());
    assert_eq!(node.replies(), vec![(1, Err(LinkError::Down))]);
    assert!(!node.has(&Incoming::Down), "never up: no outage to report");
    server.start_again();
    node.wait("up", PATIENCE, |n| n.has(&Incoming::Up));
    node.link.command(2, vec![b"PING".to_vec()]);
    node.wait("PONG", PATIENCE, |n| n.replies().len() == 2);
    assert_eq!(node.replies()[1], (2, Ok(Value::SimpleString(b"PONG".to_vec()))));
}

#[test]
fn commands_past_the_bound_on_waiting_ones_are_answered_busy_at_once() {
    let Some(server) = RedisServer::start(None) else { return };
    let mut node = Node::with(LinkConfig { max_waiting: 3, ..LinkConfig::new(server.addr) });
    node.wait("up", PATIENCE, |n| n.has(&Incoming::Up));
    // BLPOP on an empty list holds the connection's replies for a second.
    node.link.command(0, [&b"BLPOP"[..], b"nothing", b"1"].map(<[u8]>::to_vec).to_vec());
    for tag in 1..=5 {
        node.link.command(tag, vec![b"PING".to_vec()]);
    }
    node.wait("three refusals", PATIENCE, |n| n.replies().len() == 3);
    assert_eq!(node.replies(), (3..=5).map(|tag| (tag, Err(LinkError::Busy))).collect::<Vec<_>>());
    node.wait("the rest", PATIENCE, |n| n.replies().len() == 6);
    let answered: Vec<u64> = node.replies()[3..].iter().map(|(tag, _)| *tag).collect();
    assert_eq!(answered, [0, 1, 2], "the ones within the bound, in order");
    assert!(node.replies()[3..].iter().all(|(_, reply)| reply.is_ok()));
}

#[test]
fn a_link_whose_outbox_is_full_stops_reading_and_loses_nothing() {
    let Some(server) = RedisServer::start(None) else { return };
    let room = TopicKeys::of("big");
    let mut node = Node::with(LinkConfig { max_outbox: 10, ..LinkConfig::new(server.addr) });
    node.link.subscribe(room.channel.as_bytes());
    node.wait("subscribed", PATIENCE, |n| n.subscribed(&room.channel));
    node.got.clear();
    let mut conn = Conn::connect(server.addr, false);
    const COUNT: usize = 1000;
    let payload = vec![b'x'; 1000];
    for i in 0..COUNT {
        redis::publish(&mut conn.resp, i as u64, &room, &payload, 10_000);
    }
    conn.events(COUNT);
    std::thread::sleep(Duration::from_millis(300));
    let mut first = Vec::new();
    node.link.take(&mut first);
    // One read of the link's buffer (64 KiB) holds at most about 65 of these.
    assert!((1..100).contains(&first.len()), "{} taken while paused", first.len());
    node.got = first;
    node.wait("every message", PATIENCE, |n| n.messages(&room.channel).len() == COUNT);
    let seqs: Vec<u64> = node.messages(&room.channel).iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=COUNT as u64).collect::<Vec<_>>());
}
