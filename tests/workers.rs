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
    for client in clients.iter_mut() {
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
    for client in clients.iter_mut() {
        assert_eq!(client.read_close().close_code(), Some(1001));
        client.send_close(1001, "");
    }
    assert_eq!(server.wait_exit(PATIENCE), Some(0), "{}", server.log());
}
