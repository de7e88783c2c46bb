//! What a node keeps on its own disk (issue 20): the rooms' epochs, last
//! numbers and recent messages, so that a restart, or a `kill -9`, loses
//! nothing that was acknowledged.
//!
//! This is the sans-IO half: what a [`Store`] is given and gives back. The
//! server's `server::store::DiskStore` is the half that touches files, on a
//! thread of its own so that no event loop waits on the disk (as the Redis
//! link does for the network).
//!
//! The shape is group commit with one batch in flight. The application
//! gathers a loop turn's messages into one [`Batch`] and hands it to
//! [`Store::commit`]; while that batch is being written it gathers the next
//! one. When a batch is on disk (or failed), the store says so through
//! [`Store::take`] and wakes the loop; only then does the application show
//! the batch's messages to anyone. A failed batch leaves nothing behind:
//! it was one transaction.

use std::sync::Arc;

/// When the store asks the operating system to put a commit on the disk
/// itself (`fsync`), rather than in its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// After every batch, before its messages are shown: nothing shown is
    /// lost, even on a power cut. The default.
    #[default]
    Batch,
    /// After every batch, and batches are never joined: one application
    /// batch is one transaction, however far behind the disk is.
    Always,
    /// At most once a second: a crash of the process or of the machine may
    /// lose up to the last second of messages (they were shown).
    Never,
}

impl Fsync {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fsync::Batch => "batch",
            Fsync::Always => "always",
            Fsync::Never => "never",
        }
    }
}

impl std::str::FromStr for Fsync {
    type Err = String;

    fn from_str(name: &str) -> Result<Fsync, String> {
        match name {
            "batch" => Ok(Fsync::Batch),
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            _ => Err(format!("'{name}' is not one of always, batch, never")),
        }
    }
}

/// A room as the store keeps it: its epoch and the number of its last message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomState {
    /// The room's name.
    pub name: Arc<str>,
    /// Its epoch (a new one when the room's numbering starts again).
    pub epoch: Box<str>,
    /// The number of its last message (0: none yet).
    pub seq: u64,
}

/// One message of a room, as its members receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its room.
    pub room: Arc<str>,
    /// Its number in the room.
    pub seq: u64,
    /// What its members receive (the chat's `message` event).
    pub event: Arc<str>,
}

/// What one commit writes, in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The application's number for it, given back with its outcome.
    pub id: u64,
    /// Rooms whose epoch or last number changed.
    pub rooms: Vec<RoomState>,
    /// New messages, in order within each room. After them each room they
    /// touch keeps only its last `keep_per_room` (see [`StoreOptions`]).
    /// Shared with the application, which shows them once they are
    /// committed (so a batch is handed over without copying its messages).
    pub records: Arc<Vec<Record>>,
    /// Messages to drop (room, seq): those the application's own bound on
    /// all rooms together pushed out.
    pub drop: Vec<(Arc<str>, u64)>,
    /// Rooms to forget whole, with their messages.
    pub forget: Vec<Arc<str>>,
}

impl Batch {
    /// Whether it writes nothing.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty() && self.records.is_empty() && self.drop.is_empty() && self.forget.is_empty()
    }
}

/// How a batch ended: `Err` says why it is not on the disk (nothing of it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The batch's [`Batch::id`].
    pub id: u64,
    /// Whether it is on the disk.
    pub result: Result<(), String>,
}

/// What a store holds when it opens: every room, with its messages in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The rooms, by name, each with its messages oldest first.
    pub rooms: Vec<(RoomState, Vec<Record>)>,
}

/// How a store keeps what it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// When to fsync.
    pub fsync: Fsync,
    /// How many messages a room keeps (the chat's `--history`); older ones
    /// are dropped in the transaction that adds the newer.
    pub keep_per_room: usize,
}

/// A node's durable store, as the application sees it.
pub trait Store: Send + Sync {
    /// Hands `batch` over to be written. Its outcome comes back through
    /// [`Store::take`], after which the store wakes the loop it was given.
    fn commit(&self, batch: Batch);

    /// Moves the outcomes of batches written since the last call into `into`,
    /// in the order they were given.
    fn take(&self, into: &mut Vec<Committed>);
}
