//! Rooms across nodes (`--redis`): what one node does so that a room is one
//! room whichever node its members reached.
//!
//! Redis makes a room's order. A member's message goes to Redis (the
//! publishing script of [`broker::redis`](crate::broker::redis) numbers it,
//! keeps it in the room's stream and publishes it), and every node with
//! members in the room — the sender's own included — hands it to them when
//! it comes back on the room's channel, in the order of its numbers. So
//! every member on every node sees the same messages in the same order,
//! numbered without a gap, and what a node has not received (it was
//! cut off from Redis a moment) it reads back from the stream before it
//! goes on: a node that sees a number jump asks for what is between.
//!
//! A newcomer's `welcome` carries the room's history from Redis. The node
//! subscribes to the room's channel first (once, for all its members there),
//! then reads the history; the reply says up to which number it goes (`L`).
//! Messages up to `L` that are still on their way on the channel are not
//! given to the newcomer (they are in its history), and those after `L` are:
//! the newcomer is welcomed, and subscribed to the room's topic, at the
//! moment the node has handed its members everything up to `L` — what came
//! after `L` before that moment follows the welcome from the node's recent
//! messages. No gap, no repeat.
//!
//! `join`, `leave` and `nick` events go through the room's channel too (not
//! numbered, not kept), so that they keep their place among the messages.
//!
//! While Redis cannot be reached, a message is refused at once with an
//! `error` event (`unavailable`): it is delivered to no one, so nobody's
//! order differs. Members stay connected. When the link is back, each room
//! is subscribed to again and the node reads what it missed.
//!
//! Nicknames and presence are kept in Redis too. Each node has an id and a
//! lease (`rc:node:ID`, [`LEASE`]), renewed every [`TICK`]; a nickname
//! (`rc:nick:NAME`) is held by a node, and is free when no node holds it or
//! its holder's lease has run out; each room's members (`rc:who:ROOM`,
//! nick → node) and each node's members (`rc:members:ID`, nick → room) are
//! hashes. `/who` and `/rooms` read them, counting only nodes whose lease
//! runs. Every node, every [`TICK`], looks for nodes whose lease ran out and
//! (one of them, atomically) takes their members out of their rooms,
//! publishes their `leave` events and frees their nicknames: a node killed
//! outright is gone from every room within `LEASE + TICK` (20 s). These keys are
//! not under one hash tag: presence wants one Redis (or one shard).
//!
//! Not yet across nodes: room limits (members, rooms) count this node's
//! members; a signed member takes its nickname from a member of another node
//! without renaming it there.

mod numbering;
mod presence;

pub use presence::{LEASE, TICK, script_loads};

use super::{Chat, Claim, Outgoing, events};
use crate::app::{ConnId, Effect};
use crate::broker::redis::{self, Since, TopicKeys};
use crate::broker::{Incoming, Remote};
use crate::protocol::OpCode;
use presence::{CLAIM, RELEASE, RENAME, ROOMS, WHO, announce, on_rooms, on_who, script};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What a command the chat sent to Redis was for (opaque: the link hands it back).
#[derive(Debug)]
pub struct Tag(Kind);

#[derive(Debug)]
enum Kind {
    /// A newcomer's nickname (`wanted`: it asked for one).
    Claim { room: Arc<str>, conn: ConnId, wanted: bool, announce: bool },
    /// The members for a newcomer's welcome.
    Members { room: Arc<str>, conn: ConnId },
    /// `/nick`.
    Rename { conn: ConnId, old: String, new: String },
    /// `/who`.
    Who { conn: ConnId, room: String },
    /// `/rooms`.
    Rooms(ConnId),
    /// Nothing to do with the reply.
    Quiet,
    /// The lease's renewal.
    Tick,
    /// A member's message.
    Say(ConnId),
    /// A `join`, `leave` or `nick` event.
    Announce,
    /// The history for a newcomer's welcome.
    History { room: Arc<str>, conn: ConnId },
    /// What the node missed in a room.
    CatchUp { room: Arc<str> },
}

/// The link a node's chat speaks to Redis through.
pub type ClusterLink = dyn Remote<Tag>;

/// The marker of an unnumbered event on a room's channel (Redis's epochs are hex and `-`).
const UNNUMBERED: &str = "*";

/// One node's view of the rooms it has members in.
#[derive(Debug, Default)]
pub(crate) struct Node {
    /// This node's id in Redis (new in every process).
    id: String,
    rooms: HashMap<Arc<str>, NodeRoom>,
    /// Room by channel.
    channels: HashMap<Vec<u8>, Arc<str>>,
    /// How many messages a welcome carries (`--history`).
    history_len: usize,
}

#[derive(Debug)]
struct NodeRoom {
    keys: TopicKeys,
    /// Redis confirmed the node's subscription to the room's channel.
    subscribed: bool,
    /// The room's epoch, once known.
    epoch: Option<String>,
    /// The number of the last message handed to the room's members here;
    /// `None` until the first history after subscribing says where to start.
    delivered: Option<u64>,
    /// The last messages handed out, for newcomers whose history ends before them.
    recent: VecDeque<(u64, Arc<str>)>,
    /// Newcomers not yet welcomed.
    joins: Vec<Join>,
    /// Live messages waiting (for the first history, or for a catch-up), in their order.
    held: VecDeque<(String, u64, Arc<str>)>,
    /// A catch-up read is on its way.
    catching_up: bool,
}

#[derive(Debug)]
struct Join {
    conn: ConnId,
    resume: Option<(u64, Box<str>)>,
    /// Its nickname, until it is claimed (then `None`).
    claim: Option<Claim>,
    /// The claim was sent (and has not failed).
    claiming: bool,
    /// For after the welcome.
    errors: Vec<(&'static str, String)>,
    /// The room's members across the nodes, once read.
    members: Option<Vec<String>>,
    /// Its history was asked for (and has not failed).
    asked: bool,
    /// Its history, once read.
    ready: Option<Ready>,
}

#[derive(Debug)]
struct Ready {
    epoch: String,
    last: u64,
    recovered: Option<bool>,
    history: Vec<Arc<str>>,
}

impl Node {
    pub(crate) fn new(history_len: usize) -> Node {
        Node { id: super::new_epoch().into(), history_len: history_len.max(1), ..Node::default() }
    }

    /// Carries out what a call of the chat left for the cluster.
    pub(crate) fn outgoing(&mut self, chat: &mut Chat, link: &ClusterLink, op: Outgoing, out: &mut Vec<Effect>) {
        let chat = &*chat;
        match op {
            Outgoing::Say { from, room, event } => {
                if !link.is_up() {
                    return unavailable(chat, from, out);
                }
                // The room's keys as the node keeps them (it has members there), not made again per message.
                let command = match self.rooms.get(room.as_str()) {
                    Some(entry) => redis::publish_command(&entry.keys, event.as_bytes(), self.history_len),
                    None => redis::publish_command(&TopicKeys::of(&room), event.as_bytes(), self.history_len),
                };
                link.command(Tag(Kind::Say(from)), command);
            }
            Outgoing::Announce { room, event } => announce(link, &self.id, &room, &event, out),
            Outgoing::Welcome { conn, room, resume, claim, errors } => {
                let room: Arc<str> = room.into();
                let (history_len, id) = (self.history_len, self.id.clone());
                let entry = self.room(&room, link);
                let claim = Some(claim);
                let join =
                    Join { conn, resume, claim, claiming: false, errors, members: None, asked: false, ready: None };
                entry.joins.push(join);
                if entry.subscribed {
                    ask_all(entry, &room, link, history_len, &id, chat);
                }
            }
            Outgoing::Release { nick, room, free } => {
                let free = if free { "1" } else { "0" };
                link.command(Tag(Kind::Quiet), script(&RELEASE, &[&self.id, &nick, &room, free]));
            }
            Outgoing::Rename { conn, old, wanted } => {
                if !link.is_up() {
                    return unavailable(chat, conn, out);
                }
                let Some(room) = chat.room_of(conn) else { return };
                let command = script(&RENAME, &[&self.id, &old, &wanted, room]);
                link.command(Tag(Kind::Rename { conn, old, new: wanted }), command);
            }
            Outgoing::Who { conn, room } => {
                if !link.is_up() {
                    return unavailable(chat, conn, out);
                }
                link.command(Tag(Kind::Who { conn, room: room.clone() }), script(&WHO, &[&room]));
            }
            Outgoing::Rooms(conn) => {
                if !link.is_up() {
                    return unavailable(chat, conn, out);
                }
                link.command(Tag(Kind::Rooms(conn)), script(&ROOMS, &[]));
            }
            Outgoing::RoomGone(room) => {
                if let Some(gone) = self.rooms.remove(room.as_str()) {
                    link.unsubscribe(gone.keys.channel.as_bytes());
                    self.channels.remove(gone.keys.channel.as_bytes());
                }
            }
        }
    }

    /// The node's state of `room`, made (and subscribed to) if it has none.
    fn room(&mut self, room: &Arc<str>, link: &ClusterLink) -> &mut NodeRoom {
        let channels = &mut self.channels;
        self.rooms.entry(Arc::clone(room)).or_insert_with(|| {
            let keys = TopicKeys::of(room);
            link.subscribe(keys.channel.as_bytes());
            channels.insert(keys.channel.clone().into_bytes(), Arc::clone(room));
            NodeRoom {
                keys,
                subscribed: false,
                epoch: None,
                delivered: None,
                recent: VecDeque::new(),
                joins: Vec::new(),
                held: VecDeque::new(),
                catching_up: false,
            }
        })
    }

    /// Takes in what the link handed back.
    pub(crate) fn incoming(
        &mut self,
        chat: &mut Chat,
        link: &ClusterLink,
        incoming: Incoming<Tag>,
        out: &mut Vec<Effect>,
    ) {
        match incoming {
            Incoming::Reply(Tag(Kind::Claim { room, conn, wanted, announce: tell }), reply) => {
                self.on_claim(chat, link, room, conn, wanted, tell, reply, out);
            }
            Incoming::Reply(Tag(Kind::Members { room, conn }), reply) => self.on_members(chat, room, conn, reply, out),
            Incoming::Reply(Tag(Kind::Rename { conn, old, new }), reply) => {
                self.on_rename(chat, link, conn, old, new, reply, out);
            }
            Incoming::Reply(Tag(Kind::Who { conn, room }), reply) => on_who(chat, conn, room, reply, out),
            Incoming::Reply(Tag(Kind::Rooms(conn)), reply) => on_rooms(chat, conn, reply, out),
            Incoming::Reply(Tag(Kind::Quiet), _) => {}
            Incoming::Reply(Tag(Kind::Say(from)), reply) => {
                let numbered = reply.ok().is_some_and(|value| redis::published(&value).is_ok());
                if !numbered {
                    unavailable(chat, from, out);
                }
            }
            Incoming::Reply(Tag(Kind::Announce), _) => {}
            Incoming::Reply(Tag(Kind::History { room, conn }), reply) => {
                self.on_history(chat, link, room, conn, reply, out);
            }
            Incoming::Reply(Tag(Kind::CatchUp { room }), reply) => self.on_catch_up(chat, link, room, reply, out),
            Incoming::Subscribed(channel) => self.on_subscribed(chat, link, channel),
            Incoming::Message { channel, payload } => self.on_message(chat, link, channel, payload, out),
            Incoming::Up => {
                self.tick(chat, link);
                // What happened while Redis was away (members who left, whose
                // releases failed) is put right.
                self.sync(chat, link);
            }
            Incoming::Reply(Tag(Kind::Tick), reply) => self.on_tick(chat, link, reply),
            Incoming::Down => {
                for entry in self.rooms.values_mut() {
                    entry.subscribed = false;
                    entry.catching_up = false;
                    for join in &mut entry.joins {
                        join.asked = false;
                        join.claiming = false;
                    }
                }
            }
        }
    }
}

/// Tells `from` that its message was not taken.
fn unavailable(chat: &Chat, from: ConnId, out: &mut Vec<Effect>) {
    if chat.is_member_id(from) {
        let message = "the chat cannot number messages now (its Redis is unavailable): this one was not sent";
        let bytes = events::error(events::code::UNAVAILABLE, message).into_bytes().into();
        out.push(Effect::Send { to: from, opcode: OpCode::Text, bytes });
    }
}

/// Sends, for each newcomer of the room, what it waits for next: its
/// nickname's claim, then (the room subscribed) its history and the room's members.
fn ask_all(entry: &mut NodeRoom, room: &Arc<str>, link: &ClusterLink, history_len: usize, id: &str, chat: &Chat) {
    entry.joins.retain(|join| chat.is_in(join.conn, room));
    for join in entry.joins.iter_mut().filter(|join| join.claim.is_some() && !join.claiming) {
        let Some(claim) = &join.claim else { continue };
        let nick = chat.nick_of(join.conn).unwrap_or_default();
        let (mode, nick) = match claim {
            Claim::Keep => ("keep", nick),
            Claim::Want(wanted) => ("want", wanted.as_str()),
            Claim::Guest => ("guest", ""),
            Claim::Signed(signed) => ("force", signed.as_str()),
        };
        join.claiming = true;
        let (wanted, announce) = (matches!(claim, Claim::Want(_)), !matches!(claim, Claim::Keep));
        let tag = Tag(Kind::Claim { room: Arc::clone(room), conn: join.conn, wanted, announce });
        link.command(tag, script(&CLAIM, &[id, mode, nick, room]));
    }
    for join in entry.joins.iter_mut().filter(|join| join.claim.is_none() && !join.asked) {
        (join.asked, join.ready, join.members) = (true, None, None);
        link.command(Tag(Kind::Members { room: Arc::clone(room), conn: join.conn }), script(&WHO, &[room]));
        let since = match &join.resume {
            Some((seq, epoch)) => Since::After { seq: *seq, epoch },
            None => Since::Last,
        };
        let tag = Tag(Kind::History { room: Arc::clone(room), conn: join.conn });
        link.command(tag, redis::history_command(&entry.keys, since, history_len));
    }
}
