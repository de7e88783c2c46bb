//! The peer for the benchmarks: the same two services as rust-chat, written
//! the usual way with tokio-tungstenite on a current-thread runtime (one
//! core, like rust-chat), with the same limits.
//!
//! - `/echo`: every message comes back.
//! - `/chat?...`: everyone is in one room; every text message is wrapped in
//!   the same JSON `message` event rust-chat sends (room, nick, text, time,
//!   seq), encoded once, and sent to every member, sender included.
//!
//! Usage: `peer ADDR` (prints `listening on ws://ADDR/`).

use futures_util::{FutureExt, SinkExt, StreamExt};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

struct Room {
    members: Vec<(u64, mpsc::UnboundedSender<Message>)>,
    seq: u64,
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:10001".into());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    println!("listening on ws://{}/", listener.local_addr().unwrap());
    let room = Rc::new(RefCell::new(Room { members: Vec::new(), seq: 0 }));
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let mut next_id = 0u64;
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                next_id += 1;
                tokio::task::spawn_local(serve(stream, Rc::clone(&room), next_id));
            }
        })
        .await;
}

#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
async fn serve(stream: TcpStream, room: Rc<RefCell<Room>>, id: u64) {
    let mut path = String::new();
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_string();
        Ok(response)
    };
    let config = WebSocketConfig::default().max_message_size(Some(16 << 20)).max_frame_size(Some(16 << 20));
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await else { return };
    let (mut sink, mut source) = ws.split();
    if path == "/echo" {
        // Echo with batching: queue every message that is already decoded,
        // then flush once (one write for many replies, as rust-chat does).
        while let Some(Ok(message)) = source.next().await {
            if (message.is_text() || message.is_binary()) && sink.feed(message).await.is_err() {
                return;
            }
            while let Some(Some(Ok(more))) = source.next().now_or_never() {
                if (more.is_text() || more.is_binary()) && sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        return;
    }
    // Chat: one room, one writer task per member fed by a channel.
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    room.borrow_mut().members.push((id, tx));
    let writer = tokio::task::spawn_local(async move {
        while let Some(message) = rx.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            // Batch whatever else is queued before flushing.
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let nick = format!("m{id}");
    while let Some(Ok(message)) = source.next().await {
        let Message::Text(text) = message else { continue };
        let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let mut room = room.borrow_mut();
        room.seq += 1;
        let event = format!(
            "{{\"type\":\"message\",\"room\":\"bench\",\"nick\":\"{nick}\",\"text\":{},\"time\":{time},\"seq\":{}}}",
            json_string(&text),
            room.seq
        );
        let shared = Message::Text(Utf8Bytes::from(event));
        room.members.retain(|(_, member)| member.send(shared.clone()).is_ok());
    }
    room.borrow_mut().members.retain(|(member, _)| *member != id);
    writer.abort();
}
