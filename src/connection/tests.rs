use super::input::MAX_UNIT;
use super::*;
use crate::protocol::deflate::SharedDeflaters;
use crate::protocol::frame::{self, DecodeRules, FrameHeader, WebSocketFrame};
use crate::protocol::handshake::Request;
use crate::protocol::message::Message;
use std::time::Duration;

type Config = ConnectionConfig;

/// The routes of the binary (`/echo`, and `/` with its page), answering
/// every message with itself: enough of an application to drive the
/// connection through every state.
#[derive(Default)]
struct Echo {
    shared: SharedDeflaters,
    opened: usize,
}

impl Handler for Echo {
    fn route(&mut self, request: &Request<'_, '_>) -> Route {
        match request.path() {
            "/" if !request.is_upgrade() => Route::Respond(HttpResponse::ok("text/html", &b"<p>page</p>"[..])),
            "/" | "/echo" => Route::Upgrade,
            _ => Route::NotFound,
        }
    }

    fn on_open(&mut self, _: &mut Reply<'_>) {
        self.opened += 1;
    }

    fn on_message(&mut self, message: Message<'_>, reply: &mut Reply<'_>) {
        reply.send(message.opcode(), message.as_bytes(), &mut self.shared);
    }
}

const REQUEST: &[u8] = b"GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn masked(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let header =
        FrameHeader { fin, mask: Some([0x37, 0xfa, 0x21, 0x3d]), ..FrameHeader::new(opcode, payload.len() as u64) };
    let mut out = Vec::new();
    WebSocketFrame { header, payload: payload.to_vec() }.encode(&mut out);
    out
}

/// Drains the client's outgoing queue and decodes it: the HTTP head (if any) and frames.
fn take_output(client: &mut WebSocketClient) -> (String, Vec<WebSocketFrame>) {
    let mut bytes = Vec::new();
    client.write_to(&mut bytes).unwrap();
    let mut head = String::new();
    if bytes.starts_with(b"HTTP/1.1") {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        // After a refusal the rest is the response body, not frames.
        let end = if bytes.starts_with(b"HTTP/1.1 101 ") { end } else { bytes.len() };
        head = String::from_utf8(bytes[..end].to_vec()).unwrap();
        bytes.drain(..end);
    }
    let mut frames = Vec::new();
    while let Some(frame) = frame::decode(&mut bytes, &DecodeRules::client(u64::MAX)).unwrap() {
        frames.push(frame);
    }
    assert!(bytes.is_empty(), "trailing bytes: {bytes:?}");
    (head, frames)
}

fn connected(config: &Config, now: Instant) -> WebSocketClient {
    let mut client = WebSocketClient::new(now, config);
    client.handle_input(&mut REQUEST.to_vec(), now, config, &mut Echo::default());
    let (head, frames) = take_output(&mut client);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(frames.is_empty());
    assert_eq!(client.state(), &ClientState::Connected { over_cap_since: None, paused_until: None });
    client
}

fn feed(client: &mut WebSocketClient, bytes: &[u8], now: Instant, config: &Config) {
    client.handle_input(&mut bytes.to_vec(), now, config, &mut Echo::default());
}

fn close_code_of(frame: &WebSocketFrame) -> Option<u16> {
    assert_eq!(frame.header.opcode, OpCode::Close);
    frame.payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

#[test]
fn handshake_and_first_frame_in_one_read() {
    let config = Config::default();
    let now = Instant::now();
    let mut client = WebSocketClient::new(now, &config);
    let mut input = REQUEST.to_vec();
    input.extend(masked(OpCode::Text, true, b"first"));
    client.handle_input(&mut input, now, &config, &mut Echo::default());
    assert!(matches!(client.state(), ClientState::HandshakeResponse { .. }));
    let (head, frames) = take_output(&mut client);
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_eq!(frames, vec![WebSocketFrame::new(OpCode::Text, "first")]);
    assert_eq!(client.state(), &ClientState::Connected { over_cap_since: None, paused_until: None });
}

#[test]
fn handshake_and_frames_split_at_every_byte_echo_the_same() {
    let config = Config::default();
    let now = Instant::now();
    let mut stream = REQUEST.to_vec();
    stream.extend(masked(OpCode::Text, false, "κό".as_bytes()));
    stream.extend(masked(OpCode::Ping, true, b"p"));
    stream.extend(masked(OpCode::Continuation, true, "σμε".as_bytes()));
    stream.extend(masked(OpCode::Binary, true, &[7; 300]));
    stream.extend(masked(OpCode::Text, true, b""));
    let expected = vec![
        WebSocketFrame::new(OpCode::Pong, "p"),
        WebSocketFrame::new(OpCode::Text, "κόσμε"),
        WebSocketFrame::new(OpCode::Binary, vec![7; 300]),
        WebSocketFrame::new(OpCode::Text, ""),
    ];
    for size in 1..=stream.len() {
        let mut client = WebSocketClient::new(now, &config);
        for chunk in stream.chunks(size) {
            feed(&mut client, chunk, now, &config);
        }
        let (head, frames) = take_output(&mut client);
        assert!(head.starts_with("HTTP/1.1 101 "), "size {size}");
        assert_eq!(frames, expected, "size {size}");
        assert!(client.reader.leftover.len() <= MAX_UNIT);
    }
    // And cut at every single point into two reads.
    for cut in 0..stream.len() {
        let mut client = WebSocketClient::new(now, &config);
        feed(&mut client, &stream[..cut], now, &config);
        feed(&mut client, &stream[cut..], now, &config);
        assert_eq!(take_output(&mut client).1, expected, "cut {cut}");
    }
}

#[test]
fn refused_requests_get_their_status_and_close() {
    let config = Config::default();
    let now = Instant::now();
    let cases: [(&[u8], &str); 5] = [
        (b"POST /echo HTTP/1.1\r\nHost: a\r\n\r\n", "405"),
        (b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n", "404"),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n", "426"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "200"),
        (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", "400"),
    ];
    for (request, status) in cases {
        let mut client = WebSocketClient::new(now, &config);
        feed(&mut client, request, now, &config);
        assert_eq!(client.state(), &ClientState::Closed { deadline: now + config.close_timeout });
        let (head, _) = take_output(&mut client);
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        assert!(client.is_done_writing());
        assert_eq!(client.poll_timeout(&config), Some(now + config.close_timeout));
    }
    // A head that never ends: 431 once it reaches the limit.
    let mut client = WebSocketClient::new(now, &config);
    feed(&mut client, b"GET / HTTP/1.1\r\nX: ", now, &config);
    for _ in 0..config.max_handshake_bytes {
        feed(&mut client, b"a", now, &config);
    }
    assert!(take_output(&mut client).0.starts_with("HTTP/1.1 431 "));
}

#[test]
fn close_handshake_echoes_the_code_then_closes() {
    let config = Config::default();
    let now = Instant::now();
    let mut client = connected(&config, now);
    feed(&mut client, &masked(OpCode::Close, true, b"\x03\xe8bye"), now, &config);
    let (_, frames) = take_output(&mut client);
    assert_eq!(frames.len(), 1);
    assert_eq!(close_code_of(&frames[0]), Some(1000));
    assert!(client.is_done_writing());
    assert_eq!(client.close_info(), Some(&CloseInfo::Handshake(Some(1000))));
    // Anything after the close is ignored.
    feed(&mut client, &masked(OpCode::Text, true, b"late"), now, &config);
    assert!(take_output(&mut client).1.is_empty());
}

#[test]
fn an_empty_close_is_answered_with_an_empty_close() {
    let config = Config::default();
    let now = Instant::now();
    let mut client = connected(&config, now);
    feed(&mut client, &masked(OpCode::Close, true, b""), now, &config);
    let (_, frames) = take_output(&mut client);
    assert_eq!(frames, vec![WebSocketFrame::new(OpCode::Close, Vec::new())]);
}

#[test]
fn every_close_payload_rule() {
    let config = Config::default();
    let now = Instant::now();
    let mut cases: Vec<(Vec<u8>, Option<u16>)> = vec![
        (vec![0x03], Some(1002)),
        (b"\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80".to_vec(), Some(1002)),
    ];
    for code in [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999] {
        cases.push((code.to_be_bytes().to_vec(), Some(code)));
    }
    for code in [0u16, 999, 1004, 1005, 1006, 1012, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        cases.push((code.to_be_bytes().to_vec(), Some(1002)));
    }
    for (payload, answer) in cases {
        let mut client = connected(&config, now);
        feed(&mut client, &masked(OpCode::Close, true, &payload), now, &config);
        let (_, frames) = take_output(&mut client);
        assert_eq!(frames.len(), 1, "{payload:?}");
        assert_eq!(close_code_of(&frames[0]), answer, "{payload:?}");
    }
}

#[test]
fn protocol_errors_close_with_their_codes() {
    let config = Config { max_message_size: 1000, max_frame_size: 500, ..Config::default() };
    let now = Instant::now();
    let mut rsv = masked(OpCode::Text, true, b"x");
    rsv[0] |= 0x40;
    let mut unmasked = Vec::new();
    frame::encode(&mut unmasked, OpCode::Text, b"x");
    let mut too_long_ping = masked(OpCode::Ping, true, &[0; 126]);
    too_long_ping.truncate(4);
    let mut opcode3 = masked(OpCode::Text, true, b"");
    opcode3[0] = 0x83;
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (rsv, 1002),
        (opcode3, 1002),
        (unmasked, 1002),
        (masked(OpCode::Ping, false, b""), 1002),
        (too_long_ping, 1002),
        (masked(OpCode::Continuation, true, b"x"), 1002),
        ([masked(OpCode::Text, false, b"a"), masked(OpCode::Text, true, b"b")].concat(), 1002),
        (masked(OpCode::Text, true, &[0xC0, 0xAF]), 1007),
        (
            [masked(OpCode::Text, false, "€".as_bytes().get(..1).unwrap()), masked(OpCode::Continuation, true, b"x")]
                .concat(),
            1007,
        ),
        (masked(OpCode::Binary, true, &[0; 501]), 1009),
        (
            [
                masked(OpCode::Binary, false, &[0; 500]),
                masked(OpCode::Continuation, false, &[0; 500]),
                masked(OpCode::Continuation, true, &[0; 1]),
            ]
            .concat(),
            1009,
        ),
    ];
    for (bytes, code) in cases {
        let mut client = connected(&config, now);
        feed(&mut client, &bytes, now, &config);
        let (_, frames) = take_output(&mut client);
        let last = frames.last().unwrap();
        assert_eq!(close_code_of(last), Some(code), "{bytes:02x?}");
        assert_eq!(client.state(), &ClientState::Closed { deadline: now + config.close_timeout });
        assert!(matches!(client.close_info(), Some(CloseInfo::Failed(c, _)) if *c == code));
    }
    // At the edge: exactly the limits pass.
    let mut client = connected(&config, now);
    feed(&mut client, &masked(OpCode::Binary, true, &[1; 500]), now, &config);
    feed(
        &mut client,
        &[masked(OpCode::Binary, false, &[2; 500]), masked(OpCode::Continuation, true, &[3; 500])].concat(),
        now,
        &config,
    );
    let (_, frames) = take_output(&mut client);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1].payload.len(), 1000);
    assert_eq!(client.state(), &ClientState::Connected { over_cap_since: None, paused_until: None });
}

#[test]
fn invalid_utf8_fails_before_the_rest_of_the_frame_arrives() {
    let config = Config::default();
    let now = Instant::now();
    let mut client = connected(&config, now);
    let mut payload = b"hello ".to_vec();
    payload.extend_from_slice(&[0xF4, 0x90, 0x80, 0x80]); // above U+10FFFF
    payload.extend_from_slice(&[b'x'; 10_000]);
    let wire = masked(OpCode::Text, true, &payload);
    // Only the header and the first 8 payload bytes arrive.
    feed(&mut client, &wire[..4 + 4 + 8], now, &config);
    let (_, frames) = take_output(&mut client);
    assert_eq!(close_code_of(&frames[0]), Some(1007));
}

#[test]
fn a_close_we_start_waits_for_the_peer_then_times_out() {
    let config = Config { close_timeout: Duration::from_secs(5), ..Config::default() };
    let t0 = Instant::now();
    let mut client = connected(&config, t0);
    client.close(1001, "going away", t0, &config);
    assert_eq!(client.state(), &ClientState::Closing { deadline: t0 + Duration::from_secs(5) });
    let (_, frames) = take_output(&mut client);
    assert_eq!(close_code_of(&frames[0]), Some(1001));
    // Messages still arriving are read past; pings are not answered.
    feed(&mut client, &masked(OpCode::Text, true, b"in flight"), t0, &config);
    feed(&mut client, &masked(OpCode::Ping, true, b""), t0, &config);
    assert!(take_output(&mut client).1.is_empty());
    assert_eq!(client.poll_timeout(&config), Some(t0 + Duration::from_secs(5)));
    assert_eq!(client.handle_timeout(t0 + Duration::from_millis(4999), &config), TimerAction::Continue);
    assert_eq!(client.handle_timeout(t0 + Duration::from_secs(5), &config), TimerAction::Drop);
    // The peer's Close completes the handshake without a second Close from us.
    feed(&mut client, &masked(OpCode::Close, true, b"\x03\xe9"), t0, &config);
    assert!(take_output(&mut client).1.is_empty());
    assert!(client.is_done_writing());
}

#[test]
fn backpressure_stops_reading_while_replies_pile_up() {
    let config = Config { max_outgoing_bytes: 1000, ..Config::default() };
    let now = Instant::now();
    let mut client = connected(&config, now);
    feed(&mut client, &masked(OpCode::Binary, true, &[0; 990]), now, &config);
    assert!(client.wants_read(&config));
    feed(&mut client, &masked(OpCode::Binary, true, &[0; 10]), now, &config);
    assert!(!client.wants_read(&config));
    take_output(&mut client);
    assert!(client.wants_read(&config));
}

#[test]
fn a_handshake_that_takes_too_long_gets_408_however_it_trickles() {
    let config = Config { handshake_timeout: Duration::from_secs(10), ..Config::default() };
    let t0 = Instant::now();
    let mut client = WebSocketClient::new(t0, &config);
    // A byte a second keeps arriving: the deadline stays where it was.
    for (i, byte) in REQUEST[..REQUEST.len() - 1].iter().take(12).enumerate() {
        feed(&mut client, &[*byte], t0 + Duration::from_secs(i as u64), &config);
        assert_eq!(client.poll_timeout(&config), Some(t0 + Duration::from_secs(10)));
    }
    assert_eq!(client.handle_timeout(t0 + Duration::from_millis(9999), &config), TimerAction::Continue);
    assert!(!client.wants_write());
    assert_eq!(client.handle_timeout(t0 + Duration::from_secs(10), &config), TimerAction::Continue);
    assert!(take_output(&mut client).0.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
    assert_eq!(client.close_info(), Some(&CloseInfo::Http(408)));
    assert_eq!(client.handle_timeout(t0 + Duration::from_secs(15), &config), TimerAction::Drop);
}

#[test]
fn a_quiet_connection_is_pinged_then_closed_when_it_stays_silent() {
    let config =
        Config { ping_interval: Duration::from_secs(60), idle_timeout: Duration::from_secs(120), ..Config::default() };
    let t0 = Instant::now();
    let mut client = connected(&config, t0);
    assert_eq!(client.poll_timeout(&config), Some(t0 + Duration::from_secs(60)));
    client.handle_timeout(t0 + Duration::from_secs(60), &config);
    assert_eq!(take_output(&mut client).1, vec![WebSocketFrame::new(OpCode::Ping, Vec::new())]);
    // One ping per quiet spell.
    assert_eq!(client.poll_timeout(&config), Some(t0 + Duration::from_secs(120)));
    client.handle_timeout(t0 + Duration::from_secs(90), &config);
    assert!(take_output(&mut client).1.is_empty());
    // A pong is life: the clocks start again from it.
    let t1 = t0 + Duration::from_secs(100);
    feed(&mut client, &masked(OpCode::Pong, true, b""), t1, &config);
    assert_eq!(client.poll_timeout(&config), Some(t1 + Duration::from_secs(60)));
    client.handle_timeout(t1 + Duration::from_secs(60), &config);
    assert_eq!(take_output(&mut client).1[0].header.opcode, OpCode::Ping);
    // Silence after that ping: closed with 1001.
    client.handle_timeout(t1 + Duration::from_secs(120), &config);
    let (_, frames) = take_output(&mut client);
    assert_eq!(close_code_of(&frames[0]), Some(1001));
    assert_eq!(client.state(), &ClientState::Closed { deadline: t1 + Duration::from_secs(120) + config.close_timeout });
}

#[test]
fn keepalive_can_be_turned_off() {
    let config = Config { ping_interval: Duration::ZERO, idle_timeout: Duration::ZERO, ..Config::default() };
    let t0 = Instant::now();
    let client = connected(&config, t0);
    assert_eq!(client.poll_timeout(&config), None);
}

#[test]
fn eof_without_close_is_abrupt() {
    let config = Config::default();
    let now = Instant::now();
    let mut client = connected(&config, now);
    client.handle_eof(now, &config);
    assert_eq!(client.close_info(), Some(&CloseInfo::Abrupt));
    assert!(client.is_done_writing());
}

/// Echo, with a limit of its own on messages (what it was told of
/// over-long ones), and a pause it asks for after every message.
#[derive(Default)]
struct Limited {
    echo: Echo,
    limit: usize,
    too_long: usize,
    pause_until: Option<Instant>,
}

impl Handler for Limited {
    fn route(&mut self, request: &Request<'_, '_>) -> Route {
        self.echo.route(request)
    }
    fn on_open(&mut self, reply: &mut Reply<'_>) {
        self.echo.on_open(reply);
    }
    fn on_message(&mut self, message: Message<'_>, reply: &mut Reply<'_>) {
        self.echo.on_message(message, reply);
        if let Some(until) = self.pause_until {
            reply.pause_reading_until(until);
        }
    }
    fn message_limit(&mut self) -> usize {
        self.limit
    }
    fn on_message_too_long(&mut self, reply: &mut Reply<'_>) {
        self.too_long += 1;
        reply.send(OpCode::Text, b"too long", &mut self.echo.shared);
    }
}

#[test]
fn a_message_over_the_receivers_limit_is_read_past_unkept_and_the_connection_stays() {
    let config = Config::default();
    let now = Instant::now();
    let mut handler = Limited { limit: 100, ..Limited::default() };
    let mut client = WebSocketClient::new(now, &config);
    client.handle_input(&mut REQUEST.to_vec(), now, &config, &mut handler);
    take_output(&mut client);
    // Exactly at the limit: echoed.
    client.handle_input(&mut masked(OpCode::Binary, true, &[1; 100]), now, &config, &mut handler);
    assert_eq!(take_output(&mut client).1, vec![WebSocketFrame::new(OpCode::Binary, vec![1; 100])]);
    // A 1 MiB text frame trickled in 1,000-byte pieces: nothing of it is held.
    let big = masked(OpCode::Text, true, &[b'x'; 1 << 20]);
    for piece in big.chunks(1000) {
        client.handle_input(&mut piece.to_vec(), now, &config, &mut handler);
        assert_eq!(client.reader.reassembled(), 0);
        assert!(client.reader.leftover.len() <= MAX_UNIT);
    }
    assert_eq!(handler.too_long, 1);
    // Fragmented, over the limit in its second fragment; a Ping in between is still answered.
    let stream = [
        masked(OpCode::Text, false, &[b'a'; 60]),
        masked(OpCode::Ping, true, b"p"),
        masked(OpCode::Continuation, true, &[b'b'; 60]),
        masked(OpCode::Text, true, b"after"),
    ]
    .concat();
    client.handle_input(&mut stream.clone(), now, &config, &mut handler);
    let (_, frames) = take_output(&mut client);
    let expected = [
        WebSocketFrame::new(OpCode::Text, "too long"),
        WebSocketFrame::new(OpCode::Pong, "p"),
        WebSocketFrame::new(OpCode::Text, "too long"),
        WebSocketFrame::new(OpCode::Text, "after"),
    ];
    assert_eq!(frames, expected);
    assert_eq!(client.state(), &ClientState::Connected { over_cap_since: None, paused_until: None });
    // Read past, but still checked: invalid UTF-8 in an over-long text fails the connection.
    let mut bad = vec![b'x'; 200];
    bad[150] = 0xFF;
    client.handle_input(&mut masked(OpCode::Text, true, &bad), now, &config, &mut handler);
    assert_eq!(close_code_of(take_output(&mut client).1.last().unwrap()), Some(1007));
}

#[test]
fn a_compressed_message_is_held_to_the_receivers_limit_by_what_it_inflates_to() {
    let config = Config::default();
    let now = Instant::now();
    let mut handler = Limited { limit: 4096, ..Limited::default() };
    let mut client = WebSocketClient::new(now, &config);
    let request = String::from_utf8(REQUEST.to_vec()).unwrap().replace(
        "Sec-WebSocket-Version: 13\r\n",
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    client.handle_input(&mut request.into_bytes(), now, &config, &mut handler);
    take_output(&mut client);
    // 256 KiB of zeros compresses to a few hundred bytes: a bomb for a 4 KiB receiver.
    let mut body = Vec::new();
    crate::protocol::deflate::Deflater::new(15).compress(&vec![0; 256 << 10], &mut body, true);
    assert!(body.len() < 4096);
    let mut frame = masked(OpCode::Binary, true, &body);
    frame[0] |= crate::protocol::frame::RSV1;
    client.handle_input(&mut frame, now, &config, &mut handler);
    assert_eq!(handler.too_long, 1);
    assert_eq!(client.reader.reassembled(), 0);
    assert_eq!(client.state(), &ClientState::Connected { over_cap_since: None, paused_until: None });
    assert_eq!(take_output(&mut client).1, vec![WebSocketFrame::new(OpCode::Text, "too long")]);
    // The inflater's context is intact: the next compressed message still comes through.
    let mut small = Vec::new();
    crate::protocol::deflate::Deflater::new(15).compress(b"hello", &mut small, true);
    let mut frame = masked(OpCode::Text, true, &small);
    frame[0] |= crate::protocol::frame::RSV1;
    client.handle_input(&mut frame, now, &config, &mut handler);
    assert_eq!(take_output(&mut client).1, vec![WebSocketFrame::new(OpCode::Text, "hello")]);
}

#[test]
fn a_paused_connection_keeps_its_input_in_order_and_is_not_idle_meanwhile() {
    let config = Config { idle_timeout: Duration::from_secs(2), ..Config::default() };
    let t0 = Instant::now();
    let mut client = connected(&config, t0);
    let pause = Duration::from_secs(5);
    let mut handler = Limited { limit: usize::MAX, pause_until: Some(t0 + pause), ..Limited::default() };
    // Three messages and the first half of a fourth in one read: one is
    // processed, the rest waits (more than an incomplete unit).
    let mut wire: Vec<u8> = (0..4).flat_map(|i| masked(OpCode::Text, true, format!("m{i}").as_bytes())).collect();
    let half = wire.split_off(wire.len() - 3);
    client.handle_input(&mut wire, t0, &config, &mut handler);
    let (_, frames) = take_output(&mut client);
    assert_eq!(frames.iter().map(|f| f.payload.clone()).collect::<Vec<_>>(), [b"m0".to_vec()]);
    assert!(!client.wants_read(&config), "paused: the driver must not read");
    assert_eq!(client.paused_until(), Some(t0 + Duration::from_secs(5)));
    // Two whole frames of 8 bytes and 5 of the fourth wait.
    assert_eq!(client.held_input(), 8 + 8 + 5);
    // The pause's end is the next timer; the idle timeout (2 s) does not run meanwhile.
    assert_eq!(client.poll_timeout(&config), Some(t0 + Duration::from_secs(5)));
    let t1 = t0 + Duration::from_secs(5);
    assert_eq!(client.handle_timeout(t1, &config), TimerAction::Continue);
    assert!(client.is_open() && client.wants_read(&config));
    // Resuming processes the next message only, and pauses again.
    handler.pause_until = Some(t1 + pause);
    client.resume(t1, &config, &mut handler);
    let (_, frames) = take_output(&mut client);
    assert_eq!(frames.iter().map(|f| f.payload.clone()).collect::<Vec<_>>(), [b"m1".to_vec()]);
    let t2 = t1 + Duration::from_secs(5);
    client.handle_timeout(t2, &config);
    handler.pause_until = Some(t2 + pause);
    client.resume(t2, &config, &mut handler);
    let t3 = t2 + Duration::from_secs(5);
    client.handle_timeout(t3, &config);
    // New input behind the held: the held comes first, then the new, in order.
    handler.pause_until = None;
    client.handle_input(&mut half.clone(), t3, &config, &mut handler);
    let (_, frames) = take_output(&mut client);
    let texts: Vec<Vec<u8>> = frames.iter().map(|f| f.payload.clone()).collect();
    assert_eq!(texts, [b"m2".to_vec(), b"m3".to_vec()]);
    assert_eq!(client.held_input(), 0);
    assert!(client.is_open());
}
