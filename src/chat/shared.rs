//! The chat across several workers (`--workers N`): one [`Chat`] for all of
//! them, behind a lock, and for each worker an inbox of what it must do.
//!
//! Every call on any worker takes the lock, runs the chat's own logic on a
//! [recording](Context::recording) context, and, still holding the lock,
//! hands out what the call did: a publish to a room goes into every
//! worker's inbox, anything about one connection (a send, a subscription, a
//! close) into the inbox of that connection's worker. Because all of this
//! happens under one lock, every inbox receives its events in one global
//! order, so every member of a room, on whichever worker, sees the same
//! messages in the same order, and a newcomer's subscription and `welcome`
//! land exactly between the messages its history holds and the ones it
//! receives live. The calling worker then applies its own inbox at once;
//! the others are woken (once per turn of the calling worker's loop, through
//! [`ServerHandle::notify`](crate::server::ServerHandle::notify)) and apply
//! theirs in [`App::on_notify`]. Each worker frames a published message once
//! for all its members, as a single server does.
//!
//! The chat's state — rooms, nicknames, history, sequence numbers, rate
//! buckets — is one, so every promise it makes on one loop holds on many:
//! unique nicks, `/who` and `/rooms` for the whole server, contiguous `seq`,
//! limits server-wide. What runs in parallel is everything else: sockets,
//! framing, masking, UTF-8, compression, fan-out, timers.

use super::{Chat, ChatConfig, ChatConn};
use crate::app::{App, Closed, ConnId, Context, Effect, Hub, Message, Request, Route};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

/// Wakes one worker (the glue gives it each worker's `ServerHandle::notify`).
pub type Wake = Box<dyn Fn() + Send + Sync>;

/// What all the workers share: the chat and their inboxes, and how to wake each.
pub struct Shared {
    state: Mutex<State>,
    wakers: OnceLock<Vec<Wake>>,
    workers: usize,
    max_message: usize,
}

struct State {
    chat: Chat,
    /// What each worker has yet to do, oldest first.
    inboxes: Vec<Vec<Effect>>,
}

impl Shared {
    /// The chat with `config`, for `workers` workers.
    pub fn new(config: ChatConfig, workers: usize) -> Arc<Shared> {
        let workers = workers.max(1);
        let max_message = config.max_text_bytes.saturating_add(super::MAX_PREFIX);
        let chat = Chat::new(config);
        Arc::new(Shared {
            state: Mutex::new(State { chat, inboxes: (0..workers).map(|_| Vec::new()).collect() }),
            wakers: OnceLock::new(),
            workers,
            max_message,
        })
    }

    /// How to wake each worker, in worker order; set once, before they serve.
    pub fn set_wakers(&self, wakers: Vec<Wake>) {
        let _ = self.wakers.set(wakers);
    }

    /// The application value for worker `worker`.
    pub fn worker(self: &Arc<Shared>, worker: usize) -> SharedChat {
        SharedChat { worker, shared: Arc::clone(self), to_wake: vec![false; self.workers] }
    }

    /// The number of members of the chat, over all workers.
    pub fn member_count(&self) -> usize {
        self.lock().chat.member_count()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker that panicked while holding the lock takes the process
        // down (see `Workers`); the state it left is still the best there is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The worker that serves `id` (see `Workers::bind`).
    fn worker_of(&self, id: ConnId) -> usize {
        (id.generation.wrapping_sub(1) % self.workers as u64) as usize
    }
}

/// The chat as one worker serves it.
pub struct SharedChat {
    worker: usize,
    shared: Arc<Shared>,
    /// Workers given something this turn: woken once, at its end.
    to_wake: Vec<bool>,
}

impl SharedChat {
    /// Runs `f` on the chat under the lock, hands out what it did, then does
    /// this worker's part at once (its inbox, which may hold other workers'
    /// earlier publishes too, in their order) and wakes the others that got any.
    fn call(&mut self, ctx: &mut Context<'_>, f: impl FnOnce(&mut Chat, &mut Context<'_>)) {
        let shared = &*self.shared;
        let mut effects = Vec::new();
        let wake = &mut self.to_wake;
        let mine = {
            let mut state = shared.lock();
            let mut record = Context::recording(ctx.id(), ctx.now(), ctx.clock(), &mut effects);
            f(&mut state.chat, &mut record);
            for effect in effects {
                match effect.connection() {
                    None => {
                        for (worker, inbox) in state.inboxes.iter_mut().enumerate() {
                            wake[worker] |= worker != self.worker;
                            inbox.push(effect.clone());
                        }
                    }
                    Some(id) => {
                        let worker = shared.worker_of(id);
                        if let Some(inbox) = state.inboxes.get_mut(worker) {
                            wake[worker] |= worker != self.worker;
                            inbox.push(effect);
                        }
                    }
                }
            }
            std::mem::take(&mut state.inboxes[self.worker])
        };
        for effect in mine {
            ctx.apply(effect);
        }
    }
}

impl App for SharedChat {
    type Conn = ChatConn;

    fn route(&mut self, request: &Request<'_, '_>) -> Route<ChatConn> {
        self.shared.lock().chat.route(request)
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
        let Some(wakers) = self.shared.wakers.get() else { return };
        for (worker, wake) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(wake)
                && let Some(wake) = wakers.get(worker)
            {
                wake();
            }
        }
    }

    /// Another worker left something in this one's inbox: do it, in order.
    fn on_notify(&mut self, hub: &mut Hub, _now: Instant) {
        let mine = std::mem::take(&mut self.shared.lock().inboxes[self.worker]);
        for effect in mine {
            hub.apply(effect);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::OpCode;
    use serde_json::Value;

    /// What a worker did, in its order: in calls (its own inbox, applied
    /// through the call's context, here a recording one) and what is left in
    /// its inbox for `on_notify`.
    fn applied(shared: &Shared, worker: usize, in_calls: Vec<Effect>) -> Vec<Effect> {
        let mut all = in_calls;
        all.append(&mut shared.lock().inboxes[worker]);
        all
    }

    fn event(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    /// The `message` events a worker published, as (seq, text), in its order.
    fn messages(effects: &[Effect]) -> Vec<(u64, String)> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Publish { opcode: OpCode::Text, bytes, .. } => Some(event(bytes)),
                _ => None,
            })
            .filter(|e| e["type"] == "message")
            .map(|e| (e["seq"].as_u64().unwrap(), e["text"].as_str().unwrap().to_string()))
            .collect()
    }

    fn config() -> ChatConfig {
        ChatConfig { rate_limit_per_sec: 0, ..ChatConfig::default() }
    }

    /// Worker `worker` of `n`'s `k`-th connection, numbered as `Workers` numbers them.
    fn id(worker: usize, n: usize, k: usize) -> ConnId {
        ConnId { index: k, generation: (k * n + worker + 1) as u64 }
    }

    #[test]
    fn publishers_on_every_worker_at_once_make_one_order_for_all() {
        let (n, each) = (4, 200);
        let shared = Shared::new(config(), n);
        let threads: Vec<_> = (0..n)
            .map(|worker| {
                let mut app = shared.worker(worker);
                std::thread::spawn(move || {
                    let mut done = Vec::new();
                    let me = id(worker, n, 0);
                    let mut conn = ChatConn { query: format!("room=big&nick=w{worker}").into() };
                    let now = Instant::now();
                    let mut ctx = Context::recording(me, now, || 0, &mut done);
                    app.on_open(&mut conn, &mut ctx);
                    for i in 0..each {
                        let text = format!("{worker}:{i}");
                        app.on_message(&mut conn, Message::Text(&text), &mut ctx);
                    }
                    done
                })
            })
            .collect();
        let in_calls: Vec<Vec<Effect>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let orders: Vec<Vec<(u64, String)>> =
            in_calls.into_iter().enumerate().map(|(w, done)| messages(&applied(&shared, w, done))).collect();
        let seqs: Vec<u64> = orders[0].iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=(n * each) as u64).collect::<Vec<_>>(), "contiguous, in order");
        assert!(
            orders.iter().all(|order| *order == orders[0]),
            "every worker does the same publishes in the same order"
        );
        // Each sender's own messages keep their order.
        for worker in 0..n {
            let own: Vec<&String> =
                orders[0].iter().map(|(_, t)| t).filter(|t| t.starts_with(&format!("{worker}:"))).collect();
            let expected: Vec<String> = (0..each).map(|i| format!("{worker}:{i}")).collect();
            assert_eq!(own, expected.iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_member_joining_while_others_publish_gets_history_then_live_with_no_gap_or_repeat() {
        let (n, rounds) = (3, 300);
        let shared = Shared::new(config(), n);
        // Worker 0 and 1: members who talk in "big" without pause.
        let talkers: Vec<_> = (0..2)
            .map(|worker| {
                let mut app = shared.worker(worker);
                std::thread::spawn(move || {
                    let mut done = Vec::new();
                    let mut conn = ChatConn { query: "room=big".into() };
                    let mut ctx = Context::recording(id(worker, n, 0), Instant::now(), || 0, &mut done);
                    app.on_open(&mut conn, &mut ctx);
                    for i in 0..rounds {
                        app.on_message(&mut conn, Message::Text(&format!("t{worker}-{i}")), &mut ctx);
                    }
                })
            })
            .collect();
        // Worker 2: members who join "big" meanwhile, one after another, and leave again.
        let mut app = shared.worker(2);
        let mut log = Vec::new();
        let mut joined = Vec::new();
        for k in 0..50 {
            let me = id(2, n, k);
            let mut conn = ChatConn { query: "room=big".into() };
            let mut ctx = Context::recording(me, Instant::now(), || 0, &mut log);
            app.on_open(&mut conn, &mut ctx);
            joined.push((me, conn));
            // Let the talkers run a little between joins.
            std::thread::yield_now();
        }
        for t in talkers {
            t.join().unwrap();
        }
        let log = applied(&shared, 2, log);
        // Replay worker 2's log as its server would: subscriptions, then who receives what.
        let mut subscribed: std::collections::HashSet<ConnId> = Default::default();
        let mut received: std::collections::HashMap<ConnId, Vec<u64>> = Default::default();
        for effect in &log {
            match effect {
                Effect::Subscribe { id, .. } => {
                    subscribed.insert(*id);
                }
                Effect::Send { to, bytes, .. } => {
                    let e = event(bytes);
                    if e["type"] == "welcome" {
                        let history = e["history"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap());
                        received.entry(*to).or_default().extend(history);
                        assert_eq!(
                            received[to].last().copied().unwrap_or(0),
                            e["seq"].as_u64().unwrap(),
                            "history ends at the room's seq"
                        );
                    }
                }
                Effect::Publish { bytes, .. } => {
                    let e = event(bytes);
                    if e["type"] == "message" {
                        for id in &subscribed {
                            received.entry(*id).or_default().push(e["seq"].as_u64().unwrap());
                        }
                    }
                }
                _ => {}
            }
        }
        let total = (2 * rounds) as u64;
        for (me, _) in &joined {
            let got = &received[me];
            // The newest 100 in history (or all, if fewer), then every later one, once.
            let first = got[0];
            assert_eq!(*got, (first..=total).collect::<Vec<_>>(), "{me:?}: no gap, no repeat");
            assert!(got.len() >= 100.min(total as usize), "{me:?} got only {}", got.len());
        }
        // The joins happened while messages flowed: not everyone saw the same history.
        let firsts: std::collections::HashSet<u64> = joined.iter().map(|(me, _)| received[me][0]).collect();
        eprintln!("first seq seen by the 50 newcomers: {} distinct values", firsts.len());
    }
}
