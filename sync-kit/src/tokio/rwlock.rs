//! [`RwLock`] for tokio tasks.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::panic::Location;

use super::Owner;
use super::acquire::{self, Acquire};
use super::raw::AsyncRawLock;
use crate::error::LockError;
use crate::lock::counters::LockStats;
use crate::lock::meta::{AccessMode, Level, LockInfo, LockKind, LockMeta, MetaHandle, intern};
use crate::loom::cell::UnsafeCell;

/// A reader-writer lock for tokio tasks: `read().await` / `write().await`, `Send` guards, writer
/// preference (a strict FIFO queue: once a writer waits, new readers queue behind it), and the
/// blocking [`crate::RwLock`]'s levels, statistics, order checking and deadlock detection, with
/// tasks as waiters (see [the module](crate::tokio)).
pub struct RwLock<T> {
    raw: AsyncRawLock,
    meta: MetaHandle,
    data: UnsafeCell<T>,
}

// SAFETY: readers share `&T` across owners (needs `T: Sync`); a writer gets `&mut T` on any
// thread (needs `T: Send`). As std's and tokio's RwLock.
unsafe impl<T: Send + Sync> Sync for RwLock<T> {}
// SAFETY: owning the lock is owning the `T`.
unsafe impl<T: Send> Send for RwLock<T> {}

impl<T> RwLock<T> {
    /// An unleveled, unnamed lock.
    #[track_caller]
    pub fn new(value: T) -> Self {
        Self::build(None, None, value)
    }

    /// An unleveled lock listed by [`crate::stats::all`] under `name` (as
    /// [`crate::RwLock::named`]).
    #[track_caller]
    pub fn named(name: impl Into<Cow<'static, str>>, value: T) -> Self {
        Self::build(Some(intern(name.into())), None, value)
    }

    /// A named lock at `level` of the lock hierarchy.
    #[track_caller]
    pub fn with_level(name: impl Into<Cow<'static, str>>, level: Level, value: T) -> Self {
        Self::build(Some(intern(name.into())), Some(level), value)
    }

    #[track_caller]
    fn build(name: Option<&'static str>, level: Option<Level>, value: T) -> Self {
        Self {
            raw: AsyncRawLock::new(),
            meta: LockMeta::register(name, level, LockKind::RwLock, Location::caller()),
            data: UnsafeCell::new(value),
        }
    }

    /// Acquires shared access, waiting while a writer holds the lock or anyone is queued.
    /// Dropping the future before it completes gives up the wait and leaves no trace.
    #[track_caller]
    pub fn read(
        &self,
    ) -> impl Future<Output = Result<RwLockReadGuard<'_, T>, LockError>> + Send + '_
    where
        T: Send + Sync,
    {
        let acquire = Acquire::new(
            &self.raw,
            &self.meta,
            AccessMode::Shared,
            Location::caller(),
        );
        async move {
            let owner = acquire.await?;
            Ok(RwLockReadGuard {
                lock: self,
                owner,
                _marker: PhantomData,
            })
        }
    }

    /// Acquires exclusive access, waiting while anyone holds the lock or is queued.
    #[track_caller]
    pub fn write(
        &self,
    ) -> impl Future<Output = Result<RwLockWriteGuard<'_, T>, LockError>> + Send + '_
    where
        T: Send + Sync,
    {
        let acquire = Acquire::new(
            &self.raw,
            &self.meta,
            AccessMode::Exclusive,
            Location::caller(),
        );
        async move {
            let owner = acquire.await?;
            Ok(RwLockWriteGuard {
                lock: self,
                owner,
                _marker: PhantomData,
            })
        }
    }

    /// Acquires shared access only if available now; `Err(Timeout)` otherwise.
    #[track_caller]
    pub fn try_read(&self) -> Result<RwLockReadGuard<'_, T>, LockError> {
        let owner = acquire::try_acquire(
            &self.raw,
            &self.meta,
            AccessMode::Shared,
            Location::caller(),
        )?;
        Ok(RwLockReadGuard {
            lock: self,
            owner,
            _marker: PhantomData,
        })
    }

    /// Acquires exclusive access only if nobody holds or awaits the lock now.
    #[track_caller]
    pub fn try_write(&self) -> Result<RwLockWriteGuard<'_, T>, LockError> {
        let owner = acquire::try_acquire(
            &self.raw,
            &self.meta,
            AccessMode::Exclusive,
            Location::caller(),
        )?;
        Ok(RwLockWriteGuard {
            lock: self,
            owner,
            _marker: PhantomData,
        })
    }

    /// This lock's statistics so far (reads and writes together).
    pub fn stats(&self) -> LockStats {
        self.meta.stats()
    }

    /// Times this lock's write holds (see [`crate::RwLock::set_hold_timing`]).
    pub fn set_hold_timing(&self, on: bool) {
        self.meta.counters.set_hold_times(on);
    }

    /// This lock's identity: id, name, level, where it was created.
    pub fn info(&self) -> LockInfo {
        self.meta.info
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

impl<T> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (writer, readers) = self.raw.snapshot();
        f.debug_struct("tokio::RwLock")
            .field("info", &self.meta.info)
            .field("write_locked", &writer)
            .field("readers", &readers)
            .finish_non_exhaustive()
    }
}

/// Shared access to an [`RwLock`]'s data; released when dropped, wherever that is.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
pub struct RwLockReadGuard<'a, T> {
    lock: &'a RwLock<T>,
    owner: Owner,
    _marker: PhantomData<*const ()>,
}

// SAFETY: a read guard is `&T`: sending or sharing it needs `T: Sync` (as tokio's).
unsafe impl<T: Sync> Send for RwLockReadGuard<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for RwLockReadGuard<'_, T> {}

/// Exclusive access to an [`RwLock`]'s data; released when dropped, wherever that is.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
pub struct RwLockWriteGuard<'a, T> {
    lock: &'a RwLock<T>,
    owner: Owner,
    _marker: PhantomData<*const ()>,
}

// SAFETY: a write guard is `&mut T`: sending it needs `T: Send`, sharing it `T: Sync` (as
// tokio's, which asks both for both).
unsafe impl<T: Send + Sync> Send for RwLockWriteGuard<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for RwLockWriteGuard<'_, T> {}

impl<T> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a read hold excludes writers, so only shared access exists.
        self.lock.data.get().with(|data| unsafe { &*data })
    }
}

impl<T> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the write hold excludes every other access; `&self` rules out `&mut T`.
        self.lock.data.get().with(|data| unsafe { &*data })
    }
}

impl<T> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the write hold excludes every other access, and `&mut self` this guard's others.
        self.lock.data.get_mut().with(|data| unsafe { &mut *data })
    }
}

impl<T> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        acquire::released(&self.lock.meta, AccessMode::Shared, self.owner);
        self.lock.raw.release(AccessMode::Shared);
    }
}

impl<T> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        acquire::released(&self.lock.meta, AccessMode::Exclusive, self.owner);
        self.lock.raw.release(AccessMode::Exclusive);
    }
}

impl<T: fmt::Debug> fmt::Debug for RwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: fmt::Debug> fmt::Debug for RwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
