//! Where a topic's order lives when its subscribers are on several event
//! loops: the [`Broker`] trait, and [`LocalBroker`], its in-process
//! implementation for the workers of one process (`--workers N`).
//!
//! A broker knows *subscribers*, not connections: a subscriber is one event
//! loop (a worker here; a node, for a broker across machines), and it fans a
//! delivery out to its own connections itself, framing it once for all of
//! them. So a message crosses from one loop to another once per loop that
//! has a subscriber, however many members it has there.
//!
//! What a broker promises:
//! - **One order.** Every subscriber receives what it is given — the
//!   publications of the topics it subscribes to, and what is
//!   [sent](Broker::send) to it alone — in one order, the order in which the
//!   broker took them, across topics as well as within one.
//! - **A sequence per topic.** [`Broker::publish`] numbers a topic's
//!   publications 1, 2, 3, … with no gap; the number comes with each delivery.
//! - **A subscription takes effect at once.** Everything published on the
//!   topic after [`Broker::subscribe`] returns reaches the subscriber, and
//!   nothing published after [`Broker::unsubscribe`] returns does.
//! - **History.** [`Broker::history`] gives the last publications a topic
//!   kept (up to a bound), or says that some of those asked for are gone.
//! - **A topic lives while it has subscribers.** When its last subscriber
//!   leaves, its sequence and history go with it; the next subscriber
//!   starts a new one at 1 (an application that lets clients resume keeps an
//!   epoch per topic life to tell the two apart).
//!
//! Across machines (`--redis`), a topic's order lives in Redis: [`resp`] is
//! a sans-IO Redis connection, [`redis`] the commands that keep a topic's
//! order, numbers and history there, and [`Remote`] what a process's link
//! to Redis offers its users (the server's `server::redis::Link` drives the
//! sockets, on a thread of its own, so that no event loop waits on Redis).
//!
//! On one node, a topic's history can outlive the process: [`store`] is
//! what a durable store is given and gives back (group commit, one batch in
//! flight), and the server's `server::store::DiskStore` writes it to disk.
//!
//! The chat across workers (`chat::shared`) sends everything it does through
//! a broker: a room's messages are publications on the room's topic, and
//! what is for one connection (its welcome, a subscription, a close) is sent
//! to that connection's worker, so that both arrive in one order.

mod local;
pub mod redis;
mod remote;
pub mod resp;
pub mod store;

pub use local::{LocalBroker, Wake};
pub use remote::{Incoming, Remote, RemoteError};

use std::sync::Arc;

/// One event loop that receives deliveries: a worker's number here.
pub type Subscriber = usize;

/// What a subscriber receives, in the broker's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery<M> {
    /// A publication on a topic the subscriber is subscribed to.
    Published {
        /// The topic.
        topic: Arc<str>,
        /// Its number in the topic.
        seq: u64,
        /// What was published.
        message: M,
    },
    /// Something [sent](Broker::send) to this subscriber alone.
    Direct(M),
}

/// What [`Broker::history`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum History<M> {
    /// Every publication after the one asked for, oldest first, with its
    /// number (empty if there is none yet).
    Complete(Vec<(u64, M)>),
    /// Some of those publications are no longer kept (or the number asked
    /// for is ahead of the topic): what is kept, oldest first.
    Partial(Vec<(u64, M)>),
}

/// Topics across event loops, in one order. See the [module](self).
pub trait Broker: Send + Sync {
    /// What is published and delivered.
    type Message: Clone + Send;

    /// Publishes `message` on `topic`: every subscriber of the topic gets it,
    /// after everything the broker took before. Returns its number in the
    /// topic (1 for the first of the topic's life).
    fn publish(&self, topic: &str, message: Self::Message) -> u64;

    /// `subscriber` receives what is published on `topic` from now on (a
    /// second subscribe changes nothing).
    fn subscribe(&self, subscriber: Subscriber, topic: &str);

    /// `subscriber` no longer receives what is published on `topic`.
    fn unsubscribe(&self, subscriber: Subscriber, topic: &str);

    /// The publications of `topic` after number `since`, as far as kept.
    fn history(&self, topic: &str, since: u64) -> History<Self::Message>;

    /// Gives `message` to `subscriber` alone, in the same order as publications.
    fn send(&self, subscriber: Subscriber, message: Self::Message);

    /// Moves what `subscriber` has been given, oldest first, to the end of `into`.
    fn take(&self, subscriber: Subscriber, into: &mut Vec<Delivery<Self::Message>>);

    /// Wakes every subscriber other than `from` that was given something
    /// since it was last woken or took its deliveries. Publishers call this
    /// at the end of each turn of their loop, so a burst costs each other
    /// loop one wake, not one per message.
    fn wake(&self, from: Subscriber);
}
