//! sync-kit's locks: raw state machines below, typed and instrumented wrappers above.
//!
//! - `raw_mutex`, `raw_rwlock`: the lock words and parking, with one hook called when a thread is
//!   about to sleep. No data, no names, no bookkeeping.
//! - `acquire`: the protocol every typed acquisition follows (level check, fast path, detector
//!   hook on the slow path, statistics, per-thread held list).
//! - `mutex`, `rwlock`: [`Mutex`](crate::Mutex) and [`RwLock`](crate::RwLock) with their guards.
//! - `raw_condvar`, `condvar`: [`Condvar`](crate::Condvar), whose waits release and reacquire a
//!   [`Mutex`](crate::Mutex) through the same protocol.
//! - `meta`: identity and level of a lock, and the registry of named locks.
//! - `counters`: what a lock counts (acquisitions, waits and their histogram, waiting call sites,
//!   hold times) and [`LockStats`](crate::LockStats), what they are read into.
//! - `set`: [`LockSet`](crate::LockSet), several locks acquired together in hierarchy order.

pub(crate) mod acquire;
pub(crate) mod condvar;
pub(crate) mod counters;
pub(crate) mod meta;
pub(crate) mod mutex;
pub(crate) mod raw_condvar;
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

/// What the typed layer plugs into a raw slow path.
///
/// The raw state machines call [`about_to_park`](WaitHooks::about_to_park) once, the first time a
/// thread decides to sleep, and route every compare-exchange that could acquire the lock through
/// [`attempt`](WaitHooks::attempt). sync-kit's detector uses the first to enter the wait-for graph
/// (or refuse the wait), and the second so that, once registered, a thread acquires the lock and
/// leaves the graph in one critical section of the graph's lock: no cycle search can ever see a
/// thread that already holds what it is registered as waiting for.
pub(crate) trait WaitHooks {
    /// Why a wait was refused.
    type Refusal;
    /// The thread is about to sleep for the first time in this acquisition. If the wait is
    /// accepted, `announce` (which sets the lock's "parked" bit for this kind of waiter) must run
    /// in the same critical section as the decision: from the moment a waiter can be seen in the
    /// wait-for graph, the lock word already shows it waiting (so a queued writer already holds
    /// back new readers, exactly as the graph's edges say).
    fn about_to_park(&mut self, announce: &mut dyn FnMut()) -> Result<(), Self::Refusal>;
    /// Runs one acquisition attempt; returns its outcome.
    fn attempt(&mut self, attempt: &mut dyn FnMut() -> bool) -> bool;
    /// The wait ends without the lock (timeout): `undo` (which withdraws what `announce` did,
    /// where that matters to others) runs in the same critical section as leaving the graph.
    fn give_up(&mut self, undo: &mut dyn FnMut());
}

/// Why a raw slow path returned without the lock.
#[derive(Debug)]
pub(crate) enum SlowPathError<E> {
    /// The deadline passed.
    TimedOut,
    /// The about-to-park hook refused the wait.
    Refused(E),
}
