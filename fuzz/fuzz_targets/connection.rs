//! The whole connection state machine fed an arbitrary script of bytes, in
//! arbitrary pieces, with time passing: it never panics, and everything the
//! server writes is an HTTP response, followed (after a 101) only by valid
//! server frames, with nothing after a Close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rust_chat::app::topics::RUN_LIMIT;
use rust_chat::app::{AppConn, ConnId, Hub, Session};
use rust_chat::chat::ChatConfig;
use rust_chat::connection::{ConnectionConfig, DeflateConfig, TimerAction, WebSocketClient};
use rust_chat::echo_and_chat;
use rust_chat::protocol::frame::{DecodeRules, OpCode, decode};
use rust_chat::protocol::origin::OriginPolicy;
use std::io::{self, Write};
use std::time::{Duration, Instant};

const ME: ConnId = ConnId { index: 0, generation: 1 };

/// A socket that takes at most `step` bytes a call and, if `stutter`, blocks every other call.
struct Trickle<'a> {
    out: &'a mut Vec<u8>,
    step: usize,
    stutter: bool,
    blocked: bool,
}

impl Write for Trickle<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stutter {
            self.blocked = !self.blocked;
            if self.blocked {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        let n = buf.len().min(self.step);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, script)) = data.split_first() else { return };
    let config = ConnectionConfig {
        max_frame_size: 1 << 14,
        max_message_size: 1 << 15,
        max_handshake_bytes: 1024,
        max_outgoing_bytes: 1 << 15,
        handshake_timeout: Duration::from_secs(2),
        ping_interval: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(3),
        close_timeout: Duration::from_secs(1),
        slow_consumer_grace: Duration::from_secs(1),
        deflate: DeflateConfig { enabled: true, threshold: 16, context_takeover: mode & 8 != 0 },
        origin: {
            // Half the time, the Host and Origin checks of a loopback bind with additions.
            let mut origin = OriginPolicy::default();
            if mode & 16 != 0 {
                origin.restrict_hosts(["chat.internal"]);
                let _ = origin.allow_origin("https://app.example");
            }
            origin
        },
    };
    // The binary's own applications: `/echo` and the chat.
    let mut app = echo_and_chat(ChatConfig { max_text_bytes: 512, ..ChatConfig::default() });
    let mut hub = Hub::new(RUN_LIMIT.min(config.max_outgoing_bytes), || 0);
    let mut conn = AppConn::default();
    // Half the time, start with a valid upgrade so the fuzzer spends its effort on frames.
    let mut input = Vec::new();
    if mode & 1 == 1 {
        let path = if mode & 2 == 0 { "/echo" } else { "/chat?room=fuzz" };
        // And, with bit 3, permessage-deflate (context takeover with bit 4).
        let extension = if mode & 4 != 0 { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" };
        input.extend_from_slice(
            format!(
                "GET {path} HTTP/1.1\r\nHost: chat.internal\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extension}\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    input.extend_from_slice(script);

    let mut now = Instant::now();
    let mut client = WebSocketClient::new(now, &config);
    let mut out = Vec::new();
    let mut rng = u32::from(mode) | 0x1000;
    let mut pos = 0;
    let mut dropped = false;
    while pos < input.len() && !dropped {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let next = (pos + 1 + (rng % 200) as usize).min(input.len());
        let mut piece = input[pos..next].to_vec();
        pos = next;
        let mut session = Session { app: &mut app, conn: &mut conn, hub: &mut hub, id: ME, now };
        client.handle_input(&mut piece, now, &config, &mut session);
        if conn.is_open() && client.close_info().is_some() {
            Session { app: &mut app, conn: &mut conn, hub: &mut hub, id: ME, now }.close(client.close_info());
        }
        // Deliver what went through the outbox to this one connection, as the server would.
        let outbox = hub.topics.take_outbox();
        for (frame, to) in outbox.iter() {
            if to.contains(&ME) && client.is_open() {
                client.send(frame.opcode(), frame.payload(), &mut hub.deflaters, &config);
            }
        }
        hub.topics.restore_outbox(outbox);
        let step = 1 + (rng >> 8) as usize % 300;
        let _ = client.write_to(&mut Trickle { out: &mut out, step, stutter: rng & 4 == 0, blocked: false });
        if rng & 0x30 == 0 {
            now += Duration::from_millis(u64::from(rng >> 20));
            dropped = client.handle_timeout(now, &config) == TimerAction::Drop;
        }
    }
    while client.write_to(&mut Trickle { out: &mut out, step: 4096, stutter: false, blocked: false }).unwrap_or(0) > 0 {
    }

    check_output(&out);
});

fn check_output(out: &[u8]) {
    if out.is_empty() {
        return;
    }
    assert!(out.starts_with(b"HTTP/1.1 "), "output starts with an HTTP response");
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head") + 4;
    if !out.starts_with(b"HTTP/1.1 101 ") {
        return; // an error response and its body, then nothing
    }
    let deflate = out[..head_end].windows(18).any(|w| w == b"permessage-deflate");
    let mut inflater = rust_chat::protocol::deflate::Inflater::new();
    let mut rest = out[head_end..].to_vec();
    let mut rules = DecodeRules::client(u64::MAX >> 1);
    if deflate {
        rules.allowed_rsv = rust_chat::protocol::frame::RSV1;
    }
    let mut closed = false;
    while !rest.is_empty() {
        let frame = decode(&mut rest, &rules).expect("valid server frames").expect("whole frames only");
        assert!(!closed, "nothing after a Close");
        assert!(frame.header.fin, "the server sends whole messages");
        assert_ne!(frame.header.opcode, OpCode::Continuation);
        let mut payload = frame.payload.clone();
        if frame.header.rsv != 0 {
            assert!(!frame.header.opcode.is_control(), "control frames are never compressed");
            payload.clear();
            let mut sink = |piece: &[u8]| {
                payload.extend_from_slice(piece);
                Ok(())
            };
            inflater.inflate(&frame.payload, usize::MAX, &mut sink).expect("the server's DEFLATE inflates");
            inflater.finish_message(usize::MAX, false, &mut sink).expect("and ends cleanly");
        }
        if frame.header.opcode == OpCode::Text {
            assert!(std::str::from_utf8(&payload).is_ok(), "text is UTF-8");
        }
        if frame.header.opcode == OpCode::Close {
            assert!(frame.payload.len() != 1);
            closed = true;
        }
    }
}
