//! The acquisition protocol shared by every sync-kit lock.
//!
//! 1. Level check against the thread's held list (leveled locks only), before touching the lock:
//!    a hierarchy violation is refused whether or not the lock is free.
//! 2. Fast path: one compare-exchange on the lock word. On success: count the acquisition, push
//!    the hold on the thread's list. Nothing global is touched.
//! 3. Slow path (`#[cold]`): the raw lock spins, then, right before it would sleep, calls the hook
//!    that registers the wait in the deadlock detector (which may refuse it). When the raw lock
//!    returns, the registration is dropped (the thread leaves the graph) and the wait is counted.

use std::panic::Location;
use std::time::{Duration, Instant};

use super::meta::{AccessMode, LockMeta, LockUse};
use super::{Deadline, SlowPathError};
use crate::deadlock::{self, DeadlockReport};
use crate::error::LockError;
use crate::held::{self, LevelRule};

/// How long the caller is willing to wait.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    Forever,
    For(Duration),
    Until(Instant),
    No,
}

impl Wait {
    fn deadline(self, start: Instant) -> Deadline {
        match self {
            Wait::Forever => Deadline::Never,
            Wait::No => Deadline::Now,
            Wait::For(d) if d.is_zero() => Deadline::Now,
            Wait::For(d) => start.checked_add(d).map_or(Deadline::Never, Deadline::At),
            Wait::Until(at) => Deadline::At(at),
        }
    }
}

/// The raw slow path of one lock and mode: waits per the deadline, calling the hook before it
/// first sleeps; returns whether it had to wait.
pub(crate) type SlowPath<'a> = &'a dyn Fn(
    Deadline,
    &mut dyn FnMut() -> Result<(), DeadlockReport>,
) -> Result<bool, SlowPathError<DeadlockReport>>;

/// Runs the protocol. `fast` is one attempt on the lock word; `slow` is the raw slow path.
#[inline]
pub(crate) fn acquire(
    meta: &LockMeta,
    mode: AccessMode,
    at: &'static Location<'static>,
    wait: Wait,
    rule: LevelRule,
    fast: impl FnOnce() -> bool,
    slow: SlowPath<'_>,
) -> Result<(), LockError> {
    held::check_level(&meta.info, mode, at, rule)?;
    if fast() {
        acquired(meta, mode, at);
        return Ok(());
    }
    acquire_slow(meta, mode, at, wait, slow)
}

#[cold]
fn acquire_slow(
    meta: &LockMeta,
    mode: AccessMode,
    at: &'static Location<'static>,
    wait: Wait,
    slow: SlowPath<'_>,
) -> Result<(), LockError> {
    let start = Instant::now();
    let request = LockUse {
        lock: meta.info,
        mode,
        at,
    };
    let mut registration = None;
    let result = slow(wait.deadline(start), &mut || {
        registration = Some(deadlock::begin_wait(request)?);
        Ok(())
    });
    // Leave the wait-for graph before doing anything else with (or without) the lock.
    drop(registration);
    match result {
        Ok(waited) => {
            if waited {
                meta.count_wait(start.elapsed());
            }
            acquired(meta, mode, at);
            Ok(())
        }
        Err(SlowPathError::TimedOut) => Err(LockError::Timeout),
        Err(SlowPathError::Refused(report)) => Err(LockError::Deadlock(Box::new(report))),
    }
}

#[inline]
fn acquired(meta: &LockMeta, mode: AccessMode, at: &'static Location<'static>) {
    match mode {
        AccessMode::Exclusive => meta.count_exclusive(),
        AccessMode::Shared => meta.count_shared(),
    }
    held::push(LockUse {
        lock: meta.info,
        mode,
        at,
    });
}

/// Bookkeeping of a release; the caller unlocks the raw lock right after.
#[inline]
pub(crate) fn released(meta: &LockMeta, mode: AccessMode) {
    held::remove(meta.info.id, mode);
}
