//! Timeouts, keepalive, limits, signals and hostile clients, with short
//! timeouts configured so that each test takes seconds.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_handshake_that_never_comes_gets_408() {
    let server = TestServer::with_config(config(|c| {
        c.server.connection.handshake_timeout = ms(300);
    }));
    let start = Instant::now();
    let mut client = RawClient::connect(server.addr);
    let response = client.read_http_response();
    let waited = start.elapsed();
    assert!(response.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{response}");
    assert!(waited >= ms(250) && waited < ms(5000), "{waited:?}");
    assert!(server.wait_for_connections(0, PATIENCE));
}

#[test]
fn a_trickled_handshake_does_not_extend_the_deadline() {
    let server = TestServer::with_config(config(|c| {
        c.server.connection.handshake_timeout = ms(400);
    }));
    let start = Instant::now();
    let mut client = RawClient::connect(server.addr);
    let mut writer = client.stream.try_clone().unwrap();
    // A byte every 20 ms, never finishing (slowloris): 2 s of it if allowed.
    let trickle = std::thread::spawn(move || {
        for byte in b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().chain([b'a'; 100].iter()) {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(ms(20));
        }
    });
    let response = client.read_http_response();
    let waited = start.elapsed();
    assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
    assert!(waited >= ms(350) && waited < ms(1500), "the trickle kept it alive: {waited:?}");
    trickle.join().unwrap();
}

#[test]
fn a_quiet_connection_is_pinged_and_closed_with_1001_if_it_stays_silent() {
    let config = config(|c| {
        c.server.connection.ping_interval = ms(200);
        c.server.connection.idle_timeout = ms(600);
    });
    let server = TestServer::with_config(config);
    let start = Instant::now();
    let mut silent = RawClient::open(server.addr, "/echo");
    let ping = silent.read_frame();
    assert_eq!(ping.opcode, PING);
    assert!(start.elapsed() >= ms(150), "pinged too early: {:?}", start.elapsed());
    let close = silent.read_frame();
    assert_eq!(close.close_code(), Some(1001));
    assert_eq!(&close.payload[2..], b"idle timeout");
    assert!(start.elapsed() >= ms(550), "closed too early: {:?}", start.elapsed());
    assert!(silent.wait_eof());
}

#[test]
fn a_connection_that_answers_pings_stays() {
    let config = config(|c| {
        c.server.connection.ping_interval = ms(100);
        c.server.connection.idle_timeout = ms(300);
    });
    let server = TestServer::with_config(config);
    let mut alive = RawClient::open(server.addr, "/echo");
    let start = Instant::now();
    let mut pings = 0;
    // Well past the idle timeout, answering every ping.
    while start.elapsed() < ms(1200) {
        let frame = alive.read_frame();
        assert_eq!(frame.opcode, PING, "{frame:?}");
        alive.send_frame(true, PONG, &frame.payload);
        pings += 1;
    }
    assert!(pings >= 5, "{pings} pings");
    alive.send_text("still here");
    // Pings may cross the echo; skip them.
    let echo = loop {
        let frame = alive.read_frame();
        if frame.opcode != PING {
            break frame;
        }
    };
    assert_eq!(echo, Frame::text("still here"));
}

/// An upgrade request that the server turns away: its 503 response.
fn refused_upgrade(addr: std::net::SocketAddr) -> String {
    let mut extra = RawClient::connect(addr);
    extra.send_raw(&upgrade_request("/echo"));
    let response = extra.read_http_response();
    assert!(response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{response}");
    response
}

/// `leaving` closes; once the server is down to `left` connections, a new one is served.
fn leave_then_enter(server: &TestServer, mut leaving: RawClient, left: usize) {
    leaving.send_close(1000, "");
    leaving.read_close();
    assert!(leaving.wait_eof());
    assert!(server.wait_for_connections(left, PATIENCE));
    let mut next = RawClient::open(server.addr, "/echo");
    next.send_text("in");
    assert_eq!(next.read_frame(), Frame::text("in"));
}

#[test]
fn above_the_connection_limit_new_clients_get_503_and_retry_after() {
    let server = TestServer::with_config(config(|c| {
        c.server.max_connections = 3;
    }));
    let mut held: Vec<RawClient> = (0..3).map(|_| RawClient::open(server.addr, "/echo")).collect();
    let response = refused_upgrade(server.addr);
    assert!(response.contains("\r\nRetry-After: 5\r\n"), "{response}");
    // The three already in are served as before.
    held[0].send_text("fine");
    assert_eq!(held[0].read_frame(), Frame::text("fine"));
    // When one leaves, there is room again.
    leave_then_enter(&server, held.pop().unwrap(), 2);
}

/// A connection to `addr` from the local address `from` (any of 127.0.0.0/8 on loopback).
fn connect_from(from: &str, addr: std::net::SocketAddr) -> RawClient {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&format!("{from}:0").parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    RawClient::from_stream(socket.into())
}

#[test]
fn above_the_per_address_limit_that_address_gets_503_and_others_do_not() {
    let server = TestServer::with_config(config(|c| {
        c.server.max_connections_per_ip = 2;
    }));
    let mut held: Vec<RawClient> = (0..2).map(|_| RawClient::open(server.addr, "/echo")).collect();
    let response = refused_upgrade(server.addr);
    assert!(response.contains("from your address"), "{response}");
    // Another address is let in.
    let mut other = connect_from("127.0.0.2", server.addr);
    other.send_raw(&upgrade_request("/echo"));
    assert!(other.read_http_head().starts_with("HTTP/1.1 101 "));
    // When one of the first address's leaves, that address may connect again.
    leave_then_enter(&server, held.pop().unwrap(), 2);
}

#[test]
fn slow_handshakes_make_room_for_real_clients() {
    let server = TestServer::with_config(config(|c| {
        c.server.max_pending_handshakes = 3;
    }));
    let mut idle: Vec<RawClient> = (0..3).map(|_| RawClient::connect(server.addr)).collect();
    for client in &mut idle {
        client.send_raw(b"GET / HTTP/1.1\r\n"); // and nothing more
    }
    assert!(server.wait_for_connections(3, PATIENCE));
    let mut real = RawClient::open(server.addr, "/echo");
    real.send_text("made it");
    assert_eq!(real.read_frame(), Frame::text("made it"));
    // The oldest slow one was told to go away.
    assert!(idle[0].read_http_response().starts_with("HTTP/1.1 503 "));
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0_after_they_answer() {
    let mut server = Spawned::start(&["--drain-timeout", "5s"]);
    let mut echo = RawClient::open(server.addr, "/echo");
    let (mut chat, _) = ChatClient::join(server.addr, "");
    let (mut chat2, _) = ChatClient::join(server.addr, "");
    chat.expect("join");
    let start = Instant::now();
    server.signal("TERM");
    for raw in [&mut echo, &mut chat.raw, &mut chat2.raw] {
        let close = raw.read_close();
        assert_eq!(close.close_code(), Some(1001));
        assert_eq!(&close.payload[2..], b"server shutting down");
        raw.send_close(1001, "");
        assert!(raw.wait_eof(), "the server closes TCP after the handshake");
        raw.shutdown_write(); // and so do we, as a browser would
    }
    assert_eq!(server.wait_exit(ms(5000)), Some(0), "exit 0");
    assert!(start.elapsed() < ms(4000), "no need to wait for the drain timeout: {:?}", start.elapsed());
    // New connections are refused once the shutdown began.
    assert!(TcpStream::connect(server.addr).is_err());
    let log = server.log();
    assert!(log.contains("shutting down") && log.contains("shutdown complete"), "{log}");
}

#[test]
fn the_drain_timeout_bounds_the_wait_for_clients_that_never_answer() {
    let mut server = Spawned::start(&["--drain-timeout", "700ms"]);
    let mut mute = RawClient::open(server.addr, "/echo");
    let start = Instant::now();
    server.signal("INT");
    assert_eq!(mute.read_close().close_code(), Some(1001));
    // We never answer: the server exits anyway, with 0, after the drain timeout.
    assert_eq!(server.wait_exit(ms(5000)), Some(0));
    let waited = start.elapsed();
    assert!(waited >= ms(600) && waited < ms(3000), "{waited:?}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = Spawned::start(&["--drain-timeout", "60s"]);
    let mut mute = RawClient::open(server.addr, "/echo");
    server.signal("TERM");
    assert_eq!(mute.read_close().close_code(), Some(1001));
    let start = Instant::now();
    server.signal("TERM");
    assert_eq!(server.wait_exit(ms(5000)), Some(1), "a forced exit is not a clean one");
    assert!(start.elapsed() < ms(2000));
}

#[test]
fn five_hundred_abrupt_disconnects_then_normal_service() {
    let server = TestServer::start();
    let mut steady = RawClient::open(server.addr, "/echo");
    for i in 0..500 {
        let mut client = RawClient::connect(server.addr);
        match i % 4 {
            0 => {}                                                // connect and vanish
            1 => client.send_raw(&upgrade_request("/echo")[..30]), // half a request
            2 => {
                // Upgraded, then half a frame.
                client.send_raw(&upgrade_request("/echo"));
                let _ = client.read_http_head();
                let frame = client.frame_bytes(true, BINARY, &[1; 1000]);
                client.send_raw(&frame[..500]);
            }
            _ => {
                // Upgraded with an echo left unread, so closing sends RST.
                client.send_raw(&upgrade_request("/echo"));
                let _ = client.read_http_head();
                client.send_text("unread");
                let mut peek = [0u8; 1];
                let start = Instant::now();
                while client.stream.peek(&mut peek).unwrap_or(0) == 0 && start.elapsed() < PATIENCE {}
            }
        }
        drop(client);
    }
    steady.send_text("after the storm");
    assert_eq!(steady.read_frame(), Frame::text("after the storm"));
    assert!(server.wait_for_connections(1, PATIENCE), "every abrupt connection was cleaned up");
    let mut fresh = RawClient::open(server.addr, "/echo");
    fresh.send_text("new");
    assert_eq!(fresh.read_frame(), Frame::text("new"));
}

#[test]
fn running_out_of_file_descriptors_pauses_accepting_and_recovers() {
    // 40 descriptors: a handful for the process itself, the rest for clients.
    let server = Spawned::start_limited(Some(40), &["--max-connections", "1000"]);
    let mut first = RawClient::open(server.addr, "/echo");
    // More connections than the server can hold: the kernel completes them
    // (the backlog), the server cannot accept them all.
    let crowd: Vec<TcpStream> = (0..80).filter_map(|_| TcpStream::connect(server.addr).ok()).collect();
    std::thread::sleep(ms(300));
    first.send_text("served while starved");
    assert_eq!(first.read_frame(), Frame::text("served while starved"));
    drop(crowd);
    // Once descriptors are free again, new clients get in.
    let start = Instant::now();
    let mut late = loop {
        let mut client = RawClient::connect(server.addr);
        client.stream.set_read_timeout(Some(ms(500))).unwrap();
        client.send_raw(&upgrade_request("/echo"));
        let mut head = [0u8; 12];
        if client.stream.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 101" {
            let _ = client.read_http_head();
            break client;
        }
        assert!(start.elapsed() < PATIENCE, "accepting never resumed");
    };
    late.stream.set_read_timeout(Some(PATIENCE)).unwrap();
    late.send_text("back");
    assert_eq!(late.read_frame(), Frame::text("back"));
    let log = server.log();
    let warnings = log.lines().filter(|l| l.contains("pausing accepts")).count();
    assert!((1..=3).contains(&warnings), "logged once per burst, not per attempt: {warnings}\n{log}");
}

#[test]
fn five_thousand_slowloris_connections_do_not_keep_a_real_client_out() {
    let server = Spawned::start(&["--handshake-timeout", "3s"]);
    let start = Instant::now();
    let mut slow: Vec<TcpStream> = Vec::with_capacity(5000);
    for _ in 0..5000 {
        match TcpStream::connect(server.addr) {
            Ok(mut stream) => {
                let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ");
                slow.push(stream);
            }
            Err(err) => panic!("connect {}: {err}", slow.len()),
        }
    }
    // Keep them trickling while a real client joins and chats.
    for stream in slow.iter_mut().step_by(7) {
        let _ = stream.write_all(b"a");
    }
    let (mut alice, _) = ChatClient::join(server.addr, "nick=alice");
    let (mut bob, _) = ChatClient::join(server.addr, "nick=bob");
    alice.expect("join");
    alice.say("hello through the storm");
    assert_eq!(bob.expect("message")["text"], json!("hello through the storm"));
    assert_eq!(alice.expect("message")["text"], json!("hello through the storm"));
    eprintln!("5,000 slowloris connections; chat worked after {:?}", start.elapsed());
    drop(slow);
}

#[test]
fn a_close_the_server_starts_gives_up_after_the_close_timeout() {
    // The drain would wait a minute; the close timeout drops the mute client first.
    let mut server = Spawned::start(&["--drain-timeout", "60s", "--close-timeout", "500ms"]);
    let mut mute = RawClient::open(server.addr, "/echo");
    let start = Instant::now();
    server.signal("TERM");
    assert_eq!(mute.read_close().close_code(), Some(1001));
    // No Close from us: the connection is dropped after 500 ms, and with it gone the server is done.
    assert!(mute.wait_eof());
    assert_eq!(server.wait_exit(ms(5000)), Some(0));
    let waited = start.elapsed();
    assert!(waited >= ms(450) && waited < ms(3000), "{waited:?}");
}

#[test]
fn past_the_bound_on_input_in_progress_the_newest_large_message_gets_1013() {
    // Room for two 1.5 MiB messages arriving at once, not three.
    let server = TestServer::with_config(config(|c| {
        c.server.connection.max_message_size = 2 << 20;
        c.server.connection.max_frame_size = 2 << 20;
        c.server.max_buffered_bytes = 4 << 20;
    }));
    let len = 3 << 19;
    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut senders: Vec<(RawClient, Vec<u8>)> = (0..3)
        .map(|_| {
            let mut client = RawClient::open(server.addr, "/echo");
            let frame = client.frame_bytes(true, BINARY, &payload);
            (client, frame)
        })
        .collect();
    // Each sends the start of its message, one after the other.
    for (client, frame) in senders.iter_mut() {
        client.send_raw(&frame[..64 << 10]);
        std::thread::sleep(ms(100));
    }
    let (third, _) = &mut senders[2];
    let close = third.read_close();
    assert_eq!(close.close_code(), Some(1013), "{close:?}");
    // The first two were accepted before the bound: their messages arrive whole.
    for (client, frame) in senders.iter_mut().take(2) {
        client.send_raw(&frame[64 << 10..]);
        let echoed = client.read_frame();
        assert_eq!(echoed.payload, payload);
    }
    // With those done, the room is back: a new large message passes.
    let mut later = RawClient::open(server.addr, "/echo");
    let frame = later.frame_bytes(true, BINARY, &payload);
    later.send_raw(&frame[..64 << 10]);
    std::thread::sleep(ms(50));
    later.send_raw(&frame[64 << 10..]);
    assert_eq!(later.read_frame().payload, payload);
}
