//! Who is where across the nodes: each node's lease, nicknames, the rooms'
//! members (`rc:node:`, `rc:nick:`, `rc:who:`, `rc:members:`, `rc:rooms`),
//! the Lua scripts that keep them, and what the node does with their replies.

use super::numbering::settle;
use super::{ClusterLink, Kind, Node, Tag, UNNUMBERED, ask_all, unavailable};
use crate::app::{ConnId, Effect};
use crate::broker::RemoteError;
use crate::broker::redis::{self, TopicKeys};
use crate::broker::resp::{Value, as_bytes, as_int};
use crate::chat::{Chat, events};
use crate::protocol::OpCode;
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
pub(super) struct Script {
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

pub(super) static CLAIM: Script = Script::new(CLAIM_SCRIPT);
pub(super) static RELEASE: Script = Script::new(RELEASE_SCRIPT);
pub(super) static RENAME: Script = Script::new(RENAME_SCRIPT);
pub(super) static WHO: Script = Script::new(WHO_SCRIPT);
pub(super) static ROOMS: Script = Script::new(ROOMS_SCRIPT);
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
pub(super) fn script(script: &Script, argv: &[&str]) -> Vec<Vec<u8>> {
    let sha = script.sha().to_string();
    let mut command = vec![b"EVALSHA".to_vec(), sha.into_bytes(), b"0".to_vec()];
    command.extend(argv.iter().map(|arg| arg.as_bytes().to_vec()));
    command
}

impl Node {
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
    pub(super) fn sync(&self, chat: &Chat, link: &ClusterLink) {
        let mut argv = vec![self.id.as_str()];
        for (nick, room) in chat.members_here() {
            argv.extend([nick, room]);
        }
        link.command(Tag(Kind::Quiet), script(&SYNC, &argv));
    }

    /// A newcomer's nickname was claimed (or the claim failed).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_claim(
        &mut self,
        chat: &mut Chat,
        link: &ClusterLink,
        room: Arc<str>,
        conn: ConnId,
        wanted: bool,
        tell: bool,
        reply: Result<Value, RemoteError>,
        out: &mut Vec<Effect>,
    ) {
        let (history_len, id) = (self.history_len, self.id.clone());
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

    /// The room's members across the nodes, for a newcomer's welcome.
    pub(super) fn on_members(
        &mut self,
        chat: &Chat,
        room: Arc<str>,
        conn: ConnId,
        reply: Result<Value, RemoteError>,
        out: &mut Vec<Effect>,
    ) {
        let Some(entry) = self.rooms.get_mut(&room) else { return };
        let Some(join) = entry.joins.iter_mut().find(|join| join.conn == conn) else { return };
        match reply.ok().and_then(|value| names(&value)) {
            Some(names) => join.members = Some(names),
            None => join.asked = false,
        }
        settle(entry, &room, chat, out);
    }

    /// `/nick`'s reply.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_rename(
        &self,
        chat: &mut Chat,
        link: &ClusterLink,
        conn: ConnId,
        old: String,
        new: String,
        reply: Result<Value, RemoteError>,
        out: &mut Vec<Effect>,
    ) {
        let id = self.id.clone();
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

    /// The lease's renewal was answered.
    pub(super) fn on_tick(&self, chat: &Chat, link: &ClusterLink, reply: Result<Value, RemoteError>) {
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
}

/// `/who`'s reply.
pub(super) fn on_who(
    chat: &Chat,
    conn: ConnId,
    room: String,
    reply: Result<Value, RemoteError>,
    out: &mut Vec<Effect>,
) {
    match reply.ok().and_then(|value| names(&value)) {
        Some(names) => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let bytes = events::who(&room, &names).into_bytes();
            out.push(Effect::Send { to: conn, opcode: OpCode::Text, bytes: bytes.into() });
        }
        None => unavailable(chat, conn, out),
    }
}

/// `/rooms`' reply.
pub(super) fn on_rooms(chat: &Chat, conn: ConnId, reply: Result<Value, RemoteError>, out: &mut Vec<Effect>) {
    match reply.ok().and_then(|value| room_counts(&value)) {
        Some(mut rooms) => {
            rooms.sort_unstable();
            let list: Vec<(&str, usize)> = rooms.iter().map(|(name, n)| (name.as_str(), *n)).collect();
            let bytes = events::rooms(&list).into_bytes();
            out.push(Effect::Send { to: conn, opcode: OpCode::Text, bytes: bytes.into() });
        }
        None => unavailable(chat, conn, out),
    }
}

/// A `join`, `leave` or `nick` event: to this node's members in the room at
/// once, and to the other nodes' through the room's channel (`* 0 ORIGIN
/// EVENT`, unnumbered and not kept). Lost if Redis is down: presence is
/// read again from Redis by `/who`.
pub(super) fn announce(link: &ClusterLink, id: &str, room: &str, event: &str, out: &mut Vec<Effect>) {
    out.push(Effect::Publish { topic: room.into(), opcode: OpCode::Text, bytes: event.as_bytes().into() });
    let payload = format!("{UNNUMBERED} 0 {id} {event}");
    let channel = TopicKeys::of(room).channel.into_bytes();
    link.command(Tag(Kind::Announce), vec![b"PUBLISH".to_vec(), channel, payload.into_bytes()]);
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
