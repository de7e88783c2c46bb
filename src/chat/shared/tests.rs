use super::*;
use crate::protocol::OpCode;
use serde_json::Value;

/// What a worker did, in its order: in calls (its own inbox, applied
/// through the call's context, here a recording one) and what is left in
/// its inbox for `on_notify`.
fn applied(shared: &Shared, worker: usize, in_calls: Vec<Effect>) -> Vec<Effect> {
    let mut all = in_calls;
    let mut left = Vec::new();
    shared.broker.take(worker, &mut left);
    all.extend(left.into_iter().map(|delivery| match delivery {
        Delivery::Published { message, .. } | Delivery::Direct(message) => message,
    }));
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
    // A worker receives a room's publications from its first member's
    // subscription on: the first to join saw them all.
    let all = orders.iter().max_by_key(|order| order.len()).unwrap();
    let seqs: Vec<u64> = all.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=(n * each) as u64).collect::<Vec<_>>(), "contiguous, in order");
    for order in &orders {
        assert_eq!(
            order[..],
            all[all.len() - order.len()..],
            "every worker does the same publishes in the same order, from when it joined"
        );
    }
    // Each sender's own messages keep their order, and reach its own worker.
    for (worker, order) in orders.iter().enumerate() {
        let own: Vec<&String> = order.iter().map(|(_, t)| t).filter(|t| t.starts_with(&format!("{worker}:"))).collect();
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

#[test]
fn a_worker_gets_a_rooms_traffic_only_while_it_has_members_there() {
    let n = 2;
    let shared = Shared::new(config(), n);
    let (mut w0, mut w1) = (shared.worker(0), shared.worker(1));
    let now = Instant::now();
    let bye = Closed { code: 1001, reason: "", clean: true };
    // a, on worker 0, alone in "quiet": worker 1 is given nothing.
    let (a, mut in_calls_0) = (id(0, n, 0), Vec::new());
    let mut conn_a = ChatConn { query: "room=quiet&nick=a".into() };
    w0.on_open(&mut conn_a, &mut Context::recording(a, now, || 0, &mut in_calls_0));
    w0.on_message(&mut conn_a, Message::Text("anyone?"), &mut Context::recording(a, now, || 0, &mut in_calls_0));
    assert!(applied(&shared, 1, Vec::new()).is_empty(), "worker 1 has no one there: nothing for it");
    assert_eq!(messages(&in_calls_0), vec![(1, "anyone?".to_string())]);
    assert_eq!(shared.worker_subscriptions(), 1);
    // b joins on worker 1: from then on worker 1 gets the room's messages.
    let (b, mut in_calls_1) = (id(1, n, 0), Vec::new());
    let mut conn_b = ChatConn { query: "room=quiet&nick=b".into() };
    w1.on_open(&mut conn_b, &mut Context::recording(b, now, || 0, &mut in_calls_1));
    w0.on_message(&mut conn_a, Message::Text("hi b"), &mut Context::recording(a, now, || 0, &mut in_calls_0));
    let at_1 = applied(&shared, 1, in_calls_1);
    assert!(
        matches!(&at_1[..], [Effect::Subscribe { id, .. }, Effect::Send { to, .. }, Effect::Publish { .. }] if *id == b && *to == b),
        "b's subscription and welcome, then a's message: {at_1:?}"
    );
    assert_eq!(messages(&at_1), vec![(2, "hi b".to_string())]);
    assert_eq!(shared.worker_subscriptions(), 2);
    // Both leave: no worker holds a subscription any more.
    let mut rest = Vec::new();
    w1.on_close(conn_b, &bye, &mut Context::recording(b, now, || 0, &mut rest));
    w0.on_close(conn_a, &bye, &mut Context::recording(a, now, || 0, &mut rest));
    assert_eq!(shared.worker_subscriptions(), 0);
    assert_eq!(shared.member_count(), 0);
}
