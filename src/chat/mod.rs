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
mod commands;
mod config;
mod connect;
pub mod events;
mod history;
mod nicks;
mod page;
mod persist;
mod rooms;
pub mod shared;
pub mod token;

pub use config::ChatConfig;
pub use token::TokenConfig;

use crate::app::{App, Closed, ConnId, Context, IdMap, Message, Request, Route};
use commands::TokenBucket;
pub(crate) use connect::route;
use events::code;
use history::History;
use rooms::{Room, new_epoch};
use std::collections::HashMap;
use std::time::Instant;

/// The room everyone starts in. It is never removed, even when empty.
pub const LOBBY: &str = "lobby";

/// The longest nickname or room name.
pub const MAX_NAME_LEN: usize = 32;

/// The longest prefix a message may carry before its text (`/me `).
const MAX_PREFIX: usize = "/me ".len();

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
    members: IdMap<Member>,
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
    /// Where a message's event is written before it goes into its `Arc`
    /// (kept, so that writing it allocates nothing).
    scratch: String,
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
        self.take_committed(hub);
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
        let (members, nicks, expiries) = (IdMap::default(), HashMap::new(), token::Expiries::default());
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
            scratch: String::new(),
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

    /// From now on the rooms span nodes: see [`cluster`] (before any member joins).
    pub(crate) fn span_nodes(&mut self) {
        self.cluster = true;
    }

    /// The chat's settings.
    pub(crate) fn config(&self) -> &ChatConfig {
        &self.config
    }
}

/// The longest message the chat reads: the longest text and room for the
/// longest command prefix (`/me `).
pub(crate) fn max_message(config: &ChatConfig) -> usize {
    config.max_text_bytes.saturating_add(MAX_PREFIX)
}

#[cfg(test)]
mod tests;
