//! Locks for tokio tasks (cargo feature `tokio`): [`Mutex`] and [`RwLock`], whose acquisitions
//! are `.await`ed and whose guards are `Send`.
//!
//! They have what the blocking locks have: names, levels, statistics, writer preference (a
//! strict FIFO queue: a reader that arrives while anyone is queued waits behind), lock-order
//! checking and the wait-for graph, with **tasks** as the waiters and holders. A task is
//! identified by tokio's task id; an acquisition outside any task (in `block_on`, say) is made
//! by its thread, which stands for itself.
//!
//! ```
//! use std::sync::Arc;
//! use sync_kit::LockError;
//! use sync_kit::tokio::{Mutex, RwLock};
//!
//! # tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(async {
//! let accounts = Arc::new(Mutex::named("doc-async-accounts", vec![10u64]));
//! let config = RwLock::named("doc-async-config", "v1".to_string());
//! let task = tokio::spawn({
//!     let accounts = Arc::clone(&accounts);
//!     async move {
//!         let mut guard = accounts.lock().await?;
//!         tokio::task::yield_now().await; // the guard may move to another thread here
//!         guard.push(20);
//!         Ok::<_, LockError>(())
//!     }
//! });
//! task.await.unwrap()?;
//! assert_eq!(*accounts.lock().await?, [10, 20]);
//! assert_eq!(&*config.read().await?, "v1");
//! # Ok::<(), LockError>(())
//! # }).unwrap();
//! ```
//!
//! | piece | what |
//! |---|---|
//! | `raw` | the lock state (writer, readers) and a FIFO queue of waiting tasks under one internal mutex; releases hand the lock to the head of the queue |
//! | `acquire` | the acquisition future: level and order checks, fast path, registration in the wait-for graph, cancellation |
//! | `mutex`, `rwlock` | the typed locks and guards |
//! | this module | who holds what: a held list per owner (task or thread), kept in a sharded map |
//!
//! Invariants:
//! - an owner's held list lists exactly the async locks acquired by that owner whose guards are
//!   alive (a guard remembers its owner, so dropping it on another thread or in another task
//!   removes the right entry);
//! - a queued acquisition is in the wait-for graph from the moment it is queued (under the graph's
//!   lock) until it is granted (the releaser takes it out in the same critical section as the
//!   grant) or cancelled (its future is dropped: it leaves the queue and the graph, and passes on
//!   a lock it was granted but never saw), so no search sees a task waiting for a lock it holds,
//!   and a dropped `lock()` future leaves nothing behind.
//!
//! Limits: guards are `Send`, so a task can hand a guard to another task; if it does so while
//! the graph has a copy of its holdings (it is queued on another lock), that copy is stale until
//! it is granted. Blocking locks taken inside a task are checked against the task's async holds
//! only by the wait-for graph, not by the level check.

mod acquire;
mod mutex;
mod raw;
mod rwlock;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

pub use mutex::{Mutex, MutexGuard};
pub use rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::deadlock::ThreadInfo;
use crate::lock::meta::{AccessMode, LockId, LockUse};
use crate::loom::thread;
use crate::loom::{InternalMutex, global};

/// Who acquires and holds an async lock: a tokio task, or a thread outside any task.
///
/// Under loom (where tokio does not build) this module is compiled without tokio and every
/// owner is a thread, so that loom can model the async locks' wait path with
/// `loom::future::block_on` (`loom-tests/tests/loom_async.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    #[cfg(not(loom))]
    Task(::tokio::task::Id),
    Thread(thread::ThreadId),
}

impl Owner {
    /// The current task, or the current thread outside a task.
    pub(crate) fn current() -> Self {
        #[cfg(not(loom))]
        if let Some(task) = ::tokio::task::try_id() {
            return Owner::Task(task);
        }
        Owner::Thread(current_thread_id())
    }

    /// How a report names it.
    pub(crate) fn info(self) -> ThreadInfo {
        let current = thread::current();
        #[allow(unused_mut)] // only tasks change it, and there are none under loom
        let mut info = ThreadInfo::new(current.id(), current.name());
        #[cfg(not(loom))]
        if let Owner::Task(task) = self {
            info.task = Some(task.to_string());
        }
        info
    }
}

/// This thread's id, without cloning its `Thread` handle each time (a reference count).
fn current_thread_id() -> thread::ThreadId {
    crate::loom::thread_local! {
        static ID: thread::ThreadId = thread::current().id();
    }
    ID.with(|id| *id)
}

const SHARDS: usize = 16;

/// Hashes an owner (a task or thread id: one small integer and a discriminant) with a multiply
/// and a rotate, not SipHash: it is hashed on every acquisition and release.
#[derive(Default)]
struct OwnerHasher(u64);

impl Hasher for OwnerHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }
}

type OwnerHash = BuildHasherDefault<OwnerHasher>;
type HeldMap = HashMap<Owner, Holds, OwnerHash>;

/// One owner's holds: most hold one lock at a time, which needs no allocation.
#[derive(Debug)]
enum Holds {
    One(LockUse),
    Many(Vec<LockUse>),
}

global! {
    static HELD: [InternalMutex<HeldMap>; SHARDS] = std::array::from_fn(|_| InternalMutex::new(HeldMap::default()));
}

fn shard(owner: Owner) -> &'static InternalMutex<HeldMap> {
    // The high bits: the multiply mixes upwards.
    let hash = OwnerHash::default().hash_one(owner);
    &HELD[(hash >> 60) as usize % SHARDS]
}

/// Records that `owner` now holds `entry.lock`.
pub(crate) fn push(owner: Owner, entry: LockUse) {
    let mut map = shard(owner).lock();
    match map.entry(owner) {
        Entry::Vacant(vacant) => {
            vacant.insert(Holds::One(entry));
        }
        Entry::Occupied(mut occupied) => {
            let holds = occupied.get_mut();
            match holds {
                Holds::One(first) => *holds = Holds::Many(vec![*first, entry]),
                Holds::Many(all) => all.push(entry),
            }
        }
    }
}

/// Records that `owner` released one hold of `id` in `mode`.
pub(crate) fn remove(owner: Owner, id: LockId, mode: AccessMode) {
    let mut map = shard(owner).lock();
    let is = |h: &LockUse| h.lock.id == id && h.mode == mode;
    let empty = match map.get_mut(&owner) {
        None => false,
        Some(Holds::One(only)) => is(only),
        Some(Holds::Many(all)) => {
            if let Some(at) = all.iter().rposition(is) {
                all.remove(at);
            }
            all.is_empty()
        }
    };
    if empty {
        map.remove(&owner);
    }
}

/// The async locks `owner` holds, oldest first.
pub(crate) fn holds_of(owner: Owner) -> Vec<LockUse> {
    match shard(owner).lock().get(&owner) {
        None => Vec::new(),
        Some(Holds::One(only)) => vec![*only],
        Some(Holds::Many(all)) => all.clone(),
    }
}

/// The async locks held by the current task (or by this thread, outside any task).
pub(crate) fn held_by_current_owner() -> Vec<LockUse> {
    holds_of(Owner::current())
}

/// The async locks held by the current tokio task (by this thread, outside any task), oldest
/// first. Blocking locks are in [`held_by_current_thread`](crate::held_by_current_thread).
pub fn held_by_current_task() -> Vec<LockUse> {
    held_by_current_owner()
}
