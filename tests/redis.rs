//! The Redis side of rooms across nodes (issue 14), against a real
//! `redis-server` started on a free port: the publishing script numbers a
//! topic's messages without gaps however many connections publish at once,
//! every subscriber receives them in that order, history reads back what
//! was kept (and says when some is gone), and it all survives a restart of
//! Redis with its append-only file on. `.ci/run` installs `redis-server`;
//! elsewhere the tests skip loudly when it is missing (and fail under CI).

mod common;

use common::redis::{Conn, RedisServer};
use rust_chat::broker::redis::{self, Since, TopicKeys};
use rust_chat::broker::resp::{Event, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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

    redis::history(&mut conn.resp, 0, &room, Since::After { seq: 2, epoch: &epoch }, 100);
    let kept = redis::kept(&conn.reply()).unwrap();
    assert_eq!(kept.epoch, epoch, "the same life after the restart");
    assert!(kept.resumed);
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
    redis::history(&mut conn.resp, 0, &room, Since::After { seq: 0, epoch: &epoch }, 100);
    let partial = redis::kept(&conn.reply()).unwrap();
    assert!(!partial.complete, "1 to 4 are gone");
    assert!(partial.resumed);

    // Another life's number, or more missed than asked for: the last ones instead.
    redis::history(&mut conn.resp, 0, &room, Since::After { seq: 5, epoch: "other" }, 100);
    let other = redis::kept(&conn.reply()).unwrap();
    assert!(!other.resumed);
    assert_eq!(other.messages.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [5, 6]);
    redis::history(&mut conn.resp, 0, &room, Since::After { seq: 1, epoch: &epoch }, 3);
    let too_many = redis::kept(&conn.reply()).unwrap();
    assert!(!too_many.resumed, "5 came after 1: more than 3");
    assert_eq!(too_many.messages.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [5, 6], "of the last 3, 4 is gone");
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

use rust_chat::broker::{Incoming, RemoteError};
use rust_chat::server::redis::{Link, LinkConfig};
use std::sync::mpsc;

/// A link whose wakes are counted on a channel, and what it handed back so far.
struct Node {
    link: Link<u64>,
    woken: mpsc::Receiver<()>,
    got: Vec<Incoming<u64>>,
}

impl Node {
    fn start(addr: SocketAddr) -> Node {
        Node::with(LinkConfig { preload: redis::script_loads(), ..LinkConfig::new(addr) })
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

    fn replies(&self) -> Vec<(u64, Result<Value, RemoteError>)> {
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
        assert_eq!(node.replies().last(), Some(&(tag, Err(RemoteError::Down))));
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
    redis::history(&mut conn.resp, 0, &room, Since::Last, 100);
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
    assert_eq!(node.replies(), vec![(1, Err(RemoteError::Down))]);
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
    assert_eq!(node.replies(), (3..=5).map(|tag| (tag, Err(RemoteError::Busy))).collect::<Vec<_>>());
    node.wait("the rest", PATIENCE, |n| n.replies().len() == 6);
    let answered: Vec<u64> = node.replies()[3..].iter().map(|(tag, _)| *tag).collect();
    assert_eq!(answered, [0, 1, 2], "the ones within the bound, in order");
    assert!(node.replies()[3..].iter().all(|(_, reply)| reply.is_ok()));
}

#[test]
fn a_link_whose_outbox_is_full_stops_reading_and_loses_nothing() {
    let Some(server) = RedisServer::start(None) else { return };
    let room = TopicKeys::of("big");
    let mut node =
        Node::with(LinkConfig { max_outbox: 10, preload: redis::script_loads(), ..LinkConfig::new(server.addr) });
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

#[test]
fn a_link_loads_its_scripts_again_when_redis_forgot_them() {
    let Some(server) = RedisServer::start(None) else { return };
    let room = TopicKeys::of("den");
    let mut node = Node::start(server.addr);
    node.wait("up", PATIENCE, |n| n.has(&Incoming::Up));
    node.link.command(1, redis::publish_command(&room, b"one", 100));
    node.wait("a reply", PATIENCE, |n| n.replies().len() == 1);
    assert_eq!(redis::published(node.replies()[0].1.as_ref().unwrap()).unwrap().seq, 1, "by SHA1, preloaded");
    // An operator flushes the script cache: the next call fails (and is
    // refused to its caller), and the link loads the scripts again.
    assert_eq!(server.command(&[b"SCRIPT", b"FLUSH"]), Value::SimpleString(b"OK".to_vec()));
    node.link.command(2, redis::publish_command(&room, b"two", 100));
    node.wait("a reply", PATIENCE, |n| n.replies().len() == 2);
    assert!(matches!(&node.replies()[1].1, Ok(Value::Error(why)) if why.starts_with("NOSCRIPT")));
    node.link.command(3, redis::publish_command(&room, b"three", 100));
    node.wait("a reply", PATIENCE, |n| n.replies().len() == 3);
    assert_eq!(
        redis::published(node.replies()[2].1.as_ref().unwrap()).unwrap().seq,
        2,
        "loaded again; 'two' was not published"
    );
}
