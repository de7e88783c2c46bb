//! One broker test suite, two implementations: what a topic's order
//! promises — one order for every subscriber, numbers 1, 2, 3, … without a
//! gap, the number a publisher is told being the one delivered, a
//! subscription that gets everything published after it is made, and a
//! history that gives exactly what came after a number (or says it cannot)
//! — checked against the in-process `LocalBroker` and against Redis (the
//! publishing and history scripts through the server's `Link`, on a real
//! `redis-server`; skipped loudly without one, failing under CI).

mod common;

use common::redis::RedisServer;
use rust_chat::broker::redis::{self, Since, TopicKeys};
use rust_chat::broker::{Broker, Delivery, History, Incoming, LocalBroker};
use rust_chat::server::redis::{Link, LinkConfig};
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One delivery: topic, number, payload.
type Got = (String, u64, Vec<u8>);

/// What the suite needs of a broker: blocking, so that the tests read the same for both.
trait Topics: Send + Sync {
    /// Publishes `payload` on `topic`; its number.
    fn publish(&self, topic: &str, payload: &[u8]) -> u64;
    /// Subscriber `who` receives what is published on `topic` from when this returns.
    fn subscribe(&self, who: usize, topic: &str);
    /// Waits (a few seconds at most) until `who` has `n` deliveries; returns (topic, seq, payload) in order.
    fn received(&self, who: usize, n: usize) -> Vec<Got>;
    /// What `topic` kept after `since`: `(complete, messages)`.
    fn history(&self, topic: &str, since: u64) -> (bool, Vec<(u64, Vec<u8>)>);
}

const PATIENCE: Duration = Duration::from_secs(10);

/// The in-process broker, three subscribers, each topic keeping 1,000.
struct Local {
    broker: LocalBroker<Vec<u8>>,
    got: Mutex<Vec<Vec<Got>>>,
}

impl Local {
    fn new() -> Local {
        Local { broker: LocalBroker::new(3, 1000), got: Mutex::new(vec![Vec::new(); 3]) }
    }
}

impl Topics for Local {
    fn publish(&self, topic: &str, payload: &[u8]) -> u64 {
        self.broker.publish(topic, payload.to_vec())
    }

    fn subscribe(&self, who: usize, topic: &str) {
        self.broker.subscribe(who, topic);
    }

    fn received(&self, who: usize, n: usize) -> Vec<Got> {
        let mut taken = Vec::new();
        self.broker.take(who, &mut taken);
        let mut got = self.got.lock().unwrap();
        got[who].extend(taken.into_iter().filter_map(|delivery| match delivery {
            Delivery::Published { topic, seq, message } => Some((topic.to_string(), seq, message)),
            Delivery::Direct(_) => None,
        }));
        assert!(got[who].len() >= n, "subscriber {who} has {} of {n}", got[who].len());
        got[who].drain(..n).collect()
    }

    fn history(&self, topic: &str, since: u64) -> (bool, Vec<(u64, Vec<u8>)>) {
        match self.broker.history(topic, since) {
            History::Complete(messages) => (true, messages),
            History::Partial(messages) => (false, messages),
        }
    }
}

/// Redis: a link per subscriber (a node each), one more to publish and read history.
struct Redis {
    _server: RedisServer,
    publisher: Node,
    subscribers: Vec<Node>,
    /// The epoch of each topic, as its publishes said.
    epochs: Mutex<HashMap<String, String>>,
}

struct Node {
    link: Link<u64>,
    woken: Mutex<mpsc::Receiver<()>>,
    got: Mutex<Vec<Incoming<u64>>>,
    next_tag: std::sync::atomic::AtomicU64,
}

impl Node {
    fn start(server: &RedisServer) -> Node {
        let (tx, woken) = mpsc::channel();
        let wake = Box::new(move || {
            let _ = tx.send(());
        });
        let link =
            Link::start(LinkConfig { preload: redis::script_loads(), ..LinkConfig::new(server.addr) }, wake).unwrap();
        let node = Node { link, woken: Mutex::new(woken), got: Mutex::new(Vec::new()), next_tag: 0.into() };
        node.wait("the link up", |got| {
            let at = got.iter().position(|i| *i == Incoming::Up)?;
            got.remove(at);
            Some(())
        });
        node
    }

    /// Waits until what came back has something `pick` takes; removes and returns it.
    fn wait<T>(&self, what: &str, mut pick: impl FnMut(&mut Vec<Incoming<u64>>) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            {
                let mut got = self.got.lock().unwrap();
                self.link.take(&mut got);
                if let Some(found) = pick(&mut got) {
                    return found;
                }
            }
            assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
            let _ = self.woken.lock().unwrap().recv_timeout(Duration::from_millis(50));
        }
    }

    /// Sends `command` and waits for its reply.
    fn call(&self, command: Vec<Vec<u8>>) -> rust_chat::broker::resp::Value {
        let tag = self.next_tag.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.link.command(tag, command);
        self.wait("a reply", |got| {
            let at = got.iter().position(|i| matches!(i, Incoming::Reply(t, _) if *t == tag))?;
            match got.remove(at) {
                Incoming::Reply(_, reply) => Some(reply.expect("redis is up")),
                _ => None,
            }
        })
    }
}

impl Redis {
    fn start() -> Option<Redis> {
        let server = RedisServer::start(None)?;
        let publisher = Node::start(&server);
        let subscribers = (0..3).map(|_| Node::start(&server)).collect();
        Some(Redis { _server: server, publisher, subscribers, epochs: Mutex::new(HashMap::new()) })
    }
}

impl Topics for Redis {
    fn publish(&self, topic: &str, payload: &[u8]) -> u64 {
        let reply = self.publisher.call(redis::publish_command(&TopicKeys::of(topic), payload, 1000));
        let published = redis::published(&reply).unwrap();
        self.epochs.lock().unwrap().insert(topic.to_string(), published.epoch);
        published.seq
    }

    fn subscribe(&self, who: usize, topic: &str) {
        let channel = TopicKeys::of(topic).channel.into_bytes();
        let node = &self.subscribers[who];
        node.link.subscribe(&channel);
        node.wait("the subscription", |got| {
            let at = got.iter().position(|i| *i == Incoming::Subscribed(channel.clone()))?;
            got.remove(at);
            Some(())
        });
    }

    fn received(&self, who: usize, n: usize) -> Vec<Got> {
        let node = &self.subscribers[who];
        let messages = node.wait("the messages", |got| {
            let count = got.iter().filter(|i| matches!(i, Incoming::Message { .. })).count();
            (count >= n).then(|| {
                let mut out = Vec::new();
                got.retain(|incoming| match incoming {
                    Incoming::Message { channel, payload } if out.len() < n => {
                        out.push((channel.clone(), payload.clone()));
                        false
                    }
                    _ => true,
                });
                out
            })
        });
        messages
            .into_iter()
            .map(|(channel, payload)| {
                let got = redis::received(&payload).unwrap();
                // rc:{TOPIC}:msg
                let topic = String::from_utf8(channel).unwrap();
                let topic = topic.trim_start_matches("rc:{").trim_end_matches("}:msg").to_string();
                (topic, got.seq, got.payload.to_vec())
            })
            .collect()
    }

    fn history(&self, topic: &str, since: u64) -> (bool, Vec<(u64, Vec<u8>)>) {
        let epoch = self.epochs.lock().unwrap().get(topic).cloned().unwrap_or_default();
        let command = redis::history_command(&TopicKeys::of(topic), Since::After { seq: since, epoch: &epoch }, 1000);
        let kept = redis::kept(&self.publisher.call(command)).unwrap();
        (kept.resumed && kept.complete, kept.messages)
    }
}

// The suite.

fn publishers_at_once_make_one_order_with_contiguous_numbers(topics: Arc<dyn Topics>) {
    for who in 0..3 {
        topics.subscribe(who, "room");
    }
    const EACH: usize = 150;
    let threads: Vec<_> = (0..3)
        .map(|p| {
            let topics = Arc::clone(&topics);
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|i| {
                        let payload = format!("p{p} m{i}").into_bytes();
                        (topics.publish("room", &payload), payload)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut told: Vec<(u64, Vec<u8>)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    told.sort();
    assert_eq!(told.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), (1..=3 * EACH as u64).collect::<Vec<_>>());
    let first = topics.received(0, 3 * EACH);
    let delivered: Vec<(u64, Vec<u8>)> = first.iter().map(|(_, seq, payload)| (*seq, payload.clone())).collect();
    assert_eq!(delivered, told, "delivered in number order, with the numbers the publishers were told");
    for who in 1..3 {
        assert_eq!(topics.received(who, 3 * EACH), first, "subscriber {who}: the same order");
    }
}

fn a_subscription_gets_exactly_what_comes_after_it(topics: Arc<dyn Topics>) {
    topics.subscribe(0, "den");
    for i in 1..=5 {
        assert_eq!(topics.publish("den", format!("m{i}").as_bytes()), i);
    }
    topics.subscribe(1, "den");
    for i in 6..=8 {
        topics.publish("den", format!("m{i}").as_bytes());
    }
    let seqs = |got: Vec<Got>| got.into_iter().map(|(_, seq, _)| seq).collect::<Vec<_>>();
    assert_eq!(seqs(topics.received(0, 8)), (1..=8).collect::<Vec<_>>());
    assert_eq!(seqs(topics.received(1, 3)), [6, 7, 8], "from its subscription on, nothing before");
    // Topics do not mix: another topic's numbers are its own.
    topics.subscribe(2, "attic");
    assert_eq!(topics.publish("attic", b"a1"), 1);
    assert_eq!(topics.received(2, 1), vec![("attic".to_string(), 1, b"a1".to_vec())]);
}

fn history_gives_exactly_what_came_after_a_number(topics: Arc<dyn Topics>) {
    topics.subscribe(0, "log");
    for i in 1..=5 {
        topics.publish("log", format!("m{i}").as_bytes());
    }
    let kept =
        |range: std::ops::RangeInclusive<u64>| range.map(|i| (i, format!("m{i}").into_bytes())).collect::<Vec<_>>();
    assert_eq!(topics.history("log", 2), (true, kept(3..=5)));
    assert_eq!(topics.history("log", 0), (true, kept(1..=5)));
    assert_eq!(topics.history("log", 5), (true, vec![]), "up to date");
    assert!(!topics.history("log", 9).0, "a number ahead of the topic cannot be resumed from");
}

/// Runs `test` against both brokers.
fn both(test: fn(Arc<dyn Topics>)) {
    test(Arc::new(Local::new()));
    match Redis::start() {
        Some(redis) => test(Arc::new(redis)),
        None => eprintln!("\n*** SKIPPED the Redis half: apt-get install redis-server ***\n"),
    }
}

#[test]
fn both_brokers_make_one_order_with_contiguous_numbers() {
    both(publishers_at_once_make_one_order_with_contiguous_numbers);
}

#[test]
fn both_brokers_give_a_subscription_exactly_what_comes_after_it() {
    both(a_subscription_gets_exactly_what_comes_after_it);
}

#[test]
fn both_brokers_give_exactly_the_history_after_a_number() {
    both(history_gives_exactly_what_came_after_a_number);
}
