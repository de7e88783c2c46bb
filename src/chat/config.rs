//! The chat's limits, with their defaults and why.

/// The chat's part of [`Config`](crate::Config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatConfig {
    /// How many recent messages each room keeps and sends to newcomers
    /// (in `welcome`, and on `/join`). Default 100.
    pub history_len: usize,

    /// What the history of all rooms together may hold, in bytes (each
    /// message's JSON and a fixed overhead). Default 64 MiB: with the default
    /// 1,000 rooms of 100 messages of at most 4 KiB, the count alone would
    /// allow about 400 MiB. Past it the oldest messages, of whichever room,
    /// go first.
    pub history_bytes: usize,

    /// The longest message text, in bytes of UTF-8. Default 4 KiB.
    /// Longer messages get an `error` event and are dropped.
    pub max_text_bytes: usize,

    /// How many rooms may exist at once. Default 1,000. Empty rooms
    /// (other than `lobby`) are removed, with their history.
    pub max_rooms: usize,

    /// How many members one room may have. Default 1,000.
    pub max_room_members: usize,

    /// Messages and commands one connection may send per second, on
    /// average (a token bucket). Default 10. `0` turns the limit off (for
    /// benchmarks). Excess messages are not dropped but delayed: once a
    /// connection has used its burst, the server reads nothing more from it
    /// until a token is back, so TCP slows the sender down.
    pub rate_limit_per_sec: u32,

    /// How many messages a connection may send in a burst before the
    /// per-second rate applies. Default 20.
    pub rate_limit_burst: u32,

    /// Signed identities (`?token=JWT`, HS256 with this secret; see
    /// [`token`](super::token)). Default `None`: no tokens, nothing changes.
    pub tokens: Option<super::TokenConfig>,
}

impl Default for ChatConfig {
    fn default() -> ChatConfig {
        ChatConfig {
            history_len: 100,
            history_bytes: 64 << 20,
            max_text_bytes: 4 << 10,
            max_rooms: 1000,
            max_room_members: 1000,
            rate_limit_per_sec: 10,
            rate_limit_burst: 20,
            tokens: None,
        }
    }
}

impl ChatConfig {
    /// Checks that the settings make sense together; the message says which does not.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_text_bytes == 0 {
            return Err("max text bytes must be at least 1".into());
        }
        if self.max_rooms == 0 || self.max_room_members == 0 {
            return Err("max rooms and max room members must be at least 1".into());
        }
        if self.rate_limit_per_sec > 0 && self.rate_limit_burst == 0 {
            return Err("a rate limit needs a burst of at least 1".into());
        }
        Ok(())
    }
}
