//! Signed identities: `?token=JWT` (HS256). A valid token's `sub` is the
//! member's nickname, reserved while it is connected; a bad, malformed or
//! expired one is 401 at the upgrade; `exp` ends the connection (1008) when
//! it passes; the token is never logged.

mod common;

use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use rust_chat::chat::TokenConfig;
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SECRET: &[u8] = b"a test secret that is long enough";

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(claims: serde_json::Value, secret: &[u8]) -> String {
    encode(&Header::default(), &claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

fn signed(sub: &str) -> String {
    token(json!({"sub": sub, "exp": now_secs() + 3600}), SECRET)
}

fn server(require: bool) -> TestServer {
    TestServer::with_config(config(|c| {
        c.chat.tokens = Some(TokenConfig::new(SECRET, require).unwrap());
        c.chat.rate_limit_per_sec = 0;
    }))
}

/// The status of the answer to an upgrade of `/chat?QUERY`, and its text.
fn upgrade(addr: std::net::SocketAddr, query: &str) -> (u16, String) {
    let mut client = RawClient::connect(addr);
    client.send_raw(&upgrade_request(&format!("/chat?{query}")));
    let head = client.read_http_head();
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    if code == 101 {
        return (code, head);
    }
    (code, head + &client.read_http_response())
}

#[test]
fn a_valid_token_names_the_member_and_a_bad_one_is_401() {
    let server = server(false);
    let (mut alice, welcome) =
        ChatClient::join(server.addr, &format!("room=signed&nick=mallory&token={}", signed("alice")));
    assert_eq!(welcome["nick"], "alice", "the token's sub, not the nick asked for");
    assert_eq!(welcome["room"], "signed");
    alice.say("hello");
    assert_eq!(alice.until("message")["nick"], "alice");

    let wrong_secret = token(json!({"sub": "eve", "exp": now_secs() + 3600}), b"another secret");
    let expired = token(json!({"sub": "eve", "exp": now_secs() - 10}), SECRET);
    let no_sub = token(json!({"exp": now_secs() + 3600}), SECRET);
    let bad_sub = token(json!({"sub": "not a nick!", "exp": now_secs() + 3600}), SECRET);
    for (token, says) in [
        (wrong_secret.as_str(), "signature"),
        (expired.as_str(), "expired"),
        ("not.a.jwt", "malformed"),
        ("", "malformed"),
        (no_sub.as_str(), "sub"),
        (bad_sub.as_str(), "sub"),
    ] {
        let (code, answer) = upgrade(server.addr, &format!("token={token}"));
        assert_eq!(code, 401, "{says}: {answer}");
        assert!(answer.contains(says), "{says}: {answer}");
        assert!(answer.contains("WWW-Authenticate: Bearer"), "{answer}");
    }
    // Without a token (not required): an anonymous member, as always.
    let (_guest, welcome) = ChatClient::join(server.addr, "room=signed");
    assert!(welcome["nick"].as_str().unwrap().starts_with("guest-"));
    // What the server passes on from a valid token cannot be forged in a query.
    let (_forger, welcome) = ChatClient::join(server.addr, "room=signed&%00nick=root");
    assert!(welcome["nick"].as_str().unwrap().starts_with("guest-"), "{welcome}");
    assert_eq!(upgrade(server.addr, "room=signed&\0nick=root").0, 400, "a raw NUL is not HTTP");
}

#[test]
fn require_token_refuses_anonymous_clients() {
    let server = server(true);
    let (code, answer) = upgrade(server.addr, "nick=anon");
    assert_eq!(code, 401, "{answer}");
    assert!(answer.contains("token is required"), "{answer}");
    let (_bob, welcome) = ChatClient::join(server.addr, &format!("token={}", signed("bob")));
    assert_eq!(welcome["nick"], "bob");
}

#[test]
fn a_signed_nickname_is_reserved_while_it_is_connected() {
    let server = server(false);
    // An unsigned client took "carol" first; carol signs in and gets it.
    let (mut squatter, _) = ChatClient::join(server.addr, "room=den&nick=carol");
    let (mut carol, welcome) = ChatClient::join(server.addr, &format!("room=den&token={}", signed("carol")));
    assert_eq!(welcome["nick"], "carol");
    let renamed = squatter.until("nick");
    assert_eq!(renamed["old"], "carol");
    let guest = renamed["nick"].as_str().unwrap().to_string();
    assert!(guest.starts_with("guest-"), "{renamed}");
    let told = squatter.until("error");
    assert_eq!(told["code"], "nick_reserved", "{told}");
    // No unsigned client can take it now, by query or by /nick.
    let (mut other, welcome) = ChatClient::join(server.addr, "room=den&nick=carol");
    assert_ne!(welcome["nick"], "carol");
    assert_eq!(other.until("error")["code"], "nick_taken");
    squatter.say("/nick Carol");
    assert_eq!(squatter.until("error")["code"], "nick_taken");
    // The signed member's nickname is its token's.
    carol.say("/nick someone");
    assert_eq!(carol.until("error")["code"], "nick_signed");
    // A second connection with carol's token is refused, the first stays.
    let mut second = RawClient::open(server.addr, &format!("/chat?token={}", signed("carol")));
    let close = loop {
        let frame = second.read_frame();
        if frame.opcode == CLOSE {
            break frame;
        }
    };
    assert_eq!(close.close_code(), Some(1008));
    carol.say("still me");
    assert_eq!(carol.until("message")["nick"], "carol");
    // Once carol leaves, the name is free again.
    drop(carol);
    assert_eq!(squatter.until("leave")["nick"], "carol");
    squatter.say("/nick carol");
    assert_eq!(squatter.until("nick")["nick"], "carol");
}

#[test]
fn a_member_is_closed_with_1008_when_its_token_expires() {
    let server = server(false);
    let started = Instant::now();
    let short = token(json!({"sub": "dora", "exp": now_secs() + 2}), SECRET);
    let (mut dora, welcome) = ChatClient::join(server.addr, &format!("token={short}"));
    assert_eq!(welcome["nick"], "dora");
    let close = loop {
        let frame = dora.raw.read_frame();
        if frame.opcode == CLOSE {
            break frame;
        }
    };
    assert_eq!(close.close_code(), Some(1008));
    assert!(String::from_utf8_lossy(&close.payload[2..]).contains("token expired"), "{close:?}");
    // exp is in whole seconds: at least one of them has passed.
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    // A token without exp does not expire.
    let (mut forever, _) = ChatClient::join(server.addr, &format!("token={}", token(json!({"sub": "eli"}), SECRET)));
    forever.say("here");
    assert_eq!(forever.until("message")["nick"], "eli");
}

#[test]
fn the_token_never_appears_in_the_logs() {
    let dir = std::env::temp_dir().join(format!("rust-chat-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, [SECRET, b"\n"].concat()).unwrap();
    let server = Spawned::start_logging("debug", &["--jwt-secret-file", secret_file.to_str().unwrap()]);
    let token = signed("fay");
    let (mut fay, welcome) = ChatClient::join(server.addr, &format!("room=quiet&token={token}"));
    assert_eq!(welcome["nick"], "fay", "the file's secret, without its newline");
    let (code, _) = upgrade(server.addr, &format!("token={token}x"));
    assert_eq!(code, 401);
    fay.say("bye");
    fay.until("message");
    drop(fay);
    std::thread::sleep(Duration::from_millis(200));
    let log = plain(&server.log());
    assert!(log.contains("chat: joined") && log.contains("nick=fay"), "{log}");
    let signature = token.rsplit('.').next().unwrap();
    assert!(!log.contains(signature) && !log.contains(&token[..20]), "the token is in the log:\n{log}");
}

#[test]
fn the_binary_checks_its_token_flags() {
    for (args, says) in [
        (&["--require-token"][..], "--require-token needs"),
        (&["--jwt-secret", ""], "--jwt-secret"),
        (&["--jwt-secret-file", "/nonexistent/secret"], "/nonexistent/secret"),
        (&["--jwt-secret", "a", "--jwt-secret-file", "/nonexistent/x"], "--jwt-secret-file /nonexistent/x"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_rust-chat")).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
