//! The writer-preferring reader-writer state machine.
//!
//! `state` is one word:
//!
//! | bits      | name          | meaning                                                         |
//! |-----------|---------------|-----------------------------------------------------------------|
//! | 0         | WRITER        | a writer holds the lock                                         |
//! | 1         | WRITER_PARKED | a writer is parked, or was just woken and is about to take the lock; new readers must wait |
//! | 2         | READER_PARKED | readers are parked                                               |
//! | 3..       | readers       | number of readers holding the lock (`state / ONE_READER`)       |
//!
//! Writer preference: a reader may enter only while WRITER and WRITER_PARKED are both clear, so
//! once a writer has decided to sleep no new reader gets in; the readers inside drain, and the
//! last one out wakes a writer. Writers are therefore never starved by a flood of readers.
//! (Readers can be starved by a continuous stream of writers; that is the documented price.)
//!
//! Writers park on key `addr + 1`, readers on key `addr`. Invariants, maintained like the mutex's
//! PARKED bit (set before parking, re-validated under the queue lock):
//! - A waiter announces itself (sets its PARKED bit) in the same critical section as its accepted
//!   registration in the deadlock detector's graph, so the graph's "reader queued behind a
//!   waiting writer" edges are exactly the lock word's.
//! - READER_PARKED is set whenever a reader is parked. Whoever makes the lock available to
//!   readers (clears WRITER or WRITER_PARKED) wakes all parked readers if it is set.
//! - WRITER_PARKED is set whenever a writer is parked or on its way to park. The last reader out
//!   wakes one parked writer and leaves the bit set even if none is in the queue yet (that writer
//!   is between announcing itself and sleeping; its `validate` fails on the free lock and it takes
//!   it), so no reader slips in first. The bit is cleared by a writer's unlock that finds no
//!   writer in the queue, or by the last parked writer timing out; both then wake the readers.

use super::{Deadline, SlowPathError, WaitHooks};
use crate::loom::SpinWait;
use crate::loom::atomic::{AtomicUsize, Ordering};
use crate::loom::park::{ParkResult, ParkingLot, TOKEN_RETRY, UnparkResult};

const WRITER: usize = 0b001;
const WRITER_PARKED: usize = 0b010;
const READER_PARKED: usize = 0b100;
const ONE_READER: usize = 0b1000;
const READERS_MASK: usize = !(ONE_READER - 1);

/// A raw writer-preferring reader-writer lock without data or instrumentation.
#[derive(Debug)]
pub(crate) struct RawRwLock {
    state: AtomicUsize,
    parking: ParkingLot,
}

impl RawRwLock {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicUsize::new(0),
            parking: ParkingLot::new(),
        }
    }

    fn reader_key(&self) -> usize {
        self as *const Self as usize
    }

    fn writer_key(&self) -> usize {
        self.reader_key() + 1
    }

    // ----- shared (read) side -----

    #[inline]
    fn reader_may_enter(state: usize) -> bool {
        state & (WRITER | WRITER_PARKED) == 0
    }

    /// One attempt to take a read lock, no waiting.
    #[inline]
    pub(crate) fn try_read_fast(&self) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        Self::reader_may_enter(state)
            && state.checked_add(ONE_READER).is_some()
            && self
                .state
                .compare_exchange_weak(
                    state,
                    state + ONE_READER,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Takes a read lock, parking while a writer holds or awaits it. Returns whether it had to
    /// wait.
    #[cold]
    pub(crate) fn read_slow<E>(
        &self,
        deadline: Deadline,
        hooks: &mut dyn WaitHooks<Refusal = E>,
    ) -> Result<bool, SlowPathError<E>> {
        let mut spin = SpinWait::new();
        let mut hooked = false;
        let mut waited = false;
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if Self::reader_may_enter(state) {
                let mut current = state;
                let acquired = hooks.attempt(&mut || {
                    let next = current
                        .checked_add(ONE_READER)
                        .expect("reader count overflow");
                    self.state
                        .compare_exchange_weak(current, next, Ordering::Acquire, Ordering::Relaxed)
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
            if state & (WRITER_PARKED | READER_PARKED) == 0 && spin.spin() {
                state = self.state.load(Ordering::Relaxed);
                continue;
            }
            if !hooked {
                hooks
                    .about_to_park(&mut || {
                        self.announce(|s| !Self::reader_may_enter(s), READER_PARKED)
                    })
                    .map_err(SlowPathError::Refused)?;
                hooked = true;
            }
            if state & READER_PARKED == 0
                && let Err(now) = self.state.compare_exchange_weak(
                    state,
                    state | READER_PARKED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
            {
                state = now;
                continue;
            }
            let validate = || {
                let state = self.state.load(Ordering::Relaxed);
                !Self::reader_may_enter(state) && state & READER_PARKED != 0
            };
            let timed_out = |was_last: bool| {
                if was_last {
                    self.state.fetch_and(!READER_PARKED, Ordering::Relaxed);
                }
            };
            // SAFETY: the key is derived from this lock's address and the lock outlives the call;
            // the callbacks only touch atomics.
            let parked = unsafe {
                self.parking
                    .park(self.reader_key(), validate, timed_out, deadline.instant())
            };
            if parked == ParkResult::TimedOut {
                return Err(SlowPathError::TimedOut);
            }
            spin = SpinWait::new();
            state = self.state.load(Ordering::Relaxed);
        }
    }

    /// Sets `parked` while `blocked(state)` holds (the waiter would still have to sleep).
    fn announce(&self, blocked: impl Fn(usize) -> bool, parked: usize) {
        let mut state = self.state.load(Ordering::Relaxed);
        while blocked(state) && state & parked == 0 {
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

    /// Releases a read lock.
    ///
    /// # Safety
    /// The calling context must hold a read lock.
    #[inline]
    pub(crate) unsafe fn unlock_read(&self) {
        let before = self.state.fetch_sub(ONE_READER, Ordering::Release);
        // Last reader out while a writer waits: hand the lock over.
        if before & (READERS_MASK | WRITER_PARKED) == ONE_READER | WRITER_PARKED {
            self.wake_writer();
        }
    }

    /// The last reader left while WRITER_PARKED was set: wake one writer. If none is in the
    /// queue yet, the bit belongs to a writer between announcing itself and sleeping (readers
    /// inside means no writer holds the lock, and a writer that gave up cleared the bit itself);
    /// it is left set, so no new reader slips in before that writer, whose `validate` will now
    /// fail and send it back to take the free lock.
    #[cold]
    fn wake_writer(&self) {
        // SAFETY: the key is derived from this lock's address and the lock is alive; the
        // callback does nothing.
        unsafe {
            self.parking.unpark_one(self.writer_key(), |_| TOKEN_RETRY);
        }
    }

    // ----- exclusive (write) side -----

    #[inline]
    fn writer_may_enter(state: usize) -> bool {
        state & (WRITER | READERS_MASK) == 0
    }

    /// One attempt to take the write lock, no waiting.
    #[inline]
    pub(crate) fn try_write_fast(&self) -> bool {
        self.state
            .compare_exchange_weak(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the write lock, parking while anyone holds it. Returns whether it had to wait.
    #[cold]
    pub(crate) fn write_slow<E>(
        &self,
        deadline: Deadline,
        hooks: &mut dyn WaitHooks<Refusal = E>,
    ) -> Result<bool, SlowPathError<E>> {
        let mut spin = SpinWait::new();
        let mut hooked = false;
        let mut waited = false;
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if Self::writer_may_enter(state) {
                let mut current = state;
                let acquired = hooks.attempt(&mut || {
                    self.state
                        .compare_exchange_weak(
                            current,
                            current | WRITER,
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
            if state & WRITER_PARKED == 0 && spin.spin() {
                state = self.state.load(Ordering::Relaxed);
                continue;
            }
            if !hooked {
                hooks
                    .about_to_park(&mut || {
                        self.announce(|s| !Self::writer_may_enter(s), WRITER_PARKED)
                    })
                    .map_err(SlowPathError::Refused)?;
                hooked = true;
            }
            if state & WRITER_PARKED == 0
                && let Err(now) = self.state.compare_exchange_weak(
                    state,
                    state | WRITER_PARKED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
            {
                state = now;
                continue;
            }
            let validate = || {
                let state = self.state.load(Ordering::Relaxed);
                !Self::writer_may_enter(state) && state & WRITER_PARKED != 0
            };
            let mut readers_unblocked = false;
            let timed_out = |was_last: bool| {
                if was_last {
                    // No writer left asleep: readers may enter again.
                    self.state.fetch_and(!WRITER_PARKED, Ordering::Relaxed);
                    readers_unblocked = true;
                }
            };
            // SAFETY: the key is derived from this lock's address and the lock outlives the call;
            // the callbacks only touch atomics and a local flag.
            let parked = unsafe {
                self.parking
                    .park(self.writer_key(), validate, timed_out, deadline.instant())
            };
            if parked == ParkResult::TimedOut {
                if readers_unblocked {
                    self.wake_readers();
                }
                return Err(SlowPathError::TimedOut);
            }
            spin = SpinWait::new();
            state = self.state.load(Ordering::Relaxed);
        }
    }

    /// Releases the write lock.
    ///
    /// # Safety
    /// The calling context must hold the write lock.
    #[inline]
    pub(crate) unsafe fn unlock_write(&self) {
        if self
            .state
            .compare_exchange(WRITER, 0, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        self.state.fetch_and(!WRITER, Ordering::Release);
        self.wake_writer_or_readers();
    }

    // ----- wake-ups -----

    /// Called by a writer's unlock with WRITER_PARKED or READER_PARKED possibly set: wakes one
    /// writer if any is parked, otherwise clears WRITER_PARKED (the unlocking writer's own, or one
    /// whose writer will find the lock free and re-announce) and wakes the readers.
    #[cold]
    fn wake_writer_or_readers(&self) {
        if self.state.load(Ordering::Relaxed) & WRITER_PARKED != 0 {
            let callback = |result: UnparkResult| {
                if result.unparked_threads == 0 {
                    // A stale bit (its writer timed out or acquired already): readers may enter.
                    self.state.fetch_and(!WRITER_PARKED, Ordering::Relaxed);
                }
                TOKEN_RETRY
            };
            // SAFETY: the key is derived from this lock's address and the lock is alive; the
            // callback only touches an atomic.
            let result = unsafe { self.parking.unpark_one(self.writer_key(), callback) };
            if result.unparked_threads > 0 {
                return;
            }
        }
        self.wake_readers();
    }

    /// Wakes every parked reader if readers may now enter.
    fn wake_readers(&self) {
        let state = self.state.load(Ordering::Relaxed);
        if state & READER_PARKED == 0 || !Self::reader_may_enter(state) {
            return;
        }
        // Clear the bit first: a reader that validates after this sees it clear and retries
        // instead of sleeping; one that validated before is in the queue and is woken below.
        self.state.fetch_and(!READER_PARKED, Ordering::Relaxed);
        // SAFETY: the key is this lock's address and the lock is alive.
        unsafe {
            self.parking.unpark_all(self.reader_key(), TOKEN_RETRY);
        }
    }

    /// A racy snapshot: (write-locked, readers holding it), for diagnostics.
    pub(crate) fn snapshot(&self) -> (bool, usize) {
        let state = self.state.load(Ordering::Relaxed);
        (state & WRITER != 0, state / ONE_READER)
    }
}
