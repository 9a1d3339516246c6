//! [`Mutex`]: mutual exclusion with levels, deadlock detection and statistics.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::time::{Duration, Instant};

use super::acquire::{self, FlagsTest, Forever, Wait};
use super::counters::LockStats;
use super::meta::{AccessMode, Level, LockCore, LockInfo, LockKind, LockMeta, intern};
use super::raw_mutex::RawMutex;
use crate::error::LockError;
use crate::held::{self, LevelRule};
use crate::loom::cell::{MutPtr, UnsafeCell};

/// A mutual-exclusion lock that checks lock order, refuses deadlocks and counts its use.
///
/// - Built with [`Mutex::new`] it is unleveled: no order check, but deadlock detection and
///   statistics. [`Mutex::named`] adds a name (listed by [`crate::stats::all`]);
///   [`Mutex::with_level`] places it in the hierarchy.
/// - Acquisition returns `Result`: [`LockError::LevelViolation`] at once if the thread holds a
///   leveled lock at the same or a higher level, [`LockError::Deadlock`] if waiting would close a
///   wait-for cycle, [`LockError::Timeout`] from the timed and `try_` forms.
/// - No poisoning: a panic while the lock is held releases it, and the data is left as the
///   panicking code left it (as in parking_lot).
/// - Not reentrant: locking a mutex the thread already holds is refused as a deadlock (or as a
///   level violation if the mutex is leveled).
///
/// ```
/// use sync_kit::{Level, LockError, Mutex};
///
/// let accounts = Mutex::with_level("doc-accounts", Level(10), vec![1, 2]);
/// let ledger = Mutex::with_level("doc-ledger", Level(20), 0u64);
///
/// let a = accounts.lock()?;
/// let mut l = ledger.lock()?;          // 10 then 20: in order
/// *l += a.iter().sum::<u64>();
/// drop(a);
///
/// // Holding level 20, asking for level 10 is refused before it could ever deadlock.
/// assert!(matches!(accounts.lock(), Err(LockError::LevelViolation { .. })));
/// # Ok::<(), LockError>(())
/// ```
pub struct Mutex<T> {
    core: LockCore<RawMutex>,
    data: UnsafeCell<T>,
}

// SAFETY: the mutex hands out access to `T` to one thread at a time, so it can be shared between
// threads when `T` can be sent between them (as std's Mutex).
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: owning the mutex is owning the `T`.
unsafe impl<T: Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    /// An unleveled, unnamed mutex.
    #[track_caller]
    pub fn new(value: T) -> Self {
        Self::build(None, None, value)
    }

    /// An unleveled mutex listed by [`crate::stats::all`] under `name`.
    ///
    /// `name` may be built at run time (`format!("account-{id}")`): each distinct dynamic name
    /// is stored once for the life of the process, so name locks by something bounded.
    #[track_caller]
    pub fn named(name: impl Into<Cow<'static, str>>, value: T) -> Self {
        Self::build(Some(intern(name.into())), None, value)
    }

    /// A named mutex at `level` of the lock hierarchy (`name` as for
    /// [`named`](Self::named)).
    #[track_caller]
    pub fn with_level(name: impl Into<Cow<'static, str>>, level: Level, value: T) -> Self {
        Self::build(Some(intern(name.into())), Some(level), value)
    }

    #[track_caller]
    fn build(name: Option<&'static str>, level: Option<Level>, value: T) -> Self {
        Self {
            core: LockCore {
                raw: RawMutex::new(),
                meta: LockMeta::register(name, level, LockKind::Mutex, Location::caller()),
            },
            data: UnsafeCell::new(value),
        }
    }

    /// Acquires the mutex, waiting as long as needed unless waiting would deadlock.
    #[inline]
    #[track_caller]
    pub fn lock(&self) -> Result<MutexGuard<'_, T>, LockError> {
        self.acquire(Forever, Location::caller(), LevelRule::Above)
    }

    /// Acquires the mutex only if it is free now; `Err(Timeout)` otherwise.
    #[inline]
    #[track_caller]
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, LockError> {
        self.acquire(Wait::No, Location::caller(), LevelRule::Above)
    }

    /// Acquires the mutex, waiting at most `timeout`.
    #[inline]
    #[track_caller]
    pub fn try_lock_for(&self, timeout: Duration) -> Result<MutexGuard<'_, T>, LockError> {
        self.acquire(Wait::For(timeout), Location::caller(), LevelRule::Above)
    }

    /// Acquires the mutex, waiting at most until `deadline`.
    #[inline]
    #[track_caller]
    pub fn try_lock_until(&self, deadline: Instant) -> Result<MutexGuard<'_, T>, LockError> {
        self.acquire(Wait::Until(deadline), Location::caller(), LevelRule::Above)
    }

    #[inline]
    pub(crate) fn acquire(
        &self,
        wait: impl Into<Wait>,
        at: &'static Location<'static>,
        rule: LevelRule,
    ) -> Result<MutexGuard<'_, T>, LockError> {
        let meta = self.acquire_raw(wait, at, rule)?;
        Ok(MutexGuard {
            mutex: self,
            meta,
            data: Some(self.data.get_mut()),
            _not_send: PhantomData,
        })
    }

    /// The acquisition protocol without building a guard (a condvar's reacquisition reuses its
    /// caller's guard). Returns the metadata, loaded once for the acquisition and the guard.
    #[inline]
    fn acquire_raw(
        &self,
        wait: impl Into<Wait>,
        at: &'static Location<'static>,
        rule: LevelRule,
    ) -> Result<&LockMeta, LockError> {
        let meta: &LockMeta = &self.core.meta;
        acquire::acquire(
            meta,
            AccessMode::Exclusive,
            at,
            wait,
            rule,
            FlagsTest::Byte,
            move || self.core.raw.try_lock_fast(),
            move || self.core.raw.try_lock_fast(),
            move |deadline, hook| self.core.raw.lock_slow(deadline, hook),
        )?;
        Ok(meta)
    }

    /// This lock's statistics so far.
    pub fn stats(&self) -> LockStats {
        self.core.meta.stats()
    }

    /// Times this mutex's exclusive holds into
    /// [`LockStats::holds`] whatever the process-wide setting
    /// ([`crate::stats::set_hold_timing`]), or stops. Costs a clock read per acquisition and per
    /// release while on; a hold is timed if timing was on when it began.
    pub fn set_hold_timing(&self, on: bool) {
        self.core.meta.set_hold_timing(on);
    }

    /// This lock's identity: id, name, level, where it was created.
    pub fn info(&self) -> LockInfo {
        self.core.meta.info
    }

    /// Whether some thread holds the mutex right now (a snapshot that may be stale at once).
    pub fn is_locked(&self) -> bool {
        self.core.raw.is_locked()
    }

    /// Mutable access without locking: `&mut self` proves no guard exists.
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: `&mut self` rules out any guard and any other access to the data.
        self.data.with_mut(|data| unsafe { &mut *data })
    }

    /// Consumes the mutex, returning the data.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: Default> Default for Mutex<T> {
    #[track_caller]
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> fmt::Debug for Mutex<T> {
    /// Shows the lock's identity and state, never the data (that would need the lock).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("info", &self.core.meta.info)
            .field("locked", &self.is_locked())
            .finish_non_exhaustive()
    }
}

/// Exclusive access to a [`Mutex`]'s data; released when dropped.
///
/// Not `Send`: the lock is recorded as held by the thread that acquired it, so it must be released
/// there.
///
/// A guard whose [`Condvar`](crate::Condvar) wait returned an error no longer holds the mutex
/// (the wait released it and could not take it back): dropping it does nothing, and reaching the
/// data through it panics.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
    /// The mutex's metadata, kept so that the release does not load it again through `mutex`
    /// (the data was written meanwhile, which the compiler must assume may have changed it).
    meta: &'a LockMeta,
    /// `Some` while the guard holds the mutex (always, except after a failed condvar wait).
    data: Option<MutPtr<T>>,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a shared guard only gives `&T`, so sharing it across threads is sharing `&T`.
unsafe impl<T: Sync> Sync for MutexGuard<'_, T> {}

impl<'a, T> MutexGuard<'a, T> {
    /// The mutex this guard locks.
    pub fn mutex(guard: &Self) -> &'a Mutex<T> {
        guard.mutex
    }

    /// Whether the guard holds its mutex: always, unless a condvar wait failed to take it back.
    pub fn is_held(guard: &Self) -> bool {
        guard.data.is_some()
    }

    /// A condvar wait: releases the mutex (bookkeeping here, the raw unlock inside `sleep`, which
    /// must call its argument exactly once, after the thread is queued), then reacquires it through
    /// the full protocol at call site `at`. If the reacquisition is refused the guard is left
    /// empty. If the reacquisition could only break the hierarchy (the thread holds a leveled lock
    /// above this mutex's level) the wait is refused before anything is released.
    pub(crate) fn release_and_reacquire<R>(
        &mut self,
        at: &'static Location<'static>,
        sleep: impl FnOnce(&mut dyn FnMut()) -> R,
    ) -> Result<R, LockError> {
        let mutex = self.mutex;
        // The held list cannot change while this thread sleeps: a reacquisition that would break
        // the hierarchy is refused now, with the guard still holding the mutex.
        held::check_level_reacquire(&mutex.core.meta.info, at)?;
        let data = self.data.take().unwrap_or_else(|| not_held());
        acquire::released(&mutex.core.meta, AccessMode::Exclusive);
        end_access(data);
        let mut unlocked = false;
        let outcome = sleep(&mut || {
            if !unlocked {
                unlocked = true;
                // SAFETY: this guard held the mutex (checked above) and gave up its access.
                unsafe { mutex.core.raw.unlock() };
            }
        });
        if !unlocked {
            // SAFETY: as above; `sleep` did not release it.
            unsafe { mutex.core.raw.unlock() };
        }
        mutex.acquire_raw(Forever, at, LevelRule::Above)?;
        self.data = Some(mutex.data.get_mut());
        Ok(outcome)
    }
}

/// Ends the guard's access to the data before the mutex is released: under loom `MutPtr`'s drop
/// ends the tracked access; in std builds it is a no-op.
#[inline(always)]
#[allow(clippy::drop_non_drop)]
fn end_access<T>(data: MutPtr<T>) {
    drop(data);
}

#[cold]
#[inline(never)]
#[track_caller]
fn not_held() -> ! {
    panic!("MutexGuard used after a failed Condvar wait: the mutex is not held")
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    #[inline]
    #[track_caller]
    fn deref(&self) -> &T {
        match &self.data {
            // SAFETY: the guard holds the lock, so no other thread accesses the data, and `&self`
            // rules out a live `&mut T` from this guard.
            Some(data) => data.with(|data| unsafe { &*data }),
            None => not_held(),
        }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    #[inline]
    #[track_caller]
    fn deref_mut(&mut self) -> &mut T {
        match &self.data {
            // SAFETY: the guard holds the lock and `&mut self` makes this the only access.
            Some(data) => data.with(|data| unsafe { &mut *data }),
            None => not_held(),
        }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if let Some(data) = self.data.take() {
            end_access(data);
            acquire::released(self.meta, AccessMode::Exclusive);
            // SAFETY: the guard held the lock (its pointer was present) and gives it up once.
            unsafe { self.mutex.core.raw.unlock() };
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: fmt::Display> fmt::Display for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}
