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

use super::{Chat, Claim, Outgoing, events};
use crate::app::{ConnId, Effect};
use crate::broker::redis::{self, Since, TopicKeys};
use crate::broker::resp::{Value, as_bytes, as_int};
use crate::broker::{Incoming, Remote};
use crate::protocol::OpCode;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// How long a node's lease runs without renewal.
pub const LEASE: Duration = Duration::from_secs(15);

/// How often a node renews its lease and looks for nodes whose lease ran out.
pub const TICK: Duration = Duration::from_secs(5);

/// Claims a nickname for a newcomer and puts it in its room. ARGV: node,
/// mode (`keep`: it has it; `want`: if free; `guest`; `force`: signed),
/// nick, room. Returns {nick, 1 if it got the one it wanted}.
const CLAIM_SCRIPT: &str = r"
local node, mode, nick, room = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function take(name)
  local key = 'rc:nick:' .. string.lower(name)
  local holder = redis.call('GET', key)
  if holder and holder ~= node and redis.call('EXISTS', 'rc:node:' .. holder) == 1 then return false end
  redis.call('SET', key, node)
  return true
end
local got = 1
if mode == 'force' then
  redis.call('SET', 'rc:nick:' .. string.lower(nick), node)
elseif mode == 'guest' or (mode == 'want' and not take(nick)) then
  got = 0
  repeat nick = 'guest-' .. redis.call('INCR', 'rc:guests') until take(nick)
end
redis.call('HSET', 'rc:who:' .. room, nick, node)
redis.call('HSET', 'rc:members:' .. node, nick, room)
redis.call('SADD', 'rc:rooms', room)
return {nick, got}
";

/// A member left a room (ARGV: node, nick, room, `1` if it left the chat: its nick is freed).
const RELEASE_SCRIPT: &str = r"
local node, nick, room = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', 'rc:who:' .. room, nick) == node then redis.call('HDEL', 'rc:who:' .. room, nick) end
if ARGV[4] == '1' then
  redis.call('HDEL', 'rc:members:' .. node, nick)
  local key = 'rc:nick:' .. string.lower(nick)
  if redis.call('GET', key) == node then redis.call('DEL', key) end
end
return 1
";

/// After an outage (ARGV: node, then nick, room, nick, room, ...: the
/// node's members now): what Redis holds of this node is made what it is.
/// Members that left meanwhile are taken out (their `leave` events
/// published, their nicknames freed); the others are put back, unless
/// another live node's member took a nickname meanwhile.
const SYNC_SCRIPT: &str = r#"
local node = ARGV[1]
local now = {}
for i = 2, #ARGV, 2 do now[ARGV[i]] = ARGV[i + 1] end
local old = redis.call('HGETALL', 'rc:members:' .. node)
for i = 1, #old, 2 do
  local nick, room = old[i], old[i + 1]
  if now[nick] ~= room then
    if redis.call('HGET', 'rc:who:' .. room, nick) == node then
      redis.call('HDEL', 'rc:who:' .. room, nick)
      -- From this node: its own members heard of it when it happened.
      redis.call('PUBLISH', 'rc:{' .. room .. '}:msg', '* 0 ' .. node .. ' {"nick":"' .. nick .. '","room":"' .. room .. '","type":"leave"}')
    end
    if now[nick] == nil then
      local key = 'rc:nick:' .. string.lower(nick)
      if redis.call('GET', key) == node then redis.call('DEL', key) end
      redis.call('HDEL', 'rc:members:' .. node, nick)
    end
  end
end
for nick, room in pairs(now) do
  local key = 'rc:nick:' .. string.lower(nick)
  local holder = redis.call('GET', key)
  if not holder or holder == node or redis.call('EXISTS', 'rc:node:' .. holder) == 0 then
    redis.call('SET', key, node)
    redis.call('HSET', 'rc:who:' .. room, nick, node)
    redis.call('HSET', 'rc:members:' .. node, nick, room)
    redis.call('SADD', 'rc:rooms', room)
  end
end
return 1
"#;

/// `/nick` (ARGV: node, old, new, room): 1 if renamed, 0 if another node's member has it.
const RENAME_SCRIPT: &str = r"
local node, old, new, room = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = 'rc:nick:' .. string.lower(new)
local holder = redis.call('GET', key)
if holder and holder ~= node and redis.call('EXISTS', 'rc:node:' .. holder) == 1 then return 0 end
redis.call('SET', key, node)
local oldkey = 'rc:nick:' .. string.lower(old)
if string.lower(old) ~= string.lower(new) and redis.call('GET', oldkey) == node then redis.call('DEL', oldkey) end
redis.call('HDEL', 'rc:who:' .. room, old)
redis.call('HSET', 'rc:who:' .. room, new, node)
redis.call('HDEL', 'rc:members:' .. node, old)
redis.call('HSET', 'rc:members:' .. node, new, room)
return 1
";

/// The members of a room (ARGV: room) on nodes whose lease runs, by name.
const WHO_SCRIPT: &str = r"
local all = redis.call('HGETALL', 'rc:who:' .. ARGV[1])
local alive, names = {}, {}
for i = 1, #all, 2 do
  local node = all[i + 1]
  if alive[node] == nil then alive[node] = redis.call('EXISTS', 'rc:node:' .. node) == 1 end
  if alive[node] then names[#names + 1] = all[i] end
end
table.sort(names)
return names
";

/// Every room with members on nodes whose lease runs (and the lobby), with their counts.
const ROOMS_SCRIPT: &str = r"
local alive, out = {}, {}
local rooms = redis.call('SMEMBERS', 'rc:rooms')
if redis.call('SISMEMBER', 'rc:rooms', 'lobby') == 0 then rooms[#rooms + 1] = 'lobby' end
for _, room in ipairs(rooms) do
  local all = redis.call('HGETALL', 'rc:who:' .. room)
  local count = 0
  for i = 2, #all, 2 do
    local node = all[i]
    if alive[node] == nil then alive[node] = redis.call('EXISTS', 'rc:node:' .. node) == 1 end
    if alive[node] then count = count + 1 end
  end
  if count > 0 or room == 'lobby' then
    out[#out + 1] = {room, count}
  elseif #all == 0 then
    redis.call('SREM', 'rc:rooms', room)
  end
end
return out
";

/// Renews this node's lease (ARGV: node, lease in ms), and takes the members
/// of every node whose lease ran out out of their rooms: their `leave`
/// events are published, their nicknames freed. Returns how many it took out.
const TICK_SCRIPT: &str = r#"
local node = ARGV[1]
local held = redis.call('EXISTS', 'rc:node:' .. node)
redis.call('SET', 'rc:node:' .. node, '1', 'PX', ARGV[2])
redis.call('SADD', 'rc:nodes', node)
local gone = 0
for _, other in ipairs(redis.call('SMEMBERS', 'rc:nodes')) do
  if redis.call('EXISTS', 'rc:node:' .. other) == 0 then
    local members = redis.call('HGETALL', 'rc:members:' .. other)
    for i = 1, #members, 2 do
      local nick, room = members[i], members[i + 1]
      if redis.call('HGET', 'rc:who:' .. room, nick) == other then
        redis.call('HDEL', 'rc:who:' .. room, nick)
        redis.call('PUBLISH', 'rc:{' .. room .. '}:msg', '* 0 - {"nick":"' .. nick .. '","room":"' .. room .. '","type":"leave"}')
        gone = gone + 1
      end
      local key = 'rc:nick:' .. string.lower(nick)
      if redis.call('GET', key) == other then redis.call('DEL', key) end
    end
    redis.call('DEL', 'rc:members:' .. other)
    redis.call('SREM', 'rc:nodes', other)
  end
end
return {gone, held}
"#;

/// A presence script and its SHA1 (worked out once).
struct Script {
    text: &'static str,
    sha: std::sync::OnceLock<String>,
}

impl Script {
    const fn new(text: &'static str) -> Script {
        Script { text, sha: std::sync::OnceLock::new() }
    }

    fn sha(&self) -> &str {
        self.sha.get_or_init(|| redis::sha1_hex(self.text))
    }
}

static CLAIM: Script = Script::new(CLAIM_SCRIPT);
static RELEASE: Script = Script::new(RELEASE_SCRIPT);
static RENAME: Script = Script::new(RENAME_SCRIPT);
static WHO: Script = Script::new(WHO_SCRIPT);
static ROOMS: Script = Script::new(ROOMS_SCRIPT);
static TICK_: Script = Script::new(TICK_SCRIPT);
static SYNC: Script = Script::new(SYNC_SCRIPT);

/// The presence scripts, for a link's `preload` (with the broker's own).
pub fn script_loads() -> Vec<Vec<Vec<u8>>> {
    [&CLAIM, &RELEASE, &RENAME, &WHO, &ROOMS, &TICK_, &SYNC]
        .iter()
        .map(|script| redis::script_load(script.text))
        .collect()
}

/// `EVALSHA sha 0 argv...`: one of the presence scripts (loaded by the link).
fn script(script: &Script, argv: &[&str]) -> Vec<Vec<u8>> {
    let sha = script.sha().to_string();
    let mut command = vec![b"EVALSHA".to_vec(), sha.into_bytes(), b"0".to_vec()];
    command.extend(argv.iter().map(|arg| arg.as_bytes().to_vec()));
    command
}

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

/// Live messages a room may hold while the node reads what it missed;
/// past it the oldest go, and are read back from Redis in their turn.
const MAX_HELD: usize = 10_000;

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

    /// Renews this node's lease and takes the members of nodes whose lease
    /// ran out out of their rooms (every [`TICK`], and when the link is up).
    ///
    /// Also sends again what newcomers wait for if it failed (a Redis error
    /// other than an outage is not retried at once, which could spin).
    pub(crate) fn tick(&mut self, chat: &Chat, link: &ClusterLink) {
        let lease = LEASE.as_millis().to_string();
        link.command(Tag(Kind::Tick), script(&TICK_, &[&self.id, &lease]));
        let (history_len, id) = (self.history_len, self.id.clone());
        for (room, entry) in &mut self.rooms {
            if entry.subscribed {
                ask_all(entry, room, link, history_len, &id, chat);
            }
        }
    }

    /// Puts what Redis holds of this node's members right (after an outage,
    /// or when its lease had run out and others reaped it).
    fn sync(&self, chat: &Chat, link: &ClusterLink) {
        let mut argv = vec![self.id.as_str()];
        for (nick, room) in chat.members_here() {
            argv.extend([nick, room]);
        }
        link.command(Tag(Kind::Quiet), script(&SYNC, &argv));
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
        let (history_len, id) = (self.history_len, self.id.clone());
        match incoming {
            Incoming::Reply(Tag(Kind::Claim { room, conn, wanted, announce: tell }), reply) => {
                let claimed = reply.ok().and_then(|value| claimed(&value));
                let pending = self.rooms.get_mut(&room).and_then(|entry| {
                    let at = entry.joins.iter().position(|join| join.conn == conn)?;
                    Some((entry, at))
                });
                let Some((entry, at)) = pending.filter(|_| chat.is_in(conn, &room)) else {
                    // It left (or moved on) before the reply: what was claimed
                    // for it here is let go (its nickname too, if it left).
                    if let Some(entry) = self.rooms.get_mut(&room) {
                        entry.joins.retain(|join| join.conn != conn);
                    }
                    if let Some((nick, _)) = claimed {
                        let left = if chat.is_member_id(conn) { "0" } else { "1" };
                        if left == "0" {
                            chat.set_nick(conn, &nick);
                        }
                        link.command(Tag(Kind::Quiet), script(&RELEASE, &[&id, &nick, &room, left]));
                    }
                    return;
                };
                let Some(join) = entry.joins.get_mut(at) else { return };
                join.claiming = false;
                let Some((nick, got)) = claimed else { return };
                join.claim = None;
                chat.set_nick(conn, &nick);
                if wanted && !got {
                    join.errors.push((events::code::NICK_TAKEN, "that nickname is taken on another node".into()));
                }
                if tell {
                    // Before the newcomer is subscribed here: it does not hear of itself.
                    announce(link, &id, &room, &events::join(&room, &nick), out);
                }
                ask_all(entry, &room, link, history_len, &id, chat);
            }
            Incoming::Reply(Tag(Kind::Members { room, conn }), reply) => {
                let Some(entry) = self.rooms.get_mut(&room) else { return };
                let Some(join) = entry.joins.iter_mut().find(|join| join.conn == conn) else { return };
                match reply.ok().and_then(|value| names(&value)) {
                    Some(names) => join.members = Some(names),
                    None => join.asked = false,
                }
                settle(entry, &room, chat, out);
            }
            Incoming::Reply(Tag(Kind::Rename { conn, old, new }), reply) => {
                let renamed = reply.ok().and_then(|value| crate::broker::resp::as_int(&value));
                if renamed == Some(1) && !chat.is_member_id(conn) {
                    // It left before the reply: the new name is let go.
                    let room = chat.room_of(conn).unwrap_or_default().to_string();
                    link.command(Tag(Kind::Quiet), script(&RELEASE, &[&id, &new, &room, "1"]));
                    return;
                }
                match renamed {
                    Some(1) if chat.set_nick(conn, &new) => {
                        if let Some(room) = chat.room_of(conn) {
                            announce(link, &id, room, &events::nick(room, &old, &new), out);
                        }
                    }
                    Some(_) => {
                        let bytes = events::error(events::code::NICK_TAKEN, &format!("{new} is taken")).into_bytes();
                        out.push(Effect::Send { to: conn, opcode: OpCode::Text, bytes: bytes.into() });
                    }
                    None => unavailable(chat, conn, out),
                }
            }
            Incoming::Reply(Tag(Kind::Who { conn, room }), reply) => match reply.ok().and_then(|value| names(&value)) {
                Some(names) => {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    let bytes = events::who(&room, &names).into_bytes();
                    out.push(Effect::Send { to: conn, opcode: OpCode::Text, bytes: bytes.into() });
                }
                None => unavailable(chat, conn, out),
            },
            Incoming::Reply(Tag(Kind::Rooms(conn)), reply) => match reply.ok().and_then(|value| room_counts(&value)) {
                Some(mut rooms) => {
                    rooms.sort_unstable();
                    let list: Vec<(&str, usize)> = rooms.iter().map(|(name, n)| (name.as_str(), *n)).collect();
                    let bytes = events::rooms(&list).into_bytes();
                    out.push(Effect::Send { to: conn, opcode: OpCode::Text, bytes: bytes.into() });
                }
                None => unavailable(chat, conn, out),
            },
            Incoming::Reply(Tag(Kind::Quiet), _) => {}
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
                // Failed (Redis went away, or erred): tried again when the
                // room is subscribed again or the next message shows the gap,
                // not at once (which, with Redis down, would spin).
                let Some(kept) = reply.ok().and_then(|value| redis::kept(&value).ok()) else { return };
                if entry.epoch.as_deref() != Some(kept.epoch.as_str()) {
                    // A new life of the room: what is held of the old one is dropped.
                    entry.epoch = Some(kept.epoch.clone());
                    entry.delivered = Some(0);
                    entry.recent.clear();
                    entry.held.retain(|(epoch, ..)| *epoch == kept.epoch);
                }
                // Handed out in their order, from the first the stream still
                // holds: what it no longer holds is gone (members see the numbers jump).
                for (seq, event) in &kept.messages {
                    if entry.delivered.is_some_and(|d| *seq > d)
                        && let Some(event) = numbered(event, *seq)
                    {
                        deliver(entry, &room, out, *seq, event.into());
                    }
                }
                if entry.delivered.is_some_and(|d| d < kept.last) {
                    entry.delivered = Some(kept.last);
                }
                release(entry, &room, link, out);
                settle(entry, &room, chat, out);
            }
            Incoming::Subscribed(channel) => {
                let Some(room) = self.channels.get(&channel).cloned() else { return };
                let Some(entry) = self.rooms.get_mut(&room) else { return };
                entry.subscribed = true;
                ask_all(entry, &room, link, history_len, &id, chat);
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
                    // From another node (this node's own were handed out when it sent them).
                    if let Some((origin, event)) = event.split_once(' ')
                        && origin != id
                    {
                        out.push(Effect::Publish { topic: room, opcode: OpCode::Text, bytes: event.as_bytes().into() });
                    }
                    return;
                }
                let Some(event) = numbered(got.payload, got.seq) else { return };
                take_live(entry, &room, link, out, got.epoch.to_string(), got.seq, event.into());
                settle(entry, &room, chat, out);
            }
            Incoming::Up => {
                self.tick(chat, link);
                // What happened while Redis was away (members who left, whose
                // releases failed) is put right.
                self.sync(chat, link);
            }
            Incoming::Reply(Tag(Kind::Tick), reply) => {
                // The lease had run out (a stall longer than it): the other
                // nodes may have reaped this one's members, who are back now.
                let held = reply.ok().and_then(|value| match value {
                    Value::Array(parts) => parts.get(1).and_then(as_int),
                    _ => None,
                });
                if held == Some(0) {
                    self.sync(chat, link);
                }
            }
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

/// A `join`, `leave` or `nick` event: to this node's members in the room at
/// once, and to the other nodes' through the room's channel (`* 0 ORIGIN
/// EVENT`, unnumbered and not kept). Lost if Redis is down: presence is
/// read again from Redis by `/who`.
fn announce(link: &ClusterLink, id: &str, room: &str, event: &str, out: &mut Vec<Effect>) {
    out.push(Effect::Publish { topic: room.into(), opcode: OpCode::Text, bytes: event.as_bytes().into() });
    let payload = format!("{UNNUMBERED} 0 {id} {event}");
    let channel = TopicKeys::of(room).channel.into_bytes();
    link.command(Tag(Kind::Announce), vec![b"PUBLISH".to_vec(), channel, payload.into_bytes()]);
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

/// A claim's reply: the nickname, and whether it is the one asked for.
fn claimed(value: &Value) -> Option<(String, bool)> {
    let Value::Array(parts) = value else { return None };
    let [nick, got] = parts.as_slice() else { return None };
    let nick = String::from_utf8(as_bytes(nick)?.to_vec()).ok()?;
    Some((nick, as_int(got)? == 1))
}

/// A list of names.
fn names(value: &Value) -> Option<Vec<String>> {
    let Value::Array(parts) = value else { return None };
    parts.iter().map(|part| String::from_utf8(as_bytes(part)?.to_vec()).ok()).collect()
}

/// A list of (room, members).
fn room_counts(value: &Value) -> Option<Vec<(String, usize)>> {
    let Value::Array(parts) = value else { return None };
    parts
        .iter()
        .map(|part| {
            let Value::Array(pair) = part else { return None };
            let [name, count] = pair.as_slice() else { return None };
            let name = String::from_utf8(as_bytes(name)?.to_vec()).ok()?;
            Some((name, usize::try_from(as_int(count)?).ok()?))
        })
        .collect()
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
        hold(entry, epoch, seq, event);
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
        hold(entry, epoch, seq, event);
        catch_up(entry, room, link, 1000);
        return;
    }
    deliver(entry, room, out, seq, event);
}

/// Keeps a live message until it can go (the oldest go past [`MAX_HELD`]:
/// a catch-up reads them back).
fn hold(entry: &mut NodeRoom, epoch: String, seq: u64, event: Arc<str>) {
    while entry.held.len() >= MAX_HELD {
        entry.held.pop_front();
    }
    entry.held.push_back((epoch, seq, event));
}

/// Hands message `seq` to the room's members here.
fn deliver(entry: &mut NodeRoom, room: &Arc<str>, out: &mut Vec<Effect>, seq: u64, event: Arc<str>) {
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
    // Held messages of a life the room has left (its keys were lost) are dropped.
    let current = entry.epoch.clone();
    for (epoch, seq, event) in held.into_iter().filter(|(epoch, ..)| current.as_ref().is_none_or(|c| c == epoch)) {
        take_live(entry, room, link, out, epoch, seq, event);
    }
}

/// Welcomes the newcomers whose history the node has caught up with.
fn settle(entry: &mut NodeRoom, room: &Arc<str>, chat: &Chat, out: &mut Vec<Effect>) {
    let Some(delivered) = entry.delivered.filter(|_| !entry.catching_up) else { return };
    let recent = &entry.recent;
    entry.joins.retain(|join| {
        let (Some(ready), Some(members)) = (&join.ready, &join.members) else { return true };
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
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        if let Some(welcome) = chat.welcome_of(join.conn, room, &members, position, history.iter()) {
            out.push(Effect::Send { to: join.conn, opcode: OpCode::Text, bytes: welcome.into_bytes().into() });
            out.push(Effect::Subscribe { id: join.conn, topic: Arc::clone(room) });
            for (code, message) in &join.errors {
                let bytes = events::error(code, message).into_bytes().into();
                out.push(Effect::Send { to: join.conn, opcode: OpCode::Text, bytes });
            }
        }
        false
    });
}
