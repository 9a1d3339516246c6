//! The readable account of a refused deadlock.

use std::fmt;

use crate::lock::meta::{AccessMode, LockKind, LockUse};
use crate::loom::thread::ThreadId;

/// A waiter, as named in a report: a thread, or a tokio task (for the locks of
/// `sync_kit::tokio`, where the task is the waiter and holds the locks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// The thread's id (for a task: the thread that was running it when it began to wait).
    pub id: ThreadId,
    /// The thread's name, if it has one.
    pub name: Option<String>,
    /// The tokio task id, when the waiter is a task.
    pub task: Option<String>,
}

impl ThreadInfo {
    pub(crate) fn new(id: ThreadId, name: Option<&str>) -> Self {
        Self {
            id,
            name: name.map(str::to_owned),
            task: None,
        }
    }
}

impl fmt::Display for ThreadInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(task) = &self.task {
            return write!(f, "task {task}");
        }
        match &self.name {
            Some(name) => write!(f, "thread {name:?} ({:?})", self.id),
            None => write!(f, "thread {:?}", self.id),
        }
    }
}

/// Why one thread of the cycle waits for the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockedBy {
    /// The next thread holds the wanted lock in a conflicting mode.
    Holder {
        /// The holding thread (the next step of the cycle).
        thread: ThreadInfo,
        /// The hold, with where it was acquired.
        held: LockUse,
    },
    /// The wanted lock is an `RwLock` wanted for reading, and the next thread is a writer waiting
    /// for it: with writer preference new readers queue behind it.
    QueuedWriter {
        /// The waiting writer (the next step of the cycle).
        thread: ThreadInfo,
        /// Its write request, with where it was made.
        request: LockUse,
    },
}

impl BlockedBy {
    /// The thread this step waits for.
    pub fn thread(&self) -> &ThreadInfo {
        match self {
            BlockedBy::Holder { thread, .. } | BlockedBy::QueuedWriter { thread, .. } => thread,
        }
    }
}

/// One waiting thread of a cycle: what it wants, and who it waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CycleStep {
    /// The waiting thread.
    pub thread: ThreadInfo,
    /// The lock it wants, and where it asked for it.
    pub wants: LockUse,
    /// The next thread of the cycle, and why this one waits for it.
    pub blocked_by: BlockedBy,
}

/// A wait-for cycle that an acquisition would have closed. The first step is the refused thread;
/// each step waits for the next, and the last waits for the first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadlockReport {
    cycle: Vec<CycleStep>,
}

impl DeadlockReport {
    pub(crate) fn new(cycle: Vec<CycleStep>) -> Self {
        debug_assert!(!cycle.is_empty());
        Self { cycle }
    }

    /// The threads and locks of the cycle, starting with the refused thread.
    pub fn cycle(&self) -> &[CycleStep] {
        &self.cycle
    }

    /// The thread whose acquisition was refused.
    pub fn refused_thread(&self) -> &ThreadInfo {
        &self.cycle[0].thread
    }

    /// The refused request.
    pub fn refused_request(&self) -> &LockUse {
        &self.cycle[0].wants
    }
}

impl fmt::Display for DeadlockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.cycle.len();
        let threads = if n == 1 { "thread" } else { "threads" };
        writeln!(
            f,
            "deadlock refused: waiting would close a wait-for cycle of {n} {threads}"
        )?;
        for (i, step) in self.cycle.iter().enumerate() {
            let verb = if i == 0 {
                "requested (refused)"
            } else {
                "waits for"
            };
            writeln!(f, "  {}. {} {verb} {}", i + 1, step.thread, step.wants)?;
            match &step.blocked_by {
                BlockedBy::Holder { thread, held } => {
                    let who = if i + 1 == n && n == 1 {
                        "by this same thread".to_owned()
                    } else {
                        format!("by {thread}")
                    };
                    let how = match (held.lock.kind, held.mode) {
                        (LockKind::Mutex, _) => "",
                        (LockKind::RwLock, AccessMode::Exclusive) => " for writing",
                        (LockKind::RwLock, AccessMode::Shared) => " for reading",
                    };
                    write!(f, "     held{how} {who}, acquired at {}", held.at)?;
                }
                BlockedBy::QueuedWriter { thread, request } => write!(
                    f,
                    "     queued behind waiting writer {thread} (writer preference), which asked at {}",
                    request.at
                )?,
            }
            if i + 1 < n {
                writeln!(f)?;
            }
        }
        Ok(())
    }
}
