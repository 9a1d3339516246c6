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
//! - an entry is two words: a [`HoldKey`] (the address of the lock's [`LockMeta`], with the
//!   shared and timed bits in its low bits) and the call site. The lock's identity (id, name,
//!   level) is read through the key only when someone needs it (a level check, a report, the
//!   detector's copy), never on the fast path;
//! - the first [`INLINE`] holds live in fixed arrays of `Cell`s in a thread-local with a
//!   constant initialiser and no destructor, so an access is a plain TLS offset: no lazy
//!   registration, no borrow flag, no capacity check;
//! - a release compares one word (the top key) and decrements a length;
//! - deeper nesting spills to a `Vec` in a *second* thread-local, touched only past [`INLINE`]
//!   holds, so the first one stays destructor-free.
//!
//! Invariants:
//! - the holds, oldest first, are `keys[1..=top]`/`sites[1..=top]` (at most [`INLINE`]), then the
//!   spill; `top == INLINE + 1` exactly when the spill is not empty (the inline slots are then
//!   all used). Slots above `top` are stale and never read; slots `0` and `INLINE + 1` always hold
//!   the sentinel key 0, which no hold has (a key is a non-null address).
//! - every listed key points to a live `LockMeta`: an entry is removed before its guard releases
//!   the lock, and a lock dropped while still locked (its guard was leaked with `mem::forget`)
//!   leaks its `LockMeta` rather than free it (`meta::LockCore`'s `Drop`).
//! - a key has [`TIMED`] set exactly when the hold is an exclusive hold whose start was recorded
//!   in the lock's counters: its release misses the one-word fast comparison and ends the timing
//!   on the cold path.
//! - the leveled entries, read bottom to top, have strictly increasing `(level, id)` (each was
//!   checked against every leveled entry below it, and removals keep the order; plain
//!   acquisitions even need a strictly higher level). So the topmost leveled entry is the highest
//!   level held.

use std::cell::{Cell, RefCell};
use std::panic::Location;

use crate::error::LockError;
use crate::lock::meta::{AccessMode, Level, LockInfo, LockMeta, LockUse};

/// Holds kept inline before spilling to the heap.
const INLINE: usize = 16;

/// The low bit of a key: a shared hold.
const SHARED: usize = 0b01;
/// The second bit of a key: an exclusive hold whose duration is being timed.
const TIMED: usize = 0b10;

/// A hold's identity in one word: the address of the lock's [`LockMeta`] (aligned to 8, so its
/// low bits are free) with [`SHARED`] and [`TIMED`] in its low bits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct HoldKey(usize);

impl HoldKey {
    /// The key of an untimed hold of `meta` in `mode`.
    #[inline(always)]
    pub(crate) fn new(meta: &LockMeta, mode: AccessMode) -> Self {
        Self(std::ptr::from_ref(meta) as usize | usize::from(mode == AccessMode::Shared))
    }

    /// The same hold, marked as timed.
    pub(crate) fn timed(self) -> Self {
        Self(self.0 | TIMED)
    }

    fn untimed(self) -> Self {
        Self(self.0 & !TIMED)
    }

    fn is_timed(self) -> bool {
        self.0 & TIMED != 0
    }

    /// The lock's metadata.
    fn meta(self) -> &'static LockMeta {
        // SAFETY: a key is only built from a live `&LockMeta` and only read while listed; by the
        // module invariant a listed key's `LockMeta` is alive (and never freed while a hold of it
        // may still be listed).
        unsafe { &*((self.0 & !(SHARED | TIMED)) as *const LockMeta) }
    }

    fn lock(self) -> &'static LockInfo {
        &self.meta().info
    }

    fn mode(self) -> AccessMode {
        if self.0 & SHARED != 0 {
            AccessMode::Shared
        } else {
            AccessMode::Exclusive
        }
    }
}

/// One entry of the list.
type Entry = (HoldKey, &'static Location<'static>);

fn to_use((key, at): Entry) -> LockUse {
    LockUse {
        lock: *key.lock(),
        mode: key.mode(),
        at,
    }
}

struct HeldList {
    /// The slot of the newest inline hold: `0` when nothing is held, `1..=INLINE` while every
    /// hold is inline, `INLINE + 1` once holds spill (the spill is then not empty).
    top: Cell<usize>,
    /// Slots `1..=INLINE` hold entries; slots `0` and `INLINE + 1` are sentinels that stay
    /// `HoldKey(0)`, which no hold has, so a release compares `keys[top]` without a bounds test.
    keys: [Cell<HoldKey>; INLINE + 2],
    sites: [Cell<Option<&'static Location<'static>>>; INLINE + 2],
}

/// Holds past the first [`INLINE`], oldest first.
type Spill = RefCell<Vec<Entry>>;

impl HeldList {
    const fn new() -> Self {
        Self {
            top: Cell::new(0),
            keys: [const { Cell::new(HoldKey(0)) }; INLINE + 2],
            sites: [const { Cell::new(None) }; INLINE + 2],
        }
    }

    #[inline(always)]
    fn push(&self, key: HoldKey, at: &'static Location<'static>) {
        let top = self.top.get();
        if top < INLINE {
            self.keys[top + 1].set(key);
            self.sites[top + 1].set(Some(at));
            self.top.set(top + 1);
        } else if push_spilled((key, at)) {
            self.top.set(INLINE + 1);
        }
    }

    fn entry(&self, i: usize) -> Entry {
        let at = self.sites[i].get().unwrap_or_else(Location::caller);
        (self.keys[i].get(), at)
    }

    /// Removes the hold `key` (untimed); returns whether it was timed.
    #[inline(always)]
    fn remove(&self, key: HoldKey) -> bool {
        let top = self.top.get();
        // SAFETY: `top` is at most `INLINE + 1` (it is only ever set to such values), and
        // `keys` has `INLINE + 2` slots.
        let newest = unsafe { self.keys.get_unchecked(top) };
        // Guards usually drop in reverse order: the newest hold is the one. Slot 0 (nothing
        // held) and slot INLINE + 1 (spilled) hold the sentinel, which matches no key.
        if newest.get() == key {
            self.top.set(top - 1);
            false
        } else {
            self.remove_deeper(key)
        }
    }

    /// Removal of anything but an untimed inline top entry: timed, out of order, or from the
    /// spill. Returns whether the removed hold was timed.
    #[cold]
    #[inline(never)]
    fn remove_deeper(&self, key: HoldKey) -> bool {
        if self.top.get() > INLINE {
            let spilled = with_spill(|spill| {
                let at = spill.iter().rposition(|e| e.0.untimed() == key)?;
                Some((spill.remove(at).0.is_timed(), spill.is_empty()))
            });
            match spilled {
                Some(Some((timed, now_empty))) => {
                    if now_empty {
                        self.top.set(INLINE);
                    }
                    return timed;
                }
                Some(None) => {} // an inline hold
                // The spill is gone (thread teardown), and the holds it kept with it.
                None => self.top.set(INLINE),
            }
        }
        let top = self.top.get();
        let inline_top = top.min(INLINE);
        let Some(at) = (1..=inline_top)
            .rev()
            .find(|&i| self.keys[i].get().untimed() == key)
        else {
            return false; // never recorded (taken during thread teardown)
        };
        let timed = self.keys[at].get().is_timed();
        for i in at..inline_top {
            self.keys[i].set(self.keys[i + 1].get());
            self.sites[i].set(self.sites[i + 1].get());
        }
        // The oldest spilled hold, if any, moves down into the last inline slot.
        let refill = if top > INLINE {
            with_spill(|spill| (!spill.is_empty()).then(|| (spill.remove(0), spill.is_empty())))
                .flatten()
        } else {
            None
        };
        match refill {
            Some(((first_key, first_at), now_empty)) => {
                self.keys[INLINE].set(first_key);
                self.sites[INLINE].set(Some(first_at));
                self.top.set(if now_empty { INLINE } else { INLINE + 1 });
            }
            None => self.top.set(inline_top - 1),
        }
        timed
    }

    /// Every entry, oldest first (the inline part without allocating).
    fn for_each(&self, mut f: impl FnMut(Entry)) {
        let top = self.top.get();
        for i in 1..=top.min(INLINE) {
            f(self.entry(i));
        }
        if top > INLINE {
            with_spill(|spill| spill.iter().copied().for_each(&mut f));
        }
    }

    fn highest_leveled(&self) -> Option<LockUse> {
        let mut highest = None;
        self.for_each(|entry| {
            if entry.0.lock().level.is_some() {
                highest = Some(entry);
            }
        });
        highest.map(to_use)
    }

    fn to_vec(&self) -> Vec<LockUse> {
        let mut all = Vec::with_capacity(self.top.get());
        self.for_each(|entry| all.push(to_use(entry)));
        all
    }
}

/// Records a hold past the first [`INLINE`]; false if the thread's spill is already gone
/// (thread teardown), in which case the hold goes unrecorded.
#[cold]
#[inline(never)]
fn push_spilled(entry: Entry) -> bool {
    with_spill(|spill| spill.push(entry)).is_some()
}

/// Runs `f` on this thread's spill, unless it is gone (thread teardown).
fn with_spill<R>(f: impl FnOnce(&mut Vec<Entry>) -> R) -> Option<R> {
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

/// Records that the thread now holds `key`, acquired at `at`.
#[inline(always)]
pub(crate) fn push(key: HoldKey, at: &'static Location<'static>) {
    // A lock taken in a thread-local destructor, after the list is gone, goes unrecorded.
    let _ = HELD.try_with(|held| held.push(key, at));
}

/// Records that the thread released one hold `key` (untimed; guards may drop in any order).
/// Returns whether that hold was timed (its start recorded in the lock's counters).
#[inline(always)]
pub(crate) fn remove(key: HoldKey) -> bool {
    HELD.try_with(|held| held.remove(key)).unwrap_or(false)
}

/// Whether the current thread holds no lock at all (one thread-local read).
#[inline(always)]
pub(crate) fn is_empty() -> bool {
    HELD.try_with(|held| held.top.get() == 0).unwrap_or(true)
}

/// Calls `f` on each hold of the current thread, oldest first, without allocating for the
/// inline part.
pub(crate) fn for_each(mut f: impl FnMut(&LockUse)) {
    let _ = HELD.try_with(|held| held.for_each(|entry| f(&to_use(entry))));
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

    #[test]
    fn a_leaked_guard_keeps_its_entry_readable_after_the_lock_is_dropped() {
        let m = Mutex::named("held-test-leaked", 0u32);
        std::mem::forget(m.lock().unwrap());
        drop(m); // still locked: its metadata stays allocated
        let after = Mutex::new(());
        let _g = after.lock().unwrap();
        let held = held_by_current_thread();
        assert_eq!(held.len(), 2);
        assert_eq!(held[0].name(), Some("held-test-leaked"));
        drop(_g);
        assert_eq!(held_by_current_thread().len(), 1);
    }

    #[test]
    fn timed_holds_released_in_any_order_are_timed_and_unlisted() {
        let a = Mutex::new(0u32);
        let b = Mutex::new(0u32);
        a.set_hold_timing(true);
        let ga = a.lock().unwrap();
        let gb = b.lock().unwrap();
        assert_eq!(held_by_current_thread().len(), 2);
        drop(ga); // timed, and not the newest
        drop(gb);
        assert!(held_by_current_thread().is_empty());
        assert_eq!(a.stats().holds.timed, 1);
        assert_eq!(b.stats().holds.timed, 0);
        assert_eq!((a.stats().acquisitions, b.stats().acquisitions), (1, 1));
    }

    #[test]
    fn exactly_inline_then_one_more_spills_and_comes_back() {
        let locks: Vec<Mutex<()>> = (0..INLINE + 1).map(|_| Mutex::new(())).collect();
        let mut guards: Vec<_> = locks.iter().map(|l| l.lock().unwrap()).collect();
        assert_eq!(held_by_current_thread().len(), INLINE + 1);
        drop(guards.pop()); // the spilled one
        assert_eq!(held_by_current_thread().len(), INLINE);
        let extra = Mutex::new(());
        let g = extra.lock().unwrap();
        assert_eq!(held_by_current_thread().len(), INLINE + 1);
        drop(guards.remove(0)); // the oldest inline hold: the spilled one moves down
        drop(g);
        assert_eq!(held_by_current_thread().len(), INLINE - 1);
        while let Some(g) = guards.pop() {
            drop(g);
        }
        assert!(held_by_current_thread().is_empty());
    }
}
