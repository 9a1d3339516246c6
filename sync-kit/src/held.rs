//! The locks the current thread holds, in acquisition order.
//!
//! Written only by its own thread, on every acquisition and release: this is the "per-thread
//! bookkeeping" that keeps the fast path free of shared writes. It serves two readers:
//!
//! - the level check, before any acquisition of a leveled lock;
//! - the deadlock detector, which copies it into the wait-for graph when this thread is about to
//!   sleep (a sleeping thread's holdings cannot change, so the copy stays exact while it waits).
//!
//! Storage, shaped for the fast path (push on acquire, pop of the top entry on release):
//!
//! - the first [`INLINE`] holds live in fixed arrays of `Cell`s in a thread-local with a
//!   constant initialiser and no destructor, so an access is a plain TLS offset: no lazy
//!   registration, no borrow flag, no capacity check;
//! - beside each entry, its [`HoldKey`] (lock id and mode in one word), so a release finds its
//!   entry by comparing words instead of copying whole entries out of their cells;
//! - deeper nesting spills to a `Vec` in a *second* thread-local, touched only past [`INLINE`]
//!   holds, so the first one stays destructor-free.
//!
//! Invariants:
//! - entries `0..len` are the holds, oldest first; entry `i` lives in `inline[i]` for
//!   `i < INLINE` and in `spill[i - INLINE]` above; slots at `len` and beyond are stale and never
//!   read; `spill.len() == len.saturating_sub(INLINE)`.
//! - the leveled entries, read bottom to top, have strictly increasing `(level, id)` (each was
//!   checked against every leveled entry below it, and removals keep the order; plain
//!   acquisitions even need a strictly higher level). So the topmost leveled entry is the highest
//!   level held.

use std::cell::{Cell, RefCell};
use std::panic::Location;

use crate::error::LockError;
use crate::lock::meta::{AccessMode, Level, LockId, LockInfo, LockUse};

/// Holds kept inline before spilling to the heap.
const INLINE: usize = 16;

/// A hold's identity in one word: the lock id shifted left, the low bit set for shared holds.
#[derive(Clone, Copy, PartialEq, Eq)]
struct HoldKey(u64);

impl HoldKey {
    #[inline(always)]
    fn new(id: LockId, mode: AccessMode) -> Self {
        Self(id.0 << 1 | u64::from(mode == AccessMode::Shared))
    }
}

struct HeldList {
    len: Cell<usize>,
    keys: [Cell<HoldKey>; INLINE],
    inline: [Cell<Option<LockUse>>; INLINE],
}

/// Holds past the first [`INLINE`], oldest first.
type Spill = RefCell<Vec<LockUse>>;

impl HeldList {
    const fn new() -> Self {
        Self {
            len: Cell::new(0),
            keys: [const { Cell::new(HoldKey(0)) }; INLINE],
            inline: [const { Cell::new(None) }; INLINE],
        }
    }

    #[inline(always)]
    fn push(&self, entry: LockUse) {
        let len = self.len.get();
        if len < INLINE {
            self.keys[len].set(hold_key(&entry));
            self.inline[len].set(Some(entry));
            self.len.set(len + 1);
        } else if push_spilled(entry) {
            self.len.set(len + 1);
        }
    }

    #[inline(always)]
    fn remove(&self, id: LockId, mode: AccessMode) {
        let len = self.len.get();
        // Guards usually drop in reverse order: the top entry is the one.
        if len > 0 && len <= INLINE && self.keys[len - 1].get() == HoldKey::new(id, mode) {
            self.len.set(len - 1);
        } else {
            self.remove_deeper(HoldKey::new(id, mode));
        }
    }

    /// Removal of anything but an inline top entry: out of order, or from the spill.
    #[cold]
    #[inline(never)]
    fn remove_deeper(&self, key: HoldKey) {
        let len = self.len.get();
        if len > INLINE {
            let spilled = with_spill(|spill| {
                let at = spill.iter().rposition(|e| hold_key(e) == key)?;
                spill.remove(at);
                Some(())
            });
            match spilled {
                Some(Some(())) => return self.len.set(len - 1),
                Some(None) => {} // an inline hold
                // The spill is gone (thread teardown), and the holds it kept with it.
                None => self.len.set(INLINE),
            }
        }
        let len = self.len.get();
        let inline_len = len.min(INLINE);
        let Some(at) = (0..inline_len).rev().find(|&i| self.keys[i].get() == key) else {
            return; // never recorded (taken during thread teardown)
        };
        for i in at..inline_len - 1 {
            self.keys[i].set(self.keys[i + 1].get());
            self.inline[i].set(self.inline[i + 1].get());
        }
        // The oldest spilled hold, if any, moves down into the last inline slot.
        let refill = if len > INLINE {
            with_spill(|spill| (!spill.is_empty()).then(|| spill.remove(0))).flatten()
        } else {
            None
        };
        match refill {
            Some(first) => {
                self.keys[INLINE - 1].set(hold_key(&first));
                self.inline[INLINE - 1].set(Some(first));
                self.len.set(len - 1);
            }
            None => self.len.set(inline_len - 1),
        }
    }

    fn highest_leveled(&self) -> Option<LockUse> {
        let len = self.len.get();
        let spilled = if len > INLINE {
            with_spill(|spill| spill.iter().rev().find(|e| e.lock.level.is_some()).copied())
                .flatten()
        } else {
            None
        };
        spilled.or_else(|| {
            self.inline[..len.min(INLINE)]
                .iter()
                .rev()
                .filter_map(Cell::get)
                .find(|entry| entry.lock.level.is_some())
        })
    }

    fn to_vec(&self) -> Vec<LockUse> {
        let len = self.len.get();
        let mut all: Vec<LockUse> = self.inline[..len.min(INLINE)]
            .iter()
            .filter_map(Cell::get)
            .collect();
        if len > INLINE {
            with_spill(|spill| all.extend_from_slice(spill));
        }
        all
    }
}

fn hold_key(entry: &LockUse) -> HoldKey {
    HoldKey::new(entry.lock.id, entry.mode)
}

/// Records a hold past the first [`INLINE`]; false if the thread's spill is already gone
/// (thread teardown), in which case the hold goes unrecorded.
#[cold]
#[inline(never)]
fn push_spilled(entry: LockUse) -> bool {
    with_spill(|spill| spill.push(entry)).is_some()
}

/// Runs `f` on this thread's spill, unless it is gone (thread teardown).
fn with_spill<R>(f: impl FnOnce(&mut Vec<LockUse>) -> R) -> Option<R> {
    SPILL.try_with(|spill| f(&mut spill.borrow_mut())).ok()
}

#[cfg(not(loom))]
crate::loom::thread_local! {
    static HELD: HeldList = const { HeldList::new() };
    static SPILL: Spill = const { RefCell::new(Vec::new()) };
}
#[cfg(loom)]
crate::loom::thread_local! {
    static HELD: HeldList = HeldList::new();
    static SPILL: Spill = RefCell::new(Vec::new());
}
/// Which order a leveled acquisition must respect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LevelRule {
    /// Above the highest level held (every plain acquisition).
    Above,
    /// Above the highest `(level, id)` held: locks taken together by a
    /// [`LockSet`](crate::LockSet) may share a level, taken in id order.
    AboveInSetOrder,
}

/// Refuses `lock` if the thread holds a leveled lock at the same or a higher level (under
/// `AboveInSetOrder`: the same level and a higher or equal id, or a higher level). Free for
/// unleveled locks.
#[inline(always)]
pub(crate) fn check_level(
    lock: &LockInfo,
    mode: AccessMode,
    at: &'static Location<'static>,
    rule: LevelRule,
) -> Result<(), LockError> {
    match lock.level {
        None => Ok(()),
        Some(level) => check_leveled(lock, level, mode, at, rule),
    }
}

#[inline(never)]
fn check_leveled(
    lock: &LockInfo,
    level: Level,
    mode: AccessMode,
    at: &'static Location<'static>,
    rule: LevelRule,
) -> Result<(), LockError> {
    // `try_with`: during thread teardown the list may be gone; there is nothing to check then.
    let highest = HELD.try_with(HeldList::highest_leveled).ok().flatten();
    match highest {
        Some(held) if out_of_order(&held.lock, level, lock, rule) => Err(violation(
            held,
            LockUse {
                lock: *lock,
                mode,
                at,
            },
        )),
        _ => Ok(()),
    }
}

/// Refuses to give back an exclusive hold of `lock` (a condvar reacquiring its mutex) if a leveled
/// lock above it is held: with the leveled entries in increasing order, the reacquisition is in
/// order exactly when `lock` itself is the highest leveled hold.
pub(crate) fn check_level_reacquire(
    lock: &LockInfo,
    at: &'static Location<'static>,
) -> Result<(), LockError> {
    if lock.level.is_none() {
        return Ok(());
    }
    match HELD.try_with(HeldList::highest_leveled).ok().flatten() {
        Some(held) if held.lock.id != lock.id => Err(violation(
            held,
            LockUse {
                lock: *lock,
                mode: AccessMode::Exclusive,
                at,
            },
        )),
        _ => Ok(()),
    }
}

/// As [`check_level`], against `holds` (a task's async locks) besides the thread's held list.
#[cfg(any(feature = "tokio", loom))]
pub(crate) fn check_level_with(
    lock: &LockInfo,
    mode: AccessMode,
    at: &'static Location<'static>,
    holds: &[LockUse],
) -> Result<(), LockError> {
    check_level(lock, mode, at, LevelRule::Above)?;
    let Some(level) = lock.level else {
        return Ok(());
    };
    let highest = holds
        .iter()
        .filter(|h| h.lock.level.is_some())
        .max_by_key(|h| (h.lock.level, h.lock.id));
    match highest {
        Some(held) if out_of_order(&held.lock, level, lock, LevelRule::Above) => Err(violation(
            *held,
            LockUse {
                lock: *lock,
                mode,
                at,
            },
        )),
        _ => Ok(()),
    }
}

#[cold]
fn violation(held: LockUse, requested: LockUse) -> LockError {
    crate::deadlock::count_level_violation();
    LockError::LevelViolation {
        held: Box::new(held),
        requested: Box::new(requested),
    }
}

fn out_of_order(held: &LockInfo, level: Level, lock: &LockInfo, rule: LevelRule) -> bool {
    match rule {
        LevelRule::Above => held.level >= Some(level),
        LevelRule::AboveInSetOrder => (held.level, held.id) >= (Some(level), lock.id),
    }
}

/// Records that the thread now holds `entry.lock`.
#[inline(always)]
pub(crate) fn push(entry: LockUse) {
    // A lock taken in a thread-local destructor, after the list is gone, goes unrecorded.
    let _ = HELD.try_with(|held| held.push(entry));
}

/// Records that the thread released one hold of `id` in `mode` (guards may drop in any order).
#[inline(always)]
pub(crate) fn remove(id: LockId, mode: AccessMode) {
    let _ = HELD.try_with(|held| held.remove(id, mode));
}

/// Whether the current thread holds no lock at all (one thread-local read).
#[inline(always)]
pub(crate) fn is_empty() -> bool {
    HELD.try_with(|held| held.len.get() == 0).unwrap_or(true)
}

/// Calls `f` on each hold of the current thread, oldest first, without allocating for the
/// inline part.
pub(crate) fn for_each(mut f: impl FnMut(&LockUse)) {
    let _ = HELD.try_with(|held| {
        let len = held.len.get();
        for entry in held.inline[..len.min(INLINE)].iter().filter_map(Cell::get) {
            f(&entry);
        }
        if len > INLINE {
            with_spill(|spill| spill.iter().for_each(&mut f));
        }
    });
}

/// A copy of what the current thread holds, oldest first.
pub fn held_by_current_thread() -> Vec<LockUse> {
    HELD.try_with(HeldList::to_vec).unwrap_or_default()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{Level, Mutex};

    #[test]
    fn deep_nesting_spills_and_releases_in_any_order() {
        let locks: Vec<Mutex<usize>> = (0..40)
            .map(|i| Mutex::with_level("held-test", Level(i), i as usize))
            .collect();
        let mut guards: Vec<_> = locks.iter().map(|l| l.lock().unwrap()).collect();
        assert_eq!(held_by_current_thread().len(), 40);
        // The highest level held sits in the spill, and the level check finds it there.
        let low = Mutex::with_level("held-test-low", Level(5), ());
        match low.lock() {
            Err(crate::LockError::LevelViolation { held, .. }) => {
                assert_eq!(held.lock.level, Some(Level(39)));
            }
            other => panic!("expected a level violation, got {:?}", other.map(|_| ())),
        }
        // Release from the middle, then the inline/spill boundary, then the rest.
        drop(guards.remove(20)); // in the spill
        drop(guards.remove(15)); // the last inline entry
        drop(guards.remove(0)); // the bottom
        let held: Vec<u32> = held_by_current_thread()
            .iter()
            .map(|h| h.lock.level.unwrap().0)
            .collect();
        let expected: Vec<u32> = (0..40).filter(|i| ![0, 15, 20].contains(i)).collect();
        assert_eq!(held, expected);
        drop(guards);
        assert!(held_by_current_thread().is_empty());
    }
}
