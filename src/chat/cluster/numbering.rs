//! The room's one order on this node: live messages handed out in their
//! numbers' order (held, or read back from Redis's stream when a number
//! jumps), the room's epoch, and newcomers welcomed at the number their
//! history ends at.

use super::{ClusterLink, Kind, Node, NodeRoom, Ready, Tag, UNNUMBERED, ask_all};
use crate::app::{ConnId, Effect};
use crate::broker::RemoteError;
use crate::broker::redis::{self, Since};
use crate::broker::resp::Value;
use crate::chat::{Chat, events};
use crate::protocol::OpCode;
use std::sync::Arc;

/// Live messages a room may hold while the node reads what it missed;
/// past it the oldest go, and are read back from Redis in their turn.
const MAX_HELD: usize = 10_000;

impl Node {
    /// The history for a newcomer's welcome.
    pub(super) fn on_history(
        &mut self,
        chat: &Chat,
        link: &ClusterLink,
        room: Arc<str>,
        conn: ConnId,
        reply: Result<Value, RemoteError>,
        out: &mut Vec<Effect>,
    ) {
        let Some(entry) = self.rooms.get_mut(&room) else { return };
        let Some(join) = entry.joins.iter_mut().find(|join| join.conn == conn) else { return };
        let Some(kept) = reply.ok().and_then(|value| redis::kept(&value).ok()) else {
            // Asked again when the room's subscription is made again.
            join.asked = false;
            return;
        };
        let history = kept.messages.iter().filter_map(|(seq, event)| numbered(event, *seq)).map(Arc::from).collect();
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

    /// What the node missed in a room, read back.
    pub(super) fn on_catch_up(
        &mut self,
        chat: &Chat,
        link: &ClusterLink,
        room: Arc<str>,
        reply: Result<Value, RemoteError>,
        out: &mut Vec<Effect>,
    ) {
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

    /// Redis confirmed the node's subscription to a room's channel.
    pub(super) fn on_subscribed(&mut self, chat: &Chat, link: &ClusterLink, channel: Vec<u8>) {
        let (history_len, id) = (self.history_len, self.id.clone());
        let Some(room) = self.channels.get(&channel).cloned() else { return };
        let Some(entry) = self.rooms.get_mut(&room) else { return };
        entry.subscribed = true;
        ask_all(entry, &room, link, history_len, &id, chat);
        // Subscribed again after an outage: read what went by meanwhile.
        if entry.delivered.is_some() {
            catch_up(entry, &room, link, history_len);
        }
    }

    /// A message on a room's channel: numbered, or another node's event.
    pub(super) fn on_message(
        &mut self,
        chat: &Chat,
        link: &ClusterLink,
        channel: Vec<u8>,
        payload: Vec<u8>,
        out: &mut Vec<Effect>,
    ) {
        let id = self.id.clone();
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
}

/// A stored event (written with `seq` 0) with its number.
fn numbered(event: &[u8], seq: u64) -> Option<String> {
    let event = std::str::from_utf8(event).ok()?;
    // Nicks and room names hold no quote, so the first match is the field.
    let (head, tail) = event.split_once(",\"seq\":0,")?;
    Some(format!("{head},\"seq\":{seq},{tail}"))
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
pub(super) fn settle(entry: &mut NodeRoom, room: &Arc<str>, chat: &Chat, out: &mut Vec<Effect>) {
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
