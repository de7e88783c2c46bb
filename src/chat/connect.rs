//! A connection coming into the chat and leaving it: the chat's routes (its
//! page, its endpoints, a token checked), the query they hand on, and
//! `connect`/`disconnect`. Separate so that what a member is made from is
//! read in one place, from the request to its room.

use super::commands::TokenBucket;
use super::rooms::{Resume, Room};
use super::{Chat, ChatConn, Claim, LOBBY, Member, Outgoing, Refusal, events, page, token};
use crate::app::{Context, Request, Route};
use std::time::Duration;

impl Chat {
    /// A connection opened the chat endpoint. `query` is the request's query
    /// string (`room=NAME&nick=NAME&since=SEQ&epoch=EPOCH`, all optional). A
    /// name that is invalid or taken, or a room that is full, earns an
    /// `error` event after the `welcome`, and the connection gets a guest
    /// nick or the lobby instead. With `since` and `epoch` the `welcome`
    /// carries the room's messages after `since`, if it can (`recovered`).
    pub(super) fn connect(&mut self, query: &str, ctx: &mut Context<'_>) -> Result<(), Refusal> {
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
    pub(super) fn disconnect(&mut self, ctx: &mut Context<'_>) {
        let Some(member) = self.members.remove(&ctx.id()) else { return };
        let members = &self.members;
        self.expiries.compact(members.len(), |id| members.contains_key(&id));
        tracing::debug!(conn = ctx.id().generation, nick = %member.nick, room = %member.room, "chat: left");
        self.nicks.remove(&member.nick.to_ascii_lowercase());
        self.exit(&member.room, &member.nick, true, ctx);
    }
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
