//! A Redis connection without the socket: commands in, bytes out; bytes in,
//! replies out (RESP2, encoded and decoded by the `redis-protocol` crate).
//!
//! Like the WebSocket connection, it never reads a socket or a clock: its
//! driver writes [`Resp::output`] when it can and hands it whatever the
//! socket gave ([`Resp::feed`]), so partial reads and writes are the normal
//! case and the loop never waits on Redis. Commands are pipelined: each is
//! queued with a tag, and Redis answers in order, so the first reply
//! belongs to the oldest tag. On a subscriber connection (one that has sent
//! `SUBSCRIBE`), Redis also pushes `message` frames at any time; those come
//! out as [`Event::Message`].
//!
//! Nothing Redis sends can grow this without bound: input that does not
//! complete a reply within [`Resp::new`]'s `max_input` bytes is an error, as
//! is a reply that answers no command. After any error the connection must
//! be dropped (and its commands' callers told): nothing is left in step.

use redis_protocol::resp2::types::BorrowedFrame;
pub use redis_protocol::resp2::types::OwnedFrame as Value;
use std::collections::VecDeque;

/// What a connection gave back.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<T> {
    /// The reply to the command queued with this tag (perhaps a Redis
    /// error: [`Value::Error`]).
    Reply(T, Value),
    /// A message on a channel this (subscriber) connection subscribes to.
    Message {
        /// The channel.
        channel: Vec<u8>,
        /// What was published.
        payload: Vec<u8>,
    },
}

/// Why the connection is out of step and must be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespError {
    /// Redis sent something that is not RESP2.
    Protocol(String),
    /// A reply grew past the input bound before it was complete.
    TooLarge(usize),
    /// A reply came when no command was waiting for one.
    Unexpected,
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::Protocol(why) => write!(f, "not RESP: {why}"),
            RespError::TooLarge(limit) => write!(f, "a reply longer than {limit} bytes"),
            RespError::Unexpected => f.write_str("a reply to no command"),
        }
    }
}

impl std::error::Error for RespError {}

/// One Redis connection's protocol state, commands tagged with `T`.
#[derive(Debug)]
pub struct Resp<T> {
    /// Encoded commands not yet written.
    output: Vec<u8>,
    /// Bytes read that do not yet make a whole reply.
    input: Vec<u8>,
    /// The tags of the commands sent and not yet answered, oldest first.
    waiting: VecDeque<T>,
    max_input: usize,
    /// `message` pushes are expected (the connection subscribes).
    subscriber: bool,
}

impl<T> Resp<T> {
    /// A connection that holds at most `max_input` bytes of an incomplete reply.
    pub fn new(max_input: usize) -> Resp<T> {
        Resp { output: Vec::new(), input: Vec::new(), waiting: VecDeque::new(), max_input, subscriber: false }
    }

    /// Makes this a subscriber connection: `message` frames are pushes, not replies.
    pub fn subscriber(mut self) -> Resp<T> {
        self.subscriber = true;
        self
    }

    /// Queues the command `args` (its name first), tagged `tag`.
    pub fn command(&mut self, tag: T, args: &[&[u8]]) {
        let parts: Vec<BorrowedFrame<'_>> = args.iter().map(|arg| BorrowedFrame::BulkString(arg)).collect();
        let frame = BorrowedFrame::Array(&parts);
        let start = self.output.len();
        self.output.resize(start + frame.encode_len(false), 0);
        match redis_protocol::resp2::encode::encode_borrowed(&mut self.output[start..], &frame, false) {
            Ok(n) => self.output.truncate(start + n),
            // Cannot happen with the length it asked for; queue nothing rather than garbage.
            Err(_) => {
                self.output.truncate(start);
                return;
            }
        }
        self.waiting.push_back(tag);
    }

    /// What waits to be written.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// `n` bytes of [`output`](Resp::output) were written.
    pub fn written(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
    }

    /// Commands sent (or queued) and not yet answered.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The tags of the commands not answered, for a connection that is
    /// being dropped: their callers must hear that they failed.
    pub fn abandon(&mut self) -> impl Iterator<Item = T> + '_ {
        self.output.clear();
        self.input.clear();
        self.waiting.drain(..)
    }

    /// Takes in bytes read from the socket; every reply or push they
    /// complete is added to `events`, in order.
    pub fn feed(&mut self, bytes: &[u8], events: &mut Vec<Event<T>>) -> Result<(), RespError> {
        self.input.extend_from_slice(bytes);
        let mut used = 0;
        let result = loop {
            let rest = self.input.get(used..).unwrap_or_default();
            if rest.is_empty() {
                break Ok(());
            }
            match redis_protocol::resp2::decode::decode(rest) {
                Ok(Some((frame, n))) => {
                    used += n;
                    if let Err(err) = self.take(frame, events) {
                        break Err(err);
                    }
                }
                Ok(None) if rest.len() > self.max_input => break Err(RespError::TooLarge(self.max_input)),
                Ok(None) => break Ok(()),
                Err(err) => break Err(RespError::Protocol(err.details().to_string())),
            }
        };
        self.input.drain(..used);
        result
    }

    fn take(&mut self, frame: Value, events: &mut Vec<Event<T>>) -> Result<(), RespError> {
        if self.subscriber
            && let Value::Array(parts) = &frame
            && let [Value::BulkString(kind), Value::BulkString(channel), Value::BulkString(payload)] = parts.as_slice()
            && kind.as_slice() == b"message"
        {
            events.push(Event::Message { channel: channel.clone(), payload: payload.clone() });
            return Ok(());
        }
        let tag = self.waiting.pop_front().ok_or(RespError::Unexpected)?;
        events.push(Event::Reply(tag, frame));
        Ok(())
    }
}

/// The integer in a reply, if it is one (or a string of digits, as Lua and `GET` give them).
pub fn as_int(value: &Value) -> Option<i64> {
    match value {
        Value::Integer(n) => Some(*n),
        Value::BulkString(bytes) | Value::SimpleString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

/// The bytes of a string reply.
pub fn as_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) | Value::SimpleString(bytes) => Some(bytes),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_encoded_as_arrays_of_bulk_strings() {
        let mut resp: Resp<u32> = Resp::new(1024);
        resp.command(1, &[b"SET", b"k", b"a b\r\n"]);
        resp.command(2, &[b"GET", b"k"]);
        assert_eq!(resp.output(), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na b\r\n\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        resp.written(4);
        assert!(resp.output().starts_with(b"$3\r\nSET"));
        assert_eq!(resp.waiting(), 2);
    }

    #[test]
    fn replies_split_anywhere_come_out_whole_and_in_order() {
        let wire = b"+OK\r\n$5\r\nhello\r\n:42\r\n-ERR no\r\n*2\r\n$1\r\na\r\n$-1\r\n";
        for cut in 0..=wire.len() {
            let mut resp: Resp<u32> = Resp::new(1024);
            for tag in 0..5 {
                resp.command(tag, &[b"PING"]);
            }
            let mut events = Vec::new();
            resp.feed(&wire[..cut], &mut events).unwrap();
            resp.feed(&wire[cut..], &mut events).unwrap();
            assert_eq!(
                events,
                vec![
                    Event::Reply(0, Value::SimpleString(b"OK".to_vec())),
                    Event::Reply(1, Value::BulkString(b"hello".to_vec())),
                    Event::Reply(2, Value::Integer(42)),
                    Event::Reply(3, Value::Error("ERR no".into())),
                    Event::Reply(4, Value::Array(vec![Value::BulkString(b"a".to_vec()), Value::Null])),
                ],
                "cut at {cut}"
            );
            assert_eq!(resp.waiting(), 0);
        }
    }

    #[test]
    fn a_subscriber_gets_pushes_between_replies() {
        let mut resp: Resp<&str> = Resp::new(1024).subscriber();
        resp.command("sub", &[b"SUBSCRIBE", b"room"]);
        let wire = b"*3\r\n$9\r\nsubscribe\r\n$4\r\nroom\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$2\r\nhi\r\n";
        let mut events = Vec::new();
        resp.feed(wire, &mut events).unwrap();
        assert!(matches!(&events[0], Event::Reply("sub", Value::Array(_))));
        assert_eq!(events[1], Event::Message { channel: b"room".to_vec(), payload: b"hi".to_vec() });
    }

    #[test]
    fn bad_input_is_an_error_and_never_grows_past_the_bound() {
        let mut resp: Resp<u32> = Resp::new(64);
        resp.command(0, &[b"GET", b"k"]);
        let mut events = Vec::new();
        assert_eq!(resp.feed(b"$100000\r\n", &mut events), Ok(()), "a long reply may start");
        assert_eq!(resp.feed(&[b'x'; 100], &mut events), Err(RespError::TooLarge(64)));
        let mut resp: Resp<u32> = Resp::new(64);
        assert_eq!(resp.feed(b":1\r\n", &mut events), Err(RespError::Unexpected), "nobody asked");
        let mut resp: Resp<u32> = Resp::new(64);
        resp.command(0, &[b"PING"]);
        assert!(matches!(resp.feed(b"?what\r\n", &mut events), Err(RespError::Protocol(_))));
        assert_eq!(resp.abandon().collect::<Vec<_>>(), vec![0], "its caller hears it failed");
    }

    #[test]
    fn numbers_and_strings_are_read_from_either_kind_of_reply() {
        assert_eq!(as_int(&Value::Integer(7)), Some(7));
        assert_eq!(as_int(&Value::BulkString(b"12".to_vec())), Some(12));
        assert_eq!(as_int(&Value::Null), None);
        assert_eq!(as_bytes(&Value::SimpleString(b"OK".to_vec())), Some(&b"OK"[..]));
    }
}
