//! The in-process broker: the workers of one process, one lock, an inbox per
//! worker and a wake-up for each.
//!
//! One lock for all topics, not one per topic: the one order across topics
//! that a subscriber sees (a room's messages and a member's own welcome) is
//! simplest to keep under one lock, and its only user, the shared chat,
//! calls it while holding the chat's own lock anyway, so a lock per topic
//! would never be taken by two threads at once. What is done under it is
//! small: a counter, a clone of a reference-counted message per subscribing
//! worker, and a push.

use super::{Broker, Delivery, History, Subscriber};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

/// Wakes one subscriber (for a worker: its `ServerHandle::notify`).
pub type Wake = Box<dyn Fn() + Send + Sync>;

/// [`Broker`] for the workers of one process. See the [module](self).
pub struct LocalBroker<M> {
    state: Mutex<State<M>>,
    wakers: OnceLock<Vec<Wake>>,
    /// How many publications each topic keeps for [`Broker::history`].
    keep: usize,
}

struct State<M> {
    topics: HashMap<Arc<str>, Topic<M>>,
    inboxes: Vec<Inbox<M>>,
}

struct Topic<M> {
    /// The name, shared by every delivery.
    name: Arc<str>,
    seq: u64,
    /// The subscribers, each once (a few workers: a list beats a set).
    subscribers: Vec<Subscriber>,
    kept: VecDeque<(u64, M)>,
}

struct Inbox<M> {
    deliveries: Vec<Delivery<M>>,
    /// Given something since it was last woken (or took its deliveries).
    unwoken: bool,
}

impl<M> LocalBroker<M> {
    /// A broker for `subscribers` subscribers (numbered from 0), each topic
    /// keeping its last `keep` publications.
    pub fn new(subscribers: usize, keep: usize) -> LocalBroker<M> {
        let inboxes = (0..subscribers).map(|_| Inbox { deliveries: Vec::new(), unwoken: false }).collect();
        LocalBroker { state: Mutex::new(State { topics: HashMap::new(), inboxes }), wakers: OnceLock::new(), keep }
    }

    /// How to wake each subscriber, in order; set once, before they run.
    pub fn set_wakers(&self, wakers: Vec<Wake>) {
        let _ = self.wakers.set(wakers);
    }

    /// The number of topics alive (with at least one subscriber).
    pub fn topic_count(&self) -> usize {
        self.lock().topics.len()
    }

    fn lock(&self) -> MutexGuard<'_, State<M>> {
        // A thread that panicked while holding the lock takes the process
        // down (see `Workers`); what it left is consistent at every step.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<M: Clone + Send> Broker for LocalBroker<M> {
    type Message = M;

    /// Returns 0, delivering and keeping nothing, when the topic has no
    /// subscriber (a topic lives while it has one).
    fn publish(&self, topic: &str, message: M) -> u64 {
        let mut state = self.lock();
        let State { topics, inboxes } = &mut *state;
        let Some(entry) = topics.get_mut(topic) else { return 0 };
        entry.seq += 1;
        let seq = entry.seq;
        for &subscriber in &entry.subscribers {
            if let Some(inbox) = inboxes.get_mut(subscriber) {
                inbox.deliveries.push(Delivery::Published {
                    topic: Arc::clone(&entry.name),
                    seq,
                    message: message.clone(),
                });
                inbox.unwoken = true;
            }
        }
        if self.keep > 0 {
            if entry.kept.len() == self.keep {
                entry.kept.pop_front();
            }
            entry.kept.push_back((seq, message));
        }
        seq
    }

    fn subscribe(&self, subscriber: Subscriber, topic: &str) {
        let mut state = self.lock();
        if subscriber >= state.inboxes.len() {
            return;
        }
        if !state.topics.contains_key(topic) {
            let name: Arc<str> = Arc::from(topic);
            let entry = Topic { name: Arc::clone(&name), seq: 0, subscribers: Vec::new(), kept: VecDeque::new() };
            state.topics.insert(name, entry);
        }
        if let Some(entry) = state.topics.get_mut(topic)
            && !entry.subscribers.contains(&subscriber)
        {
            entry.subscribers.push(subscriber);
        }
    }

    fn unsubscribe(&self, subscriber: Subscriber, topic: &str) {
        let mut state = self.lock();
        if let Some(entry) = state.topics.get_mut(topic) {
            entry.subscribers.retain(|&s| s != subscriber);
            if entry.subscribers.is_empty() {
                state.topics.remove(topic);
            }
        }
    }

    fn history(&self, topic: &str, since: u64) -> History<M> {
        let state = self.lock();
        let Some(entry) = state.topics.get(topic) else {
            return if since == 0 { History::Complete(Vec::new()) } else { History::Partial(Vec::new()) };
        };
        let oldest = entry.kept.front().map_or(entry.seq + 1, |(seq, _)| *seq);
        if since > entry.seq || since.saturating_add(1) < oldest {
            return History::Partial(entry.kept.iter().cloned().collect());
        }
        History::Complete(entry.kept.iter().filter(|(seq, _)| *seq > since).cloned().collect())
    }

    fn send(&self, subscriber: Subscriber, message: M) {
        let mut state = self.lock();
        if let Some(inbox) = state.inboxes.get_mut(subscriber) {
            inbox.deliveries.push(Delivery::Direct(message));
            inbox.unwoken = true;
        }
    }

    fn take(&self, subscriber: Subscriber, into: &mut Vec<Delivery<M>>) {
        let mut state = self.lock();
        if let Some(inbox) = state.inboxes.get_mut(subscriber) {
            into.append(&mut inbox.deliveries);
            inbox.unwoken = false;
        }
    }

    fn wake(&self, from: Subscriber) {
        let Some(wakers) = self.wakers.get() else { return };
        let mut to_wake = Vec::new();
        {
            let mut state = self.lock();
            for (subscriber, inbox) in state.inboxes.iter_mut().enumerate() {
                if subscriber != from && std::mem::take(&mut inbox.unwoken) {
                    to_wake.push(subscriber);
                }
            }
        }
        for subscriber in to_wake {
            if let Some(wake) = wakers.get(subscriber) {
                wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    fn published(deliveries: &[Delivery<String>]) -> Vec<(&str, u64, &str)> {
        deliveries
            .iter()
            .filter_map(|d| match d {
                Delivery::Published { topic, seq, message } => Some((&**topic, *seq, message.as_str())),
                Delivery::Direct(_) => None,
            })
            .collect()
    }

    fn taken(broker: &LocalBroker<String>, subscriber: Subscriber) -> Vec<Delivery<String>> {
        let mut out = Vec::new();
        broker.take(subscriber, &mut out);
        out
    }

    #[test]
    fn concurrent_publishers_make_one_order_with_contiguous_numbers_for_every_subscriber() {
        let (publishers, each, subscribers) = (4, 500, 3);
        let broker = Arc::new(LocalBroker::<String>::new(subscribers, 0));
        for s in 0..subscribers {
            broker.subscribe(s, "room");
        }
        let threads: Vec<_> =
            (0..publishers)
                .map(|p| {
                    let broker = Arc::clone(&broker);
                    thread::spawn(move || {
                        (0..each)
                            .map(|i| (broker.publish("room", format!("{p}:{i}")), format!("{p}:{i}")))
                            .collect::<Vec<(u64, String)>>()
                    })
                })
                .collect();
        let mut returned: Vec<(u64, String)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        returned.sort();
        let seen: Vec<Vec<Delivery<String>>> = (0..subscribers).map(|s| taken(&broker, s)).collect();
        let first = published(&seen[0]);
        assert_eq!(first.len(), publishers * each);
        let seqs: Vec<u64> = first.iter().map(|(_, seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=(publishers * each) as u64).collect::<Vec<_>>(), "1, 2, 3, … in delivery order");
        for other in &seen[1..] {
            assert_eq!(published(other), first, "every subscriber, the same order");
        }
        // What publish returned is the number the message was delivered with.
        let delivered: Vec<(u64, String)> = first.iter().map(|(_, seq, m)| (*seq, m.to_string())).collect();
        assert_eq!(returned, delivered);
        // Each publisher's own messages stay in its order.
        for p in 0..publishers {
            let own: Vec<&str> = first.iter().map(|(_, _, m)| *m).filter(|m| m.starts_with(&format!("{p}:"))).collect();
            assert_eq!(own, (0..each).map(|i| format!("{p}:{i}")).collect::<Vec<_>>());
        }
    }

    #[test]
    fn sends_and_publications_to_one_subscriber_keep_the_order_they_were_given_in() {
        let broker = LocalBroker::<String>::new(2, 0);
        broker.subscribe(0, "a");
        broker.subscribe(0, "b");
        broker.subscribe(1, "b");
        broker.publish("a", "a1".into());
        broker.send(0, "direct".into());
        broker.publish("b", "b1".into());
        broker.send(1, "only for 1".into());
        broker.publish("a", "a2".into());
        let zero = taken(&broker, 0);
        assert_eq!(
            zero,
            vec![
                Delivery::Published { topic: "a".into(), seq: 1, message: "a1".into() },
                Delivery::Direct("direct".into()),
                Delivery::Published { topic: "b".into(), seq: 1, message: "b1".into() },
                Delivery::Published { topic: "a".into(), seq: 2, message: "a2".into() },
            ]
        );
        assert_eq!(
            taken(&broker, 1),
            vec![
                Delivery::Published { topic: "b".into(), seq: 1, message: "b1".into() },
                Delivery::Direct("only for 1".into()),
            ]
        );
        assert!(taken(&broker, 0).is_empty(), "taken once");
    }

    #[test]
    fn a_subscription_gets_exactly_what_is_published_while_it_lasts_even_racing_a_publisher() {
        // A publisher numbers messages without pause; a subscriber on another
        // thread subscribes and unsubscribes over and over. Each stretch it
        // was subscribed for must be a run of consecutive numbers: nothing
        // missing inside a stretch, nothing from outside it.
        let broker = Arc::new(LocalBroker::<u64>::new(2, 0));
        broker.subscribe(0, "t"); // keeps the topic alive throughout
        let done = Arc::new(AtomicUsize::new(0));
        let publisher = {
            let (broker, done) = (Arc::clone(&broker), Arc::clone(&done));
            thread::spawn(move || {
                let mut n = 0;
                while done.load(Ordering::Relaxed) == 0 {
                    n += 1;
                    assert_eq!(broker.publish("t", n), n);
                }
                n
            })
        };
        let mut stretches = Vec::new();
        for _ in 0..300 {
            broker.subscribe(1, "t");
            thread::yield_now();
            broker.unsubscribe(1, "t");
            let mut got = Vec::new();
            broker.take(1, &mut got);
            let seqs: Vec<u64> = got
                .iter()
                .map(|d| match d {
                    Delivery::Published { seq, message, .. } => {
                        assert_eq!(seq, message);
                        *seq
                    }
                    Delivery::Direct(_) => unreachable!(),
                })
                .collect();
            stretches.push(seqs);
        }
        done.store(1, Ordering::Relaxed);
        let total = publisher.join().unwrap();
        let mut last = 0;
        for seqs in &stretches {
            assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "a stretch without gaps: {seqs:?}");
            if let Some(&first) = seqs.first() {
                assert!(first > last, "stretches do not overlap");
                last = *seqs.last().unwrap_or(&first);
            }
        }
        let ever: usize = stretches.iter().map(Vec::len).sum();
        eprintln!("{total} published; subscriber 1 got {ever} over {} stretches", stretches.len());
        // Subscriber 0, there all along, got every one of them.
        let mut all = Vec::new();
        broker.take(0, &mut all);
        assert_eq!(all.len() as u64, total);
    }

    #[test]
    fn history_gives_what_is_kept_after_a_number_and_says_when_some_is_gone() {
        let broker = LocalBroker::<String>::new(1, 3);
        assert_eq!(broker.history("t", 0), History::Complete(vec![]), "an unknown topic has nothing yet");
        assert_eq!(broker.history("t", 5), History::Partial(vec![]), "nor anything after 5");
        broker.subscribe(0, "t");
        assert_eq!(broker.history("t", 0), History::Complete(vec![]));
        for i in 1..=5 {
            assert_eq!(broker.publish("t", format!("m{i}")), i);
        }
        let kept = |range: std::ops::RangeInclusive<u64>| range.map(|i| (i, format!("m{i}"))).collect::<Vec<_>>();
        assert_eq!(broker.history("t", 2), History::Complete(kept(3..=5)), "3 are kept: 3, 4, 5");
        assert_eq!(broker.history("t", 4), History::Complete(kept(5..=5)));
        assert_eq!(broker.history("t", 5), History::Complete(vec![]), "up to date");
        assert_eq!(broker.history("t", 1), History::Partial(kept(3..=5)), "2 is gone");
        assert_eq!(broker.history("t", 0), History::Partial(kept(3..=5)));
        assert_eq!(broker.history("t", 9), History::Partial(kept(3..=5)), "ahead of the topic");
    }

    #[test]
    fn a_topic_ends_with_its_last_subscriber_and_starts_again_at_one() {
        let broker = LocalBroker::<String>::new(2, 10);
        assert_eq!(broker.publish("t", "to nobody".into()), 0, "no subscriber: not numbered, not kept");
        assert_eq!(broker.topic_count(), 0);
        broker.subscribe(0, "t");
        broker.subscribe(1, "t");
        broker.subscribe(1, "t"); // twice is once
        assert_eq!(broker.publish("t", "x".into()), 1);
        assert_eq!(taken(&broker, 1).len(), 1, "one delivery, though subscribed twice");
        broker.unsubscribe(0, "t");
        assert_eq!(broker.publish("t", "y".into()), 2, "one subscriber left: the topic goes on");
        broker.unsubscribe(1, "t");
        assert_eq!(broker.topic_count(), 0, "the last one gone: the topic is too");
        broker.subscribe(0, "t");
        assert_eq!(broker.publish("t", "z".into()), 1, "a new life starts at 1");
        assert_eq!(broker.history("t", 0), History::Complete(vec![(1, "z".into())]));
        // Subscribers that do not exist are ignored.
        broker.subscribe(7, "u");
        broker.send(7, "lost".into());
        assert_eq!(broker.topic_count(), 1);
    }

    #[test]
    fn wake_calls_each_other_subscriber_given_something_once() {
        let broker = LocalBroker::<String>::new(3, 0);
        let woken: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
        broker.set_wakers(
            (0..3)
                .map(|s| {
                    let woken = Arc::clone(&woken);
                    Box::new(move || {
                        woken[s].fetch_add(1, Ordering::Relaxed);
                    }) as Wake
                })
                .collect(),
        );
        let count = |s: usize| woken[s].load(Ordering::Relaxed);
        for s in 0..3 {
            broker.subscribe(s, "t");
        }
        for i in 0..10 {
            broker.publish("t", format!("{i}"));
        }
        broker.wake(0);
        assert_eq!((count(0), count(1), count(2)), (0, 1, 1), "the caller is not woken; the others once for ten");
        broker.wake(0);
        assert_eq!((count(1), count(2)), (1, 1), "nothing new: no wake");
        broker.send(2, "x".into());
        broker.wake(1);
        assert_eq!((count(0), count(1), count(2)), (1, 1, 2), "0 still had something unwoken; 2 got more");
        // A subscriber that took its deliveries needs no wake for them.
        broker.send(1, "y".into());
        taken(&broker, 1);
        broker.wake(0);
        assert_eq!(count(1), 1);
    }
}
