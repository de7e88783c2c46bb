//! A terminal chat client on the raw protocol: it opens the WebSocket by
//! hand, sends each line of standard input as a text frame, and prints every
//! event the server sends.
//!
//! ```text
//! cargo run --release &                                   # the server
//! cargo run --example client -- ws://127.0.0.1:10000/chat
//! cargo run --example client -- 'ws://127.0.0.1:10000/chat?room=rust&nick=alice'
//! ```
//!
//! Type a message and press Enter; `/help` lists the commands; Ctrl-D quits.

use rust_chat::protocol::frame::{self, DecodeRules, FrameHeader, OpCode, WebSocketFrame};
use serde_json::Value;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:10000/chat".into());
    let (mut stream, leftover) = connect(&url)?;
    let reader = stream.try_clone()?;
    std::thread::spawn(move || {
        if let Err(err) = print_events(reader, leftover) {
            eprintln!("connection lost: {err}");
        }
        std::process::exit(0);
    });

    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        send(&mut stream, OpCode::Text, line?.as_bytes(), i as u32)?;
    }
    // End of input: close politely and give the server a moment to answer.
    send(&mut stream, OpCode::Close, &1000u16.to_be_bytes(), 0)?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    Ok(())
}

/// Opens the TCP connection and performs the opening handshake (RFC 6455 §4.1).
fn connect(url: &str) -> Result<(TcpStream, Vec<u8>), Error> {
    let rest = url.strip_prefix("ws://").ok_or("only ws:// URLs are supported")?;
    let (host, target) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let mut stream = TcpStream::connect(host)?;
    // A fixed key is enough for a demo; a real client sends 16 random bytes.
    let key = "cnVzdC1jaGF0LWNsaWVudA=="; // "rust-chat-client"
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err("the server closed the connection during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let accept = format!("Sec-WebSocket-Accept: {}", rust_chat::protocol::handshake::gen_key(key));
    if !head.starts_with("HTTP/1.1 101") || !head.contains(&accept) {
        return Err(format!("the server refused the upgrade:\n{head}").into());
    }
    buf.drain(..end);
    Ok((stream, buf))
}

/// Sends one masked frame (clients must mask, §5.3).
fn send(stream: &mut TcpStream, opcode: OpCode, payload: &[u8], n: u32) -> Result<(), Error> {
    let key = n.wrapping_mul(0x9E37_79B9).to_be_bytes();
    let header = FrameHeader { mask: Some(key), ..FrameHeader::new(opcode, payload.len() as u64) };
    let mut out = Vec::new();
    WebSocketFrame { header, payload: payload.to_vec() }.encode(&mut out);
    stream.write_all(&out)?;
    Ok(())
}

/// Reads frames until the connection ends, printing each event as a line.
fn print_events(mut stream: TcpStream, mut buf: Vec<u8>) -> Result<(), Error> {
    let rules = DecodeRules::client(16 << 20);
    loop {
        while let Some(frame) = frame::decode(&mut buf, &rules)? {
            match frame.header.opcode {
                OpCode::Text => match serde_json::from_slice::<Value>(&frame.payload) {
                    Ok(event) => println!("{}", describe(&event)),
                    Err(_) => println!("{}", String::from_utf8_lossy(&frame.payload)),
                },
                OpCode::Ping => send(&mut stream, OpCode::Pong, &frame.payload, 0)?,
                OpCode::Close => {
                    let code = frame.payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                    let reason = frame.payload.get(2..).map(String::from_utf8_lossy).unwrap_or_default();
                    println!("* closed by the server: {} {reason}", code.map_or("-".into(), |c| c.to_string()));
                    return Ok(());
                }
                _ => {}
            }
        }
        let mut chunk = [0; 65536];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One line for an event.
fn describe(event: &Value) -> String {
    let s = |key: &str| event[key].as_str().unwrap_or_default().to_string();
    let list = |key: &str| -> String {
        event[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    match event["type"].as_str().unwrap_or_default() {
        "welcome" => {
            let mut out = format!("* you are {} in {} with: {}", s("nick"), s("room"), list("members"));
            for old in event["history"].as_array().into_iter().flatten() {
                out.push('\n');
                out.push_str(&describe(old));
            }
            out
        }
        "message" if event["action"] == true => format!("[{}] * {} {}", s("room"), s("nick"), s("text")),
        "message" => format!("[{}] <{}> {}", s("room"), s("nick"), s("text")),
        "join" => format!("* {} joined {}", s("nick"), s("room")),
        "leave" => format!("* {} left {}", s("nick"), s("room")),
        "nick" => format!("* {} is now {}", s("old"), s("nick")),
        "who" => format!("* in {}: {}", s("room"), list("members")),
        "rooms" => {
            let rooms = event["rooms"].as_array().into_iter().flatten();
            let names: Vec<String> =
                rooms.map(|r| format!("{} ({})", r["name"].as_str().unwrap_or("?"), r["members"])).collect();
            format!("* rooms: {}", names.join(", "))
        }
        "help" => {
            let commands = event["commands"].as_array().into_iter().flatten();
            let lines: Vec<String> = commands
                .map(|c| {
                    format!("  {:<12} {}", c["usage"].as_str().unwrap_or(""), c["description"].as_str().unwrap_or(""))
                })
                .collect();
            format!("* commands:\n{}", lines.join("\n"))
        }
        "error" => format!("! {} ({})", s("message"), s("code")),
        _ => event.to_string(),
    }
}
