//! The load generator: raw WebSocket frames over mio, single-threaded, so it
//! costs as little as possible per message. Frames are masked once, up front,
//! and the same bytes are sent again and again; replies are parsed only as far
//! as their headers (broadcast reads its marker from each event).
//!
//! Modes (one JSON line per run on standard output):
//!
//! - `echo`: `--conns N --inflight K --size S [--deflate]`: every connection
//!   keeps K messages of S bytes in flight; counts echoes per second.
//! - `latency`: one connection, one message in flight: round-trip percentiles.
//! - `broadcast`: `--conns N --inflight K --size S`: N members join one chat
//!   room; one of them sends with K in flight, each message carrying its
//!   sequence number and send time; counts deliveries per second, checks
//!   that one member in ten (and the sender) got every message in order, and
//!   reports fan-out latency. `--addr2 HOST:PORT`: every other member joins
//!   a second node there (rooms across nodes, `--redis`). `--room-size R`:
//!   many small rooms instead, of R members each (`r0`, `r1`, ...), the
//!   first member of each the sender, each with K in flight.
//! - `idle`: `--conns N --pid P`: opens N connections and reports the
//!   server's resident memory per connection (from /proc/P/status).
//!
//! Every run is bounded: `--seconds` of measurement after a warm-up.

use flate2::{Compress, Compression, FlushCompress};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rust_chat::protocol::frame::{DecodeRules, FrameHeader, OpCode, RSV1, WebSocketFrame};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Args {
    mode: String,
    addr: SocketAddr,
    /// A second node (broadcast): every other member joins there.
    addr2: Option<SocketAddr>,
    path: String,
    conns: usize,
    inflight: usize,
    size: usize,
    /// Broadcast: members per room (0: all in one room).
    room_size: usize,
    seconds: f64,
    warmup: f64,
    deflate: bool,
    pid: u32,
    label: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        mode: "echo".into(),
        addr: "127.0.0.1:10000".parse().unwrap(),
        addr2: None,
        path: String::new(),
        conns: 100,
        inflight: 16,
        size: 32,
        room_size: 0,
        seconds: 5.0,
        warmup: 1.0,
        deflate: false,
        pid: 0,
        label: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--mode" => args.mode = value(),
            "--addr" => args.addr = value().parse().expect("--addr HOST:PORT"),
            "--addr2" => args.addr2 = Some(value().parse().expect("--addr2 HOST:PORT")),
            "--path" => args.path = value(),
            "--conns" => args.conns = value().parse().unwrap(),
            "--inflight" => args.inflight = value().parse().unwrap(),
            "--size" => args.size = value().parse().unwrap(),
            "--room-size" => args.room_size = value().parse().unwrap(),
            "--seconds" => args.seconds = value().parse().unwrap(),
            "--warmup" => args.warmup = value().parse().unwrap(),
            "--pid" => args.pid = value().parse().unwrap(),
            "--label" => args.label = value(),
            "--deflate" => args.deflate = true,
            other => panic!("unknown flag {other}"),
        }
    }
    if args.path.is_empty() {
        args.path = if args.mode == "broadcast" { "/chat".into() } else { "/echo".into() };
    }
    args
}

/// Opens a WebSocket with a blocking handshake, then hands the socket to mio.
fn open(addr: SocketAddr, path: &str, deflate: bool) -> (TcpStream, Vec<u8>, bool) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    let extension = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; client_max_window_bits\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extension}\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("handshake read");
        assert!(n > 0, "closed during handshake");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let negotiated = head.to_ascii_lowercase().contains("permessage-deflate");
    buf.drain(..end);
    stream.set_nonblocking(true).unwrap();
    (TcpStream::from_std(stream), buf, negotiated)
}

/// A masked frame, built once.
fn client_frame(opcode: OpCode, payload: &[u8], rsv: u8) -> Vec<u8> {
    let header =
        FrameHeader { rsv, mask: Some([0x12, 0x34, 0x56, 0x78]), ..FrameHeader::new(opcode, payload.len() as u64) };
    let mut out = Vec::new();
    WebSocketFrame { header, payload: payload.to_vec() }.encode(&mut out);
    out
}

/// Raw DEFLATE of one message, as a client without context takeover sends it.
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::fast(), false, 15);
    let mut out = Vec::with_capacity(payload.len() + 1024);
    c.compress_vec(payload, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A compressible text payload of `size` bytes, like chat or JSON traffic.
fn text_payload(size: usize) -> Vec<u8> {
    let words = b"{\"type\":\"message\",\"room\":\"lobby\",\"nick\":\"guest-17\",\"text\":\"hello there, ";
    words.iter().copied().cycle().take(size).collect()
}

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    received: u64,
    /// Broadcast: the next sequence number expected.
    next_seq: u64,
}

impl Conn {
    fn flush(&mut self) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        Ok(())
    }
}

/// Parses complete server frames in `conn.inbuf`, calling `on_frame` with
/// each data frame's payload (for echo only its length matters).
fn drain_frames(conn: &mut Conn, rules: &DecodeRules, mut on_frame: impl FnMut(&[u8])) {
    let mut pos = 0;
    loop {
        if conn.skip > 0 {
            let n = (conn.skip as usize).min(conn.inbuf.len() - pos);
            pos += n;
            conn.skip -= n as u64;
            if conn.skip > 0 {
                break;
            }
            continue;
        }
        let Ok(Some((header, hl))) = FrameHeader::decode(&conn.inbuf[pos..], rules) else { break };
        let len = header.payload_len as usize;
        if header.opcode.is_control() || len > (1 << 16) {
            // Large payloads are skipped as they stream in; only count them.
            if !header.opcode.is_control() {
                conn.received += 1;
                on_frame(&[]);
            }
            pos += hl;
            conn.skip = header.payload_len;
            continue;
        }
        if conn.inbuf.len() - pos < hl + len {
            break;
        }
        conn.received += 1;
        on_frame(&conn.inbuf[pos + hl..pos + hl + len]);
        pos += hl + len;
    }
    conn.inbuf.drain(..pos);
}

/// Reads what has arrived. A read that does not fill `scratch` has drained
/// the socket (Linux epoll reports every later arrival as a new edge), so
/// the extra read that would only say `WouldBlock` is skipped: the generator
/// makes one system call per readable event instead of two.
fn read_all(conn: &mut Conn, scratch: &mut [u8]) -> io::Result<bool> {
    loop {
        match conn.stream.read(scratch) {
            Ok(0) => return Ok(false),
            Ok(n) if n < scratch.len() => {
                conn.inbuf.extend_from_slice(&scratch[..n]);
                return Ok(true);
            }
            Ok(n) => conn.inbuf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

/// The measurement loop shared by every mode: `args.warmup` seconds of
/// warm-up, then `args.seconds` counted. Each readable connection is read
/// and handed to `on_read(index, connection, counting)`, which parses what
/// arrived and queues what to send; then the connection is flushed.
/// Returns the frames received during the counted part and, with `--pid`,
/// the server's CPU time over it (seconds, user + system, all its threads).
fn measure(
    args: &Args,
    poll: &mut Poll,
    connections: &mut [Conn],
    mut on_read: impl FnMut(usize, &mut Conn, bool),
) -> (u64, f64) {
    let mut cpu_from = 0.0;
    let mut events = Events::with_capacity(4096);
    let mut scratch = vec![0u8; 256 * 1024];
    let warm_end = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.seconds);
    let mut counted_from: Option<u64> = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if counted_from.is_none() && now >= warm_end {
            counted_from = Some(connections.iter().map(|c| c.received).sum());
            cpu_from = server_cpu(args.pid);
        }
        poll.poll(&mut events, Some(end - now)).unwrap();
        for event in events.iter() {
            let i = event.token().0;
            let conn = &mut connections[i];
            if event.is_readable() {
                if !read_all(conn, &mut scratch).expect("read") {
                    panic!("server closed connection {i}");
                }
                on_read(i, conn, counted_from.is_some());
            }
            conn.flush().expect("write");
        }
    }
    let frames = connections.iter().map(|c| c.received).sum::<u64>() - counted_from.unwrap_or(0);
    (frames, server_cpu(args.pid) - cpu_from)
}

/// The server's CPU time so far, in seconds (0 without `--pid`).
fn server_cpu(pid: u32) -> f64 {
    if pid == 0 { 0.0 } else { rust_chat_bench::cpu_seconds(&pid.to_string()) }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args = parse_args();
    match args.mode.as_str() {
        "echo" | "latency" => echo(&args),
        "broadcast" => broadcast(&args),
        "idle" => idle(&args),
        other => panic!("unknown mode {other}"),
    }
}

fn echo(args: &Args) {
    let (conns, inflight) = if args.mode == "latency" { (1, 1) } else { (args.conns, args.inflight) };
    let payload = if args.deflate { text_payload(args.size) } else { vec![0x61; args.size] };
    let mut poll = Poll::new().unwrap();
    let mut connections = Vec::new();
    let mut negotiated_all = true;
    for i in 0..conns {
        let (mut stream, inbuf, negotiated) = open(args.addr, &args.path, args.deflate);
        negotiated_all &= negotiated;
        poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE).unwrap();
        connections.push(Conn { stream, inbuf, out: Vec::new(), out_pos: 0, skip: 0, received: 0, next_seq: 0 });
    }
    if args.deflate {
        assert!(negotiated_all, "the server did not accept permessage-deflate");
    }
    let frame = if args.deflate {
        client_frame(OpCode::Binary, &deflate(&payload), RSV1)
    } else {
        client_frame(OpCode::Binary, &payload, 0)
    };
    let mut rules = DecodeRules::client(u64::MAX >> 1);
    rules.allowed_rsv = RSV1;
    let timed = args.mode == "latency";
    let mut sent_at: Vec<std::collections::VecDeque<Instant>> = vec![Default::default(); conns];
    for (i, conn) in connections.iter_mut().enumerate() {
        for _ in 0..inflight {
            conn.out.extend_from_slice(&frame);
            sent_at[i].push_back(Instant::now());
        }
        let _ = conn.flush();
    }
    let mut rtts = Vec::new();
    let (total, _) = measure(args, &mut poll, &mut connections, |i, conn, counting| {
        let mut replies = 0;
        drain_frames(conn, &rules, |_| replies += 1);
        for _ in 0..replies {
            // Only the latency mode reads the clock (once per message would cost the generator).
            if timed {
                let now = Instant::now();
                if let Some(t) = sent_at[i].pop_front()
                    && counting
                {
                    rtts.push((now - t).as_secs_f64() * 1e6);
                }
                sent_at[i].push_back(now);
            }
            conn.out.extend_from_slice(&frame);
        }
    });
    let rate = total as f64 / args.seconds;
    rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{{\"mode\":\"{}\",\"label\":\"{}\",\"conns\":{conns},\"inflight\":{inflight},\"size\":{},\"deflate\":{},\"seconds\":{},\"messages\":{total},\"msgs_per_sec\":{rate:.0},\"mb_per_sec\":{:.1},\"rtt_p50_us\":{:.1},\"rtt_p99_us\":{:.1}}}",
        args.mode,
        args.label,
        args.size,
        args.deflate,
        args.seconds,
        rate * args.size as f64 / 1e6,
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99),
    );
}

/// In broadcast mode, members whose index is a multiple of this parse every
/// event (order, loss, latency); the others only count frames.
const CHECK_EVERY: usize = 10;

fn broadcast(args: &Args) {
    // One room of every member, or rooms of `room_size`; the first member of each room sends.
    let room_size = if args.room_size == 0 { args.conns.max(1) } else { args.room_size };
    let rooms = args.conns.div_ceil(room_size);
    let mut poll = Poll::new().unwrap();
    let mut connections = Vec::new();
    for i in 0..args.conns {
        let room = if rooms == 1 { "bench".to_string() } else { format!("r{}", i / room_size) };
        let path = format!("{}?room={room}&nick=m{i}", args.path);
        // With two nodes, the odd members are on the second (the sender, member 0, on the first).
        let addr = match args.addr2 {
            Some(second) if i % 2 == 1 => second,
            _ => args.addr,
        };
        let (mut stream, inbuf, _) = open(addr, &path, false);
        poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE).unwrap();
        connections.push(Conn { stream, inbuf, out: Vec::new(), out_pos: 0, skip: 0, received: 0, next_seq: 0 });
    }
    let rules = DecodeRules::client(u64::MAX >> 1);
    let base = Instant::now();
    // Message text: "b SEQ NANOS" padded to the size, so members can check order and latency.
    let message = |seq: u64| {
        let mut text = format!("b {seq} {} ", base.elapsed().as_nanos());
        while text.len() < args.size {
            text.push('x');
        }
        client_frame(OpCode::Text, text.as_bytes(), 0)
    };
    // Skip the welcome and join events: wait until every member has its
    // welcome (across nodes a welcome waits for Redis) and the joins have
    // stopped coming (300 ms without a frame; 2 s at least, 60 s at most).
    let mut scratch = vec![0u8; 256 * 1024];
    let mut events = Events::with_capacity(4096);
    let start = Instant::now();
    let mut welcomed = vec![false; connections.len()];
    let mut last_frame = Instant::now();
    loop {
        let quiet = last_frame.elapsed() >= Duration::from_millis(300);
        let all = welcomed.iter().all(|w| *w);
        if (all && quiet && start.elapsed() >= Duration::from_secs(2)) || start.elapsed() >= Duration::from_secs(60) {
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(50))).unwrap();
        for event in events.iter() {
            let i = event.token().0;
            let conn = &mut connections[i];
            let _ = read_all(conn, &mut scratch);
            drain_frames(conn, &rules, |payload| {
                last_frame = Instant::now();
                let welcome: &[u8] = b"\"type\":\"welcome\"";
                if payload.windows(welcome.len()).any(|w| w == welcome) {
                    welcomed[i] = true;
                }
            });
            conn.received = 0;
        }
    }
    eprintln!(
        "settled in {:?}: {} of {} welcomed",
        start.elapsed(),
        welcomed.iter().filter(|w| **w).count(),
        welcomed.len()
    );
    // Each room's sender numbers its own messages.
    let mut seqs = vec![0u64; rooms];
    for (room, seq) in seqs.iter_mut().enumerate() {
        let sender = &mut connections[room * room_size];
        for _ in 0..args.inflight {
            *seq += 1;
            sender.out.extend_from_slice(&message(*seq));
        }
        let _ = sender.flush();
    }
    let mut latencies = Vec::new();
    let mut out_of_order = 0u64;
    let mut sampled = 0u64;
    let (total, server_cpu) = measure(args, &mut poll, &mut connections, |i, conn, counting| {
        let mut own = 0;
        let mut next_seq = conn.next_seq;
        // Every member counts its deliveries; the senders and one member in
        // CHECK_EVERY also parse each event to check order and latency, so
        // the generator spends little per delivery.
        let sender = i % room_size == 0;
        if !sender && !i.is_multiple_of(CHECK_EVERY) {
            return drain_frames(conn, &rules, |_| {});
        }
        drain_frames(conn, &rules, |payload| {
            // Find `"text":"b SEQ NANOS`.
            let Some(at) = payload.windows(9).position(|w| w == b"\"text\":\"b") else { return };
            let mut fields = payload[at + 10..].split(|&b| b == b' ');
            let seq: u64 = std::str::from_utf8(fields.next().unwrap_or(b"")).unwrap_or("0").parse().unwrap_or(0);
            let sent: u128 = std::str::from_utf8(fields.next().unwrap_or(b"")).unwrap_or("0").parse().unwrap_or(0);
            if next_seq != 0 && seq != next_seq {
                out_of_order += 1;
            }
            next_seq = seq + 1;
            if counting && sampled.is_multiple_of(97) {
                latencies.push((base.elapsed().as_nanos() - sent) as f64 / 1000.0);
            }
            sampled += 1;
            if sender {
                own += 1;
            }
        });
        conn.next_seq = next_seq;
        let seq = &mut seqs[i / room_size];
        for _ in 0..own {
            *seq += 1;
            conn.out.extend_from_slice(&message(*seq));
        }
    });
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let sent: u64 = seqs.iter().sum();
    println!(
        "{{\"mode\":\"broadcast\",\"label\":\"{}\",\"members\":{},\"rooms\":{rooms},\"inflight\":{},\"size\":{},\"seconds\":{},\"deliveries\":{total},\"deliveries_per_sec\":{:.0},\"sent\":{sent},\"out_of_order_or_lost\":{out_of_order},\"latency_p50_us\":{:.1},\"latency_p99_us\":{:.1},\"server_cpu_s\":{server_cpu:.2},\"server_ns_per_delivery\":{:.1}}}",
        args.label,
        args.conns,
        args.inflight,
        args.size,
        args.seconds,
        total as f64 / args.seconds,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        server_cpu * 1e9 / total.max(1) as f64,
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server /proc status");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn idle(args: &Args) {
    assert!(args.pid != 0, "--pid SERVER_PID is needed to read its memory");
    let before = rss_kib(args.pid);
    let mut held = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        held.push(open(args.addr, &args.path, false).0);
    }
    // Let the server settle (every handshake flushed) before reading.
    std::thread::sleep(Duration::from_secs_f64(args.warmup.max(1.0)));
    let after = rss_kib(args.pid);
    let per = (after.saturating_sub(before)) as f64 / args.conns as f64;
    println!(
        "{{\"mode\":\"idle\",\"label\":\"{}\",\"conns\":{},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"kib_per_conn\":{per:.3}}}",
        args.label, args.conns
    );
    drop(held);
}
