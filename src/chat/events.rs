//! The chat wire format, server to client: one JSON object per text frame,
//! each with a `"type"`. `docs/protocol.md` shows an example of every event.

use serde_json::{Value, json};
use std::fmt::Write as _;
use std::sync::Arc;

/// Machine-readable codes of `error` events.
pub mod code {
    /// The nickname is not 1–32 letters, digits, `_` or `-`.
    pub const INVALID_NICK: &str = "invalid_nick";
    /// Someone else has that nickname.
    pub const NICK_TAKEN: &str = "nick_taken";
    /// A signed member took this member's nickname; it has a guest nick now.
    pub const NICK_RESERVED: &str = "nick_reserved";
    /// A signed member's nickname comes from its token: `/nick` cannot change it.
    pub const NICK_SIGNED: &str = "nick_signed";
    /// The room name is not 1–32 letters, digits, `_` or `-`.
    pub const INVALID_ROOM: &str = "invalid_room";
    /// The connection is already in that room.
    pub const ALREADY_IN_ROOM: &str = "already_in_room";
    /// The room has as many members as it may.
    pub const ROOM_FULL: &str = "room_full";
    /// The server has as many rooms as it may.
    pub const TOO_MANY_ROOMS: &str = "too_many_rooms";
    /// The text is longer than the limit.
    pub const MESSAGE_TOO_LONG: &str = "message_too_long";
    /// The text holds control characters (other than tab and newline).
    pub const INVALID_TEXT: &str = "invalid_text";
    /// The text is empty (or only white space).
    pub const EMPTY_MESSAGE: &str = "empty_message";
    /// A command the server does not know.
    pub const UNKNOWN_COMMAND: &str = "unknown_command";
    /// A command without its argument, or with one too many.
    pub const BAD_ARGUMENT: &str = "bad_argument";
    /// A binary frame: the chat speaks text.
    pub const BINARY_NOT_SUPPORTED: &str = "binary_not_supported";
    /// The message could not be numbered (`--redis`: Redis cannot be
    /// reached): it was not delivered to anyone; send it again later.
    pub const UNAVAILABLE: &str = "unavailable";
}

/// `message`: what someone said in a room. Kept verbatim in the room's history.
///
/// Written directly rather than through a `serde_json::Value` (a map of
/// owned keys and values, built and dropped for every message on the
/// busiest path of the chat); the strings are escaped as serde_json escapes
/// them (a test holds the two byte for byte), and the keys come out in the
/// same (sorted) order as the other events.
pub fn message(room: &str, nick: &str, text: &str, time_ms: u64, seq: u64, action: bool) -> String {
    let mut event = String::with_capacity(80 + room.len() + nick.len() + text.len());
    write_message(&mut event, room, nick, text, time_ms, seq, action);
    event
}

/// [`message`], made in `scratch` (kept from one message to the next, so
/// the event is allocated once, in its `Arc`, and copied once).
pub fn shared_message(
    scratch: &mut String,
    (room, nick, text): (&str, &str, &str),
    time_ms: u64,
    seq: u64,
    action: bool,
) -> Arc<str> {
    scratch.clear();
    write_message(scratch, room, nick, text, time_ms, seq, action);
    Arc::from(scratch.as_str())
}

fn write_message(event: &mut String, room: &str, nick: &str, text: &str, time_ms: u64, seq: u64, action: bool) {
    if action {
        event.push_str("{\"action\":true,\"nick\":");
    } else {
        event.push_str("{\"nick\":");
    }
    push_json_string(event, nick);
    event.push_str(",\"room\":");
    push_json_string(event, room);
    event.push_str(",\"seq\":");
    push_number(event, seq);
    event.push_str(",\"text\":");
    push_json_string(event, text);
    event.push_str(",\"time\":");
    push_number(event, time_ms);
    event.push_str(",\"type\":\"message\"}");
}

/// Appends `n` in decimal (what `write!` does, without its formatting machinery).
fn push_number(out: &mut String, mut n: u64) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    while let Some(slot) = at.checked_sub(1).and_then(|next| digits.get_mut(next)) {
        *slot = b'0' + (n % 10) as u8;
        at -= 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in digits.get(at..).unwrap_or_default() {
        out.push(char::from(digit));
    }
}

/// A `message` event made by [`message`], numbered `seq` instead (the
/// store's rare path: a failed batch gives its numbers back, and messages
/// said after it are numbered again). The first `,"seq":` is the key's: the
/// nick before it is escaped (a quote in it is `\"`) and the room name holds
/// no quotes. `None` if `event` is not one of ours.
pub fn renumbered(event: &str, seq: u64) -> Option<String> {
    const KEY: &str = ",\"seq\":";
    let at = event.find(KEY)? + KEY.len();
    let rest = event.get(at..)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    Some(format!("{}{seq}{}", event.get(..at)?, rest.get(digits..)?))
}

/// Appends `text` as a JSON string literal, quoted and escaped as
/// serde_json escapes it: `"`, `\\` and control characters (`\n`, `\r`,
/// `\t`, `\b`, `\f`, others `\u00xx`); everything else as it is. Into a
/// `String`, so the event needs no UTF-8 check afterwards.
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    let mut rest = text;
    loop {
        // `plain` is an ASCII byte's position (or the end): a character boundary.
        let plain = plain_len(rest.as_bytes());
        out.push_str(rest.get(..plain).unwrap_or_default());
        let Some(&byte) = rest.as_bytes().get(plain) else { break };
        let short = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            _ => "",
        };
        if short.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(short);
        }
        rest = rest.get(plain + 1..).unwrap_or_default();
    }
    out.push('"');
}

/// How many bytes at the start of `bytes` go into a JSON string as they
/// are: eight at a time while no byte of the eight needs escaping (a
/// control character, `"` or `\\`), then one at a time.
fn plain_len(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Whether any byte of `word` is below `n` (at most 0x80), or is zero.
    let below = |word: u64, n: u64| word.wrapping_sub(ONES * n) & !word & HIGHS != 0;
    let mut at = 0;
    for chunk in bytes.chunks_exact(8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        if below(word, 0x20) || below(word ^ (ONES * 0x22), 1) || below(word ^ (ONES * 0x5c), 1) {
            break;
        }
        at += 8;
    }
    let tail = bytes.get(at..).unwrap_or_default();
    at + tail.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\').unwrap_or(tail.len())
}

/// Where a room's messages stand, for `welcome`: its epoch, its last
/// sequence number, and (when the client asked to resume) whether every
/// message after the one it named is in the history that follows.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    /// The room's epoch: a new one whenever its sequence starts again.
    pub epoch: &'a str,
    /// The sequence number of the room's last message (0: none yet).
    pub seq: u64,
    /// `Some` when the client connected with `since` and `epoch`.
    pub recovered: Option<bool>,
}

/// `welcome`: you are in `room` as `nick`; here are its members, where its
/// messages stand, and its recent messages (or those after the client's `since`).
/// `history` holds `message` events, already serialised.
pub fn welcome(
    nick: &str,
    room: &str,
    members: &[&str],
    position: Position<'_>,
    history: impl Iterator<Item = impl AsRef<str>>,
) -> String {
    let mut head = json!({
        "type": "welcome", "nick": nick, "room": room, "members": members,
        "epoch": position.epoch, "seq": position.seq,
    });
    if let Some(recovered) = position.recovered {
        head["recovered"] = Value::Bool(recovered);
    }
    let head = head.to_string();
    // Splice the stored events in as they are, instead of parsing them back.
    let mut out = String::with_capacity(head.len() + 64);
    out.push_str(&head[..head.len() - 1]);
    out.push_str(",\"history\":[");
    for (i, event) in history.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(event.as_ref());
    }
    out.push_str("]}");
    out
}

/// `join`: someone entered the room.
pub fn join(room: &str, nick: &str) -> String {
    json!({"type": "join", "room": room, "nick": nick}).to_string()
}

/// `leave`: someone left the room (for another room, or the server).
pub fn leave(room: &str, nick: &str) -> String {
    json!({"type": "leave", "room": room, "nick": nick}).to_string()
}

/// `nick`: someone in the room changed nickname.
pub fn nick(room: &str, old: &str, new: &str) -> String {
    json!({"type": "nick", "room": room, "old": old, "nick": new}).to_string()
}

/// `who`: the members of your room, in the order they joined.
pub fn who(room: &str, members: &[&str]) -> String {
    json!({"type": "who", "room": room, "members": members}).to_string()
}

/// `rooms`: every room with its member count, by name.
pub fn rooms(rooms: &[(&str, usize)]) -> String {
    let list: Vec<Value> = rooms.iter().map(|(name, members)| json!({"name": name, "members": members})).collect();
    json!({"type": "rooms", "rooms": list}).to_string()
}

/// `help`: the commands, with a line on each.
pub fn help() -> String {
    let commands = [
        ("/nick NAME", "change your nickname (1-32 letters, digits, _ or -)"),
        ("/join ROOM", "move to another room, creating it if needed"),
        ("/who", "list the members of your room"),
        ("/rooms", "list the rooms"),
        ("/me ACTION", "say that you do something"),
        ("/help", "this list"),
        ("//text", "send a message that starts with a slash"),
    ];
    let list: Vec<Value> = commands.iter().map(|(usage, what)| json!({"usage": usage, "description": what})).collect();
    json!({"type": "help", "commands": list}).to_string()
}

/// `error`: what went wrong, as a code for programs and a sentence for people.
pub fn error(code: &str, message: &str) -> String {
    json!({"type": "error", "code": code, "message": message}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).expect("valid JSON")
    }

    #[test]
    fn text_is_escaped_not_injected() {
        let event = parse(&message("lobby", "a", "\"}<script>\n", 5, 1, false));
        assert_eq!(event["text"], "\"}<script>\n");
        assert!(event.get("action").is_none());
        assert_eq!(parse(&message("r", "n", "waves", 0, 2, true))["action"], true);
    }

    #[test]
    fn a_message_is_written_exactly_as_serde_json_would() {
        for (text, action) in [("hi", false), ("\"}<script>\n\u{1}é😀\\", true), ("", false)] {
            let mut expected =
                json!({"type": "message", "room": "r-1", "nick": "n_2", "text": text, "time": 17, "seq": 42});
            if action {
                expected["action"] = Value::Bool(true);
            }
            assert_eq!(message("r-1", "n_2", text, 17, 42, action), expected.to_string());
        }
    }

    #[test]
    fn every_character_and_number_is_written_as_serde_json_writes_it() {
        // Each ASCII character alone and between others, and some beyond ASCII.
        let mut texts: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        texts.extend((0u8..0x80).map(|b| format!("a{}b", char::from(b))));
        texts.push("\u{7f}\u{80}\u{2028}\u{feff}é😀\"\\\u{0}".to_string());
        // And at every place of a text longer than the eight bytes looked at together.
        for b in (0u8..0x80).chain([b'a']) {
            for at in 0..17 {
                let mut text: Vec<char> = "abcdefghijklmnopq".chars().collect();
                text[at] = char::from(b);
                texts.push(text.into_iter().collect());
                texts.push(format!("é😀{}\u{80}xxxxxxxxx", char::from(b)));
            }
        }
        let mut scratch = String::from("left over from the last message");
        for (text, number) in texts.iter().zip([0, 1, 9, 10, 99, 100, 12_345, u64::MAX].into_iter().cycle()) {
            let expected =
                json!({"type": "message", "room": "r", "nick": "n", "text": text, "time": number, "seq": number});
            let shared = shared_message(&mut scratch, ("r", "n", text), number, number, false);
            assert_eq!(&*shared, expected.to_string(), "{text:?} {number}");
            assert_eq!(message("r", "n", text, number, number, false), expected.to_string());
        }
    }

    #[test]
    fn a_message_numbered_again_is_the_message_made_with_that_number() {
        // A nick and a text that spell the key themselves, escaped.
        for (nick, text) in [("a", "b"), ("x\",\"seq\":7,\"", ",\"seq\":8,\"text\":"), ("n", "")] {
            for action in [false, true] {
                let first = message("r", nick, text, 17, 9, action);
                let again = renumbered(&first, 12345).expect("one of ours");
                assert_eq!(again, message("r", nick, text, 17, 12345, action));
            }
        }
        assert_eq!(renumbered("{\"type\":\"join\"}", 3), None);
    }

    #[test]
    fn welcome_splices_history_as_events() {
        let history = [message("lobby", "a", "one", 1, 1, false), message("lobby", "b", "two", 2, 2, false)];
        let position = Position { epoch: "00ff", seq: 2, recovered: None };
        let event = parse(&welcome("me", "lobby", &["a", "me"], position, history.iter()));
        assert_eq!(event["type"], "welcome");
        assert_eq!(event["members"], json!(["a", "me"]));
        assert_eq!(event["history"][1]["text"], "two");
        assert_eq!((&event["epoch"], &event["seq"]), (&json!("00ff"), &json!(2)));
        assert!(event.get("recovered").is_none(), "said only to a client that asked to resume");
        let resumed = Position { recovered: Some(false), ..position };
        let event = parse(&welcome("me", "lobby", &[], resumed, std::iter::empty::<&str>()));
        assert_eq!((&event["history"], &event["recovered"]), (&json!([]), &json!(false)));
    }
}
