//! How evenly the kernel spreads connections over `SO_REUSEPORT` workers.
//!
//!     cd bench && cargo run --release --bin spread -- [WORKERS] [CONNECTIONS...]
//!
//! Starts `rust_chat::server::Workers` with the echo app in this process (on
//! a free loopback port), opens each number of connections in turn (and
//! completes their handshakes), reads every worker's connection count, and
//! prints them with the largest share over the mean. Bounded: at most the
//! connections asked for (two descriptors each, both ends being here),
//! closed before the next count.

use rust_chat::echo::Echo;
use rust_chat::server::{ServerConfig, Workers};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().map_or(4, |n| n.parse().expect("WORKERS is a number"));
    let mut counts: Vec<usize> = args.map(|n| n.parse().expect("CONNECTIONS are numbers")).collect();
    if counts.is_empty() {
        counts = vec![16, 64, 256, 1000, 5000];
    }
    let config = ServerConfig { bind: "127.0.0.1:0".parse().unwrap(), ..ServerConfig::default() };
    let running = Workers::start(config, workers, false, |_| Echo).expect("start the workers");
    let addr = running.local_addr();
    println!("{workers} workers on {addr}");
    for n in counts {
        let clients: Vec<TcpStream> = (0..n)
            .map(|_| {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(
                    b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                )
                .expect("request");
                s
            })
            .collect();
        for mut s in &clients {
            let mut head = [0u8; 512];
            let _ = s.read(&mut head).expect("101");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let per_worker = loop {
            let per: Vec<usize> = running.handles().iter().map(|h| h.connections()).collect();
            if per.iter().sum::<usize>() >= n || Instant::now() > deadline {
                break per;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mean = n as f64 / workers as f64;
        let max = per_worker.iter().copied().max().unwrap_or(0);
        let min = per_worker.iter().copied().min().unwrap_or(0);
        println!(
            "{n:6} connections: {per_worker:?}  min {min}, max {max}: the busiest has {:.2}x its share",
            max as f64 / mean
        );
        drop(clients);
        let deadline = Instant::now() + Duration::from_secs(10);
        while running.handles().iter().map(|h| h.connections()).sum::<usize>() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for handle in running.handles() {
        handle.stop();
    }
    let _ = running.wait();
}
