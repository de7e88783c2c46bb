//! A node's durable store on its own disk: [`DiskStore`], the file half of
//! [`broker::store`](crate::broker::store), on a thread of its own.
//!
//! One [redb](https://docs.rs/redb) file, `DIR/chat.redb`, with two tables:
//! `rooms` (name → epoch, last seq) and `messages` ((room, seq) → event).
//! Each batch is one write transaction: its rooms, its messages, and the
//! trimming of each room it touches to its last `keep_per_room` messages,
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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

/// name → (epoch, last seq).
const ROOMS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("rooms");
/// (room, seq) → the message's event.
const MESSAGES: TableDefinition<(&str, u64), &str> = TableDefinition::new("messages");

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
        let loaded =
            load(&db, options.keep_per_room).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let done = Arc::new(Mutex::new(Vec::new()));
        let (jobs, queue) = mpsc::channel();
        let writer = Writer { path, db: Some(db), options, done: Arc::clone(&done), wake, dirty: false };
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
/// (a smaller `--history` than the last run's) and drops messages of no room.
fn load(db: &Database, keep: usize) -> Result<Loaded, redb::Error> {
    let txn = db.begin_write()?;
    let mut loaded = Loaded::default();
    {
        let rooms = txn.open_table(ROOMS)?;
        let mut messages = txn.open_table(MESSAGES)?;
        for entry in rooms.iter()? {
            let (name, value) = entry?;
            let (epoch, seq) = value.value();
            let state = RoomState { name: Arc::from(name.value()), epoch: epoch.into(), seq };
            loaded.rooms.push((state, Vec::new()));
        }
        drop(rooms);
        for (state, records) in &mut loaded.rooms {
            let name = &*state.name;
            // Older than the last `keep`, or (a file from elsewhere) past the room's last.
            let first = state.seq.saturating_sub(keep as u64);
            messages.retain_in((name, 0)..=(name, u64::MAX), |(_, seq), _| seq > first && seq <= state.seq)?;
            for entry in messages.range((name, 0)..=(name, u64::MAX))? {
                let (key, event) = entry?;
                let seq = key.value().1;
                records.push(Record { room: Arc::clone(&state.name), seq, event: Arc::from(event.value()) });
            }
        }
        let known: std::collections::HashSet<&str> = loaded.rooms.iter().map(|(state, _)| &*state.name).collect();
        messages.retain(|(room, _), _| known.contains(room))?;
    }
    txn.commit()?;
    Ok(loaded)
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
            let result = self.write(&batches);
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
            Ok(()) => self.dirty = false,
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
        let mut messages = txn.open_table(MESSAGES)?;
        for batch in batches {
            for name in &batch.forget {
                let name = &**name;
                rooms.remove(name)?;
                messages.retain_in((name, 0)..=(name, u64::MAX), |_, _| false)?;
            }
            // Drops are of messages shown before this batch: before its own.
            for (room, seq) in &batch.drop {
                messages.remove((&**room, *seq))?;
            }
            for room in &batch.rooms {
                rooms.insert(&*room.name, (&*room.epoch, room.seq))?;
            }
            let mut last: Vec<(&str, u64)> = Vec::new();
            for record in &batch.records {
                messages.insert((&*record.room, record.seq), &*record.event)?;
                match last.iter_mut().find(|(room, _)| *room == &*record.room) {
                    Some((_, seq)) => *seq = (*seq).max(record.seq),
                    None => last.push((&record.room, record.seq)),
                }
            }
            for (room, seq) in last {
                if let Some(end) = seq.checked_sub(keep as u64).filter(|end| *end > 0) {
                    messages.retain_in((room, 0)..=(room, end), |_, _| false)?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests;
