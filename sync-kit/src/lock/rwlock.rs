//! [`RwLock`]: a writer-preferring reader-writer lock with levels, deadlock detection and
//! statistics.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::time::{Duration, Instant};

use super::acquire::{self, FlagsTest, Forever, Wait};
use super::counters::LockStats;
use super::meta::{AccessMode, Level, LockCore, LockInfo, LockKind, LockMeta, intern};
use crate::error::LockError;
use crate::held::LevelRule;
use crate::loom::cell::{ConstPtr, MutPtr, UnsafeCell};

/// A reader-writer lock that prefers writers, checks lock order, refuses deadlocks and counts its
/// use.
///
/// - Writer preference: once a writer waits, new readers wait behind it, so a writer gets in even
///   under a continuous flood of readers. (A continuous stream of writers can starve readers.)
/// - Levels, deadlock detection, statistics and the absence of poisoning are as for
///   [`crate::Mutex`]. Read and write acquisitions share one level and one set of counters.
/// - Reading an unleveled lock again while holding a read lock is allowed while no writer waits;
///   once one waits it is a real deadlock (the writer waits for you, you wait behind the writer)
///   and is refused with [`LockError::Deadlock`]. On a leveled lock a second acquisition by the
///   same thread is always a [`LockError::LevelViolation`] (same level). Upgrading (writing while
///   holding a read lock) is refused.
///
/// ```
/// use std::collections::HashMap;
/// use sync_kit::{Level, LockError, RwLock};
///
/// let cache = RwLock::named("doc-cache", HashMap::new());
/// cache.write()?.insert("bob", vec!["hi"]);
/// let a = cache.read()?;
/// let b = cache.read()?; // readers share (no writer is waiting)
/// assert_eq!(a["bob"], b["bob"]);
///
/// // A leveled lock is stricter: reading it again on the same thread is a level violation,
/// // because it deadlocks as soon as a writer queues between the two reads.
/// let mailboxes = RwLock::with_level("doc-mailboxes", Level(20), ());
/// let _first = mailboxes.read()?;
/// assert!(matches!(mailboxes.read(), Err(LockError::LevelViolation { .. })));
/// # Ok::<(), LockError>(())
/// ```
pub struct RwLock<T> {
    /// The lock word is `core.meta.rw` (beside the statistics it counts reads for).
    core: LockCore<()>,
    data: UnsafeCell<T>,
}

// SAFETY: readers on several threads share `&T` (needs `T: Sync`); a writer gets `&mut T`, which
// may be on any thread (needs `T: Send`). As std's RwLock.
unsafe impl<T: Send + Sync> Sync for RwLock<T> {}
// SAFETY: owning the lock is owning the `T`.
unsafe impl<T: Send> Send for RwLock<T> {}

impl<T> RwLock<T> {
    /// An unleveled, unnamed lock.
    #[track_caller]
    pub fn new(value: T) -> Self {
        Self::build(None, None, value)
    }

    /// An unleveled lock listed by [`crate::stats::all`] under `name`.
    ///
    /// `name` may be built at run time (`format!("account-{id}")`): each distinct dynamic name
    /// is stored once for the life of the process, so name locks by something bounded.
    #[track_caller]
    pub fn named(name: impl Into<Cow<'static, str>>, value: T) -> Self {
        Self::build(Some(intern(name.into())), None, value)
    }

    /// A named lock at `level` of the lock hierarchy (`name` as for
    /// [`named`](Self::named)).
    #[track_caller]
    pub fn with_level(name: impl Into<Cow<'static, str>>, level: Level, value: T) -> Self {
        Self::build(Some(intern(name.into())), Some(level), value)
    }

    #[track_caller]
    fn build(name: Option<&'static str>, level: Option<Level>, value: T) -> Self {
        Self {
            core: LockCore {
                raw: (),
                meta: LockMeta::register(name, level, LockKind::RwLock, Location::caller()),
            },
            data: UnsafeCell::new(value),
        }
    }

    /// Acquires shared access, waiting while a writer holds or awaits the lock.
    #[inline]
    #[track_caller]
    pub fn read(&self) -> Result<RwLockReadGuard<'_, T>, LockError> {
        self.acquire_read(Forever, Location::caller(), LevelRule::Above)
    }

    /// Acquires shared access only if available now; `Err(Timeout)` otherwise.
    #[inline]
    #[track_caller]
    pub fn try_read(&self) -> Result<RwLockReadGuard<'_, T>, LockError> {
        self.acquire_read(Wait::No, Location::caller(), LevelRule::Above)
    }

    /// Acquires shared access, waiting at most `timeout`.
    #[inline]
    #[track_caller]
    pub fn try_read_for(&self, timeout: Duration) -> Result<RwLockReadGuard<'_, T>, LockError> {
        self.acquire_read(Wait::For(timeout), Location::caller(), LevelRule::Above)
    }

    /// Acquires shared access, waiting at most until `deadline`.
    #[inline]
    #[track_caller]
    pub fn try_read_until(&self, deadline: Instant) -> Result<RwLockReadGuard<'_, T>, LockError> {
        self.acquire_read(Wait::Until(deadline), Location::caller(), LevelRule::Above)
    }

    /// Acquires exclusive access, waiting while anyone holds the lock.
    #[inline]
    #[track_caller]
    pub fn write(&self) -> Result<RwLockWriteGuard<'_, T>, LockError> {
        self.acquire_write(Forever, Location::caller(), LevelRule::Above)
    }

    /// Acquires exclusive access only if nobody holds the lock now; `Err(Timeout)` otherwise.
    #[inline]
    #[track_caller]
    pub fn try_write(&self) -> Result<RwLockWriteGuard<'_, T>, LockError> {
        self.acquire_write(Wait::No, Location::caller(), LevelRule::Above)
    }

    /// Acquires exclusive access, waiting at most `timeout`.
    #[inline]
    #[track_caller]
    pub fn try_write_for(&self, timeout: Duration) -> Result<RwLockWriteGuard<'_, T>, LockError> {
        self.acquire_write(Wait::For(timeout), Location::caller(), LevelRule::Above)
    }

    /// Acquires exclusive access, waiting at most until `deadline`.
    #[inline]
    #[track_caller]
    pub fn try_write_until(&self, deadline: Instant) -> Result<RwLockWriteGuard<'_, T>, LockError> {
        self.acquire_write(Wait::Until(deadline), Location::caller(), LevelRule::Above)
    }

    #[inline]
    pub(crate) fn acquire_read(
        &self,
        wait: impl Into<Wait>,
        at: &'static Location<'static>,
        rule: LevelRule,
    ) -> Result<RwLockReadGuard<'_, T>, LockError> {
        let meta: &LockMeta = &self.core.meta;
        acquire::acquire(
            meta,
            AccessMode::Shared,
            at,
            wait,
            rule,
            FlagsTest::InWord,
            move || meta.rw.try_read_fast(),
            move || meta.rw.try_read_diverted(),
            move |deadline, hook| meta.rw.read_slow(deadline, hook),
        )?;
        Ok(RwLockReadGuard {
            _lock: PhantomData,
            meta,
            data: ManuallyDrop::new(self.data.get()),
            _not_send: PhantomData,
        })
    }

    #[inline]
    pub(crate) fn acquire_write(
        &self,
        wait: impl Into<Wait>,
        at: &'static Location<'static>,
        rule: LevelRule,
    ) -> Result<RwLockWriteGuard<'_, T>, LockError> {
        let meta: &LockMeta = &self.core.meta;
        acquire::acquire(
            meta,
            AccessMode::Exclusive,
            at,
            wait,
            rule,
            FlagsTest::InWord,
            move || meta.rw.try_write_fast(),
            move || meta.rw.try_write_diverted(),
            move |deadline, hook| meta.rw.write_slow(deadline, hook),
        )?;
        Ok(RwLockWriteGuard {
            _lock: PhantomData,
            meta,
            data: ManuallyDrop::new(self.data.get_mut()),
            _not_send: PhantomData,
        })
    }

    /// This lock's statistics so far (reads and writes together).
    pub fn stats(&self) -> LockStats {
        self.core.meta.stats()
    }

    /// Times this lock's exclusive holds (write holds only; read holds are not timed) into
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

    /// Whether a writer holds the lock right now (a snapshot that may be stale at once).
    pub fn is_write_locked(&self) -> bool {
        self.core.meta.rw.snapshot().0
    }

    /// How many readers hold the lock right now (a snapshot that may be stale at once).
    pub fn reader_count(&self) -> usize {
        self.core.meta.rw.snapshot().1
    }

    /// Mutable access without locking: `&mut self` proves no guard exists.
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: `&mut self` rules out any guard and any other access to the data.
        self.data.with_mut(|data| unsafe { &mut *data })
    }

    /// Consumes the lock, returning the data.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: Default> Default for RwLock<T> {
    #[track_caller]
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> fmt::Debug for RwLock<T> {
    /// Shows the lock's identity and state, never the data (that would need the lock).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (writer, readers) = self.core.meta.rw.snapshot();
        f.debug_struct("RwLock")
            .field("info", &self.core.meta.info)
            .field("write_locked", &writer)
            .field("readers", &readers)
            .finish_non_exhaustive()
    }
}

/// Shared access to an [`RwLock`]'s data; released when dropped. Not `Send` (see
/// [`crate::MutexGuard`]).
#[must_use = "the lock is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
pub struct RwLockReadGuard<'a, T> {
    _lock: PhantomData<&'a RwLock<T>>,
    /// The lock's metadata (and word), kept so that the release does not load it again.
    meta: &'a LockMeta,
    data: ManuallyDrop<ConstPtr<T>>,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a shared guard only gives `&T`.
unsafe impl<T: Sync> Sync for RwLockReadGuard<'_, T> {}

impl<T> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: a read lock is held, so no writer accesses the data.
        self.data.with(|data| unsafe { &*data })
    }
}

impl<T> Drop for RwLockReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: dropped exactly once, here, and not used afterwards; under loom this ends the
        // tracked access before the lock is released.
        unsafe { ManuallyDrop::drop(&mut self.data) };
        let meta = self.meta;
        acquire::released(meta, AccessMode::Shared);
        // SAFETY: this guard was created by a successful read acquisition and is dropped once.
        unsafe { meta.rw.unlock_read() };
    }
}

/// Exclusive access to an [`RwLock`]'s data; released when dropped. Not `Send` (see
/// [`crate::MutexGuard`]).
#[must_use = "the lock is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
pub struct RwLockWriteGuard<'a, T> {
    _lock: PhantomData<&'a RwLock<T>>,
    /// The lock's metadata (and word), kept so that the release does not load it again.
    meta: &'a LockMeta,
    data: ManuallyDrop<MutPtr<T>>,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a shared guard only gives `&T`.
unsafe impl<T: Sync> Sync for RwLockWriteGuard<'_, T> {}

impl<T> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the write lock is held and `&self` rules out a live `&mut T` from this guard.
        self.data.with(|data| unsafe { &*data })
    }
}

impl<T> DerefMut for RwLockWriteGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the write lock is held and `&mut self` makes this the only access.
        self.data.with(|data| unsafe { &mut *data })
    }
}

impl<T> Drop for RwLockWriteGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: dropped exactly once, here, and not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.data) };
        let meta = self.meta;
        acquire::released(meta, AccessMode::Exclusive);
        // SAFETY: this guard was created by a successful write acquisition and is dropped once.
        unsafe { meta.rw.unlock_write() };
    }
}

macro_rules! forward_fmt {
    ($($guard:ident),*) => {$(
        impl<T: fmt::Debug> fmt::Debug for $guard<'_, T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&**self, f)
            }
        }
        impl<T: fmt::Display> fmt::Display for $guard<'_, T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&**self, f)
            }
        }
    )*};
}
forward_fmt!(RwLockReadGuard, RwLockWriteGuard);
