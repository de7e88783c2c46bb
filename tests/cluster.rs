//! Rooms across nodes (`--redis`): several `rust-chat` processes and one
//! real `redis-server` (on a free port, append-only file on) make one chat.
//! Skips loudly without `redis-server` (and fails under CI, which installs it).

mod common;

use common::redis::RedisServer;
use common::{ChatClient, Spawned};
use serde_json::Value;
use std::time::{Duration, Instant};

fn node(redis: &RedisServer) -> Spawned {
    Spawned::start(&["--redis", &redis.url(), "--rate-limit", "0"])
}

/// The `message` events among `events`, as (seq, text).
fn messages(events: &[Value]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| (e["seq"].as_u64().unwrap(), e["text"].as_str().unwrap().to_string()))
        .collect()
}

/// Reads events until `n` messages have come; returns every event read.
fn read_messages(client: &mut ChatClient, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    while messages(&events).len() < n {
        events.push(client.event());
    }
    events
}

/// Joins `room` on `node` and waits until a message said on it comes back
/// (the node's subscription is made): returns the client.
fn member(node: &Spawned, query: &str) -> ChatClient {
    let (client, _) = ChatClient::join(node.addr, query);
    client
}

#[test]
fn three_nodes_one_room_one_order_with_contiguous_numbers() {
    let Some(redis) = RedisServer::start(None) else { return };
    let nodes = [node(&redis), node(&redis), node(&redis)];
    let mut clients: Vec<ChatClient> =
        nodes.iter().enumerate().map(|(n, node)| member(node, &format!("room=big&nick=n{n}"))).collect();
    // Each sees the later ones join (through Redis, from whichever node).
    for (n, client) in clients.iter_mut().enumerate() {
        for later in n + 1..3 {
            let join = client.until("join");
            assert_eq!(join["nick"], format!("n{later}"), "{join}");
        }
    }
    const EACH: usize = 50;
    for i in 0..EACH {
        for (n, client) in clients.iter_mut().enumerate() {
            client.say(&format!("n{n} m{i}"));
        }
    }
    let orders: Vec<Vec<(u64, String)>> =
        clients.iter_mut().map(|client| messages(&read_messages(client, 3 * EACH))).collect();
    let first = orders[0][0].0;
    let seqs: Vec<u64> = orders[0].iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (first..first + 3 * EACH as u64).collect::<Vec<_>>(), "contiguous numbers");
    assert_eq!(orders[1], orders[0], "node 2 saw node 1's order");
    assert_eq!(orders[2], orders[0], "node 3 saw node 1's order");
    for n in 0..3 {
        let own: Vec<&String> = orders[0].iter().map(|(_, t)| t).filter(|t| t.starts_with(&format!("n{n} "))).collect();
        assert_eq!(own, (0..EACH).map(|i| format!("n{n} m{i}")).collect::<Vec<_>>().iter().collect::<Vec<_>>());
    }
}

#[test]
fn history_outlives_every_node_and_since_resumes_on_any_node() {
    let Some(redis) = RedisServer::start(None) else { return };
    let (epoch, seen) = {
        let (a, b) = (node(&redis), node(&redis));
        let (mut alice, welcome) = ChatClient::join(a.addr, "room=den&nick=alice");
        let epoch = welcome["epoch"].as_str().unwrap().to_string();
        let mut bob = member(&b, "room=den&nick=bob");
        for i in 1..=5 {
            alice.say(&format!("m{i}"));
        }
        let got = messages(&read_messages(&mut bob, 5));
        assert_eq!(got.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(), ["m1", "m2", "m3", "m4", "m5"]);
        // Bob has seen up to m3 when he goes; two more come after.
        (epoch, got[2].0)
        // Both nodes end here (killed on drop).
    };
    let c = node(&redis);
    let (mut carol, welcome) = ChatClient::join(c.addr, "room=den&nick=carol");
    assert_eq!(welcome["epoch"], epoch.as_str(), "the room's life goes on");
    let history: Vec<&str> =
        welcome["history"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(history, ["m1", "m2", "m3", "m4", "m5"], "{welcome}");
    assert_eq!(welcome["seq"], seen + 2);
    carol.say("m6");
    carol.until("message");
    // Bob comes back on another node, resuming after what he saw.
    let d = node(&redis);
    let (mut bob, welcome) = ChatClient::join(d.addr, &format!("room=den&nick=bob&since={seen}&epoch={epoch}"));
    assert_eq!(welcome["recovered"], true, "{welcome}");
    let missed: Vec<&str> =
        welcome["history"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(missed, ["m4", "m5", "m6"], "exactly what he missed");
    // Then live ones, after them.
    carol.say("m7");
    assert_eq!(messages(&read_messages(&mut bob, 1)), vec![(seen + 4, "m7".to_string())]);
    // Another life's epoch cannot resume: the recent ones instead, and it says so.
    let (_, welcome) = ChatClient::join(d.addr, &format!("room=den&nick=eve&since={seen}&epoch=0-0"));
    assert_eq!(welcome["recovered"], false);
    assert_eq!(welcome["history"].as_array().unwrap().len(), 7);
}

#[test]
fn while_redis_is_down_messages_are_refused_and_service_resumes_by_itself() {
    let Some(mut redis) = RedisServer::start(None) else { return };
    let (mut a, mut b) = (node(&redis), node(&redis));
    let mut alice = member(&a, "room=ops&nick=alice");
    let mut bob = member(&b, "room=ops&nick=bob");
    alice.until("join"); // bob's
    alice.say("before");
    assert_eq!(messages(&read_messages(&mut bob, 1))[0].1, "before");
    messages(&read_messages(&mut alice, 1));

    redis.stop();
    let outage = Instant::now();
    let mut refused = 0;
    while outage.elapsed() < Duration::from_secs(5) {
        alice.say("during");
        let event = alice.until("error");
        assert_eq!(event["code"], "unavailable", "{event}");
        refused += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(refused >= 5);
    redis.start_again();
    let back = Instant::now();
    // Within 5 s a message goes through again, on the same connections.
    let seq = loop {
        assert!(back.elapsed() < Duration::from_secs(5), "not back within 5 s of Redis");
        alice.say("after");
        let event = alice.event();
        match event["type"].as_str() {
            Some("message") => break event["seq"].as_u64().unwrap(),
            Some("error") => std::thread::sleep(Duration::from_millis(200)),
            _ => {}
        }
    };
    let got = messages(&read_messages(&mut bob, 1));
    assert_eq!(got, vec![(seq, "after".to_string())], "nothing refused was delivered; the numbers go on");
    assert_eq!(seq, 2);
    assert_eq!(a.child.try_wait().unwrap(), None, "node a still runs");
    assert_eq!(b.child.try_wait().unwrap(), None, "node b still runs");
    let log = common::plain(&a.log());
    assert_eq!(log.matches("redis: unavailable").count(), 1, "one warning per outage:\n{log}");
    assert_eq!(log.matches("redis: reachable again").count(), 1, "one line when it ends:\n{log}");
    let _ = (&mut a, &mut b);
}

#[test]
fn who_and_rooms_answer_for_the_cluster_and_a_nickname_is_one_members_across_nodes() {
    let Some(redis) = RedisServer::start(None) else { return };
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    let mut ann = member(&a, "room=den&nick=ann");
    let (_ben, welcome) = ChatClient::join(b.addr, "room=den&nick=ben");
    assert_eq!(welcome["members"], serde_json::json!(["ann", "ben"]), "the welcome lists both nodes' members");
    let _cat = member(&c, "room=attic&nick=cat");
    ann.say("/who");
    assert_eq!(ann.until("who")["members"], serde_json::json!(["ann", "ben"]));
    ann.say("/rooms");
    let rooms = ann.until("rooms");
    assert_eq!(
        rooms["rooms"],
        serde_json::json!([{"name": "attic", "members": 1}, {"name": "den", "members": 2}, {"name": "lobby", "members": 0}]),
        "{rooms}"
    );
    // Two nodes, one nickname, at once: exactly one gets it.
    let racers: Vec<_> = [a.addr, b.addr]
        .into_iter()
        .map(|addr| {
            std::thread::spawn(move || {
                let (mut client, welcome) = ChatClient::join(addr, "room=den&nick=zed");
                let nick = welcome["nick"].as_str().unwrap().to_string();
                let error = (nick != "zed").then(|| client.expect("error")["code"].clone());
                (nick, error, client)
            })
        })
        .collect();
    let got: Vec<(String, Option<Value>, ChatClient)> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        got.iter().filter(|(nick, ..)| nick == "zed").count(),
        1,
        "{:?}",
        got.iter().map(|g| &g.0).collect::<Vec<_>>()
    );
    let (loser, error, _) = got.iter().find(|(nick, ..)| nick != "zed").unwrap();
    assert!(loser.starts_with("guest-"), "{loser}");
    assert_eq!(error.as_ref().unwrap(), "nick_taken");
    // /nick to a name another node's member has: refused.
    ann.say("/nick ben");
    assert_eq!(ann.until("error")["code"], "nick_taken");
    ann.say("/nick anna");
    let renamed = ann.until("nick");
    assert_eq!((renamed["old"].as_str(), renamed["nick"].as_str()), (Some("ann"), Some("anna")));
}

#[test]
fn a_node_killed_outright_is_gone_from_its_rooms_within_the_lease() {
    let Some(redis) = RedisServer::start(None) else { return };
    let (mut a, b) = (node(&redis), node(&redis));
    let _alice = member(&a, "room=den&nick=alice");
    let mut bob = member(&b, "room=den&nick=bob");
    bob.say("/who");
    assert_eq!(bob.until("who")["members"], serde_json::json!(["alice", "bob"]));
    a.child.kill().unwrap(); // SIGKILL: no goodbye
    a.child.wait().unwrap();
    let killed = Instant::now();
    bob.raw.stream.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let leave = bob.until("leave");
    let took = killed.elapsed();
    assert_eq!(leave["nick"], "alice");
    assert!(took <= Duration::from_secs(30), "alice left {took:?} after her node died");
    eprintln!("alice's leave came {took:?} after her node was killed");
    bob.say("/who");
    assert_eq!(bob.until("who")["members"], serde_json::json!(["bob"]));
    let (_, welcome) = ChatClient::join(b.addr, "room=den&nick=alice");
    assert_eq!(welcome["nick"], "alice", "her nickname is free again");
}

#[test]
fn a_node_that_shuts_down_says_goodbye_at_once() {
    let Some(redis) = RedisServer::start(None) else { return };
    let (a, b) = (node(&redis), node(&redis));
    let mut alice = member(&a, "room=den&nick=alice");
    let mut bob = member(&b, "room=den&nick=bob");
    alice.until("join");
    a.signal("TERM");
    assert_eq!(alice.raw.read_close().close_code(), Some(1001));
    alice.raw.send_close(1001, "");
    let stopped = Instant::now();
    let leave = bob.until("leave");
    assert_eq!(leave["nick"], "alice");
    assert!(stopped.elapsed() < Duration::from_secs(3), "not the lease's 20 s: {:?}", stopped.elapsed());
    // Her nickname is free at once too.
    let (_, welcome) = ChatClient::join(b.addr, "room=den&nick=alice");
    assert_eq!(welcome["nick"], "alice");
    let mut a = a;
    assert_eq!(a.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!common::plain(&a.log()).contains("WARN"), "a clean stop warns of nothing:\n{}", a.log());
}

#[test]
fn members_who_left_while_redis_was_down_are_gone_from_the_cluster_when_it_is_back() {
    let Some(mut redis) = RedisServer::start(None) else { return };
    let (a, b) = (node(&redis), node(&redis));
    let mut alice = member(&a, "room=den&nick=alice");
    let bob = member(&a, "room=den&nick=bob");
    let mut carol = member(&b, "room=den&nick=carol");
    alice.until("join");
    alice.until("join");
    carol.say("/who");
    assert_eq!(carol.until("who")["members"], serde_json::json!(["alice", "bob", "carol"]));
    redis.stop();
    drop(bob); // gone while nobody can tell Redis
    assert_eq!(alice.until("leave")["nick"], "bob", "his own node's members hear at once");
    std::thread::sleep(Duration::from_secs(1));
    redis.start_again();
    // Once Redis is back the cluster no longer lists him. (His `leave` is
    // published then too; a node still reconnecting at that moment misses
    // it, as pub/sub keeps nothing: `/who` is what is right.)
    let start = Instant::now();
    loop {
        carol.say("/who");
        // (`unavailable` until carol's own node is back.)
        let who = loop {
            let event = carol.event();
            if event["type"] == "who" || event["type"] == "error" {
                break event;
            }
        };
        if who["members"] == serde_json::json!(["alice", "carol"]) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "still {who}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, welcome) = ChatClient::join(b.addr, "room=den&nick=bob");
    assert_eq!(welcome["nick"], "bob", "his nickname is free");
}

#[test]
fn a_node_that_missed_more_than_the_stream_keeps_goes_on_from_what_it_keeps() {
    let Some(redis) = RedisServer::start(None) else { return };
    // Streams trimmed tightly: `MAXLEN ~ 3` keeps whole nodes of 2 entries.
    redis.command(&[b"CONFIG", b"SET", b"stream-node-max-entries", b"2"]);
    let args = ["--redis", &redis.url(), "--rate-limit", "0", "--history", "3"];
    let (a, b) = (Spawned::start(&args), Spawned::start(&args));
    let mut alice = member(&a, "room=den&nick=alice");
    let mut carol = member(&b, "room=den&nick=carol");
    alice.until("join");
    alice.say("before");
    assert_eq!(messages(&read_messages(&mut carol, 1))[0].1, "before");
    // Carol's node's link is cut (Redis stays up, its command connection
    // is named after its process): while it reconnects, alice's messages
    // are numbered and reach only alice's node.
    let name = format!("name=rust-chat:{}", b.child.id());
    let clients = redis.command(&[b"CLIENT", b"LIST"]);
    let list = String::from_utf8(rust_chat::broker::resp::as_bytes(&clients).unwrap().to_vec()).unwrap();
    let line = list.lines().find(|l| l.split(' ').any(|f| f == name)).unwrap_or_else(|| panic!("{name} in {list}"));
    let id = line.split(' ').find_map(|f| f.strip_prefix("id=")).unwrap();
    redis.command(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()]);
    for i in 1..=20 {
        alice.say(&format!("m{i}"));
    }
    // Carol's node reads back what the stream still holds, then goes on live.
    std::thread::sleep(Duration::from_secs(1));
    alice.say("live");
    let got = messages(&read_messages(&mut carol, 1));
    let mut all = got.clone();
    while all.last().map(|(_, t)| t.as_str()) != Some("live") {
        all.extend(messages(&read_messages(&mut carol, 1)));
    }
    let seqs: Vec<u64> = all.iter().map(|(seq, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "in order, no repeat: {seqs:?}");
    assert_eq!(all.last().unwrap().0, 22, "{all:?}");
    assert!(all.len() < 21, "the stream kept only a few of the 20: {all:?}");
}
