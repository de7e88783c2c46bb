//! `GET /metrics` and `GET /healthz`: a scripted session moves every counter
//! by exactly what happened in it (every byte each socket sent and received
//! is counted here too), a slow consumer is counted, `--metrics-bind` moves
//! both endpoints to their own port, `/healthz` turns 503 while the server
//! drains, and the output parses with Prometheus' own Python parser.

mod common;

use common::{PATIENCE, Spawned, TestServer};
use rust_chat::app::{App, Context, Message, Request, Route};
use rust_chat::server::{MetricsEndpoint, Server, ServerConfig};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A socket that counts what it sends and receives.
struct Counted {
    stream: TcpStream,
    sent: usize,
    received: Vec<u8>,
}

impl Counted {
    fn connect(addr: SocketAddr) -> Counted {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Counted { stream, sent: 0, received: Vec::new() }
    }

    /// (bytes sent, bytes received) so far.
    fn tally(&self) -> (usize, usize) {
        (self.sent, self.received.len())
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
        self.sent += bytes.len();
    }

    /// Reads until the response head has arrived (for a WebSocket, the 101).
    fn read_head(&mut self) -> String {
        while !self.received.windows(4).any(|w| w == b"\r\n\r\n") {
            self.fill();
        }
        let end = self.received.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        String::from_utf8_lossy(&self.received[..end]).into_owned()
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).expect("read");
        self.received.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads until the server closes.
    fn read_to_end(&mut self) {
        while self.fill() > 0 {}
    }

    /// The data frames the server sent after its 101 (reads to the end first).
    fn data_frames(&mut self) -> Vec<(u8, Vec<u8>)> {
        self.read_to_end();
        let head = self.received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut rest = &self.received[head..];
        let mut frames = Vec::new();
        while rest.len() >= 2 {
            let opcode = rest[0] & 0x0f;
            let (len, at) = match rest[1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                127 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize, 10),
                n => (usize::from(n), 2),
            };
            if opcode == 0x1 || opcode == 0x2 {
                frames.push((opcode, rest[at..at + len].to_vec()));
            }
            rest = &rest[at + len..];
        }
        assert!(rest.is_empty(), "a partial frame at the end");
        frames
    }
}

fn upgrade(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    common::client_frame(true, opcode, payload, [1, 2, 3, 4])
}

fn close_1000() -> Vec<u8> {
    frame(0x8, &1000u16.to_be_bytes())
}

/// One scrape: what its socket sent and got, and the series it listed.
struct Scrape {
    tally: (usize, usize),
    body: String,
    series: HashMap<String, f64>,
    head: String,
}

fn scrape_at(addr: SocketAddr, path: &str) -> Scrape {
    let mut socket = Counted::connect(addr);
    socket.send(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes());
    socket.read_to_end();
    let text = String::from_utf8(socket.received.clone()).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let metrics = head.contains("Content-Type: text/plain; version=0.0.4");
    let series = body
        .lines()
        .filter(|_| metrics)
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect();
    Scrape { tally: socket.tally(), body: body.to_string(), series, head: head.to_string() }
}

fn scrape(addr: SocketAddr) -> Scrape {
    let scrape = scrape_at(addr, "/metrics");
    assert!(scrape.head.starts_with("HTTP/1.1 200 "), "{}", scrape.head);
    scrape
}

impl Scrape {
    fn get(&self, name: &str) -> f64 {
        self.series.get(name).copied().unwrap_or(0.0)
    }
}

/// What moved between two scrapes, for the series named.
fn delta(before: &Scrape, after: &Scrape, name: &str) -> f64 {
    after.get(name) - before.get(name)
}

/// The binary's defaults (`/metrics` on the main port among them), changed by `change`.
fn metrics_config(change: impl FnOnce(&mut rust_chat::Config)) -> rust_chat::Config {
    common::config(|c| {
        assert_eq!(c.server.metrics, MetricsEndpoint::MainPort);
        change(c);
    })
}

#[test]
fn a_scripted_session_moves_each_counter_by_exactly_what_happened() {
    let server = TestServer::with_config(metrics_config(|c| {
        // Two messages use up the burst: the second pauses the member's input, once.
        c.chat.rate_limit_burst = 2;
        c.chat.rate_limit_per_sec = 1;
    }));
    let addr = server.addr;
    let first = scrape(addr);
    let mut sockets: Vec<(usize, usize)> = Vec::new();

    // Echo: three texts and a binary, then a clean close.
    let mut echo = Counted::connect(addr);
    echo.send(&upgrade("/echo", ""));
    for text in ["one", "two", "three"] {
        echo.send(&frame(0x1, text.as_bytes()));
    }
    echo.send(&frame(0x2, &[0, 1, 2, 3]));
    echo.send(&close_1000());
    let echoed = echo.data_frames();
    assert_eq!(echoed.len(), 4, "the echo sent each message back");
    sockets.push(echo.tally());

    // The chat: a member alone in a new room says something and asks /who.
    let mut member = Counted::connect(addr);
    member.send(&upgrade("/chat?nick=alice&room=metrics", ""));
    member.read_head();
    while !String::from_utf8_lossy(&member.received).contains("\"welcome\"") {
        member.fill();
    }
    // While it is in its room: two rooms (the lobby too), one open connection.
    // (Other workers publish their connection counts at the end of each turn:
    // a scrape may see one a turn behind, so look until it has caught up.)
    let start = Instant::now();
    let during = loop {
        let during = scrape(addr);
        sockets.push(during.tally);
        if during.get("rust_chat_connections{state=\"handshake\"}") == 1.0 || start.elapsed() > PATIENCE {
            break during;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let shown: Vec<_> = during.series.iter().filter(|(k, _)| k.contains("connections")).collect();
    assert_eq!(during.get("rust_chat_connections{state=\"handshake\"}"), 1.0, "the scrape itself: {shown:?}");
    assert_eq!(during.get("rust_chat_rooms"), 2.0);
    assert_eq!(during.get("rust_chat_room_members_count"), 2.0);
    assert_eq!(during.get("rust_chat_room_members_sum"), 1.0);
    assert_eq!(during.get("rust_chat_room_members_bucket{le=\"0\"}"), 1.0, "the empty lobby");
    assert_eq!(during.get("rust_chat_room_members_bucket{le=\"1\"}"), 2.0);
    assert_eq!(during.get("rust_chat_connections{state=\"open\"}"), 1.0);
    member.send(&frame(0x1, b"hello"));
    member.send(&frame(0x1, b"/who"));
    member.send(&close_1000());
    let chat_frames = member.data_frames().len();
    assert!(chat_frames >= 3, "welcome, its message, the /who answer: {chat_frames}");
    sockets.push(member.tally());

    // A connection that opens and then just goes: 1006.
    let mut gone = Counted::connect(addr);
    gone.send(&upgrade("/echo", ""));
    gone.read_head();
    drop(gone.stream.shutdown(std::net::Shutdown::Both));
    gone.read_to_end();
    sockets.push(gone.tally());

    // Refusals: nothing at the path, a foreign page, a GET that is no upgrade.
    let mut statuses: HashMap<u16, u32> = HashMap::new();
    for request in [
        upgrade("/nothing-here", ""),
        upgrade("/echo", "Origin: http://evil.example\r\n"),
        b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
    ] {
        let mut refused = Counted::connect(addr);
        refused.send(&request);
        refused.read_to_end();
        let head = String::from_utf8_lossy(&refused.received).into_owned();
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
        assert!(status >= 400, "{head}");
        *statuses.entry(status).or_default() += 1;
        sockets.push(refused.tally());
    }
    assert_eq!(statuses.len(), 3, "three different refusals: {statuses:?}");

    assert!(server.wait_for_connections(0, PATIENCE), "everyone has gone");
    let last = scrape(addr);
    let d = |name: &str| delta(&first, &last, name);
    assert_eq!(d("rust_chat_connections_opened_total"), 3.0, "echo, member, the one that went");
    assert_eq!(d("rust_chat_messages_received_total"), 6.0, "4 echoed, 2 from the member");
    assert_eq!(d("rust_chat_messages_sent_total"), (4 + chat_frames) as f64);
    assert_eq!(d("rust_chat_closes_total{code=\"1000\"}"), 2.0);
    assert_eq!(d("rust_chat_closes_total{code=\"1006\"}"), 1.0);
    for (status, n) in &statuses {
        assert_eq!(d(&format!("rust_chat_handshake_failures_total{{status=\"{status}\"}}")), f64::from(*n));
    }
    let failures: f64 =
        last.series.iter().filter(|(k, _)| k.starts_with("rust_chat_handshake_failures_total")).map(|(_, v)| v).sum();
    assert_eq!(failures, 3.0, "the scrapes (200) are not failures");
    assert_eq!(d("rust_chat_rate_limited_total"), 1.0);
    assert_eq!(d("rust_chat_slow_consumer_closes_total"), 0.0);
    // Every byte: what the first scrape sent and got (counted once it was
    // answered), and every socket of the script; not the last scrape's own.
    let sent: usize = first.tally.0 + sockets.iter().map(|s| s.0).sum::<usize>();
    let received: usize = first.tally.1 + sockets.iter().map(|s| s.1).sum::<usize>();
    assert_eq!(d("rust_chat_bytes_received_total"), sent as f64);
    assert_eq!(d("rust_chat_bytes_sent_total"), received as f64);
    // Now only the scrape is there, still sending its request as the server sees it.
    assert_eq!(last.get("rust_chat_connections{state=\"open\"}"), 0.0);
    assert_eq!(last.get("rust_chat_connections{state=\"closing\"}"), 0.0);
    assert_eq!(last.get("rust_chat_connections{state=\"handshake\"}"), 1.0);
    assert_eq!(last.get("rust_chat_rooms"), 1.0, "the room went with its member");
    // The workers' series add up to the totals.
    let workers = last.get("rust_chat_workers");
    assert_eq!(workers, common::test_workers() as f64);
    let per_worker: f64 = (0..workers as usize)
        .map(|w| last.get(&format!("rust_chat_worker_messages_received_total{{worker=\"{w}\"}}")))
        .sum();
    assert_eq!(per_worker, last.get("rust_chat_messages_received_total"));
    assert!(last.head.contains("Content-Type: text/plain; version=0.0.4"), "{}", last.head);
}

#[test]
fn healthz_answers_200_on_the_main_port() {
    let server = TestServer::with_config(metrics_config(|_| {}));
    let health = scrape_at(server.addr, "/healthz");
    assert!(health.head.starts_with("HTTP/1.1 200 "), "{}", health.head);
    assert_eq!(health.body, "ok\n");
    // Without the setting (the library's default), both paths are the application's.
    let config = ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
    let mut plain = Server::bind(config, rust_chat::echo_and_chat(Default::default())).unwrap();
    let (addr, handle) = (plain.local_addr(), plain.handle());
    let thread = std::thread::spawn(move || plain.run().unwrap());
    assert!(scrape_at(addr, "/metrics").head.starts_with("HTTP/1.1 404 "));
    assert!(scrape_at(addr, "/healthz").head.starts_with("HTTP/1.1 404 "));
    handle.stop();
    thread.join().unwrap();
}

/// Publishes every message to the topic `t`; `/sub` subscribes to it, `/pub` does not.
struct Fanout;

impl App for Fanout {
    /// Whether the connection subscribes.
    type Conn = bool;

    fn route(&mut self, request: &Request<'_, '_>) -> Route<bool> {
        match request.path() {
            "/sub" => Route::Accept(true),
            "/pub" => Route::Accept(false),
            _ => Route::NotFound,
        }
    }

    fn on_open(&mut self, subscriber: &mut bool, ctx: &mut Context<'_>) {
        if *subscriber {
            ctx.subscribe("t");
        }
    }

    fn on_message(&mut self, _: &mut bool, message: Message<'_>, ctx: &mut Context<'_>) {
        ctx.publish("t", message);
    }
}

#[test]
fn a_slow_consumer_is_counted_in_an_application_of_ones_own() {
    let mut config = ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
    config.metrics = MetricsEndpoint::MainPort;
    config.connection.max_outgoing_bytes = 256 << 10;
    config.connection.slow_consumer_grace = Duration::from_millis(100);
    let mut server = Server::bind(config, Fanout).unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let thread = std::thread::spawn(move || server.run().unwrap());

    // A subscriber with a small receive window that never reads.
    let stalled = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stalled.set_recv_buffer_size(4096).unwrap();
    stalled.connect(&addr.into()).unwrap();
    let mut stalled: TcpStream = stalled.into();
    stalled.write_all(&upgrade("/sub", "")).unwrap();
    let mut publisher = Counted::connect(addr);
    publisher.send(&upgrade("/pub", ""));
    publisher.read_head();
    let big = vec![7u8; 512 << 10];
    let start = Instant::now();
    let mut closed = 0.0;
    while closed == 0.0 {
        assert!(start.elapsed() < PATIENCE, "the stalled subscriber was never closed");
        publisher.send(&frame(0x2, &big));
        closed = scrape(addr).get("rust_chat_slow_consumer_closes_total");
    }
    let last = scrape(addr);
    assert_eq!(last.get("rust_chat_slow_consumer_closes_total"), 1.0);
    assert_eq!(last.get("rust_chat_closes_total{code=\"1008\"}"), 1.0);
    assert_eq!(last.get("rust_chat_connections_opened_total"), 2.0);
    // An application without a report of its own adds nothing.
    assert!(!last.series.keys().any(|k| k.starts_with("rust_chat_rooms")));
    handle.stop();
    thread.join().unwrap();
}

/// A free port on loopback (there is a small window for someone else to take it).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[test]
fn metrics_bind_moves_both_endpoints_and_healthz_turns_503_while_draining() {
    let metrics = free_port();
    let at = metrics.to_string();
    let mut server = Spawned::start(&["--metrics-bind", &at, "--drain-timeout", "3s"]);
    assert!(scrape_at(server.addr, "/metrics").head.starts_with("HTTP/1.1 404 "), "not on the main port");
    assert!(scrape_at(server.addr, "/healthz").head.starts_with("HTTP/1.1 404 "));
    let scraped = scrape(metrics);
    assert!(scraped.series.contains_key("rust_chat_connections_opened_total"));
    assert!(scrape_at(metrics, "/chat").head.starts_with("HTTP/1.1 404 "), "nothing else on the metrics port");
    assert!(scrape_at(metrics, "/healthz").head.starts_with("HTTP/1.1 200 "));

    // A member that will not answer the server's Close keeps the drain going.
    let mut member = common::RawClient::open(server.addr, "/chat");
    let _welcome = member.read_frame();
    server.signal("TERM");
    let start = Instant::now();
    loop {
        let health = scrape_at(metrics, "/healthz");
        if health.head.starts_with("HTTP/1.1 503 ") {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "healthz never said 503: {}", health.head);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still scraped while draining: the member is still there (open until it
    // answers the server's Close: a close the server starts counts as open
    // until then), and the scrape is the one handshake.
    let draining = scrape(metrics);
    let state = |s: &str| draining.get(&format!("rust_chat_connections{{state=\"{s}\"}}"));
    assert_eq!((state("open") + state("closing"), state("handshake")), (1.0, 1.0), "{}", draining.body);
    member.send_close(1001, "");
    drop(member);
    assert_eq!(server.wait_exit(PATIENCE), Some(0));
}

#[test]
fn metrics_parse_with_prometheus_own_parser() {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv/bin/python");
    let has_parser = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import prometheus_client"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_parser {
        assert!(std::env::var_os("CI").is_none(), "prometheus_client is missing from target/interop-venv under CI");
        eprintln!(
            "\n*** SKIPPED: target/interop-venv/bin/pip install prometheus-client (the Prometheus text parser) ***\n"
        );
        return;
    }
    let server = TestServer::with_config(metrics_config(|_| {}));
    let mut member = common::RawClient::open(server.addr, "/chat?room=parsed");
    let _welcome = member.read_frame();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/parse_metrics.py");
    let output = std::process::Command::new(&python)
        .arg(script)
        .arg(format!("http://{}/metrics", server.addr))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for family in [
        "rust_chat_connections gauge",
        "rust_chat_connections_opened counter",
        "rust_chat_closes counter",
        "rust_chat_messages_received counter",
        "rust_chat_messages_sent counter",
        "rust_chat_bytes_received counter",
        "rust_chat_bytes_sent counter",
        "rust_chat_handshake_failures counter",
        "rust_chat_slow_consumer_closes counter",
        "rust_chat_rate_limited counter",
        "rust_chat_rooms gauge",
        "rust_chat_room_members histogram",
    ] {
        assert!(stdout.lines().any(|line| line == family), "{family} not parsed:\n{stdout}");
    }
    assert!(stdout.lines().any(|line| line == "rust_chat_rooms 2" || line == "rust_chat_rooms 2.0"), "{stdout}");
}
