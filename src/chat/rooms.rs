//! Rooms: what a room is (members, numbering, epoch), entering and leaving
//! one (`/join`, a welcome with its history, the announcements), and what the
//! cluster layer asks of it. Separate so that the bookkeeping of a room's life
//! reads in one place.

use super::{Chat, Claim, LOBBY, MAX_NAME_LEN, Outgoing, code, events, is_valid_name};
use crate::app::{ConnId, Context};

/// A room: its members in the order they joined, the sequence number of
/// its last message (its recent messages are in the chat's [`History`](super::History)),
/// and its epoch. Its topic has the room's name.
#[derive(Debug)]
pub(super) struct Room {
    pub(super) members: Vec<ConnId>,
    /// The number of its last message shown (with a store: committed).
    pub(super) seq: u64,
    /// With a store: the number of its last message said (`seq` plus those
    /// waiting for the disk or being written).
    pub(super) assigned: u64,
    /// Made when the room (and so its sequence) starts: a room removed and
    /// made again, or a restarted server, has a new one, so that a client
    /// resuming with a sequence number can tell a new count from a gap.
    pub(super) epoch: Box<str>,
}

impl Room {
    pub(super) fn new() -> Room {
        Room { members: Vec::new(), seq: 0, assigned: 0, epoch: new_epoch() }
    }
}

/// A fresh epoch: 16 hex digits, different in every process and every call.
/// (std's `RandomState` is seeded from the operating system's randomness
/// once per thread and changes its keys with every instance: unpredictable
/// enough to tell one room's life from another, which is all it is for.)
pub(super) fn new_epoch() -> Box<str> {
    use std::hash::BuildHasher;
    let hash = std::collections::hash_map::RandomState::new().hash_one(0u8);
    format!("{hash:016x}").into()
}

/// The longest epoch a client may send back (ours have 16 characters).
const MAX_EPOCH_LEN: usize = 32;

/// A client's request to resume a room where it left off: every message
/// after `since`, if the room still has the same `epoch`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Resume<'a> {
    pub(super) since: u64,
    pub(super) epoch: &'a str,
}

impl Chat {
    pub(super) fn join(&mut self, wanted: &str, ctx: &mut Context<'_>) {
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
    pub(super) fn can_enter(&self, wanted: &str) -> Result<String, (&'static str, String)> {
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

    /// Puts this connection into room `name` (creating it): the others hear
    /// of it first, then it subscribes and is welcomed, with the messages it
    /// missed if it is resuming and the history still has them all, or with
    /// the recent ones.
    pub(super) fn enter(&mut self, name: &str, resume: Option<Resume<'_>>, ctx: &mut Context<'_>) {
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
    pub(super) fn exit(&mut self, name: &str, nick: &str, leaving: bool, ctx: &mut Context<'_>) {
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
    pub(super) fn announce(&mut self, name: &str, event: String, ctx: &mut Context<'_>) {
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

    /// The room of `conn`, if it is a member.
    pub(crate) fn room_of(&self, conn: ConnId) -> Option<&str> {
        self.members.get(&conn).map(|member| member.room.as_str())
    }

    /// Whether `conn` is a member in `room` now.
    pub(crate) fn is_in(&self, conn: ConnId, room: &str) -> bool {
        self.members.get(&conn).is_some_and(|member| member.room == room)
    }

    pub(super) fn room_len(&self, name: &str) -> usize {
        self.rooms.get(name).map_or(0, |room| room.members.len())
    }

    pub(super) fn nicks_in(&self, name: &str) -> Vec<&str> {
        let Some(room) = self.rooms.get(name) else { return Vec::new() };
        room.members.iter().filter_map(|id| self.members.get(id)).map(|m| m.nick.as_str()).collect()
    }
}
