//! sync-kit's locks: raw state machines below, typed and instrumented wrappers above.
//!
//! - `raw_mutex`, `raw_rwlock`: the lock words and parking, with one hook called when a thread is
//!   about to sleep. No data, no names, no bookkeeping.
//! - `acquire`: the protocol every typed acquisition follows (level check, fast path, detector
//!   hook on the slow path, statistics, per-thread held list).
//! - `mutex`, `rwlock`: [`Mutex`](crate::Mutex) and [`RwLock`](crate::RwLock) with their guards.
//! - `meta`: identity, level and counters of a lock.
//! - `set`: [`LockSet`](crate::LockSet), several locks acquired together in hierarchy order.

pub(crate) mod acquire;
pub(crate) mod meta;
pub(crate) mod mutex;
pub(crate) mod raw_mutex;
pub(crate) mod raw_rwlock;
pub(crate) mod rwlock;
pub(crate) mod set;

use std::time::Instant;

/// How long a raw slow path may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// Do not wait at all: a `try_*` call.
    Now,
    /// Wait until acquired (or refused by the hook).
    Never,
    /// Wait until this instant.
    At(Instant),
}

impl Deadline {
    #[inline]
    pub(crate) fn is_now(self) -> bool {
        self == Deadline::Now
    }

    #[inline]
    pub(crate) fn instant(self) -> Option<Instant> {
        match self {
            Deadline::At(at) => Some(at),
            Deadline::Now | Deadline::Never => None,
        }
    }
}

/// Why a raw slow path returned without the lock.
#[derive(Debug)]
pub(crate) enum SlowPathError<E> {
    /// The deadline passed.
    TimedOut,
    /// The about-to-park hook refused the wait.
    Refused(E),
}
