//! A tiny blocking WebSocket client built on the crate's frame codec: it
//! opens `ws://HOST:PORT/PATH`, sends each line of standard input as a text
//! message and prints what comes back.
//!
//! ```text
//! cargo run --release &                       # the server
//! echo hello | cargo run --example echo_client -- ws://127.0.0.1:10000/echo
//! ```

use rust_chat::protocol::frame::{self, DecodeRules, FrameHeader, OpCode, WebSocketFrame};
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:10000/echo".into());
    let rest = url.strip_prefix("ws://").ok_or("only ws:// URLs are supported")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(host)?;

    // A fixed key is fine for an example; real clients use 16 random bytes.
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err("connection closed during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let expected = format!("Sec-WebSocket-Accept: {}", rust_chat::protocol::handshake::gen_key(key));
    if !head.starts_with("HTTP/1.1 101") || !head.contains(&expected) {
        return Err(format!("handshake refused:\n{head}").into());
    }
    buf.drain(..head_end);
    eprintln!("connected to {url}; type lines to send, Ctrl-D to quit");

    let rules = DecodeRules::client(16 << 20);
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        // Client frames must be masked (RFC 6455 §5.3).
        let header =
            FrameHeader { mask: Some((i as u32).to_be_bytes()), ..FrameHeader::new(OpCode::Text, line.len() as u64) };
        let mut out = Vec::new();
        WebSocketFrame { header, payload: line.into_bytes() }.encode(&mut out);
        stream.write_all(&out)?;
        let reply = loop {
            if let Some(frame) = frame::decode(&mut buf, &rules)? {
                break frame;
            }
            let mut chunk = [0; 65536];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        println!("{}", String::from_utf8_lossy(&reply.payload));
    }
    // Say goodbye properly: Close 1000, then wait for the server's Close.
    let header = FrameHeader { mask: Some([1, 2, 3, 4]), ..FrameHeader::new(OpCode::Close, 2) };
    let mut out = Vec::new();
    WebSocketFrame { header, payload: 1000u16.to_be_bytes().to_vec() }.encode(&mut out);
    stream.write_all(&out)?;
    loop {
        if let Some(frame) = frame::decode(&mut buf, &rules)? {
            if frame.header.opcode == OpCode::Close {
                break;
            }
            continue;
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}
