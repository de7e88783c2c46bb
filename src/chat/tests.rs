use super::*;
use crate::app::Hub;
use crate::app::topics::{Outbox, RUN_LIMIT};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

fn id(index: usize) -> ConnId {
    ConnId { index, generation: index as u64 }
}

/// A chat with the hub its connections share, driven the way the server
/// drives an [`App`], but through detached contexts: everything the chat
/// sends, to one connection or to a room, lands in the hub's outbox.
struct TestChat {
    chat: Chat,
    hub: Hub,
    conns: HashMap<ConnId, ChatConn>,
    now: Instant,
}

impl TestChat {
    fn new(config: ChatConfig, run_limit: usize, clock: fn() -> u64) -> TestChat {
        TestChat {
            chat: Chat::new(config),
            hub: Hub::new(run_limit, clock),
            conns: HashMap::new(),
            now: Instant::now(),
        }
    }

    /// What `on_open` does, but with the refusal returned instead of a close
    /// (which a detached context cannot do).
    fn connect(&mut self, id: ConnId, query: &str) -> Result<(), Refusal> {
        let conn = ChatConn { query: query.into() };
        let mut ctx = Context::detached(id, self.now, &mut self.hub);
        self.chat.connect(&conn.query, &mut ctx)?;
        self.conns.insert(id, conn);
        Ok(())
    }

    fn text(&mut self, id: ConnId, text: &str) {
        self.text_at(id, text, self.now);
    }

    fn text_at(&mut self, id: ConnId, text: &str, when: Instant) {
        self.message(id, Message::Text(text), when);
    }

    fn binary(&mut self, id: ConnId) {
        self.message(id, Message::Binary(b"\x00\x01"), self.now);
    }

    fn message(&mut self, id: ConnId, message: Message<'_>, when: Instant) {
        let conn = self.conns.entry(id).or_default();
        let mut ctx = Context::detached(id, when, &mut self.hub);
        self.chat.on_message(conn, message, &mut ctx);
    }

    /// What the server does when a connection ends: `on_close`, then it
    /// leaves every topic.
    fn disconnect(&mut self, id: ConnId) {
        let conn = self.conns.remove(&id).unwrap_or_default();
        let mut ctx = Context::detached(id, self.now, &mut self.hub);
        self.chat.on_close(conn, &Closed::from_info(None), &mut ctx);
        self.hub.topics.unsubscribe_all(id);
    }

    fn outbox(&mut self) -> &mut Outbox {
        self.hub.topics.outbox()
    }

    /// The events each connection received, decoded from the outbox.
    fn drain(&mut self) -> HashMap<ConnId, Vec<Value>> {
        let mut got: HashMap<ConnId, Vec<Value>> = HashMap::new();
        for (frame, to) in self.outbox().iter() {
            let event: Value = serde_json::from_slice(frame.payload()).unwrap();
            for conn in to {
                got.entry(*conn).or_default().push(event.clone());
            }
        }
        self.outbox().clear();
        got
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn chat_with(config: ChatConfig) -> (TestChat, Instant) {
    let chat = TestChat::new(config, RUN_LIMIT, || 0);
    let now = chat.now;
    (chat, now)
}

#[test]
fn names() {
    assert!(is_valid_name("a"));
    assert!(is_valid_name("Alice_the-2nd"));
    assert!(is_valid_name(&"x".repeat(32)));
    for bad in ["", &"x".repeat(33), "a b", "é", "a/b", "<script>"] {
        assert!(!is_valid_name(bad), "{bad:?}");
    }
}

#[test]
fn guests_join_the_lobby_and_are_welcomed() {
    let (mut chat, _) = chat_with(ChatConfig::default());
    chat.connect(id(1), "").unwrap();
    chat.connect(id(2), "").unwrap();
    let got = chat.drain();
    assert_eq!(got[&id(1)][0]["nick"], "guest-1");
    assert_eq!(got[&id(1)][0]["room"], "lobby");
    assert_eq!(types(&got[&id(1)]), ["welcome", "join"]);
    assert_eq!(got[&id(1)][1]["nick"], "guest-2");
    assert_eq!(got[&id(2)][0]["members"], serde_json::json!(["guest-1", "guest-2"]));
}

#[test]
fn the_query_picks_room_and_nick_and_bad_ones_fall_back_with_an_error() {
    let (mut chat, _) = chat_with(ChatConfig::default());
    chat.connect(id(1), "room=Rust&nick=alice").unwrap();
    let got = chat.drain();
    assert_eq!(got[&id(1)][0]["room"], "rust", "room names are lower-cased");
    assert_eq!(got[&id(1)][0]["nick"], "alice");
    chat.connect(id(2), "nick=ALICE&room=no%20spaces").unwrap();
    let got = chat.drain();
    let mine = &got[&id(2)];
    assert_eq!(mine[0]["nick"], "guest-1");
    assert_eq!(mine[0]["room"], "lobby");
    let codes: Vec<&str> = mine[1..].iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["invalid_room", "nick_taken"]);
}

#[test]
fn messages_reach_the_room_in_order_with_seq_and_history() {
    let config = ChatConfig { history_len: 2, ..ChatConfig::default() };
    let mut chat = TestChat::new(config, RUN_LIMIT, || 1234);
    chat.connect(id(1), "").unwrap();
    chat.connect(id(2), "").unwrap();
    chat.connect(id(3), "room=elsewhere").unwrap();
    chat.drain();
    for text in ["one", "two", "three"] {
        chat.text(id(1), text);
    }
    let got = chat.drain();
    for conn in [id(1), id(2)] {
        let seqs: Vec<u64> = got[&conn].iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(got[&conn][2]["text"], "three");
        assert_eq!(got[&conn][2]["time"], 1234);
    }
    assert!(!got.contains_key(&id(3)), "other rooms hear nothing");
    chat.connect(id(4), "").unwrap();
    let got = chat.drain();
    let history = got[&id(4)][0]["history"].as_array().unwrap();
    let texts: Vec<&str> = history.iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["two", "three"], "the last history_len messages");
}

#[test]
fn commands() {
    let (mut chat, _) = chat_with(ChatConfig::default());
    chat.connect(id(1), "nick=alice").unwrap();
    chat.connect(id(2), "nick=bob").unwrap();
    chat.drain();

    chat.text(id(1), "/nick Alicia");
    let got = chat.drain();
    assert_eq!(got[&id(2)][0], serde_json::json!({"type": "nick", "room": "lobby", "old": "alice", "nick": "Alicia"}));
    assert_eq!(got[&id(1)][0]["type"], "nick");

    chat.text(id(2), "/nick alicia");
    assert_eq!(chat.drain()[&id(2)][0]["code"], "nick_taken");
    chat.text(id(1), "/nick ALICIA");
    assert_eq!(chat.drain()[&id(2)][0]["nick"], "ALICIA", "a change of case is yours to make");

    chat.text(id(1), "/who");
    assert_eq!(chat.drain()[&id(1)][0]["members"], serde_json::json!(["ALICIA", "bob"]));

    chat.text(id(1), "/join Den");
    let got = chat.drain();
    assert_eq!(types(&got[&id(1)]), ["welcome"]);
    assert_eq!(got[&id(1)][0]["room"], "den");
    assert_eq!(got[&id(2)][0], serde_json::json!({"type": "leave", "room": "lobby", "nick": "ALICIA"}));
    chat.text(id(1), "/join den");
    assert_eq!(chat.drain()[&id(1)][0]["code"], "already_in_room");

    chat.text(id(2), "/rooms");
    let rooms = &chat.drain()[&id(2)][0]["rooms"];
    assert_eq!(rooms, &serde_json::json!([{"name": "den", "members": 1}, {"name": "lobby", "members": 1}]));

    chat.text(id(2), "/me waves");
    let event = &chat.drain()[&id(2)][0];
    assert_eq!((event["text"].as_str(), event["action"].as_bool()), (Some("waves"), Some(true)));

    chat.text(id(2), "//slash");
    assert_eq!(chat.drain()[&id(2)][0]["text"], "/slash");

    chat.text(id(2), "/help");
    assert_eq!(chat.drain()[&id(2)][0]["type"], "help");

    for (text, code) in [
        ("/dance", "unknown_command"),
        ("/", "unknown_command"),
        ("/nick", "bad_argument"),
        ("/nick two words", "bad_argument"),
        ("/nick bad!", "invalid_nick"),
        ("/join", "bad_argument"),
        ("/join a/b", "invalid_room"),
        ("/me", "bad_argument"),
        ("   ", "empty_message"),
    ] {
        chat.text(id(2), text);
        assert_eq!(chat.drain()[&id(2)][0]["code"], code, "{text:?}");
    }
    chat.binary(id(2));
    assert_eq!(chat.drain()[&id(2)][0]["code"], "binary_not_supported");
}

#[test]
fn empty_rooms_go_but_the_lobby_stays() {
    let (mut chat, _) = chat_with(ChatConfig::default());
    chat.connect(id(1), "room=den").unwrap();
    assert_eq!(chat.chat.room_count(), 2);
    chat.text(id(1), "/join lobby");
    assert_eq!(chat.chat.room_count(), 1);
    chat.disconnect(id(1));
    assert_eq!(chat.chat.room_count(), 1);
    assert_eq!(chat.chat.member_count(), 0);
    assert!(chat.chat.nicks.is_empty());
}

#[test]
fn disconnect_tells_the_room_and_frees_the_nick() {
    let (mut chat, _) = chat_with(ChatConfig::default());
    chat.connect(id(1), "nick=alice").unwrap();
    chat.connect(id(2), "").unwrap();
    chat.drain();
    chat.disconnect(id(1));
    assert_eq!(chat.drain()[&id(2)][0], serde_json::json!({"type": "leave", "room": "lobby", "nick": "alice"}));
    chat.text(id(2), "/nick alice");
    assert_eq!(chat.drain()[&id(2)][0]["type"], "nick");
}

#[test]
fn text_length_limit_at_its_edge() {
    let (mut chat, _) = chat_with(ChatConfig { max_text_bytes: 10, ..ChatConfig::default() });
    chat.connect(id(1), "").unwrap();
    chat.drain();
    chat.text(id(1), "0123456789");
    assert_eq!(chat.drain()[&id(1)][0]["type"], "message");
    chat.text(id(1), "0123456789A");
    assert_eq!(chat.drain()[&id(1)][0]["code"], "message_too_long");
    chat.text(id(1), "/me 0123456789");
    assert_eq!(chat.drain()[&id(1)][0]["type"], "message");
    // The connection never holds more than the text and the longest prefix for the chat...
    assert_eq!(chat.chat.max_message_size(&ChatConn::default()), Some(10 + "/me ".len()));
    // ...and what it read past is answered the same way, the connection staying a member.
    let mut conn = ChatConn::default();
    let mut ctx = Context::detached(id(1), chat.now, &mut chat.hub);
    chat.chat.on_message_too_long(&mut conn, &mut ctx);
    assert_eq!(chat.drain()[&id(1)][0]["code"], "message_too_long");
    chat.text(id(1), "still here");
    assert_eq!(chat.drain()[&id(1)][0]["text"], "still here");
}

#[test]
fn room_and_member_limits_at_their_edges() {
    let (mut chat, _) = chat_with(ChatConfig { max_rooms: 2, max_room_members: 2, ..ChatConfig::default() });
    chat.connect(id(1), "").unwrap();
    chat.connect(id(2), "").unwrap();
    assert_eq!(chat.connect(id(3), ""), Err(Refusal("the lobby is full")));
    chat.connect(id(3), "room=den").unwrap();
    chat.connect(id(4), "room=den").unwrap();
    chat.drain();
    // den now has its 2 members, and the server its 2 rooms.
    chat.text(id(1), "/join den");
    assert_eq!(chat.drain()[&id(1)][0]["code"], "room_full");
    chat.text(id(1), "/join third");
    assert_eq!(chat.drain()[&id(1)][0]["code"], "too_many_rooms");
    // A room that cannot be had falls back to the lobby, or is refused when that is full too.
    assert_eq!(chat.connect(id(5), "room=third"), Err(Refusal("the lobby is full")));
    chat.disconnect(id(2));
    chat.connect(id(5), "room=den").unwrap();
    let got = chat.drain();
    assert_eq!(got[&id(5)][0]["room"], "lobby");
    assert_eq!(got[&id(5)][1]["code"], "room_full");
}

#[test]
fn the_bucket_delays_rather_than_refuses_and_refills() {
    let (rate, burst) = (2, 3);
    let mut bucket = TokenBucket::default();
    let t0 = Instant::now();
    // The burst: two messages leave tokens, the third uses the last and asks
    // for a pause until one is back (half a second at 2 per second).
    assert_eq!(bucket.take(t0, rate, burst), None);
    assert_eq!(bucket.take(t0, rate, burst), None);
    assert_eq!(bucket.take(t0, rate, burst), Some(t0 + Duration::from_millis(500)));
    // A pause kept: the next message, at its end, takes the token that came back.
    let t1 = t0 + Duration::from_millis(500);
    assert_eq!(bucket.take(t1, rate, burst), Some(t1 + Duration::from_millis(500)));
    // A pause not kept (a driver that cannot pause): the wait grows with the debt, boundedly.
    let waits: Vec<Duration> = (0..10).map(|_| bucket.take(t1, rate, burst).unwrap() - t1).collect();
    assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
    assert_eq!(waits[9], Duration::from_secs_f64((1.0 + 3.0) / 2.0));
    // After a quiet while the burst is back in full.
    let later = t1 + Duration::from_secs(60);
    assert_eq!(bucket.take(later, rate, burst), None);
    // 0 turns the limit off.
    let mut free = TokenBucket::default();
    assert!((0..1000).all(|_| free.take(t0, 0, 0).is_none()));
}

#[test]
fn over_the_rate_nothing_is_dropped() {
    // The chat never refuses a message for the rate (the server delays the
    // sender's input instead): a burst of 30 with a burst allowance of 3 all arrives.
    let (mut chat, t0) = chat_with(ChatConfig { rate_limit_per_sec: 2, rate_limit_burst: 3, ..ChatConfig::default() });
    chat.connect(id(1), "").unwrap();
    chat.drain();
    for i in 0..30 {
        chat.text_at(id(1), &format!("m{i}"), t0);
    }
    let got = chat.drain();
    let texts: Vec<&str> = got[&id(1)].iter().map(|e| e["text"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected);
}

#[test]
fn a_broadcast_is_encoded_once_for_the_whole_room() {
    let (mut chat, _) = chat_with(ChatConfig::default());
    for i in 0..50 {
        chat.connect(id(i), "").unwrap();
    }
    chat.outbox().clear();
    chat.text(id(0), "hello all");
    let deliveries: Vec<_> = chat.outbox().iter().map(|(f, to)| (Arc::clone(f.bytes()), to.len())).collect();
    assert_eq!(deliveries.len(), 1, "one frame");
    assert_eq!(deliveries[0].1, 50, "fifty recipients");
}

#[test]
fn consecutive_frames_to_the_same_members_form_one_run() {
    let (mut chat, _) = chat_with(ChatConfig { rate_limit_per_sec: 0, ..ChatConfig::default() });
    for i in 0..3 {
        chat.connect(id(i), "").unwrap();
    }
    chat.outbox().clear();
    for n in 0..5 {
        chat.text(id(0), &format!("m{n}"));
    }
    // A reply to one member, then the room again, then the room after a change of members.
    chat.text(id(1), "/who");
    chat.text(id(1), "after who");
    chat.text(id(2), "/join den");
    chat.text(id(0), "fewer now");
    let runs: Vec<(usize, Vec<ConnId>)> =
        chat.outbox().runs().map(|(frames, to)| (frames.len(), to.to_vec())).collect();
    let everyone = vec![id(0), id(1), id(2)];
    assert_eq!(runs[0], (5, everyone.clone()), "five messages to the room: one run");
    assert_eq!(runs[1], (1, vec![id(1)]), "the /who answer");
    assert_eq!(runs[2], (1, everyone), "the room again");
    // id(2) leaves the lobby (a leave event to the other two) and joins den.
    let last = runs.last().unwrap();
    assert_eq!(last.1, vec![id(0), id(1)]);
    let flat: Vec<usize> = chat.outbox().iter().map(|(_, to)| to.len()).collect();
    assert_eq!(&flat[..5], &[3; 5], "per-frame view unchanged");
}

#[test]
fn a_run_stops_growing_at_its_limit() {
    let (mut chat, _) = chat_with(ChatConfig { rate_limit_per_sec: 0, ..ChatConfig::default() });
    chat.connect(id(0), "").unwrap();
    chat.outbox().clear();
    let text = "x".repeat(1000);
    for _ in 0..200 {
        chat.text(id(0), &text);
    }
    let sizes: Vec<usize> = chat.outbox().runs().map(|(frames, _)| frames.iter().map(|f| f.len()).sum()).collect();
    assert!(sizes.len() > 1, "{sizes:?}");
    assert!(sizes.iter().all(|&bytes| bytes <= RUN_LIMIT), "{sizes:?}");
    assert!(sizes[0] + 1100 > RUN_LIMIT, "runs are filled before a new one starts: {sizes:?}");
    assert_eq!(chat.outbox().iter().count(), 200, "no frame lost");

    // A smaller outgoing cap makes runs smaller too.
    let max_outgoing_bytes = 5000;
    let config = ChatConfig { rate_limit_per_sec: 0, ..ChatConfig::default() };
    let mut chat = TestChat::new(config, RUN_LIMIT.min(max_outgoing_bytes), || 0);
    chat.connect(id(0), "").unwrap();
    chat.outbox().clear();
    for _ in 0..20 {
        chat.text(id(0), &text);
    }
    let sizes: Vec<usize> = chat.outbox().runs().map(|(frames, _)| frames.iter().map(|f| f.len()).sum()).collect();
    assert!(sizes.iter().all(|&bytes| bytes <= 5000) && sizes[0] > 4000, "{sizes:?}");
}

#[test]
fn control_characters_other_than_tab_and_newline_are_refused() {
    let (mut chat, _) = chat_with(ChatConfig::default());
    chat.connect(id(1), "").unwrap();
    chat.drain();
    for bad in ["bell\u{7}", "esc\u{1b}[31m", "nul\u{0}", "del\u{7f}", "cr\r"] {
        chat.text(id(1), bad);
        assert_eq!(chat.drain()[&id(1)][0]["code"], "invalid_text", "{bad:?}");
        chat.text(id(1), &format!("/me {bad}"));
        assert_eq!(chat.drain()[&id(1)][0]["code"], "invalid_text", "/me {bad:?}");
    }
    chat.text(id(1), "tab\tand\nnewline, é, 😀");
    assert_eq!(chat.drain()[&id(1)][0]["text"], "tab\tand\nnewline, é, 😀");
    assert!(chat.chat.history_bytes() > 0);
}

#[test]
fn the_history_of_all_rooms_together_is_bounded_in_bytes() {
    let config = ChatConfig { history_bytes: 20_000, rate_limit_per_sec: 0, ..ChatConfig::default() };
    let (mut chat, _) = chat_with(config);
    chat.connect(id(1), "room=a").unwrap();
    chat.connect(id(2), "room=b").unwrap();
    let text = "x".repeat(1000);
    for _ in 0..30 {
        chat.text(id(1), &text);
        chat.text(id(2), &text);
    }
    assert!(chat.chat.history_bytes() <= 20_000, "{}", chat.chat.history_bytes());
    assert!(chat.chat.history_bytes() > 15_000, "it fills up to its bound: {}", chat.chat.history_bytes());
    chat.drain();
    // A newcomer to each room gets that room's newest messages, ending with the last said.
    chat.connect(id(3), "room=a").unwrap();
    let welcome = &chat.drain()[&id(3)][0];
    let seqs: Vec<u64> = welcome["history"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(!seqs.is_empty() && seqs.len() < 30, "{seqs:?}");
    assert_eq!(*seqs.last().unwrap(), 30);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "contiguous: {seqs:?}");
    // A room that empties takes its history with it.
    let before = chat.chat.history_bytes();
    chat.disconnect(id(2));
    assert!(chat.chat.history_bytes() < before / 2 + 2000, "{} of {before}", chat.chat.history_bytes());
}
