//! The chat service over real TCP, spoken to in raw frames and JSON events.

mod common;

use common::*;
use rust_chat::Config;
use serde_json::{Value, json};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn no_rate_limit() -> Config {
    config(|c| {
        c.chat.rate_limit_per_sec = 0;
    })
}

#[test]
fn welcome_join_message_nick_leave() {
    let server = TestServer::start();
    let (mut a, mut welcome) = ChatClient::join(server.addr, "");
    let epoch = welcome.as_object_mut().unwrap().remove("epoch").unwrap();
    assert!(epoch.as_str().is_some_and(|e| e.len() == 16 && e.bytes().all(|b| b.is_ascii_hexdigit())), "{epoch}");
    assert_eq!(
        welcome,
        json!({"type": "welcome", "nick": "guest-1", "room": "lobby", "members": ["guest-1"], "seq": 0, "history": []})
    );

    let (mut b, welcome) = ChatClient::join(server.addr, "");
    assert_eq!(welcome["members"], json!(["guest-1", "guest-2"]));
    assert_eq!(a.expect("join"), json!({"type": "join", "room": "lobby", "nick": "guest-2"}));

    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    a.say("hello, lobby");
    for client in [&mut a, &mut b] {
        let message = client.expect("message");
        assert_eq!(message["nick"], "guest-1");
        assert_eq!(message["room"], "lobby");
        assert_eq!(message["text"], "hello, lobby");
        assert_eq!(message["seq"], 1);
        let time = message["time"].as_u64().unwrap();
        assert!(time >= before && time < before + 10_000, "server time in ms: {time}");
    }

    b.say("/nick bob");
    for client in [&mut a, &mut b] {
        assert_eq!(client.expect("nick"), json!({"type": "nick", "room": "lobby", "old": "guest-2", "nick": "bob"}));
    }

    b.raw.send_close(1000, "bye");
    assert_eq!(a.expect("leave"), json!({"type": "leave", "room": "lobby", "nick": "bob"}));
}

#[test]
fn the_blogs_snippet_path_joins_the_lobby() {
    // `new WebSocket('ws://127.0.0.1:10000')` asks for `/`.
    let server = TestServer::start();
    let mut client = RawClient::open(server.addr, "/");
    let welcome: Value = serde_json::from_slice(&client.read_frame().payload).unwrap();
    assert_eq!((welcome["type"].as_str(), welcome["room"].as_str()), (Some("welcome"), Some("lobby")));
    client.send_text("hi");
    let message: Value = serde_json::from_slice(&client.read_frame().payload).unwrap();
    assert_eq!(message["text"], "hi");
}

#[test]
fn the_query_chooses_room_and_nick_and_bad_choices_get_errors() {
    let server = TestServer::start();
    let (_alice, welcome) = ChatClient::join(server.addr, "room=Den&nick=alice");
    assert_eq!((welcome["room"].as_str(), welcome["nick"].as_str()), (Some("den"), Some("alice")));
    let (mut other, welcome) = ChatClient::join(server.addr, "nick=ALICE&room=bad%20name");
    assert_eq!((welcome["room"].as_str(), welcome["nick"].as_str()), (Some("lobby"), Some("guest-1")));
    assert_eq!(other.expect("error")["code"], "invalid_room");
    assert_eq!(other.expect("error")["code"], "nick_taken");
    let (mut third, _) = ChatClient::join(server.addr, &format!("nick={}", "x".repeat(33)));
    assert_eq!(third.expect("error")["code"], "invalid_nick");
}

#[test]
fn every_command() {
    let server = TestServer::with_config(no_rate_limit());
    let (mut a, _) = ChatClient::join(server.addr, "nick=alice");
    let (mut b, _) = ChatClient::join(server.addr, "nick=bob");
    a.expect("join");

    a.say("/who");
    assert_eq!(a.expect("who"), json!({"type": "who", "room": "lobby", "members": ["alice", "bob"]}));

    a.say("/me waves");
    for client in [&mut a, &mut b] {
        let event = client.expect("message");
        assert_eq!((event["text"].as_str(), event["action"].as_bool()), (Some("waves"), Some(true)));
    }
    a.say("//slash at the start");
    assert_eq!(b.expect("message")["text"], "/slash at the start");
    a.expect("message");

    a.say("/help");
    let help = a.expect("help");
    let usages: Vec<&str> = help["commands"].as_array().unwrap().iter().map(|c| c["usage"].as_str().unwrap()).collect();
    for command in ["/nick NAME", "/join ROOM", "/who", "/rooms", "/me ACTION", "/help"] {
        assert!(usages.contains(&command), "{usages:?}");
    }

    a.say("/join Den");
    let welcome = a.expect("welcome");
    assert_eq!((welcome["room"].as_str(), &welcome["members"]), (Some("den"), &json!(["alice"])));
    assert_eq!(b.expect("leave"), json!({"type": "leave", "room": "lobby", "nick": "alice"}));

    b.say("/rooms");
    assert_eq!(
        b.expect("rooms"),
        json!({"type": "rooms", "rooms": [{"name": "den", "members": 1}, {"name": "lobby", "members": 1}]})
    );
    b.say("/join den");
    b.expect("welcome");
    assert_eq!(a.expect("join")["nick"], "bob");
    // The room went away with its last member; the lobby stays.
    b.say("/rooms");
    assert_eq!(b.expect("rooms")["rooms"], json!([{"name": "den", "members": 2}, {"name": "lobby", "members": 0}]));

    for (text, code) in [
        ("/dance", "unknown_command"),
        ("/nick", "bad_argument"),
        ("/nick not valid!", "bad_argument"),
        ("/nick bad!", "invalid_nick"),
        ("/nick alice", "nick_taken"),
        ("/join", "bad_argument"),
        ("/join den", "already_in_room"),
        ("/join no/slash", "invalid_room"),
        ("/me", "bad_argument"),
        ("", "empty_message"),
    ] {
        b.say(text);
        let error = b.expect("error");
        assert_eq!(error["code"], code, "{text:?}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }

    // Binary frames get an error event, not a disconnect.
    b.raw.send_frame(true, BINARY, &[1, 2, 3]);
    assert_eq!(b.expect("error")["code"], "binary_not_supported");
    b.say("still here");
    assert_eq!(b.expect("message")["text"], "still here");
    assert_eq!(a.expect("message")["text"], "still here");
}

#[test]
fn history_arrives_in_welcome_and_on_join() {
    let server = TestServer::with_config(with(no_rate_limit(), |c| {
        c.chat.history_len = 3;
    }));
    let (mut a, _) = ChatClient::join(server.addr, "room=den");
    for i in 1..=5 {
        a.say(&format!("message {i}"));
        a.expect("message");
    }
    let (_b, welcome) = ChatClient::join(server.addr, "room=den");
    let texts: Vec<&str> = welcome["history"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["message 3", "message 4", "message 5"]);
    let seqs: Vec<u64> = welcome["history"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 4, 5]);

    let (mut c, welcome) = ChatClient::join(server.addr, "");
    assert_eq!(welcome["history"], json!([]));
    c.say("/join den");
    let texts: Vec<String> =
        c.expect("welcome")["history"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap().into()).collect();
    assert_eq!(texts, ["message 3", "message 4", "message 5"]);
}

/// The `text` of each `message` in `welcome`'s history.
fn history_texts(welcome: &Value) -> Vec<String> {
    welcome["history"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_client_that_reconnects_with_since_gets_what_it_missed_or_is_told_it_cannot() {
    let server = TestServer::with_config(with(no_rate_limit(), |c| c.chat.history_len = 5));
    let (mut a, welcome) = ChatClient::join(server.addr, "room=den&nick=alice");
    let epoch = welcome["epoch"].as_str().unwrap().to_string();
    a.say("one");
    let seen = a.expect("message")["seq"].as_u64().unwrap();
    assert_eq!(seen, 1);
    // Bob leaves after "one"; alice says three more while he is away.
    let (bob, _) = ChatClient::join(server.addr, "room=den&nick=bob");
    drop(bob);
    a.expect("join");
    a.expect("leave");
    for text in ["two", "three", "four"] {
        a.say(text);
        a.expect("message");
    }
    // He comes back with where he was: exactly the three he missed, then live ones.
    let (mut bob, welcome) = ChatClient::join(server.addr, &format!("room=den&nick=bob&since={seen}&epoch={epoch}"));
    assert_eq!(welcome["recovered"], true, "{welcome}");
    assert_eq!((welcome["epoch"].as_str(), welcome["seq"].as_u64()), (Some(&*epoch), Some(4)));
    assert_eq!(history_texts(&welcome), ["two", "three", "four"]);
    a.say("five");
    assert_eq!(bob.expect("message")["text"], "five");
    // Up to date already: recovered, nothing repeated.
    let (_c, welcome) = ChatClient::join(server.addr, &format!("room=den&since=5&epoch={epoch}"));
    assert_eq!((welcome["recovered"].as_bool(), history_texts(&welcome).len()), (Some(true), 0));
    // Too long away: the history (5 messages) no longer reaches back to 2.
    for i in 6..=9 {
        a.say(&format!("m{i}"));
        a.until("message");
    }
    let (_d, welcome) = ChatClient::join(server.addr, &format!("room=den&since=1&epoch={epoch}"));
    assert_eq!(welcome["recovered"], false);
    assert_eq!(history_texts(&welcome), ["five", "m6", "m7", "m8", "m9"], "the usual recent history");
    // Another epoch (a restarted server, or a room made again): false, whatever the number.
    let (_e, welcome) = ChatClient::join(server.addr, "room=den&since=8&epoch=0123456789abcdef");
    assert_eq!(welcome["recovered"], false);
    // A number from the future, or none that parses: false.
    for since in ["100", "x"] {
        let (_f, welcome) = ChatClient::join(server.addr, &format!("room=den&since={since}&epoch={epoch}"));
        assert_eq!(welcome["recovered"], false, "since={since}");
    }
    // Without `since` nothing is said about recovery.
    let (_g, welcome) = ChatClient::join(server.addr, "room=den");
    assert!(welcome.get("recovered").is_none());
}

#[test]
fn a_room_made_again_and_a_restarted_server_start_a_new_epoch() {
    let server = TestServer::with_config(no_rate_limit());
    let (a, welcome) = ChatClient::join(server.addr, "room=den");
    let first = welcome["epoch"].as_str().unwrap().to_string();
    let (_b, welcome) = ChatClient::join(server.addr, "room=den");
    assert_eq!(welcome["epoch"], first.as_str(), "same room, same epoch");
    let lobby = ChatClient::join(server.addr, "").1["epoch"].as_str().unwrap().to_string();
    assert_ne!(lobby, first, "each room has its own");
    drop((a, _b));
    // Both gone: the room is removed; made again, it counts from 1 in a new epoch.
    std::thread::sleep(Duration::from_millis(200));
    let (_c, welcome) = ChatClient::join(server.addr, "room=den");
    assert_ne!(welcome["epoch"], first.as_str());
    assert_eq!(welcome["seq"], 0);
    // A new server: the lobby too has a new epoch.
    let other = TestServer::with_config(no_rate_limit());
    assert_ne!(ChatClient::join(other.addr, "").1["epoch"], lobby.as_str());
}

#[test]
fn text_length_limit_at_its_edge() {
    let server = TestServer::start();
    let (mut a, _) = ChatClient::join(server.addr, "");
    let exact = "é".repeat(2048); // 4096 bytes of UTF-8
    a.say(&exact);
    assert_eq!(a.expect("message")["text"], exact.as_str());
    a.say(&format!("{exact}x"));
    assert_eq!(a.expect("error")["code"], "message_too_long");
}

#[test]
fn room_and_member_limits_at_their_edges() {
    let config = with(no_rate_limit(), |c| {
        c.chat.max_rooms = 2;
        c.chat.max_room_members = 2;
    });
    let server = TestServer::with_config(config);
    let (mut a, _) = ChatClient::join(server.addr, "");
    let (_b, _) = ChatClient::join(server.addr, "");
    a.expect("join");
    // The lobby has its two members: a third is turned away with 1008.
    let mut c = RawClient::open(server.addr, "/chat");
    let close = c.read_close();
    assert_eq!(close.close_code(), Some(1008));
    assert_eq!(&close.payload[2..], b"the lobby is full");

    let (mut d, _) = ChatClient::join(server.addr, "room=den");
    a.say("/join third");
    assert_eq!(a.expect("error")["code"], "too_many_rooms");
    let (_e, _) = ChatClient::join(server.addr, "room=den");
    d.expect("join");
    a.say("/join den");
    assert_eq!(a.expect("error")["code"], "room_full");
}

#[test]
fn a_burst_over_the_rate_arrives_whole_and_in_order_only_later() {
    // The defaults: 10 a second, bursts of 20. A paste of 50 lines used to
    // lose 30 of them to `rate_limited` errors; now the server reads the
    // sender more slowly instead.
    let server = TestServer::start();
    let (mut sender, _) = ChatClient::join(server.addr, "nick=paster");
    let (mut reader, _) = ChatClient::join(server.addr, "nick=reader");
    sender.expect("join");
    let mut wire = Vec::new();
    for i in 0..50 {
        wire.extend(sender.raw.frame_bytes(true, TEXT, format!("line {i}").as_bytes()));
    }
    // A command counts as a message too, and waits its turn.
    wire.extend(sender.raw.frame_bytes(true, TEXT, b"/who"));
    let started = Instant::now();
    sender.raw.send_raw(&wire);
    let texts: Vec<String> = (0..50).map(|_| reader.expect("message")["text"].as_str().unwrap().to_string()).collect();
    let took = started.elapsed();
    let expected: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
    assert_eq!(texts, expected);
    // 30 past the burst at 10 a second: about 3 s (a lower bound, so no flake on a slow machine).
    assert!(took >= Duration::from_millis(2500), "the rate did not apply: {took:?}");
    // The sender got its own 50 in the same order, no error among them, then its /who.
    let own: Vec<Value> = (0..50).map(|_| sender.event()).collect();
    assert!(own.iter().all(|e| e["type"] == "message"), "{own:?}");
    assert_eq!(own[49]["text"], "line 49");
    assert_eq!(sender.expect("who")["members"], json!(["paster", "reader"]));
}

#[test]
fn broadcast_order_is_the_same_for_every_member() {
    let server = TestServer::with_config(no_rate_limit());
    const CLIENTS: usize = 4;
    const EACH: usize = 200;
    let mut clients: Vec<ChatClient> = (0..CLIENTS).map(|_| ChatClient::join(server.addr, "").0).collect();
    // Let every join reach everyone before the talking starts.
    for (i, client) in clients.iter_mut().enumerate() {
        for _ in i + 1..CLIENTS {
            client.expect("join");
        }
    }
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            std::thread::spawn(move || {
                let mut writer = client.raw.stream.try_clone().unwrap();
                let mut wire = Vec::new();
                for n in 0..EACH {
                    wire.extend(client.raw.frame_bytes(true, TEXT, format!("{i}:{n}").as_bytes()));
                }
                let sender = std::thread::spawn(move || writer.write_all(&wire).unwrap());
                let got: Vec<(u64, String)> = (0..CLIENTS * EACH)
                    .map(|_| {
                        let event = client.expect("message");
                        (event["seq"].as_u64().unwrap(), event["text"].as_str().unwrap().to_string())
                    })
                    .collect();
                sender.join().unwrap();
                got
            })
        })
        .collect();
    let results: Vec<Vec<(u64, String)>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let seqs: Vec<u64> = results[0].iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=(CLIENTS * EACH) as u64).collect::<Vec<_>>(), "contiguous seq");
    for other in &results[1..] {
        assert_eq!(other, &results[0], "every member sees the same order");
    }
    // Each sender's messages keep the order it sent them in.
    for i in 0..CLIENTS {
        let mine: Vec<usize> = results[0]
            .iter()
            .filter_map(|(_, text)| text.strip_prefix(&format!("{i}:")).map(|n| n.parse().unwrap()))
            .collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>());
    }
}

#[test]
fn a_large_room_gets_every_burst_whole_and_in_order() {
    // 200 members: the write phase of a turn is long enough that the server
    // stops to read new input in the middle of it (every 64 writes), and
    // that input joins the writes still to come. Three senders spread over
    // the room each send a burst; every member must see all 300 messages,
    // once each, in one order shared by all.
    let server = TestServer::with_config(no_rate_limit());
    const MEMBERS: usize = 200;
    const EACH: usize = 100;
    let mut members: Vec<ChatClient> = (0..MEMBERS).map(|_| ChatClient::join(server.addr, "").0).collect();
    let senders = [0, MEMBERS / 2, MEMBERS - 1];
    for (s, &i) in senders.iter().enumerate() {
        let client = &mut members[i];
        let wire: Vec<u8> =
            (0..EACH).flat_map(|n| client.raw.frame_bytes(true, TEXT, format!("{s}:{n}").as_bytes())).collect();
        client.raw.stream.write_all(&wire).unwrap();
    }
    let mut first: Option<Vec<(u64, String)>> = None;
    for (i, member) in members.iter_mut().enumerate() {
        let got: Vec<(u64, String)> = (0..senders.len() * EACH)
            .map(|_| {
                let event = member.until("message");
                (event["seq"].as_u64().unwrap(), event["text"].as_str().unwrap().to_string())
            })
            .collect();
        match &first {
            None => {
                let seqs: Vec<u64> = got.iter().map(|(seq, _)| *seq).collect();
                assert_eq!(seqs, (1..=(senders.len() * EACH) as u64).collect::<Vec<_>>(), "contiguous seq");
                for s in 0..senders.len() {
                    let mine: Vec<usize> = got
                        .iter()
                        .filter_map(|(_, text)| text.strip_prefix(&format!("{s}:")).map(|n| n.parse().unwrap()))
                        .collect();
                    assert_eq!(mine, (0..EACH).collect::<Vec<_>>(), "sender {s} in its own order");
                }
                first = Some(got);
            }
            Some(first) => assert_eq!(&got, first, "member {i} saw what member 0 saw"),
        }
    }
}

#[test]
fn a_member_that_vanishes_leaves_its_room() {
    let server = TestServer::start();
    let (mut a, _) = ChatClient::join(server.addr, "nick=stays");
    let (mut b, _) = ChatClient::join(server.addr, "nick=vanishes");
    a.expect("join");
    // b has unread events (its own message) when it drops: the kernel sends RST.
    b.say("about to vanish");
    a.expect("message");
    let start = Instant::now();
    let mut peek = [0u8; 1];
    while b.raw.stream.peek(&mut peek).unwrap_or(0) == 0 && start.elapsed() < PATIENCE {}
    drop(b);
    assert_eq!(a.expect("leave"), json!({"type": "leave", "room": "lobby", "nick": "vanishes"}));
    a.say("/who");
    assert_eq!(a.expect("who")["members"], json!(["stays"]));
}

#[test]
fn plain_http_to_the_chat_socket_path_is_426_and_unknown_paths_404() {
    let server = TestServer::start();
    let mut client = RawClient::connect(server.addr);
    client.send_raw(b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(client.read_http_response().starts_with("HTTP/1.1 426 "));
    let mut client = RawClient::connect(server.addr);
    client.send_raw(&upgrade_request("/room/lobby"));
    assert!(client.read_http_response().starts_with("HTTP/1.1 404 "));
}

#[test]
fn a_slow_consumer_is_closed_while_everyone_else_gets_everything() {
    let server = Spawned::start(&["--rate-limit", "0", "--close-timeout", "30s"]);
    let (mut stalled, _) = ChatClient::join(server.addr, "nick=stalled");
    let (mut listener, _) = ChatClient::join(server.addr, "nick=listener");
    let (mut talker, _) = ChatClient::join(server.addr, "nick=talker");
    stalled.raw.stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    listener.expect("join");
    talker.raw.stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (base_rss, _) = server.memory_kib();

    // 16,000 messages of 4,000 bytes: 64 MB that the stalled client never
    // reads. They go out in batches paced by the listener and the talker
    // (which hears itself), as a rate limit would pace them, so that only
    // the stalled client falls behind, however the test threads are scheduled.
    const COUNT: usize = 16_000;
    const BATCH: usize = 100;
    let text = "x".repeat(4000);
    let mut writer = talker.raw.stream.try_clone().unwrap();
    let batch: Vec<Vec<u8>> = (0..COUNT / BATCH)
        .map(|_| (0..BATCH).flat_map(|_| talker.raw.frame_bytes(true, TEXT, text.as_bytes())).collect())
        .collect();
    // The talker hears itself too, so it must read as well.
    let talker_heard = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let heard = std::sync::Arc::clone(&talker_heard);
    let talker_reader = std::thread::spawn(move || {
        let mut seqs = Vec::with_capacity(COUNT);
        while seqs.len() < COUNT {
            let event = talker.event();
            if event["type"] == "message" {
                seqs.push(event["seq"].as_u64().unwrap());
                heard.store(seqs.len(), std::sync::atomic::Ordering::Release);
            }
        }
        seqs
    });
    let mut seqs = Vec::with_capacity(COUNT);
    let mut saw_leave = false;
    for wire in &batch {
        writer.write_all(wire).unwrap();
        let target = seqs.len() + BATCH;
        while seqs.len() < target {
            let event = listener.event();
            match event["type"].as_str() {
                Some("message") => seqs.push(event["seq"].as_u64().unwrap()),
                Some("leave") if event["nick"] == "stalled" => saw_leave = true,
                _ => panic!("unexpected {event}"),
            }
        }
        let waiting_since = Instant::now();
        while talker_heard.load(std::sync::atomic::Ordering::Acquire) < target {
            assert!(waiting_since.elapsed() < Duration::from_secs(30), "the talker stopped hearing itself");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let expected: Vec<u64> = (1..=COUNT as u64).collect();
    assert_eq!(seqs, expected, "the listener got every message, in order");
    assert_eq!(talker_reader.join().unwrap(), expected, "and so did the talker");

    let (_, peak_rss) = server.memory_kib();
    let growth_mib = peak_rss.saturating_sub(base_rss) / 1024;
    eprintln!("server RSS: base {base_rss} KiB, peak {peak_rss} KiB (+{growth_mib} MiB for 64 MB sent)");
    assert!(growth_mib < 24, "server memory grew by {growth_mib} MiB: the stalled client's share was kept");
    assert!(saw_leave, "the stalled member left the room");

    // When it finally reads, the stalled client finds a Close 1008 after what it had.
    let close = stalled.raw.read_close();
    assert_eq!(close.close_code(), Some(1008));
    assert!(String::from_utf8_lossy(&close.payload[2..]).contains("slow consumer"));
}

#[test]
fn chat_messages_over_the_text_limit_are_read_past_without_being_held() {
    // Ten members each streaming one 15 MiB frame: once, 8 MB became 162 MB.
    let server = Spawned::start(&[]);
    let mut members: Vec<RawClient> = (0..10)
        .map(|_| {
            let mut client = RawClient::open(server.addr, "/chat");
            let _welcome = client.read_frame();
            client
        })
        .collect();
    let (base, _) = server.memory_kib();
    let body = vec![b'x'; 15 << 20];
    let key = [1, 2, 3, 4];
    let frame = client_frame(true, TEXT, &body, key);
    // Everyone sends all but the last byte, so every message is still arriving at once.
    for member in members.iter_mut() {
        member.send_raw(&frame[..frame.len() - 1]);
    }
    let (middle, _) = server.memory_kib();
    for member in members.iter_mut() {
        member.send_raw(&frame[frame.len() - 1..]);
    }
    for member in members.iter_mut() {
        let error: serde_json::Value = loop {
            let event: serde_json::Value = serde_json::from_slice(&member.read_frame().payload).unwrap();
            if event["type"] == "error" {
                break event;
            }
        };
        assert_eq!(error["code"], "message_too_long", "{error}");
    }
    let (_, peak) = server.memory_kib();
    let growth_mib = peak.saturating_sub(base) / 1024;
    eprintln!("ten 15 MiB chat frames: RSS {base} -> {middle} KiB mid-way, peak grew {growth_mib} MiB");
    assert!(growth_mib < 8, "the server held {growth_mib} MiB for ten over-long chat messages");
    // Every member is still in the chat.
    members[0].send_text("still here");
    for member in members.iter_mut() {
        let said: serde_json::Value = loop {
            let event: serde_json::Value = serde_json::from_slice(&member.read_frame().payload).unwrap();
            if event["type"] == "message" {
                break event;
            }
        };
        assert_eq!(said["text"], "still here");
    }
}

#[test]
fn a_member_that_keeps_up_survives_other_members_bursts() {
    // Three members bursting 20 messages of 4,000 bytes each at once: more
    // than the 64 KiB cap reaches a reader within one turn of the loop, which
    // once closed it as a slow consumer though it read at full speed. (A
    // member that does not read at all is closed still: see
    // a_slow_consumer_is_closed_while_everyone_else_gets_everything.)
    let server = Spawned::start(&["--rate-limit", "0", "--max-outgoing-bytes", "64KiB", "--slow-consumer-grace", "1s"]);
    let (mut reader, _) = ChatClient::join(server.addr, "nick=reader");
    let mut senders: Vec<ChatClient> = (0..3).map(|i| ChatClient::join(server.addr, &format!("nick=s{i}")).0).collect();
    let text = "y".repeat(4000);
    let bursts: Vec<Vec<u8>> = senders
        .iter_mut()
        .map(|sender| (0..20).flat_map(|_| sender.raw.frame_bytes(true, TEXT, text.as_bytes())).collect())
        .collect();
    // The senders hear themselves too, and read it (a sender that did not
    // would be held back by backpressure, then closed itself).
    let drains: Vec<_> = senders
        .iter()
        .map(|sender| {
            let mut stream = sender.raw.stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut sink = vec![0u8; 1 << 16];
                let mut total = 0usize;
                while total < 60 * 4000 {
                    match std::io::Read::read(&mut stream, &mut sink) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
            })
        })
        .collect();
    for (sender, burst) in senders.iter_mut().zip(&bursts) {
        sender.raw.send_raw(burst);
    }
    let mut heard = 0;
    while heard < 60 {
        let event = reader.event();
        match event["type"].as_str() {
            Some("message") => heard += 1,
            Some("join") => {}
            _ => panic!("the reader got {event}"),
        }
    }
    for drain in drains {
        drain.join().unwrap();
    }
    // The reader is still in.
    senders[0].say("one more");
    assert_eq!(reader.until("message")["text"], "one more");
}

#[test]
fn at_debug_the_log_follows_each_connection_by_an_id_with_its_origin_nick_and_room() {
    let server = Spawned::start_logging("debug", &["--allowed-origin", "http://app.example"]);
    let mut ids = Vec::new();
    for nick in ["zoe", "yan"] {
        let mut client = RawClient::connect(server.addr);
        let request = String::from_utf8(upgrade_request(&format!("/chat?nick={nick}&room=den"))).unwrap();
        let request = request.replacen("\r\n\r\n", "\r\nOrigin: http://app.example\r\n\r\n", 1);
        client.send_raw(request.as_bytes());
        assert!(client.read_http_head().starts_with("HTTP/1.1 101"));
        let _welcome = client.read_frame();
        client.send_close(1000, "");
        client.read_close();
        assert!(client.wait_eof());
        drop(client);
        std::thread::sleep(Duration::from_millis(200));
        let log = plain(&server.log());
        let id = log
            .lines()
            .find(|l| l.contains("chat: joined") && l.contains(&format!("nick={nick}")))
            .and_then(|l| l.split("conn=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("a 'chat: joined' line for {nick}:\n{log}"));
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "one slot, used twice, never the same id");
    let log = plain(&server.log());
    for (id, nick) in ids.iter().zip(["zoe", "yan"]) {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&format!("conn={id} "))).collect();
        let all = lines.join("\n");
        for part in
            ["accepted", "upgrade accepted", "origin=Some(\"http://app.example\")", "chat: joined", "chat: left"]
        {
            assert!(all.contains(part), "{part:?} missing for conn {id}:\n{all}");
        }
        assert!(all.contains(&format!("nick={nick} room=den")), "{all}");
        assert!(lines.last().unwrap().contains("closed") && all.contains("clean=true"), "{all}");
    }
}
