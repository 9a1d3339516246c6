//! Parking threads on a lock: parking_lot_core's protocol, or its loom emulation.
//!
//! The contract, identical in both builds (it is parking_lot_core's):
//! - [`ParkingLot::park`] runs `validate` while the queue for `key` is locked; if it returns
//!   `false` the thread does not sleep ([`ParkResult::Invalid`]). Otherwise the thread is queued,
//!   runs `before_sleep` (which may unpark, never park: a condvar releases its mutex there, once
//!   it can no longer miss a notification), and sleeps until an unpark for `key` picks it, or
//!   until `deadline`; a thread that times out calls `timed_out` with `was_last` (no other thread
//!   is queued on `key`), still under the queue lock.
//! - [`ParkingLot::unpark_one`] dequeues the oldest thread parked on `key` and calls `callback`
//!   under the queue lock, before that thread runs; the token it returns is handed to that thread.
//! - Callbacks must not panic and must not park or unpark.
//!
//! So a state change made in an unpark callback is seen by every later `validate`: that is what
//! makes "set PARKED bit, then park only if the bit is still set" free of lost wake-ups.

use std::time::Instant;

/// Value handed from an unparking thread to the thread it wakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UnparkToken(pub(crate) usize);

/// The default token: "retry the acquisition".
pub(crate) const TOKEN_RETRY: UnparkToken = UnparkToken(0);

/// How a park ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParkResult {
    Unparked(UnparkToken),
    Invalid,
    TimedOut,
}

/// What an unpark found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UnparkResult {
    pub(crate) unparked_threads: usize,
    pub(crate) have_more_threads: bool,
}

pub(crate) use imp::ParkingLot;

#[cfg(not(loom))]
mod imp {
    use super::*;

    /// Zero-sized: the queues live in parking_lot_core's global table, keyed by address.
    #[derive(Debug, Default)]
    pub(crate) struct ParkingLot;

    impl ParkingLot {
        pub(crate) const fn new() -> Self {
            ParkingLot
        }

        /// Parks the calling thread on `key`; see the module docs.
        ///
        /// # Safety
        /// `key` must identify a lock that outlives every thread parked on it; `validate` and
        /// `timed_out` must neither panic nor call into the parking lot; `before_sleep` must not
        /// panic and must not park.
        #[inline]
        pub(crate) unsafe fn park(
            &self,
            key: usize,
            validate: impl FnOnce() -> bool,
            before_sleep: impl FnOnce(),
            timed_out: impl FnOnce(bool),
            deadline: Option<Instant>,
        ) -> ParkResult {
            // SAFETY: forwarded from this function's contract.
            let result = unsafe {
                parking_lot_core::park(
                    key,
                    validate,
                    before_sleep,
                    |_, was_last| timed_out(was_last),
                    parking_lot_core::DEFAULT_PARK_TOKEN,
                    deadline,
                )
            };
            match result {
                parking_lot_core::ParkResult::Unparked(token) => {
                    ParkResult::Unparked(UnparkToken(token.0))
                }
                parking_lot_core::ParkResult::Invalid => ParkResult::Invalid,
                parking_lot_core::ParkResult::TimedOut => ParkResult::TimedOut,
            }
        }

        /// Wakes the oldest thread parked on `key`; see the module docs.
        ///
        /// # Safety
        /// `callback` must neither panic nor call into the parking lot.
        #[inline]
        pub(crate) unsafe fn unpark_one(
            &self,
            key: usize,
            callback: impl FnOnce(UnparkResult) -> UnparkToken,
        ) -> UnparkResult {
            let mut seen = UnparkResult::default();
            // SAFETY: forwarded from this function's contract.
            unsafe {
                parking_lot_core::unpark_one(key, |result| {
                    seen = UnparkResult {
                        unparked_threads: result.unparked_threads,
                        have_more_threads: result.have_more_threads,
                    };
                    parking_lot_core::UnparkToken(callback(seen).0)
                });
            }
            seen
        }

        /// Wakes every thread parked on `key`; returns how many.
        ///
        /// # Safety
        /// `key` must identify a lock that outlives every thread parked on it.
        #[inline]
        pub(crate) unsafe fn unpark_all(&self, key: usize, token: UnparkToken) -> usize {
            // SAFETY: forwarded from this function's contract.
            unsafe { parking_lot_core::unpark_all(key, parking_lot_core::UnparkToken(token.0)) }
        }
    }
}

#[cfg(loom)]
mod imp {
    use super::*;
    use std::collections::VecDeque;

    /// One FIFO wait queue per lock, shared by all keys of that lock.
    #[derive(Debug, Default)]
    pub(crate) struct ParkingLot {
        queue: loom::sync::Mutex<Queue>,
        wake: loom::sync::Condvar,
    }

    #[derive(Debug, Default)]
    struct Queue {
        next_ticket: u64,
        parked: VecDeque<(usize, u64)>,
        woken: Vec<(u64, UnparkToken)>,
    }

    impl Queue {
        fn has(&self, key: usize) -> bool {
            self.parked.iter().any(|&(k, _)| k == key)
        }
    }

    impl ParkingLot {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        fn queue(&self) -> loom::sync::MutexGuard<'_, Queue> {
            self.queue.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Loom emulation of parking_lot_core's `park`; a timed park times out at once.
        ///
        /// `before_sleep` runs with this queue still locked (parking_lot_core unlocks the queue
        /// first): no unpark can come between queueing and `before_sleep`, a subset of the real
        /// interleavings. Safe here because each lock has its own queue and `before_sleep` only
        /// ever releases another lock, whose queue is never held while this one is taken.
        ///
        /// # Safety
        /// Same contract as the std build.
        pub(crate) unsafe fn park(
            &self,
            key: usize,
            validate: impl FnOnce() -> bool,
            before_sleep: impl FnOnce(),
            timed_out: impl FnOnce(bool),
            deadline: Option<Instant>,
        ) -> ParkResult {
            let mut queue = self.queue();
            if !validate() {
                return ParkResult::Invalid;
            }
            if deadline.is_some() {
                before_sleep();
                timed_out(!queue.has(key));
                return ParkResult::TimedOut;
            }
            let ticket = queue.next_ticket;
            queue.next_ticket += 1;
            queue.parked.push_back((key, ticket));
            before_sleep();
            loop {
                if let Some(at) = queue.woken.iter().position(|&(t, _)| t == ticket) {
                    let (_, token) = queue.woken.swap_remove(at);
                    return ParkResult::Unparked(token);
                }
                queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        }

        /// # Safety
        /// Same contract as the std build.
        pub(crate) unsafe fn unpark_one(
            &self,
            key: usize,
            callback: impl FnOnce(UnparkResult) -> UnparkToken,
        ) -> UnparkResult {
            let mut queue = self.queue();
            let ticket = queue
                .parked
                .iter()
                .position(|&(k, _)| k == key)
                .and_then(|at| queue.parked.remove(at))
                .map(|(_, ticket)| ticket);
            let result = UnparkResult {
                unparked_threads: usize::from(ticket.is_some()),
                have_more_threads: queue.has(key),
            };
            let token = callback(result);
            if let Some(ticket) = ticket {
                queue.woken.push((ticket, token));
                self.wake.notify_all();
            }
            result
        }

        /// # Safety
        /// Same contract as the std build.
        pub(crate) unsafe fn unpark_all(&self, key: usize, token: UnparkToken) -> usize {
            let mut queue = self.queue();
            let mut woken = 0;
            while let Some(at) = queue.parked.iter().position(|&(k, _)| k == key) {
                let (_, ticket) = queue.parked.remove(at).expect("position is in range");
                queue.woken.push((ticket, token));
                woken += 1;
            }
            if woken > 0 {
                self.wake.notify_all();
            }
            woken
        }
    }
}
