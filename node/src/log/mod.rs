//! Where commands get their order and become durable before they are applied.
//!
//! The node proposes a [`Command`]; the log gives it the next index, makes it durable, and hands
//! it (in log order, in [`Batch`]es) to the node's applier, which applies it and calls its
//! [`Waiter`] with the outcome. A command the log cannot make durable is never applied: its
//! waiter gets the error. The log is raft's (`crate::raft::RaftLog`), for a single node too (a
//! one-member cluster); it plugs in behind the [`CommandLog`] trait without touching `apply`.
//! [`segments`] is the checksummed record format raft's storage is built on; [`legacy`] brings
//! data directories of earlier formats forward.

pub mod legacy;
pub mod segments;
pub mod snapshot;

pub use segments::{Entry, Recovered};

use crate::protocol::ErrorReply;
use crate::state::{Command, Image, Outcome};

/// Called once with what became of a proposed command: its outcome once applied, or why it
/// could not be made durable.
pub type Waiter = Box<dyn FnOnce(Result<Outcome, ErrorReply>) + Send>;

/// Called once the state this member serves reads from holds every change acknowledged before
/// the read began (or with why that could not be established in time).
pub type ReadWaiter = Box<dyn FnOnce(Result<(), ErrorReply>) + Send>;

/// A durable command at its place in the log, on its way to the applier.
pub struct Committed {
    /// Its log index.
    pub index: u64,
    /// The command.
    pub command: Command,
    /// Who waits for its outcome (none for commands nobody waits for).
    pub waiter: Option<Waiter>,
}

impl std::fmt::Debug for Committed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committed")
            .field("index", &self.index)
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

/// What the log hands the applier at a time: durable commands in log order, then the
/// [`CommandLog::sync`] calls to answer once they are applied.
#[derive(Default)]
pub struct Batch {
    /// Durable commands, in log order.
    pub entries: Vec<Committed>,
    /// Answered (with `Ok`) after the entries are applied.
    pub synced: Vec<oneshot::Sender<Result<(), String>>>,
    /// The log failed to store a batch (its waiters have the error): a snapshot may let it drop
    /// old entries and free space.
    pub storage_failed: bool,
    /// A snapshot of the whole state, installed before `entries` (a raft member too far behind
    /// gets one from the leader instead of the entries it missed).
    pub install: Option<Image>,
    /// Every log index up to this one is applied once `entries` are, including entries that
    /// carry no command (raft's empty and membership entries); 0 when there are none.
    pub through: u64,
    /// Reads waiting for this batch: called once it is applied.
    pub reads: Vec<ReadWaiter>,
    /// Take a snapshot once this batch is applied (a member joined and will need one).
    pub snapshot_soon: bool,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("entries", &self.entries)
            .field("synced", &self.synced.len())
            .field("storage_failed", &self.storage_failed)
            .field("install", &self.install.as_ref().map(|image| image.applied))
            .field("through", &self.through)
            .field("reads", &self.reads.len())
            .field("snapshot_soon", &self.snapshot_soon)
            .finish()
    }
}

/// A log of commands: ordered, durable, then applied.
pub trait CommandLog: Send + Sync + std::fmt::Debug {
    /// Queues `command` for the log. Never blocks on the disk.
    fn propose(&self, command: Command, waiter: Option<Waiter>);
    /// Returns once every command proposed before the call is durable and applied.
    fn sync(&self) -> Result<(), String>;
    /// A durable snapshot covers every index up to `covered`: the log may drop those entries.
    fn compact(&self, covered: u64);
    /// Stops the log after what was queued before the call; the applier's stream then ends.
    fn stop(&self);
    /// Calls `done` once a read may begin and see every change acknowledged anywhere before this
    /// call (linearizable). On a single node that is at once: answers are given after apply.
    fn read_barrier(&self, done: ReadWaiter) {
        done(Ok(()));
    }
}
