//! Every limit and timeout of the binary, in one place: the server's part
//! ([`ServerConfig`], with each connection's [`ConnectionConfig`]) and the
//! chat's ([`ChatConfig`]). Each layer takes only its own part; the command
//! line only maps flags onto these fields.

use crate::chat::ChatConfig;
use crate::server::ServerConfig;
use std::fmt;

pub use crate::connection::{ConnectionConfig, DeflateConfig};

/// The settings of the `rust-chat` binary. `Config::default()` is what `cargo run` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The address, connection limits, and what each connection may do.
    pub server: ServerConfig,
    /// Rooms, history, message length and rate limits.
    pub chat: ChatConfig,
    /// Rooms across nodes (`--redis`): where Redis is. Default `None`: the
    /// rooms are this process's own, and no Redis is needed.
    pub redis: Option<crate::server::redis::LinkConfig>,
    /// The node's durable store (the binary's default: `./rust-chat-data`).
    /// Default `None` here: rooms live in memory only. Unused with `redis`,
    /// which is then the store.
    pub store: Option<crate::server::store::StoreConfig>,
}

impl Default for Config {
    /// The server's and the chat's defaults, with `/metrics` and `/healthz`
    /// on the main port (the library's own default leaves every path to the application).
    fn default() -> Config {
        let server = ServerConfig { metrics: crate::server::MetricsEndpoint::MainPort, ..ServerConfig::default() };
        Config { server, chat: ChatConfig::default(), redis: None, store: None }
    }
}

/// A setting that cannot work, found by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks that the settings make sense together. The server checks its part again at start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate().and_then(|()| self.chat.validate()).map_err(ConfigError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::open_file_limit;
    use std::time::Duration;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let config = Config::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.server.bind.to_string(), "127.0.0.1:10000");
        assert_eq!(config.server.connection.max_message_size, 16 * 1024 * 1024);
        assert_eq!(config.server.connection.max_handshake_bytes, 8192);
        assert_eq!(config.server.connection.close_timeout, Duration::from_secs(5));
        assert_eq!(config.server.max_connections, open_file_limit() - 64);
    }

    #[test]
    fn the_open_file_limit_is_read() {
        // Whatever the machine's limit, it is the one `ulimit -n` reports.
        let limit = open_file_limit();
        assert!(limit >= 64, "{limit}");
    }

    #[test]
    fn impossible_settings_are_refused() {
        let changes: [fn(&mut Config); 14] = [
            |c| c.server.connection.max_frame_size = 0,
            |c| c.server.connection.max_message_size = 0,
            |c| c.server.connection.max_handshake_bytes = 255,
            |c| c.server.read_buffer_size = 1023,
            |c| c.server.connection.max_outgoing_bytes = 0,
            |c| c.server.connection.close_timeout = Duration::ZERO,
            |c| c.chat.max_text_bytes = 0,
            |c| c.server.connection.handshake_timeout = Duration::ZERO,
            |c| c.server.connection.ping_interval = Duration::from_secs(120),
            |c| c.server.max_connections = 0,
            |c| c.server.max_pending_handshakes = 0,
            |c| c.chat.max_rooms = 0,
            |c| c.chat.max_room_members = 0,
            |c| c.chat.rate_limit_burst = 0,
        ];
        for change in changes {
            let mut config = Config::default();
            change(&mut config);
            assert!(config.validate().is_err(), "{config:?}");
        }
        let mut edge = Config::default();
        edge.server.connection.ping_interval = Duration::ZERO;
        edge.server.connection.idle_timeout = Duration::ZERO;
        edge.server.connection.max_handshake_bytes = 256;
        edge.server.read_buffer_size = 1024;
        edge.chat.rate_limit_per_sec = 0;
        edge.chat.rate_limit_burst = 0;
        assert_eq!(edge.validate(), Ok(()));
    }
}
