//! The disk store alone (`rust_chat::server::store::DiskStore`), as the chat
//! will drive it: one batch in flight, the next gathered meanwhile. Prints,
//! for each fsync mode and batch size, messages and commits per second and
//! the commit latency (handed over → outcome seen).
//!
//! `cargo run --release --bin storebench -- [DIR] [SECONDS]` (DIR defaults to
//! a fresh directory under /tmp, removed afterwards; 3 s a row).

use rust_chat::broker::store::{Batch, Fsync, Record, RoomState, Store, StoreOptions};
use rust_chat::server::store::DiskStore;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let base =
        args.next().map_or_else(|| std::env::temp_dir().join(format!("storebench-{}", std::process::id())), Into::into);
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let event: Arc<str> = Arc::from(format!(
        "{{\"type\":\"message\",\"room\":\"r\",\"nick\":\"guest-1\",\"text\":\"{}\",\"time\":1,\"seq\":1}}",
        "x".repeat(60)
    ));
    println!("{:<7} {:>6} {:>12} {:>10} {:>9} {:>9}", "fsync", "batch", "msgs/s", "commits/s", "p50 ms", "p99 ms");
    for fsync in [Fsync::Never, Fsync::Batch, Fsync::Always] {
        for per_batch in [1usize, 16, 256] {
            let dir = base.join(format!("{}-{per_batch}", fsync.name()));
            let _ = std::fs::remove_dir_all(&dir);
            let woken = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&woken);
            let options = StoreOptions { fsync, keep_per_room: 100 };
            let (store, _) =
                DiskStore::open(&dir, options, Box::new(move || flag.store(true, Ordering::Release))).expect("open");
            let (mut seq, mut latencies, mut outcomes) = (0u64, Vec::new(), Vec::new());
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < seconds {
                let rooms = 10u64;
                let records: Vec<Record> = (0..per_batch as u64)
                    .map(|k| Record {
                        room: Arc::from(format!("room{}", k % rooms)),
                        seq: seq + 1 + k / rooms,
                        event: Arc::clone(&event),
                    })
                    .collect();
                seq += (per_batch as u64).div_ceil(rooms);
                let states = (0..rooms.min(per_batch as u64))
                    .map(|r| RoomState { name: Arc::from(format!("room{r}")), epoch: "e".into(), seq })
                    .collect();
                let sent = Instant::now();
                store.commit(Batch { id: seq, rooms: states, records, ..Batch::default() });
                loop {
                    if woken.swap(false, Ordering::Acquire) {
                        store.take(&mut outcomes);
                        if !outcomes.is_empty() {
                            break;
                        }
                    }
                    std::thread::sleep(Duration::from_micros(20));
                }
                assert!(outcomes.drain(..).all(|c| c.result.is_ok()));
                latencies.push(sent.elapsed());
            }
            let elapsed = start.elapsed().as_secs_f64();
            latencies.sort();
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
            let commits = latencies.len() as f64 / elapsed;
            println!(
                "{:<7} {:>6} {:>12.0} {:>10.0} {:>9.3} {:>9.3}",
                fsync.name(),
                per_batch,
                commits * per_batch as f64,
                commits,
                at(0.5),
                at(0.99)
            );
            drop(store);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}
