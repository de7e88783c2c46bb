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
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let start = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(RedisServer { child, addr, dir })
    }

    /// Stops it (SHUTDOWN, so the append-only file is complete) and starts it again on the same files.
    fn restart(mut self) -> RedisServer {
        let mut conn = Conn::connect(self.addr, false);
        conn.resp.command(0, &[b"SHUTDOWN"]);
        conn.flush();
        let _ = self.child.wait();
        let dir = self.dir.clone();
        std::mem::forget(self);
        RedisServer::start(Some(dir)).unwrap()
    }
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
