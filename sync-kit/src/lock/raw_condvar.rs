//! The condition-variable state machine: a count of waiters and one parking queue.
//!
//! `waiters` counts the threads between the start of a wait (made while they hold the mutex) and
//! their return from the parking lot:
//!
//! | waiters | meaning                                                                  |
//! |---------|--------------------------------------------------------------------------|
//! | 0       | nobody waits: a notification is one load and returns                     |
//! | n > 0   | up to n threads are queued (or about to be): notify goes to the queue    |
//!
//! Invariant (no lost wake-up): a waiter is counted while it holds the mutex, and it releases the
//! mutex only from the parking lot's `before_sleep`, that is once it is in the queue. A notifier
//! that changed the waited-for state under the mutex took the mutex after the waiter released it,
//! so it sees the count (the mutex orders the two) and its unpark finds the waiter in the queue.
//! Nothing is ever woken without a notification (the parking lot has no spurious wake-ups), so
//! `notify_one` wakes exactly one queued waiter, if there is one.
//!
//! No requeueing onto the mutex (parking_lot moves the waiters of `notify_all` to the mutex's
//! queue): every woken thread reacquires its mutex through the full acquisition protocol, so the
//! deadlock detector and the order checker see each reacquisition like any other.

use std::time::Instant;

use crate::loom::atomic::{AtomicUsize, Ordering};
use crate::loom::park::{ParkResult, ParkingLot, TOKEN_RETRY};

/// A raw condition variable: a queue of sleeping threads, without mutex, names or statistics.
#[derive(Debug)]
pub(crate) struct RawCondvar {
    waiters: AtomicUsize,
    parking: ParkingLot,
}

impl RawCondvar {
    pub(crate) fn new() -> Self {
        Self {
            waiters: AtomicUsize::new(0),
            parking: ParkingLot::new(),
        }
    }

    fn key(&self) -> usize {
        self as *const Self as usize
    }

    /// Sleeps until notified or until `deadline`; returns whether it timed out. `unlock` releases
    /// the caller's mutex; it runs exactly once, after the thread is queued and before it sleeps.
    ///
    /// The caller must hold the mutex that guards the waited-for state when it calls this.
    #[cold]
    pub(crate) fn wait(&self, unlock: impl FnOnce(), deadline: Option<Instant>) -> bool {
        // Counted under the mutex: ordered before any notifier that takes the mutex after us.
        self.waiters.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the key is this condvar's address and the condvar outlives the call (borrowed).
        // `validate` and `timed_out` do nothing; `before_sleep` releases a sync-kit mutex, which
        // may unpark that mutex's waiters but never parks and never panics.
        let parked = unsafe {
            self.parking
                .park(self.key(), || true, unlock, |_| {}, deadline)
        };
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        match parked {
            ParkResult::Unparked(_) => false,
            ParkResult::TimedOut => true,
            ParkResult::Invalid => unreachable!("a condvar wait always validates"),
        }
    }

    /// Wakes the oldest waiter, if any; returns whether one was woken.
    #[inline]
    pub(crate) fn notify_one(&self) -> bool {
        if self.waiters.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.notify_one_slow()
    }

    #[cold]
    fn notify_one_slow(&self) -> bool {
        // SAFETY: the key is this condvar's address and the condvar is alive; the callback does
        // nothing.
        let result = unsafe { self.parking.unpark_one(self.key(), |_| TOKEN_RETRY) };
        result.unparked_threads > 0
    }

    /// Wakes every waiter; returns how many.
    #[inline]
    pub(crate) fn notify_all(&self) -> usize {
        if self.waiters.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.notify_all_slow()
    }

    #[cold]
    fn notify_all_slow(&self) -> usize {
        // SAFETY: the key is this condvar's address and the condvar is alive.
        unsafe { self.parking.unpark_all(self.key(), TOKEN_RETRY) }
    }
}
