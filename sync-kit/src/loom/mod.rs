//! The one place that chooses between the standard library and loom.
//!
//! Every atomic, thread, thread-local, global and `UnsafeCell` that takes part in sync-kit's
//! synchronisation is imported from here, so `RUSTFLAGS="--cfg loom"` model-checks the same code
//! that ships. Items:
//!
//! - [`atomic`]: `AtomicBool`, `AtomicU8`, `AtomicU32`, `AtomicUsize`, `AtomicU64`, `AtomicPtr`,
//!   `Ordering`.
//! - [`dekker`]: the orderings (and fence) for a store (or read-modify-write) that must be
//!   ordered before a later load of another location: `SeqCst` accesses in normal builds, a
//!   `SeqCst` fence under loom.
//! - [`thread`]: `current`, `ThreadId`.
//! - [`cell::UnsafeCell`]: loom's `UnsafeCell` API (`get`/`get_mut` returning tracked pointers),
//!   mirrored over `std::cell::UnsafeCell` for normal builds.
//! - [`InternalMutex`]: a plain mutex for sync-kit's own bookkeeping (the wait-for graph, the
//!   lock registry, the MVCC map's internal locks). It is never one of sync-kit's instrumented locks, so the detector cannot
//!   recurse into itself.
//! - [`park`]: `park`/`unpark_one`/`unpark_all` with parking_lot_core's semantics; under loom a
//!   per-lock emulation built from loom's `Mutex` and `Condvar`.
//! - [`SpinWait`]: bounded spinning before parking; under loom it never spins (a spin loop would
//!   only multiply the interleavings loom has to explore). [`yield_now`]: std's or loom's, for a
//!   wait that gave up spinning but cannot park.
//! - `global!`: a lazily initialised `static` (std `LazyLock`, or `loom::lazy_static!`, which loom
//!   resets for every explored execution).
//! - `thread_local!`: std's or loom's.
//!
//! Known loom gaps, worked around here and nowhere else:
//! - loom has no clock. A timed park under loom behaves as if its deadline passed the moment the
//!   thread would have slept, which exercises every timeout clean-up path without real time.
//! - loom cannot park on an address, so under loom each raw lock carries its own wait queue
//!   ([`park::ParkingLot`]); in normal builds that type is zero-sized and defers to the
//!   process-wide parking lot of `parking_lot_core`. Its `park` runs `before_sleep` with that
//!   queue still locked (parking_lot_core unlocks first), so no unpark can fall between queueing
//!   and `before_sleep`: a subset of the real interleavings, documented in [`park`].

pub(crate) mod park;

#[cfg(not(loom))]
pub(crate) mod atomic {
    #[cfg_attr(not(feature = "mvcc"), allow(unused_imports))] // the MVCC entries' chains alone
    pub(crate) use std::sync::atomic::AtomicPtr;
    #[cfg_attr(not(feature = "mvcc"), allow(unused_imports))] // the MVCC commits alone
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32};
    pub(crate) use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
}
#[cfg(loom)]
pub(crate) mod atomic {
    #[cfg_attr(not(feature = "mvcc"), allow(unused_imports))] // the MVCC entries' chains alone
    pub(crate) use loom::sync::atomic::AtomicPtr;
    #[cfg_attr(not(feature = "mvcc"), allow(unused_imports))] // the MVCC commits alone
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32};
    pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
}

/// Dekker's pattern: two threads each store to one location and then load from the other's,
/// and at least one of them must see the other's store (the MVCC map's registrations against
/// its commits). Written as
///
/// ```text
/// x.store(v, dekker::STORE); dekker::fence(); let seen = y.load(dekker::LOAD);
/// ```
///
/// In normal builds the accesses are `SeqCst` and the fence is nothing: `SeqCst` operations
/// have one total order, so the later of the two stores in it comes before the other thread's
/// load (on x86 the store is a locked instruction, which already orders it before the load: no
/// fence instruction). loom does not model `SeqCst` accesses (it treats them as `AcqRel`) but
/// does model `SeqCst` fences, so under loom the accesses are `Release` and `Acquire` with a
/// `SeqCst` fence between them: the same guarantee, by the fences' total order.
#[cfg_attr(not(feature = "mvcc"), allow(dead_code))]
pub(crate) mod dekker {
    use super::atomic::Ordering;

    #[cfg(not(loom))]
    pub(crate) const STORE: Ordering = Ordering::SeqCst;
    #[cfg(not(loom))]
    pub(crate) const LOAD: Ordering = Ordering::SeqCst;
    /// For a read-modify-write in the place of the store.
    #[cfg(not(loom))]
    pub(crate) const RMW: Ordering = Ordering::SeqCst;
    #[cfg(not(loom))]
    #[inline(always)]
    pub(crate) fn fence() {}

    #[cfg(loom)]
    pub(crate) const STORE: Ordering = Ordering::Release;
    #[cfg(loom)]
    pub(crate) const LOAD: Ordering = Ordering::Acquire;
    #[cfg(loom)]
    pub(crate) const RMW: Ordering = Ordering::AcqRel;
    #[cfg(loom)]
    pub(crate) fn fence() {
        loom::sync::atomic::fence(Ordering::SeqCst);
    }
}

#[cfg(not(loom))]
pub(crate) mod thread {
    pub(crate) use std::thread::{ThreadId, current};
}
#[cfg(loom)]
pub(crate) mod thread {
    pub(crate) use loom::thread::{ThreadId, current};
}

#[cfg(not(loom))]
pub(crate) use std::thread_local;

#[cfg(loom)]
pub(crate) use loom::thread_local;

/// Gives the processor to another thread: after a [`SpinWait`] gave up on a short wait for
/// another thread's step (under loom, lets the model run that thread).
#[cfg_attr(not(feature = "mvcc"), allow(dead_code))] // the MVCC commits alone
#[inline]
pub(crate) fn yield_now() {
    #[cfg(not(loom))]
    std::thread::yield_now();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Declares a lazily initialised global: `global! { static NAME: Type = init; }`.
#[cfg(not(loom))]
macro_rules! global {
    ($(#[$attr:meta])* static $name:ident: $ty:ty = $init:expr;) => {
        $(#[$attr])*
        static $name: std::sync::LazyLock<$ty> = std::sync::LazyLock::new(|| $init);
    };
}
#[cfg(loom)]
macro_rules! global {
    ($(#[$attr:meta])* static $name:ident: $ty:ty = $init:expr;) => {
        loom::lazy_static! {
            $(#[$attr])*
            static ref $name: $ty = $init;
        }
    };
}
pub(crate) use global;

/// A mutex for sync-kit's internal bookkeeping; never instrumented, never poisoned.
#[derive(Debug, Default)]
pub(crate) struct InternalMutex<T> {
    #[cfg(not(loom))]
    inner: parking_lot::Mutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

impl<T> InternalMutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: parking_lot::Mutex::new(value),
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    #[cfg(not(loom))]
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
        self.inner.lock()
    }

    /// Locks the mutex, first polling it up to `polls` times while another thread holds it
    /// (relaxed loads and a spin-loop hint, then one attempt when it looks free), before the
    /// usual spin-then-park of [`InternalMutex::lock`]. For a mutex held for a short, fixed
    /// stretch (the MVCC committer's, about 100 ns) by threads that come back for it at once: a
    /// waiter that parks costs the holder a futex wake and itself a wake-up, microseconds each,
    /// and `lock`'s own spin gives up after a few hundred nanoseconds. Bounded, for when the
    /// holder is descheduled. Under loom, `lock` (every retry is already an interleaving).
    #[cfg(not(loom))]
    #[cfg_attr(not(feature = "mvcc"), allow(dead_code))] // the MVCC map's committer alone
    pub(crate) fn lock_polling(&self, polls: u32) -> parking_lot::MutexGuard<'_, T> {
        for _ in 0..polls {
            if !self.inner.is_locked()
                && let Some(guard) = self.inner.try_lock()
            {
                return guard;
            }
            std::hint::spin_loop();
        }
        self.inner.lock()
    }

    #[cfg(loom)]
    #[cfg_attr(not(feature = "mvcc"), allow(dead_code))]
    pub(crate) fn lock_polling(&self, _polls: u32) -> loom::sync::MutexGuard<'_, T> {
        self.lock()
    }

    /// Locks the mutex if no one holds it, without waiting.
    #[cfg(not(loom))]
    #[cfg_attr(not(feature = "mvcc"), allow(dead_code))] // the MVCC map alone
    pub(crate) fn try_lock(&self) -> Option<parking_lot::MutexGuard<'_, T>> {
        self.inner.try_lock()
    }

    #[cfg(loom)]
    #[cfg_attr(not(feature = "mvcc"), allow(dead_code))]
    pub(crate) fn try_lock(&self) -> Option<loom::sync::MutexGuard<'_, T>> {
        match self.inner.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Whether another thread holds the mutex now (a hint, stale as soon as it is read: one
    /// relaxed load, no read-modify-write). Under loom always `true`, so that the models explore
    /// the path taken when the mutex is contended.
    #[cfg(not(loom))]
    #[cfg_attr(not(feature = "mvcc"), allow(dead_code))] // the MVCC map's committer alone
    pub(crate) fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }

    #[cfg(loom)]
    #[cfg_attr(not(feature = "mvcc"), allow(dead_code))]
    pub(crate) fn is_locked(&self) -> bool {
        true
    }

    #[cfg(loom)]
    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        // A panic while holding an internal lock is a sync-kit bug; keep going with the data.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Bounded spinning before a thread parks (exponential back-off, then yields).
#[cfg(not(loom))]
pub(crate) struct SpinWait(parking_lot_core::SpinWait);

#[cfg(not(loom))]
impl SpinWait {
    pub(crate) fn new() -> Self {
        Self(parking_lot_core::SpinWait::new())
    }

    /// Spins once more; `false` once spinning is no longer worth it.
    #[inline]
    pub(crate) fn spin(&mut self) -> bool {
        self.0.spin()
    }
}

/// Under loom spinning is pointless: every retry is already an explored interleaving.
#[cfg(loom)]
pub(crate) struct SpinWait;

#[cfg(loom)]
impl SpinWait {
    pub(crate) fn new() -> Self {
        SpinWait
    }

    #[inline]
    pub(crate) fn spin(&mut self) -> bool {
        false
    }
}

pub(crate) mod cell {
    //! `UnsafeCell` with loom's access-tracking API.

    #[cfg(loom)]
    pub(crate) use loom::cell::{ConstPtr, MutPtr, UnsafeCell};

    /// `std::cell::UnsafeCell` behind loom's API.
    #[cfg(not(loom))]
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    #[cfg(not(loom))]
    impl<T> UnsafeCell<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }
        pub(crate) fn into_inner(self) -> T {
            self.0.into_inner()
        }
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }
        #[inline]
        pub(crate) fn get(&self) -> ConstPtr<T> {
            ConstPtr(self.0.get())
        }
        #[inline]
        pub(crate) fn get_mut(&self) -> MutPtr<T> {
            // `get` on a live cell never returns null (the check folds away); `NonNull` lets an
            // `Option<MutPtr<T>>` stay one word.
            MutPtr(std::ptr::NonNull::new(self.0.get()).expect("a cell's address is not null"))
        }
    }

    /// A shared access to the cell's value (loom tracks it while this lives).
    #[cfg(not(loom))]
    #[derive(Debug)]
    pub(crate) struct ConstPtr<T>(*const T);

    #[cfg(not(loom))]
    impl<T> ConstPtr<T> {
        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0)
        }
    }

    /// An exclusive access to the cell's value (loom tracks it while this lives).
    #[cfg(not(loom))]
    #[derive(Debug)]
    pub(crate) struct MutPtr<T>(std::ptr::NonNull<T>);

    #[cfg(not(loom))]
    impl<T> MutPtr<T> {
        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.as_ptr())
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::InternalMutex;

    /// The committer's hint (`mvcc/state.rs`): true exactly while someone holds the mutex.
    #[test]
    fn is_locked_tells_whether_the_mutex_is_held() {
        let mutex = InternalMutex::new(0);
        assert!(!mutex.is_locked());
        let guard = mutex.lock();
        assert!(mutex.is_locked());
        std::thread::scope(|s| {
            s.spawn(|| assert!(mutex.is_locked(), "seen from another thread too"));
        });
        drop(guard);
        assert!(!mutex.is_locked());
    }
}
