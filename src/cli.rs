//! The binary's command line (clap): flags, their environment variables
//! and an optional TOML file, onto a [`Config`].
//!
//! Where a setting comes from, first found wins: the command line, then the
//! file given with `--config`, then the environment variable
//! (`RUST_CHAT_` and the flag's name, e.g. `RUST_CHAT_MAX_CONNECTIONS`),
//! then the default. The file has the flags' names as keys, without `--`
//! (`max-connections = 5000`, `bind = "0.0.0.0:10000"`, `no-deflate = true`,
//! `allowed-origin = ["https://a.example"]`).

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use rust_chat::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
SIZE is a number of bytes, optionally with a suffix: 512, 64KiB, 16MiB (K, M, G also work).
DURATION is a number with a unit: 500ms, 5s, 2m (a bare number is seconds).
Every flag can also be set by an environment variable (RUST_CHAT_ and its name:
RUST_CHAT_BIND, RUST_CHAT_MAX_CONNECTIONS, ...) or in the --config file (the
flag's name without --: `max-connections = 5000`); the command line wins over
the file, and the file over the environment.

SIGNALS:
    SIGINT, SIGTERM   stop accepting, close every connection with 1001, wait up to
                      the drain timeout, exit 0; a second signal exits at once (1)
    SIGHUP            with TLS: read the certificate and key files again

LOGS:
    To standard error. RUST_LOG sets the level [default: info]; RUST_LOG=debug
    adds a line for each connection opened and closed.

ENDPOINTS:
    http://ADDR/                      the chat page
    ws://ADDR/ and ws://ADDR/chat     the chat (?room=NAME&nick=NAME to pick both)
    ws://ADDR/echo                    echo every message back
    http://ADDR/metrics               Prometheus metrics (on --metrics-bind instead, if given)
    http://ADDR/healthz               200 while accepting, 503 once draining
    (https:// and wss:// with --tls-cert and --tls-key)
";

/// rust-chat: a WebSocket echo and chat server
#[derive(Parser, Debug)]
#[command(name = "rust-chat", version, after_help = AFTER_HELP, args_override_self = true, max_term_width = 100)]
struct Options {
    /// A TOML file with settings (the flags' names as keys, without --)
    #[arg(long, value_name = "FILE", env = "RUST_CHAT_CONFIG")]
    config: Option<PathBuf>,

    /// Address to listen on (loopback only; 0.0.0.0:10000 serves other machines, port 0 any free port) [default: 127.0.0.1:10000]
    #[arg(long, value_name = "ADDR", env = "RUST_CHAT_BIND", value_parser = addr)]
    bind: Option<SocketAddr>,

    /// Largest message, over all its fragments; larger ones are closed with 1009 [default: 16MiB]
    #[arg(long, value_name = "SIZE", env = "RUST_CHAT_MAX_MESSAGE_SIZE", value_parser = size)]
    max_message_size: Option<usize>,

    /// Largest payload one frame may declare [default: 16MiB]
    #[arg(long, value_name = "SIZE", env = "RUST_CHAT_MAX_FRAME_SIZE", value_parser = size)]
    max_frame_size: Option<usize>,

    /// Largest HTTP request head; larger gets 431 [default: 8KiB]
    #[arg(long, value_name = "SIZE", env = "RUST_CHAT_MAX_HANDSHAKE_BYTES", value_parser = size)]
    max_handshake_bytes: Option<usize>,

    /// What all connections together may hold of messages still arriving; past it the connection whose input would pass it is closed with 1013 [default: 256MiB]
    #[arg(long, value_name = "SIZE", env = "RUST_CHAT_MAX_BUFFERED_BYTES", value_parser = size)]
    max_buffered_bytes: Option<usize>,

    /// Stop reading from a connection while this much of its output waits to be sent [default: 1MiB]
    #[arg(long, value_name = "SIZE", env = "RUST_CHAT_MAX_OUTGOING_BYTES", value_parser = size)]
    max_outgoing_bytes: Option<usize>,

    /// How long room deliveries may keep a connection's queue over that before it is closed (1008); it is closed at once at 4 times the size; 0 = at the size itself [default: 5s]
    #[arg(long, value_name = "DURATION", env = "RUST_CHAT_SLOW_CONSUMER_GRACE", value_parser = duration)]
    slow_consumer_grace: Option<Duration>,

    /// How long a closing connection may take before it is dropped [default: 5s]
    #[arg(long, value_name = "DURATION", env = "RUST_CHAT_CLOSE_TIMEOUT", value_parser = duration)]
    close_timeout: Option<Duration>,

    /// How long a new connection may take to send its upgrade request (and, with TLS, its handshake); then 408 [default: 10s]
    #[arg(long, value_name = "DURATION", env = "RUST_CHAT_HANDSHAKE_TIMEOUT", value_parser = duration)]
    handshake_timeout: Option<Duration>,

    /// Ping a connection after this long without input; 0 = never [default: 60s]
    #[arg(long, value_name = "DURATION", env = "RUST_CHAT_PING_INTERVAL", value_parser = duration)]
    ping_interval: Option<Duration>,

    /// Close (1001) a connection after this long without input; 0 = never [default: 120s]
    #[arg(long, value_name = "DURATION", env = "RUST_CHAT_IDLE_TIMEOUT", value_parser = duration)]
    idle_timeout: Option<Duration>,

    /// On SIGINT/SIGTERM, how long to wait for clients to finish closing [default: 5s]
    #[arg(long, value_name = "DURATION", env = "RUST_CHAT_DRAIN_TIMEOUT", value_parser = duration)]
    drain_timeout: Option<Duration>,

    /// Event loops (threads) sharing the port, one chat for all; auto = one per core [default: 1]
    #[arg(long, value_name = "N", env = "RUST_CHAT_WORKERS", value_parser = workers)]
    workers: Option<usize>,

    /// Open connections at most; more get 503 [default: the open-file limit less 64]
    #[arg(long, value_name = "N", env = "RUST_CHAT_MAX_CONNECTIONS")]
    max_connections: Option<usize>,

    /// Open connections from one address at most; more get 503; 0 = no limit (behind a proxy, keep 0) [default: 0]
    #[arg(long, value_name = "N", env = "RUST_CHAT_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,

    /// Connections still sending their request at most; the oldest is dropped for a new one [default: 1024]
    #[arg(long, value_name = "N", env = "RUST_CHAT_MAX_PENDING_HANDSHAKES")]
    max_pending_handshakes: Option<usize>,

    /// The certificate chain, PEM, leaf first (https:// and wss:// on the port; needs --tls-key)
    #[arg(long, value_name = "FILE", env = "RUST_CHAT_TLS_CERT", help_heading = "TLS")]
    tls_cert: Option<PathBuf>,

    /// Its private key, PEM (PKCS#8, RSA or EC). SIGHUP reads both files again: new connections get the new certificate, open ones keep theirs, files that do not load keep the old ones
    #[arg(long, value_name = "FILE", env = "RUST_CHAT_TLS_KEY", help_heading = "TLS")]
    tls_key: Option<PathBuf>,

    /// Also accept WebSocket upgrades from pages of this origin (scheme://host[:port], exact; repeatable). Without it a page may connect only from the server's own origin; clients that send no Origin (not browsers) always may. '*' accepts every origin (logged as a warning)
    #[arg(long, value_name = "ORIGIN", env = "RUST_CHAT_ALLOWED_ORIGIN", value_delimiter = ',', action = ArgAction::Append, help_heading = "Who may connect")]
    allowed_origin: Vec<String>,

    /// Also answer requests to this Host name (repeatable). Bound to loopback the server answers only localhost, 127.0.0.1 and [::1]: 403 for other names (DNS rebinding); bound elsewhere, any name unless this is given
    #[arg(long, value_name = "NAME", env = "RUST_CHAT_ALLOWED_HOST", value_delimiter = ',', action = ArgAction::Append, value_parser = host, help_heading = "Who may connect")]
    allowed_host: Vec<String>,

    /// Serve GET /metrics (Prometheus) and GET /healthz on this address, in plain HTTP, instead of on the main port (where they are by default). A private address keeps them from the public
    #[arg(long, value_name = "ADDR", env = "RUST_CHAT_METRICS_BIND", value_parser = addr, help_heading = "Operations")]
    metrics_bind: Option<SocketAddr>,

    /// The HS256 secret of signed identities: a client connecting with ?token=JWT (signed with it) gets the token's sub as its nickname, reserved while it is connected, and is closed (1008) when its exp passes; a bad or expired token gets 401. Prefer --jwt-secret-file or the environment: a flag is visible to other users of the machine
    #[arg(
        long,
        value_name = "SECRET",
        env = "RUST_CHAT_JWT_SECRET",
        hide_env_values = true,
        help_heading = "Signed identities"
    )]
    jwt_secret: Option<String>,

    /// Read the secret from this file (its whole content, without a final newline); used instead of --jwt-secret if both are given
    #[arg(long, value_name = "FILE", env = "RUST_CHAT_JWT_SECRET_FILE", help_heading = "Signed identities")]
    jwt_secret_file: Option<PathBuf>,

    /// Refuse clients without a valid token (401); needs a secret
    #[arg(long, env = "RUST_CHAT_REQUIRE_TOKEN", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Signed identities")]
    require_token: bool,

    /// Decline every client's offer to compress
    #[arg(long, env = "RUST_CHAT_NO_DEFLATE", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Compression (permessage-deflate, RFC 7692)")]
    no_deflate: bool,

    /// Send shorter messages raw [default: 256]
    #[arg(long, value_name = "SIZE", env = "RUST_CHAT_DEFLATE_THRESHOLD", value_parser = size, help_heading = "Compression (permessage-deflate, RFC 7692)")]
    deflate_threshold: Option<usize>,

    /// Keep a compressor per connection (better ratios, about 256 KiB each) instead of shared ones
    #[arg(
        long,
        env = "RUST_CHAT_DEFLATE_CONTEXT_TAKEOVER",
        action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(),
        help_heading = "Compression (permessage-deflate, RFC 7692)"
    )]
    deflate_context_takeover: bool,

    /// Rooms across nodes: every node started with the same Redis is one chat (messages numbered and kept in Redis, history that outlives restarts). redis://HOST:PORT[/DB]
    #[arg(long, value_name = "URL", env = "RUST_CHAT_REDIS", value_parser = redis_url, help_heading = "Cluster")]
    redis: Option<(SocketAddr, u32)>,

    /// Where this node keeps its rooms (numbering, epochs, history), so that a restart loses nothing acknowledged; unused with --redis [default: ./rust-chat-data]
    #[arg(long, value_name = "DIR", env = "RUST_CHAT_DATA_DIR", help_heading = "Storage")]
    data_dir: Option<PathBuf>,

    /// Keep rooms in memory only: a restart forgets them and their history
    #[arg(long, env = "RUST_CHAT_NO_PERSIST", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Storage")]
    no_persist: bool,

    /// When a commit is forced onto the disk: batch (every group commit, before its messages are shown), always (the same, and batches are never joined), never (once a second: a crash may lose the last second) [default: batch]
    #[arg(long, value_name = "WHEN", env = "RUST_CHAT_FSYNC", value_parser = fsync, help_heading = "Storage")]
    fsync: Option<rust_chat::broker::store::Fsync>,

    /// Messages each room keeps for newcomers [default: 100]
    #[arg(long, value_name = "N", env = "RUST_CHAT_HISTORY", help_heading = "Chat")]
    history: Option<usize>,

    /// What the history of all rooms may hold; the oldest messages go first [default: 64MiB]
    #[arg(long, value_name = "SIZE", env = "RUST_CHAT_HISTORY_BYTES", value_parser = size, help_heading = "Chat")]
    history_bytes: Option<usize>,

    /// Longest chat message [default: 4KiB]
    #[arg(long, value_name = "SIZE", env = "RUST_CHAT_MAX_TEXT_BYTES", value_parser = size, help_heading = "Chat")]
    max_text_bytes: Option<usize>,

    /// Rooms that may exist at once [default: 1000]
    #[arg(long, value_name = "N", env = "RUST_CHAT_MAX_ROOMS", help_heading = "Chat")]
    max_rooms: Option<usize>,

    /// Members one room may have [default: 1000]
    #[arg(long, value_name = "N", env = "RUST_CHAT_MAX_ROOM_MEMBERS", help_heading = "Chat")]
    max_room_members: Option<usize>,

    /// Messages per second per connection; over it the connection is read more slowly, nothing is dropped; 0 = no limit [default: 10]
    #[arg(long, value_name = "N", env = "RUST_CHAT_RATE_LIMIT", help_heading = "Chat")]
    rate_limit: Option<u32>,

    /// Messages allowed in a burst [default: 20]
    #[arg(long, value_name = "N", env = "RUST_CHAT_RATE_BURST", help_heading = "Chat")]
    rate_burst: Option<u32>,
}

pub enum Command {
    /// Serve with this configuration on this many event loops.
    Run(Box<Config>, usize),
    /// Print this (`--help`, `--version`) and exit 0.
    Print(String),
}

/// The command line (without the program's name) as a [`Command`], or a
/// one-line error that names the flag (or file) at fault.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let args: Vec<String> = args.into_iter().collect();
    let first = match parse(&args) {
        Ok(options) => options,
        Err(err) => return clap_outcome(err),
    };
    // A config file: its settings go before the command line's, so the command line wins.
    let options = match &first.config {
        None => first,
        Some(path) => {
            let mut all = file_args(path)?;
            all.extend(args);
            match parse(&all) {
                Ok(options) => options,
                Err(err) => return clap_outcome(err).map_err(|err| format!("{err} (with {})", path.display())),
            }
        }
    };
    let workers = options.workers.unwrap_or(1);
    let config = options.into_config()?;
    Ok(Command::Run(Box::new(config), workers))
}

fn parse(args: &[String]) -> Result<Options, clap::Error> {
    let matches = Options::command()
        .try_get_matches_from(std::iter::once("rust-chat".to_string()).chain(args.iter().cloned()))?;
    Options::from_arg_matches(&matches)
}

/// `--help` and `--version` are printed; any other clap error is one line.
fn clap_outcome(err: clap::Error) -> Result<Command, String> {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(Command::Print(err.render().to_string())),
        _ => {
            let text = err.render().to_string();
            let line = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            Err(format!("{line} (see --help)"))
        }
    }
}

/// The settings of a TOML file as command-line arguments (`key = value` → `--key=value`).
fn file_args(path: &std::path::Path) -> Result<Vec<String>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|err| format!("--config {shown}: {err}"))?;
    let table: toml::Table =
        text.parse().map_err(|err: toml::de::Error| format!("--config {shown}: {}", err.message()))?;
    let known: Vec<String> =
        Options::command().get_arguments().filter_map(|a| a.get_long().map(str::to_string)).collect();
    let mut args = Vec::new();
    for (key, value) in table {
        if key == "config" || !known.contains(&key) {
            return Err(format!("--config {shown}: unknown setting '{key}'"));
        }
        let values = match value {
            toml::Value::Array(items) => items,
            one => vec![one],
        };
        for value in values {
            match value {
                toml::Value::Boolean(on) => args.push(format!("--{key}={on}")),
                toml::Value::String(text) => args.push(format!("--{key}={text}")),
                toml::Value::Integer(n) => args.push(format!("--{key}={n}")),
                other => return Err(format!("--config {shown}: '{key}' cannot be {}", other.type_str())),
            }
        }
    }
    Ok(args)
}

impl Options {
    fn into_config(self) -> Result<Config, String> {
        let mut config = Config::default();
        let server = &mut config.server;
        let c = &mut server.connection;
        let set = |target: &mut usize, value: Option<usize>| {
            if let Some(value) = value {
                *target = value;
            }
        };
        if let Some(bind) = self.bind {
            server.bind = bind;
        }
        set(&mut c.max_message_size, self.max_message_size);
        set(&mut c.max_frame_size, self.max_frame_size);
        set(&mut c.max_handshake_bytes, self.max_handshake_bytes);
        set(&mut c.max_outgoing_bytes, self.max_outgoing_bytes);
        set(&mut c.deflate.threshold, self.deflate_threshold);
        let timeouts = [
            (&mut c.slow_consumer_grace, self.slow_consumer_grace),
            (&mut c.close_timeout, self.close_timeout),
            (&mut c.handshake_timeout, self.handshake_timeout),
            (&mut c.ping_interval, self.ping_interval),
            (&mut c.idle_timeout, self.idle_timeout),
        ];
        for (target, value) in timeouts {
            if let Some(value) = value {
                *target = value;
            }
        }
        c.deflate.enabled &= !self.no_deflate;
        c.deflate.context_takeover |= self.deflate_context_takeover;
        for origin in &self.allowed_origin {
            c.origin.allow_origin(origin).map_err(|why| format!("--allowed-origin: {why}"))?;
        }
        set(&mut server.max_buffered_bytes, self.max_buffered_bytes);
        set(&mut server.max_connections, self.max_connections);
        set(&mut server.max_connections_per_ip, self.max_connections_per_ip);
        set(&mut server.max_pending_handshakes, self.max_pending_handshakes);
        if let Some(drain) = self.drain_timeout {
            server.drain_timeout = drain;
        }
        server.allowed_hosts = self.allowed_host;
        if let Some(addr) = self.metrics_bind {
            server.metrics = rust_chat::server::MetricsEndpoint::Bind(addr);
        }
        if let Some((addr, db)) = self.redis {
            config.redis =
                Some(rust_chat::server::redis::LinkConfig { db, ..rust_chat::server::redis::LinkConfig::new(addr) });
        }
        server.tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => {
                let files = rust_chat::server::TlsFiles { cert, key };
                // Read now, so that a missing or bad file is a start-up error that names it.
                files.load()?;
                Some(files)
            }
            (None, None) => None,
            (Some(_), None) => return Err("--tls-cert needs --tls-key".into()),
            (None, Some(_)) => return Err("--tls-key needs --tls-cert".into()),
        };
        let secret = match (&self.jwt_secret_file, self.jwt_secret) {
            (Some(path), _) => {
                let shown = path.display();
                let mut secret = std::fs::read(path).map_err(|err| format!("--jwt-secret-file {shown}: {err}"))?;
                while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    secret.pop();
                }
                Some((secret, format!("--jwt-secret-file {shown}")))
            }
            (None, Some(secret)) => Some((secret.into_bytes(), "--jwt-secret".to_string())),
            (None, None) => None,
        };
        config.chat.tokens = match secret {
            Some((secret, from)) => Some(
                rust_chat::chat::TokenConfig::new(secret, self.require_token)
                    .map_err(|err| format!("{from}: {err}"))?,
            ),
            None if self.require_token => return Err("--require-token needs --jwt-secret or --jwt-secret-file".into()),
            None => None,
        };
        if !self.no_persist {
            let mut store = rust_chat::server::store::StoreConfig::default_dir();
            if let Some(dir) = self.data_dir {
                store.dir = dir;
            }
            store.fsync = self.fsync.unwrap_or_default();
            config.store = Some(store);
        }
        let chat = &mut config.chat;
        set(&mut chat.history_len, self.history);
        set(&mut chat.history_bytes, self.history_bytes);
        set(&mut chat.max_text_bytes, self.max_text_bytes);
        set(&mut chat.max_rooms, self.max_rooms);
        set(&mut chat.max_room_members, self.max_room_members);
        if let Some(rate) = self.rate_limit {
            chat.rate_limit_per_sec = rate;
        }
        if let Some(burst) = self.rate_burst {
            chat.rate_limit_burst = burst;
        }
        config.validate().map_err(|err| err.to_string())?;
        Ok(config)
    }
}

fn addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| format!("'{text}' is not an address like 127.0.0.1:10000"))
}

/// `redis://HOST:PORT[/DB]` (the port defaults to 6379, the database to 0);
/// the host is looked up once, now.
fn redis_url(text: &str) -> Result<(SocketAddr, u32), String> {
    use std::net::ToSocketAddrs;
    let bad = || format!("'{text}' is not a Redis URL like redis://127.0.0.1:6379/0");
    let rest = text.strip_prefix("redis://").ok_or_else(|| {
        if text.starts_with("rediss://") {
            "rediss:// (Redis over TLS) is not supported yet".to_string()
        } else {
            bad()
        }
    })?;
    let (host, db) = match rest.split_once('/') {
        Some((host, "")) => (host, 0),
        Some((host, db)) => (host, db.parse().map_err(|_| bad())?),
        None => (rest, 0),
    };
    if host.is_empty() || host.contains('@') {
        return Err(if host.contains('@') { "Redis passwords are not supported yet".into() } else { bad() });
    }
    let with_port =
        if host.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) && !host.ends_with(']') {
            host.to_string()
        } else {
            format!("{host}:6379")
        };
    let addr = with_port.to_socket_addrs().map_err(|err| format!("'{text}': {err}"))?.next().ok_or_else(bad)?;
    Ok((addr, db))
}

fn fsync(text: &str) -> Result<rust_chat::broker::store::Fsync, String> {
    text.parse()
}

fn workers(text: &str) -> Result<usize, String> {
    let n = match text {
        "auto" => rust_chat::server::available_workers(),
        _ => text.parse().map_err(|_| format!("'{text}' is not a number of workers (or auto)"))?,
    };
    if n == 0 {
        return Err("at least 1 (or auto)".into());
    }
    Ok(n)
}

fn host(text: &str) -> Result<String, String> {
    let bracketed = text.starts_with('[') && text.ends_with(']');
    if text.is_empty() || text.contains(['/', ' ', '@']) || (text.contains(':') && !bracketed) {
        return Err(format!("'{text}' is not a host name (give it without a port)"));
    }
    Ok(text.to_string())
}

fn size(text: &str) -> Result<usize, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let multiplier: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown unit in '{text}' (a size like 512, 64KiB, 16MiB)")),
    };
    let number: usize = digits.parse().map_err(|_| format!("'{text}' is not a size like 16MiB"))?;
    number.checked_mul(multiplier).ok_or(format!("'{text}' is too large"))
}

fn duration(text: &str) -> Result<Duration, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let number: f64 = digits.parse().map_err(|_| format!("'{text}' is not a duration like 5s"))?;
    let seconds = match &text[digits.len()..] {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("unknown unit in '{text}' (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is out of range"))
}

#[cfg(test)]
mod tests;
