use super::*;

fn run(args: &[&str]) -> Result<Config, String> {
    match parse_args(args.iter().map(|s| s.to_string()))? {
        Command::Run(config, _) => Ok(*config),
        Command::Print(_) => Err("not a run".into()),
    }
}

#[test]
fn redis_is_a_redis_url_with_a_port_and_a_database_or_their_defaults() {
    let redis = |url: &str| match parse_args(["--redis".to_string(), url.to_string()]) {
        Ok(Command::Run(config, _)) => Ok(config.redis.map(|r| (r.addr.to_string(), r.db))),
        Ok(Command::Print(_)) => Err("printed".to_string()),
        Err(err) => Err(err),
    };
    assert_eq!(redis("redis://127.0.0.1:6380/2"), Ok(Some(("127.0.0.1:6380".into(), 2))));
    assert_eq!(redis("redis://127.0.0.1"), Ok(Some(("127.0.0.1:6379".into(), 0))));
    assert_eq!(redis("redis://127.0.0.1:7000/"), Ok(Some(("127.0.0.1:7000".into(), 0))));
    assert_eq!(redis("redis://[::1]:6379"), Ok(Some(("[::1]:6379".into(), 0))));
    assert!(redis("rediss://127.0.0.1").unwrap_err().contains("not supported yet"));
    assert!(redis("redis://user:pw@127.0.0.1").unwrap_err().contains("passwords"));
    assert!(redis("http://127.0.0.1:6379").unwrap_err().contains("--redis"));
    assert!(redis("redis://127.0.0.1/x").is_err());
    assert_eq!(
        parse_args(Vec::<String>::new()).map(|c| matches!(c, Command::Run(c, _) if c.redis.is_none())),
        Ok(true)
    );
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
    assert_eq!(workers(&["--workers", "2", "--workers", "3"]), Ok(3), "the last one given counts");
    assert!(workers(&["--workers", "many"]).is_err());
}

#[test]
fn no_flags_is_the_default_config() {
    // With the binary's own default: a store in ./rust-chat-data.
    let store = Some(rust_chat::server::store::StoreConfig::default_dir());
    assert_eq!(run(&[]).unwrap(), Config { store, ..Config::default() });
}

#[test]
fn the_store_flags() {
    use rust_chat::broker::store::Fsync;
    let store = |args: &[&str]| run(args).unwrap().store.map(|store| (store.dir, store.fsync));
    assert_eq!(store(&[]), Some((PathBuf::from("rust-chat-data"), Fsync::Batch)));
    assert_eq!(
        store(&["--data-dir", "/var/lib/chat", "--fsync", "never"]),
        Some(("/var/lib/chat".into(), Fsync::Never))
    );
    assert_eq!(store(&["--fsync=always"]).map(|(_, fsync)| fsync), Some(Fsync::Always));
    assert_eq!(store(&["--no-persist"]), None);
    assert_eq!(store(&["--data-dir", "x", "--no-persist"]), None, "--no-persist wins");
    let err = run(&["--fsync", "sometimes"]).unwrap_err();
    assert!(err.contains("--fsync") && err.contains("always, batch, never"), "{err}");
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
fn bad_flags_are_explained_in_one_line_that_names_them() {
    let error = |args: &[&str]| run(args).unwrap_err();
    for (args, says) in [
        (&["--bind", "nowhere"][..], "--bind"),
        (&["--bind", "127.0.0.1:70000"], "--bind"),
        (&["--max-message-size", "12XB"], "--max-message-size"),
        (&["--max-message-size", "12 parsecs"], "--max-message-size"),
        (&["--close-timeout", "5h"], "unit"),
        (&["--frobnicate"], "--frobnicate"),
        (&["--bind"], "--bind"),
        (&["--max-rooms", "many"], "--max-rooms"),
        (&["--workers", "0"], "--workers"),
        (&["--allowed-host", "a:80"], "--allowed-host"),
        (&["--metrics-bind", "9100"], "--metrics-bind"),
    ] {
        let message = error(args);
        assert!(message.contains(says), "{args:?}: {message}");
        assert_eq!(message.lines().count(), 1, "{args:?}: {message}");
    }
    assert!(error(&["--max-message-size", "0"]).contains("max message size"), "validated");
    assert!(
        matches!(parse_args(["--help".to_string()]), Ok(Command::Print(help)) if help.contains("--max-connections"))
    );
    assert!(
        matches!(parse_args(["--version".to_string()]), Ok(Command::Print(v)) if v.contains(env!("CARGO_PKG_VERSION")))
    );
}

/// A config file with `text` in a fresh temporary directory.
fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rust-chat-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rust-chat.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_config_file_sets_what_flags_set_and_flags_override_it() {
    let path = config_file(
        "good",
        "bind = \"0.0.0.0:9000\"\nmax-connections = 5000\nmax-message-size = \"1MiB\"\nclose-timeout = \"250ms\"\n\
         no-deflate = true\nallowed-origin = [\"https://a.example\", \"https://b.example\"]\nworkers = 2\nrate-limit = 3\n\
         metrics-bind = \"127.0.0.1:9100\"\n",
    );
    let path = path.to_str().unwrap();
    let (config, workers) = match parse_args(["--config", path, "--max-connections", "7"].map(String::from)).unwrap() {
        Command::Run(config, workers) => (*config, workers),
        Command::Print(_) => panic!("a run"),
    };
    assert_eq!(config.server.bind.to_string(), "0.0.0.0:9000");
    assert_eq!(config.server.max_connections, 7, "the command line wins");
    assert_eq!(config.server.connection.max_message_size, 1 << 20);
    assert_eq!(config.server.connection.close_timeout, Duration::from_millis(250));
    assert!(!config.server.connection.deflate.enabled);
    assert_eq!((workers, config.chat.rate_limit_per_sec), (2, 3));
    assert_eq!(config.server.metrics, rust_chat::server::MetricsEndpoint::Bind("127.0.0.1:9100".parse().unwrap()));
    let mut allowed = rust_chat::protocol::origin::OriginPolicy::default();
    allowed.allow_origin("https://a.example").unwrap();
    allowed.allow_origin("https://b.example").unwrap();
    assert_eq!(config.server.connection.origin, allowed);

    for (name, text, says) in [
        ("unknown", "max-conections = 5\n", "unknown setting 'max-conections'"),
        ("bad-value", "max-message-size = \"12XB\"\n", "--max-message-size"),
        ("not-toml", "bind = \n", "--config"),
        ("float", "max-rooms = 1.5\n", "'max-rooms' cannot be float"),
    ] {
        let path = config_file(name, text);
        let err = run(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(err.contains(says), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
    }
    assert!(run(&["--config", "/nonexistent/rust-chat.toml"]).unwrap_err().contains("/nonexistent/rust-chat.toml"));
}
