//! The locks the current thread holds, in acquisition order.
//!
//! Written only by its own thread, on every acquisition and release: this is the "per-thread
//! bookkeeping" that keeps the fast path free of shared writes. It serves two readers:
//!
//! - the level check, before any acquisition of a leveled lock;
//! - the deadlock detector, which copies it into the wait-for graph when this thread is about to
//!   sleep (a sleeping thread's holdings cannot change, so the copy stays exact while it waits).
//!
//! Invariant: the leveled entries, read bottom to top, have strictly increasing `(level, id)`
//! (each was checked against every leveled entry below it, and removals keep the order; plain
//! acquisitions even need a strictly higher level). So the topmost leveled entry is the highest
//! level held.

use std::cell::RefCell;
use std::panic::Location;

use crate::error::LockError;
use crate::lock::meta::{AccessMode, Level, LockId, LockInfo, LockUse};

#[cfg(not(loom))]
crate::loom::thread_local! {
    static HELD: RefCell<Vec<LockUse>> = const { RefCell::new(Vec::new()) };
}
#[cfg(loom)]
crate::loom::thread_local! {
    static HELD: RefCell<Vec<LockUse>> = RefCell::new(Vec::new());
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
/// `AboveInSetOrder`: the same level and a higher or equal id, or a higher level).
#[inline]
pub(crate) fn check_level(
    lock: &LockInfo,
    mode: AccessMode,
    at: &'static Location<'static>,
    rule: LevelRule,
) -> Result<(), LockError> {
    let Some(level) = lock.level else {
        return Ok(());
    };
    // `try_with`: during thread teardown the list may be gone; there is nothing to check then.
    let highest = HELD
        .try_with(|held| {
            held.borrow()
                .iter()
                .rev()
                .find(|entry| entry.lock.level.is_some())
                .copied()
        })
        .ok()
        .flatten();
    match highest {
        Some(held) if out_of_order(&held.lock, level, lock, rule) => {
            crate::deadlock::count_level_violation();
            Err(LockError::LevelViolation {
                held: Box::new(held),
                requested: Box::new(LockUse {
                    lock: *lock,
                    mode,
                    at,
                }),
            })
        }
        _ => Ok(()),
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
    let _ = HELD.try_with(|held| held.borrow_mut().push(entry));
}

/// Records that the thread released one hold of `id` in `mode` (guards may drop in any order).
#[inline]
pub(crate) fn remove(id: LockId, mode: AccessMode) {
    // `try_with`: a guard may be dropped during thread teardown, after the list is gone.
    let _ = HELD.try_with(|held| {
        let mut held = held.borrow_mut();
        if let Some(at) = held
            .iter()
            .rposition(|entry| entry.lock.id == id && entry.mode == mode)
        {
            held.remove(at);
        }
    });
}

/// A copy of what the current thread holds, oldest first.
pub fn held_by_current_thread() -> Vec<LockUse> {
    HELD.try_with(|held| held.borrow().clone())
        .unwrap_or_default()
}
