//! The locks the current thread holds, in acquisition order.
//!
//! Written only by its own thread, on every acquisition and release: this is the "per-thread
//! bookkeeping" that keeps the fast path free of shared writes. It serves two readers:
//!
//! - the level check, before any acquisition of a leveled lock;
//! - the deadlock detector, which copies it into the wait-for graph when this thread is about to
//!   sleep (a sleeping thread's holdings cannot change, so the copy stays exact while it waits).
//!
//! Storage: the first [`INLINE`] holds live in a fixed array of `Cell`s (a thread-local with a
//! constant initialiser and no destructor, so an access is a plain TLS offset: no lazy
//! registration, no borrow flag, no capacity check); deeper nesting spills to a `Vec`.
//!
//! Invariant: the leveled entries, read bottom to top, have strictly increasing `(level, id)`
//! (each was checked against every leveled entry below it, and removals keep the order; plain
//! acquisitions even need a strictly higher level). So the topmost leveled entry is the highest
//! level held.

use std::cell::{Cell, RefCell};
use std::panic::Location;

use crate::error::LockError;
use crate::lock::meta::{AccessMode, Level, LockId, LockInfo, LockUse};

/// Holds kept inline before spilling to the heap.
const INLINE: usize = 16;

struct HeldList {
    len: Cell<usize>,
    inline: [Cell<Option<LockUse>>; INLINE],
    spill: RefCell<Vec<LockUse>>,
}

impl HeldList {
    const fn new() -> Self {
        Self {
            len: Cell::new(0),
            inline: [const { Cell::new(None) }; INLINE],
            spill: RefCell::new(Vec::new()),
        }
    }

    fn get(&self, index: usize) -> Option<LockUse> {
        if index < INLINE {
            self.inline[index].get()
        } else {
            self.spill.borrow().get(index - INLINE).copied()
        }
    }

    fn set(&self, index: usize, entry: Option<LockUse>) {
        if index < INLINE {
            self.inline[index].set(entry);
        } else {
            let mut spill = self.spill.borrow_mut();
            match entry {
                Some(entry) if index - INLINE == spill.len() => spill.push(entry),
                Some(entry) => spill[index - INLINE] = entry,
                None => spill.truncate(index - INLINE),
            }
        }
    }

    #[inline]
    fn push(&self, entry: LockUse) {
        let len = self.len.get();
        self.set(len, Some(entry));
        self.len.set(len + 1);
    }

    #[inline]
    fn remove(&self, id: LockId, mode: AccessMode) {
        let len = self.len.get();
        // Guards usually drop in reverse order: the top entry is the one.
        let matches = |e: Option<LockUse>| e.is_some_and(|e| e.lock.id == id && e.mode == mode);
        let Some(at) = (0..len).rev().find(|&i| matches(self.get(i))) else {
            return;
        };
        for i in at..len - 1 {
            self.set(i, self.get(i + 1));
        }
        self.set(len - 1, None);
        self.len.set(len - 1);
    }

    fn highest_leveled(&self) -> Option<LockUse> {
        (0..self.len.get())
            .rev()
            .filter_map(|i| self.get(i))
            .find(|entry| entry.lock.level.is_some())
    }

    fn to_vec(&self) -> Vec<LockUse> {
        (0..self.len.get()).filter_map(|i| self.get(i)).collect()
    }
}

#[cfg(not(loom))]
crate::loom::thread_local! {
    static HELD: HeldList = const { HeldList::new() };
}
#[cfg(loom)]
crate::loom::thread_local! {
    static HELD: HeldList = HeldList::new();
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
#[inline]
pub(crate) fn push(entry: LockUse) {
    // A lock taken in a thread-local destructor, after the list is gone, goes unrecorded.
    let _ = HELD.try_with(|held| held.push(entry));
}

/// Records that the thread released one hold of `id` in `mode` (guards may drop in any order).
#[inline]
pub(crate) fn remove(id: LockId, mode: AccessMode) {
    let _ = HELD.try_with(|held| held.remove(id, mode));
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
