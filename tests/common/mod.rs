//! Test helpers: a server on a free port, and a raw WebSocket client written
//! from RFC 6455 on a plain `TcpStream`, independent of the crate's own codec,
//! so the tests check the server against the RFC and not against itself.
#![allow(dead_code)]

pub mod redis;
pub mod tls;
pub mod webdriver;

use rust_chat::{Config, Server, ServerHandle, echo_and_chat};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CONTINUATION: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// How long any single wait in a test may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A server running on its own thread, bound to `127.0.0.1:0`, stopped on
/// drop. With `RUST_CHAT_TEST_WORKERS=N` (N > 1) it is N workers with one chat
/// (what `--workers N` runs), so that the same tests check both.
pub struct TestServer {
    pub addr: SocketAddr,
    handles: Vec<ServerHandle>,
    thread: Option<JoinHandle<()>>,
}

/// The workers `RUST_CHAT_TEST_WORKERS` asks the test servers for (1 by default).
pub fn test_workers() -> usize {
    std::env::var("RUST_CHAT_TEST_WORKERS").ok().and_then(|n| n.parse().ok()).unwrap_or(1)
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with_config(Config::default())
    }

    pub fn with_config(config: Config) -> TestServer {
        TestServer::at("127.0.0.1:0".parse().unwrap(), config)
    }

    /// A server on a given address (to restart one where clients expect it).
    pub fn at(addr: SocketAddr, config: Config) -> TestServer {
        let mut config = config;
        config.server.bind = addr;
        let workers = test_workers();
        if workers > 1 {
            let (running, _chat) = rust_chat::echo_and_chat_workers(config, workers, false).expect("bind");
            let (addr, handles) = (running.local_addr(), running.handles().to_vec());
            let thread = std::thread::spawn(move || {
                running.wait().expect("workers");
            });
            return TestServer { addr, handles, thread: Some(thread) };
        }
        let mut server = Server::bind(config.server, echo_and_chat(config.chat)).expect("bind");
        let addr = server.local_addr();
        let handles = vec![server.handle()];
        let thread = std::thread::spawn(move || {
            server.run().expect("event loop");
        });
        TestServer { addr, handles, thread: Some(thread) }
    }

    /// Open connections over all its workers (each as of its last turn).
    pub fn connections(&self) -> usize {
        self.handles.iter().map(ServerHandle::connections).sum()
    }

    /// Waits until the server has exactly `n` open connections.
    pub fn wait_for_connections(&self, n: usize, within: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.connections() == n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handles.iter().for_each(ServerHandle::stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The path of example `name`, built (in the test profile) if it is not current.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo");
    assert!(status.success(), "cargo build --example {name}");
    // Tests run from target/debug/deps; examples are built into target/debug/examples.
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|deps| deps.parent()).unwrap().join("examples").join(name)
}

/// The default configuration, changed by `change`.
pub fn config(change: impl FnOnce(&mut Config)) -> Config {
    with(Config::default(), change)
}

/// The default configuration with the chat's rate limit off (tests that send bursts).
pub fn no_rate_limit() -> Config {
    config(|c| c.chat.rate_limit_per_sec = 0)
}

/// `config`, changed by `change`.
pub fn with(mut config: Config, change: impl FnOnce(&mut Config)) -> Config {
    change(&mut config);
    config
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn text(s: &str) -> Frame {
        Frame { fin: true, opcode: TEXT, payload: s.as_bytes().to_vec() }
    }

    pub fn binary(b: &[u8]) -> Frame {
        Frame { fin: true, opcode: BINARY, payload: b.to_vec() }
    }

    /// The close code of a Close frame, if it has one.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, CLOSE, "not a close frame: {self:?}");
        match self.payload.as_slice() {
            [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        }
    }
}

/// A masked client frame, exactly as RFC 6455 §5.2 lays it out.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// The upgrade request for `path`, with the RFC's sample key.
pub fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A WebSocket client on a raw `TcpStream`.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    next_key: u32,
}

impl RawClient {
    /// A TCP connection with no handshake yet.
    pub fn connect(addr: SocketAddr) -> RawClient {
        RawClient::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// A client on a stream connected some other way.
    pub fn from_stream(stream: TcpStream) -> RawClient {
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        RawClient { stream, buf: Vec::new(), next_key: 0x1234_5678 }
    }

    /// Connects and completes the opening handshake on `path`.
    pub fn open(addr: SocketAddr, path: &str) -> RawClient {
        let mut client = RawClient::connect(addr);
        client.send_raw(&upgrade_request(path));
        let head = client.read_http_head();
        assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{head}");
        // RFC 6455 §1.3: the accept value for the sample key.
        assert!(head.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
        client
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    fn key(&mut self) -> [u8; 4] {
        self.next_key = self.next_key.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        self.next_key.to_be_bytes()
    }

    /// The bytes of a masked frame with a fresh key.
    pub fn frame_bytes(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = self.key();
        client_frame(fin, opcode, payload, key)
    }

    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let bytes = self.frame_bytes(fin, opcode, payload);
        self.send_raw(&bytes);
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, TEXT, text.as_bytes());
    }

    pub fn send_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send_frame(true, CLOSE, &payload);
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads an HTTP response head (through the blank line).
    pub fn read_http_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8(head).expect("ASCII head");
            }
            assert!(self.fill().expect("read head") > 0, "EOF before the end of the head");
        }
    }

    /// Reads a whole HTTP response (head and body) until the server closes.
    pub fn read_http_response(&mut self) -> String {
        while self.fill().map(|n| n > 0).unwrap_or(false) {}
        String::from_utf8(std::mem::take(&mut self.buf)).expect("UTF-8 response")
    }

    /// Parses one server frame from the buffer (unmasked, per §5.1).
    fn parse_frame(&mut self) -> Option<Frame> {
        let (rsv1, frame) = self.parse_frame_rsv()?;
        assert!(!rsv1, "server set RSV1 without permessage-deflate");
        Some(frame)
    }

    /// Parses one server frame, returning whether RSV1 (compressed) was set.
    fn parse_frame_rsv(&mut self) -> Option<(bool, Frame)> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[0] & 0x30, 0, "server set RSV2 or RSV3");
        let rsv1 = b[0] & 0x40 != 0;
        assert_eq!(b[1] & 0x80, 0, "server frames must not be masked");
        let (len, start) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        // §5.2: the minimal length encoding.
        match start {
            4 => assert!(len >= 126, "non-minimal 16-bit length"),
            10 => assert!(len > 0xFFFF, "non-minimal 64-bit length"),
            _ => {}
        }
        if b.len() < start + len {
            return None;
        }
        let frame = Frame { fin: b[0] & 0x80 != 0, opcode: b[0] & 0x0F, payload: b[start..start + len].to_vec() };
        self.buf.drain(..start + len);
        Some((rsv1, frame))
    }

    /// Reads the next frame, which may be compressed: (RSV1 set, frame).
    pub fn read_frame_with_rsv(&mut self) -> (bool, Frame) {
        loop {
            if let Some(frame) = self.parse_frame_rsv() {
                return frame;
            }
            assert!(self.fill().expect("a frame from the server") > 0, "EOF before a frame");
        }
    }

    /// Reads the next frame, failing the test if none comes within `PATIENCE`.
    pub fn read_frame(&mut self) -> Frame {
        self.try_read_frame().expect("a frame from the server")
    }

    /// Reads the next frame; `None` on EOF or timeout.
    pub fn try_read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.parse_frame() {
                return Some(frame);
            }
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads frames until a Close arrives and returns it (data frames before it are skipped).
    pub fn read_close(&mut self) -> Frame {
        loop {
            let frame = self.read_frame();
            if frame.opcode == CLOSE {
                return frame;
            }
        }
    }

    /// Whether the server closes TCP (EOF) within `PATIENCE`, with nothing else arriving.
    pub fn wait_eof(&mut self) -> bool {
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            match self.fill() {
                Ok(0) => return self.buf.is_empty(),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return self.buf.is_empty(),
                Err(_) => return false,
            }
        }
        false
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// A chat client on the raw protocol: text frames out, JSON events in.
pub struct ChatClient {
    pub raw: RawClient,
}

impl ChatClient {
    /// Opens `/chat?QUERY` and returns the client with its `welcome` event.
    pub fn join(addr: SocketAddr, query: &str) -> (ChatClient, serde_json::Value) {
        let path = if query.is_empty() { "/chat".to_string() } else { format!("/chat?{query}") };
        let mut client = ChatClient { raw: RawClient::open(addr, &path) };
        let welcome = client.event();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (client, welcome)
    }

    pub fn say(&mut self, text: &str) {
        self.raw.send_text(text);
    }

    /// The next event (a text frame of JSON).
    pub fn event(&mut self) -> serde_json::Value {
        let frame = self.raw.read_frame();
        assert_eq!(frame.opcode, TEXT, "chat events are text frames: {frame:?}");
        serde_json::from_slice(&frame.payload).expect("a JSON event")
    }

    /// The next event, which must be of type `kind`.
    pub fn expect(&mut self, kind: &str) -> serde_json::Value {
        let event = self.event();
        assert_eq!(event["type"], kind, "{event}");
        event
    }

    /// Skips events until one of type `kind` arrives.
    pub fn until(&mut self, kind: &str) -> serde_json::Value {
        loop {
            let event = self.event();
            if event["type"] == kind {
                return event;
            }
        }
    }
}

/// A log with its colour codes (if any) taken out.
pub fn plain(log: &str) -> String {
    let mut out = String::new();
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

/// The `rust-chat` binary, started on a free port with `args`; killed on drop.
/// Its log (standard error) goes to a file that [`Spawned::log`] reads.
pub struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
    log: std::path::PathBuf,
    /// Its own data directory (RUST_CHAT_DATA_DIR), so that servers started
    /// at once do not share one store; removed on drop.
    data: std::path::PathBuf,
}

impl Spawned {
    pub fn start(args: &[&str]) -> Spawned {
        Spawned::start_limited(None, args)
    }

    /// Starts it with `ulimit -n files` when `files` is given.
    pub fn start_limited(files: Option<u32>, args: &[&str]) -> Spawned {
        Spawned::binary(files, args, "info")
    }

    /// Starts it with `RUST_LOG=level`.
    pub fn start_logging(level: &str, args: &[&str]) -> Spawned {
        Spawned::binary(None, args, level)
    }

    /// The rust-chat binary, with `--workers N` when `RUST_CHAT_TEST_WORKERS`
    /// asks for it (and the arguments do not say already).
    fn binary(files: Option<u32>, args: &[&str], log_level: &str) -> Spawned {
        let workers = test_workers().to_string();
        let mut all: Vec<&str> = args.to_vec();
        if test_workers() > 1 && !args.contains(&"--workers") {
            all.extend(["--workers", &workers]);
        }
        Spawned::program(env!("CARGO_BIN_EXE_rust-chat"), files, &all, log_level)
    }

    /// Starts an example program (`examples/NAME.rs`), built first so that it is current.
    pub fn example(name: &str, args: &[&str]) -> Spawned {
        let binary = example_binary(name);
        Spawned::program(binary.to_str().unwrap(), None, args, "info")
    }

    /// Starts the binary with these environment variables (and no `--bind`
    /// of its own: give the address in `env` or `args`).
    pub fn start_env(env: &[(&str, &str)], args: &[&str]) -> Spawned {
        Spawned::launch(env!("CARGO_BIN_EXE_rust-chat"), None, args, "info", env)
    }

    fn program(binary: &str, files: Option<u32>, args: &[&str], log_level: &str) -> Spawned {
        let mut all = vec!["--bind", "127.0.0.1:0"];
        all.extend(args);
        Spawned::launch(binary, files, &all, log_level, &[])
    }

    fn launch(binary: &str, files: Option<u32>, args: &[&str], log_level: &str, env: &[(&str, &str)]) -> Spawned {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("rust-chat-test-{}-{n}.log", std::process::id()));
        let data = std::env::temp_dir().join(format!("rust-chat-test-{}-{n}-data", std::process::id()));
        let mut command = match files {
            Some(files) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {files} && exec \"$0\" \"$@\""), binary]);
                c
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(args)
            .env("RUST_CHAT_DATA_DIR", &data)
            .envs(env.iter().copied())
            .env("RUST_LOG", log_level)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|err| panic!("start {binary}: {err}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.split("://").nth(1).and_then(|rest| rest.split('/').next()).expect("the URL").parse().unwrap();
        Spawned { child, addr, log, data }
    }

    /// (current, peak) resident memory of the server process, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap()
                .parse()
                .unwrap()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Sends a signal (`TERM`, `INT`) to the server.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits up to `within` for the server to exit; its exit code, if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
