//! Several event loops on one port (`Workers`, `SO_REUSEPORT`): connections
//! spread over all of them, each served as by one server, and every worker
//! stopped together.

mod common;

use common::*;
use rust_chat::app::{App, Context, Message, Request, Route};
use rust_chat::echo::Echo;
use rust_chat::server::{Exit, ServerConfig, WorkerError, Workers};
use std::time::{Duration, Instant};

fn local() -> ServerConfig {
    ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() }
}

#[test]
fn four_workers_share_the_port_and_each_serves_its_connections() {
    let workers = Workers::start(local(), 4, false, |_| Echo).unwrap();
    let mut clients: Vec<RawClient> = (0..64).map(|_| RawClient::open(workers.local_addr(), "/echo")).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let text = format!("hello {i}");
        client.send_text(&text);
        assert_eq!(client.read_frame(), Frame::text(&text));
    }
    // Each worker's count is as of its last turn: give them one.
    let deadline = Instant::now() + PATIENCE;
    let counts = loop {
        let counts: Vec<usize> = workers.handles().iter().map(|h| h.connections()).collect();
        if counts.iter().sum::<usize>() == 64 || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("64 connections over 4 workers: {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 64, "{counts:?}");
    // The kernel hashes each connection's ports: with 64, every worker gets some
    // (the chance that one gets none is 4 × (3/4)^64, about 4e-8).
    assert!(counts.iter().all(|&n| n > 0), "a worker got no connection: {counts:?}");
    for handle in workers.handles() {
        handle.shutdown();
    }
    // Each client answers the Close and then, as a browser does on the server's
    // FIN, closes its socket: the drain ends when the last one has gone, not
    // when its timeout (or the 5 s close timeout, racing it) runs out.
    for mut client in clients.drain(..) {
        assert_eq!(client.read_close().close_code(), Some(1001));
        client.send_close(1001, "");
    }
    assert_eq!(workers.wait().unwrap(), Exit::Drained { left: 0 });
}

/// Panics on the message "boom".
struct Fragile;

impl App for Fragile {
    type Conn = ();

    fn route(&mut self, _: &Request<'_, '_>) -> Route<()> {
        Route::Accept(())
    }

    fn on_message(&mut self, _: &mut (), message: Message<'_>, ctx: &mut Context<'_>) {
        assert!(message.as_bytes() != b"boom", "the application broke on purpose");
        ctx.send(message);
    }
}

#[test]
fn a_worker_that_panics_is_reported_at_once() {
    let workers = Workers::start(local(), 2, false, |_| Fragile).unwrap();
    let mut client = RawClient::open(workers.local_addr(), "/");
    client.send_text("fine");
    assert_eq!(client.read_frame(), Frame::text("fine"));
    client.send_text("boom");
    // The other worker is still running: `wait` does not wait for it.
    let started = Instant::now();
    match workers.wait() {
        Err(WorkerError::Panicked(_)) => {}
        other => panic!("expected a panicked worker, got {other:?}"),
    }
    assert!(started.elapsed() < PATIENCE);
}

#[test]
fn sigterm_drains_every_worker_of_the_example() {
    let mut server = Spawned::example("uppercase", &["--workers", "4"]);
    let mut clients: Vec<RawClient> = (0..32).map(|_| RawClient::open(server.addr, "/")).collect();
    for client in clients.iter_mut() {
        client.send_text("up");
        assert_eq!(client.read_frame(), Frame::text("UP"));
    }
    server.signal("TERM");
    for mut client in clients.drain(..) {
        assert_eq!(client.read_close().close_code(), Some(1001));
        client.send_close(1001, "");
    }
    assert_eq!(server.wait_exit(PATIENCE), Some(0), "{}", server.log());
}

/// The worker each `accepted` line of a debug log names, by connection id.
fn workers_by_conn(log: &str) -> std::collections::HashMap<String, String> {
    plain(log)
        .lines()
        .filter(|l| l.contains(" accepted conn="))
        .filter_map(|l| {
            let worker = l.split("worker{n=").nth(1)?.split('}').next()?.to_string();
            let conn = l.split("conn=").nth(1)?.split_whitespace().next()?.to_string();
            Some((conn, worker))
        })
        .collect()
}

#[test]
fn one_chat_over_four_workers_keeps_every_promise_of_one() {
    let mut server = Spawned::start_logging("debug", &["--workers", "4"]);
    let n = 64;
    let mut members: Vec<ChatClient> =
        (0..n).map(|i| ChatClient::join(server.addr, &format!("room=big&nick=m{i}")).0).collect();
    // Every worker holds some of them.
    let by_conn = workers_by_conn(&server.log());
    let workers: std::collections::HashSet<&String> = by_conn.values().collect();
    assert_eq!(workers.len(), 4, "connections per worker: {by_conn:?}");
    // /who, asked on any worker, lists all 64 (wherever they are).
    members[n - 1].say("/who");
    let who = members[n - 1].until("who");
    assert_eq!(who["members"].as_array().unwrap().len(), n, "{who}");
    // Everyone says one thing at once; everyone hears all 64, in one order, seq 1..=64.
    for (i, member) in members.iter_mut().enumerate() {
        member.say(&format!("from {i}"));
    }
    let mut orders = Vec::new();
    for member in members.iter_mut() {
        let heard: Vec<(u64, String)> = (0..n)
            .map(|_| {
                let event = member.until("message");
                (event["seq"].as_u64().unwrap(), event["text"].as_str().unwrap().to_string())
            })
            .collect();
        let seqs: Vec<u64> = heard.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "contiguous seq");
        orders.push(heard);
    }
    assert!(orders.windows(2).all(|pair| pair[0] == pair[1]), "every member saw the same order");
    // Nicknames are unique over all workers: eight newcomers want one nick, one gets it.
    let claimants: Vec<(ChatClient, serde_json::Value)> =
        (0..8).map(|_| ChatClient::join(server.addr, "room=side&nick=wanted")).collect();
    let got: Vec<&str> = claimants.iter().map(|(_, welcome)| welcome["nick"].as_str().unwrap()).collect();
    assert_eq!(got.iter().filter(|nick| **nick == "wanted").count(), 1, "{got:?}");
    // A member leaving on one worker is a `leave` for the others, wherever they are.
    let leaver = members.remove(0);
    drop(leaver);
    for member in members.iter_mut() {
        assert_eq!(member.until("leave")["nick"], "m0");
    }
    // /rooms counts over all workers.
    members[0].say("/rooms");
    let rooms = members[0].until("rooms");
    assert_eq!(
        rooms["rooms"],
        serde_json::json!([{"name": "big", "members": 63}, {"name": "lobby", "members": 0}, {"name": "side", "members": 8}])
    );
    // SIGTERM: every worker closes its members with 1001, and the process exits 0.
    server.signal("TERM");
    for mut member in members.drain(..) {
        let close = loop {
            let frame = member.raw.read_frame();
            if frame.opcode == CLOSE {
                break frame;
            }
        };
        assert_eq!(close.close_code(), Some(1001));
        member.raw.send_close(1001, "");
    }
    // Members closed on one worker are a `leave` for those on the others that
    // are not closed yet: skip those until the Close.
    for (mut claimant, _) in claimants {
        while claimant.raw.read_frame().opcode != CLOSE {}
        claimant.raw.send_close(1001, "");
    }
    assert_eq!(server.wait_exit(PATIENCE), Some(0), "{}", server.log());
    let log = plain(&server.log());
    assert!(log.contains("workers=4"), "the start-up line says how many: {log}");
    assert!(log.contains("worker{n=3}"), "lines carry their worker: {log}");
}
