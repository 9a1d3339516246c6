//! [`Mutex`] for tokio tasks.

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

/// A mutual-exclusion lock for tokio tasks: `lock().await`, a `Send` guard, and the blocking
/// [`crate::Mutex`]'s levels, statistics, order checking and deadlock detection, with tasks as
/// waiters (see [the module](crate::tokio)).
pub struct Mutex<T> {
    raw: AsyncRawLock,
    meta: MetaHandle,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `T` to one owner at a time (as tokio's and std's Mutex).
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: owning the lock is owning the `T`.
unsafe impl<T: Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    /// An unleveled, unnamed mutex.
    #[track_caller]
    pub fn new(value: T) -> Self {
        Self::build(None, None, value)
    }

    /// An unleveled mutex listed by [`crate::stats::all`] under `name` (as
    /// [`crate::Mutex::named`]).
    #[track_caller]
    pub fn named(name: impl Into<Cow<'static, str>>, value: T) -> Self {
        Self::build(Some(intern(name.into())), None, value)
    }

    /// A named mutex at `level` of the lock hierarchy.
    #[track_caller]
    pub fn with_level(name: impl Into<Cow<'static, str>>, level: Level, value: T) -> Self {
        Self::build(Some(intern(name.into())), Some(level), value)
    }

    #[track_caller]
    fn build(name: Option<&'static str>, level: Option<Level>, value: T) -> Self {
        Self {
            raw: AsyncRawLock::new(),
            meta: LockMeta::register(name, level, LockKind::Mutex, Location::caller()),
            data: UnsafeCell::new(value),
        }
    }

    /// Acquires the mutex, waiting (without blocking the thread) as long as needed unless waiting
    /// would deadlock. Dropping the future before it completes gives up the wait and leaves no
    /// trace.
    #[track_caller]
    pub fn lock(&self) -> impl Future<Output = Result<MutexGuard<'_, T>, LockError>> + Send + '_
    where
        T: Send,
    {
        let acquire = Acquire::new(
            &self.raw,
            &self.meta,
            AccessMode::Exclusive,
            Location::caller(),
        );
        async move {
            let owner = acquire.await?;
            Ok(MutexGuard {
                mutex: self,
                owner,
                _marker: PhantomData,
            })
        }
    }

    /// Acquires the mutex only if it is free now; `Err(Timeout)` otherwise.
    #[track_caller]
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, LockError> {
        let owner = acquire::try_acquire(
            &self.raw,
            &self.meta,
            AccessMode::Exclusive,
            Location::caller(),
        )?;
        Ok(MutexGuard {
            mutex: self,
            owner,
            _marker: PhantomData,
        })
    }

    /// This lock's statistics so far.
    pub fn stats(&self) -> LockStats {
        self.meta.stats()
    }

    /// Times this mutex's holds (see [`crate::Mutex::set_hold_timing`]).
    pub fn set_hold_timing(&self, on: bool) {
        self.meta.counters.set_hold_times(on);
    }

    /// This lock's identity: id, name, level, where it was created.
    pub fn info(&self) -> LockInfo {
        self.meta.info
    }

    /// Whether the mutex is held right now (a snapshot that may be stale at once).
    pub fn is_locked(&self) -> bool {
        self.raw.snapshot().0
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

impl<T> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("tokio::Mutex")
            .field("info", &self.meta.info)
            .field("locked", &self.is_locked())
            .finish_non_exhaustive()
    }
}

/// Exclusive access to a [`Mutex`]'s data; released when dropped, wherever that is (the hold is
/// recorded for the task that acquired it).
#[must_use = "the lock is released as soon as the guard is dropped"]
#[clippy::has_significant_drop]
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
    owner: Owner,
    /// No auto traits: `Send` and `Sync` are implemented below with the right bounds.
    _marker: PhantomData<*const ()>,
}

// SAFETY: the guard is exclusive access to `T`; moving it to another thread moves that access,
// which needs `T: Send` (as tokio's MutexGuard).
unsafe impl<T: Send> Send for MutexGuard<'_, T> {}
// SAFETY: a shared guard gives `&T`, so sharing it needs `T: Sync`.
unsafe impl<T: Send + Sync> Sync for MutexGuard<'_, T> {}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so no other owner accesses the data, and `&self`
        // rules out a live `&mut T` from this guard.
        self.mutex.data.get().with(|data| unsafe { &*data })
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock and `&mut self` makes this the only access.
        self.mutex.data.get_mut().with(|data| unsafe { &mut *data })
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        acquire::released(&self.mutex.meta, AccessMode::Exclusive, self.owner);
        self.mutex.raw.release(AccessMode::Exclusive);
    }
}

impl<T: fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
