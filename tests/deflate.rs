//! permessage-deflate (RFC 7692) over real TCP. The client side compresses
//! with flate2 directly, per the RFC: raw DEFLATE, sync flush, tail removed.

mod common;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::Value;

const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Compresses one message as a client does (§7.2.1).
fn compress(compressor: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut input = data;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity());
        }
        let before = compressor.total_in();
        compressor.compress_vec(input, &mut out, FlushCompress::Sync).unwrap();
        input = &input[(compressor.total_in() - before) as usize..];
        if input.is_empty() && out.capacity() > out.len() {
            break;
        }
    }
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - 4);
    out
}

/// Inflates one message as a client does (§7.2.2).
fn inflate(decompressor: &mut Decompress, data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(data.len() * 4 + 1024);
    let mut rest = &input[..];
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity());
        }
        let before = decompressor.total_in();
        decompressor.decompress_vec(rest, &mut out, FlushDecompress::Sync).unwrap();
        rest = &rest[(decompressor.total_in() - before) as usize..];
        if rest.is_empty() && out.capacity() > out.len() {
            return out;
        }
    }
}

fn raw_compressor() -> Compress {
    Compress::new_with_window_bits(Compression::default(), false, 15)
}

fn raw_decompressor() -> Decompress {
    Decompress::new_with_window_bits(false, 15)
}

/// Opens `path` offering `offer`; returns the client and the response head.
fn open_offering(addr: std::net::SocketAddr, path: &str, offer: &str) -> (RawClient, String) {
    let mut client = RawClient::connect(addr);
    let mut request = upgrade_request(path);
    request.truncate(request.len() - 2);
    request.extend_from_slice(format!("Sec-WebSocket-Extensions: {offer}\r\n\r\n").as_bytes());
    client.send_raw(&request);
    let head = client.read_http_head();
    (client, head)
}

fn extension_line(head: &str) -> Option<&str> {
    head.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
}

/// A masked frame with RSV1 set.
fn compressed_frame(client: &mut RawClient, fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = client.frame_bytes(fin, opcode, payload);
    bytes[0] |= 0x40;
    bytes
}

/// Reads the next frame and returns (was it compressed, payload as sent).
fn read_message(client: &mut RawClient) -> (bool, Vec<u8>, u8) {
    // The helper asserts RSV bits are zero, so look at the raw bytes ourselves.
    let frame = client.read_frame_with_rsv();
    (frame.0, frame.1.payload, frame.1.opcode)
}

#[test]
fn negotiation_answers_every_kind_of_offer() {
    let server = TestServer::start();
    let cases = [
        ("permessage-deflate", Some("permessage-deflate; server_no_context_takeover")),
        ("permessage-deflate; client_max_window_bits", Some("permessage-deflate; server_no_context_takeover")),
        (
            "permessage-deflate; server_max_window_bits=10; client_no_context_takeover",
            Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10",
            ),
        ),
        ("permessage-deflate; server_max_window_bits=7", None),
        ("permessage-deflate; foo=bar, permessage-deflate", Some("permessage-deflate; server_no_context_takeover")),
        ("x-webkit-deflate-frame", None),
    ];
    for (offer, expected) in cases {
        let (_, head) = open_offering(server.addr, "/echo", offer);
        assert!(head.starts_with("HTTP/1.1 101 "), "{offer}: {head}");
        assert_eq!(extension_line(&head), expected, "{offer}");
    }
    // A header that does not parse is a bad request.
    let mut client = RawClient::connect(server.addr);
    let mut request = upgrade_request("/echo");
    request.truncate(request.len() - 2);
    request.extend_from_slice(b"Sec-WebSocket-Extensions: permessage-deflate; x=\"open\r\n\r\n");
    client.send_raw(&request);
    assert!(client.read_http_response().starts_with("HTTP/1.1 400 "));
}

#[test]
fn context_takeover_is_offered_when_configured() {
    let server = TestServer::with_config(config(|c| {
        c.server.connection.deflate.context_takeover = true;
    }));
    let (_, head) = open_offering(server.addr, "/echo", "permessage-deflate");
    assert_eq!(extension_line(&head), Some("permessage-deflate"));
}

#[test]
fn no_deflate_declines_and_then_rsv1_is_a_protocol_error() {
    let server = TestServer::with_config(config(|c| {
        c.server.connection.deflate.enabled = false;
    }));
    let (mut client, head) = open_offering(server.addr, "/echo", "permessage-deflate");
    assert_eq!(extension_line(&head), None);
    let payload = compress(&mut raw_compressor(), b"Hello");
    let frame = compressed_frame(&mut client, true, TEXT, &payload);
    client.send_raw(&frame);
    assert_eq!(client.read_close().close_code(), Some(1002));
}

#[test]
fn a_compressed_round_trip() {
    let server = TestServer::start();
    let (mut client, _) = open_offering(server.addr, "/echo", "permessage-deflate");
    // RFC 7692 §7.2.3.1: "Hello", compressed.
    let hello = compressed_frame(&mut client, true, TEXT, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    client.send_raw(&hello);
    assert_eq!(read_message(&mut client), (false, b"Hello".to_vec(), TEXT), "short replies go raw");

    let long = "the quick brown fox jumps over the lazy dog. ".repeat(100);
    let payload = compress(&mut raw_compressor(), long.as_bytes());
    let frame = compressed_frame(&mut client, true, TEXT, &payload);
    client.send_raw(&frame);
    let (compressed, body, opcode) = read_message(&mut client);
    assert!(compressed && opcode == TEXT);
    assert!(body.len() < long.len() / 5, "{} bytes for {}", body.len(), long.len());
    assert_eq!(inflate(&mut raw_decompressor(), &body), long.as_bytes());

    // Uncompressed messages still work on a compressed connection.
    client.send_frame(true, BINARY, &[1, 2, 3]);
    assert_eq!(read_message(&mut client), (false, vec![1, 2, 3], BINARY));
}

#[test]
fn a_compressed_message_in_fragments_with_a_ping_between() {
    let server = TestServer::start();
    let (mut client, _) = open_offering(server.addr, "/echo", "permessage-deflate");
    let message: Vec<u8> = (0..20_000u32).flat_map(|i| (i % 100).to_string().into_bytes()).collect();
    let payload = compress(&mut raw_compressor(), &message);
    let third = payload.len() / 3;
    let mut wire = compressed_frame(&mut client, false, BINARY, &payload[..third]);
    wire.extend(client.frame_bytes(false, CONTINUATION, &payload[third..2 * third]));
    wire.extend(client.frame_bytes(true, PING, b"in between"));
    wire.extend(client.frame_bytes(true, CONTINUATION, &payload[2 * third..]));
    client.send_raw(&wire);
    assert_eq!(read_message(&mut client), (false, b"in between".to_vec(), PONG));
    let (compressed, body, _) = read_message(&mut client);
    assert!(compressed);
    assert_eq!(inflate(&mut raw_decompressor(), &body), message);
}

#[test]
fn context_takeover_across_messages_both_ways() {
    let server = TestServer::with_config(config(|c| {
        c.server.connection.deflate.context_takeover = true;
    }));
    let (mut client, head) = open_offering(server.addr, "/echo", "permessage-deflate");
    assert_eq!(extension_line(&head), Some("permessage-deflate"));
    // One compressor and one decompressor for the whole connection, on both sides.
    let (mut compressor, mut decompressor) = (raw_compressor(), raw_decompressor());
    let message = "a sentence that repeats, with a number: 12345. ".repeat(20);
    let mut sent_sizes = Vec::new();
    let mut received_sizes = Vec::new();
    for _ in 0..3 {
        let payload = compress(&mut compressor, message.as_bytes());
        sent_sizes.push(payload.len());
        let frame = compressed_frame(&mut client, true, TEXT, &payload);
        client.send_raw(&frame);
        let (compressed, body, _) = read_message(&mut client);
        assert!(compressed);
        received_sizes.push(body.len());
        assert_eq!(inflate(&mut decompressor, &body), message.as_bytes());
    }
    // The second message refers back to the first: much shorter, both ways.
    assert!(sent_sizes[1] * 3 < sent_sizes[0], "{sent_sizes:?}");
    assert!(received_sizes[1] * 3 < received_sizes[0], "{received_sizes:?}");
}

#[test]
fn without_server_context_takeover_every_reply_stands_alone() {
    let server = TestServer::start();
    let (mut client, _) = open_offering(server.addr, "/echo", "permessage-deflate");
    let message = "a sentence that repeats, with a number: 12345. ".repeat(20);
    for _ in 0..3 {
        let payload = compress(&mut raw_compressor(), message.as_bytes());
        let frame = compressed_frame(&mut client, true, TEXT, &payload);
        client.send_raw(&frame);
        let (_, body, _) = read_message(&mut client);
        // A fresh decompressor each time: the reply needs no earlier context.
        assert_eq!(inflate(&mut raw_decompressor(), &body), message.as_bytes());
    }
}

#[test]
fn rsv1_where_it_does_not_belong_is_1002() {
    let server = TestServer::start();
    let (mut client, _) = open_offering(server.addr, "/echo", "permessage-deflate");
    let ping = compressed_frame(&mut client, true, PING, b"");
    client.send_raw(&ping);
    assert_eq!(client.read_close().close_code(), Some(1002), "RSV1 on a control frame");

    let (mut client, _) = open_offering(server.addr, "/echo", "permessage-deflate");
    let payload = compress(&mut raw_compressor(), b"two parts");
    let mut wire = compressed_frame(&mut client, false, TEXT, &payload[..3]);
    wire.extend(compressed_frame(&mut client, true, CONTINUATION, &payload[3..]));
    client.send_raw(&wire);
    assert_eq!(client.read_close().close_code(), Some(1002), "RSV1 on a continuation");

    // Not negotiated: RSV1 is just a reserved bit.
    let mut plain = RawClient::open(server.addr, "/echo");
    let frame = compressed_frame(&mut plain, true, TEXT, &payload);
    plain.send_raw(&frame);
    assert_eq!(plain.read_close().close_code(), Some(1002));
}

#[test]
fn data_that_is_not_deflate_is_1007() {
    let server = TestServer::start();
    let (mut client, _) = open_offering(server.addr, "/echo", "permessage-deflate");
    let frame = compressed_frame(&mut client, true, BINARY, &[0xff; 32]);
    client.send_raw(&frame);
    assert_eq!(client.read_close().close_code(), Some(1007));
}

#[test]
fn a_bomb_is_closed_with_1009_and_server_memory_stays_bounded() {
    let server = Spawned::start(&[]);
    let (mut client, _) = open_offering(server.addr, "/echo", "permessage-deflate");
    // 64 MiB of zeros at the best level: about 64 KiB on the wire.
    let mut compressor = Compress::new_with_window_bits(Compression::best(), false, 15);
    let chunk = vec![0u8; 1 << 20];
    let mut payload = Vec::new();
    for _ in 0..63 {
        let before = compressor.total_in();
        payload.reserve(8192);
        compressor.compress_vec(&chunk, &mut payload, FlushCompress::None).unwrap();
        assert_eq!(compressor.total_in() - before, chunk.len() as u64);
    }
    payload.extend(compress(&mut compressor, &chunk));
    assert!(payload.len() < 512 * 1024, "{}", payload.len());
    let (base, _) = server.memory_kib();
    let frame = compressed_frame(&mut client, true, BINARY, &payload);
    client.send_raw(&frame);
    let close = client.read_close();
    assert_eq!(close.close_code(), Some(1009), "stopped at the 16 MiB message limit");
    let (_, peak) = server.memory_kib();
    let growth_mib = peak.saturating_sub(base) / 1024;
    eprintln!("bomb: {} KiB on the wire; server peak grew {growth_mib} MiB", payload.len() / 1024);
    assert!(growth_mib < 48, "the server held {growth_mib} MiB for a bomb");
    // And it goes on serving.
    let mut other = RawClient::open(server.addr, "/echo");
    other.send_text("fine");
    assert_eq!(other.read_frame(), Frame::text("fine"));
}

#[test]
fn chat_broadcasts_arrive_compressed_for_members_that_asked() {
    let server = TestServer::start();
    let (mut alice, _) = open_offering(server.addr, "/chat?nick=alice", "permessage-deflate");
    let (mut bob, _) = open_offering(server.addr, "/chat?nick=bob", "permessage-deflate");
    let mut carol = RawClient::open(server.addr, "/chat?nick=carol");
    // Welcome and join events (short: raw).
    for client in [&mut alice, &mut bob, &mut carol] {
        let _ = read_message(client);
    }
    let _ = read_message(&mut alice);
    let _ = read_message(&mut alice);
    let _ = read_message(&mut bob);
    let long = "compress me, please! ".repeat(30);
    alice.send_text(&long);
    for client in [&mut alice, &mut bob] {
        let (compressed, body, _) = read_message(client);
        assert!(compressed);
        let event: Value = serde_json::from_slice(&inflate(&mut raw_decompressor(), &body)).unwrap();
        assert_eq!(event["text"], long.as_str());
    }
    let (compressed, body, _) = read_message(&mut carol);
    assert!(!compressed, "carol did not offer deflate");
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["text"], long.as_str());
}

/// The next chat `message` event, inflated if it came compressed (with the
/// connection's own decompressor when the server keeps its context).
fn next_chat_message(client: &mut RawClient, context: &mut Option<Decompress>) -> (bool, Value) {
    loop {
        let (compressed, body, _) = read_message(client);
        let bytes = match (compressed, context.as_mut()) {
            (false, _) => body,
            (true, Some(decompressor)) => inflate(decompressor, &body),
            (true, None) => inflate(&mut raw_decompressor(), &body),
        };
        let event: Value = serde_json::from_slice(&bytes).unwrap();
        if event["type"] == "message" {
            return (compressed, event);
        }
    }
}

#[test]
fn a_burst_of_chat_messages_reaches_every_kind_of_member_whole_and_in_order() {
    // The burst arrives in one read, so the server delivers it as one run
    // (one buffer per kind of member): raw, shared compressors for two
    // window sizes, and a connection with its own compressor.
    let server = TestServer::with_config(config(|c| {
        c.server.connection.deflate.context_takeover = true;
        c.chat.rate_limit_per_sec = 0;
    }));
    let offers = [
        ("raw", None),
        ("shared-15", Some("permessage-deflate; server_no_context_takeover")),
        ("shared-9", Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=9")),
        ("own", Some("permessage-deflate")),
    ];
    let mut members: Vec<(RawClient, Option<Decompress>)> = offers
        .iter()
        .map(|(nick, offer)| {
            let path = format!("/chat?nick={nick}");
            match offer {
                None => (RawClient::open(server.addr, &path), None),
                Some(offer) => {
                    let (client, head) = open_offering(server.addr, &path, offer);
                    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
                    let own = !offer.contains("server_no_context_takeover");
                    (client, own.then(raw_decompressor))
                }
            }
        })
        .collect();
    // Short ones (compressible, but under the 256-byte threshold) go raw.
    let long = "a long line that is worth compressing, again and again. ".repeat(10);
    let texts: Vec<String> = (0..40)
        .map(|n| if n % 2 == 0 { format!("short {n} {}", "ab".repeat(40)) } else { format!("{n} {long}") })
        .collect();
    let sender = &mut members[0].0;
    let mut wire = Vec::new();
    for text in &texts {
        wire.extend(sender.frame_bytes(true, TEXT, text.as_bytes()));
    }
    sender.send_raw(&wire);
    for (i, (client, context)) in members.iter_mut().enumerate() {
        for (n, text) in texts.iter().enumerate() {
            let (compressed, event) = next_chat_message(client, context);
            assert_eq!(event["text"], text.as_str(), "member {}, message {n}", offers[i].0);
            let expect_compressed = offers[i].1.is_some() && n % 2 == 1;
            assert_eq!(compressed, expect_compressed, "member {}, message {n}", offers[i].0);
        }
    }
}

#[test]
fn a_compressed_chat_message_is_held_to_the_chats_limit_by_what_it_inflates_to() {
    // 15 KB of compressed zeros inflate to 15 MiB: once, that pinned 15 MiB per connection.
    let server = Spawned::start(&[]);
    let (mut client, _) = open_offering(server.addr, "/chat", "permessage-deflate");
    let welcome: Value = serde_json::from_slice(&read_message(&mut client).1).unwrap();
    assert_eq!(welcome["type"], "welcome");
    let mut compressor = Compress::new_with_window_bits(Compression::best(), false, 15);
    let payload = compress(&mut compressor, &vec![b' '; 15 << 20]);
    assert!(payload.len() < 64 * 1024, "{}", payload.len());
    let (base, _) = server.memory_kib();
    for _ in 0..4 {
        let frame = compressed_frame(&mut client, true, TEXT, &payload);
        client.send_raw(&frame);
        let error: Value = serde_json::from_slice(&read_message(&mut client).1).unwrap();
        assert_eq!(error["code"], "message_too_long", "{error}");
    }
    let (_, peak) = server.memory_kib();
    let growth_mib = peak.saturating_sub(base) / 1024;
    eprintln!("compressed 15 MiB chat messages: server peak grew {growth_mib} MiB");
    assert!(growth_mib < 4, "the server held {growth_mib} MiB for chat messages over 4 KiB");
    // The connection stays, and its next (compressed) message is said.
    let frame = compressed_frame(&mut client, true, TEXT, &compress(&mut raw_compressor(), b"after all"));
    client.send_raw(&frame);
    let said: Value = serde_json::from_slice(&read_message(&mut client).1).unwrap();
    assert_eq!((said["type"].as_str(), said["text"].as_str()), (Some("message"), Some("after all")));
}

/// `len` bytes that do not compress (xorshift).
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn a_message_at_the_size_limit_passes_compressed_though_its_frame_is_longer() {
    let server = TestServer::start();
    let (mut client, _) = open_offering(server.addr, "/echo", "permessage-deflate");
    // Exactly --max-message-size (16 MiB) of random bytes: compressed, a little longer.
    let message = random_bytes(16 << 20);
    let payload = compress(&mut raw_compressor(), &message);
    assert!(payload.len() > message.len(), "incompressible data grows: {}", payload.len());
    let frame = compressed_frame(&mut client, true, BINARY, &payload);
    client.send_raw(&frame);
    let (compressed, echoed, opcode) = read_message(&mut client);
    assert_eq!(opcode, BINARY);
    let echoed = if compressed { inflate(&mut raw_decompressor(), &echoed) } else { echoed };
    assert!(echoed == message, "the echo differs ({} bytes back)", echoed.len());
    // One byte more is over the limit, compressed or not.
    let mut over = message;
    over.push(0);
    let payload = compress(&mut raw_compressor(), &over);
    let frame = compressed_frame(&mut client, true, BINARY, &payload);
    client.send_raw(&frame);
    assert_eq!(client.read_close().close_code(), Some(1009));
}
