//! [`Condvar`]: a condition variable for sync-kit's [`Mutex`], with names and statistics.
//!
//! A wait follows three steps, each with the guarantees of the layer that owns it:
//!
//! | step        | what happens                                                  | owned by       |
//! |-------------|---------------------------------------------------------------|----------------|
//! | release     | the hold leaves the thread's held list; the thread is queued, | `MutexGuard`,  |
//! |             | then the raw mutex is unlocked (no notification can be lost)  | `raw_condvar`  |
//! | sleep       | until `notify_one`/`notify_all`, or the deadline               | `raw_condvar`  |
//! | reacquire   | the full acquisition protocol: level, order checking, the     | `acquire`      |
//! |             | wait-for graph, statistics, the held list                     |                |
//!
//! Invariant: when `wait` returns `Ok`, the guard holds the mutex again and the thread's held list
//! says so; when it returns `Err` after sleeping, the guard holds nothing (dropping it does
//! nothing, and reaching its data panics), and the held list does not list the mutex. A wait that
//! could only reacquire out of hierarchy order is refused before anything is released.
//!
//! A thread asleep on a condvar is not in the wait-for graph: no lock holder is known to wake it.
//! Its reacquisition of the mutex is: a cycle closed on wake-up is refused like any other.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::mutex::MutexGuard;
use super::raw_condvar::RawCondvar;
use crate::error::LockError;
use crate::loom::{InternalMutex, global};

/// A condition variable for [`Mutex`](crate::Mutex) guards.
///
/// Waiting releases the mutex (the thread's held list and level state follow) and reacquires it
/// before returning. The reacquisition is an acquisition like any other: it is checked against the
/// lock order, takes part in deadlock detection and is counted in the mutex's statistics; if it is
/// refused, the wait returns the error and the guard no longer holds the mutex.
///
/// There are no spurious wake-ups from sync-kit itself, but as with every condition variable a
/// woken thread may find the condition false again (another thread got the mutex first): wait in a
/// loop, or with [`wait_while`](Condvar::wait_while).
///
/// ```
/// use std::collections::VecDeque;
/// use std::sync::Arc;
/// use sync_kit::{Condvar, LockError, Mutex};
///
/// let queue = Arc::new((Mutex::named("doc-queue", VecDeque::new()), Condvar::named("doc-not-empty")));
/// let producer = {
///     let queue = Arc::clone(&queue);
///     std::thread::spawn(move || {
///         let (items, not_empty) = &*queue;
///         items.lock()?.push_back(42);
///         not_empty.notify_one();
///         Ok::<(), LockError>(())
///     })
/// };
/// let (items, not_empty) = &*queue;
/// let mut guard = items.lock()?;
/// not_empty.wait_while(&mut guard, |q| q.is_empty())?;
/// assert_eq!(guard.pop_front(), Some(42));
/// # drop(guard);
/// # producer.join().unwrap()?;
/// # Ok::<(), LockError>(())
/// ```
pub struct Condvar {
    raw: RawCondvar,
    meta: CondvarHandle,
}

/// Whether a timed condvar wait returned because its time ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// `true` if the wait ended at its deadline rather than by a notification (the mutex is held
    /// again either way).
    pub fn timed_out(self) -> bool {
        self.0
    }
}

/// Counters of one condvar, as read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CondvarStats {
    /// Waits started (each call to a `wait*` method that released its mutex; `wait_while` counts
    /// each time it slept).
    pub waits: u64,
    /// Calls to `notify_one` and `notify_all`, whether or not anybody waited.
    pub notifies: u64,
    /// Timed waits that ended at their deadline.
    pub timeouts: u64,
}

/// A condvar's identity and counters, shared with the registry while a named condvar lives.
#[derive(Debug)]
pub(crate) struct CondvarMeta {
    pub(crate) id: u64,
    pub(crate) name: Option<Cow<'static, str>>,
    pub(crate) created_at: &'static Location<'static>,
    // Diagnostic counters: they order no other memory (hence std atomics, even under loom).
    waits: AtomicU64,
    notifies: AtomicU64,
    timeouts: AtomicU64,
}

impl CondvarMeta {
    pub(crate) fn stats(&self) -> CondvarStats {
        CondvarStats {
            waits: self.waits.load(Ordering::Relaxed),
            notifies: self.notifies.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn reset(&self) {
        self.waits.store(0, Ordering::Relaxed);
        self.notifies.store(0, Ordering::Relaxed);
        self.timeouts.store(0, Ordering::Relaxed);
    }
}

global! {
    /// Every live named condvar, by id.
    static CONDVARS: InternalMutex<BTreeMap<u64, Arc<CondvarMeta>>> = InternalMutex::new(BTreeMap::new());
}

/// The metadata of every live named condvar.
pub(crate) fn named_condvars() -> Vec<Arc<CondvarMeta>> {
    CONDVARS.lock().values().cloned().collect()
}

/// Owns a condvar's metadata; a named condvar leaves the registry when dropped.
#[derive(Debug)]
struct CondvarHandle(Arc<CondvarMeta>);

impl Drop for CondvarHandle {
    fn drop(&mut self) {
        if self.0.name.is_some() {
            CONDVARS.lock().remove(&self.0.id);
        }
    }
}

impl Condvar {
    /// An unnamed condvar.
    #[track_caller]
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A condvar listed by [`crate::stats::condvars`] under `name`.
    #[track_caller]
    pub fn named(name: impl Into<Cow<'static, str>>) -> Self {
        Self::build(Some(name.into()))
    }

    #[track_caller]
    fn build(name: Option<Cow<'static, str>>) -> Self {
        let named = name.is_some();
        let meta = Arc::new(CondvarMeta {
            id: super::meta::next_id(),
            name,
            created_at: Location::caller(),
            waits: AtomicU64::new(0),
            notifies: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        });
        if named {
            CONDVARS.lock().insert(meta.id, Arc::clone(&meta));
        }
        Self {
            raw: RawCondvar::new(),
            meta: CondvarHandle(meta),
        }
    }

    /// Releases the guard's mutex, sleeps until notified, and reacquires the mutex.
    ///
    /// # Errors
    /// The reacquisition's refusal ([`LockError::Deadlock`] if it would close a wait-for cycle,
    /// [`LockError::OrderInversion`] if it breaks the learned lock order); the guard then holds
    /// nothing. [`LockError::LevelViolation`] at once, with the mutex still held, if the thread
    /// holds a leveled lock above the mutex (it could never take the mutex back in order).
    #[track_caller]
    pub fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) -> Result<(), LockError> {
        self.wait_until_at(guard, None, Location::caller())
            .map(drop)
    }

    /// As [`wait`](Condvar::wait), giving up the sleep after `timeout` (the mutex is reacquired
    /// either way; its reacquisition is not bounded by `timeout`).
    #[track_caller]
    pub fn wait_for<T>(
        &self,
        guard: &mut MutexGuard<'_, T>,
        timeout: Duration,
    ) -> Result<WaitTimeoutResult, LockError> {
        let deadline = Instant::now().checked_add(timeout);
        self.wait_until_at(guard, deadline, Location::caller())
    }

    /// As [`wait`](Condvar::wait), giving up the sleep at `deadline`.
    #[track_caller]
    pub fn wait_until<T>(
        &self,
        guard: &mut MutexGuard<'_, T>,
        deadline: Instant,
    ) -> Result<WaitTimeoutResult, LockError> {
        self.wait_until_at(guard, Some(deadline), Location::caller())
    }

    /// Waits while `condition` holds for the guarded data (checked before the first sleep and
    /// after every wake-up, with the mutex held).
    #[track_caller]
    pub fn wait_while<T>(
        &self,
        guard: &mut MutexGuard<'_, T>,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> Result<(), LockError> {
        let at = Location::caller();
        while condition(&mut **guard) {
            self.wait_until_at(guard, None, at)?;
        }
        Ok(())
    }

    /// As [`wait_while`](Condvar::wait_while), giving up after `timeout` in total; the result
    /// says whether the condition still held when the time ran out.
    #[track_caller]
    pub fn wait_while_for<T>(
        &self,
        guard: &mut MutexGuard<'_, T>,
        timeout: Duration,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> Result<WaitTimeoutResult, LockError> {
        let at = Location::caller();
        let deadline = Instant::now().checked_add(timeout);
        while condition(&mut **guard) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(WaitTimeoutResult(true));
            }
            self.wait_until_at(guard, deadline, at)?;
        }
        Ok(WaitTimeoutResult(false))
    }

    fn wait_until_at<T>(
        &self,
        guard: &mut MutexGuard<'_, T>,
        deadline: Option<Instant>,
        at: &'static Location<'static>,
    ) -> Result<WaitTimeoutResult, LockError> {
        let meta = &self.meta.0;
        let timed_out = guard.release_and_reacquire(at, |unlock| {
            meta.waits.fetch_add(1, Ordering::Relaxed);
            self.raw.wait(unlock, deadline)
        })?;
        if timed_out {
            meta.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(WaitTimeoutResult(timed_out))
    }

    /// Wakes one waiting thread, if any; returns whether one was woken.
    #[inline]
    pub fn notify_one(&self) -> bool {
        self.meta.0.notifies.fetch_add(1, Ordering::Relaxed);
        self.raw.notify_one()
    }

    /// Wakes every waiting thread; returns how many. They reacquire the mutex one at a time.
    #[inline]
    pub fn notify_all(&self) -> usize {
        self.meta.0.notifies.fetch_add(1, Ordering::Relaxed);
        self.raw.notify_all()
    }

    /// This condvar's counters so far.
    pub fn stats(&self) -> CondvarStats {
        self.meta.0.stats()
    }

    /// The name given at construction, if any.
    pub fn name(&self) -> Option<&str> {
        self.meta.0.name.as_deref()
    }
}

impl Default for Condvar {
    #[track_caller]
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Condvar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condvar")
            .field("name", &self.meta.0.name)
            .field("created_at", &self.meta.0.created_at)
            .field("stats", &self.stats())
            .finish()
    }
}
