//! Topics in Redis, the commands and what their replies mean (issue 14: rooms
//! that span nodes). Sans-IO like [`resp`](super::resp): these functions
//! queue commands on a [`Resp`] and read the replies it gives back; whoever
//! drives the socket decides when.
//!
//! A topic lives in three keys that share a hash tag (so a Redis Cluster
//! keeps them on one shard): `rc:{TOPIC}:epoch`, `rc:{TOPIC}:seq` and the
//! stream `rc:{TOPIC}:log`. One Lua script, run atomically by Redis,
//! publishes: it makes the epoch if the topic has none (a new life: the old
//! sequence and log are dropped), takes the next number with `INCR`,
//! appends the message to the stream as entry `SEQ-0` (`XADD ... MAXLEN ~
//! N`, so history survives restarts of every node and is trimmed to about
//! N), and `PUBLISH`es `EPOCH SEQ PAYLOAD` on the topic's channel. Because
//! Redis runs one script at a time, every subscriber of every node receives
//! a topic's messages in the order of their numbers, with no gap, and the
//! number a publisher gets back is the one everyone sees.

use super::resp::{Resp, Value, as_bytes, as_int};

/// The start of both scripts: the topic's epoch, made if it has none (a new
/// life: the old sequence and log, if any, are dropped).
macro_rules! epoch_or_new_life {
    () => {
        r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  local t = redis.call('TIME')
  epoch = string.format('%x-%x', tonumber(t[1]), tonumber(t[2]))
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('SET', KEYS[1], epoch)
end
"
    };
}

/// The publishing script: KEYS epoch, seq, log; ARGV channel, payload, history bound.
pub const PUBLISH_SCRIPT: &str = concat!(
    epoch_or_new_life!(),
    r"local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'm', ARGV[2])
redis.call('PUBLISH', ARGV[1], epoch .. ' ' .. seq .. ' ' .. ARGV[2])
return {seq, epoch}
"
);

/// The history script: KEYS epoch, seq, log; ARGV since (or `-` for the
/// last COUNT), count, and the epoch `since` counts in. Makes the epoch if
/// the topic has none (a new life, as a publish would), so that a reader
/// always learns the epoch the next message will carry. Reads after `since`
/// only if the epoch is the one given and at most COUNT messages came after
/// it (`resumed`); otherwise the last COUNT. Returns the epoch, the last
/// number, where the entries start, the entries (oldest first) and `resumed`.
pub const HISTORY_SCRIPT: &str = concat!(
    epoch_or_new_life!(),
    r"local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local count = tonumber(ARGV[2])
local since = -1
local resumed = 0
if ARGV[1] ~= '-' and ARGV[3] == epoch then
  since = tonumber(ARGV[1])
  if since and since <= last and last - since <= count then
    resumed = 1
  end
end
if resumed == 0 then
  since = math.max(0, last - count)
end
local entries = redis.call('XRANGE', KEYS[3], (since + 1) .. '-0', '+', 'COUNT', count)
return {epoch, last, since, entries, resumed}
"
);

/// A topic's keys and channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicKeys {
    /// The epoch: made when the topic's stream is (re)created.
    pub epoch: String,
    /// The last number given.
    pub seq: String,
    /// The stream of its messages.
    pub log: String,
    /// The pub/sub channel its messages are published on.
    pub channel: String,
}

impl TopicKeys {
    /// The keys of `topic` (any text: it goes inside the hash tag as it is,
    /// with `}` escaped so that the tag cannot end early).
    pub fn of(topic: &str) -> TopicKeys {
        let tag = topic.replace('\\', "\\\\").replace('}', "\\u{7d}");
        TopicKeys {
            epoch: format!("rc:{{{tag}}}:epoch"),
            seq: format!("rc:{{{tag}}}:seq"),
            log: format!("rc:{{{tag}}}:log"),
            channel: format!("rc:{{{tag}}}:msg"),
        }
    }
}

/// Queues a publish of `payload` on `topic`, keeping about `history` messages.
///
/// The script's text goes with the command (`EVAL`), so this works on any
/// connection; [`publish_command`] is the same by the script's SHA1.
pub fn publish<T>(resp: &mut Resp<T>, tag: T, topic: &TopicKeys, payload: &[u8], history: usize) {
    let bound = history.max(1).to_string();
    let command =
        eval(b"EVAL", PUBLISH_SCRIPT.as_bytes(), topic, &[topic.channel.as_bytes(), payload, bound.as_bytes()]);
    queue(resp, tag, &command);
}

/// The command of [`publish`] by the script's SHA1 (`EVALSHA`), for a
/// connection that has loaded [`script_loads`] (a link's `preload`): 40
/// bytes on the wire instead of the script, and no hashing of it in Redis.
pub fn publish_command(topic: &TopicKeys, payload: &[u8], history: usize) -> Vec<Vec<u8>> {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sha = SHA.get_or_init(|| sha1_hex(PUBLISH_SCRIPT));
    let bound = history.max(1).to_string();
    eval(b"EVALSHA", sha.as_bytes(), topic, &[topic.channel.as_bytes(), payload, bound.as_bytes()])
}

/// `SCRIPT LOAD` of both scripts, for a link's `preload`.
pub fn script_loads() -> Vec<Vec<Vec<u8>>> {
    [PUBLISH_SCRIPT, HISTORY_SCRIPT].iter().map(|script| script_load(script)).collect()
}

/// `SCRIPT LOAD script`.
pub fn script_load(script: &str) -> Vec<Vec<u8>> {
    vec![b"SCRIPT".to_vec(), b"LOAD".to_vec(), script.as_bytes().to_vec()]
}

/// A script's SHA1 in hex, as Redis names it for `EVALSHA`.
pub fn sha1_hex(script: &str) -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(script.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// What a publish gave back: the message's number and the topic's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The number.
    pub seq: u64,
    /// The epoch.
    pub epoch: String,
}

/// Why a command did not do what it was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// Redis answered with an error.
    Redis(String),
    /// The reply was not the shape the command gives.
    Shape,
}

fn error_or_shape(value: &Value) -> Failed {
    match value {
        Value::Error(why) => Failed::Redis(why.clone()),
        _ => Failed::Shape,
    }
}

/// Reads a publish's reply.
pub fn published(value: &Value) -> Result<Published, Failed> {
    let Value::Array(parts) = value else { return Err(error_or_shape(value)) };
    let [seq, epoch] = parts.as_slice() else { return Err(Failed::Shape) };
    let seq = as_int(seq).and_then(|n| u64::try_from(n).ok()).ok_or(Failed::Shape)?;
    let epoch = as_bytes(epoch).map(|e| String::from_utf8_lossy(e).into_owned()).ok_or(Failed::Shape)?;
    Ok(Published { seq, epoch })
}

/// One message as a subscriber receives it on a topic's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received<'a> {
    /// The topic's epoch.
    pub epoch: &'a str,
    /// Its number.
    pub seq: u64,
    /// What was published.
    pub payload: &'a [u8],
}

/// Reads a channel message (`EPOCH SEQ PAYLOAD`); `None` if it is not one of ours.
pub fn received(message: &[u8]) -> Option<Received<'_>> {
    let space = message.iter().position(|&b| b == b' ')?;
    let (epoch, rest) = (message.get(..space)?, message.get(space + 1..)?);
    let space = rest.iter().position(|&b| b == b' ')?;
    let seq = std::str::from_utf8(rest.get(..space)?).ok()?.parse().ok()?;
    Some(Received { epoch: std::str::from_utf8(epoch).ok()?, seq, payload: rest.get(space + 1..)? })
}

/// Where a history starts: after a number, or the last few.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since<'a> {
    /// Everything after `seq` of the topic's life `epoch`, if that is still
    /// the topic's life and no more than the count asked for came after it;
    /// otherwise the last ones (see [`Kept::resumed`]).
    After {
        /// The number.
        seq: u64,
        /// The life it counts in.
        epoch: &'a str,
    },
    /// The last messages (as many as the count asked for).
    Last,
}

/// Queues a read of `topic`'s history: at most `count` messages.
/// (`EVAL`, like [`publish`]; [`history_command`] is the same by SHA1.)
pub fn history<T>(resp: &mut Resp<T>, tag: T, topic: &TopicKeys, since: Since<'_>, count: usize) {
    let command = history_args(since, count, |argv| eval(b"EVAL", HISTORY_SCRIPT.as_bytes(), topic, argv));
    queue(resp, tag, &command);
}

/// The command of [`history`] by the script's SHA1, for a connection that has loaded [`script_loads`].
pub fn history_command(topic: &TopicKeys, since: Since<'_>, count: usize) -> Vec<Vec<u8>> {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sha = SHA.get_or_init(|| sha1_hex(HISTORY_SCRIPT));
    history_args(since, count, |argv| eval(b"EVALSHA", sha.as_bytes(), topic, argv))
}

fn history_args(since: Since<'_>, count: usize, command: impl FnOnce(&[&[u8]]) -> Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let (since, epoch) = match since {
        Since::After { seq, epoch } => (seq.to_string(), epoch),
        Since::Last => ("-".to_string(), ""),
    };
    let count = count.max(1).to_string();
    command(&[since.as_bytes(), count.as_bytes(), epoch.as_bytes()])
}

fn queue<T>(resp: &mut Resp<T>, tag: T, command: &[Vec<u8>]) {
    let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
    resp.command(tag, &args);
}

/// `EVAL script 3 epoch seq log argv...` (or `EVALSHA sha ...`): one of the scripts above on `topic`'s keys.
fn eval(verb: &[u8], script: &[u8], topic: &TopicKeys, argv: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut args: Vec<Vec<u8>> = vec![verb.to_vec(), script.to_vec(), b"3".to_vec()];
    args.extend([topic.epoch.as_bytes(), topic.seq.as_bytes(), topic.log.as_bytes()].map(<[u8]>::to_vec));
    args.extend(argv.iter().map(|arg| arg.to_vec()));
    args
}

/// A topic's history as Redis keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Its epoch.
    pub epoch: String,
    /// The last number given (0 if none).
    pub last: u64,
    /// The messages after the number asked for, oldest first, with their numbers.
    pub messages: Vec<(u64, Vec<u8>)>,
    /// Every message after the number asked for is here (none was trimmed,
    /// and the count did not cut the list short).
    pub complete: bool,
    /// The messages are those after the number asked for (same epoch, not
    /// too many); otherwise they are the last ones.
    pub resumed: bool,
}

/// Reads a history's reply.
pub fn kept(value: &Value) -> Result<Kept, Failed> {
    let Value::Array(parts) = value else { return Err(error_or_shape(value)) };
    let [epoch, last, since, entries, resumed] = parts.as_slice() else { return Err(Failed::Shape) };
    let epoch = as_bytes(epoch).map(|e| String::from_utf8_lossy(e).into_owned()).ok_or(Failed::Shape)?;
    let resumed = as_int(resumed) == Some(1);
    let number = |v: &Value| as_int(v).and_then(|n| u64::try_from(n).ok()).ok_or(Failed::Shape);
    let (last, since) = (number(last)?, number(since)?);
    let Value::Array(entries) = entries else { return Err(Failed::Shape) };
    let mut messages = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(entry) = entry else { return Err(Failed::Shape) };
        let [id, fields] = entry.as_slice() else { return Err(Failed::Shape) };
        let id = as_bytes(id).and_then(|id| std::str::from_utf8(id).ok()).ok_or(Failed::Shape)?;
        let seq = id.split('-').next().and_then(|n| n.parse().ok()).ok_or(Failed::Shape)?;
        let Value::Array(fields) = fields else { return Err(Failed::Shape) };
        let [_, payload] = fields.as_slice() else { return Err(Failed::Shape) };
        messages.push((seq, as_bytes(payload).ok_or(Failed::Shape)?.to_vec()));
    }
    // Complete when the numbers run on from `since` without a hole, up to the last.
    let contiguous = messages.iter().zip(since + 1..).all(|((seq, _), want)| *seq == want);
    let reaches_last = messages.last().map_or(since == last, |(seq, _)| *seq == last);
    Ok(Kept { epoch, last, messages, complete: contiguous && reaches_last, resumed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topics_keys_share_one_hash_tag_that_its_name_cannot_close() {
        let keys = TopicKeys::of("lobby");
        assert_eq!(keys.seq, "rc:{lobby}:seq");
        assert_eq!(keys.log, "rc:{lobby}:log");
        let odd = TopicKeys::of("a}b");
        assert!(!odd.seq.contains("a}b"), "{}", odd.seq);
        assert_ne!(TopicKeys::of("a}b").seq, TopicKeys::of("a\\u{7d}b").seq);
    }

    #[test]
    fn a_scripts_sha1_is_the_name_redis_gives_it() {
        // `redis-cli SCRIPT LOAD "return 1"` answers this.
        assert_eq!(sha1_hex("return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        let command = publish_command(&TopicKeys::of("den"), b"x", 10);
        assert_eq!(command[0], b"EVALSHA");
        assert_eq!(command[1], sha1_hex(PUBLISH_SCRIPT).into_bytes());
        assert_eq!(script_loads()[0], [&b"SCRIPT"[..], b"LOAD", PUBLISH_SCRIPT.as_bytes()]);
    }

    #[test]
    fn a_channel_message_splits_into_epoch_number_and_payload() {
        let got = received(b"18c-2f 42 {\"text\":\"a b c\"}").unwrap();
        assert_eq!((got.epoch, got.seq, got.payload), ("18c-2f", 42, &b"{\"text\":\"a b c\"}"[..]));
        assert_eq!(received(b"no-number here"), None);
        assert_eq!(received(b"e 1 "), Some(Received { epoch: "e", seq: 1, payload: b"" }));
        assert_eq!(received(b"e"), None);
    }

    fn entry(seq: u64, payload: &[u8]) -> Value {
        Value::Array(vec![
            Value::BulkString(format!("{seq}-0").into_bytes()),
            Value::Array(vec![Value::BulkString(b"m".to_vec()), Value::BulkString(payload.to_vec())]),
        ])
    }

    #[test]
    fn a_history_is_complete_only_without_holes_up_to_the_last_number() {
        let reply = |last: i64, since: i64, entries: Vec<Value>| {
            Value::Array(vec![
                Value::BulkString(b"ep".to_vec()),
                Value::Integer(last),
                Value::Integer(since),
                Value::Array(entries),
                Value::Integer(1),
            ])
        };
        let full = kept(&reply(3, 1, vec![entry(2, b"b"), entry(3, b"c")])).unwrap();
        assert!(full.complete);
        assert_eq!(full.messages, vec![(2, b"b".to_vec()), (3, b"c".to_vec())]);
        assert!(!kept(&reply(3, 0, vec![entry(2, b"b"), entry(3, b"c")])).unwrap().complete, "1 was trimmed");
        assert!(!kept(&reply(5, 1, vec![entry(2, b"b"), entry(3, b"c")])).unwrap().complete, "cut short");
        assert!(kept(&reply(3, 3, vec![])).unwrap().complete, "nothing after the last");
        assert!(!kept(&reply(3, 1, vec![])).unwrap().complete, "all gone");
        assert_eq!(kept(&Value::Error("NOSCRIPT".into())), Err(Failed::Redis("NOSCRIPT".into())));
        assert_eq!(kept(&Value::Integer(1)), Err(Failed::Shape));
    }
}
