//! The locks the current thread holds, in acquisition order.
//!
//! Written only by its own thread, on every acquisition and release: this is the "per-thread
//! bookkeeping" that keeps the fast path free of shared writes. Read only by its own thread too:
//!
//! - the level check, before any acquisition of a leveled lock;
//! - the deadlock detector, which copies it into the wait-for graph when this thread is about to
//!   sleep (a sleeping thread's holdings cannot change, so the copy stays exact while it waits);
//! - order checking and [`held_by_current_thread`].
//!
//! Storage, shaped for the fast paths (a push on acquire, the newest hold's removal on release):
//!
//! - **Exclusive holds** (a `Mutex`, an `RwLock` writer) form an intrusive stack threaded through
//!   the locks' own metadata: an exclusive holder owns its lock's [`HeldNode`] (the link below and
//!   the call site) for as long as it holds the lock. Push: read `top`, write the node, write
//!   `top`. Release of the newest hold: compare `top` with the lock's address, copy the node's
//!   link into `top`. No bounds, no depth limit.
//! - **Shared holds** (`RwLock` readers, which many threads hold at once, so they cannot own a
//!   node in the lock) are kept in an array of [`INLINE`] two-word entries (a [`HoldKey`] and the
//!   call site), oldest first. A *timed* exclusive hold goes there too (its key has [`TIMED`]), so
//!   that its release misses the stack's one comparison and ends the timing on the cold path.
//! - **The order between the two** is in the links: a link is the address of a lock's metadata
//!   (aligned to 16) with, in its four low bits, the number of array entries taken right after
//!   that lock's hold (before the next exclusive hold on the stack). `top` is the link to the
//!   newest hold on the stack, so an array push adds one to `top` and the release of the newest
//!   array entry subtracts one; an exclusive push stores `top` (with its count) in the node and
//!   sets `top` to the lock's bare address, so the exclusive release's one comparison also proves
//!   that nothing was taken after it.
//! - **Older holds** may sit in the *base*, a `Vec` in a second thread-local (the one with a
//!   destructor, touched only here): when an array push finds the array full, every hold of the
//!   stack and the array moves to the end of the base, in order, and the stack restarts above it.
//!   The bottom link is then [`BASE`] instead of 0.
//!
//! | `top`          | meaning                                                                   |
//! |----------------|---------------------------------------------------------------------------|
//! | `0`            | nothing held                                                              |
//! | `0 \| n` (n ≥ 1) | `n` array entries, no hold on the stack, empty base                     |
//! | `BASE \| n`    | older holds in the base, `n` array entries above them                      |
//! | `meta \| n`    | the newest stack hold is `meta`'s, `n` array entries were taken after it   |
//!
//! Invariants:
//! - following links from `top` through the nodes reaches a link whose address is `0` or
//!   [`BASE`] (`BASE` whenever the base is not empty; a bottom `BASE` over an empty base means
//!   nothing); the counts of the links sum to `entries`, the number of array entries. Read bottom
//!   up, the holds are: the base, then for each link its node's hold (none for the bottom link)
//!   followed by as many array entries as its count, in array order.
//! - a count never exceeds [`INLINE`] (all counted holds are array entries), so it never reaches
//!   the address bits.
//! - every key and link points to a live `LockMeta`: a hold is removed before its guard releases
//!   the lock, and a lock dropped while still locked (its guard was leaked with `mem::forget`)
//!   leaks its `LockMeta` rather than free it (`meta::LockCore`'s `Drop`). A node on the stack
//!   belongs to a lock this thread holds exclusively, so only this thread touches it.
//! - a key has [`TIMED`] exactly when its hold is an exclusive hold whose start was recorded in
//!   the lock's counters (such a hold is never on the stack).
//! - the leveled holds, read bottom to top, have strictly increasing `(level, id)` (each was
//!   checked against every leveled hold below it, and removals keep the order; plain acquisitions
//!   even need a strictly higher level). So the topmost leveled hold is the highest level held.

use std::cell::{Cell, RefCell};
use std::panic::Location;

use crate::error::LockError;
use crate::lock::meta::{AccessMode, Level, LockInfo, LockMeta, LockUse};

/// Array entries (shared holds, timed exclusive holds) before the holds move to the base.
const INLINE: usize = 15;

/// The low bit of a key: a shared hold.
const SHARED: usize = 0b01;
/// The second bit of a key: an exclusive hold whose duration is being timed.
const TIMED: usize = 0b10;

/// The bits of a link that count the array entries above its node (at most [`INLINE`]).
const COUNT: usize = 0b1111;
/// The bits of a link below the address.
const LINK_BITS: usize = COUNT;
/// Links a cold walk keeps on the stack before it allocates.
const WALK: usize = 32;
/// The bottom link's address when the base holds older holds (no `LockMeta` lives at 16).
const BASE: usize = 16;

const _: () = assert!(INLINE <= COUNT && std::mem::align_of::<LockMeta>() > LINK_BITS);

/// A hold's identity in one word: the address of the lock's [`LockMeta`] (aligned to 16, so its
/// low bits are free) with [`SHARED`] and [`TIMED`] in its low bits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct HoldKey(usize);

impl HoldKey {
    /// The key of an untimed hold of `meta` in `mode`.
    #[inline(always)]
    pub(crate) fn new(meta: &LockMeta, mode: AccessMode) -> Self {
        Self(address(meta) | usize::from(mode == AccessMode::Shared))
    }

    fn timed(self) -> Self {
        Self(self.0 | TIMED)
    }

    fn untimed(self) -> Self {
        Self(self.0 & !TIMED)
    }

    fn is_timed(self) -> bool {
        self.0 & TIMED != 0
    }

    fn is_shared(self) -> bool {
        self.0 & SHARED != 0
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
        if self.is_shared() {
            AccessMode::Shared
        } else {
            AccessMode::Exclusive
        }
    }
}

#[inline(always)]
fn address(meta: &LockMeta) -> usize {
    std::ptr::from_ref(meta) as usize
}

/// The node a link points to, if it points to one (not the bottom).
fn node_of(link: usize) -> Option<&'static LockMeta> {
    match link & !LINK_BITS {
        0 | BASE => None,
        // SAFETY: a link's address is that of a live `LockMeta` this thread holds exclusively
        // (module invariants).
        address => Some(unsafe { &*(address as *const LockMeta) }),
    }
}

/// The link below `meta`'s hold.
fn below(meta: &LockMeta) -> usize {
    // SAFETY: only called on nodes reached from `top`, whose locks this thread holds exclusively.
    unsafe { meta.held.below() }
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

/// Where a link is stored: `top`, or the node of a newer exclusive hold.
#[derive(Clone, Copy)]
enum LinkSlot {
    Top,
    Below(&'static LockMeta),
}

/// `repr(C)`, `top` first: at offset 0 of the thread-local, the compiler sees through a push
/// followed by the release in the same function (it proves `top` still holds the lock's address
/// and drops the comparison); with the arrays first it did not (2 instructions per lock+unlock in
/// `benches/benches/instructions.rs`).
#[repr(C)]
struct HeldList {
    /// The link to the newest exclusive hold (see the module's table).
    top: Cell<usize>,
    /// Holds in the array: `keys[1..=entries]`, `sites[1..=entries]`, oldest first.
    entries: Cell<usize>,
    /// Slot 0 is a sentinel that stays `HoldKey(0)`, which no hold has, so a release compares
    /// `keys[entries]` without a bounds test.
    keys: [Cell<HoldKey>; INLINE + 1],
    sites: [Cell<Option<&'static Location<'static>>>; INLINE + 1],
}

/// Holds older than the stack and the array, oldest first.
type Base = RefCell<Vec<Entry>>;

impl HeldList {
    const fn new() -> Self {
        Self {
            top: Cell::new(0),
            entries: Cell::new(0),
            keys: [const { Cell::new(HoldKey(0)) }; INLINE + 1],
            sites: [const { Cell::new(None) }; INLINE + 1],
        }
    }

    /// Records an untimed exclusive hold of `meta` on the stack.
    ///
    /// # Safety
    /// The calling thread holds `meta`'s lock exclusively, acquired just now.
    #[inline(always)]
    unsafe fn push_exclusive(&self, meta: &LockMeta, at: &'static Location<'static>) {
        // SAFETY: the caller holds the lock exclusively.
        unsafe { meta.held.start(self.top.get(), at) };
        self.top.set(address(meta));
    }

    /// Records a hold in the array: a shared hold, or a timed exclusive hold.
    #[inline(always)]
    fn push_entry(&self, key: HoldKey, at: &'static Location<'static>) {
        let n = self.entries.get();
        if n < INLINE {
            self.keys[n + 1].set(key);
            self.sites[n + 1].set(Some(at));
            self.entries.set(n + 1);
            self.top.set(self.top.get() + 1);
        } else {
            self.push_entry_full(key, at);
        }
    }

    /// An array push finds the array full: every hold moves to the base, in order, and the new
    /// one starts the array again. During thread teardown (the base is gone) it goes unrecorded.
    #[cold]
    #[inline(never)]
    fn push_entry_full(&self, key: HoldKey, at: &'static Location<'static>) {
        let mut moved = Vec::with_capacity(INLINE * 2);
        self.for_each_above_base(|entry| moved.push(entry));
        if with_base(|base| base.append(&mut moved)).is_none() {
            return;
        }
        self.entries.set(0);
        self.top.set(BASE);
        self.push_entry(key, at);
    }

    /// Removes the hold of `meta` in `mode`; returns whether it was timed.
    #[inline(always)]
    fn remove(&self, meta: &LockMeta, mode: AccessMode) -> bool {
        let top = self.top.get();
        if mode == AccessMode::Exclusive {
            // The newest hold, on the stack (so untimed), nothing taken after it: one comparison.
            if top == address(meta) {
                // SAFETY: `top` points to `meta`'s node, which this thread holds exclusively
                // until its caller releases the lock, after this call.
                self.top.set(unsafe { meta.held.below() });
                return false;
            }
        } else {
            let n = self.entries.get();
            // SAFETY: `entries` is at most `INLINE` (it is only ever set to such values), and
            // `keys` has `INLINE + 1` slots.
            let newest = unsafe { self.keys.get_unchecked(n) };
            // The newest array entry, taken after the newest stack hold (the top link counts it).
            // Slot 0 (no entry) holds the sentinel, which matches no key.
            if newest.get() == HoldKey::new(meta, mode) && top & COUNT != 0 {
                self.entries.set(n - 1);
                self.top.set(top - 1);
                return false;
            }
        }
        self.remove_deeper(HoldKey::new(meta, mode))
    }

    fn link(&self, slot: LinkSlot) -> usize {
        match slot {
            LinkSlot::Top => self.top.get(),
            LinkSlot::Below(meta) => below(meta),
        }
    }

    fn set_link(&self, slot: LinkSlot, link: usize) {
        match slot {
            LinkSlot::Top => self.top.set(link),
            // SAFETY: `meta` was reached from `top`: this thread holds its lock exclusively.
            LinkSlot::Below(meta) => unsafe { meta.held.set_below(link) },
        }
    }

    /// Runs `f` on where each link is stored, top first, down to the bottom link: on the stack
    /// for up to [`WALK`] links (no allocation on the cold paths of ordinary nesting).
    fn with_link_slots<R>(&self, f: impl FnOnce(&[LinkSlot]) -> R) -> R {
        let mut inline = [LinkSlot::Top; WALK];
        let mut len = 1;
        let mut deep: Vec<LinkSlot> = Vec::new();
        let mut link = self.top.get();
        while let Some(meta) = node_of(link) {
            if len < WALK {
                inline[len] = LinkSlot::Below(meta);
                len += 1;
            } else {
                if deep.is_empty() {
                    deep.extend_from_slice(&inline);
                }
                deep.push(LinkSlot::Below(meta));
            }
            link = below(meta);
        }
        if deep.is_empty() {
            f(&inline[..len])
        } else {
            f(&deep)
        }
    }

    /// Removal of anything but the newest untimed hold: timed, out of order, or from the base.
    /// Returns whether the removed hold was timed.
    #[cold]
    #[inline(never)]
    fn remove_deeper(&self, key: HoldKey) -> bool {
        self.with_link_slots(|slots| {
            if !key.is_shared() {
                for pair in slots.windows(2) {
                    let (above, LinkSlot::Below(meta)) = (pair[0], pair[1]) else {
                        continue;
                    };
                    let link = self.link(above);
                    if link & !LINK_BITS == key.0 {
                        // Unlink: the hold below takes over the entries counted above this one.
                        let under = below(meta);
                        self.set_link(above, under + (link & COUNT));
                        return false;
                    }
                }
            }
            // An array entry: shared, or a timed exclusive hold (its key carries `TIMED`).
            if let Some(i) = (1..=self.entries.get())
                .rev()
                .find(|&i| self.keys[i].get().untimed() == key)
            {
                let timed = self.keys[i].get().is_timed();
                // The link whose count covers entry `i`: counts are consumed bottom up.
                let mut seen = 0;
                for &slot in slots.iter().rev() {
                    let link = self.link(slot);
                    seen += link & COUNT;
                    if seen >= i {
                        self.set_link(slot, link - 1);
                        break;
                    }
                }
                let n = self.entries.get();
                for j in i..n {
                    self.keys[j].set(self.keys[j + 1].get());
                    self.sites[j].set(self.sites[j + 1].get());
                }
                self.entries.set(n - 1);
                return timed;
            }
            let removed = with_base(|base| {
                let at = base.iter().rposition(|e| e.0.untimed() == key)?;
                Some((base.remove(at).0.is_timed(), base.is_empty()))
            })
            .flatten();
            match removed {
                Some((timed, now_empty)) => {
                    if now_empty {
                        // The bottom link no longer needs to say "base".
                        let bottom = *slots.last().expect("`top` is always a slot");
                        let link = self.link(bottom);
                        self.set_link(bottom, link & LINK_BITS);
                    }
                    timed
                }
                None => false, // never recorded (taken during thread teardown)
            }
        })
    }

    /// Every hold above the base, oldest first.
    fn for_each_above_base(&self, mut f: impl FnMut(Entry)) {
        self.with_link_slots(|slots| {
            let mut next = 1;
            for &slot in slots.iter().rev() {
                let link = self.link(slot);
                if let Some(meta) = node_of(link) {
                    let key = HoldKey::new(meta, AccessMode::Exclusive);
                    // SAFETY: `meta` was reached from `top`: this thread holds its lock
                    // exclusively.
                    f((key, unsafe { meta.held.site() }));
                }
                for i in next..next + (link & COUNT) {
                    let at = self.sites[i].get().unwrap_or_else(Location::caller);
                    f((self.keys[i].get(), at));
                }
                next += link & COUNT;
            }
            debug_assert_eq!(next, self.entries.get() + 1, "the counts cover the array");
        });
    }

    /// The newest hold for which `found` is true, searching newest first (no allocation; the
    /// level check stops at the first leveled hold, usually at or near the top).
    fn newest_where(&self, found: impl Fn(Entry) -> bool) -> Option<Entry> {
        let mut link = self.top.get();
        if link == 0 {
            return None; // nothing held
        }
        let mut last = self.entries.get();
        loop {
            let count = link & COUNT;
            for i in (last + 1 - count..=last).rev() {
                let at = self.sites[i].get().unwrap_or_else(Location::caller);
                let entry = (self.keys[i].get(), at);
                if found(entry) {
                    return Some(entry);
                }
            }
            last -= count;
            let Some(meta) = node_of(link) else { break };
            // SAFETY: `meta` was reached from `top`: this thread holds its lock exclusively.
            let entry = (HoldKey::new(meta, AccessMode::Exclusive), unsafe {
                meta.held.site()
            });
            if found(entry) {
                return Some(entry);
            }
            link = below(meta);
        }
        if link & !LINK_BITS == BASE {
            return with_base(|base| base.iter().rev().copied().find(|&e| found(e))).flatten();
        }
        None
    }

    /// Every hold, oldest first.
    fn for_each(&self, mut f: impl FnMut(Entry)) {
        if self.top.get() & !LINK_BITS != 0 {
            // Not `0 | n`: there may be a base (a stale `BASE` bottom finds it empty).
            with_base(|base| base.iter().copied().for_each(&mut f));
        }
        self.for_each_above_base(f);
    }

    fn highest_leveled(&self) -> Option<LockUse> {
        self.newest_where(|entry| entry.0.lock().level.is_some())
            .map(to_use)
    }

    fn to_vec(&self) -> Vec<LockUse> {
        let mut all = Vec::new();
        self.for_each(|entry| all.push(to_use(entry)));
        all
    }
}

/// Runs `f` on this thread's base, unless it is gone (thread teardown).
fn with_base<R>(f: impl FnOnce(&mut Vec<Entry>) -> R) -> Option<R> {
    BASE_HOLDS.try_with(|base| f(&mut base.borrow_mut())).ok()
}

#[cfg(not(loom))]
crate::loom::thread_local! {
    static HELD: HeldList = const { HeldList::new() };
    static BASE_HOLDS: Base = const { RefCell::new(Vec::new()) };
}
#[cfg(loom)]
crate::loom::thread_local! {
    static HELD: HeldList = HeldList::new();
    static BASE_HOLDS: Base = RefCell::new(Vec::new());
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

/// Records that the thread now holds `meta`'s lock in `mode`, acquired at `at`.
///
/// # Safety
/// The calling thread has just acquired the lock in `mode` (and holds it).
#[inline(always)]
pub(crate) unsafe fn push(meta: &LockMeta, mode: AccessMode, at: &'static Location<'static>) {
    // One thread-local access per mode, so that each stays small enough to inline where the mode
    // is only known at run time (the instrumented and slow paths).
    // A lock taken in a thread-local destructor, after the list is gone, goes unrecorded.
    match mode {
        AccessMode::Exclusive => {
            // SAFETY: the caller holds the lock exclusively.
            let _ = HELD.try_with(|held| unsafe { held.push_exclusive(meta, at) });
        }
        AccessMode::Shared => {
            let key = HoldKey::new(meta, AccessMode::Shared);
            let _ = HELD.try_with(|held| held.push_entry(key, at));
        }
    }
}

/// Records a timed exclusive hold of `meta`'s lock (its release ends the timing): an array entry
/// whose key carries [`TIMED`], which the stack's fast release never matches.
pub(crate) fn push_timed(meta: &LockMeta, at: &'static Location<'static>) {
    let key = HoldKey::new(meta, AccessMode::Exclusive).timed();
    let _ = HELD.try_with(|held| held.push_entry(key, at));
}

/// Records that the thread released one hold of `meta`'s lock in `mode` (guards may drop in any
/// order); called before the lock word is released. Returns whether that hold was timed (its
/// start recorded in the lock's counters).
#[inline(always)]
pub(crate) fn remove(meta: &LockMeta, mode: AccessMode) -> bool {
    HELD.try_with(|held| held.remove(meta, mode))
        .unwrap_or(false)
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

    fn modes_and_levels() -> Vec<(AccessMode, Option<u32>)> {
        held_by_current_thread()
            .iter()
            .map(|h| (h.mode, h.level().map(|l| l.0)))
            .collect()
    }

    #[test]
    fn deep_exclusive_nesting_has_no_limit_and_keeps_its_order() {
        let locks: Vec<Mutex<()>> = (0..200)
            .map(|i| Mutex::with_level("held-test-deep", Level(i), ()))
            .collect();
        let mut guards: Vec<_> = locks.iter().map(|l| l.lock().unwrap()).collect();
        let levels: Vec<u32> = held_by_current_thread()
            .iter()
            .map(|h| h.level().unwrap().0)
            .collect();
        assert_eq!(levels, (0..200).collect::<Vec<_>>());
        // Out of order: the middle of the stack, then the bottom.
        drop(guards.remove(100));
        drop(guards.remove(0));
        let levels: Vec<u32> = held_by_current_thread()
            .iter()
            .map(|h| h.level().unwrap().0)
            .collect();
        let expected: Vec<u32> = (1..200).filter(|&i| i != 100).collect();
        assert_eq!(levels, expected);
        drop(guards);
        assert!(held_by_current_thread().is_empty());
        assert!(is_empty());
    }

    #[test]
    fn interleaved_shared_and_exclusive_holds_released_out_of_order() {
        use crate::RwLock;
        let r: Vec<RwLock<()>> = (0..4)
            .map(|i| RwLock::with_level("held-test-r", Level(10 * i + 1), ()))
            .collect();
        let m: Vec<Mutex<()>> = (0..4)
            .map(|i| Mutex::with_level("held-test-m", Level(10 * i + 5), ()))
            .collect();
        use AccessMode::{Exclusive as X, Shared as S};
        // r0 m0 r1 m1 r2 m2 r3 m3, by level.
        let r0 = r[0].read().unwrap();
        let m0 = m[0].lock().unwrap();
        let r1 = r[1].read().unwrap();
        let m1 = m[1].lock().unwrap();
        let r2 = r[2].read().unwrap();
        let m2 = m[2].lock().unwrap();
        let r3 = r[3].read().unwrap();
        let m3 = m[3].lock().unwrap();
        let all = vec![
            (S, Some(1)),
            (X, Some(5)),
            (S, Some(11)),
            (X, Some(15)),
            (S, Some(21)),
            (X, Some(25)),
            (S, Some(31)),
            (X, Some(35)),
        ];
        assert_eq!(modes_and_levels(), all);
        // A shared hold below exclusive ones, an exclusive one below shared ones.
        drop(r1);
        drop(m0);
        assert_eq!(
            modes_and_levels(),
            vec![
                (S, Some(1)),
                (X, Some(15)),
                (S, Some(21)),
                (X, Some(25)),
                (S, Some(31)),
                (X, Some(35)),
            ]
        );
        // The newest exclusive hold is released fast; the shared one below it is then the newest.
        drop(m3);
        drop(r3);
        // An exclusive hold whose shared holds above were taken before: they move below it.
        drop(m1);
        assert_eq!(
            modes_and_levels(),
            vec![(S, Some(1)), (S, Some(21)), (X, Some(25))]
        );
        // The level check still sees level 25 as the highest.
        let low = Mutex::with_level("held-test-low2", Level(24), ());
        assert!(matches!(low.lock(), Err(LockError::LevelViolation { .. })));
        let high = Mutex::with_level("held-test-high2", Level(40), ());
        let g = high.lock().unwrap();
        assert_eq!(modes_and_levels().last(), Some(&(X, Some(40))));
        drop(g);
        drop(r0);
        drop(r2);
        drop(m2);
        assert!(held_by_current_thread().is_empty());
        assert!(is_empty());
    }

    #[test]
    fn many_shared_holds_move_to_the_base_in_order() {
        use crate::RwLock;
        // 3 rounds of (shared x 7, exclusive x 1): 21 shared holds, past the array's 16.
        let rs: Vec<RwLock<()>> = (0..21).map(|_| RwLock::new(())).collect();
        let ms: Vec<Mutex<()>> = (0..3).map(|_| Mutex::new(())).collect();
        let mut expected = Vec::new();
        let mut reads = Vec::new();
        let mut writes = Vec::new();
        for round in 0..3 {
            for r in &rs[round * 7..round * 7 + 7] {
                reads.push(r.read().unwrap());
                expected.push((AccessMode::Shared, r.info().id));
            }
            writes.push(ms[round].lock().unwrap());
            expected.push((AccessMode::Exclusive, ms[round].info().id));
        }
        let ids = || -> Vec<(AccessMode, crate::LockId)> {
            held_by_current_thread()
                .iter()
                .map(|h| (h.mode, h.lock.id))
                .collect()
        };
        assert_eq!(ids(), expected);
        // Release from the base (oldest), from the array, then everything newest first.
        drop(reads.remove(0));
        expected.remove(0);
        assert_eq!(ids(), expected);
        drop(writes.remove(0)); // in the base now
        expected.retain(|e| e.1 != ms[0].info().id);
        assert_eq!(ids(), expected);
        while let Some(w) = writes.pop() {
            drop(w);
        }
        expected.retain(|e| e.0 == AccessMode::Shared);
        assert_eq!(ids(), expected);
        while let Some(r) = reads.pop() {
            drop(r);
            expected.pop();
            assert_eq!(ids(), expected);
        }
        assert!(is_empty());
        // The stack works as before once the base is empty.
        let g = ms[0].lock().unwrap();
        assert_eq!(held_by_current_thread().len(), 1);
        drop(g);
        assert!(is_empty());
    }

    #[test]
    fn the_same_rwlock_read_twice_then_released_in_any_order() {
        use crate::RwLock;
        let r = RwLock::new(());
        let m = Mutex::new(());
        let a = r.read().unwrap();
        let b = r.read().unwrap();
        let g = m.lock().unwrap();
        drop(a); // below an exclusive hold: one of the two entries of the same lock goes
        assert_eq!(held_by_current_thread().len(), 2);
        drop(g);
        drop(b);
        assert!(is_empty());
    }

    #[test]
    fn timed_holds_interleaved_with_others_keep_their_place() {
        use crate::RwLock;
        let timed = Mutex::new(());
        timed.set_hold_timing(true);
        let plain = Mutex::new(());
        let r = RwLock::new(());
        let g1 = plain.lock().unwrap();
        let gt = timed.lock().unwrap(); // an array entry, between two stack holds
        let gr = r.read().unwrap();
        let ids: Vec<_> = held_by_current_thread().iter().map(|h| h.lock.id).collect();
        assert_eq!(ids, [plain.info().id, timed.info().id, r.info().id]);
        drop(g1); // the bottom of the stack, below the timed hold
        drop(gt); // timed, not the newest
        assert_eq!(timed.stats().holds.timed, 1);
        let ids: Vec<_> = held_by_current_thread().iter().map(|h| h.lock.id).collect();
        assert_eq!(ids, [r.info().id]);
        drop(gr);
        assert!(is_empty());
        // Newest first, the timed one on top.
        let g1 = plain.lock().unwrap();
        let gt = timed.lock().unwrap();
        drop(gt);
        drop(g1);
        assert!(is_empty());
        assert_eq!(timed.stats().holds.timed, 2);
    }
}
