//! The disk store alone, as the chat drives it: one batch in flight, the next
//! gathered meanwhile. Prints, for each engine, fsync mode and batch size,
//! messages and commits per second, the commit latency (handed over →
//! outcome seen), the process's CPU time per message and the data
//! directory's size at the end of the row.
//!
//! Two engines behind the same [`Store`] trait and key layout: `redb` is the
//! server's own `rust_chat::server::store::DiskStore`; `fjall` is the same
//! writer on fjall's LSM tree ([`FjallStore`] below), kept here only to
//! measure the choice (issue 20).
//!
//! `cargo run --release --bin storebench -- [DIR] [SECONDS] [ENGINES] [FSYNCS] [BATCHES]`
//! (DIR defaults to a fresh directory under /tmp, removed afterwards; 3 s a
//! row; the lists are comma-separated, by default `redb,fjall`,
//! `never,batch,always` and `1,16,256`).

use rust_chat::broker::Wake;
use rust_chat::broker::store::{Batch, Committed, Fsync, Record, RoomState, Store, StoreOptions};
use rust_chat::server::store::DiskStore;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let base =
        args.next().map_or_else(|| std::env::temp_dir().join(format!("storebench-{}", std::process::id())), Into::into);
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let engines = args.next().unwrap_or_else(|| "redb,fjall".into());
    let fsyncs: Vec<Fsync> = args.next().map_or_else(
        || vec![Fsync::Never, Fsync::Batch, Fsync::Always],
        |list| list.split(',').map(|name| name.parse().expect("always, batch or never")).collect(),
    );
    let batches: Vec<usize> = args
        .next()
        .map_or_else(|| vec![1, 16, 256], |list| list.split(',').map(|n| n.parse().expect("a batch size")).collect());
    let event: Arc<str> = Arc::from(format!(
        "{{\"type\":\"message\",\"room\":\"r\",\"nick\":\"guest-1\",\"text\":\"{}\",\"time\":1,\"seq\":1}}",
        "x".repeat(60)
    ));
    println!(
        "{:<6} {:<7} {:>6} {:>12} {:>10} {:>9} {:>9} {:>11} {:>9}",
        "engine", "fsync", "batch", "msgs/s", "commits/s", "p50 ms", "p99 ms", "CPU µs/msg", "disk KiB"
    );
    for engine in engines.split(',') {
        for &fsync in &fsyncs {
            for &per_batch in &batches {
                let dir = base.join(format!("{engine}-{}-{per_batch}", fsync.name()));
                let _ = std::fs::remove_dir_all(&dir);
                let woken = Arc::new(AtomicBool::new(false));
                let flag = Arc::clone(&woken);
                let wake: Wake = Box::new(move || flag.store(true, Ordering::Release));
                let options = StoreOptions { fsync, keep_per_room: 100 };
                let store: Box<dyn Store> = match engine {
                    "redb" => Box::new(DiskStore::open(&dir, options, wake).expect("open").0),
                    "fjall" => Box::new(FjallStore::open(&dir, options, wake)),
                    other => panic!("no engine {other}: redb or fjall"),
                };
                let (mut seq, mut latencies, mut outcomes) = (0u64, Vec::new(), Vec::new());
                let cpu = rust_chat_bench::cpu_seconds("self");
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
                    store.commit(Batch { id: seq, rooms: states, records: Arc::new(records), ..Batch::default() });
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
                let cpu = rust_chat_bench::cpu_seconds("self") - cpu;
                latencies.sort();
                let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
                let commits = latencies.len() as f64 / elapsed;
                let messages = latencies.len() as f64 * per_batch as f64;
                drop(store);
                println!(
                    "{:<6} {:<7} {:>6} {:>12.0} {:>10.0} {:>9.3} {:>9.3} {:>11.1} {:>9}",
                    engine,
                    fsync.name(),
                    per_batch,
                    commits * per_batch as f64,
                    commits,
                    at(0.5),
                    at(0.99),
                    cpu / messages * 1e6,
                    disk_bytes(&dir) / 1024
                );
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// What the files under `dir` hold, in bytes.
fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => disk_bytes(&entry.path()),
            _ => entry.metadata().map_or(0, |meta| meta.len()),
        })
        .sum()
}

/// The store's writer on fjall: the same tables as `DiskStore` (rooms:
/// name → epoch, seq, floor; runs: (room, first seq) → length-prefixed
/// events), one write batch per commit, trimmed to the last
/// `keep_per_room` in the same batch, on a thread of its own.
struct FjallStore {
    jobs: Option<mpsc::Sender<Batch>>,
    done: Arc<Mutex<Vec<Committed>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FjallStore {
    fn open(dir: &Path, options: StoreOptions, wake: Wake) -> FjallStore {
        let db = fjall::Database::builder(dir).cache_size(16 << 20).open().expect("open fjall");
        let rooms = db.keyspace("rooms", fjall::KeyspaceCreateOptions::default).expect("rooms");
        let runs = db.keyspace("runs", fjall::KeyspaceCreateOptions::default).expect("runs");
        let done = Arc::new(Mutex::new(Vec::new()));
        let (jobs, queue) = mpsc::channel::<Batch>();
        let outcomes = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            let mut dirty = false;
            let mut index = RunIndex::new();
            let mut last_sync = Instant::now();
            loop {
                let first = match queue.recv_timeout(Duration::from_secs(1)) {
                    Ok(batch) => batch,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                let mut batches = vec![first];
                if options.fsync != Fsync::Always {
                    batches.extend(queue.try_iter());
                }
                let lazy = options.fsync == Fsync::Never;
                let result = fjall_write(&db, &rooms, &runs, &mut index, &batches, options.keep_per_room, lazy)
                    .map_err(|err| err.to_string());
                dirty |= lazy;
                if dirty && last_sync.elapsed() >= Duration::from_secs(1) {
                    let _ = db.persist(fjall::PersistMode::SyncAll);
                    (dirty, last_sync) = (false, Instant::now());
                }
                let mut done = outcomes.lock().unwrap();
                done.extend(batches.iter().map(|batch| Committed { id: batch.id, result: result.clone() }));
                drop(done);
                wake();
            }
            let _ = db.persist(fjall::PersistMode::SyncAll);
        });
        FjallStore { jobs: Some(jobs), done, thread: Some(thread) }
    }
}

impl Store for FjallStore {
    fn commit(&self, batch: Batch) {
        let _ = self.jobs.as_ref().map(|jobs| jobs.send(batch));
    }

    fn take(&self, into: &mut Vec<Committed>) {
        into.append(&mut self.done.lock().unwrap());
    }
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Each room's runs, by the seq of their first message, oldest first (built when the store opens).
type RunIndex = std::collections::HashMap<String, std::collections::VecDeque<u64>>;

/// A run's key: the room's name, length first, then its first seq big-endian (so a room's runs sort by seq).
fn run_key(room: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + room.len() + 8);
    key.push(room.len() as u8);
    key.extend_from_slice(room.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn fjall_write(
    db: &fjall::Database,
    rooms: &fjall::Keyspace,
    runs: &fjall::Keyspace,
    index: &mut RunIndex,
    batches: &[Batch],
    keep: usize,
    lazy: bool,
) -> fjall::Result<()> {
    let mut write = db.batch().durability(if lazy { None } else { Some(fjall::PersistMode::SyncAll) });
    let mut bytes = Vec::new();
    for batch in batches {
        // Each room the batch touches, as it will be: name, (epoch, seq, floor).
        let mut states: Vec<(&str, RoomValue)> = Vec::new();
        for room in &batch.rooms {
            if states.iter().any(|(name, _)| *name == &*room.name) {
                continue;
            }
            let (_, seq, floor) = rooms.get(&*room.name)?.map_or((Vec::new(), 0, 0), |value| decode_room(&value));
            states.push((&room.name, (room.epoch.as_bytes().to_vec(), seq.max(room.seq), floor)));
        }
        let mut order: Vec<&Record> = batch.records.iter().collect();
        order.sort_by(|a, b| a.room.cmp(&b.room));
        let mut records = order.into_iter().peekable();
        while let Some(first) = records.next() {
            bytes.clear();
            let mut last = first.seq;
            let mut push = |event: &str| {
                bytes.extend_from_slice(&(event.len() as u32).to_le_bytes());
                bytes.extend_from_slice(event.as_bytes());
            };
            push(&first.event);
            while let Some(next) = records.next_if(|next| next.room == first.room && next.seq == last + 1) {
                push(&next.event);
                last = next.seq;
            }
            write.insert(runs, run_key(&first.room, first.seq), bytes.as_slice());
            index.entry(first.room.to_string()).or_default().push_back(first.seq);
        }
        for (name, (epoch, seq, floor)) in &states {
            let lowest = (*seq + 1).saturating_sub(keep as u64).max(floor + 1).max(1);
            let mut value = epoch.clone();
            value.extend_from_slice(&seq.to_le_bytes());
            value.extend_from_slice(&(lowest - 1).to_le_bytes());
            write.insert(rooms, name.as_bytes(), value);
            // The runs that end before `lowest`: those followed by one that starts at or below it.
            // (Kept in memory: a range scan over an LSM tree walks every tombstone the trimming left.)
            if let Some(firsts) = index.get_mut(*name) {
                while firsts.get(1).is_some_and(|&next| next <= lowest) {
                    if let Some(first) = firsts.pop_front() {
                        write.remove(runs, run_key(name, first));
                    }
                }
            }
        }
    }
    write.commit()
}

/// A room as stored: epoch, last seq, floor.
type RoomValue = (Vec<u8>, u64, u64);

/// A room's value: its epoch, then seq and floor (8 bytes each, little-endian).
fn decode_room(value: &[u8]) -> RoomValue {
    let split = value.len().saturating_sub(16);
    let (epoch, numbers) = value.split_at(split);
    let number = |at: usize| numbers.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
    (epoch.to_vec(), number(0), number(8))
}
