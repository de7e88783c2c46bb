//! The echo server over real TCP, spoken to in raw RFC 6455 bytes.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[test]
fn text_and_binary_come_back_unchanged() {
    let server = TestServer::start();
    for path in ["/echo", "/echo?token=abc"] {
        let mut client = RawClient::open(server.addr, path);
        client.send_text("hi");
        assert_eq!(client.read_frame(), Frame::text("hi"));
        let bytes: Vec<u8> = (0..=255).collect();
        client.send_frame(true, BINARY, &bytes);
        assert_eq!(client.read_frame(), Frame::binary(&bytes));
        client.send_text("");
        assert_eq!(client.read_frame(), Frame::text(""));
    }
}

#[test]
fn every_payload_length_boundary_echoes() {
    let server = TestServer::start();
    let mut client = RawClient::open(server.addr, "/echo");
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        client.send_frame(true, BINARY, &payload);
        let frame = client.read_frame();
        assert_eq!(frame.payload.len(), len);
        assert_eq!(frame, Frame::binary(&payload), "length {len}");
    }
}

#[test]
fn handshake_sent_byte_by_byte() {
    let server = TestServer::start();
    let mut client = RawClient::connect(server.addr);
    for byte in upgrade_request("/echo") {
        client.send_raw(&[byte]);
    }
    let head = client.read_http_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    client.send_text("after a slow handshake");
    assert_eq!(client.read_frame(), Frame::text("after a slow handshake"));
}

#[test]
fn handshake_and_first_frame_in_one_write() {
    let server = TestServer::start();
    let mut client = RawClient::connect(server.addr);
    let mut bytes = upgrade_request("/echo");
    bytes.extend(client.frame_bytes(true, TEXT, b"first"));
    bytes.extend(client.frame_bytes(true, TEXT, b"second"));
    client.send_raw(&bytes);
    assert!(client.read_http_head().starts_with("HTTP/1.1 101 "));
    assert_eq!(client.read_frame(), Frame::text("first"));
    assert_eq!(client.read_frame(), Frame::text("second"));
}

fn a_stream_of_frames(client: &mut RawClient) -> (Vec<u8>, Vec<Frame>) {
    let mut wire = Vec::new();
    wire.extend(client.frame_bytes(true, TEXT, "Hello, κόσμε".as_bytes()));
    wire.extend(client.frame_bytes(false, BINARY, &[1, 2, 3]));
    wire.extend(client.frame_bytes(true, PING, b"ping"));
    wire.extend(client.frame_bytes(true, CONTINUATION, &[4; 200]));
    wire.extend(client.frame_bytes(true, TEXT, &[b'x'; 300]));
    let mut joined = vec![1, 2, 3];
    joined.extend([4; 200]);
    let expected = vec![
        Frame::text("Hello, κόσμε"),
        Frame { fin: true, opcode: PONG, payload: b"ping".to_vec() },
        Frame::binary(&joined),
        Frame::text(&"x".repeat(300)),
    ];
    (wire, expected)
}

#[test]
fn frames_sent_a_byte_at_a_time() {
    let server = TestServer::start();
    let mut client = RawClient::open(server.addr, "/echo");
    let (wire, expected) = a_stream_of_frames(&mut client);
    for byte in &wire {
        client.send_raw(&[*byte]);
    }
    for frame in expected {
        assert_eq!(client.read_frame(), frame);
    }
}

#[test]
fn frames_split_at_every_byte() {
    let server = TestServer::start();
    let mut client = RawClient::open(server.addr, "/echo");
    let (wire, expected) = a_stream_of_frames(&mut client);
    // The same stream in two writes, cut at every position, on one connection.
    for cut in 0..=wire.len() {
        client.send_raw(&wire[..cut]);
        // Give the server a chance to see the first part on its own.
        std::thread::sleep(Duration::from_micros(200));
        client.send_raw(&wire[cut..]);
        for frame in &expected {
            assert_eq!(&client.read_frame(), frame, "cut at {cut}");
        }
    }
}

#[test]
fn ten_thousand_pipelined_frames_echo_in_order() {
    let server = TestServer::start();
    let mut client = RawClient::open(server.addr, "/echo");
    let mut wire = Vec::new();
    for i in 0..10_000 {
        wire.extend(client.frame_bytes(true, TEXT, format!("message {i}").as_bytes()));
    }
    // Write from another thread: the replies flow back while we write.
    let mut writer = client.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&wire).unwrap());
    for i in 0..10_000 {
        assert_eq!(client.read_frame(), Frame::text(&format!("message {i}")));
    }
    sender.join().unwrap();
}

#[test]
fn ping_is_answered_with_the_same_payload_even_between_fragments() {
    let server = TestServer::start();
    let mut client = RawClient::open(server.addr, "/echo");
    client.send_frame(true, PING, b"are you there?");
    assert_eq!(client.read_frame(), Frame { fin: true, opcode: PONG, payload: b"are you there?".to_vec() });
    client.send_frame(true, PING, &[0xAB; 125]);
    assert_eq!(client.read_frame().payload, vec![0xAB; 125]);
    // An unsolicited pong gets no answer; the next echo is the next thing we read.
    client.send_frame(true, PONG, b"unsolicited");
    client.send_frame(false, TEXT, b"frag");
    client.send_frame(true, PING, b"mid");
    client.send_frame(true, CONTINUATION, b"mented");
    assert_eq!(client.read_frame(), Frame { fin: true, opcode: PONG, payload: b"mid".to_vec() });
    assert_eq!(client.read_frame(), Frame::text("fragmented"));
}

#[test]
fn close_handshake_echoes_the_code_and_the_server_closes_tcp() {
    let server = TestServer::start();
    let mut client = RawClient::open(server.addr, "/echo");
    client.send_close(1000, "done");
    assert_eq!(client.read_close().close_code(), Some(1000));
    assert!(client.wait_eof(), "server closes TCP after the close handshake");
    assert!(server.wait_for_connections(0, PATIENCE));
}

#[test]
fn every_close_code_rule() {
    let server = TestServer::start();
    let valid = [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999];
    let invalid = [0u16, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535];
    for code in valid {
        let mut client = RawClient::open(server.addr, "/echo");
        client.send_close(code, "reason");
        assert_eq!(client.read_close().close_code(), Some(code), "valid code {code} is echoed");
    }
    for code in invalid {
        let mut client = RawClient::open(server.addr, "/echo");
        client.send_close(code, "");
        assert_eq!(client.read_close().close_code(), Some(1002), "invalid code {code}");
    }
    // An empty close is answered with an empty close.
    let mut client = RawClient::open(server.addr, "/echo");
    client.send_frame(true, CLOSE, b"");
    assert_eq!(client.read_close().close_code(), None);
    // A one-byte payload cannot hold a code.
    let mut client = RawClient::open(server.addr, "/echo");
    client.send_frame(true, CLOSE, &[0x03]);
    assert_eq!(client.read_close().close_code(), Some(1002));
    // A reason that is not UTF-8.
    let mut client = RawClient::open(server.addr, "/echo");
    client.send_frame(true, CLOSE, &[0x03, 0xE8, 0xFF, 0xFE]);
    assert_eq!(client.read_close().close_code(), Some(1002));
    // A control frame's 125-byte limit applies to close too.
    let mut client = RawClient::open(server.addr, "/echo");
    let mut long = vec![0x03, 0xE8];
    long.extend([b'a'; 124]);
    client.send_frame(true, CLOSE, &long);
    assert_eq!(client.read_close().close_code(), Some(1002));
}

#[test]
fn protocol_violations_close_with_1002() {
    let server = TestServer::start();
    type Build = Box<dyn Fn(&mut RawClient) -> Vec<u8>>;
    let cases: Vec<(&str, Build)> = vec![
        (
            "RSV1 without an extension",
            Box::new(|c| {
                let mut f = c.frame_bytes(true, TEXT, b"x");
                f[0] |= 0x40;
                f
            }),
        ),
        ("opcode 3", Box::new(|c| c.frame_bytes(true, 3, b""))),
        ("opcode 0xB", Box::new(|c| c.frame_bytes(true, 0xB, b""))),
        ("unmasked frame", Box::new(|_| vec![0x81, 0x02, b'h', b'i'])),
        ("fragmented ping", Box::new(|c| c.frame_bytes(false, PING, b""))),
        ("continuation without a start", Box::new(|c| c.frame_bytes(true, CONTINUATION, b"x"))),
        (
            "new message inside a fragmented one",
            Box::new(|c| {
                let mut f = c.frame_bytes(false, TEXT, b"a");
                f.extend(c.frame_bytes(true, BINARY, b"b"));
                f
            }),
        ),
    ];
    for (name, build) in cases {
        let mut client = RawClient::open(server.addr, "/echo");
        let bytes = build(&mut client);
        client.send_raw(&bytes);
        assert_eq!(client.read_close().close_code(), Some(1002), "{name}");
        assert!(client.wait_eof(), "{name}: the server closes TCP");
    }
}

#[test]
fn invalid_utf8_in_the_middle_of_a_frame_fails_before_the_frame_ends() {
    let server = TestServer::start();
    let mut client = RawClient::open(server.addr, "/echo");
    // Declare 10,000 bytes; send only the first few, which hold an invalid sequence.
    let mut payload = b"hello ".to_vec();
    payload.extend([0xED, 0xA0, 0x80]); // a UTF-16 surrogate, not allowed in UTF-8
    payload.resize(10_000, b'x');
    let frame = client.frame_bytes(true, TEXT, &payload);
    client.send_raw(&frame[..8 + 12]);
    assert_eq!(client.read_close().close_code(), Some(1007));
}

#[test]
fn invalid_utf8_split_across_fragments_is_1007() {
    let server = TestServer::start();
    let mut client = RawClient::open(server.addr, "/echo");
    let euro = "€".as_bytes();
    client.send_frame(false, TEXT, &euro[..2]);
    client.send_frame(true, CONTINUATION, b"!");
    assert_eq!(client.read_close().close_code(), Some(1007));
    // While a character split across fragments is fine.
    let mut client = RawClient::open(server.addr, "/echo");
    client.send_frame(false, TEXT, &euro[..1]);
    client.send_frame(true, CONTINUATION, &euro[1..]);
    assert_eq!(client.read_frame(), Frame::text("€"));
}

#[test]
fn size_limits_at_their_edges() {
    let config = config(|c| {
        c.server.connection.max_frame_size = 1000;
        c.server.connection.max_message_size = 3000;
    });
    let server = TestServer::with_config(config);
    let mut client = RawClient::open(server.addr, "/echo");
    client.send_frame(true, BINARY, &[1; 1000]);
    assert_eq!(client.read_frame().payload.len(), 1000);
    client.send_frame(false, BINARY, &[1; 1000]);
    client.send_frame(false, CONTINUATION, &[2; 1000]);
    client.send_frame(true, CONTINUATION, &[3; 1000]);
    assert_eq!(client.read_frame().payload.len(), 3000);

    let mut client = RawClient::open(server.addr, "/echo");
    // Only the header of a frame one byte over the limit: refused before its payload.
    let frame = client.frame_bytes(true, BINARY, &[0; 1001]);
    client.send_raw(&frame[..8]);
    assert_eq!(client.read_close().close_code(), Some(1009));

    let mut client = RawClient::open(server.addr, "/echo");
    client.send_frame(false, BINARY, &[1; 1000]);
    client.send_frame(false, CONTINUATION, &[2; 1000]);
    client.send_frame(false, CONTINUATION, &[3; 1000]);
    client.send_frame(true, CONTINUATION, &[4; 1]);
    assert_eq!(client.read_close().close_code(), Some(1009));
}

#[test]
fn http_errors_have_their_statuses() {
    let server = TestServer::start();
    let request = |lines: &str| format!("{lines}\r\n\r\n").into_bytes();
    let good =
        "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    let cases = [
        (request(&format!("GET /echo HTTP/1.1\r\n{good}")), "400", "no version"),
        (request(&format!("GET /echo HTTP/1.1\r\n{good}\r\nSec-WebSocket-Version: 8")), "426", "version 8"),
        (request(&format!("POST /echo HTTP/1.1\r\n{good}\r\nSec-WebSocket-Version: 13")), "405", "POST"),
        (request(&format!("GET /nowhere HTTP/1.1\r\n{good}\r\nSec-WebSocket-Version: 13")), "404", "unknown path"),
        (request("GET /echo HTTP/1.1\r\nHost: 127.0.0.1"), "426", "plain HTTP to /echo"),
        (request("GET / HTTP/1.1\r\nHost: 127.0.0.1"), "200", "the page"),
        (b"GARBAGE\x00\x01\r\n\r\n".to_vec(), "400", "not HTTP"),
    ];
    for (bytes, status, name) in cases {
        let mut client = RawClient::connect(server.addr);
        client.send_raw(&bytes);
        let response = client.read_http_response();
        assert!(response.starts_with(&format!("HTTP/1.1 {status} ")), "{name}: {response}");
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{name}");
        if status == "200" {
            assert!(head.contains("Content-Type: text/html; charset=utf-8\r\n"), "{head}");
            assert!(body.contains("<script src=\"/chat.js\">"), "the chat page loads its script");
        }
        if status == "426" && name == "version 8" {
            assert!(head.contains("\r\nSec-WebSocket-Version: 13"), "{head}");
        }
    }
}

#[test]
fn an_oversized_request_head_is_431_at_the_edge() {
    let config = config(|c| {
        c.server.connection.max_handshake_bytes = 1024;
    });
    let server = TestServer::with_config(config);
    let base = upgrade_request("/echo");
    let pad_to = |total: usize| {
        let filler = total - base.len() - "X-Pad: \r\n".len();
        let mut req = base[..base.len() - 2].to_vec();
        req.extend(format!("X-Pad: {}\r\n\r\n", "a".repeat(filler)).into_bytes());
        assert_eq!(req.len(), total);
        req
    };
    let mut client = RawClient::connect(server.addr);
    client.send_raw(&pad_to(1024));
    assert!(client.read_http_head().starts_with("HTTP/1.1 101 "), "exactly at the limit");
    let mut client = RawClient::connect(server.addr);
    client.send_raw(&pad_to(1025));
    assert!(client.read_http_response().starts_with("HTTP/1.1 431 "), "one byte over");
}

#[test]
fn a_peer_that_resets_mid_frame_does_not_disturb_others() {
    let server = TestServer::start();
    let mut steady = RawClient::open(server.addr, "/echo");
    for round in 0..20 {
        let mut rude = RawClient::open(server.addr, "/echo");
        // A whole frame (whose echo we never read) and half of the next.
        let mut bytes = rude.frame_bytes(true, BINARY, &[7; 5000]);
        let next = rude.frame_bytes(true, BINARY, &[8; 5000]);
        bytes.extend_from_slice(&next[..2500]);
        rude.send_raw(&bytes);
        // Wait for the echo to land unread in our receive buffer, so that
        // closing the socket sends RST rather than FIN.
        let start = Instant::now();
        let mut peek = [0u8; 1];
        while rude.stream.peek(&mut peek).unwrap_or(0) == 0 && start.elapsed() < PATIENCE {}
        drop(rude);
        steady.send_text(&format!("still here {round}"));
        assert_eq!(steady.read_frame(), Frame::text(&format!("still here {round}")));
    }
    assert!(server.wait_for_connections(1, PATIENCE), "reset connections are removed");
}

#[test]
fn a_client_that_never_reads_is_held_back_not_buffered() {
    let config = config(|c| {
        c.server.connection.max_outgoing_bytes = 256 << 10;
    });
    let server = TestServer::with_config(config);
    let mut client = RawClient::open(server.addr, "/echo");
    let mut writer = client.stream.try_clone().unwrap();
    writer.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let frame = client.frame_bytes(true, BINARY, &[0x5A; 16 * 1024]);
    // Send without reading until the server stops taking our bytes.
    let (mut whole, mut partial) = (0usize, None);
    let limit = (512 << 20) / frame.len();
    while whole < limit {
        match writer.write(&frame) {
            Ok(n) if n == frame.len() => whole += 1,
            Ok(n) => {
                partial = Some(n); // a short write just before blocking
                break;
            }
            Err(_) => break, // blocked for 2 s: the server has stopped reading
        }
    }
    assert!(whole < limit, "the server kept reading: {whole} frames accepted without backpressure");
    // Now read: every echo arrives, whole and in order, and the flow resumes.
    let expected = whole + usize::from(partial.is_some());
    let reader = std::thread::spawn(move || {
        for _ in 0..expected {
            let f = client.read_frame();
            assert_eq!(f.payload.len(), 16 * 1024);
            assert!(f.payload.iter().all(|&b| b == 0x5A));
        }
        client
    });
    writer.set_write_timeout(None).unwrap();
    if let Some(n) = partial {
        writer.write_all(&frame[n..]).unwrap();
    }
    let mut client = reader.join().unwrap();
    client.send_text("done");
    assert_eq!(client.read_frame(), Frame::text("done"));
}

#[test]
fn a_hundred_abrupt_disconnects_then_normal_service() {
    let server = TestServer::start();
    for i in 0..100 {
        let mut client = RawClient::connect(server.addr);
        match i % 3 {
            0 => {}
            1 => client.send_raw(&upgrade_request("/echo")[..20]),
            _ => {
                client.send_raw(&upgrade_request("/echo"));
                let _ = client.read_http_head();
                let partial = client.frame_bytes(true, TEXT, b"cut short");
                client.send_raw(&partial[..5]);
            }
        }
        drop(client);
    }
    let mut client = RawClient::open(server.addr, "/echo");
    client.send_text("fine");
    assert_eq!(client.read_frame(), Frame::text("fine"));
    assert!(server.wait_for_connections(1, PATIENCE));
    let mut buf = [0u8; 1];
    client.stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    assert!(client.stream.read(&mut buf).is_err(), "nothing unexpected arrives");
}

#[test]
fn a_failed_connection_is_dropped_after_the_close_timeout_if_the_peer_stays() {
    let config = config(|c| {
        c.server.connection.close_timeout = Duration::from_millis(300);
    });
    let server = TestServer::with_config(config);
    let mut client = RawClient::open(server.addr, "/echo");
    client.send_frame(true, 3, b""); // a reserved opcode
    assert_eq!(client.read_close().close_code(), Some(1002));
    // We neither answer nor close TCP: the server waits its close timeout, then drops us.
    assert!(server.wait_for_connections(0, PATIENCE));
}

#[test]
fn a_flooding_client_does_not_starve_the_others() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let server = TestServer::start();
    let mut flooder = RawClient::open(server.addr, "/echo");
    // Empty pongs: cheap to send, never answered, and never a reason to stop reading.
    let mut burst = Vec::new();
    for _ in 0..10_000 {
        burst.extend(flooder.frame_bytes(true, PONG, b""));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = Arc::clone(&stop);
        let mut stream = flooder.stream.try_clone().unwrap();
        std::thread::spawn(move || {
            // Bounded: at most 2 GiB or 30 s, whichever comes first.
            let (start, mut sent) = (Instant::now(), 0usize);
            while !stop.load(Ordering::Relaxed) && sent < (2 << 30) && start.elapsed() < Duration::from_secs(30) {
                stream.write_all(&burst).unwrap();
                sent += burst.len();
            }
            !stop.load(Ordering::Relaxed) // true: it ran out before the others were served
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let mut steady = RawClient::open(server.addr, "/echo");
    for i in 0..20 {
        steady.send_text(&format!("turn {i}"));
        assert_eq!(steady.read_frame(), Frame::text(&format!("turn {i}")));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(!flood.join().unwrap(), "the steady client was served only after the flood ended");
    drop(flooder);
}
