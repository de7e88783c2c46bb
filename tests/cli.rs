//! The binary's command line as an operator meets it: environment variables,
//! a config file, and errors that stop the start with exit code 2.

mod common;

use common::*;
use std::process::Command;

fn fails_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_rust-chat")).args(args).envs(env.iter().copied()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr
}

/// Whether an upgrade from a page of `origin` is accepted (101).
fn accepts_origin(addr: std::net::SocketAddr, origin: &str) -> bool {
    let mut client = RawClient::connect(addr);
    let request = String::from_utf8(upgrade_request("/echo")).unwrap();
    client.send_raw(request.replacen("\r\n\r\n", &format!("\r\nOrigin: {origin}\r\n\r\n"), 1).as_bytes());
    client.read_http_head().starts_with("HTTP/1.1 101")
}

#[test]
fn environment_variables_set_what_flags_set_and_flags_win() {
    let env = [("RUST_CHAT_BIND", "127.0.0.1:0"), ("RUST_CHAT_ALLOWED_ORIGIN", "https://a.example,https://b.example")];
    let mut server = Spawned::start_env(&env, &[]);
    assert!(accepts_origin(server.addr, "https://a.example"));
    assert!(accepts_origin(server.addr, "https://b.example"));
    assert!(!accepts_origin(server.addr, "https://c.example"));
    server.signal("TERM");
    assert_eq!(server.wait_exit(PATIENCE), Some(0));
    // A flag given on the command line is used instead of its variable.
    let mut flagged = Spawned::start_env(&env, &["--allowed-origin", "https://c.example"]);
    assert!(accepts_origin(flagged.addr, "https://c.example"));
    assert!(!accepts_origin(flagged.addr, "https://a.example"));
    flagged.signal("TERM");
    assert_eq!(flagged.wait_exit(PATIENCE), Some(0));
    // Switches read true and false.
    let no_deflate = Spawned::start_env(&[("RUST_CHAT_BIND", "127.0.0.1:0"), ("RUST_CHAT_NO_DEFLATE", "true")], &[]);
    let mut client = RawClient::connect(no_deflate.addr);
    let request = String::from_utf8(upgrade_request("/echo")).unwrap();
    client.send_raw(
        request.replacen("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n", 1).as_bytes(),
    );
    assert!(!client.read_http_head().contains("permessage-deflate"), "declined");
}

#[test]
fn a_config_file_configures_the_server_and_flags_override_it() {
    let dir = std::env::temp_dir().join(format!("rust-chat-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rust-chat.toml");
    std::fs::write(&file, "bind = \"127.0.0.1:0\"\nallowed-origin = [\"https://from-file.example\"]\nmax-rooms = 3\n")
        .unwrap();
    let file = file.to_str().unwrap();
    let mut server = Spawned::start_env(&[], &["--config", file]);
    assert!(accepts_origin(server.addr, "https://from-file.example"));
    assert!(!accepts_origin(server.addr, "https://elsewhere.example"));
    server.signal("TERM");
    assert_eq!(server.wait_exit(PATIENCE), Some(0));
    // The same file through RUST_CHAT_CONFIG, and a flag that adds to it.
    let server = Spawned::start_env(&[("RUST_CHAT_CONFIG", file)], &["--allowed-origin", "https://flag.example"]);
    assert!(accepts_origin(server.addr, "https://flag.example"));
}

#[test]
fn a_switch_set_false_in_the_file_wins_over_the_environment() {
    let dir = std::env::temp_dir().join(format!("rust-chat-cli-switch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rust-chat.toml");
    std::fs::write(&file, "no-deflate = false\n").unwrap();
    let offers_deflate = |addr| {
        let mut client = RawClient::connect(addr);
        let request = String::from_utf8(upgrade_request("/echo")).unwrap();
        client.send_raw(
            request.replacen("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n", 1).as_bytes(),
        );
        client.read_http_head().contains("permessage-deflate")
    };
    let env = [("RUST_CHAT_BIND", "127.0.0.1:0"), ("RUST_CHAT_NO_DEFLATE", "true")];
    let with_file = Spawned::start_env(&env, &["--config", file.to_str().unwrap()]);
    assert!(offers_deflate(with_file.addr), "the file's false wins over the environment's true");
    let with_flag = Spawned::start_env(&env, &["--no-deflate=false"]);
    assert!(offers_deflate(with_flag.addr), "and so does the command line's");
    let env_only = Spawned::start_env(&env, &[]);
    assert!(!offers_deflate(env_only.addr));
}

#[test]
fn bad_values_stop_the_start_with_one_line_and_exit_code_2() {
    for (args, says) in [
        (&["--max-message-size", "12XB"][..], "--max-message-size"),
        (&["--bind", "127.0.0.1:70000"], "--bind"),
        (&["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], "/nonexistent/cert.pem"),
        (&["--frobnicate"], "--frobnicate"),
        (&["--config", "/nonexistent/rust-chat.toml"], "/nonexistent/rust-chat.toml"),
        (&["--allowed-host", "[::1]:80"], "--allowed-host"),
    ] {
        let stderr = fails_with(args, &[]);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let stderr = fails_with(&[], &[("RUST_CHAT_MAX_CONNECTIONS", "lots")]);
    assert!(stderr.contains("--max-connections"), "an environment variable's error names its flag: {stderr}");
}

#[test]
fn help_and_version_print_and_exit_0() {
    let help = Command::new(env!("CARGO_BIN_EXE_rust-chat")).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for part in ["--bind", "--tls-cert", "--allowed-origin", "--max-text-bytes", "RUST_CHAT_BIND", "--config", "SIGHUP"]
    {
        assert!(text.contains(part), "--help mentions {part}:\n{text}");
    }
    let version = Command::new(env!("CARGO_BIN_EXE_rust-chat")).arg("--version").output().unwrap();
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}
