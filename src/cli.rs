//! The binary's command line: flags onto a [`Config`], with `--help`.

use rust_chat::Config;
use std::time::Duration;

pub const USAGE: &str = "\
rust-chat: a WebSocket echo and chat server

USAGE:
    rust-chat [OPTIONS]

OPTIONS:
    --bind ADDR                  Address to listen on [default: 127.0.0.1:10000]
                                 (loopback only; use 0.0.0.0:10000 to serve other
                                 machines, port 0 for any free port)
    --max-message-size SIZE      Largest message, over all its fragments; larger
                                 ones are closed with 1009 [default: 16MiB]
    --max-frame-size SIZE        Largest payload one frame may declare [default: 16MiB]
    --max-handshake-bytes SIZE   Largest HTTP request head; larger gets 431 [default: 8KiB]
    --max-buffered-bytes SIZE    What all connections together may hold of messages
                                 still arriving; past it the connection whose input
                                 would pass it is closed with 1013 [default: 256MiB]
    --max-outgoing-bytes SIZE    Stop reading from a connection while this much of
                                 its output waits to be sent [default: 1MiB]
    --slow-consumer-grace DURATION
                                 How long room deliveries may keep a connection's
                                 queue over that before it is closed (1008); it is
                                 closed at once at 4 times the size; 0 = at the size
                                 itself [default: 5s]
    --close-timeout DURATION     How long a closing connection may take before it is
                                 dropped [default: 5s]
    --handshake-timeout DURATION How long a new connection may take to send its
                                 upgrade request; then 408 [default: 10s]
    --ping-interval DURATION     Ping a connection after this long without input;
                                 0 = never [default: 60s]
    --idle-timeout DURATION      Close (1001) a connection after this long without
                                 input; 0 = never [default: 120s]
    --drain-timeout DURATION     On SIGINT/SIGTERM, how long to wait for clients to
                                 finish closing [default: 5s]
    --workers N                  Event loops (threads) sharing the port, one chat for
                                 all; auto = one per core [default: 1]
    --max-connections N          Open connections at most; more get 503
                                 [default: the open-file limit less 64]
    --max-connections-per-ip N   Open connections from one address at most; more
                                 get 503; 0 = no limit (behind a proxy, keep 0)
                                 [default: 0]
    --max-pending-handshakes N   Connections still sending their request at most;
                                 the oldest is dropped for a new one [default: 1024]

TLS (https:// and wss://, on the same port):
    --tls-cert FILE              Certificate chain, PEM, leaf first
    --tls-key FILE               Its private key, PEM (PKCS#8, RSA or EC); both or
                                 neither. SIGHUP reads both files again: new
                                 connections get the new certificate, open ones
                                 keep theirs, and files that do not load keep the
                                 old ones (with an error line)

WHO MAY CONNECT:
    --allowed-origin ORIGIN      Also accept WebSocket upgrades from pages of this
                                 origin (scheme://host[:port], exact; repeatable).
                                 Without it a page may connect only from the
                                 server's own origin; clients that send no Origin
                                 (not browsers) always may. '*' accepts every
                                 origin (logged as a warning at start-up)
    --allowed-host NAME          Also answer requests to this Host name
                                 (repeatable). Bound to loopback the server answers
                                 only localhost, 127.0.0.1 and [::1]: 403 for other
                                 names (DNS rebinding); bound elsewhere, any name
                                 unless this is given

COMPRESSION (permessage-deflate, RFC 7692):
    --no-deflate                 Decline every client's offer to compress
    --deflate-threshold SIZE     Send shorter messages raw [default: 256]
    --deflate-context-takeover   Keep a compressor per connection (better ratios,
                                 about 256 KiB each) instead of shared ones

CHAT OPTIONS:
    --history N                  Messages each room keeps for newcomers [default: 100]
    --history-bytes SIZE         What the history of all rooms may hold; the oldest
                                 messages go first [default: 64MiB]
    --max-text-bytes SIZE        Longest chat message [default: 4KiB]
    --max-rooms N                Rooms that may exist at once [default: 1000]
    --max-room-members N         Members one room may have [default: 1000]
    --rate-limit N               Messages per second per connection; 0 = no limit [default: 10]
    --rate-burst N               Messages allowed in a burst [default: 20]
    -h, --help                   Print this help
    -V, --version                Print the version

SIZE is a number of bytes, optionally with a suffix: 512, 64KiB, 16MiB (K, M, G also work).
DURATION is a number with a unit: 500ms, 5s, 2m (a bare number is seconds).

SIGNALS:
    SIGINT, SIGTERM   stop accepting, close every connection with 1001, wait up to
                      the drain timeout, exit 0; a second signal exits at once (1)

LOGS:
    To standard error. RUST_LOG sets the level [default: info]; RUST_LOG=debug
    adds a line for each connection opened and closed.

ENDPOINTS:
    http://ADDR/                      the chat page
    ws://ADDR/ and ws://ADDR/chat     the chat (?room=NAME&nick=NAME to pick both)
    ws://ADDR/echo                    echo every message back
";

pub enum Command {
    /// Serve with this configuration on this many event loops.
    Run(Box<Config>, usize),
    Help,
    Version,
}

pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut config = Config::default();
    let mut workers = 1;
    let (mut tls_cert, mut tls_key) = (None, None);
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let c = &mut config.server.connection;
        // Accept both `--flag value` and `--flag=value`.
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_string(), Some(value.to_string())),
            _ => (flag.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).ok_or(format!("{name} needs a value"));
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--no-deflate" => c.deflate.enabled = false,
            "--deflate-context-takeover" => c.deflate.context_takeover = true,
            "--deflate-threshold" => c.deflate.threshold = parse_size(&value()?, &name)?,
            "-V" | "--version" => return Ok(Command::Version),
            "--bind" => {
                let v = value()?;
                config.server.bind =
                    v.parse().map_err(|_| format!("--bind: '{v}' is not an address like 127.0.0.1:10000"))?;
            }
            "--max-message-size" => c.max_message_size = parse_size(&value()?, &name)?,
            "--max-frame-size" => c.max_frame_size = parse_size(&value()?, &name)?,
            "--max-handshake-bytes" => c.max_handshake_bytes = parse_size(&value()?, &name)?,
            "--max-buffered-bytes" => config.server.max_buffered_bytes = parse_size(&value()?, &name)?,
            "--max-outgoing-bytes" => c.max_outgoing_bytes = parse_size(&value()?, &name)?,
            "--slow-consumer-grace" => c.slow_consumer_grace = parse_duration(&value()?, &name)?,
            "--close-timeout" => c.close_timeout = parse_duration(&value()?, &name)?,
            "--handshake-timeout" => c.handshake_timeout = parse_duration(&value()?, &name)?,
            "--ping-interval" => c.ping_interval = parse_duration(&value()?, &name)?,
            "--idle-timeout" => c.idle_timeout = parse_duration(&value()?, &name)?,
            "--tls-cert" => tls_cert = Some(std::path::PathBuf::from(value()?)),
            "--tls-key" => tls_key = Some(std::path::PathBuf::from(value()?)),
            "--allowed-origin" => {
                let origin = value()?;
                c.origin.allow_origin(&origin).map_err(|why| format!("--allowed-origin: {why}"))?;
            }
            "--allowed-host" => {
                let host = value()?;
                if host.is_empty() || host.contains([':', '/', ' ']) && !host.starts_with('[') {
                    return Err(format!("--allowed-host: '{host}' is not a host name (give it without a port)"));
                }
                config.server.allowed_hosts.push(host);
            }
            "--drain-timeout" => config.server.drain_timeout = parse_duration(&value()?, &name)?,
            "--max-connections" => config.server.max_connections = parse_count(&value()?, &name)?,
            "--max-connections-per-ip" => config.server.max_connections_per_ip = parse_count(&value()?, &name)?,
            "--max-pending-handshakes" => config.server.max_pending_handshakes = parse_count(&value()?, &name)?,
            "--workers" => {
                let v = value()?;
                workers = match v.as_str() {
                    "auto" => rust_chat::server::available_workers(),
                    _ => parse_count(&v, &name)?,
                };
                if workers == 0 {
                    return Err("--workers: at least 1 (or auto)".into());
                }
            }
            "--history" => config.chat.history_len = parse_count(&value()?, &name)?,
            "--history-bytes" => config.chat.history_bytes = parse_size(&value()?, &name)?,
            "--max-text-bytes" => config.chat.max_text_bytes = parse_size(&value()?, &name)?,
            "--max-rooms" => config.chat.max_rooms = parse_count(&value()?, &name)?,
            "--max-room-members" => config.chat.max_room_members = parse_count(&value()?, &name)?,
            "--rate-limit" => config.chat.rate_limit_per_sec = parse_count(&value()?, &name)?,
            "--rate-burst" => config.chat.rate_limit_burst = parse_count(&value()?, &name)?,
            other => return Err(format!("unknown option '{other}' (see --help)")),
        }
    }
    config.server.tls = match (tls_cert, tls_key) {
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
    config.validate().map_err(|err| err.to_string())?;
    Ok(Command::Run(Box::new(config), workers))
}

fn parse_size(text: &str, flag: &str) -> Result<usize, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let multiplier: usize = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{flag}: unknown unit in '{text}'")),
    };
    let number: usize = digits.parse().map_err(|_| format!("{flag}: '{text}' is not a size like 16MiB"))?;
    number.checked_mul(multiplier).ok_or(format!("{flag}: '{text}' is too large"))
}

fn parse_count<T: std::str::FromStr>(text: &str, flag: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("{flag}: '{text}' is not a whole number"))
}

fn parse_duration(text: &str, flag: &str) -> Result<Duration, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let number: f64 = digits.parse().map_err(|_| format!("{flag}: '{text}' is not a duration like 5s"))?;
    let seconds = match &text[digits.len()..] {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{flag}: unknown unit in '{text}' (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{flag}: '{text}' is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse_args(args.iter().map(|s| s.to_string()))? {
            Command::Run(config, _) => Ok(*config),
            _ => Err("not a run".into()),
        }
    }

    #[test]
    fn workers_are_a_count_or_auto() {
        let workers = |args: &[&str]| match parse_args(args.iter().map(|s| s.to_string())) {
            Ok(Command::Run(_, n)) => Ok(n),
            Ok(_) => Err("not a run".to_string()),
            Err(err) => Err(err),
        };
        assert_eq!(workers(&[]), Ok(1));
        assert_eq!(workers(&["--workers", "4"]), Ok(4));
        assert_eq!(workers(&["--workers=auto"]), Ok(rust_chat::server::available_workers()));
        assert!(workers(&["--workers", "0"]).is_err());
        assert!(workers(&["--workers", "many"]).is_err());
    }

    #[test]
    fn no_flags_is_the_default_config() {
        assert_eq!(run(&[]).unwrap(), Config::default());
    }

    #[test]
    fn every_flag_maps_onto_config() {
        let config = run(&[
            "--bind",
            "0.0.0.0:9000",
            "--max-message-size=1MiB",
            "--max-frame-size",
            "64k",
            "--max-handshake-bytes",
            "4096",
            "--max-outgoing-bytes",
            "2M",
            "--close-timeout",
            "250ms",
            "--slow-consumer-grace",
            "2s",
            "--history",
            "7",
            "--history-bytes",
            "1MiB",
            "--max-text-bytes",
            "1k",
            "--max-rooms",
            "3",
            "--max-room-members",
            "4",
            "--rate-limit",
            "0",
            "--rate-burst",
            "9",
        ])
        .unwrap();
        assert_eq!(
            (config.chat.history_len, config.chat.max_text_bytes, config.chat.max_rooms, config.chat.max_room_members),
            (7, 1024, 3, 4)
        );
        assert_eq!((config.chat.rate_limit_per_sec, config.chat.rate_limit_burst), (0, 9));
        assert_eq!(config.chat.history_bytes, 1 << 20);
        assert_eq!(config.server.connection.slow_consumer_grace, Duration::from_secs(2));
        let deflate = run(&["--no-deflate", "--deflate-threshold", "1k", "--deflate-context-takeover"]).unwrap();
        assert!(!deflate.server.connection.deflate.enabled && deflate.server.connection.deflate.context_takeover);
        assert_eq!(deflate.server.connection.deflate.threshold, 1024);
        assert!(Config::default().server.connection.deflate.enabled, "on by default");
        let timeouts = run(&[
            "--handshake-timeout",
            "2s",
            "--ping-interval",
            "0",
            "--idle-timeout",
            "1m",
            "--drain-timeout",
            "3s",
            "--max-connections",
            "500",
            "--max-pending-handshakes",
            "50",
            "--max-connections-per-ip",
            "8",
        ])
        .unwrap();
        assert_eq!(timeouts.server.connection.handshake_timeout, Duration::from_secs(2));
        assert_eq!(timeouts.server.connection.ping_interval, Duration::ZERO);
        assert_eq!(timeouts.server.connection.idle_timeout, Duration::from_secs(60));
        assert_eq!(timeouts.server.drain_timeout, Duration::from_secs(3));
        assert_eq!((timeouts.server.max_connections, timeouts.server.max_pending_handshakes), (500, 50));
        assert_eq!(timeouts.server.max_connections_per_ip, 8);
        assert_eq!(config.server.bind.to_string(), "0.0.0.0:9000");
        assert_eq!(config.server.connection.max_message_size, 1 << 20);
        assert_eq!(config.server.connection.max_frame_size, 64 << 10);
        assert_eq!(config.server.connection.max_handshake_bytes, 4096);
        assert_eq!(config.server.connection.max_outgoing_bytes, 2 << 20);
        assert_eq!(config.server.connection.close_timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_flags_are_explained() {
        assert!(run(&["--bind", "nowhere"]).unwrap_err().contains("--bind"));
        assert!(run(&["--max-message-size", "12 parsecs"]).is_err());
        assert!(run(&["--max-message-size", "0"]).is_err(), "validated");
        assert!(run(&["--close-timeout", "5h"]).unwrap_err().contains("unit"));
        assert!(run(&["--frobnicate"]).unwrap_err().contains("unknown option"));
        assert!(run(&["--bind"]).unwrap_err().contains("needs a value"));
        assert!(run(&["--max-rooms", "many"]).unwrap_err().contains("whole number"));
        assert!(matches!(parse_args(["--help".to_string()]), Ok(Command::Help)));
    }
}
