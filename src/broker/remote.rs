//! What a process's link to Redis offers the code that uses it, without
//! the sockets: commands with tags, subscriptions, and what comes back, in
//! order. The server's `server::redis::Link` is the implementation (a thread
//! with its own poll); a test can give a chat any other.

use super::resp::Value;

/// A link to Redis: see the [module](self).
pub trait Remote<T>: Send + Sync {
    /// Sends `command` (its name first); its reply comes back with `tag`.
    fn command(&self, tag: T, command: Vec<Vec<u8>>);
    /// Subscribes to `channel` (confirmed by [`Incoming::Subscribed`]); a
    /// channel subscribed already is left as it is. Subscriptions are made
    /// again by the link after an outage.
    fn subscribe(&self, channel: &[u8]);
    /// No longer receives what is published on `channel`.
    fn unsubscribe(&self, channel: &[u8]);
    /// Moves what came back, oldest first, to the end of `into`.
    fn take(&self, into: &mut Vec<Incoming<T>>);
    /// Whether Redis can be reached now.
    fn is_up(&self) -> bool;
}

/// Why a command has no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteError {
    /// Redis cannot be reached now, or the connection broke before the reply.
    Down,
    /// Too many commands are waiting for replies.
    Busy,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteError::Down => "redis is unavailable",
            RemoteError::Busy => "too many redis commands are waiting",
        })
    }
}

impl std::error::Error for RemoteError {}

/// What the link hands back, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming<T> {
    /// The reply to the command given with this tag (perhaps a Redis error,
    /// [`Value::Error`]), or why there is none.
    Reply(T, Result<Value, RemoteError>),
    /// Redis confirmed a subscription: every message published on the
    /// channel from here on comes as [`Incoming::Message`].
    Subscribed(Vec<u8>),
    /// A message on a subscribed channel.
    Message {
        /// The channel.
        channel: Vec<u8>,
        /// What was published.
        payload: Vec<u8>,
    },
    /// Both connections are up (the first time, or after an outage); the
    /// subscriptions are being made again and will be confirmed.
    Up,
    /// Redis cannot be reached: nothing published now is delivered, and
    /// commands fail until [`Incoming::Up`].
    Down,
}
