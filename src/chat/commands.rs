//! What a member sends: text (a message to its room, or a `/command`),
//! binary frames, and the rate limit each counts against. Separate so that
//! the client's side of the protocol is parsed and answered in one place.

use super::{Chat, Outgoing, code, events};
use crate::app::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens, refilled at `rate` per second; a message takes one.
///
/// A message is never refused for want of a token: the bucket says how long
/// the connection must then wait before its next message, and the chat
/// pauses its input that long (flood control, as IRC servers do it), so a
/// paste of fifty lines arrives whole, only spread out.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TokenBucket {
    tokens: f64,
    /// When it was last refilled; `None` before the first message (a full bucket).
    last: Option<Instant>,
}

impl TokenBucket {
    /// Takes a token for a message that has arrived. Returns until when the
    /// sender must wait before its next message: `None` while it has tokens
    /// left (or the rate is 0: no limit).
    pub(super) fn take(&mut self, now: Instant, rate: u32, burst: u32) -> Option<Instant> {
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

/// Whether `c` may not appear in a chat message: C0 control characters
/// other than tab and newline, and DEL. They have no place in a line of
/// chat, and each would cost six bytes escaped in JSON.
fn is_forbidden_in_text(c: char) -> bool {
    (c.is_ascii_control() && c != '\t' && c != '\n') || c == '\u{7f}'
}

impl Chat {
    /// A text message from a member: a message to its room, or a command.
    pub(super) fn handle_text(&mut self, text: &str, ctx: &mut Context<'_>) {
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
    pub(super) fn is_member(&self, ctx: &Context<'_>) -> bool {
        self.members.contains_key(&ctx.id())
    }

    /// Counts a message (or command) against the member's rate: when it has
    /// used its burst, its input pauses until a token is back, so that what
    /// it sends next waits in TCP instead of being dropped.
    pub(super) fn throttle(&mut self, ctx: &mut Context<'_>) {
        let config = &self.config;
        let Some(member) = self.members.get_mut(&ctx.id()) else { return };
        if let Some(until) = member.bucket.take(ctx.now(), config.rate_limit_per_sec, config.rate_limit_burst) {
            ctx.pause_reading_until(until);
            self.rate_limited += 1;
        }
    }

    /// A binary message from a member: the chat speaks text only.
    pub(super) fn handle_binary(&mut self, ctx: &mut Context<'_>) {
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
        let words = (member.room.as_str(), member.nick.as_str(), text);
        let event = events::shared_message(&mut self.scratch, words, time, room.seq, action);
        self.history.push(&member.room, room.seq, Arc::clone(&event));
        ctx.publish_text(&member.room, &event);
    }
}
