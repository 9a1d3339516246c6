//! The last few refusals, kept for dashboards and post-mortems: [`recent`].
//!
//! Items: [`recent`], [`RecentRefusal`], [`Refusal`], [`RECENT_CAPACITY`].
//!
//! A refused wait-for cycle (the report `LockError::Deadlock` carries) and an order inversion
//! (the report of `LockError::OrderInversion`, or one reported under `Warn`) are copied here, on
//! the path that builds the report, into a ring of the last [`RECENT_CAPACITY`]. Cost: nothing
//! on the fast path or on a wait that is not refused (neither ever comes here); per refusal, one
//! clone of the report and a short critical section of a process-wide std mutex, taken after the
//! detector's own locks are released. Level violations are not kept (they are counted in
//! [`super::stats`], and their error names both locks already).
//!
//! The ring is a std mutex under loom too: it orders nothing the models check, it is only taken
//! on a refusal with no loom operation inside, and it may carry entries across a model's
//! executions (it is bounded), which no model reads.

use std::collections::VecDeque;
use std::sync::Mutex as StdMutex;
use std::time::SystemTime;

use super::{DeadlockReport, InversionReport};

/// How many refusals [`recent`] keeps (the oldest goes first).
pub const RECENT_CAPACITY: usize = 16;

/// One kept refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A wait that would have closed a wait-for cycle, refused with `LockError::Deadlock`.
    Deadlock(DeadlockReport),
    /// An acquisition that inverted the learned lock order: refused with
    /// `LockError::OrderInversion`, or allowed under `Warn` (then `report.refused` is false).
    Inversion(InversionReport),
}

/// A refusal and when it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecentRefusal {
    /// Its number among every refusal kept since the process started, from 1 (a gap between two
    /// consecutive entries of [`recent`] never happens; a reader that polls can tell which
    /// entries it has not seen yet).
    pub seq: u64,
    /// The wall-clock time it was recorded.
    pub at: SystemTime,
    /// The report.
    pub refusal: Refusal,
}

struct Ring {
    next_seq: u64,
    entries: VecDeque<RecentRefusal>,
}

static RECENT: StdMutex<Ring> = StdMutex::new(Ring {
    next_seq: 1,
    entries: VecDeque::new(),
});

/// The last refusals (at most [`RECENT_CAPACITY`]), oldest first.
///
/// ```
/// use std::sync::Arc;
/// use sync_kit::deadlock::{self, OrderChecking, Refusal};
/// use sync_kit::{LockError, Mutex};
///
/// deadlock::set_order_checking(OrderChecking::Refuse);
/// let (a, b) = (Mutex::named("recent-doc-a", ()), Mutex::named("recent-doc-b", ()));
/// drop((a.lock()?, b.lock()?)); // learns a before b
/// let _b = b.lock()?;
/// assert!(matches!(a.lock(), Err(LockError::OrderInversion(_))));
/// let last = deadlock::recent().pop().expect("kept");
/// assert!(matches!(&last.refusal, Refusal::Inversion(r) if r.requested.name() == Some("recent-doc-a")));
/// # Ok::<(), LockError>(())
/// ```
pub fn recent() -> Vec<RecentRefusal> {
    let ring = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    ring.entries.iter().cloned().collect()
}

/// Keeps a refusal (called by the detector and the order checker, after their locks are
/// released).
#[cold]
pub(crate) fn record(refusal: Refusal) {
    let at = SystemTime::now();
    let mut ring = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    let seq = ring.next_seq;
    ring.next_seq += 1;
    if ring.entries.len() == RECENT_CAPACITY {
        ring.entries.pop_front();
    }
    ring.entries.push_back(RecentRefusal { seq, at, refusal });
}
