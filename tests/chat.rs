//! The chat service over real TCP, spoken to in raw frames and JSON events.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
