//! Who may talk to the server: the Origin check (Cross-Site WebSocket
//! Hijacking), the Host check on a loopback bind (DNS rebinding), and the
//! headers the page is sent with. Over TCP, against a real server.

mod common;

use common::*;
use std::net::SocketAddr;

/// The status line's code of the answer to a request for `path` with these
/// extra header lines (a WebSocket upgrade if `upgrade`).
fn status(addr: SocketAddr, path: &str, upgrade: bool, headers: &[String]) -> (u16, String) {
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("host:")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    if upgrade {
        request.push_str(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n",
        );
    }
    for line in headers {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut client = RawClient::connect(addr);
    client.send_raw(request.as_bytes());
    // A 101 leaves the connection open: read its head only. Anything else is
    // a whole response that ends with the connection.
    let mut answer = client.read_http_head();
    let code = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    if code != 101 {
        answer.push_str(&client.read_http_response());
    }
    (code, answer)
}

fn upgrade_with_origin(addr: SocketAddr, path: &str, origin: &str) -> u16 {
    status(addr, path, true, &[format!("Origin: {origin}")]).0
}

#[test]
fn a_page_of_the_servers_own_origin_may_connect_and_a_foreign_one_gets_403() {
    let server = TestServer::start();
    let own = format!("http://{}", server.addr);
    let port = server.addr.port();
    for path in ["/chat", "/echo"] {
        assert_eq!(upgrade_with_origin(server.addr, path, &own), 101, "{path}: same origin");
        assert_eq!(status(server.addr, path, true, &[]).0, 101, "{path}: no Origin (not a browser)");
        let (code, answer) = status(server.addr, path, true, &["Origin: http://evil.example".into()]);
        assert_eq!(code, 403, "{path}: foreign");
        assert!(answer.contains("cross-origin"), "the answer says why: {answer}");
        assert_eq!(upgrade_with_origin(server.addr, path, "null"), 403, "{path}: a sandboxed page");
        assert_eq!(upgrade_with_origin(server.addr, path, &format!("http://127.0.0.1:{}", port + 1)), 403);
        // The scheme is not compared with the server's (behind a proxy that
        // ends TLS the page is https and the request arrives plain): only
        // the host and port, which no other site can have.
        assert_eq!(upgrade_with_origin(server.addr, path, &format!("https://127.0.0.1:{port}")), 101, "{path}");
    }
    // Case and spelling do not matter; the default port of the scheme does.
    assert_eq!(upgrade_with_origin(server.addr, "/chat", &format!("HTTP://127.0.0.1:{port}")), 101);
    let localhost = [format!("Host: LocalHost:{port}"), format!("Origin: http://localhost:{port}")];
    assert_eq!(status(server.addr, "/chat", true, &localhost).0, 101);
    let default_port = ["Host: localhost:80".to_string(), "Origin: http://localhost".to_string()];
    assert_eq!(status(server.addr, "/chat", true, &default_port).0, 101, "http:// means port 80");
    let two = [format!("Origin: {own}"), format!("Origin: {own}")];
    assert_eq!(status(server.addr, "/chat", true, &two).0, 403, "two Origin lines");
    // A refused upgrade disturbed nobody: the server still chats.
    let (mut a, _) = ChatClient::join(server.addr, "nick=a");
    a.say("still here");
    assert_eq!(a.until("message")["text"], "still here");
}

#[test]
fn allowed_origins_are_exact_and_star_allows_every_one() {
    let server = TestServer::with_config(config(|c| {
        c.server.connection.origin.allow_origin("https://app.example").unwrap();
    }));
    assert_eq!(upgrade_with_origin(server.addr, "/chat", "https://app.example"), 101);
    assert_eq!(upgrade_with_origin(server.addr, "/echo", "https://APP.example:443"), 101);
    assert_eq!(upgrade_with_origin(server.addr, "/chat", "http://app.example"), 403, "another scheme");
    assert_eq!(upgrade_with_origin(server.addr, "/chat", "https://app.example:8443"), 403, "another port");
    assert_eq!(upgrade_with_origin(server.addr, "/chat", "https://evil.example"), 403);
    assert_eq!(upgrade_with_origin(server.addr, "/chat", &format!("http://{}", server.addr)), 101, "and its own");

    let any = TestServer::with_config(config(|c| {
        c.server.connection.origin.allow_origin("*").unwrap();
    }));
    assert_eq!(upgrade_with_origin(any.addr, "/chat", "https://evil.example"), 101);
    assert_eq!(upgrade_with_origin(any.addr, "/echo", "null"), 101);
}

#[test]
fn on_loopback_only_loopback_host_names_are_answered_page_and_upgrade() {
    let server = TestServer::start();
    let port = server.addr.port();
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "LOCALHOST".into(), format!("[::1]:{port}")]
    {
        assert_eq!(status(server.addr, "/", false, &[format!("Host: {host}")]).0, 200, "the page for {host}");
    }
    // A page of evil.example, whose name resolves to 127.0.0.1: same-origin, but not our name.
    let rebound = [format!("Host: evil.example:{port}"), format!("Origin: http://evil.example:{port}")];
    let (code, answer) = status(server.addr, "/chat", true, &rebound);
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("Host"), "the answer says why: {answer}");
    assert_eq!(status(server.addr, "/", false, &[format!("Host: evil.example:{port}")]).0, 403, "nor the page");
    assert_eq!(status(server.addr, "/echo", true, &[format!("Host: 127.0.0.2:{port}")]).0, 403);

    // --allowed-host adds a name.
    let named = TestServer::with_config(config(|c| c.server.allowed_hosts.push("chat.internal".into())));
    let port = named.addr.port();
    let internal = [format!("Host: chat.internal:{port}"), format!("Origin: http://chat.internal:{port}")];
    assert_eq!(status(named.addr, "/chat", true, &internal).0, 101);
    assert_eq!(status(named.addr, "/", false, &[format!("Host: chat.internal:{port}")]).0, 200);
    assert_eq!(status(named.addr, "/", false, &[format!("Host: localhost:{port}")]).0, 200, "loopback names still");
    assert_eq!(status(named.addr, "/", false, &[format!("Host: evil.example:{port}")]).0, 403);
}

#[test]
fn the_page_and_its_parts_come_with_a_content_security_policy() {
    let server = TestServer::start();
    for (path, kind) in [("/", "text/html"), ("/chat.js", "text/javascript"), ("/chat.css", "text/css")] {
        let (code, response) = status(server.addr, path, false, &[]);
        assert_eq!(code, 200, "{path}: {response}");
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Type: {kind}; charset=utf-8\r\n")), "{path}: {head}");
        let csp = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Security-Policy: "))
            .unwrap_or_else(|| panic!("{path}: no policy in {head}"));
        for part in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
            assert!(csp.contains(part), "{path}: {part} missing from {csp}");
        }
        assert!(head.contains("\r\nX-Content-Type-Options: nosniff\r\n"), "{path}: {head}");
        assert!(head.contains("\r\nReferrer-Policy: no-referrer\r\n"), "{path}: {head}");
        if path == "/" {
            assert!(!body.contains("<script>") && !body.contains("<style>"), "nothing inline for the policy to block");
        }
        if path == "/chat.js" {
            assert!(body.contains("new WebSocket("), "the chat page talks WebSocket");
        }
    }
    assert_eq!(status(server.addr, "/chat.js", true, &[]).0, 404, "an upgrade there is not the chat");
}

#[test]
fn the_binary_takes_allowed_origins_and_hosts_and_refuses_bad_ones() {
    let mut server = Spawned::start(&["--allowed-origin", "https://app.example", "--allowed-host", "chat.internal"]);
    assert_eq!(upgrade_with_origin(server.addr, "/chat", "https://app.example"), 101);
    assert_eq!(upgrade_with_origin(server.addr, "/chat", "https://evil.example"), 403);
    let port = server.addr.port();
    assert_eq!(status(server.addr, "/", false, &[format!("Host: chat.internal:{port}")]).0, 200);
    server.signal("TERM");
    assert_eq!(server.wait_exit(PATIENCE), Some(0));

    let mut star = Spawned::start(&["--allowed-origin", "*"]);
    assert_eq!(upgrade_with_origin(star.addr, "/echo", "https://evil.example"), 101);
    star.signal("TERM");
    assert_eq!(star.wait_exit(PATIENCE), Some(0));
    assert!(plain(&star.log()).contains("--allowed-origin '*'"), "a warning at start-up: {}", star.log());

    for bad in [["--allowed-origin", "app.example"], ["--allowed-origin", "https://a/b"], ["--allowed-host", "a:80"]] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_rust-chat")).args(bad).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(bad[0]), "the error names the flag: {stderr}");
    }
}
