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
//! Not yet across nodes (issue 14 goes on): nicknames are unique per node,
//! `/who` and `/rooms` answer for this node, room limits count this node's
//! members, and a node's death is not yet seen by the others.

use super::{Chat, Outgoing, events};
use crate::app::{ConnId, Effect};
use crate::broker::redis::{self, Since, TopicKeys};
use crate::broker::{Incoming, Remote};
use crate::protocol::OpCode;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What a command the chat sent to Redis was for (opaque: the link hands it back).
#[derive(Debug)]
pub struct Tag(Kind);

#[derive(Debug)]
enum Kind {
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

/// Live messages a room may hold while the node reads what it missed;
/// past it the oldest go, and are read back from Redis in their turn.
const MAX_HELD: usize = 10_000;

/// The marker of an unnumbered event on a room's channel (Redis's epochs are hex and `-`).
const UNNUMBERED: &str = "*";

/// One node's view of the rooms it has members in.
#[derive(Debug, Default)]
pub(crate) struct Node {
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
        Node { history_len: history_len.max(1), ..Node::default() }
    }

    /// Carries out what a call of the chat left for the cluster.
    pub(crate) fn outgoing(&mut self, chat: &Chat, link: &ClusterLink, op: Outgoing, out: &mut Vec<Effect>) {
        match op {
            Outgoing::Say { from, room, event } => {
                if !link.is_up() {
                    return unavailable(chat, from, out);
                }
                let keys = TopicKeys::of(&room);
                link.command(Tag(Kind::Say(from)), redis::publish_command(&keys, event.as_bytes(), self.history_len));
            }
            Outgoing::Announce { room, event } => {
                let keys = TopicKeys::of(&room);
                let payload = format!("{UNNUMBERED} 0 {event}");
                let command = vec![b"PUBLISH".to_vec(), keys.channel.into_bytes(), payload.into_bytes()];
                link.command(Tag(Kind::Announce), command);
            }
            Outgoing::Welcome { conn, room, resume } => {
                let room: Arc<str> = room.into();
                let history_len = self.history_len;
                let entry = self.room(&room, link);
                entry.joins.push(Join { conn, resume, asked: false, ready: None });
                if entry.subscribed {
                    ask_all(entry, &room, link, history_len);
                }
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
    pub(crate) fn incoming(&mut self, chat: &Chat, link: &ClusterLink, incoming: Incoming<Tag>, out: &mut Vec<Effect>) {
        let history_len = self.history_len;
        match incoming {
            Incoming::Reply(Tag(Kind::Say(from)), reply) => {
                let numbered = reply.ok().is_some_and(|value| redis::published(&value).is_ok());
                if !numbered {
                    unavailable(chat, from, out);
                }
            }
            Incoming::Reply(Tag(Kind::Announce), _) => {}
            Incoming::Reply(Tag(Kind::History { room, conn }), reply) => {
                let Some(entry) = self.rooms.get_mut(&room) else { return };
                let Some(join) = entry.joins.iter_mut().find(|join| join.conn == conn) else { return };
                let Some(kept) = reply.ok().and_then(|value| redis::kept(&value).ok()) else {
                    // Asked again when the room's subscription is made again.
                    join.asked = false;
                    return;
                };
                let history =
                    kept.messages.iter().filter_map(|(seq, event)| numbered(event, *seq)).map(Arc::from).collect();
                let recovered = join.resume.as_ref().map(|_| kept.resumed && kept.complete);
                join.ready = Some(Ready { epoch: kept.epoch.clone(), last: kept.last, recovered, history });
                if entry.delivered.is_none() {
                    // The first history since subscribing: live messages up
                    // to its last number are in it; those after it come.
                    entry.delivered = Some(kept.last);
                    entry.epoch = Some(kept.epoch);
                    release(entry, &room, link, out);
                }
                settle(entry, &room, chat, out);
            }
            Incoming::Reply(Tag(Kind::CatchUp { room }), reply) => {
                let Some(entry) = self.rooms.get_mut(&room) else { return };
                entry.catching_up = false;
                if let Some(kept) = reply.ok().and_then(|value| redis::kept(&value).ok()) {
                    if entry.epoch.as_deref() != Some(kept.epoch.as_str()) {
                        entry.epoch = Some(kept.epoch.clone());
                        entry.delivered = Some(0);
                    }
                    for (seq, event) in &kept.messages {
                        if let Some(event) = numbered(event, *seq) {
                            take_live(entry, &room, link, out, kept.epoch.clone(), *seq, event.into());
                        }
                    }
                    // What the stream no longer holds is gone: go on from its last.
                    if !entry.catching_up && entry.delivered.is_some_and(|d| d < kept.last) {
                        entry.delivered = Some(kept.last);
                    }
                }
                release(entry, &room, link, out);
                settle(entry, &room, chat, out);
            }
            Incoming::Subscribed(channel) => {
                let Some(room) = self.channels.get(&channel).cloned() else { return };
                let Some(entry) = self.rooms.get_mut(&room) else { return };
                entry.subscribed = true;
                ask_all(entry, &room, link, history_len);
                // Subscribed again after an outage: read what went by meanwhile.
                if entry.delivered.is_some() {
                    catch_up(entry, &room, link, history_len);
                }
            }
            Incoming::Message { channel, payload } => {
                let Some(room) = self.channels.get(&channel).cloned() else { return };
                let Some(entry) = self.rooms.get_mut(&room) else { return };
                let Some(got) = redis::received(&payload) else { return };
                let Ok(event) = std::str::from_utf8(got.payload) else { return };
                if got.epoch == UNNUMBERED {
                    out.push(Effect::Publish { topic: room, opcode: OpCode::Text, bytes: event.as_bytes().into() });
                    return;
                }
                let Some(event) = numbered(got.payload, got.seq) else { return };
                take_live(entry, &room, link, out, got.epoch.to_string(), got.seq, event.into());
                settle(entry, &room, chat, out);
            }
            Incoming::Up => {}
            Incoming::Down => {
                for entry in self.rooms.values_mut() {
                    entry.subscribed = false;
                    entry.catching_up = false;
                    for join in &mut entry.joins {
                        join.asked = false;
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

/// A stored event (written with `seq` 0) with its number.
fn numbered(event: &[u8], seq: u64) -> Option<String> {
    let event = std::str::from_utf8(event).ok()?;
    // Nicks and room names hold no quote, so the first match is the field.
    let (head, tail) = event.split_once(",\"seq\":0,")?;
    Some(format!("{head},\"seq\":{seq},{tail}"))
}

fn ask_all(entry: &mut NodeRoom, room: &Arc<str>, link: &ClusterLink, history_len: usize) {
    for join in entry.joins.iter_mut().filter(|join| !join.asked && join.ready.is_none()) {
        join.asked = true;
        let since = match &join.resume {
            Some((seq, epoch)) => Since::After { seq: *seq, epoch },
            None => Since::Last,
        };
        let tag = Tag(Kind::History { room: Arc::clone(room), conn: join.conn });
        link.command(tag, redis::history_command(&entry.keys, since, history_len));
    }
}

fn catch_up(entry: &mut NodeRoom, room: &Arc<str>, link: &ClusterLink, history_len: usize) {
    let (Some(seq), Some(epoch)) = (entry.delivered, entry.epoch.as_deref()) else { return };
    if entry.catching_up {
        return;
    }
    entry.catching_up = true;
    let command = redis::history_command(&entry.keys, Since::After { seq, epoch }, history_len.max(1000));
    link.command(Tag(Kind::CatchUp { room: Arc::clone(room) }), command);
}

/// A numbered message for the room: handed out in its turn, held, or (already had) dropped.
fn take_live(
    entry: &mut NodeRoom,
    room: &Arc<str>,
    link: &ClusterLink,
    out: &mut Vec<Effect>,
    epoch: String,
    seq: u64,
    event: Arc<str>,
) {
    let Some(delivered) = entry.delivered.filter(|_| !entry.catching_up) else {
        if entry.held.len() == MAX_HELD {
            entry.held.pop_front();
        }
        entry.held.push_back((epoch, seq, event));
        return;
    };
    let delivered = if entry.epoch.as_deref() == Some(epoch.as_str()) {
        delivered
    } else {
        // A new life of the room (its keys were lost): it counts from 1 again.
        entry.epoch = Some(epoch.clone());
        entry.recent.clear();
        0
    };
    if seq <= delivered {
        return;
    }
    if seq > delivered + 1 {
        entry.delivered = Some(delivered);
        entry.held.push_back((epoch, seq, event));
        catch_up(entry, room, link, 1000);
        return;
    }
    out.push(Effect::Publish { topic: Arc::clone(room), opcode: OpCode::Text, bytes: event.as_bytes().into() });
    entry.delivered = Some(seq);
    if entry.recent.len() >= 1000 {
        entry.recent.pop_front();
    }
    entry.recent.push_back((seq, event));
}

/// Hands out the held messages that can go now.
fn release(entry: &mut NodeRoom, room: &Arc<str>, link: &ClusterLink, out: &mut Vec<Effect>) {
    let held = std::mem::take(&mut entry.held);
    for (epoch, seq, event) in held {
        take_live(entry, room, link, out, epoch, seq, event);
    }
}

/// Welcomes the newcomers whose history the node has caught up with.
fn settle(entry: &mut NodeRoom, room: &Arc<str>, chat: &Chat, out: &mut Vec<Effect>) {
    let Some(delivered) = entry.delivered.filter(|_| !entry.catching_up) else { return };
    let recent = &entry.recent;
    entry.joins.retain(|join| {
        let Some(ready) = &join.ready else { return true };
        if ready.last > delivered && ready.epoch.as_str() == entry.epoch.as_deref().unwrap_or("") {
            return true;
        }
        if !chat.is_in(join.conn, room) {
            return false;
        }
        let after = recent.iter().filter(|(seq, _)| *seq > ready.last).map(|(_, event)| Arc::clone(event));
        let history: Vec<Arc<str>> = ready.history.iter().cloned().chain(after).collect();
        let epoch = entry.epoch.as_deref().unwrap_or(&ready.epoch);
        let position = events::Position { epoch, seq: delivered.max(ready.last), recovered: ready.recovered };
        if let Some(welcome) = chat.welcome_of(join.conn, room, position, history.iter()) {
            out.push(Effect::Send { to: join.conn, opcode: OpCode::Text, bytes: welcome.into_bytes().into() });
            out.push(Effect::Subscribe { id: join.conn, topic: Arc::clone(room) });
        }
        false
    });
}
