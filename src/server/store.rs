//! A node's durable store on its own disk: [`DiskStore`], the file half of
//! [`broker::store`](crate::broker::store), on a thread of its own.
//!
//! One [redb](https://docs.rs/redb) file, `DIR/chat.redb`, with two tables:
//! `rooms` (name → epoch, last seq, floor) and `runs` ((room, first seq) →
//! that room's messages of one batch, numbered on from the first). Each
//! batch is one write transaction: its rooms, one run per room it touches,
//! and the trimming of each such room to its last `keep_per_room` messages,
//! so the file never holds more than the history the chat promises, and a
//! crash leaves either the whole batch or none of it. redb is a
//! copy-on-write B-tree with checksummed commits: an interrupted commit is
//! rolled back when the file is next opened.
//!
//! The thread waits for batches, writes them (joining those that queued
//! while it wrote the last, unless [`Fsync::Always`]), records each one's
//! outcome and calls its `wake` once per commit, so no event loop ever waits
//! on the disk. After a failed commit (a full disk, an I/O error) it opens
//! the file again before the next one: redb refuses to go on with a handle
//! that saw an I/O error, and opening it again rolls back to the last
//! commit. Every later batch is tried for real, so the store comes back by
//! itself once the disk has room again.

use crate::broker::Wake;
use crate::broker::store::{Batch, Committed, Fsync, Loaded, Record, RoomState, Store, StoreOptions};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

/// name → (epoch, last seq, floor): the room's numbering, and the number
/// up to which (floor included) its messages were dropped.
const ROOMS: TableDefinition<&str, (&str, u64, u64)> = TableDefinition::new("rooms");
/// (room, seq of its first message) → a run of the room's messages, numbered
/// on from that one (see [`encode_run`]). A batch writes one run per room, so
/// a busy turn costs one insert per room, not one per message.
const RUNS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("runs");

/// The runs table, open in a write transaction.
type Runs<'txn> = redb::Table<'txn, (&'static str, u64), &'static [u8]>;

/// The file in the data directory.
pub const FILE_NAME: &str = "chat.redb";

/// How much of the file redb caches in memory. The store reads only when it
/// opens (the chat keeps its history in memory), so a small cache suffices.
const CACHE_BYTES: usize = 16 << 20;

/// With [`Fsync::Never`]: how often what was committed is put on the disk.
const LAZY_SYNC: Duration = Duration::from_secs(1);

/// Where a node keeps its store, and how (`--data-dir`, `--fsync`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The data directory (made if missing); the store is its `chat.redb`.
    pub dir: PathBuf,
    /// When to fsync.
    pub fsync: Fsync,
}

impl StoreConfig {
    /// The binary's default: `./rust-chat-data`, an fsync per batch.
    pub fn default_dir() -> StoreConfig {
        StoreConfig { dir: PathBuf::from("rust-chat-data"), fsync: Fsync::Batch }
    }
}

/// The store's thread, and the outcomes it left. See the [module](self).
pub struct DiskStore {
    /// To the thread; taken (so closed) when the store is dropped.
    jobs: Option<mpsc::Sender<Batch>>,
    done: Arc<Mutex<Vec<Committed>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore").finish_non_exhaustive()
    }
}

impl DiskStore {
    /// Opens (or makes) the store in `dir`, reads everything it holds, and
    /// starts its thread, which calls `wake` after each commit. An error
    /// says in one line what is wrong with `dir` (it cannot be made, the
    /// file is not a store, another process has it open).
    pub fn open(dir: &Path, options: StoreOptions, wake: Wake) -> Result<(DiskStore, Loaded), String> {
        std::fs::create_dir_all(dir).map_err(|err| format!("cannot make data directory {}: {err}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let db = open_file(&path)?;
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(&db, options.keep_per_room)))
            .unwrap_or_else(|_| Err(redb::Error::Corrupted("a damaged value".to_string())))
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let done = Arc::new(Mutex::new(Vec::new()));
        let (jobs, queue) = mpsc::channel();
        let writer = Writer {
            path,
            db: Some(db),
            options,
            done: Arc::clone(&done),
            wake,
            dirty: false,
            synced: std::time::Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("rust-chat-store".into())
            .spawn(move || writer.run(queue))
            .map_err(|err| format!("cannot start the store's thread: {err}"))?;
        Ok((DiskStore { jobs: Some(jobs), done, thread: Some(thread) }, loaded))
    }
}

impl Store for DiskStore {
    fn commit(&self, batch: Batch) {
        let id = batch.id;
        let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.send(batch).is_ok());
        if !sent {
            // The thread is gone (it cannot be, short of a panic): say so as an outcome.
            let result = Err("the store has stopped".to_string());
            self.done.lock().unwrap_or_else(PoisonError::into_inner).push(Committed { id, result });
        }
    }

    fn take(&self, into: &mut Vec<Committed>) {
        into.append(&mut self.done.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl Drop for DiskStore {
    /// Writes what it was given, then stops the thread.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open_file(path: &Path) -> Result<Database, String> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|err| format!("cannot open {} as a store: {err}", path.display()))
}

/// Every room and its messages; also trims rooms that hold more than `keep`
/// (a smaller `--history` than the last run's) and drops runs of no room.
fn load(db: &Database, keep: usize) -> Result<Loaded, redb::Error> {
    let txn = db.begin_write()?;
    let mut loaded = Loaded::default();
    {
        let mut rooms = txn.open_table(ROOMS)?;
        let mut runs = txn.open_table(RUNS)?;
        let mut floors = Vec::new();
        for entry in rooms.iter()? {
            let (name, value) = entry?;
            let (epoch, seq, floor) = value.value();
            if seq == u64::MAX {
                // A number no store of ours writes (it could not be counted on from): a damaged file.
                return Err(redb::Error::Corrupted(format!("room {:?} has seq {seq}", name.value())));
            }
            // Everything up to the floor was dropped; past the last seq there is nothing to drop.
            let floor = floor.min(seq);
            let state = RoomState { name: Arc::from(name.value()), epoch: epoch.into(), seq };
            loaded.rooms.push((state, Vec::new()));
            floors.push(floor);
        }
        for ((state, records), floor) in loaded.rooms.iter_mut().zip(floors) {
            let name = &*state.name;
            let lowest = lowest_kept(state.seq, floor, keep);
            if lowest - 1 > floor {
                // A smaller `--history` than last time: what it trims stays trimmed.
                rooms.insert(name, (&*state.epoch, state.seq, lowest - 1))?;
            }
            trim(&mut runs, name, lowest)?;
            for entry in runs.range((name, 0)..=(name, u64::MAX))? {
                let (key, run) = entry?;
                let first = key.value().1;
                for (seq, event) in (first..=u64::MAX).zip(decode_run(run.value())) {
                    // Older than what is kept, or (a file from elsewhere) past the room's last.
                    if seq >= lowest && seq <= state.seq {
                        records.push(Record { room: Arc::clone(&state.name), seq, event: Arc::from(event) });
                    }
                }
            }
        }
        let known: std::collections::HashSet<&str> = loaded.rooms.iter().map(|(state, _)| &*state.name).collect();
        runs.retain(|(room, _), _| known.contains(room))?;
    }
    txn.commit()?;
    Ok(loaded)
}

/// The first message a room keeps: one of its last `keep`, above its floor.
fn lowest_kept(seq: u64, floor: u64, keep: usize) -> u64 {
    (seq + 1).saturating_sub(keep as u64).max(floor + 1).max(1)
}

/// Removes the runs of `room` that end before `lowest` (a run that holds
/// `lowest` stays whole; its older part is skipped when it is read).
fn trim(runs: &mut Runs<'_>, room: &str, lowest: u64) -> Result<(), redb::Error> {
    let mut firsts = Vec::new();
    for entry in runs.range((room, 0)..=(room, lowest))? {
        firsts.push(entry?.0.value().1);
    }
    // Of the runs that start at or below `lowest`, all but the last end before it.
    firsts.pop();
    for first in firsts {
        runs.remove((room, first))?;
    }
    Ok(())
}

/// Whether two names are the same room (most often the same `Arc`).
fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// A run of events as one value: each event's length (4 bytes, little-endian), then its bytes.
fn encode_run<'a>(events: impl Iterator<Item = &'a str>, into: &mut Vec<u8>) {
    into.clear();
    for event in events {
        into.extend_from_slice(&(event.len() as u32).to_le_bytes());
        into.extend_from_slice(event.as_bytes());
    }
}

/// The events of a run, as far as they are whole and UTF-8 (a damaged run
/// ends where the damage starts).
fn decode_run(mut run: &[u8]) -> impl Iterator<Item = &str> {
    std::iter::from_fn(move || {
        let (len, rest) = run.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let event = std::str::from_utf8(rest.get(..len)?).ok()?;
        run = rest.get(len..)?;
        Some(event)
    })
}

/// The thread's side.
struct Writer {
    path: PathBuf,
    /// `None` after a failed commit, until it is opened again.
    db: Option<Database>,
    options: StoreOptions,
    done: Arc<Mutex<Vec<Committed>>>,
    wake: Wake,
    /// Committed without an fsync since the last one ([`Fsync::Never`]).
    dirty: bool,
    /// When that last one was.
    synced: std::time::Instant,
}

impl Writer {
    fn run(mut self, queue: mpsc::Receiver<Batch>) {
        loop {
            let first = match self.options.fsync {
                Fsync::Never => match queue.recv_timeout(LAZY_SYNC) {
                    Ok(batch) => batch,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.sync();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                _ => match queue.recv() {
                    Ok(batch) => batch,
                    Err(_) => break,
                },
            };
            let mut batches = vec![first];
            if self.options.fsync != Fsync::Always {
                batches.extend(queue.try_iter());
            }
            // A panic in the writer (redb meeting a damaged page, say) fails the batch, not the chat.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.write(&batches)))
                .unwrap_or_else(|_| Err("the store's writer panicked".to_string()));
            if self.dirty && self.synced.elapsed() >= LAZY_SYNC {
                // Busy enough never to wait a second for a batch: sync as often anyway.
                self.sync();
            }
            if let Err(err) = &result {
                tracing::warn!(path = %self.path.display(), "store: a commit failed, its messages were refused: {err}");
            }
            let outcomes = batches.iter().map(|batch| Committed { id: batch.id, result: result.clone() });
            self.done.lock().unwrap_or_else(PoisonError::into_inner).extend(outcomes);
            (self.wake)();
        }
        self.sync();
    }

    /// Writes `batches` in one transaction.
    fn write(&mut self, batches: &[Batch]) -> Result<(), String> {
        let db = match self.db.take() {
            Some(db) => db,
            None => open_file(&self.path)?,
        };
        let lazy = self.options.fsync == Fsync::Never;
        let result = write(&db, batches, self.options.keep_per_room, lazy).map_err(|err| err.to_string());
        if result.is_ok() {
            // After an error the handle is dropped: the next batch opens the file again.
            self.db = Some(db);
            self.dirty |= lazy;
        }
        result
    }

    /// Puts what was committed lazily on the disk (an empty, durable commit).
    fn sync(&mut self) {
        if !self.dirty {
            return;
        }
        let Some(db) = &self.db else { return };
        let synced = || -> Result<(), redb::Error> { Ok(db.begin_write()?.commit()?) };
        match synced() {
            Ok(()) => (self.dirty, self.synced) = (false, std::time::Instant::now()),
            Err(err) => tracing::warn!(path = %self.path.display(), "store: an fsync failed: {err}"),
        }
    }
}

fn write(db: &Database, batches: &[Batch], keep: usize, lazy: bool) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(if lazy { Durability::None } else { Durability::Immediate })
        .map_err(|err| redb::Error::Corrupted(err.to_string()))?;
    {
        let mut rooms = txn.open_table(ROOMS)?;
        let mut runs = txn.open_table(RUNS)?;
        let mut bytes = Vec::new();
        for batch in batches {
            for name in &batch.forget {
                let name = &**name;
                rooms.remove(name)?;
                runs.retain_in((name, 0)..=(name, u64::MAX), |_, _| false)?;
            }
            // Each room the batch touches, as it will be: name -> (epoch, seq, floor).
            let mut states: HashMap<&str, (String, u64, u64)> = HashMap::new();
            let touched = batch.drop.iter().map(|(room, _)| &**room).chain(batch.rooms.iter().map(|room| &*room.name));
            for name in touched {
                if states.contains_key(name) {
                    continue;
                }
                let now = rooms.get(name)?.map(|value| {
                    let (epoch, seq, floor) = value.value();
                    (epoch.to_string(), seq, floor)
                });
                states.insert(name, now.unwrap_or_default());
            }
            // Drops are of messages shown before this batch, each the oldest its room held.
            for (room, seq) in &batch.drop {
                if let Some(state) = states.get_mut(&**room) {
                    state.2 = state.2.max(*seq);
                }
            }
            for room in &batch.rooms {
                if let Some(state) = states.get_mut(&*room.name) {
                    state.0 = room.epoch.to_string();
                    state.1 = state.1.max(room.seq);
                }
            }
            // The first message each room keeps after this batch; the floor rises with it (what a
            // run still holds below the floor is never read).
            let lowest: HashMap<&str, u64> =
                states.iter().map(|(name, (_, seq, floor))| (*name, lowest_kept(*seq, *floor, keep))).collect();
            // One run per room and contiguous stretch of numbers: the batch's
            // messages are in the order they were said, rooms interleaved, so
            // each room's are brought together first (a stable sort keeps
            // their order within the room). Of a room said to faster than it
            // keeps, only what it keeps is written: the rest would be trimmed
            // in this same transaction.
            // A room's messages come in stretches, all naming it with one `Arc`: one look-up a
            // stretch, not one a message.
            let mut stretch: Option<(&Arc<str>, Option<u64>)> = None;
            let mut order: Vec<&Record> = Vec::with_capacity(batch.records.len().min(keep.saturating_mul(4)));
            for record in batch.records.iter() {
                let lowest = match stretch {
                    Some((room, lowest)) if Arc::ptr_eq(room, &record.room) => lowest,
                    _ => {
                        let lowest = lowest.get(&*record.room).copied();
                        stretch = Some((&record.room, lowest));
                        lowest
                    }
                };
                if lowest.is_none_or(|lowest| record.seq >= lowest) {
                    order.push(record);
                }
            }
            order.sort_by(|a, b| if Arc::ptr_eq(&a.room, &b.room) { Ordering::Equal } else { a.room.cmp(&b.room) });
            let mut records = order.into_iter().peekable();
            while let Some(first) = records.next() {
                let mut events = vec![&*first.event];
                let mut last = first.seq;
                while let Some(next) = records.next_if(|next| same(&next.room, &first.room) && next.seq == last + 1) {
                    events.push(&*next.event);
                    last = next.seq;
                }
                encode_run(events.into_iter(), &mut bytes);
                runs.insert((&*first.room, first.seq), bytes.as_slice())?;
            }
            for (name, (epoch, seq, _)) in &states {
                if epoch.is_empty() {
                    // Only drops, for a room the disk no longer holds.
                    continue;
                }
                let lowest = lowest.get(name).copied().unwrap_or(1);
                rooms.insert(*name, (epoch.as_str(), *seq, lowest - 1))?;
                trim(&mut runs, name, lowest)?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests;
