//! The runtime wait-for-graph deadlock detector.
//!
//! # What is recorded, by whom, when
//!
//! Only a thread that is about to sleep on a sync-kit lock touches the detector. At that moment
//! (after its fast path and its short spin both failed, before it parks) it enters itself in one
//! process-wide wait-for graph under one internal mutex:
//!
//! - the lock it wants, the access mode, and the call site;
//! - a copy of the locks it holds, from its own per-thread list (see `held.rs`).
//!
//! Then, still under that mutex, it searches the graph for a path of waiting threads that leads
//! back to itself. Thread `A` waits for thread `B` when `B` is registered as waiting and
//! - `B` holds the lock `A` wants in a conflicting mode (any mode when `A` wants exclusive access,
//!   exclusive when `A` wants shared access), or
//! - `A` wants to read an `RwLock` for which `B` is a waiting writer (writer preference queues new
//!   readers behind waiting writers).
//!
//! If the path exists the thread removes itself and its call returns
//! [`LockError::Deadlock`](crate::LockError::Deadlock); otherwise it sleeps. Every later attempt
//! to take the lock runs under the graph's mutex, and the attempt that succeeds removes the
//! thread in the same critical section: a search never sees a thread that already holds what it
//! is registered as waiting for. A thread that times out removes itself on the way out.
//!
//! Tasks waiting on the async locks of `sync_kit::tokio` enter the same graph, with their task's
//! holdings; entries are keyed per wait, so a task waiting on two locks at once has two.
//!
//! # Why only waiting threads
//!
//! Every thread on a deadlock cycle is asleep, and a sleeping thread can neither acquire nor
//! release, so the copy of its holdings taken when it registered is exact for as long as it stays
//! registered. The thread that closes a cycle is always the last one of it to register, and it
//! sees all the others. Registration and search happen under one mutex, so when two threads race
//! to close the same cycle exactly one of them is refused. A thread that does not wait is never in
//! the graph, so the fast path costs the detector nothing.
//!
//! # The last refusals
//!
//! Every refused cycle and every order inversion is also kept, with the time it happened, in a
//! ring of the last [`RECENT_CAPACITY`], read by [`recent`] (always on: it costs one clone of the
//! report per refusal, and nothing on any other path).

mod graph;
mod order;
mod recent;
mod report;

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[cfg(any(feature = "tokio", loom))]
pub(crate) use graph::{WaitKey, begin_wait_as, with_graph};
pub(crate) use graph::{WaitRegistration, begin_wait};
#[cfg(any(feature = "tokio", loom))]
pub(crate) use order::check_with as check_order_with;
pub use order::{
    InversionReport, OrderChecking, OrderEdge, order_checking, reset_order_hook,
    set_order_checking, set_order_hook,
};
pub(crate) use order::{check as check_order, forget as forget_order};
pub use recent::{RECENT_CAPACITY, RecentRefusal, Refusal, recent};
pub use report::{BlockedBy, CycleStep, DeadlockReport, ThreadInfo};

// Plain counters for diagnostics; they order no other memory (hence std atomics even under loom).
static WAITS: AtomicU64 = AtomicU64::new(0);
static CYCLES: AtomicU64 = AtomicU64::new(0);
static LEVEL_VIOLATIONS: AtomicU64 = AtomicU64::new(0);
static WAITING_NOW: AtomicU64 = AtomicU64::new(0);
static ORDER_INVERSIONS: AtomicU64 = AtomicU64::new(0);

/// The detector's counters since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DetectorStats {
    /// Acquisitions that had to sleep and so entered the wait-for graph.
    pub waits_registered: u64,
    /// Acquisitions refused because they would have closed a wait-for cycle.
    pub cycles_detected: u64,
    /// Acquisitions refused because they broke the lock hierarchy.
    pub level_violations: u64,
    /// Waits in the wait-for graph right now (sleeping threads, and queued acquisitions of the
    /// async locks).
    pub threads_waiting: u64,
    /// Acquisitions that inverted the learned lock order (refused under `Refuse`, reported under
    /// `Warn`; see [`set_order_checking`]).
    pub order_inversions: u64,
}

/// Reads the detector's counters.
pub fn stats() -> DetectorStats {
    DetectorStats {
        waits_registered: WAITS.load(Ordering::Relaxed),
        cycles_detected: CYCLES.load(Ordering::Relaxed),
        level_violations: LEVEL_VIOLATIONS.load(Ordering::Relaxed),
        threads_waiting: WAITING_NOW.load(Ordering::Relaxed),
        order_inversions: ORDER_INVERSIONS.load(Ordering::Relaxed),
    }
}

pub(crate) fn count_level_violation() {
    LEVEL_VIOLATIONS.fetch_add(1, Ordering::Relaxed);
}
