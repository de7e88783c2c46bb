//! The chat across several workers (`--workers N`): one [`Chat`] for all of
//! them, behind a lock, and a [`Broker`] that carries what it does to each
//! worker in one order.
//!
//! Every call on any worker takes the lock, runs the chat's own logic on a
//! [recording](Context::recording) context, and, still holding the lock,
//! hands what the call did to the broker: a publish to a room is a
//! publication on the room's topic, which reaches every worker that has a
//! member there (a worker is the broker's subscriber to a topic while any of
//! its connections is); anything about one connection (a send, a
//! subscription, a close) is [sent](Broker::send) to that connection's
//! worker. The broker keeps one order for each worker across both, and all
//! of it happens under the chat's lock, so every member of a room, on
//! whichever worker, sees the same messages in the same order, and a
//! newcomer's subscription and `welcome` land exactly between the messages
//! its history holds and the ones it receives live. The calling worker then
//! does its own deliveries at once; the others are woken (once per turn of
//! the calling worker's loop, through
//! [`ServerHandle::notify`](crate::server::ServerHandle::notify)) and do
//! theirs in [`App::on_notify`]. Each worker frames a published message once
//! for all its members, as a single server does.
//!
//! The chat's state — rooms, nicknames, history, sequence numbers, rate
//! buckets — is one, so every promise it makes on one loop holds on many:
//! unique nicks, `/who` and `/rooms` for the whole server, contiguous `seq`,
//! limits server-wide. What runs in parallel is everything else: sockets,
//! framing, masking, UTF-8, compression, fan-out, timers. (The room's `seq`
//! and history are still the chat's own, made under its lock; the broker's
//! numbers and history are not used here yet.)

use super::cluster::{ClusterLink, Node};
use super::{Chat, ChatConfig, ChatConn};
use crate::app::{App, Closed, ConnId, Context, Effect, Hub, Message, Request, Route};
use crate::broker::{Broker, Delivery, Incoming, LocalBroker};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

/// What the workers exchange through the broker.
pub type ChatBroker = dyn Broker<Message = Effect>;

/// What all the workers share: the chat, and the broker between them.
pub struct Shared {
    state: Mutex<State>,
    /// Checks `?token=` without the lock.
    verifier: Option<Arc<super::token::Verifier>>,
    broker: Arc<ChatBroker>,
    workers: usize,
    max_message: usize,
    /// The link to Redis, with `--redis` (see [`Shared::span_nodes`]).
    link: OnceLock<Box<ClusterLink>>,
    /// Set once the chat keeps its rooms in a store ([`Shared::persist`]).
    persists: std::sync::atomic::AtomicBool,
}

struct State {
    chat: Chat,
    /// The rooms across nodes, with `--redis` (see `chat::cluster`).
    node: Option<Node>,
    /// What the link handed back, being taken in (kept for its capacity).
    incoming: Vec<Incoming<super::cluster::Tag>>,
    /// For each worker, how many of its connections subscribe to each topic
    /// (the worker is the broker's subscriber to those).
    subscribed: Vec<HashMap<Arc<str>, u32>>,
}

impl Shared {
    /// The chat with `config`, for `workers` workers, over an in-process
    /// broker (which no one wakes: see [`Shared::with_broker`]).
    pub fn new(config: ChatConfig, workers: usize) -> Arc<Shared> {
        Shared::with_broker(config, workers, Arc::new(LocalBroker::new(workers.max(1), 0)))
    }

    /// The chat with `config`, for `workers` workers (numbered from 0, the
    /// broker's subscribers), over `broker`.
    pub fn with_broker(config: ChatConfig, workers: usize, broker: Arc<ChatBroker>) -> Arc<Shared> {
        let workers = workers.max(1);
        let max_message = super::max_message(&config);
        let chat = Chat::new(config);
        let verifier = chat.verifier();
        let subscribed = (0..workers).map(|_| HashMap::new()).collect();
        let state = State { chat, node: None, incoming: Vec::new(), subscribed };
        Arc::new(Shared {
            state: Mutex::new(state),
            verifier,
            broker,
            workers,
            max_message,
            link: OnceLock::new(),
            persists: false.into(),
        })
    }

    /// Makes this chat one node of a chat across nodes (`--redis`; see
    /// [`cluster`](super::cluster)), through `link` — the server's
    /// `server::redis::Link`, which must wake some worker (the first
    /// worker's `ServerHandle::notify`) to call [`App::on_notify`] when it
    /// has something. Call it before the workers serve; a second call changes nothing.
    pub fn span_nodes(&self, link: Box<ClusterLink>) {
        let mut state = self.lock();
        if self.link.set(link).is_ok() {
            state.chat.span_nodes();
            state.node = Some(Node::new(state.chat.config().history_len));
        }
    }

    /// Keeps the chat's rooms in `store` from now on, starting from what it
    /// held (see [`Chat::persist`]); the store must wake some worker (the
    /// first's `ServerHandle::notify`) when a batch is done. Call it before
    /// the workers serve, and not with [`Shared::span_nodes`].
    pub fn persist(&self, store: Box<dyn crate::broker::store::Store>, loaded: crate::broker::store::Loaded) {
        let mut state = self.lock();
        if self.link.get().is_none() && !state.chat.persists() {
            state.chat.persist(store, loaded);
            self.persists.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Whether the chat keeps its rooms in a store.
    fn persists(&self) -> bool {
        self.persists.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Shows what the store committed, refuses what it could not (under the chat's lock).
    fn committed(&self, state: &mut State) {
        let mut effects = Vec::new();
        state.chat.take_committed(&mut effects);
        for effect in effects {
            self.route(state, effect);
        }
    }

    /// Whether this chat's link to Redis is up (`false` without `--redis`).
    pub fn redis_up(&self) -> bool {
        self.link.get().is_some_and(|link| link.is_up())
    }

    /// Hands what a call left for the cluster, and what the link brought, to
    /// the cluster layer; routes what that does (under the chat's lock).
    fn cluster(&self, state: &mut State) {
        let (Some(link), Some(node)) = (self.link.get(), state.node.as_mut()) else { return };
        let link = &**link;
        let mut effects = Vec::new();
        for op in std::mem::take(&mut state.chat.outgoing) {
            node.outgoing(&mut state.chat, link, op, &mut effects);
        }
        link.take(&mut state.incoming);
        for incoming in std::mem::take(&mut state.incoming) {
            node.incoming(&mut state.chat, link, incoming, &mut effects);
        }
        for effect in effects {
            self.route(state, effect);
        }
    }

    /// The application value for worker `worker`.
    pub fn worker(self: &Arc<Shared>, worker: usize) -> SharedChat {
        SharedChat { worker, shared: Arc::clone(self), taken: Vec::new(), expiries: Default::default(), tick_at: None }
    }

    /// The number of members of the chat, over all workers.
    pub fn member_count(&self) -> usize {
        self.lock().chat.member_count()
    }

    /// The number of (worker, topic) subscriptions held with the broker.
    pub fn worker_subscriptions(&self) -> usize {
        self.lock().subscribed.iter().map(HashMap::len).sum()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker that panicked while holding the lock takes the process
        // down (see `Workers`); the state it left is still the best there is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands one effect of a call to the broker (under the chat's lock).
    fn route(&self, state: &mut State, effect: Effect) {
        let Some(id) = effect.connection() else {
            if let Effect::Publish { topic, .. } = &effect {
                let topic = Arc::clone(topic);
                self.broker.publish(&topic, effect);
            }
            return;
        };
        let worker = worker_of(id, self.workers);
        let Some(subscribed) = state.subscribed.get_mut(worker) else { return };
        match &effect {
            Effect::Subscribe { topic, .. } => {
                let count = subscribed.entry(Arc::clone(topic)).or_insert(0);
                *count += 1;
                if *count == 1 {
                    self.broker.subscribe(worker, topic);
                }
                self.broker.send(worker, effect);
            }
            Effect::Unsubscribe { topic, .. } => {
                let topic = Arc::clone(topic);
                self.broker.send(worker, effect);
                if let Some(count) = subscribed.get_mut(&topic) {
                    *count -= 1;
                    if *count == 0 {
                        subscribed.remove(&topic);
                        self.broker.unsubscribe(worker, &topic);
                    }
                }
            }
            _ => self.broker.send(worker, effect),
        }
    }
}

/// The worker that serves `id` (see `Workers::bind`).
fn worker_of(id: ConnId, workers: usize) -> usize {
    (id.generation.wrapping_sub(1) % workers as u64) as usize
}

/// The chat as one worker serves it.
pub struct SharedChat {
    worker: usize,
    shared: Arc<Shared>,
    /// Deliveries taken from the broker, being applied (kept for its capacity).
    taken: Vec<Delivery<Effect>>,
    /// When the tokens of this worker's signed members expire (a member
    /// joins on its own worker, so its expiry is taken here from the call).
    expiries: super::token::Expiries,
    /// With `--redis`, on the first worker: when the node next renews its
    /// lease (see `chat::cluster`).
    tick_at: Option<Instant>,
}

impl SharedChat {
    /// With `--redis`, the first worker renews the node's lease: from now on.
    fn start_ticking(&mut self, now: Instant) {
        if self.tick_at.is_none() && self.worker == 0 && self.shared.link.get().is_some() {
            self.tick_at = Some(now + super::cluster::TICK);
        }
    }

    /// Runs `f` on the chat under the lock and hands what it did to the
    /// broker, then does this worker's deliveries at once (which may hold
    /// other workers' earlier publications too, in their order).
    fn call(&mut self, ctx: &mut Context<'_>, f: impl FnOnce(&mut Chat, &mut Context<'_>)) {
        self.start_ticking(ctx.now());
        let shared = &*self.shared;
        let mut effects = Vec::new();
        {
            let mut state = shared.lock();
            let mut record = Context::recording(ctx.id(), ctx.now(), ctx.clock(), &mut effects);
            f(&mut state.chat, &mut record);
            self.expiries.take_from(&mut state.chat.expiries);
            let chat = &state.chat;
            self.expiries.compact(chat.member_count(), |id| chat.is_member_id(id));
            for effect in effects {
                shared.route(&mut state, effect);
            }
            shared.cluster(&mut state);
            shared.broker.take(self.worker, &mut self.taken);
        }
        for delivery in self.taken.drain(..) {
            match delivery {
                Delivery::Published { message, .. } | Delivery::Direct(message) => ctx.apply(message),
            }
        }
    }
}

impl App for SharedChat {
    type Conn = ChatConn;

    fn route(&mut self, request: &Request<'_, '_>) -> Route<ChatConn> {
        super::route(request, self.shared.verifier.as_deref())
    }

    /// The one chat's numbers, whichever worker answers the scrape.
    fn report(&self, report: &mut crate::app::stats::Report) {
        self.shared.lock().chat.report(report);
    }

    fn on_open(&mut self, conn: &mut ChatConn, ctx: &mut Context<'_>) {
        self.call(ctx, |chat, record| chat.on_open(conn, record));
    }

    fn on_message(&mut self, conn: &mut ChatConn, message: Message<'_>, ctx: &mut Context<'_>) {
        self.call(ctx, |chat, record| chat.on_message(conn, message, record));
    }

    fn max_message_size(&self, _: &ChatConn) -> Option<usize> {
        Some(self.shared.max_message)
    }

    fn on_message_too_long(&mut self, conn: &mut ChatConn, ctx: &mut Context<'_>) {
        self.call(ctx, |chat, record| chat.on_message_too_long(conn, record));
    }

    fn on_close(&mut self, conn: ChatConn, closed: &Closed, ctx: &mut Context<'_>) {
        self.call(ctx, |chat, record| chat.on_close(conn, closed, record));
    }

    /// Wakes the workers this turn's calls gave something (once each: a
    /// burst of messages is one wake and one turn for each of them, so they
    /// write their members' queues once for the lot, as a single loop does).
    fn on_turn_end(&mut self) {
        if self.shared.persists() {
            self.shared.lock().chat.flush_store();
        }
        self.shared.broker.wake(self.worker);
    }

    fn next_deadline(&self) -> Option<Instant> {
        match (self.expiries.next(), self.tick_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes (1008 "token expired") this worker's members whose tokens have expired.
    fn on_deadline(&mut self, hub: &mut Hub, now: Instant) {
        self.expiries.close_due(hub, now);
        if self.tick_at.is_some_and(|at| at <= now) {
            self.tick_at = Some(now + super::cluster::TICK);
            let mut state = self.shared.lock();
            let State { chat, node, .. } = &mut *state;
            if let (Some(link), Some(node)) = (self.shared.link.get(), node.as_mut()) {
                node.tick(chat, &**link);
            }
        }
    }

    /// Another worker left this one deliveries: do them, in order.
    fn on_notify(&mut self, hub: &mut Hub, now: Instant) {
        self.start_ticking(now);
        if self.shared.link.get().is_some() {
            let mut state = self.shared.lock();
            self.shared.cluster(&mut state);
        }
        if self.shared.persists() {
            let mut state = self.shared.lock();
            self.shared.committed(&mut state);
        }
        self.shared.broker.take(self.worker, &mut self.taken);
        for delivery in self.taken.drain(..) {
            match delivery {
                Delivery::Published { message, .. } | Delivery::Direct(message) => hub.apply(message),
            }
        }
    }
}

#[cfg(test)]
mod tests;
