//! The acquisition protocol shared by every sync-kit lock.
//!
//! 0. One test of the lock's flags, which carry a copy of the process-wide switches
//!    (`LockMeta::instrumented`; an `RwLock` mirrors them in its word, where its fast paths see
//!    them with no extra test, [`FlagsTest`]). When they are clear (an unleveled lock, order
//!    checking `Off`, no hold timing) steps 1, 2 and the clock are skipped: the plain path is the
//!    compare-exchange, the count (exclusive holds) and a push on the held list.
//! 1. Level check against the thread's held list (leveled locks only), before touching the lock:
//!    a hierarchy violation is refused whether or not the lock is free.
//! 2. Order check (blocking and timed acquisitions only): the pairs (held, requested) this thread
//!    has not learned yet are checked against, and added to, the learned lock order.
//! 3. Fast path: one compare-exchange on the lock word. On success: count the acquisition (an
//!    exclusive one in the lock's counters, by the holder: no atomic read-modify-write; a read is
//!    counted by the `RwLock`'s word itself), start the hold's clock if it is timed, push the hold
//!    on the thread's list. Nothing global is touched.
//! 4. Slow path (`#[cold]`): the raw lock spins, then, right before it would sleep, calls the hook
//!    that registers the wait in the deadlock detector (which may refuse it). From then on each
//!    attempt to take the lock runs under the graph's lock, and the attempt that succeeds leaves
//!    the graph in the same critical section; a timeout leaves it when the raw lock returns. Then
//!    the wait is counted.

use std::panic::Location;
use std::time::{Duration, Instant};

use super::meta::{AccessMode, LockMeta, LockUse};
use super::{Deadline, SlowPathError, WaitHooks};
use crate::deadlock::{self, DeadlockReport, WaitRegistration};
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
    /// Whether the acquisition may block (and so takes part in lock-order checking).
    #[inline]
    fn may_wait(self) -> bool {
        match self {
            Wait::Forever | Wait::Until(_) => true,
            Wait::For(d) => !d.is_zero(),
            Wait::No => false,
        }
    }

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

/// A wait known at compile time to be [`Wait::Forever`] (`lock()`, `read()`, `write()`): a
/// zero-sized argument, so that the plain path writes nothing to the stack for the cold path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Forever;

impl From<Forever> for Wait {
    #[inline(always)]
    fn from(_: Forever) -> Wait {
        Wait::Forever
    }
}

/// The raw slow path of one lock and mode: waits per the deadline, calling the hooks; returns
/// whether it had to wait.
pub(crate) type SlowPath<'a> = &'a dyn Fn(
    Deadline,
    &mut dyn WaitHooks<Refusal = DeadlockReport>,
) -> Result<bool, SlowPathError<DeadlockReport>>;

/// The deadlock detector, as the raw slow path sees it.
struct DetectorHooks {
    request: LockUse,
    registration: Option<WaitRegistration>,
}

impl WaitHooks for DetectorHooks {
    type Refusal = DeadlockReport;

    fn about_to_park(&mut self, announce: &mut dyn FnMut()) -> Result<(), DeadlockReport> {
        self.registration = Some(deadlock::begin_wait(self.request, announce)?);
        Ok(())
    }

    fn attempt(&mut self, attempt: &mut dyn FnMut() -> bool) -> bool {
        match &mut self.registration {
            // Not in the graph: no search can see this thread.
            None => attempt(),
            Some(registration) => registration.attempt_and_leave(attempt),
        }
    }

    fn give_up(&mut self, undo: &mut dyn FnMut()) {
        match &mut self.registration {
            None => undo(),
            Some(registration) => registration.leave_with(undo),
        }
    }
}

/// Where the plain path learns that the lock's flags are not all clear.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlagsTest {
    /// The flags byte (`Mutex`): one load and a branch before the compare-exchange.
    Byte,
    /// The lock word, which mirrors the flags in a bit its fast paths test anyway (`RwLock`,
    /// `raw_rwlock.rs`'s DIVERT): `plain` fails when the flags are not clear.
    InWord,
}

/// Runs the protocol. `plain` is one attempt on the lock word for the plain path, `fast` one
/// for the instrumented path (the same for a `Mutex`; an `RwLock`'s ignores its DIVERT bit);
/// `slow` is the raw slow path.
///
/// The plain path (flags clear, lock free) is inlined into the caller; everything else is one
/// out-of-line call, so that nothing the other paths need (the wait, the slow path's closure) is
/// written to the stack before the flags are tested.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn acquire<W, P, F, S>(
    meta: &LockMeta,
    mode: AccessMode,
    at: &'static Location<'static>,
    wait: W,
    rule: LevelRule,
    flags: FlagsTest,
    plain: P,
    fast: F,
    slow: S,
) -> Result<(), LockError>
where
    W: Into<Wait>,
    P: FnOnce() -> bool,
    F: Fn() -> bool,
    S: Fn(
        Deadline,
        &mut dyn WaitHooks<Refusal = DeadlockReport>,
    ) -> Result<bool, SlowPathError<DeadlockReport>>,
{
    if (flags == FlagsTest::InWord || !meta.instrumented()) && plain() {
        // A read is counted by the lock word itself (`raw_rwlock.rs`).
        if mode == AccessMode::Exclusive {
            meta.counters.count_exclusive_only();
        }
        // SAFETY: the lock was just acquired in `mode`.
        unsafe { held::push(meta, mode, at) };
        return Ok(());
    }
    acquire_cold(meta, mode, at, wait, rule, fast, slow)
}

/// Everything but the plain path: steps 1 to 4 with the checks a flag asked for (a leveled lock,
/// order checking, hold timing), or straight to the slow path when the plain path found the lock
/// taken. Cold for the layout: the plain path falls through to the guard, with no jump over
/// this call.
#[cold]
#[inline(never)]
fn acquire_cold<W, F, S>(
    meta: &LockMeta,
    mode: AccessMode,
    at: &'static Location<'static>,
    wait: W,
    rule: LevelRule,
    fast: F,
    slow: S,
) -> Result<(), LockError>
where
    W: Into<Wait>,
    F: Fn() -> bool,
    S: Fn(
        Deadline,
        &mut dyn WaitHooks<Refusal = DeadlockReport>,
    ) -> Result<bool, SlowPathError<DeadlockReport>>,
{
    let wait = wait.into();
    if !meta.instrumented() {
        return acquire_slow(meta, mode, at, wait, &slow);
    }
    held::check_level(&meta.info, mode, at, rule)?;
    if wait.may_wait() {
        deadlock::check_order(&meta.info, mode, at)?;
    }
    if fast() {
        acquired(meta, mode, at);
        return Ok(());
    }
    acquire_slow(meta, mode, at, wait, &slow)
}

#[cold]
#[inline(never)]
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
    let mut hooks = DetectorHooks {
        request,
        registration: None,
    };
    let result = slow(wait.deadline(start), &mut hooks);
    // A thread that acquired has left the graph already; one that timed out leaves it here.
    drop(hooks.registration);
    match result {
        Ok(waited) => {
            if waited {
                meta.counters.count_wait(start.elapsed(), at);
            }
            acquired(meta, mode, at);
            Ok(())
        }
        Err(SlowPathError::TimedOut) => Err(LockError::Timeout),
        Err(SlowPathError::Refused(report)) => Err(LockError::Deadlock(Box::new(report))),
    }
}

/// Bookkeeping of an acquisition outside the plain fast path: counts it, starts the hold's clock
/// if it is timed, records the hold.
fn acquired(meta: &LockMeta, mode: AccessMode, at: &'static Location<'static>) {
    // A read is counted by the lock word itself (`raw_rwlock.rs`).
    if mode == AccessMode::Exclusive {
        meta.counters.count_exclusive_only();
        if meta.times_holds() {
            meta.counters.start_hold();
            return held::push_timed(meta, at);
        }
    }
    // SAFETY: the lock was just acquired in `mode`.
    unsafe { held::push(meta, mode, at) };
}

/// Bookkeeping of a release; the caller unlocks the raw lock right after. A timed hold misses
/// the held list's fast comparison and is ended on its cold path.
#[inline(always)]
pub(crate) fn released(meta: &LockMeta, mode: AccessMode) {
    if held::remove(meta, mode) {
        meta.counters.end_timed_hold();
    }
}
