//! The writer-preferring reader-writer state machine.
//!
//! `state` is one 64-bit word:
//!
//! | bits   | name            | meaning                                                          |
//! |--------|-----------------|------------------------------------------------------------------|
//! | 0      | WRITER          | a writer holds the lock                                          |
//! | 1      | READER_PARKED   | readers may be parked                                            |
//! | 2..17  | waiting writers | writers that announced they wait (`(state & WAITING_MASK) / ONE_WAITING_WRITER`) |
//! | 17     | DIVERT          | the typed layer wants every acquisition through its instrumented path: the fast paths fail on it, the slow paths ignore it |
//! | 18..40 | readers         | readers holding the lock (`(state & READERS_MASK) / ONE_READER`) |
//! | 40..64 | reads done      | read holds released since the last flush (`state / ONE_READ_DONE`) |
//!
//! **Exact read counts for free.** A read unlock is one `fetch_add` that removes a reader and
//! adds a finished read in the same step, so "read acquisitions so far" is `reads_flushed +
//! reads done + readers`, all but the first in one word: exact at any instant, with no atomic
//! beyond the two the lock itself needs. Once "reads done" reaches its top bit (2^23 reads), the
//! unlock that sees it moves the field into `reads_flushed` (`#[cold]`, under [`READ_FLUSH`],
//! which [`RawRwLock::reads`] also takes, so no reader of the count sees a flush half done).
//!
//! **Writer preference.** A reader may enter only while no writer holds the lock and no writer
//! waits. A writer that must sleep counts itself in "waiting writers" once, and stays counted
//! until it takes the lock (the acquiring compare-exchange uncounts it in the same step) or gives
//! up (timeout). From the moment it is counted no new reader gets in; the readers inside drain,
//! the last one out wakes a writer. Writers are never starved by readers; a continuous stream of
//! writers can starve readers, the classic price.
//!
//! A count rather than one bit: the lock word then always says exactly whether a writer waits, so
//! no unlock has to guess whether a "writer parked" bit is stale, and the deadlock detector's edge
//! "this reader is queued behind that waiting writer" is true exactly as long as the writer is in
//! the detector's graph (a writer is counted in the same critical section as its accepted
//! registration, and uncounted in the same one as its departure).
//!
//! Parking: writers on key `addr + 1`, readers on key `addr`.
//! - A counted writer sleeps only while the lock is held (`validate`: WRITER or readers). Whoever
//!   frees the lock while writers are counted (the last reader out, a writer unlocking) wakes one
//!   parked writer. If none is parked yet, the counted writer is on its way: its `validate` fails
//!   on the free lock and it takes the lock. No wake-up is lost.
//! - READER_PARKED is set before a reader sleeps and re-validated under the queue lock. Whoever
//!   makes the lock available to readers (a writer unlocking with no writer counted, the last
//!   counted writer giving up) clears it and wakes every parked reader.

use super::{Deadline, SlowPathError, WaitHooks};
use crate::loom::SpinWait;
use crate::loom::atomic::{AtomicU64, Ordering};
use crate::loom::park::{ParkResult, ParkingLot, TOKEN_RETRY};
use crate::loom::{InternalMutex, global};

const WRITER: u64 = 1 << 0;
const READER_PARKED: u64 = 1 << 1;
const ONE_WAITING_WRITER: u64 = 1 << 2;
const WAITING_MASK: u64 = ((1 << 15) - 1) * ONE_WAITING_WRITER;
/// Set while the lock's flags ask for the instrumented path (`meta.rs`): both fast paths test it
/// with what they test anyway, so the typed layer's plain path reads no flags byte.
const DIVERT: u64 = 1 << 17;
const ONE_READER: u64 = 1 << 18;
const READERS_MASK: u64 = ((1 << 22) - 1) * ONE_READER;
/// The top bit of the readers' count: the fast path only admits readers while it is clear.
const READERS_TOP: u64 = 1 << 39;
const ONE_READ_DONE: u64 = 1 << 40;
const DONE_MASK: u64 = !(ONE_READ_DONE - 1);
/// The top bit of "reads done": the unlock that sees it set flushes the field.
const DONE_TOP: u64 = 1 << 63;

global! {
    /// Serializes moving "reads done" out of a lock word with reading the total (rare: once per
    /// 2^23 reads of a lock, and when statistics are read or reset).
    static READ_FLUSH: InternalMutex<()> = InternalMutex::new(());
}

/// A raw writer-preferring reader-writer lock without data or instrumentation, which counts its
/// read acquisitions exactly.
#[derive(Debug)]
pub(crate) struct RawRwLock {
    state: AtomicU64,
    /// Reads moved out of the word's "reads done" (wrapping; lowered by a reset), written under
    /// [`READ_FLUSH`].
    reads_flushed: AtomicU64,
    parking: ParkingLot,
}

impl RawRwLock {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            reads_flushed: AtomicU64::new(0),
            parking: ParkingLot::new(),
        }
    }

    /// Read acquisitions so far (those still held included), exact at the moment of the read.
    pub(crate) fn reads(&self) -> u64 {
        let _flush = READ_FLUSH.lock();
        let state = self.state.load(Ordering::Relaxed);
        self.reads_flushed
            .load(Ordering::Relaxed)
            .wrapping_add(Self::reads_in(state))
    }

    /// Restarts [`reads`](Self::reads) from zero.
    pub(crate) fn reset_reads(&self) {
        let _flush = READ_FLUSH.lock();
        let state = self.state.load(Ordering::Relaxed);
        self.reads_flushed
            .store(0u64.wrapping_sub(Self::reads_in(state)), Ordering::Relaxed);
    }

    fn reads_in(state: u64) -> u64 {
        (state / ONE_READ_DONE) + (state & READERS_MASK) / ONE_READER
    }

    /// Moves "reads done" into `reads_flushed` if it reached its top bit.
    #[cold]
    #[inline(never)]
    fn flush_reads(&self) {
        let _flush = READ_FLUSH.lock();
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & DONE_TOP == 0 {
                return; // flushed meanwhile
            }
            let done = state & DONE_MASK;
            match self.state.compare_exchange_weak(
                state,
                state - done,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let flushed = self.reads_flushed.load(Ordering::Relaxed);
                    self.reads_flushed.store(
                        flushed.wrapping_add(done / ONE_READ_DONE),
                        Ordering::Relaxed,
                    );
                    return;
                }
                Err(now) => state = now,
            }
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
    fn reader_may_enter(state: u64) -> bool {
        state & (WRITER | WAITING_MASK) == 0
    }

    /// One attempt to take a read lock, no waiting. One test covers writer preference, overflow
    /// and [`DIVERT`]: with the readers' top bit clear, one more reader cannot overflow (a lock
    /// with that many readers goes through the slow path, which checks).
    #[inline]
    pub(crate) fn try_read_fast(&self) -> bool {
        self.try_read_unless(WRITER | WAITING_MASK | DIVERT | READERS_TOP)
    }

    /// [`try_read_fast`](Self::try_read_fast) whatever [`DIVERT`] says (the instrumented path,
    /// once its checks passed).
    #[inline]
    pub(crate) fn try_read_diverted(&self) -> bool {
        self.try_read_unless(WRITER | WAITING_MASK | READERS_TOP)
    }

    /// One attempt to add a reader, unless a bit of `blocked` is set (a constant at every call,
    /// folded into the test).
    #[inline(always)]
    fn try_read_unless(&self, blocked: u64) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        state & blocked == 0
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
                    assert!(
                        current & READERS_MASK != READERS_MASK,
                        "reader count overflow"
                    );
                    let next = current + ONE_READER;
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
            if state & (WAITING_MASK | READER_PARKED) == 0 && spin.spin() {
                state = self.state.load(Ordering::Relaxed);
                continue;
            }
            if !hooked {
                hooks
                    .about_to_park(&mut || self.set_reader_parked())
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
                self.parking.park(
                    self.reader_key(),
                    validate,
                    || {},
                    timed_out,
                    deadline.instant(),
                )
            };
            if parked == ParkResult::TimedOut {
                return Err(SlowPathError::TimedOut);
            }
            spin = SpinWait::new();
            state = self.state.load(Ordering::Relaxed);
        }
    }

    /// Sets READER_PARKED while readers are held back.
    fn set_reader_parked(&self) {
        let mut state = self.state.load(Ordering::Relaxed);
        while !Self::reader_may_enter(state) && state & READER_PARKED == 0 {
            match self.state.compare_exchange_weak(
                state,
                state | READER_PARKED,
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
        // One reader fewer, one read done (no borrow: this reader is counted).
        let before = self
            .state
            .fetch_add(ONE_READ_DONE - ONE_READER, Ordering::Release);
        if before & (WAITING_MASK | DONE_TOP) != 0 {
            self.unlock_read_slow(before);
        }
    }

    /// A reader left while writers wait (the last one out wakes one), or "reads done" is full.
    #[cold]
    fn unlock_read_slow(&self, before: u64) {
        if before & WAITING_MASK != 0 && before & READERS_MASK == ONE_READER {
            self.wake_writer();
        }
        if before & DONE_TOP != 0 {
            self.flush_reads();
        }
    }

    // ----- exclusive (write) side -----

    #[inline]
    fn writer_may_enter(state: u64) -> bool {
        state & (WRITER | READERS_MASK) == 0
    }

    /// One attempt to take the write lock, no waiting. The expected value is the word with only
    /// its "reads done" kept (whatever they are), so the one compare-exchange also tests that the
    /// lock is free, nobody waits and [`DIVERT`] is clear: no separate test before it (on a held
    /// lock it fails, as parking_lot's does).
    #[inline]
    pub(crate) fn try_write_fast(&self) -> bool {
        #[cfg(not(loom))]
        let state = self.state.load(Ordering::Relaxed) & DONE_MASK;
        // Under loom the expected value is always 0: loom 0.7 trips its own `VersionVec`
        // assertion (tokio-rs/loom#252) on this load-then-compare-exchange in one model. A
        // compare-exchange from 0 is a valid fast path too (it fails whenever reads were done and
        // leaves the acquisition to `write_slow`, which the models cover).
        #[cfg(loom)]
        let state = 0;
        self.state
            .compare_exchange_weak(state, state + WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// [`try_write_fast`](Self::try_write_fast) whatever [`DIVERT`] says (the instrumented path,
    /// once its checks passed).
    #[inline]
    pub(crate) fn try_write_diverted(&self) -> bool {
        #[cfg(not(loom))]
        let state = self.state.load(Ordering::Relaxed) & (DONE_MASK | DIVERT);
        // As in `try_write_fast`: from "nothing but DIVERT" under loom.
        #[cfg(loom)]
        let state = DIVERT;
        self.state
            .compare_exchange_weak(state, state + WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Sets or clears [`DIVERT`] (the lock's flags changed; `meta.rs`, under its lock of the
    /// live locks).
    pub(crate) fn set_divert(&self, on: bool) {
        if on {
            self.state.fetch_or(DIVERT, Ordering::Relaxed);
        } else {
            self.state.fetch_and(!DIVERT, Ordering::Relaxed);
        }
    }

    /// Takes the write lock, parking while anyone holds it. Returns whether it had to wait.
    #[cold]
    pub(crate) fn write_slow<E>(
        &self,
        deadline: Deadline,
        hooks: &mut dyn WaitHooks<Refusal = E>,
    ) -> Result<bool, SlowPathError<E>> {
        let mut spin = SpinWait::new();
        // Whether this writer is counted in "waiting writers" (from its accepted registration
        // until it takes the lock or gives up).
        let mut counted = false;
        let mut waited = false;
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if Self::writer_may_enter(state) {
                let uncount = if counted { ONE_WAITING_WRITER } else { 0 };
                let mut current = state;
                let acquired = hooks.attempt(&mut || {
                    self.state
                        .compare_exchange_weak(
                            current,
                            (current | WRITER) - uncount,
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
            if !counted {
                if state & WAITING_MASK == 0 && spin.spin() {
                    state = self.state.load(Ordering::Relaxed);
                    continue;
                }
                hooks
                    .about_to_park(&mut || {
                        let before = self.state.fetch_add(ONE_WAITING_WRITER, Ordering::Relaxed);
                        assert!(
                            before & WAITING_MASK != WAITING_MASK,
                            "waiting writer overflow"
                        );
                    })
                    .map_err(SlowPathError::Refused)?;
                counted = true;
                state = self.state.load(Ordering::Relaxed);
                continue;
            }
            let validate = || !Self::writer_may_enter(self.state.load(Ordering::Relaxed));
            // SAFETY: the key is derived from this lock's address and the lock outlives the call;
            // the callbacks only read an atomic.
            let parked = unsafe {
                self.parking.park(
                    self.writer_key(),
                    validate,
                    || {},
                    |_| {},
                    deadline.instant(),
                )
            };
            if parked == ParkResult::TimedOut {
                // Uncount in the same critical section as leaving the detector's graph.
                let mut remaining = 0;
                hooks.give_up(&mut || {
                    remaining = self.state.fetch_sub(ONE_WAITING_WRITER, Ordering::Relaxed)
                        - ONE_WAITING_WRITER;
                });
                if remaining & WAITING_MASK == 0 {
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
        let before = self.state.fetch_sub(WRITER, Ordering::Release);
        if before & (WAITING_MASK | READER_PARKED) != 0 {
            self.unlock_write_slow(before);
        }
    }

    /// The writer left while writers are counted (wake one) or readers are parked (wake them).
    #[cold]
    fn unlock_write_slow(&self, before: u64) {
        if before & WAITING_MASK != 0 {
            self.wake_writer();
        } else {
            self.wake_readers();
        }
    }

    // ----- wake-ups -----

    /// The lock became free while writers are counted: wake one parked writer. If none is in the
    /// queue yet, the counted writer is on its way to park; its `validate` fails on the free lock
    /// and it takes it.
    #[cold]
    fn wake_writer(&self) {
        // SAFETY: the key is derived from this lock's address and the lock is alive; the
        // callback does nothing.
        unsafe {
            self.parking.unpark_one(self.writer_key(), |_| TOKEN_RETRY);
        }
    }

    /// Wakes every parked reader if readers may now enter.
    #[cold]
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
        (
            state & WRITER != 0,
            ((state & READERS_MASK) / ONE_READER) as usize,
        )
    }
}

impl super::meta::RawHeld for RawRwLock {
    fn is_held(&self) -> bool {
        let (writer, readers) = self.snapshot();
        writer || readers > 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn reads_stay_exact_across_a_flush_and_a_reset() {
        let lock = RawRwLock::new();
        // One read short of the flush threshold.
        let start = (DONE_TOP / ONE_READ_DONE) - 1;
        lock.state.store(start * ONE_READ_DONE, Ordering::Relaxed);
        assert_eq!(lock.reads(), start);
        assert!(lock.try_read_fast());
        assert!(lock.try_read_fast());
        assert_eq!(lock.reads(), start + 2); // two held
        // SAFETY: two read locks are held (taken just above).
        unsafe { lock.unlock_read() }; // reaches the top bit: this unlock does not flush yet
        assert_eq!(lock.reads(), start + 2);
        // SAFETY: as above, the second one.
        unsafe { lock.unlock_read() }; // sees the top bit: flushes
        assert_eq!(lock.state.load(Ordering::Relaxed), 0);
        assert_eq!(lock.reads(), start + 2);
        // Writers still get in on the fast path whatever "reads done" holds.
        assert!(lock.try_read_fast());
        // SAFETY: the read lock just taken.
        unsafe { lock.unlock_read() };
        assert!(lock.try_write_fast());
        assert!(!lock.try_read_fast());
        // SAFETY: the write lock just taken.
        unsafe { lock.unlock_write() };
        assert_eq!(lock.reads(), start + 3);
        lock.reset_reads();
        assert_eq!(lock.reads(), 0);
        assert!(lock.try_read_fast());
        assert_eq!(lock.reads(), 1);
        assert_eq!(lock.snapshot(), (false, 1));
    }
}
