//! Why an acquisition failed.

use std::fmt;

use crate::deadlock::{DeadlockReport, InversionReport};
use crate::lock::meta::LockUse;

/// An acquisition that sync-kit refused or gave up on. Nothing is held when this is returned.
///
/// The payloads are boxed so that `Result<Guard, LockError>` stays small on the fast path.
#[derive(Debug, Clone)]
pub enum LockError {
    /// Waiting would have closed a cycle in the wait-for graph: the threads in it would never
    /// wake. This call was refused; the other threads keep waiting and proceed once this thread
    /// releases what they wait for.
    Deadlock(Box<DeadlockReport>),
    /// The lock's level is not above every leveled lock this thread already holds. Returned at
    /// once, whether or not the lock was free: the potential deadlock is caught before it happens.
    LevelViolation {
        /// The highest-level lock held by this thread, and where it was acquired.
        held: Box<LockUse>,
        /// The lock that was requested, and where.
        requested: Box<LockUse>,
    },
    /// Acquiring the lock while holding the locks this thread holds contradicts the lock order
    /// learned from earlier acquisitions (see [`crate::deadlock::set_order_checking`]): two
    /// threads following the two orders could deadlock. Returned at once, whether or not the lock
    /// was free and whether or not any thread waits.
    OrderInversion(Box<InversionReport>),
    /// The lock was not acquired within the given time (or at once, for `try_*` without a time).
    Timeout,
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Deadlock(report) => report.fmt(f),
            LockError::LevelViolation { held, requested } => write!(
                f,
                "lock order violation: requested {requested} while holding {}, acquired at {}; a \
                 thread may only acquire leveled locks above the highest level it holds",
                held.lock, held.at
            ),
            LockError::OrderInversion(report) => report.fmt(f),
            LockError::Timeout => f.write_str("timed out waiting for the lock"),
        }
    }
}

impl std::error::Error for LockError {}
