//! A `redis-server` of the test's own on a free port (with its append-only
//! file on, as production runs it), and a blocking driver for the sans-IO
//! Redis connection. `.ci/run` installs `redis-server`; elsewhere the tests
//! that need it skip loudly when it is missing (and fail under CI).

use rust_chat::broker::resp::{Event, Resp, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of our own, stopped on drop.
pub struct RedisServer {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts one (with its append-only file in `dir`), or `None` outside CI when there is none.
    pub fn start(dir: Option<PathBuf>) -> Option<RedisServer> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "redis-server is missing under CI (.ci/run installs it)");
            eprintln!("\n*** SKIPPED redis test: apt-get install redis-server ***\n");
            return None;
        }
        let dir = dir.unwrap_or_else(|| {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("rust-chat-redis-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        Some(RedisServer { child: spawn(addr, &dir), addr, dir })
    }

    /// Stops it (SHUTDOWN, so the append-only file is complete) and starts it again on the same files.
    pub fn restart(mut self) -> RedisServer {
        self.stop();
        self.child = spawn(self.addr, &self.dir);
        self
    }

    /// Stops it as an operator would (SHUTDOWN: the append-only file is complete).
    pub fn stop(&mut self) {
        let mut conn = Conn::connect(self.addr, false);
        conn.resp.command(0, &[b"SHUTDOWN"]);
        conn.flush();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and files (after [`stop`](Self::stop)).
    pub fn start_again(&mut self) {
        self.child = spawn(self.addr, &self.dir);
    }
}

/// Starts `redis-server` on `addr` with its append-only file in `dir`, and waits until it answers.
fn spawn(addr: SocketAddr, dir: &std::path::Path) -> Child {
    let port = addr.port().to_string();
    let child = Command::new("redis-server")
        .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking driver for the sans-IO connection (the test's, not the server's).
pub struct Conn {
    stream: TcpStream,
    pub resp: Resp<u64>,
    events: Vec<Event<u64>>,
}

impl Conn {
    pub fn connect(addr: SocketAddr, subscriber: bool) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let resp = Resp::new(16 << 20);
        let resp = if subscriber { resp.subscriber() } else { resp };
        Conn { stream, resp, events: Vec::new() }
    }

    pub fn flush(&mut self) {
        let out = self.resp.output().to_vec();
        self.stream.write_all(&out).unwrap();
        self.resp.written(out.len());
    }

    /// Reads until `n` events have arrived; returns them.
    pub fn events(&mut self, n: usize) -> Vec<Event<u64>> {
        self.flush();
        let mut buf = [0u8; 65536];
        while self.events.len() < n {
            let got = self.stream.read(&mut buf).unwrap();
            assert!(got > 0, "redis closed the connection");
            self.resp.feed(&buf[..got], &mut self.events).unwrap();
        }
        self.events.drain(..n).collect()
    }

    pub fn reply(&mut self) -> Value {
        match self.events(1).pop() {
            Some(Event::Reply(_, value)) => value,
            other => panic!("not a reply: {other:?}"),
        }
    }
}

impl RedisServer {
    /// The URL a node is given (`--redis`).
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Runs one command and returns its reply.
    pub fn command(&self, args: &[&[u8]]) -> Value {
        let mut conn = Conn::connect(self.addr, false);
        conn.resp.command(0, args);
        conn.reply()
    }
}
