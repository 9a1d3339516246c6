//! The mutex state machine: one byte, a compare-exchange fast path, parking on the slow path.
//!
//! `state` holds two bits:
//!
//! | LOCKED | PARKED | meaning                                                       |
//! |--------|--------|---------------------------------------------------------------|
//! | 0      | 0      | free, nobody parked                                           |
//! | 1      | 0      | held, nobody parked: unlock is one compare-exchange           |
//! | 1      | 1      | held, threads may be parked: unlock goes through `unlock_slow` |
//! | 0      | 1      | free, a woken thread is racing to take it                     |
//!
//! Invariant: PARKED is set whenever a thread is parked on this lock. It is set by a thread
//! before it parks (and re-checked by `validate` under the parking-lot queue lock) and cleared
//! only under that queue lock, by the unpark callback or by the last waiter that times out. So an
//! unlock that sees PARKED clear has nobody to wake: no wake-up is lost.
//!
//! The [`WaitHooks`] run on the slow path only: `about_to_park` once per acquisition, the first
//! time the thread has decided to sleep (where sync-kit's deadlock detector registers the wait; an
//! error aborts the acquisition before the thread ever sleeps), and `attempt` around every
//! compare-exchange that could acquire the lock.

use super::{Deadline, SlowPathError, WaitHooks};
use crate::loom::SpinWait;
use crate::loom::atomic::{AtomicU8, Ordering};
use crate::loom::park::{ParkResult, ParkingLot, TOKEN_RETRY};

const LOCKED: u8 = 0b01;
const PARKED: u8 = 0b10;

/// A raw mutual-exclusion lock without data, owner tracking or instrumentation.
#[derive(Debug)]
pub(crate) struct RawMutex {
    state: AtomicU8,
    parking: ParkingLot,
}

impl RawMutex {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU8::new(0),
            parking: ParkingLot::new(),
        }
    }

    fn key(&self) -> usize {
        self as *const Self as usize
    }

    /// One attempt, no waiting.
    #[inline]
    pub(crate) fn try_lock_fast(&self) -> bool {
        self.state
            .compare_exchange_weak(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Acquires the lock, parking if needed. Returns whether the thread had to wait (spin or
    /// park) because the lock was held.
    #[cold]
    pub(crate) fn lock_slow<E>(
        &self,
        deadline: Deadline,
        hooks: &mut dyn WaitHooks<Refusal = E>,
    ) -> Result<bool, SlowPathError<E>> {
        let mut spin = SpinWait::new();
        let mut hooked = false;
        let mut waited = false;
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & LOCKED == 0 {
                let mut current = state;
                let acquired = hooks.attempt(&mut || {
                    self.state
                        .compare_exchange_weak(
                            current,
                            current | LOCKED,
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .map_err(|now| current = now)
                        .is_ok()
                });
                if acquired {
                    return Ok(waited);
                }
                state = current;
                continue;
            }
            waited = true;
            if deadline.is_now() {
                return Err(SlowPathError::TimedOut);
            }
            // Nobody is parked yet: spinning a little may beat the cost of sleeping.
            if state & PARKED == 0 && spin.spin() {
                state = self.state.load(Ordering::Relaxed);
                continue;
            }
            if !hooked {
                hooks
                    .about_to_park(&mut || self.announce(LOCKED, PARKED))
                    .map_err(SlowPathError::Refused)?;
                hooked = true;
            }
            if state & PARKED == 0
                && let Err(now) = self.state.compare_exchange_weak(
                    state,
                    state | PARKED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
            {
                state = now;
                continue;
            }
            let validate = || self.state.load(Ordering::Relaxed) == LOCKED | PARKED;
            let timed_out = |was_last: bool| {
                // The last waiter leaving: nobody is parked any more.
                if was_last {
                    self.state.fetch_and(!PARKED, Ordering::Relaxed);
                }
            };
            // SAFETY: the key is this lock's address, and the lock outlives this call (we borrow
            // it). The callbacks only touch atomics: they cannot panic or re-enter the parking lot.
            let parked = unsafe {
                self.parking
                    .park(self.key(), validate, || {}, timed_out, deadline.instant())
            };
            match parked {
                // Woken by an unlock, or the state changed before we slept: try again.
                ParkResult::Unparked(_) | ParkResult::Invalid => {}
                ParkResult::TimedOut => return Err(SlowPathError::TimedOut),
            }
            spin = SpinWait::new();
            state = self.state.load(Ordering::Relaxed);
        }
    }

    /// Sets `parked` unless the lock became free (no bit in `busy` set) meanwhile.
    fn announce(&self, busy: u8, parked: u8) {
        let mut state = self.state.load(Ordering::Relaxed);
        while state & busy != 0 && state & parked == 0 {
            match self.state.compare_exchange_weak(
                state,
                state | parked,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => state = now,
            }
        }
    }

    /// Releases the lock.
    ///
    /// # Safety
    /// The calling context must hold the lock.
    #[inline]
    pub(crate) unsafe fn unlock(&self) {
        if self
            .state
            .compare_exchange(LOCKED, 0, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        self.unlock_slow();
    }

    #[cold]
    fn unlock_slow(&self) {
        let callback = |result: crate::loom::park::UnparkResult| {
            // Release the lock and leave PARKED set only if somebody is still asleep. Done under
            // the queue lock, so a thread about to park re-validates against this new state.
            let next = if result.have_more_threads { PARKED } else { 0 };
            self.state.store(next, Ordering::Release);
            TOKEN_RETRY
        };
        // SAFETY: the key is this lock's address and the lock is alive; the callback only stores
        // to an atomic.
        unsafe {
            self.parking.unpark_one(self.key(), callback);
        }
    }

    /// Whether some thread holds the lock right now (a racy snapshot, for diagnostics).
    pub(crate) fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & LOCKED != 0
    }
}

impl super::meta::RawHeld for RawMutex {
    fn is_held(&self) -> bool {
        self.is_locked()
    }
}
