//! The chat service: rooms, nicknames, history and rate limits, as an
//! [`App`] on the application interface.
//!
//! A room is a topic: its members subscribe to it, and what is said there
//! is published to it, so the server frames each message once and shares
//! its bytes among the members' queues. The chat itself never sees a frame,
//! a socket or a clock; it knows connections by their [`ConnId`].
//!
//! Client → server: a text frame is a message to your room, unless it starts
//! with `/`, which makes it a command (`/nick`, `/join`, `/who`, `/rooms`,
//! `/me`, `/help`; `//text` says `/text`). Server → client: one JSON event per
//! text frame ([`events`]). `docs/protocol.md` describes both.

pub mod cluster;
mod config;
pub mod events;
mod history;
mod page;
mod persist;
pub mod shared;
pub mod token;

pub use config::ChatConfig;
pub use token::TokenConfig;

use crate::app::{App, Closed, ConnId, Context, Message, Request, Route};
use events::code;
use history::History;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The room everyone starts in. It is never removed, even when empty.
pub const LOBBY: &str = "lobby";

/// The longest nickname or room name.
pub const MAX_NAME_LEN: usize = 32;

/// The longest prefix a message may carry before its text (`/me `).
const MAX_PREFIX: usize = "/me ".len();

/// A room: its members in the order they joined, the sequence number of
/// its last message (its recent messages are in the chat's [`History`]),
/// and its epoch. Its topic has the room's name.
#[derive(Debug)]
struct Room {
    members: Vec<ConnId>,
    /// The number of its last message shown (with a store: committed).
    seq: u64,
    /// With a store: the number of its last message said (`seq` plus those
    /// waiting for the disk or being written).
    assigned: u64,
    /// Made when the room (and so its sequence) starts: a room removed and
    /// made again, or a restarted server, has a new one, so that a client
    /// resuming with a sequence number can tell a new count from a gap.
    epoch: Box<str>,
}

impl Room {
    fn new() -> Room {
        Room { members: Vec::new(), seq: 0, assigned: 0, epoch: new_epoch() }
    }
}

/// A fresh epoch: 16 hex digits, different in every process and every call.
/// (std's `RandomState` is seeded from the operating system's randomness
/// once per thread and changes its keys with every instance: unpredictable
/// enough to tell one room's life from another, which is all it is for.)
fn new_epoch() -> Box<str> {
    use std::hash::BuildHasher;
    let hash = std::collections::hash_map::RandomState::new().hash_one(0u8);
    format!("{hash:016x}").into()
}

/// The longest epoch a client may send back (ours have 16 characters).
const MAX_EPOCH_LEN: usize = 32;

/// A token bucket: `burst` tokens, refilled at `rate` per second; a message takes one.
///
/// A message is never refused for want of a token: the bucket says how long
/// the connection must then wait before its next message, and the chat
/// pauses its input that long (flood control, as IRC servers do it), so a
/// paste of fifty lines arrives whole, only spread out.
#[derive(Debug, Clone, Copy, Default)]
struct TokenBucket {
    tokens: f64,
    /// When it was last refilled; `None` before the first message (a full bucket).
    last: Option<Instant>,
}

impl TokenBucket {
    /// Takes a token for a message that has arrived. Returns until when the
    /// sender must wait before its next message: `None` while it has tokens
    /// left (or the rate is 0: no limit).
    fn take(&mut self, now: Instant, rate: u32, burst: u32) -> Option<Instant> {
        if rate == 0 {
            return None;
        }
        let (rate, burst) = (f64::from(rate), f64::from(burst));
        let elapsed = self.last.map_or(f64::INFINITY, |last| now.saturating_duration_since(last).as_secs_f64());
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = Some(now);
        // Below zero only if a pause was not kept (a driver that cannot pause):
        // the debt is bounded, and so is the wait it asks for.
        self.tokens = (self.tokens - 1.0).max(-burst);
        (self.tokens < 1.0).then(|| now + Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }
}

/// What the chat keeps for one connection of its own until it joins: the
/// request's query string. (Small, since every connection's slot holds one:
/// the member itself lives in the chat's table.)
#[derive(Debug, Default)]
pub struct ChatConn {
    query: Box<str>,
}

/// A member: its name, its room, its rate limit.
#[derive(Debug)]
struct Member {
    nick: String,
    room: String,
    bucket: TokenBucket,
    /// Its nickname comes from a signed token (reserved while it is here).
    signed: bool,
}

/// Whether `name` is a valid nickname or room name: 1–32 ASCII letters,
/// digits, `_` or `-`. ASCII only, so that no two names look alike.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `c` may not appear in a chat message: C0 control characters
/// other than tab and newline, and DEL. They have no place in a line of
/// chat, and each would cost six bytes escaped in JSON.
fn is_forbidden_in_text(c: char) -> bool {
    (c.is_ascii_control() && c != '\t' && c != '\n') || c == '\u{7f}'
}

/// A client's request to resume a room where it left off: every message
/// after `since`, if the room still has the same `epoch`.
#[derive(Debug, Clone, Copy)]
struct Resume<'a> {
    since: u64,
    epoch: &'a str,
}

/// Why a connection cannot join the chat at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

/// The bounds of the room-size histogram of the metrics.
const ROOM_SIZES: [f64; 10] = [0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0];

/// All chat state of one server.
#[derive(Debug)]
pub struct Chat {
    config: ChatConfig,
    /// Rooms by (lower-case) name.
    rooms: HashMap<String, Room>,
    members: HashMap<ConnId, Member>,
    /// Nicknames in use, lower-cased (uniqueness ignores case), to their owner.
    nicks: HashMap<String, ConnId>,
    next_guest: u64,
    history: History,
    /// Checks `?token=` (with `--jwt-secret`).
    verifier: Option<std::sync::Arc<token::Verifier>>,
    /// When the tokens of signed members expire.
    expiries: token::Expiries,
    /// How many times a member used up its burst and its input was paused.
    rate_limited: u64,
    /// Rooms span nodes through Redis (`--redis`): what the room hears, and
    /// the welcome, go through [`Chat::outgoing`] to the cluster layer
    /// instead of straight to the room's topic.
    cluster: bool,
    /// What a call left for the cluster layer (`cluster` only).
    pub(crate) outgoing: Vec<Outgoing>,
    /// The node's durable store, if it has one (see [`persist`]).
    persist: Option<Box<persist::Persist>>,
}

/// What the chat hands the cluster layer (`chat::cluster`) when its rooms
/// span nodes: the room's order is made in Redis, so a message is numbered
/// there, and a newcomer's welcome waits for the room's history from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// A member's message: its `message` event, written with `seq` 0, which
    /// the cluster layer numbers.
    Say {
        /// Who said it (told `unavailable` if Redis cannot take it).
        from: ConnId,
        /// Its room.
        room: String,
        /// The event.
        event: String,
    },
    /// A `join`, `leave` or `nick` event for everyone in the room, on every node.
    Announce {
        /// The room.
        room: String,
        /// The event.
        event: String,
    },
    /// `conn` entered `room`: its nickname is to be claimed across the
    /// nodes (`claim`), and it is to be welcomed (and subscribed) once the
    /// room's history is read, resuming after `since` in `epoch` if it
    /// asked; `errors` follow the welcome.
    Welcome {
        /// The member.
        conn: ConnId,
        /// The room.
        room: String,
        /// `since` and `epoch`.
        resume: Option<(u64, Box<str>)>,
        /// What to do about its nickname.
        claim: Claim,
        /// `error` events (code, message) for after the welcome.
        errors: Vec<(&'static str, String)>,
    },
    /// `nick` left `room` (for another room, or the chat: then its nickname is free).
    Release {
        /// The nickname.
        nick: String,
        /// The room.
        room: String,
        /// It left the chat.
        free: bool,
    },
    /// `conn` asks to be called `wanted` instead of `old` (`/nick`).
    Rename {
        /// The member.
        conn: ConnId,
        /// Its nickname now.
        old: String,
        /// The one it wants (valid, and free on this node).
        wanted: String,
    },
    /// `/who` from `conn`, in `room`.
    Who {
        /// The member.
        conn: ConnId,
        /// Its room.
        room: String,
    },
    /// `/rooms` from `conn`.
    Rooms(ConnId),
    /// The last member of `room` on this node left it.
    RoomGone(String),
}

/// What a newcomer's nickname needs across the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// It has it already (it moves from room to room).
    Keep,
    /// It asked for this one (free on this node): it gets it if no other node's member has it.
    Want(String),
    /// A guest nickname, unique across the nodes.
    Guest,
    /// A signed member's, from its token: it takes it.
    Signed(String),
}

impl App for Chat {
    type Conn = ChatConn;

    /// `/` and `/chat`; a plain `GET /` is the chat page.
    fn route(&mut self, request: &Request<'_, '_>) -> Route<ChatConn> {
        route(request, self.verifier.as_deref())
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.expiries.next()
    }

    /// Closes (1008 "token expired") the members whose tokens have expired.
    fn on_deadline(&mut self, hub: &mut crate::app::Hub, now: Instant) {
        self.expiries.close_due(hub, now);
    }

    /// Rooms, their sizes (a histogram: one label per room would grow
    /// without bound) and the rate limit's pauses.
    fn report(&self, report: &mut crate::app::stats::Report) {
        report.gauge("rust_chat_rooms", "Rooms that exist now, the lobby included.", self.rooms.len() as i64);
        report.histogram(
            "rust_chat_room_members",
            "Rooms by their number of members.",
            &ROOM_SIZES,
            self.rooms.values().map(|room| room.members.len() as f64),
        );
        report.counter(
            "rust_chat_rate_limited",
            "Times a member used up its burst and its input was paused.",
            self.rate_limited,
        );
        if let Some(persist) = &self.persist {
            persist.report(report);
        }
    }

    fn on_open(&mut self, conn: &mut ChatConn, ctx: &mut Context<'_>) {
        let query = std::mem::take(&mut conn.query);
        if let Err(refusal) = self.connect(&query, ctx) {
            ctx.close(crate::protocol::close_code::POLICY, refusal.0);
        }
    }

    fn on_message(&mut self, _: &mut ChatConn, message: Message<'_>, ctx: &mut Context<'_>) {
        match message {
            Message::Text(text) => self.handle_text(text, ctx),
            Message::Binary(_) => self.handle_binary(ctx),
        }
    }

    /// The longest text, and room for the longest command prefix (`/me `):
    /// a longer message is never held, only read past.
    fn max_message_size(&self, _: &ChatConn) -> Option<usize> {
        Some(max_message(&self.config))
    }

    /// An over-long message costs a message of the rate, is answered with
    /// `message_too_long`, and the connection stays.
    fn on_message_too_long(&mut self, _: &mut ChatConn, ctx: &mut Context<'_>) {
        if self.is_member(ctx) {
            self.throttle(ctx);
            let message = format!("messages are limited to {} bytes; this one has more", self.config.max_text_bytes);
            ctx.send_text(&events::error(code::MESSAGE_TOO_LONG, &message));
        }
    }

    fn on_close(&mut self, _: ChatConn, _: &Closed, ctx: &mut Context<'_>) {
        self.disconnect(ctx);
    }

    /// With a store: what it committed goes out (the store woke the loop).
    fn on_notify(&mut self, hub: &mut crate::app::Hub, _: Instant) {
        let mut effects = Vec::new();
        self.take_committed(&mut effects);
        for effect in effects {
            hub.apply(effect);
        }
    }

    /// With a store: the turn's messages go to it as one batch.
    fn on_turn_end(&mut self) {
        self.flush_store();
    }
}

impl Chat {
    /// An empty chat (but for the lobby) with the limits of `config`.
    pub fn new(config: ChatConfig) -> Chat {
        let mut rooms = HashMap::new();
        rooms.insert(LOBBY.to_string(), Room::new());
        let history = History::new(config.history_len, config.history_bytes);
        let verifier = config.tokens.as_ref().map(|tokens| std::sync::Arc::new(tokens.verifier()));
        let (members, nicks, expiries) = (HashMap::new(), HashMap::new(), token::Expiries::default());
        Chat {
            config,
            rooms,
            members,
            nicks,
            next_guest: 1,
            history,
            verifier,
            expiries,
            rate_limited: 0,
            cluster: false,
            outgoing: Vec::new(),
            persist: None,
        }
    }

    /// What checks tokens, if tokens are in use (shared by the workers' routing).
    pub(crate) fn verifier(&self) -> Option<std::sync::Arc<token::Verifier>> {
        self.verifier.clone()
    }

    /// Whether `id` is a member now.
    pub(crate) fn is_member_id(&self, id: ConnId) -> bool {
        self.members.contains_key(&id)
    }

    /// The number of members in the chat.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// What the history of all rooms holds now, in bytes (at most
    /// [`ChatConfig::history_bytes`]).
    pub fn history_bytes(&self) -> usize {
        self.history.bytes()
    }

    /// The number of rooms (including the lobby).
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// A connection opened the chat endpoint. `query` is the request's query
    /// string (`room=NAME&nick=NAME&since=SEQ&epoch=EPOCH`, all optional). A
    /// name that is invalid or taken, or a room that is full, earns an
    /// `error` event after the `welcome`, and the connection gets a guest
    /// nick or the lobby instead. With `since` and `epoch` the `welcome`
    /// carries the room's messages after `since`, if it can (`recovered`).
    fn connect(&mut self, query: &str, ctx: &mut Context<'_>) -> Result<(), Refusal> {
        let mut errors = Vec::new();
        let (mut want_room, mut want_nick, mut since, mut epoch) = (None, None, None, None);
        let (mut signed, mut expires) = (None, None);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("room", value)) => want_room = Some(value),
                Some(("nick", value)) => want_nick = Some(value),
                // What `route` found in a valid token (see `signed_query`).
                Some((SIGNED_NICK, value)) => signed = Some(value),
                Some((SIGNED_EXPIRES, value)) => expires = value.parse::<u64>().ok(),
                // A number that does not parse asks for a resume that cannot succeed.
                Some(("since", value)) => since = Some(value.parse::<u64>().unwrap_or(u64::MAX)),
                Some(("epoch", value)) => epoch = Some(value),
                _ => {}
            }
        }
        let resume = since.map(|since| Resume { since, epoch: epoch.unwrap_or("") });

        let mut room = LOBBY.to_string();
        if let Some(wanted) = want_room {
            match self.can_enter(wanted) {
                Ok(name) => room = name,
                Err(error) => errors.push(error),
            }
        }
        if room == LOBBY && self.room_len(LOBBY) >= self.config.max_room_members {
            return Err(Refusal("the lobby is full"));
        }

        let id = ctx.id();
        let nick = match signed {
            Some(nick) => {
                self.claim(nick, ctx)?;
                if let Some(expires) = expires {
                    // The token's end, on the loop's clock.
                    let left = (expires.saturating_mul(1000)).saturating_sub((ctx.clock())());
                    self.expiries.push(ctx.now() + Duration::from_millis(left), id);
                }
                nick.to_string()
            }
            None => match want_nick.map(|wanted| self.check_nick(wanted, None)) {
                Some(Ok(nick)) => nick,
                Some(Err(error)) => {
                    errors.push(error);
                    self.guest_nick()
                }
                None => self.guest_nick(),
            },
        };

        tracing::debug!(conn = id.generation, nick = %nick, room = %room, signed = signed.is_some(), "chat: joined");
        self.nicks.insert(nick.to_ascii_lowercase(), id);
        let claim = match (signed, want_nick) {
            (Some(_), _) => Claim::Signed(nick.clone()),
            (None, Some(wanted)) if wanted == nick => Claim::Want(nick.clone()),
            (None, _) => Claim::Guest,
        };
        let member = Member { nick, room: room.clone(), bucket: TokenBucket::default(), signed: signed.is_some() };
        self.members.insert(id, member);
        if self.cluster {
            // The join is announced, and the welcome sent, once the nickname is claimed.
            self.rooms.entry(room.clone()).or_insert_with(Room::new).members.push(id);
            let resume = resume.map(|resume| (resume.since, resume.epoch.into()));
            self.outgoing.push(Outgoing::Welcome { conn: id, room, resume, claim, errors });
            return Ok(());
        }
        self.enter(&room, resume, ctx);
        for (code, message) in errors {
            ctx.send_text(&events::error(code, &message));
        }
        Ok(())
    }

    /// A connection left (closed, failed, or was dropped): it leaves its room.
    fn disconnect(&mut self, ctx: &mut Context<'_>) {
        let Some(member) = self.members.remove(&ctx.id()) else { return };
        let members = &self.members;
        self.expiries.compact(members.len(), |id| members.contains_key(&id));
        tracing::debug!(conn = ctx.id().generation, nick = %member.nick, room = %member.room, "chat: left");
        self.nicks.remove(&member.nick.to_ascii_lowercase());
        self.exit(&member.room, &member.nick, true, ctx);
    }

    /// A text message from a member: a message to its room, or a command.
    fn handle_text(&mut self, text: &str, ctx: &mut Context<'_>) {
        if !self.is_member(ctx) {
            return;
        }
        self.throttle(ctx);
        match text.strip_prefix('/') {
            // `//text` says "/text": drop the first slash.
            Some(rest) if rest.starts_with('/') => self.say(rest, false, ctx),
            Some(command) => self.command(command, ctx),
            None => self.say(text, false, ctx),
        }
    }

    /// Whether this connection is in the chat (it may have been refused on opening).
    fn is_member(&self, ctx: &Context<'_>) -> bool {
        self.members.contains_key(&ctx.id())
    }

    /// Counts a message (or command) against the member's rate: when it has
    /// used its burst, its input pauses until a token is back, so that what
    /// it sends next waits in TCP instead of being dropped.
    fn throttle(&mut self, ctx: &mut Context<'_>) {
        let config = &self.config;
        let Some(member) = self.members.get_mut(&ctx.id()) else { return };
        if let Some(until) = member.bucket.take(ctx.now(), config.rate_limit_per_sec, config.rate_limit_burst) {
            ctx.pause_reading_until(until);
            self.rate_limited += 1;
        }
    }

    /// A binary message from a member: the chat speaks text only.
    fn handle_binary(&mut self, ctx: &mut Context<'_>) {
        if self.is_member(ctx) {
            self.throttle(ctx);
            let message = "binary frames are not part of the chat protocol: send text";
            ctx.send_text(&events::error(code::BINARY_NOT_SUPPORTED, message));
        }
    }

    fn command(&mut self, command: &str, ctx: &mut Context<'_>) {
        let (name, arg) = match command.split_once(char::is_whitespace) {
            Some((name, arg)) => (name, arg.trim()),
            None => (command, ""),
        };
        let one_word = || if arg.is_empty() || arg.contains(char::is_whitespace) { None } else { Some(arg) };
        match name {
            "nick" => match one_word() {
                Some(nick) => self.change_nick(nick, ctx),
                None => ctx.send_text(&events::error(code::BAD_ARGUMENT, "usage: /nick NAME")),
            },
            "join" => match one_word() {
                Some(room) => self.join(room, ctx),
                None => ctx.send_text(&events::error(code::BAD_ARGUMENT, "usage: /join ROOM")),
            },
            "who" if self.cluster => {
                let Some(member) = self.members.get(&ctx.id()) else { return };
                self.outgoing.push(Outgoing::Who { conn: ctx.id(), room: member.room.clone() });
            }
            "who" => {
                let Some(member) = self.members.get(&ctx.id()) else { return };
                ctx.send_text(&events::who(&member.room, &self.nicks_in(&member.room)));
            }
            "rooms" if self.cluster => self.outgoing.push(Outgoing::Rooms(ctx.id())),
            "rooms" => {
                let mut list: Vec<(&str, usize)> =
                    self.rooms.iter().map(|(name, room)| (name.as_str(), room.members.len())).collect();
                list.sort_unstable();
                ctx.send_text(&events::rooms(&list));
            }
            "me" if !arg.is_empty() => {
                let action = command["me".len()..].trim_start();
                self.say(action, true, ctx);
            }
            "me" => ctx.send_text(&events::error(code::BAD_ARGUMENT, "usage: /me ACTION")),
            "help" => ctx.send_text(&events::help()),
            _ => {
                let message =
                    format!("unknown command /{name}: try /help (and //text to say something starting with /)");
                ctx.send_text(&events::error(code::UNKNOWN_COMMAND, &message));
            }
        }
    }

    /// Sends `text` from this connection to everyone in its room, itself included.
    fn say(&mut self, text: &str, action: bool, ctx: &mut Context<'_>) {
        if text.trim().is_empty() {
            ctx.send_text(&events::error(code::EMPTY_MESSAGE, "there is nothing to send"));
            return;
        }
        if text.chars().any(is_forbidden_in_text) {
            let message = "text may not hold control characters other than tab and newline";
            ctx.send_text(&events::error(code::INVALID_TEXT, message));
            return;
        }
        let limit = self.config.max_text_bytes;
        if text.len() > limit {
            let message = format!("messages are limited to {limit} bytes; this one has {}", text.len());
            ctx.send_text(&events::error(code::MESSAGE_TOO_LONG, &message));
            return;
        }
        if !self.cluster && self.said(text, action, ctx) {
            return;
        }
        let Some(member) = self.members.get(&ctx.id()) else { return };
        let Some(room) = self.rooms.get_mut(&member.room) else { return };
        room.seq += 1;
        let time = ctx.unix_time_ms();
        if self.cluster {
            let event = events::message(&member.room, &member.nick, text, time, 0, action);
            self.outgoing.push(Outgoing::Say { from: ctx.id(), room: member.room.clone(), event });
            return;
        }
        let event: Arc<str> = Arc::from(events::message(&member.room, &member.nick, text, time, room.seq, action));
        self.history.push(&member.room, room.seq, Arc::clone(&event));
        ctx.publish_text(&member.room, &event);
    }

    /// A signed member takes its nickname: from an unsigned member who has
    /// it (renamed to a guest, and told why); not from another signed one.
    fn claim(&mut self, nick: &str, ctx: &mut Context<'_>) -> Result<(), Refusal> {
        let Some(&holder) = self.nicks.get(&nick.to_ascii_lowercase()) else { return Ok(()) };
        let Some(member) = self.members.get(&holder) else { return Ok(()) };
        if member.signed {
            return Err(Refusal("this nickname is connected already"));
        }
        let (old, room) = (member.nick.clone(), member.room.clone());
        let guest = self.guest_nick();
        tracing::debug!(conn = holder.generation, old = %old, nick = %guest, "chat: renamed for a signed member");
        self.nicks.remove(&old.to_ascii_lowercase());
        self.nicks.insert(guest.to_ascii_lowercase(), holder);
        if let Some(member) = self.members.get_mut(&holder) {
            member.nick = guest.clone();
        }
        self.announce(&room, events::nick(&room, &old, &guest), ctx);
        let message = format!("{old} has signed in: you are {guest} now");
        ctx.apply(crate::app::Effect::Send {
            to: holder,
            opcode: crate::protocol::OpCode::Text,
            bytes: events::error(code::NICK_RESERVED, &message).into_bytes().into(),
        });
        Ok(())
    }

    fn change_nick(&mut self, wanted: &str, ctx: &mut Context<'_>) {
        let id = ctx.id();
        let Some(member) = self.members.get(&id) else { return };
        if member.signed {
            return ctx.send_text(&events::error(code::NICK_SIGNED, "your nickname comes from your token"));
        }
        let old = member.nick.clone();
        if old == wanted {
            return;
        }
        let nick = match self.check_nick(wanted, Some(id)) {
            Ok(nick) => nick,
            Err((code, message)) => return ctx.send_text(&events::error(code, &message)),
        };
        if self.cluster {
            // Renamed (and announced) once no other node's member has it.
            self.outgoing.push(Outgoing::Rename { conn: id, old, wanted: nick });
            return;
        }
        tracing::debug!(conn = id.generation, old = %old, nick = %nick, "chat: renamed");
        self.nicks.remove(&old.to_ascii_lowercase());
        self.nicks.insert(nick.to_ascii_lowercase(), id);
        let Some(member) = self.members.get_mut(&id) else { return };
        member.nick = nick.clone();
        let room = member.room.clone();
        self.announce(&room, events::nick(&room, &old, &nick), ctx);
    }

    fn join(&mut self, wanted: &str, ctx: &mut Context<'_>) {
        let Some(member) = self.members.get(&ctx.id()) else { return };
        if wanted.eq_ignore_ascii_case(&member.room) {
            let message = format!("you are already in {}", member.room);
            return ctx.send_text(&events::error(code::ALREADY_IN_ROOM, &message));
        }
        let room = match self.can_enter(wanted) {
            Ok(room) => room,
            Err((code, message)) => return ctx.send_text(&events::error(code, &message)),
        };
        let (old, nick) = (member.room.clone(), member.nick.clone());
        tracing::debug!(conn = ctx.id().generation, nick = %nick, from = %old, to = %room, "chat: moved");
        self.exit(&old, &nick, false, ctx);
        if let Some(member) = self.members.get_mut(&ctx.id()) {
            member.room = room.clone();
        }
        self.enter(&room, None, ctx);
    }

    /// Checks that a room can be entered; returns its canonical (lower-case) name.
    fn can_enter(&self, wanted: &str) -> Result<String, (&'static str, String)> {
        if !is_valid_name(wanted) {
            let message = format!("room names are 1-{MAX_NAME_LEN} letters, digits, _ or -");
            return Err((code::INVALID_ROOM, message));
        }
        let name = wanted.to_ascii_lowercase();
        let (max_members, max_rooms) = (self.config.max_room_members, self.config.max_rooms);
        match self.rooms.get(&name) {
            Some(room) if room.members.len() >= max_members => {
                Err((code::ROOM_FULL, format!("{name} is full ({max_members} members)")))
            }
            None if self.rooms.len() >= max_rooms => {
                Err((code::TOO_MANY_ROOMS, format!("the server has its maximum of {max_rooms} rooms")))
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
        if self.cluster {
            // Held until the cluster gives a guest nickname unique across the
            // nodes; no client can ask for it (`~` is not in a valid name).
            self.next_guest += 1;
            return format!("~{}", self.next_guest);
        }
        loop {
            let nick = format!("guest-{}", self.next_guest);
            self.next_guest += 1;
            if !self.nicks.contains_key(&nick) {
                return nick;
            }
        }
    }

    /// Puts this connection into room `name` (creating it): the others hear
    /// of it first, then it subscribes and is welcomed, with the messages it
    /// missed if it is resuming and the history still has them all, or with
    /// the recent ones.
    fn enter(&mut self, name: &str, resume: Option<Resume<'_>>, ctx: &mut Context<'_>) {
        let id = ctx.id();
        let Some(nick) = self.members.get(&id).map(|m| m.nick.clone()) else { return };
        self.announce(name, events::join(name, &nick), ctx);
        if !self.rooms.contains_key(name) {
            let room = self.wake_room(name).unwrap_or_else(Room::new);
            self.rooms.insert(name.to_string(), room);
        }
        let Some(room) = self.rooms.get_mut(name) else { return };
        room.members.push(id);
        if self.cluster {
            let resume = resume.map(|resume| (resume.since, resume.epoch.into()));
            let (claim, errors) = (Claim::Keep, Vec::new());
            self.outgoing.push(Outgoing::Welcome { conn: id, room: name.to_string(), resume, claim, errors });
            return;
        }
        ctx.subscribe(name);
        let (epoch, seq) = (room.epoch.clone(), room.seq);
        let members = self.nicks_in(name);
        let missed = resume
            .filter(|resume| resume.epoch.len() <= MAX_EPOCH_LEN && resume.epoch == &*epoch)
            .and_then(|resume| self.history.after(name, resume.since, seq));
        let position = events::Position { epoch: &epoch, seq, recovered: resume.map(|_| missed.is_some()) };
        let welcome = match missed {
            Some(missed) => events::welcome(&nick, name, &members, position, missed),
            None => events::welcome(&nick, name, &members, position, self.history.of(name)),
        };
        ctx.send_text(&welcome);
    }

    /// Takes this connection out of room `name`, tells the others, and
    /// removes the room if it is now empty.
    fn exit(&mut self, name: &str, nick: &str, leaving: bool, ctx: &mut Context<'_>) {
        ctx.unsubscribe(name);
        if self.cluster {
            let (nick, room) = (nick.to_string(), name.to_string());
            self.outgoing.push(Outgoing::Release { nick, room, free: leaving });
        }
        let Some(room) = self.rooms.get_mut(name) else { return };
        let id = ctx.id();
        room.members.retain(|member| *member != id);
        if room.members.is_empty() && name != LOBBY {
            if self.make_dormant(name) {
                return;
            }
            self.rooms.remove(name);
            self.history.forget(name);
            if self.cluster {
                // Members on other nodes may remain: they hear of it.
                self.announce(name, events::leave(name, nick), ctx);
                self.outgoing.push(Outgoing::RoomGone(name.to_string()));
            }
        } else {
            self.announce(name, events::leave(name, nick), ctx);
        }
    }

    /// Tells everyone in room `name` (on every node, with `--redis`) of a join, leave or rename.
    fn announce(&mut self, name: &str, event: String, ctx: &mut Context<'_>) {
        if self.cluster {
            self.outgoing.push(Outgoing::Announce { room: name.to_string(), event });
        } else {
            ctx.publish_text(name, &event);
        }
    }

    /// The welcome of `conn` into `room`, if it is still there (the cluster
    /// layer asks once the room's history has come from Redis): its nick,
    /// the room's members here, where the room stands, and `history`.
    pub(crate) fn welcome_of(
        &self,
        conn: ConnId,
        room: &str,
        members: &[&str],
        position: events::Position<'_>,
        history: impl Iterator<Item = impl AsRef<str>>,
    ) -> Option<String> {
        let member = self.members.get(&conn).filter(|member| member.room == room)?;
        Some(events::welcome(&member.nick, room, members, position, history))
    }

    /// Every member's (nickname, room), but those whose nickname is not yet
    /// settled (a guest's, before the cluster gives it one).
    pub(crate) fn members_here(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.values().filter(|m| !m.nick.starts_with('~')).map(|m| (m.nick.as_str(), m.room.as_str()))
    }

    /// The room of `conn`, if it is a member.
    pub(crate) fn room_of(&self, conn: ConnId) -> Option<&str> {
        self.members.get(&conn).map(|member| member.room.as_str())
    }

    /// The nickname of `conn`, if it is a member.
    pub(crate) fn nick_of(&self, conn: ConnId) -> Option<&str> {
        self.members.get(&conn).map(|member| member.nick.as_str())
    }

    /// `conn` is called `nick` from now on (the cluster settled it): `false`
    /// if another member here took it meanwhile.
    pub(crate) fn set_nick(&mut self, conn: ConnId, nick: &str) -> bool {
        let key = nick.to_ascii_lowercase();
        if self.nicks.get(&key).is_some_and(|holder| *holder != conn) {
            return false;
        }
        let Some(member) = self.members.get_mut(&conn) else { return false };
        self.nicks.remove(&member.nick.to_ascii_lowercase());
        self.nicks.insert(key, conn);
        member.nick = nick.to_string();
        true
    }

    /// From now on the rooms span nodes: see [`cluster`] (before any member joins).
    pub(crate) fn span_nodes(&mut self) {
        self.cluster = true;
    }

    /// The chat's settings.
    pub(crate) fn config(&self) -> &ChatConfig {
        &self.config
    }

    /// Whether `conn` is a member in `room` now.
    pub(crate) fn is_in(&self, conn: ConnId, room: &str) -> bool {
        self.members.get(&conn).is_some_and(|member| member.room == room)
    }

    fn room_len(&self, name: &str) -> usize {
        self.rooms.get(name).map_or(0, |room| room.members.len())
    }

    fn nicks_in(&self, name: &str) -> Vec<&str> {
        let Some(room) = self.rooms.get(name) else { return Vec::new() };
        room.members.iter().filter_map(|id| self.members.get(id)).map(|m| m.nick.as_str()).collect()
    }
}

/// The longest message the chat reads: the longest text and room for the
/// longest command prefix (`/me `).
pub(crate) fn max_message(config: &ChatConfig) -> usize {
    config.max_text_bytes.saturating_add(MAX_PREFIX)
}

/// The chat's routes: its page at `GET /` (with `/chat.js` and `/chat.css`), members at `/` and `/chat` (the
/// query is read when the connection opens). No state: the shared chat routes without its lock.
pub(crate) fn route(request: &Request<'_, '_>, verifier: Option<&token::Verifier>) -> Route<ChatConn> {
    match request.path() {
        "/" if !request.is_upgrade() => Route::Respond(page::response()),
        path @ ("/chat.js" | "/chat.css") if !request.is_upgrade() => {
            page::asset(path).map_or(Route::NotFound, Route::Respond)
        }
        "/" | "/chat" => {
            let query = request.target.split_once('?').map_or("", |(_, query)| query);
            let Some(verifier) = verifier else { return Route::Accept(ChatConn { query: query.into() }) };
            let token = query.split('&').find_map(|pair| pair.strip_prefix("token="));
            match token.map(|token| verifier.verify(token)) {
                Some(Ok(identity)) => Route::Accept(ChatConn { query: signed_query(query, &identity).into() }),
                Some(Err(why)) => Route::Respond(unauthorized(why)),
                None if verifier.require => {
                    Route::Respond(unauthorized("a token is required: connect with ?token=JWT"))
                }
                None => Route::Accept(ChatConn { query: query.into() }),
            }
        }
        _ => Route::NotFound,
    }
}

/// The keys under which `route` passes a token's identity on to `connect`.
/// They start with a NUL byte, which no request target can hold (the HTTP
/// parser refuses control characters), so no client can forge them.
const SIGNED_NICK: &str = "\0nick";
const SIGNED_EXPIRES: &str = "\0exp";

/// The query as the chat keeps it for a signed client: without the token
/// (and without a `nick`, which the token decides), with the identity.
fn signed_query(query: &str, identity: &token::Identity) -> String {
    let mut kept: Vec<String> = query
        .split('&')
        .filter(|pair| !pair.starts_with("token=") && !pair.starts_with("nick=") && !pair.starts_with('\0'))
        .map(str::to_string)
        .collect();
    kept.push(format!("{SIGNED_NICK}={}", identity.nick));
    if let Some(expires) = identity.expires {
        kept.push(format!("{SIGNED_EXPIRES}={expires}"));
    }
    kept.join("&")
}

fn unauthorized(why: &str) -> crate::app::HttpResponse {
    let mut response = crate::app::HttpResponse::error(401, why);
    response.headers.push("WWW-Authenticate: Bearer".into());
    response
}

#[cfg(test)]
mod tests;
