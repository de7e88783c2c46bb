//! The application interface as a library user meets it: an `App` of the
//! test's own, on a real server over TCP, spoken to by the raw RFC client.

mod common;

use common::*;
use rust_chat::app::{App, Closed, Context, HttpResponse, Message, Request, Route};
use rust_chat::server::{Server, ServerConfig, ServerHandle};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everyone at `/room` hears what anyone says; "bye" is said to all and
/// then closes the sayer with 4000; `/full` is refused on opening (4001);
/// `/secret` is 403; a plain GET of `/page` is a page; anything else is 404.
struct Room {
    closes: Arc<Mutex<Vec<(String, Closed)>>>,
}

impl App for Room {
    type Conn = String;

    fn route(&mut self, request: &Request<'_, '_>) -> Route<String> {
        match request.path() {
            "/room" | "/full" => Route::Accept(request.path().to_string()),
            "/secret" => Route::Respond(HttpResponse::error(403, "not for you")),
            "/page" if !request.is_upgrade() => Route::Respond(HttpResponse::ok("text/plain", &b"a page"[..])),
            _ => Route::NotFound,
        }
    }

    fn on_open(&mut self, path: &mut String, ctx: &mut Context<'_>) {
        if path == "/full" {
            ctx.send_text("sorry");
            ctx.close(4001, "full");
            return;
        }
        ctx.subscribe("room");
    }

    fn on_message(&mut self, _: &mut String, message: Message<'_>, ctx: &mut Context<'_>) {
        ctx.publish("room", message);
        if message.as_bytes() == b"bye" {
            ctx.close(4000, "you said bye");
        }
    }

    fn on_close(&mut self, path: String, closed: &Closed, _: &mut Context<'_>) {
        self.closes.lock().unwrap().push((path, *closed));
    }
}

struct Running {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn start(app: Room) -> Running {
    let config = ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
    let mut server = Server::bind(config, app).expect("bind");
    let (addr, handle) = (server.local_addr(), server.handle());
    let thread = std::thread::spawn(move || {
        server.run().expect("event loop");
    });
    Running { addr, handle, thread: Some(thread) }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_publish_reaches_every_subscriber_and_a_close_asked_for_comes_after_it() {
    let closes = Arc::new(Mutex::new(Vec::new()));
    let server = start(Room { closes: Arc::clone(&closes) });
    let mut a = RawClient::open(server.addr, "/room");
    let mut b = RawClient::open(server.addr, "/room");
    wait_until("both open", || server.handle.connections() == 2);
    a.send_text("hello");
    assert_eq!(a.read_frame(), Frame::text("hello"), "the sender subscribes too");
    assert_eq!(b.read_frame(), Frame::text("hello"));
    // "bye" is published (to a as well) and then a is closed: the message first.
    b.send_text("bye");
    assert_eq!(a.read_frame(), Frame::text("bye"));
    assert_eq!(b.read_frame(), Frame::text("bye"));
    let close = b.read_close();
    assert_eq!(close.close_code(), Some(4000));
    assert_eq!(&close.payload[2..], b"you said bye");
    b.send_close(4000, "");
    assert!(b.wait_eof());
    wait_until("on_close for b", || closes.lock().unwrap().len() == 1);
    let (path, closed) = closes.lock().unwrap()[0].clone();
    assert_eq!(path, "/room");
    assert_eq!((closed.code, closed.clean), (4000, true));
    // a, still subscribed, is all that is left in the room.
    a.send_text("anyone?");
    assert_eq!(a.read_frame(), Frame::text("anyone?"));
}

#[test]
fn refusing_on_open_closes_at_once_after_what_was_sent() {
    let closes = Arc::new(Mutex::new(Vec::new()));
    let server = start(Room { closes: Arc::clone(&closes) });
    let mut client = RawClient::open(server.addr, "/full");
    assert_eq!(client.read_frame(), Frame::text("sorry"));
    let close = client.read_close();
    assert_eq!(close.close_code(), Some(4001));
    assert_eq!(&close.payload[2..], b"full");
    // The server does not wait for our Close: it has finished (FIN follows).
    assert!(client.wait_eof());
    wait_until("on_close", || closes.lock().unwrap().len() == 1);
    let (_, closed) = closes.lock().unwrap()[0].clone();
    assert_eq!((closed.code, closed.clean), (4001, false));
}

#[test]
fn routes_answer_with_their_status() {
    let server = start(Room { closes: Arc::default() });
    for (request, status) in [
        (upgrade_request("/secret"), "403 Forbidden"),
        (upgrade_request("/nowhere"), "404 Not Found"),
        (b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(), "200 OK"),
        // Accepted by the app, but not an upgrade: the server answers as RFC 6455 says.
        (b"GET /room HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(), "426 Upgrade Required"),
    ] {
        let mut client = RawClient::connect(server.addr);
        client.send_raw(&request);
        let response = client.read_http_response();
        assert!(response.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{response}");
    }
}

#[test]
fn the_application_hears_of_every_open_connection_when_the_server_stops() {
    let closes = Arc::new(Mutex::new(Vec::new()));
    let server = start(Room { closes: Arc::clone(&closes) });
    let _a = RawClient::open(server.addr, "/room");
    let _b = RawClient::open(server.addr, "/room");
    wait_until("both open", || server.handle.connections() == 2);
    drop(server);
    assert_eq!(closes.lock().unwrap().len(), 2);
}

/// Publishes what it hears to everyone at `/room`, and at the end of that
/// turn (just before the turn's deliveries) notifies its own loop, as a
/// thread of its own could at that moment: `on_notify` counts.
struct Notifier {
    handle: Arc<std::sync::OnceLock<ServerHandle>>,
    notified: Arc<std::sync::atomic::AtomicUsize>,
    heard: bool,
}

impl App for Notifier {
    type Conn = ();

    fn route(&mut self, _: &Request<'_, '_>) -> Route<()> {
        Route::Accept(())
    }

    fn on_open(&mut self, _: &mut (), ctx: &mut Context<'_>) {
        ctx.subscribe("room");
    }

    fn on_message(&mut self, _: &mut (), message: Message<'_>, ctx: &mut Context<'_>) {
        ctx.publish("room", message);
        self.heard = true;
    }

    fn on_turn_end(&mut self) {
        if std::mem::take(&mut self.heard)
            && let Some(handle) = self.handle.get()
        {
            handle.notify();
        }
    }

    fn on_notify(&mut self, _: &mut rust_chat::app::Hub, _: Instant) {
        self.notified.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_notify_during_a_large_delivery_is_acted_on_at_once() {
    // A delivery to more than 64 connections looks for input part way
    // through; a notify whose wake-up that look takes must still reach the
    // application at once, not at the loop's next timer (a minute away).
    let handle = Arc::new(std::sync::OnceLock::new());
    let notified = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = Notifier { handle: Arc::clone(&handle), notified: Arc::clone(&notified), heard: false };
    let config = ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
    let mut server = Server::bind(config, app).expect("bind");
    let (addr, server_handle) = (server.local_addr(), server.handle());
    let _ = handle.set(server_handle.clone());
    let thread = std::thread::spawn(move || {
        server.run().expect("event loop");
    });
    let running = Running { addr, handle: server_handle, thread: Some(thread) };
    let mut members: Vec<RawClient> = (0..200).map(|_| RawClient::open(running.addr, "/")).collect();
    for round in 1..=5 {
        members[0].send_text("hello");
        let start = Instant::now();
        while notified.load(std::sync::atomic::Ordering::Relaxed) < round {
            assert!(start.elapsed() < Duration::from_secs(5), "round {round}: the notify was not acted on");
            std::thread::sleep(Duration::from_millis(5));
        }
        for member in &mut members {
            assert_eq!(member.read_frame().payload, b"hello");
        }
    }
}
