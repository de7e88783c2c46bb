//! The chat service: rooms, nicknames, history and rate limits.
//!
//! Sans-IO like the rest of the core: the chat is told that a connection
//! arrived, sent a text, or left, and answers by putting encoded frames in its
//! [`Outbox`], each with the connections it goes to. The event loop delivers
//! them. A frame said to a room is encoded once and its bytes shared by every
//! member's queue.
//!
//! Client → server: a text frame is a message to your room, unless it starts
//! with `/`, which makes it a command (`/nick`, `/join`, `/who`, `/rooms`,
//! `/me`, `/help`; `//text` says `/text`). Server → client: one JSON event per
//! text frame ([`events`]). `docs/protocol.md` describes both.

pub mod events;

use crate::config::Config;
use crate::outgoing::SharedFrame;
use events::code;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// The room everyone starts in. It is never removed, even when empty.
pub const LOBBY: &str = "lobby";

/// The longest nickname or room name.
pub const MAX_NAME_LEN: usize = 32;

/// A connection as the chat knows it: the server's slot for it, and a
/// generation number so that a slot reused by a new connection is never
/// mistaken for the one that had it before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// The connection's slot (its mio token).
    pub index: usize,
    /// Distinguishes the connections that have used this slot.
    pub generation: u64,
}

/// Frames waiting to be delivered, each with its recipients, in order.
///
/// Recipients are fixed when the frame is made, so a member who sends a
/// message and then `/join`s another room in the same read still gets the
/// message in the first room.
///
/// Consecutive frames that go to exactly the same connections (a busy room)
/// form one *run*, up to [`RUN_LIMIT`] bytes (or the outgoing queue's cap,
/// if smaller, so that a run fits wherever a frame would). The event loop joins a run's
/// frames into one buffer that every recipient's queue shares: one queue
/// entry and one contiguous copy into the kernel per member per turn,
/// however many messages the room had.
#[derive(Debug)]
pub struct Outbox {
    frames: Vec<SharedFrame>,
    runs: Vec<Run>,
    recipients: Vec<ConnId>,
    run_limit: usize,
}

impl Default for Outbox {
    fn default() -> Outbox {
        Outbox::new(RUN_LIMIT)
    }
}

/// The most bytes of frames one run holds; a frame that would pass it starts a new run.
pub const RUN_LIMIT: usize = 64 * 1024;

/// Frames `frames` of the outbox, all to `recipients`, `bytes` long together.
#[derive(Debug)]
struct Run {
    frames: std::ops::Range<usize>,
    recipients: std::ops::Range<usize>,
    bytes: usize,
}

impl Outbox {
    fn new(run_limit: usize) -> Outbox {
        Outbox { frames: Vec::new(), runs: Vec::new(), recipients: Vec::new(), run_limit }
    }

    fn send(&mut self, frame: SharedFrame, to: impl IntoIterator<Item = ConnId>) {
        let start = self.recipients.len();
        self.recipients.extend(to);
        if self.recipients.len() == start {
            return;
        }
        let len = frame.len();
        self.frames.push(frame);
        let (earlier, new) = self.recipients.split_at(start);
        if let Some(last) = self.runs.last_mut()
            && last.bytes + len <= self.run_limit
            && earlier.get(last.recipients.clone()) == Some(new)
        {
            self.recipients.truncate(start);
            last.frames.end += 1;
            last.bytes += len;
            return;
        }
        let index = self.frames.len() - 1;
        self.runs.push(Run { frames: index..index + 1, recipients: start..self.recipients.len(), bytes: len });
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Every frame with its recipients, in the order they were made.
    pub fn iter(&self) -> impl Iterator<Item = (&SharedFrame, &[ConnId])> {
        self.runs().flat_map(|(frames, to)| frames.iter().map(move |frame| (frame, to)))
    }

    /// Runs of consecutive frames with the same recipients, in order.
    pub fn runs(&self) -> impl Iterator<Item = (&[SharedFrame], &[ConnId])> {
        self.runs.iter().map(|run| (&self.frames[run.frames.clone()], &self.recipients[run.recipients.clone()]))
    }

    /// Empties the outbox, keeping its capacity.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.runs.clear();
        self.recipients.clear();
    }
}

/// A room: its members in the order they joined, its recent messages and
/// the sequence number of its last message.
#[derive(Debug, Default)]
struct Room {
    members: Vec<ConnId>,
    /// `message` events, serialised, oldest first.
    history: VecDeque<Arc<str>>,
    seq: u64,
}

/// A token bucket: `burst` tokens, refilled at `rate` per second; a message takes one.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn take(&mut self, now: Instant, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Member {
    nick: String,
    room: String,
    bucket: TokenBucket,
}

/// The limits the chat enforces (copied from [`Config`]).
#[derive(Debug, Clone, Copy)]
struct Limits {
    history_len: usize,
    max_text_bytes: usize,
    max_rooms: usize,
    max_room_members: usize,
    rate: u32,
    burst: u32,
}

/// Whether `name` is a valid nickname or room name: 1–32 ASCII letters,
/// digits, `_` or `-`. ASCII only, so that no two names look alike.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why a connection cannot join the chat at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

/// All chat state of one server.
#[derive(Debug)]
pub struct Chat {
    limits: Limits,
    /// Rooms by (lower-case) name.
    rooms: HashMap<String, Room>,
    members: HashMap<ConnId, Member>,
    /// Nicknames in use, lower-cased (uniqueness ignores case), to their owner.
    nicks: HashMap<String, ConnId>,
    next_guest: u64,
    outbox: Outbox,
}

impl Chat {
    /// An empty chat with the limits of `config`.
    pub fn new(config: &Config) -> Chat {
        let limits = Limits {
            history_len: config.history_len,
            max_text_bytes: config.max_text_bytes,
            max_rooms: config.max_rooms,
            max_room_members: config.max_room_members,
            rate: config.rate_limit_per_sec,
            burst: config.rate_limit_burst,
        };
        let mut rooms = HashMap::new();
        rooms.insert(LOBBY.to_string(), Room::default());
        let outbox = Outbox::new(RUN_LIMIT.min(config.max_outgoing_bytes));
        Chat { limits, rooms, members: HashMap::new(), nicks: HashMap::new(), next_guest: 1, outbox }
    }

    /// Frames waiting for delivery. The loop delivers them and clears it.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// Takes the outbox out (so delivery can call back into the chat); give
    /// it back with [`Chat::restore_outbox`] to keep its capacity.
    pub fn take_outbox(&mut self) -> Outbox {
        let fresh = Outbox::new(self.outbox.run_limit);
        std::mem::replace(&mut self.outbox, fresh)
    }

    /// Returns an outbox taken with [`Chat::take_outbox`], after delivery.
    pub fn restore_outbox(&mut self, mut outbox: Outbox) {
        if self.outbox.is_empty() {
            outbox.clear();
            self.outbox = outbox;
        }
    }

    /// The number of members in the chat.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The number of rooms (including the lobby).
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// A connection opened the chat endpoint. `query` is the request's query
    /// string (`room=NAME&nick=NAME`, both optional). A name that is invalid
    /// or taken, or a room that is full, earns an `error` event after the
    /// `welcome`, and the connection gets a guest nick or the lobby instead.
    pub fn connect(&mut self, id: ConnId, query: &str, now: Instant) -> Result<(), Refusal> {
        let mut errors = Vec::new();
        let (mut want_room, mut want_nick) = (None, None);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("room", value)) => want_room = Some(value),
                Some(("nick", value)) => want_nick = Some(value),
                _ => {}
            }
        }

        let mut room = LOBBY.to_string();
        if let Some(wanted) = want_room {
            match self.can_enter(wanted) {
                Ok(name) => room = name,
                Err(error) => errors.push(error),
            }
        }
        if room == LOBBY && self.room_len(LOBBY) >= self.limits.max_room_members {
            return Err(Refusal("the lobby is full"));
        }

        let nick = match want_nick.map(|wanted| self.check_nick(wanted, None)) {
            Some(Ok(nick)) => nick,
            Some(Err(error)) => {
                errors.push(error);
                self.guest_nick()
            }
            None => self.guest_nick(),
        };

        self.nicks.insert(nick.to_ascii_lowercase(), id);
        let bucket = TokenBucket { tokens: f64::from(self.limits.burst), last: now };
        self.members.insert(id, Member { nick, room: room.clone(), bucket });
        self.enter(id, &room);
        for (code, message) in errors {
            self.tell(id, &events::error(code, &message));
        }
        Ok(())
    }

    /// A connection left (closed, failed, or was dropped): it leaves its room.
    pub fn disconnect(&mut self, id: ConnId) {
        let Some(member) = self.members.remove(&id) else { return };
        self.nicks.remove(&member.nick.to_ascii_lowercase());
        self.exit(id, &member.room, &member.nick);
    }

    /// A text message from a member: a message to its room, or a command.
    pub fn handle_text(&mut self, id: ConnId, text: &str, now: Instant, time_ms: u64) {
        let limits = self.limits;
        let Some(member) = self.members.get_mut(&id) else { return };
        if !member.bucket.take(now, limits.rate, limits.burst) {
            let message = format!("slow down: at most {} messages a second", limits.rate);
            self.tell(id, &events::error(code::RATE_LIMITED, &message));
            return;
        }
        if text.starts_with("//") {
            // `//text` says "/text": drop the first slash.
            self.say(id, &text[1..], false, time_ms);
        } else if let Some(command) = text.strip_prefix('/') {
            self.command(id, command, time_ms);
        } else {
            self.say(id, text, false, time_ms);
        }
    }

    /// A binary message from a member: the chat speaks text only.
    pub fn handle_binary(&mut self, id: ConnId, now: Instant) {
        let limits = self.limits;
        let Some(member) = self.members.get_mut(&id) else { return };
        if member.bucket.take(now, limits.rate, limits.burst) {
            let message = "binary frames are not part of the chat protocol: send text";
            self.tell(id, &events::error(code::BINARY_NOT_SUPPORTED, message));
        }
    }

    fn command(&mut self, id: ConnId, command: &str, time_ms: u64) {
        let (name, arg) = match command.split_once(char::is_whitespace) {
            Some((name, arg)) => (name, arg.trim()),
            None => (command, ""),
        };
        let one_word = || if arg.is_empty() || arg.contains(char::is_whitespace) { None } else { Some(arg) };
        match name {
            "nick" => match one_word() {
                Some(nick) => self.change_nick(id, nick),
                None => self.tell(id, &events::error(code::BAD_ARGUMENT, "usage: /nick NAME")),
            },
            "join" => match one_word() {
                Some(room) => self.join(id, room),
                None => self.tell(id, &events::error(code::BAD_ARGUMENT, "usage: /join ROOM")),
            },
            "who" => {
                let Some(member) = self.members.get(&id) else { return };
                let room = member.room.clone();
                let event = events::who(&room, &self.nicks_in(&room));
                self.tell(id, &event);
            }
            "rooms" => {
                let mut list: Vec<(&str, usize)> =
                    self.rooms.iter().map(|(name, room)| (name.as_str(), room.members.len())).collect();
                list.sort_unstable();
                let event = events::rooms(&list);
                self.tell(id, &event);
            }
            "me" if !arg.is_empty() => {
                let action = command["me".len()..].trim_start();
                self.say(id, action, true, time_ms);
            }
            "me" => self.tell(id, &events::error(code::BAD_ARGUMENT, "usage: /me ACTION")),
            "help" => self.tell(id, &events::help()),
            _ => {
                let message =
                    format!("unknown command /{name}: try /help (and //text to say something starting with /)");
                self.tell(id, &events::error(code::UNKNOWN_COMMAND, &message));
            }
        }
    }

    /// Sends `text` from `id` to everyone in its room, itself included.
    fn say(&mut self, id: ConnId, text: &str, action: bool, time_ms: u64) {
        if text.trim().is_empty() {
            self.tell(id, &events::error(code::EMPTY_MESSAGE, "there is nothing to send"));
            return;
        }
        if text.len() > self.limits.max_text_bytes {
            let message =
                format!("messages are limited to {} bytes; this one has {}", self.limits.max_text_bytes, text.len());
            self.tell(id, &events::error(code::MESSAGE_TOO_LONG, &message));
            return;
        }
        let Some(member) = self.members.get(&id) else { return };
        let Some(room) = self.rooms.get_mut(&member.room) else { return };
        room.seq += 1;
        let event: Arc<str> = Arc::from(events::message(&member.room, &member.nick, text, time_ms, room.seq, action));
        if self.limits.history_len > 0 {
            if room.history.len() == self.limits.history_len {
                room.history.pop_front();
            }
            room.history.push_back(Arc::clone(&event));
        }
        self.outbox.send(events::frame(&event), room.members.iter().copied());
    }

    fn change_nick(&mut self, id: ConnId, wanted: &str) {
        let Some(member) = self.members.get(&id) else { return };
        let old = member.nick.clone();
        if old == wanted {
            return;
        }
        let nick = match self.check_nick(wanted, Some(id)) {
            Ok(nick) => nick,
            Err((code, message)) => return self.tell(id, &events::error(code, &message)),
        };
        self.nicks.remove(&old.to_ascii_lowercase());
        self.nicks.insert(nick.to_ascii_lowercase(), id);
        let Some(member) = self.members.get_mut(&id) else { return };
        member.nick = nick.clone();
        let room = member.room.clone();
        let event = events::nick(&room, &old, &nick);
        self.announce(&room, &event, None);
    }

    fn join(&mut self, id: ConnId, wanted: &str) {
        let Some(member) = self.members.get(&id) else { return };
        if wanted.eq_ignore_ascii_case(&member.room) {
            let message = format!("you are already in {}", member.room);
            return self.tell(id, &events::error(code::ALREADY_IN_ROOM, &message));
        }
        let room = match self.can_enter(wanted) {
            Ok(room) => room,
            Err((code, message)) => return self.tell(id, &events::error(code, &message)),
        };
        let (old, nick) = (member.room.clone(), member.nick.clone());
        self.exit(id, &old, &nick);
        if let Some(member) = self.members.get_mut(&id) {
            member.room = room.clone();
        }
        self.enter(id, &room);
    }

    /// Checks that a room can be entered; returns its canonical (lower-case) name.
    fn can_enter(&self, wanted: &str) -> Result<String, (&'static str, String)> {
        if !is_valid_name(wanted) {
            let message = format!("room names are 1-{MAX_NAME_LEN} letters, digits, _ or -");
            return Err((code::INVALID_ROOM, message));
        }
        let name = wanted.to_ascii_lowercase();
        match self.rooms.get(&name) {
            Some(room) if room.members.len() >= self.limits.max_room_members => {
                Err((code::ROOM_FULL, format!("{name} is full ({} members)", self.limits.max_room_members)))
            }
            None if self.rooms.len() >= self.limits.max_rooms => {
                Err((code::TOO_MANY_ROOMS, format!("the server has its maximum of {} rooms", self.limits.max_rooms)))
            }
            _ => Ok(name),
        }
    }

    /// Checks a wanted nickname; `owner` may already hold it in another case.
    fn check_nick(&self, wanted: &str, owner: Option<ConnId>) -> Result<String, (&'static str, String)> {
        if !is_valid_name(wanted) {
            return Err((code::INVALID_NICK, format!("nicknames are 1-{MAX_NAME_LEN} letters, digits, _ or -")));
        }
        match self.nicks.get(&wanted.to_ascii_lowercase()) {
            Some(holder) if Some(*holder) != owner => Err((code::NICK_TAKEN, format!("{wanted} is taken"))),
            _ => Ok(wanted.to_string()),
        }
    }

    fn guest_nick(&mut self) -> String {
        loop {
            let nick = format!("guest-{}", self.next_guest);
            self.next_guest += 1;
            if !self.nicks.contains_key(&nick) {
                return nick;
            }
        }
    }

    /// Puts `id` into `room` (creating it), welcomes it, and tells the others.
    fn enter(&mut self, id: ConnId, name: &str) {
        let room = self.rooms.entry(name.to_string()).or_default();
        room.members.push(id);
        let Some(nick) = self.members.get(&id).map(|m| m.nick.clone()) else { return };
        let history: Vec<Arc<str>> = room.history.iter().cloned().collect();
        let event = events::welcome(&nick, name, &self.nicks_in(name), history.iter());
        self.tell(id, &event);
        self.announce(name, &events::join(name, &nick), Some(id));
    }

    /// Takes `id` out of `room`, tells the others, and removes the room if it is now empty.
    fn exit(&mut self, id: ConnId, name: &str, nick: &str) {
        let Some(room) = self.rooms.get_mut(name) else { return };
        room.members.retain(|member| *member != id);
        if room.members.is_empty() && name != LOBBY {
            self.rooms.remove(name);
        } else {
            self.announce(name, &events::leave(name, nick), None);
        }
    }

    fn room_len(&self, name: &str) -> usize {
        self.rooms.get(name).map_or(0, |room| room.members.len())
    }

    fn nicks_in(&self, name: &str) -> Vec<&str> {
        let Some(room) = self.rooms.get(name) else { return Vec::new() };
        room.members.iter().filter_map(|id| self.members.get(id)).map(|m| m.nick.as_str()).collect()
    }

    /// One event to one connection.
    fn tell(&mut self, id: ConnId, event: &str) {
        self.outbox.send(events::frame(event), [id]);
    }

    /// One event to a room, once encoded, optionally leaving one member out.
    fn announce(&mut self, name: &str, event: &str, except: Option<ConnId>) {
        let Some(room) = self.rooms.get(name) else { return };
        let members = room.members.iter().copied().filter(|id| Some(*id) != except);
        self.outbox.send(events::frame(event), members);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::time::Duration;

    fn id(index: usize) -> ConnId {
        ConnId { index, generation: index as u64 }
    }

    /// The events each connection received, decoded from the outbox.
    fn drain(chat: &mut Chat) -> HashMap<ConnId, Vec<Value>> {
        let mut got: HashMap<ConnId, Vec<Value>> = HashMap::new();
        for (frame, to) in chat.outbox().iter() {
            let mut bytes = frame.to_vec();
            let decoded =
                crate::frame::decode(&mut bytes, &crate::frame::DecodeRules::client(u64::MAX)).unwrap().unwrap();
            let event: Value = serde_json::from_slice(&decoded.payload).unwrap();
            for conn in to {
                got.entry(*conn).or_default().push(event.clone());
            }
        }
        chat.outbox().clear();
        got
    }

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    fn chat_with(config: Config) -> (Chat, Instant) {
        (Chat::new(&config), Instant::now())
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
        let (mut chat, now) = chat_with(Config::default());
        chat.connect(id(1), "", now).unwrap();
        chat.connect(id(2), "", now).unwrap();
        let got = drain(&mut chat);
        assert_eq!(got[&id(1)][0]["nick"], "guest-1");
        assert_eq!(got[&id(1)][0]["room"], "lobby");
        assert_eq!(types(&got[&id(1)]), ["welcome", "join"]);
        assert_eq!(got[&id(1)][1]["nick"], "guest-2");
        assert_eq!(got[&id(2)][0]["members"], serde_json::json!(["guest-1", "guest-2"]));
    }

    #[test]
    fn the_query_picks_room_and_nick_and_bad_ones_fall_back_with_an_error() {
        let (mut chat, now) = chat_with(Config::default());
        chat.connect(id(1), "room=Rust&nick=alice", now).unwrap();
        let got = drain(&mut chat);
        assert_eq!(got[&id(1)][0]["room"], "rust", "room names are lower-cased");
        assert_eq!(got[&id(1)][0]["nick"], "alice");
        chat.connect(id(2), "nick=ALICE&room=no%20spaces", now).unwrap();
        let got = drain(&mut chat);
        let mine = &got[&id(2)];
        assert_eq!(mine[0]["nick"], "guest-1");
        assert_eq!(mine[0]["room"], "lobby");
        let codes: Vec<&str> = mine[1..].iter().map(|e| e["code"].as_str().unwrap()).collect();
        assert_eq!(codes, ["invalid_room", "nick_taken"]);
    }

    #[test]
    fn messages_reach_the_room_in_order_with_seq_and_history() {
        let config = Config { history_len: 2, ..Config::default() };
        let (mut chat, now) = chat_with(config);
        chat.connect(id(1), "", now).unwrap();
        chat.connect(id(2), "", now).unwrap();
        chat.connect(id(3), "room=elsewhere", now).unwrap();
        drain(&mut chat);
        for text in ["one", "two", "three"] {
            chat.handle_text(id(1), text, now, 1234);
        }
        let got = drain(&mut chat);
        for conn in [id(1), id(2)] {
            let seqs: Vec<u64> = got[&conn].iter().map(|e| e["seq"].as_u64().unwrap()).collect();
            assert_eq!(seqs, [1, 2, 3]);
            assert_eq!(got[&conn][2]["text"], "three");
            assert_eq!(got[&conn][2]["time"], 1234);
        }
        assert!(!got.contains_key(&id(3)), "other rooms hear nothing");
        chat.connect(id(4), "", now).unwrap();
        let got = drain(&mut chat);
        let history = got[&id(4)][0]["history"].as_array().unwrap();
        let texts: Vec<&str> = history.iter().map(|e| e["text"].as_str().unwrap()).collect();
        assert_eq!(texts, ["two", "three"], "the last history_len messages");
    }

    #[test]
    fn commands() {
        let (mut chat, now) = chat_with(Config::default());
        chat.connect(id(1), "nick=alice", now).unwrap();
        chat.connect(id(2), "nick=bob", now).unwrap();
        drain(&mut chat);

        chat.handle_text(id(1), "/nick Alicia", now, 0);
        let got = drain(&mut chat);
        assert_eq!(
            got[&id(2)][0],
            serde_json::json!({"type": "nick", "room": "lobby", "old": "alice", "nick": "Alicia"})
        );
        assert_eq!(got[&id(1)][0]["type"], "nick");

        chat.handle_text(id(2), "/nick alicia", now, 0);
        assert_eq!(drain(&mut chat)[&id(2)][0]["code"], "nick_taken");
        chat.handle_text(id(1), "/nick ALICIA", now, 0);
        assert_eq!(drain(&mut chat)[&id(2)][0]["nick"], "ALICIA", "a change of case is yours to make");

        chat.handle_text(id(1), "/who", now, 0);
        assert_eq!(drain(&mut chat)[&id(1)][0]["members"], serde_json::json!(["ALICIA", "bob"]));

        chat.handle_text(id(1), "/join Den", now, 0);
        let got = drain(&mut chat);
        assert_eq!(types(&got[&id(1)]), ["welcome"]);
        assert_eq!(got[&id(1)][0]["room"], "den");
        assert_eq!(got[&id(2)][0], serde_json::json!({"type": "leave", "room": "lobby", "nick": "ALICIA"}));
        chat.handle_text(id(1), "/join den", now, 0);
        assert_eq!(drain(&mut chat)[&id(1)][0]["code"], "already_in_room");

        chat.handle_text(id(2), "/rooms", now, 0);
        let rooms = &drain(&mut chat)[&id(2)][0]["rooms"];
        assert_eq!(rooms, &serde_json::json!([{"name": "den", "members": 1}, {"name": "lobby", "members": 1}]));

        chat.handle_text(id(2), "/me waves", now, 0);
        let event = &drain(&mut chat)[&id(2)][0];
        assert_eq!((event["text"].as_str(), event["action"].as_bool()), (Some("waves"), Some(true)));

        chat.handle_text(id(2), "//slash", now, 0);
        assert_eq!(drain(&mut chat)[&id(2)][0]["text"], "/slash");

        chat.handle_text(id(2), "/help", now, 0);
        assert_eq!(drain(&mut chat)[&id(2)][0]["type"], "help");

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
            chat.handle_text(id(2), text, now, 0);
            assert_eq!(drain(&mut chat)[&id(2)][0]["code"], code, "{text:?}");
        }
        chat.handle_binary(id(2), now);
        assert_eq!(drain(&mut chat)[&id(2)][0]["code"], "binary_not_supported");
    }

    #[test]
    fn empty_rooms_go_but_the_lobby_stays() {
        let (mut chat, now) = chat_with(Config::default());
        chat.connect(id(1), "room=den", now).unwrap();
        assert_eq!(chat.room_count(), 2);
        chat.handle_text(id(1), "/join lobby", now, 0);
        assert_eq!(chat.room_count(), 1);
        chat.disconnect(id(1));
        assert_eq!(chat.room_count(), 1);
        assert_eq!(chat.member_count(), 0);
        assert!(chat.nicks.is_empty());
    }

    #[test]
    fn disconnect_tells_the_room_and_frees_the_nick() {
        let (mut chat, now) = chat_with(Config::default());
        chat.connect(id(1), "nick=alice", now).unwrap();
        chat.connect(id(2), "", now).unwrap();
        drain(&mut chat);
        chat.disconnect(id(1));
        assert_eq!(drain(&mut chat)[&id(2)][0], serde_json::json!({"type": "leave", "room": "lobby", "nick": "alice"}));
        chat.handle_text(id(2), "/nick alice", now, 0);
        assert_eq!(drain(&mut chat)[&id(2)][0]["type"], "nick");
    }

    #[test]
    fn text_length_limit_at_its_edge() {
        let (mut chat, now) = chat_with(Config { max_text_bytes: 10, ..Config::default() });
        chat.connect(id(1), "", now).unwrap();
        drain(&mut chat);
        chat.handle_text(id(1), "0123456789", now, 0);
        assert_eq!(drain(&mut chat)[&id(1)][0]["type"], "message");
        chat.handle_text(id(1), "0123456789A", now, 0);
        assert_eq!(drain(&mut chat)[&id(1)][0]["code"], "message_too_long");
        chat.handle_text(id(1), "/me 0123456789", now, 0);
        assert_eq!(drain(&mut chat)[&id(1)][0]["type"], "message");
    }

    #[test]
    fn room_and_member_limits_at_their_edges() {
        let (mut chat, now) = chat_with(Config { max_rooms: 2, max_room_members: 2, ..Config::default() });
        chat.connect(id(1), "", now).unwrap();
        chat.connect(id(2), "", now).unwrap();
        assert_eq!(chat.connect(id(3), "", now), Err(Refusal("the lobby is full")));
        chat.connect(id(3), "room=den", now).unwrap();
        chat.connect(id(4), "room=den", now).unwrap();
        drain(&mut chat);
        // den now has its 2 members, and the server its 2 rooms.
        chat.handle_text(id(1), "/join den", now, 0);
        assert_eq!(drain(&mut chat)[&id(1)][0]["code"], "room_full");
        chat.handle_text(id(1), "/join third", now, 0);
        assert_eq!(drain(&mut chat)[&id(1)][0]["code"], "too_many_rooms");
        // A room that cannot be had falls back to the lobby, or is refused when that is full too.
        assert_eq!(chat.connect(id(5), "room=third", now), Err(Refusal("the lobby is full")));
        chat.disconnect(id(2));
        chat.connect(id(5), "room=den", now).unwrap();
        let got = drain(&mut chat);
        assert_eq!(got[&id(5)][0]["room"], "lobby");
        assert_eq!(got[&id(5)][1]["code"], "room_full");
    }

    #[test]
    fn rate_limit_drops_the_excess_and_refills() {
        let (mut chat, t0) = chat_with(Config { rate_limit_per_sec: 2, rate_limit_burst: 3, ..Config::default() });
        chat.connect(id(1), "", t0).unwrap();
        drain(&mut chat);
        for i in 0..5 {
            chat.handle_text(id(1), &format!("m{i}"), t0, 0);
        }
        let got = drain(&mut chat);
        let kinds: Vec<&str> = got[&id(1)].iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["message", "message", "message", "error", "error"]);
        assert_eq!(got[&id(1)][3]["code"], "rate_limited");
        // Half a second later one token is back (2 per second).
        chat.handle_text(id(1), "again", t0 + Duration::from_millis(500), 0);
        chat.handle_text(id(1), "too soon", t0 + Duration::from_millis(500), 0);
        let got = drain(&mut chat);
        assert_eq!(got[&id(1)][0]["text"], "again");
        assert_eq!(got[&id(1)][1]["code"], "rate_limited");
        // 0 turns the limit off.
        let (mut chat, t0) = chat_with(Config { rate_limit_per_sec: 0, ..Config::default() });
        chat.connect(id(1), "", t0).unwrap();
        drain(&mut chat);
        for i in 0..1000 {
            chat.handle_text(id(1), &format!("m{i}"), t0, 0);
        }
        assert_eq!(drain(&mut chat)[&id(1)].len(), 1000);
    }

    #[test]
    fn a_broadcast_is_encoded_once_for_the_whole_room() {
        let (mut chat, now) = chat_with(Config::default());
        for i in 0..50 {
            chat.connect(id(i), "", now).unwrap();
        }
        chat.outbox().clear();
        chat.handle_text(id(0), "hello all", now, 0);
        let deliveries: Vec<_> = chat.outbox().iter().map(|(f, to)| (Arc::clone(f), to.len())).collect();
        assert_eq!(deliveries.len(), 1, "one frame");
        assert_eq!(deliveries[0].1, 50, "fifty recipients");
    }

    #[test]
    fn consecutive_frames_to_the_same_members_form_one_run() {
        let (mut chat, now) = chat_with(Config { rate_limit_per_sec: 0, ..Config::default() });
        for i in 0..3 {
            chat.connect(id(i), "", now).unwrap();
        }
        chat.outbox().clear();
        for n in 0..5 {
            chat.handle_text(id(0), &format!("m{n}"), now, 0);
        }
        // A reply to one member, then the room again, then the room after a change of members.
        chat.handle_text(id(1), "/who", now, 0);
        chat.handle_text(id(1), "after who", now, 0);
        chat.handle_text(id(2), "/join den", now, 0);
        chat.handle_text(id(0), "fewer now", now, 0);
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
        let (mut chat, now) = chat_with(Config { rate_limit_per_sec: 0, ..Config::default() });
        chat.connect(id(0), "", now).unwrap();
        chat.outbox().clear();
        let text = "x".repeat(1000);
        for _ in 0..200 {
            chat.handle_text(id(0), &text, now, 0);
        }
        let sizes: Vec<usize> = chat.outbox().runs().map(|(frames, _)| frames.iter().map(|f| f.len()).sum()).collect();
        assert!(sizes.len() > 1, "{sizes:?}");
        assert!(sizes.iter().all(|&bytes| bytes <= RUN_LIMIT), "{sizes:?}");
        assert!(sizes[0] + 1100 > RUN_LIMIT, "runs are filled before a new one starts: {sizes:?}");
        assert_eq!(chat.outbox().iter().count(), 200, "no frame lost");

        // A smaller outgoing cap makes runs smaller too.
        let config = Config { rate_limit_per_sec: 0, max_outgoing_bytes: 5000, ..Config::default() };
        let (mut chat, now) = chat_with(config);
        chat.connect(id(0), "", now).unwrap();
        chat.outbox().clear();
        for _ in 0..20 {
            chat.handle_text(id(0), &text, now, 0);
        }
        let sizes: Vec<usize> = chat.outbox().runs().map(|(frames, _)| frames.iter().map(|f| f.len()).sum()).collect();
        assert!(sizes.iter().all(|&bytes| bytes <= 5000) && sizes[0] > 4000, "{sizes:?}");
    }
}
