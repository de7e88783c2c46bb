//! Delivery decisions on in-memory connections: no sockets, no clock.

use super::*;
use crate::connection::{ClientState, TimerAction};
use crate::connection::{Handler, Reply, Route};
use crate::protocol::OpCode;
use crate::protocol::frame::{DecodeRules, WebSocketFrame, decode};
use crate::protocol::handshake::Request;
use crate::protocol::message::Message;
use std::collections::HashMap;
use std::time::Duration;

/// Accepts every upgrade and ignores messages.
struct Accept;

impl Handler for Accept {
    fn route(&mut self, _: &Request<'_, '_>) -> Route {
        Route::Upgrade
    }
    fn on_open(&mut self, _: &mut Reply<'_>) {}
    fn on_message(&mut self, _: Message<'_>, _: &mut Reply<'_>) {}
}

/// Open connections by id, and which ones delivery touched (by index).
#[derive(Default)]
struct Clients {
    clients: HashMap<ConnId, (WebSocketClient, bool)>,
    touched: VecDeque<usize>,
}

impl Clients {
    fn insert(&mut self, id: ConnId, client: WebSocketClient) {
        self.clients.insert(id, (client, false));
    }

    fn client(&mut self, id: ConnId) -> &mut WebSocketClient {
        &mut self.clients.get_mut(&id).unwrap().0
    }
}

impl Recipients for Clients {
    fn get(&mut self, id: ConnId) -> Option<Recipient<'_>> {
        let (client, listed) = self.clients.get_mut(&id)?;
        Some(Recipient { client, listed, written: &mut self.touched, index: id.index })
    }
}

fn id(index: usize) -> ConnId {
    ConnId { index, generation: 1 }
}

/// A client past its handshake (`extension`: a `Sec-WebSocket-Extensions` offer), with nothing queued.
fn open_client(config: &ConnectionConfig, extension: &str) -> WebSocketClient {
    let now = Instant::now();
    let mut client = WebSocketClient::new(now, config);
    let request = format!(
        "GET /t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extension}\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    client.handle_input(&mut request.into_bytes(), now, config, &mut Accept);
    written(&mut client);
    assert!(client.is_open());
    client
}

/// Everything the client's queue writes, as bytes.
fn written(client: &mut WebSocketClient) -> Vec<u8> {
    let mut out = Vec::new();
    client.write_to(&mut out).unwrap();
    out
}

fn frames(mut bytes: Vec<u8>) -> Vec<WebSocketFrame> {
    let mut rules = DecodeRules::client(u64::MAX);
    rules.allowed_rsv = crate::protocol::frame::RSV1;
    let mut out = Vec::new();
    while let Some(frame) = decode(&mut bytes, &rules).unwrap() {
        out.push(frame);
    }
    assert!(bytes.is_empty());
    out
}

#[test]
fn a_run_reaches_every_member_whole_and_in_order_with_one_queue_entry_each() {
    let config = ConnectionConfig::default();
    let mut to = Clients::default();
    for i in 0..3 {
        to.insert(id(i), open_client(&config, ""));
    }
    let mut outbox = Outbox::new(64 << 10);
    for text in ["one", "two", "three"] {
        outbox.push(OutFrame::new(OpCode::Text, text.as_bytes()), (0..3).map(id));
    }
    let mut slow = Vec::new();
    queue_runs(&outbox, &mut to, &mut SharedDeflaters::default(), &config, Instant::now(), &mut slow);
    assert!(slow.is_empty());
    assert_eq!(to.touched, [0, 1, 2], "each member once");
    for i in 0..3 {
        let client = to.client(id(i));
        let got: Vec<Vec<u8>> = frames(written(client)).into_iter().map(|f| f.payload).collect();
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    }
}

#[test]
fn without_a_grace_a_member_whose_queue_would_pass_its_cap_is_a_slow_consumer_and_gets_nothing_more() {
    let config = ConnectionConfig {
        max_outgoing_bytes: 1000,
        slow_consumer_grace: Duration::ZERO,
        ..ConnectionConfig::default()
    };
    let mut to = Clients::default();
    let mut behind = open_client(&config, "");
    // 900 bytes it has not read yet.
    behind.send(OpCode::Binary, &[0; 896], &mut SharedDeflaters::default(), &config);
    assert_eq!(behind.queued(), 900);
    to.insert(id(0), behind);
    to.insert(id(1), open_client(&config, ""));
    let mut outbox = Outbox::new(1000);
    outbox.push(OutFrame::new(OpCode::Text, &[b'x'; 98]), [id(0), id(1)]); // 100 bytes: 900 + 100 fits
    outbox.push(OutFrame::new(OpCode::Text, b"y"), [id(1), id(0)]); // a new run: 1000 + 3 does not
    let mut slow = Vec::new();
    queue_runs(&outbox, &mut to, &mut SharedDeflaters::default(), &config, Instant::now(), &mut slow);
    assert_eq!(slow, vec![id(0)]);
    assert_eq!(to.client(id(0)).queued(), 1000, "exactly at the cap is still fine");
    assert_eq!(to.client(id(1)).queued(), 103);
    // Told so, it is closed with 1008 after what it has started receiving.
    let now = Instant::now();
    let client = to.client(id(0));
    client.close_slow_consumer("slow consumer", now, &config);
    let last = frames(written(client)).pop().unwrap();
    assert_eq!((last.header.opcode, &last.payload[..2]), (OpCode::Close, &1008u16.to_be_bytes()[..]));
}

#[test]
fn a_run_larger_than_the_cap_still_fits_an_empty_queue() {
    let config = ConnectionConfig { max_outgoing_bytes: 100, ..ConnectionConfig::default() };
    let mut to = Clients::default();
    to.insert(id(0), open_client(&config, ""));
    let mut outbox = Outbox::new(64 << 10);
    outbox.push(OutFrame::new(OpCode::Text, &[b'z'; 500]), [id(0)]);
    let mut slow = Vec::new();
    queue_runs(&outbox, &mut to, &mut SharedDeflaters::default(), &config, Instant::now(), &mut slow);
    assert!(slow.is_empty());
    assert_eq!(to.client(id(0)).queued(), 504);
}

#[test]
fn closed_or_gone_recipients_are_skipped() {
    let config = ConnectionConfig::default();
    let mut to = Clients::default();
    let mut closing = open_client(&config, "");
    closing.close(1000, "bye", Instant::now(), &config);
    to.insert(id(0), closing);
    let mut outbox = Outbox::new(64 << 10);
    outbox.push(OutFrame::new(OpCode::Text, b"late"), [id(0), id(7)]);
    let mut slow = Vec::new();
    queue_runs(&outbox, &mut to, &mut SharedDeflaters::default(), &config, Instant::now(), &mut slow);
    assert!(to.touched.is_empty() && slow.is_empty());
}

#[test]
fn compressed_members_share_one_compression_and_raw_ones_get_the_plain_frames() {
    let config = ConnectionConfig {
        deflate: crate::connection::DeflateConfig { threshold: 0, ..Default::default() },
        ..Default::default()
    };
    let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
    let mut to = Clients::default();
    to.insert(id(0), open_client(&config, offer));
    to.insert(id(1), open_client(&config, offer));
    to.insert(id(2), open_client(&config, ""));
    let text = "compress me ".repeat(20);
    let mut outbox = Outbox::new(64 << 10);
    outbox.push(OutFrame::new(OpCode::Text, text.as_bytes()), (0..3).map(id));
    let mut slow = Vec::new();
    queue_runs(&outbox, &mut to, &mut SharedDeflaters::default(), &config, Instant::now(), &mut slow);
    let a = written(to.client(id(0)));
    let b = written(to.client(id(1)));
    let raw = written(to.client(id(2)));
    assert_eq!(a, b, "one compression, shared");
    assert!(a.len() < raw.len());
    assert_eq!(frames(a)[0].header.rsv, crate::protocol::frame::RSV1);
    assert_eq!(frames(raw)[0].payload, text.as_bytes());
}

#[test]
fn a_member_that_reads_its_queue_back_under_the_cap_is_never_closed_and_a_stalled_one_is() {
    let config = ConnectionConfig { max_outgoing_bytes: 1000, ..ConnectionConfig::default() };
    let grace = config.slow_consumer_grace;
    let t0 = Instant::now();
    let mut to = Clients::default();
    to.insert(id(0), open_client(&config, "")); // reads
    to.insert(id(1), open_client(&config, "")); // never reads
    let burst = |to: &mut Clients, at: Instant| {
        // A burst of 1,500 bytes: over the cap, within the hard cap.
        let mut outbox = Outbox::new(64 << 10);
        for _ in 0..3 {
            outbox.push(OutFrame::new(OpCode::Text, &[b'x'; 496]), [id(0), id(1)]);
        }
        let mut slow = Vec::new();
        queue_runs(&outbox, to, &mut SharedDeflaters::default(), &config, at, &mut slow);
        slow
    };
    assert!(burst(&mut to, t0).is_empty(), "over the cap is not slow yet");
    assert!(burst(&mut to, t0).is_empty());
    assert_eq!(to.client(id(1)).queued(), 3000);
    assert_eq!(to.client(id(1)).state(), &ClientState::Connected { over_cap_since: Some(t0), paused_until: None });
    assert_eq!(to.client(id(1)).poll_timeout(&config), Some(t0 + grace));
    // Bursts keep coming; the reader reads each time, the stalled one does not.
    for second in 1..=6 {
        let at = t0 + Duration::from_secs(second);
        written(to.client(id(0)));
        let slow = burst(&mut to, at);
        for id in [id(0), id(1)] {
            if to.client(id).poll_timeout(&config).is_some_and(|due| due <= at) {
                to.client(id).handle_timeout(at, &config);
            }
        }
        assert!(to.client(id(0)).is_open(), "the reader stays, second {second}");
        assert!(!slow.contains(&id(0)));
        // As the server does with those delivery found slow.
        for slow in slow {
            to.client(slow).close_slow_consumer("slow consumer", at, &config);
        }
    }
    // The stalled one was closed: at once when its queue would have passed
    // the hard cap (4,000 bytes), or when its grace ran out.
    let stalled = to.client(id(1));
    assert!(!stalled.is_open());
    assert!(stalled.queued() <= config.hard_outgoing_cap());
    assert_eq!(stalled.handle_timeout(t0 + Duration::from_secs(60), &config), TimerAction::Drop);
}

#[test]
fn the_grace_runs_out_for_a_queue_that_stays_over_the_cap() {
    let config = ConnectionConfig { max_outgoing_bytes: 1000, ..ConnectionConfig::default() };
    let t0 = Instant::now();
    let mut to = Clients::default();
    to.insert(id(0), open_client(&config, ""));
    let mut outbox = Outbox::new(64 << 10);
    outbox.push(OutFrame::new(OpCode::Text, &[b'x'; 1496]), [id(0)]);
    outbox.push(OutFrame::new(OpCode::Binary, &[b'y'; 1496]), [id(0)]);
    let mut slow = Vec::new();
    queue_runs(&outbox, &mut to, &mut SharedDeflaters::default(), &config, t0, &mut slow);
    assert!(slow.is_empty());
    let client = to.client(id(0));
    let due = client.poll_timeout(&config).unwrap();
    assert_eq!(due, t0 + config.slow_consumer_grace);
    client.handle_timeout(due - Duration::from_millis(1), &config);
    assert!(client.is_open(), "not before its time");
    client.handle_timeout(due, &config);
    assert!(!client.is_open());
    let last = frames(written(client)).pop().unwrap();
    assert_eq!((last.header.opcode, &last.payload[..2]), (OpCode::Close, &1008u16.to_be_bytes()[..]));
}
