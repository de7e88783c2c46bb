//! TLS: the page over https, chat and echo over wss, bad handshakes, the
//! handshake deadline, and SIGHUP reloading the certificate. Each test makes
//! its own self-signed certificate (rcgen) and talks through rustls.

mod common;

use common::tls::{TestCert, TlsClient, client_config};
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends `bytes` on a new TCP connection and reads until the server ends
/// it (EOF or reset; what it sends first, such as a TLS alert, is ignored):
/// true if it did within PATIENCE.
fn ended_after(addr: std::net::SocketAddr, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut stream, &mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err) => return err.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn tls_server(cert: &TestCert, change: impl FnOnce(&mut rust_chat::Config)) -> TestServer {
    TestServer::with_config(config(|c| {
        c.server.tls = Some(cert.files());
        change(c);
    }))
}

#[test]
fn https_serves_the_page_and_wss_serves_echo_and_chat() {
    let cert = TestCert::new();
    let server = tls_server(&cert, |_| {});
    let trust = client_config(&[&cert.der]);

    let mut page = TlsClient::connect(server.addr, trust.clone()).unwrap();
    assert_eq!(page.alpn().as_deref(), Some(&b"http/1.1"[..]), "ALPN http/1.1");
    let response = page.get("/");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("Content-Security-Policy: "), "{response}");
    assert!(response.contains("<script src=\"/chat.js\">"));
    // The operator's endpoints are on the main port, so over TLS too.
    let metrics = TlsClient::connect(server.addr, trust.clone()).unwrap().get("/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
    assert!(metrics.contains("\nrust_chat_connections_opened_total "), "{metrics}");
    assert!(TlsClient::connect(server.addr, trust.clone()).unwrap().get("/healthz").ends_with("\r\n\r\nok\n"));

    // Its own pages are https ones: a plain-HTTP page of the same name is refused.
    let with_origin = |origin: &str| {
        let mut client = TlsClient::connect(server.addr, trust.clone()).unwrap();
        let request = String::from_utf8(upgrade_request("/echo")).unwrap();
        client.send(request.replacen("\r\n\r\n", &format!("\r\nOrigin: {origin}\r\n\r\n"), 1).as_bytes());
        client.upgrade_answer()
    };
    // (The request says `Host: 127.0.0.1`, so the page's origin has no port either.)
    assert!(with_origin("https://127.0.0.1").starts_with("HTTP/1.1 101"));
    assert!(with_origin("http://127.0.0.1").starts_with("HTTP/1.1 403"));

    let mut echo = TlsClient::connect(server.addr, trust.clone()).unwrap();
    assert!(echo.upgrade("/echo").starts_with("HTTP/1.1 101 "));
    echo.send_frame(TEXT, b"hello over TLS");
    assert_eq!(echo.read_frame(), Frame::text("hello over TLS"));
    // A message far larger than a TLS record and than what rustls may
    // buffer: it crosses many partial reads and writes, whole and in order.
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    echo.send_frame(BINARY, &big);
    let back = echo.read_frame();
    assert_eq!((back.opcode, back.payload.len()), (BINARY, big.len()));
    assert!(back.payload == big, "the echo came back changed");

    let mut alice = TlsClient::connect(server.addr, trust.clone()).unwrap();
    assert!(alice.upgrade("/chat?nick=alice&room=tls").starts_with("HTTP/1.1 101 "));
    let welcome: serde_json::Value = serde_json::from_slice(&alice.read_frame().payload).unwrap();
    assert_eq!((welcome["type"].as_str(), welcome["nick"].as_str()), (Some("welcome"), Some("alice")));
    // A second member hears the first, both over TLS.
    let mut bob = TlsClient::connect(server.addr, trust).unwrap();
    assert!(bob.upgrade("/chat?nick=bob&room=tls").starts_with("HTTP/1.1 101 "));
    let _bobs_welcome = bob.read_frame();
    alice.send_frame(TEXT, b"hi bob");
    let heard = loop {
        let event: serde_json::Value = serde_json::from_slice(&bob.read_frame().payload).unwrap();
        if event["type"] == "message" {
            break event;
        }
    };
    assert_eq!((heard["nick"].as_str(), heard["text"].as_str()), (Some("alice"), Some("hi bob")));
    // A clean close: Close answered, then close_notify and FIN.
    bob.send_frame(CLOSE, &1000u16.to_be_bytes());
    assert_eq!(bob.read_frame().close_code(), Some(1000));
    assert!(bob.wait_end(), "the server ends the connection after the close handshake");
}

#[test]
fn a_bad_tls_handshake_ends_that_connection_and_disturbs_no_other() {
    let cert = TestCert::new();
    let server = tls_server(&cert, |_| {});
    let trust = client_config(&[&cert.der]);
    let mut member = TlsClient::connect(server.addr, trust.clone()).unwrap();
    assert!(member.upgrade("/echo").starts_with("HTTP/1.1 101 "));

    // Plain HTTP on the TLS port: not a ClientHello, so the connection ends.
    assert!(ended_after(server.addr, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), "plain HTTP is closed");
    // Garbage: a record header that claims too much, then noise.
    let mut garbage = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    garbage.extend([0xAB; 600]);
    assert!(ended_after(server.addr, &garbage), "garbage is closed");
    // A client that does not trust the certificate gives up in the handshake.
    let other = TestCert::new();
    assert!(TlsClient::connect(server.addr, client_config(&[&other.der])).is_err());

    // Through all of it, the member was served.
    member.send_frame(TEXT, b"still here");
    assert_eq!(member.read_frame(), Frame::text("still here"));
    // And a new client is too.
    let mut late = TlsClient::connect(server.addr, trust).unwrap();
    assert!(late.upgrade("/echo").starts_with("HTTP/1.1 101 "));
}

#[test]
fn the_handshake_deadline_covers_the_tls_handshake() {
    let cert = TestCert::new();
    let server = tls_server(&cert, |c| c.server.connection.handshake_timeout = Duration::from_millis(300));
    let started = Instant::now();
    // Connects and says nothing: no ClientHello ever comes.
    assert!(ended_after(server.addr, b""), "closed at the deadline");
    assert!(started.elapsed() >= Duration::from_millis(300), "not before it");
    // Half a ClientHello, then nothing.
    let started = Instant::now();
    assert!(ended_after(server.addr, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
    assert!(started.elapsed() >= Duration::from_millis(300), "not before it");
    assert!(server.wait_for_connections(0, PATIENCE));
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_and_keeps_the_old_on_a_bad_file() {
    let first = TestCert::new();
    let (cert, key) = (first.cert.to_str().unwrap(), first.key.to_str().unwrap());
    let server = Spawned::start_logging("info", &["--tls-cert", cert, "--tls-key", key]);
    let mut before = TlsClient::connect(server.addr, client_config(&[&first.der])).unwrap();
    assert!(before.upgrade("/echo").starts_with("HTTP/1.1 101 "));
    assert_eq!(before.server_cert(), first.der);

    let second = TestCert::new();
    second.install_over(&first);
    server.signal("HUP");
    // Each worker reloads on its own (and logs it): wait for all of them, or a
    // late one would take both signals below as one, and fail on the bad file.
    let workers = test_workers();
    let reloaded = |log: &str, times: usize| plain(log).matches("certificate and key reloaded").count() >= times;
    let deadline = Instant::now() + PATIENCE;
    while !reloaded(&server.log(), workers) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reloaded(&server.log(), workers), "{}", server.log());
    let after = TlsClient::connect(server.addr, client_config(&[&second.der])).unwrap();
    assert_eq!(after.server_cert(), second.der, "new connections get the new certificate");
    // The open connection was not dropped.
    before.send_frame(TEXT, b"kept");
    assert_eq!(before.read_frame(), Frame::text("kept"));

    // A file that does not parse: an error line, and the certificate in use stays.
    std::fs::write(&first.cert, "not a certificate").unwrap();
    server.signal("HUP");
    let deadline = Instant::now() + PATIENCE;
    while plain(&server.log()).matches("reload failed").count() < workers && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = plain(&server.log());
    assert!(log.contains("ERROR") && log.contains("reload failed"), "{log}");
    let still = TlsClient::connect(server.addr, client_config(&[&second.der])).unwrap();
    assert_eq!(still.server_cert(), second.der);
}

#[test]
fn the_binary_refuses_missing_or_unreadable_tls_files_with_exit_code_2() {
    let cert = TestCert::new();
    let (good_cert, good_key) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
    let garbage = cert.cert.with_file_name("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n").unwrap();
    let garbage = garbage.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--tls-cert", "/nonexistent/cert.pem", "--tls-key", good_key], "--tls-cert /nonexistent/cert.pem"),
        (&["--tls-cert", good_cert, "--tls-key", "/nonexistent/key.pem"], "--tls-key /nonexistent/key.pem"),
        (&["--tls-cert", garbage, "--tls-key", good_key], "--tls-cert"),
        (&["--tls-cert", good_cert], "--tls-cert needs --tls-key"),
        (&["--tls-cert", good_key, "--tls-key", good_key], "--tls-cert"),
    ];
    for (args, says) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_rust-chat")).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}
