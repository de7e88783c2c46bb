//! The disk store against real files in a temporary directory.

use super::*;
use redb::ReadableDatabase;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rust-chat-store-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn options(fsync: Fsync, keep: usize) -> StoreOptions {
    StoreOptions { fsync, keep_per_room: keep }
}

/// A store whose wake-ups are counted.
fn open(dir: &Path, options: StoreOptions) -> Result<(DiskStore, Loaded, Arc<AtomicUsize>), String> {
    let wakes = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&wakes);
    let wake: Wake = Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    DiskStore::open(dir, options, wake).map(|(store, loaded)| (store, loaded, wakes))
}

fn room(name: &str, epoch: &str, seq: u64) -> RoomState {
    RoomState { name: Arc::from(name), epoch: epoch.into(), seq }
}

fn record(room: &str, seq: u64) -> Record {
    Record { room: Arc::from(room), seq, event: Arc::from(format!("{room}:{seq}")) }
}

/// A batch of messages `seqs` of `name` in epoch `e1`.
fn batch(id: u64, name: &str, seqs: std::ops::RangeInclusive<u64>) -> Batch {
    let last = *seqs.end();
    Batch {
        id,
        rooms: vec![room(name, "e1", last)],
        records: Arc::new(seqs.map(|seq| record(name, seq)).collect()),
        ..Batch::default()
    }
}

/// Waits (5 s at most) for the outcomes of `n` batches.
fn outcomes(store: &DiskStore, n: usize) -> Vec<Committed> {
    let mut all = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while all.len() < n && std::time::Instant::now() < deadline {
        store.take(&mut all);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(all.len(), n, "outcomes: {all:?}");
    all
}

fn seqs(loaded: &Loaded, name: &str) -> Vec<u64> {
    let (_, records) = loaded.rooms.iter().find(|(state, _)| &*state.name == name).expect("the room is there");
    records.iter().map(|record| record.seq).collect()
}

#[test]
fn what_was_committed_is_there_after_reopening_in_order() {
    let dir = TempDir::new("reopen");
    let (store, loaded, wakes) = open(&dir.0, options(Fsync::Batch, 100)).unwrap();
    assert_eq!(loaded, Loaded::default(), "a new directory holds nothing");
    store.commit(batch(1, "lobby", 1..=3));
    store.commit(batch(2, "rust", 1..=1));
    store.commit(batch(3, "lobby", 4..=5));
    let done = outcomes(&store, 3);
    assert_eq!(done.iter().map(|c| c.id).collect::<Vec<_>>(), [1, 2, 3], "in the order given");
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    assert!(wakes.load(Ordering::SeqCst) >= 1, "the loop was woken");
    drop(store);
    let (_store, loaded, _) = open(&dir.0, options(Fsync::Batch, 100)).unwrap();
    assert_eq!(seqs(&loaded, "lobby"), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(&loaded, "rust"), [1]);
    let (lobby, records) = &loaded.rooms[0];
    assert_eq!(lobby, &room("lobby", "e1", 5));
    assert_eq!(&*records[4].event, "lobby:5");
}

#[test]
fn each_room_keeps_its_last_messages_on_disk_and_the_file_stays_small() {
    let dir = TempDir::new("trim");
    let (store, _, _) = open(&dir.0, options(Fsync::Never, 10)).unwrap();
    let text: Arc<str> = Arc::from("x".repeat(1000));
    // 20 MiB of messages through one room that keeps 10.
    for id in 0..2_000u64 {
        let records = (1..=10).map(|k| Record { room: Arc::from("big"), seq: id * 10 + k, event: Arc::clone(&text) });
        let batch = Batch {
            id,
            rooms: vec![room("big", "e", id * 10 + 10)],
            records: Arc::new(records.collect()),
            ..Batch::default()
        };
        store.commit(batch);
    }
    let done = outcomes(&store, 2_000);
    assert!(done.iter().all(|c| c.result.is_ok()));
    drop(store);
    let size = std::fs::metadata(dir.0.join(FILE_NAME)).unwrap().len();
    assert!(size < 4 << 20, "the file holds 10 messages but is {size} bytes");
    let (_store, loaded, _) = open(&dir.0, options(Fsync::Batch, 10)).unwrap();
    assert_eq!(seqs(&loaded, "big"), (19_991..=20_000).collect::<Vec<_>>());
}

#[test]
fn a_smaller_history_than_last_time_is_trimmed_when_opening() {
    let dir = TempDir::new("shrink");
    let (store, _, _) = open(&dir.0, options(Fsync::Batch, 100)).unwrap();
    store.commit(batch(1, "lobby", 1..=50));
    outcomes(&store, 1);
    drop(store);
    let (store, loaded, _) = open(&dir.0, options(Fsync::Batch, 5)).unwrap();
    assert_eq!(seqs(&loaded, "lobby"), [46, 47, 48, 49, 50]);
    assert_eq!(loaded.rooms[0].0.seq, 50, "the numbering goes on");
    drop(store);
    let (_store, loaded, _) = open(&dir.0, options(Fsync::Batch, 100)).unwrap();
    assert_eq!(seqs(&loaded, "lobby"), [46, 47, 48, 49, 50], "the trimmed ones are gone from the file");
}

#[test]
fn dropped_messages_and_forgotten_rooms_leave_the_file() {
    let dir = TempDir::new("forget");
    let (store, _, _) = open(&dir.0, options(Fsync::Always, 100)).unwrap();
    store.commit(batch(1, "a", 1..=3));
    store.commit(batch(2, "b", 1..=2));
    let drop_first = Batch { id: 3, drop: vec![(Arc::from("a"), 1)], forget: vec![Arc::from("b")], ..Batch::default() };
    store.commit(drop_first);
    assert!(outcomes(&store, 3).iter().all(|c| c.result.is_ok()));
    drop(store);
    let (_store, loaded, _) = open(&dir.0, options(Fsync::Batch, 100)).unwrap();
    assert_eq!(loaded.rooms.len(), 1, "{loaded:?}");
    assert_eq!(seqs(&loaded, "a"), [2, 3]);
}

#[test]
fn without_fsync_what_was_committed_is_still_written_when_the_store_stops() {
    let dir = TempDir::new("lazy");
    let (store, _, _) = open(&dir.0, options(Fsync::Never, 100)).unwrap();
    store.commit(batch(1, "lobby", 1..=7));
    outcomes(&store, 1);
    drop(store);
    let (_store, loaded, _) = open(&dir.0, options(Fsync::Never, 100)).unwrap();
    assert_eq!(seqs(&loaded, "lobby"), (1..=7).collect::<Vec<_>>());
}

#[test]
fn a_file_that_is_not_a_store_is_a_clear_error_not_a_panic() {
    let dir = TempDir::new("garbage");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join(FILE_NAME), vec![0x5a; 64 << 10]).unwrap();
    let err = open(&dir.0, options(Fsync::Batch, 100)).expect_err("refused");
    assert!(err.contains(FILE_NAME), "{err}");
    // A directory where the file should be, and a data dir that is a file.
    let dir = TempDir::new("notafile");
    std::fs::create_dir_all(dir.0.join(FILE_NAME)).unwrap();
    assert!(open(&dir.0, options(Fsync::Batch, 100)).is_err());
    let file = TempDir::new("file");
    std::fs::write(&file.0, b"x").unwrap();
    let err = open(&file.0, options(Fsync::Batch, 100)).expect_err("refused");
    assert!(err.contains("data directory"), "{err}");
    let _ = std::fs::remove_file(&file.0);
}

#[test]
fn a_second_store_on_the_same_directory_is_refused_while_the_first_is_open() {
    let dir = TempDir::new("twice");
    let (store, _, _) = open(&dir.0, options(Fsync::Batch, 100)).unwrap();
    assert!(open(&dir.0, options(Fsync::Batch, 100)).is_err(), "two writers on one file");
    drop(store);
    assert!(open(&dir.0, options(Fsync::Batch, 100)).is_ok(), "free again once the first has stopped");
}

#[test]
fn a_batch_of_rooms_said_in_turn_writes_one_run_per_room() {
    let dir = TempDir::new("interleaved");
    let (store, _, _) = open(&dir.0, options(Fsync::Batch, 100)).unwrap();
    // As a loop turn gathers them: rooms in turn, each room's numbers rising.
    let names = ["a", "b", "c"];
    let records = Arc::new((1..=20u64).flat_map(|seq| names.iter().map(move |name| record(name, seq))).collect());
    let rooms = names.iter().map(|name| room(name, "e1", 20)).collect();
    store.commit(Batch { id: 1, rooms, records, ..Batch::default() });
    assert!(outcomes(&store, 1)[0].result.is_ok());
    drop(store);
    {
        let db = Database::open(dir.0.join(FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        let runs = txn.open_table(RUNS).unwrap();
        let keys: Vec<(String, u64)> = runs
            .iter()
            .unwrap()
            .map(|entry| {
                let (key, _) = entry.unwrap();
                let (room, first) = key.value();
                (room.to_string(), first)
            })
            .collect();
        assert_eq!(keys, [("a".into(), 1), ("b".into(), 1), ("c".into(), 1)], "one run per room, not per message");
    }
    let (_store, loaded, _) = open(&dir.0, options(Fsync::Batch, 100)).unwrap();
    for name in names {
        assert_eq!(seqs(&loaded, name), (1..=20).collect::<Vec<_>>());
        let (_, records) = loaded.rooms.iter().find(|(state, _)| &*state.name == name).unwrap();
        assert_eq!(&*records[19].event, format!("{name}:20"));
    }
}

#[test]
fn a_room_numbered_to_the_end_of_u64_is_a_damaged_file_not_a_wrapped_count() {
    let dir = TempDir::new("damaged-seq");
    std::fs::create_dir_all(&dir.0).unwrap();
    {
        let db = Database::create(dir.0.join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(ROOMS).unwrap().insert("lobby", ("e1", u64::MAX, 0)).unwrap();
        txn.commit().unwrap();
    }
    let err = open(&dir.0, options(Fsync::Batch, 100)).map(|_| ()).expect_err("refused");
    assert!(err.contains("cannot read") && err.contains("seq"), "{err}");
}

#[test]
fn a_room_said_to_faster_than_it_keeps_writes_only_what_it_keeps() {
    let dir = TempDir::new("busy");
    let (store, _, _) = open(&dir.0, options(Fsync::Batch, 10)).unwrap();
    // Two rooms in turn, five messages at a time, 500 each in one batch; each keeps 10. Room a's
    // records share one name (as the chat's do), b's each have their own: both are one room.
    let names = ["a", "b"];
    let a: Arc<str> = Arc::from("a");
    let stretch = |first: u64| {
        let a = (first..first + 5).map(|seq| Record { room: Arc::clone(&a), ..record("a", seq) });
        a.chain((first..first + 5).map(|seq| record("b", seq))).collect::<Vec<_>>()
    };
    let records = Arc::new((0..100u64).flat_map(|k| stretch(k * 5 + 1)).collect());
    let rooms = names.iter().map(|name| room(name, "e1", 500)).collect();
    store.commit(Batch { id: 1, rooms, records, ..Batch::default() });
    store.commit(batch(2, "a", 501..=503));
    assert!(outcomes(&store, 2).iter().all(|c| c.result.is_ok()));
    drop(store);
    {
        let db = Database::open(dir.0.join(FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        let runs = txn.open_table(RUNS).unwrap();
        let held: Vec<(String, u64, usize)> = runs
            .iter()
            .unwrap()
            .map(|entry| {
                let (key, run) = entry.unwrap();
                let (room, first) = key.value();
                (room.to_string(), first, decode_run(run.value()).count())
            })
            .collect();
        // a: the run from 491 (the 10 it kept then), then 501..=503; b: 491..=500.
        assert_eq!(held, [("a".into(), 491, 10), ("a".into(), 501, 3), ("b".into(), 491, 10)]);
        let rooms = txn.open_table(ROOMS).unwrap();
        assert_eq!(rooms.get("a").unwrap().unwrap().value(), ("e1", 503, 493), "the floor rose with the trimming");
    }
    let (_store, loaded, _) = open(&dir.0, options(Fsync::Batch, 10)).unwrap();
    assert_eq!(seqs(&loaded, "a"), (494..=503).collect::<Vec<_>>());
    assert_eq!(seqs(&loaded, "b"), (491..=500).collect::<Vec<_>>());
}
