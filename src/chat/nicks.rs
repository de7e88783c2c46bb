//! Nicknames: the registry of who is called what (unique ignoring case),
//! guests' names, `/nick`, and a signed member taking its name. Separate so
//! that the rules for a name (valid, free, reserved) are kept in one file.

use super::{Chat, MAX_NAME_LEN, Outgoing, Refusal, code, events, is_valid_name};
use crate::app::{ConnId, Context};

impl Chat {
    /// A signed member takes its nickname: from an unsigned member who has
    /// it (renamed to a guest, and told why); not from another signed one.
    pub(super) fn claim(&mut self, nick: &str, ctx: &mut Context<'_>) -> Result<(), Refusal> {
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

    pub(super) fn change_nick(&mut self, wanted: &str, ctx: &mut Context<'_>) {
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

    /// Checks a wanted nickname; `owner` may already hold it in another case.
    pub(super) fn check_nick(&self, wanted: &str, owner: Option<ConnId>) -> Result<String, (&'static str, String)> {
        if !is_valid_name(wanted) {
            return Err((code::INVALID_NICK, format!("nicknames are 1-{MAX_NAME_LEN} letters, digits, _ or -")));
        }
        match self.nicks.get(&wanted.to_ascii_lowercase()) {
            Some(holder) if Some(*holder) != owner => Err((code::NICK_TAKEN, format!("{wanted} is taken"))),
            _ => Ok(wanted.to_string()),
        }
    }

    pub(super) fn guest_nick(&mut self) -> String {
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

    /// Every member's (nickname, room), but those whose nickname is not yet
    /// settled (a guest's, before the cluster gives it one).
    pub(crate) fn members_here(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.values().filter(|m| !m.nick.starts_with('~')).map(|m| (m.nick.as_str(), m.room.as_str()))
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
}
