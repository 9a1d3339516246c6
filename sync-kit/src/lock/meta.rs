//! What a lock is (identity, name, level, kind) and what it has counted (its statistics).
//!
//! Every sync-kit lock owns an `Arc<LockMeta>`; named locks share theirs with the registry kept
//! here (read by [`crate::stats::all`]), so statistics stay readable while the lock lives and the
//! entry disappears when it is dropped. The counters themselves are `counters.rs`; this module
//! depends on it (and on `raw_rwlock.rs`, whose word an `RwLock` keeps here) and on nothing above
//! the lock layer.
//!
//! | field / static  | read                                   | written                              |
//! |-----------------|----------------------------------------|--------------------------------------|
//! | `info`          | reports, level checks, the detector    | never (set at creation)              |
//! | `flags`         | every acquisition (one byte, relaxed)  | creation (`LEVELED`, the global copy), `set_hold_timing`, `set_global_flag` |
//! | `GLOBAL_FLAGS`  | a lock's creation                      | `set_order_checking`, `stats::set_hold_timing` (under `LIVE`) |
//! | `LIVE`          | `set_global_flag`                      | every lock's creation and drop       |
//! | `held`          | the exclusive holder's thread (`held.rs`) | the exclusive holder's thread     |
//! | `rw`            | an `RwLock`'s every acquisition; stats | the lock's acquisitions and releases; its DIVERT bit with `flags` (under `LIVE`) |
//!
//! Invariants, outside `LIVE`'s critical sections (every change of `flags` and of the DIVERT
//! mirror is made under it):
//! - `flags == 0` exactly when an acquisition needs no level check, no order check and no clock;
//!   the upper bits of every live lock's `flags` equal `GLOBAL_FLAGS` (a lock takes its copy, and
//!   a switch changes every copy, under that lock);
//! - an `RwLock`'s word has DIVERT set exactly when its `flags` are not zero;
//! - a `LockMeta` outlives every held-list entry that points to it (the handle leaks it if the
//!   lock is dropped while still locked), and is listed in `LIVE` from its creation to its
//!   handle's drop.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::panic::Location;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicU8 as StdAtomicU8, AtomicU64 as StdAtomicU64, AtomicUsize as StdAtomicUsize,
    Ordering as StdOrdering,
};
use std::sync::{Mutex as StdMutex, PoisonError};

use serde::Serialize;

use super::counters::{Counters, LockStats};
use super::raw_rwlock::RawRwLock;
use crate::loom::cell::UnsafeCell;
use crate::loom::{InternalMutex, global};

/// A position in a lock hierarchy. A thread holding a leveled lock at level `n` may only acquire
/// leveled locks at levels strictly greater than `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Level(pub u32);

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "level {}", self.0)
    }
}

/// Which kind of sync-kit lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// [`crate::Mutex`].
    Mutex,
    /// [`crate::RwLock`].
    RwLock,
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockKind::Mutex => "Mutex",
            LockKind::RwLock => "RwLock",
        })
    }
}

/// How a lock is (or is wanted to be) held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// A `Mutex` lock or an `RwLock` write lock.
    Exclusive,
    /// An `RwLock` read lock.
    Shared,
}

impl fmt::Display for AccessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccessMode::Exclusive => "exclusive",
            AccessMode::Shared => "shared",
        })
    }
}

/// A process-unique lock identity (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct LockId(pub u64);

/// Identity of one lock: cheap to copy, printed in reports and errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// Unique for the life of the process.
    pub id: LockId,
    /// The name given at construction (`named`, `with_level`), if any (a dynamic name is
    /// interned: see `Mutex::named`).
    pub name: Option<&'static str>,
    /// The level in the hierarchy, if the lock is leveled.
    pub level: Option<Level>,
    /// Mutex or RwLock.
    pub kind: LockKind,
    /// Where the lock was constructed.
    pub created_at: &'static Location<'static>,
}

impl fmt::Display for LockInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name {
            Some(name) => write!(f, "{} {name:?}", self.kind)?,
            None => write!(
                f,
                "unnamed {} #{} (created at {})",
                self.kind, self.id.0, self.created_at
            )?,
        }
        if let Some(level) = self.level {
            write!(f, " ({level})")?;
        }
        Ok(())
    }
}

/// One use of a lock at one place in the code: a lock held (`at` = where it was acquired) or
/// requested (`at` = where the call was made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockUse {
    /// The lock.
    pub lock: LockInfo,
    /// Shared or exclusive.
    pub mode: AccessMode,
    /// The call site.
    pub at: &'static Location<'static>,
}

impl LockUse {
    /// The lock's name, if it has one.
    pub fn name(&self) -> Option<&'static str> {
        self.lock.name
    }

    /// The lock's level, if it is leveled.
    pub fn level(&self) -> Option<Level> {
        self.lock.level
    }
}

impl fmt::Display for LockUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match (self.lock.kind, self.mode) {
            (LockKind::Mutex, _) => "",
            (LockKind::RwLock, AccessMode::Exclusive) => " for writing",
            (LockKind::RwLock, AccessMode::Shared) => " for reading",
        };
        write!(f, "{}{mode} at {}", self.lock, self.at)
    }
}

static NEXT_LOCK_ID: StdAtomicU64 = StdAtomicU64::new(1);

/// A lock name for the life of the process. A `&'static str` is used as it is; an owned name
/// (`format!("account-{id}")`) is copied once per distinct name into a process-wide set and never
/// freed, so that `LockInfo` and `LockUse` stay `Copy` and the held list never touches a
/// reference count. Memory grows with the number of *distinct* dynamic names: name locks by
/// something bounded (an account, a shard), not by unbounded input.
pub(crate) fn intern(name: Cow<'static, str>) -> &'static str {
    static NAMES: StdMutex<BTreeSet<&'static str>> = StdMutex::new(BTreeSet::new());
    match name {
        Cow::Borrowed(name) => name,
        Cow::Owned(name) => {
            let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(&known) = names.get(name.as_str()) {
                return known;
            }
            let leaked: &'static str = Box::leak(name.into_boxed_str());
            names.insert(leaked);
            leaked
        }
    }
}

/// A new process-unique id, shared by locks and condvars.
pub(crate) fn next_id() -> u64 {
    // Only uniqueness matters; no other memory is ordered by this counter.
    NEXT_LOCK_ID.fetch_add(1, StdOrdering::Relaxed)
}

/// Per-lock [`LockMeta::flags`] bit: the lock is leveled (its acquisitions check the hierarchy).
pub(crate) const LEVELED: u8 = 0b0001;
/// Per-lock [`LockMeta::flags`] bit: this lock times its exclusive holds.
pub(crate) const TIME_HOLDS: u8 = 0b0010;
/// [`GLOBAL_FLAGS`] bit: lock-order checking is on (`Refuse` or `Warn`).
pub(crate) const ORDER_CHECKING: u8 = 0b01;
/// [`GLOBAL_FLAGS`] bit: hold timing is on for every lock.
pub(crate) const HOLD_TIMING: u8 = 0b10;
/// Where a [`GLOBAL_FLAGS`] bit sits in every lock's [`LockMeta::flags`] (shifted left by this).
const GLOBAL_SHIFT: u32 = 2;

/// Process-wide switches that send every acquisition down the instrumented path. Every live
/// lock carries a copy in its own flags byte (its upper bits), so the fast path reads one byte of
/// the lock; this static is where a new lock takes its copy from. Written only under [`LIVE`]'s
/// lock, together with the copies. Order checking starts on where its default policy (`Refuse`
/// with `debug_assertions`) is.
static GLOBAL_FLAGS: StdAtomicU8 = StdAtomicU8::new(if cfg!(debug_assertions) {
    ORDER_CHECKING
} else {
    0
});

global! {
    /// Every live lock's metadata (named or not), so that a process-wide switch reaches each
    /// lock's flags (and an `RwLock`'s mirror of them in its word, a loom atomic: so this is a
    /// loom mutex under loom, one list per explored execution).
    static LIVE: InternalMutex<LiveLocks> = InternalMutex::new(LiveLocks(Vec::new()));
}

/// The addresses of the live `LockMeta`s; each knows its index (`LockMeta::live_slot`).
struct LiveLocks(Vec<*const LockMeta>);

// SAFETY: the pointers are only dereferenced under `LIVE`'s lock, while the `LockMeta`s are alive
// (a lock's metadata leaves the list in `MetaHandle::drop`, before its count is given back), and
// `LockMeta` is `Sync`.
unsafe impl Send for LiveLocks {}

/// Sets or clears one of the [`GLOBAL_FLAGS`] bits, and its copy in every live lock (through
/// [`LockMeta::set_flag`], so that an `RwLock`'s DIVERT mirror follows: its fast paths read the
/// word, never the byte).
pub(crate) fn set_global_flag(bit: u8, on: bool) {
    let live = LIVE.lock();
    if on {
        GLOBAL_FLAGS.fetch_or(bit, StdOrdering::Relaxed);
    } else {
        GLOBAL_FLAGS.fetch_and(!bit, StdOrdering::Relaxed);
    }
    for &meta in &live.0 {
        // SAFETY: listed, so alive (see `LiveLocks`).
        let meta = unsafe { &*meta };
        meta.set_flag(bit << GLOBAL_SHIFT, on);
    }
}

/// The exclusive holder's entry in its thread's held list (`held.rs`): the link to the hold
/// below this one and where this one was acquired.
///
/// Owned by whoever holds the lock exclusively (a `Mutex`, an `RwLock` writer): written right
/// after the acquisition, read by that thread while it holds the lock, last read right before
/// the release. So the lock word's acquire and release order every access from one holder to
/// the next, as they order accesses to the lock's data (under loom this is a tracked
/// `UnsafeCell`, which checks exactly that). Readers never touch it.
pub(crate) struct HeldNode {
    below: UnsafeCell<usize>,
    site: UnsafeCell<&'static Location<'static>>,
}

// SAFETY: the cells are only accessed by the lock's exclusive holder, between its acquisition and
// its release (see the type's documentation and the `unsafe` methods' contract), so two threads
// never access them without the lock word ordering the accesses.
unsafe impl Sync for HeldNode {}
// SAFETY: the fields are a `usize` and a `&'static Location`, both `Send`.
unsafe impl Send for HeldNode {}

impl fmt::Debug for HeldNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeldNode { .. }")
    }
}

impl HeldNode {
    fn new(created_at: &'static Location<'static>) -> Self {
        Self {
            below: UnsafeCell::new(0),
            site: UnsafeCell::new(created_at),
        }
    }

    /// Records a new exclusive hold: the link below it and its call site.
    ///
    /// # Safety
    /// The calling thread holds the lock exclusively.
    #[inline(always)]
    pub(crate) unsafe fn start(&self, below: usize, site: &'static Location<'static>) {
        // SAFETY: by the caller's contract this thread holds the lock exclusively, so no other
        // thread accesses the cells until the release that follows.
        self.below.with_mut(|p| unsafe { *p = below });
        // SAFETY: as above.
        self.site.with_mut(|p| unsafe { *p = site });
    }

    /// The link below the hold.
    ///
    /// # Safety
    /// The calling thread holds the lock exclusively and recorded the hold with `start`.
    #[inline(always)]
    pub(crate) unsafe fn below(&self) -> usize {
        // SAFETY: by the caller's contract (see `start`).
        self.below.with(|p| unsafe { *p })
    }

    /// Replaces the link below the hold (an out-of-order release below it).
    ///
    /// # Safety
    /// As for [`below`](Self::below).
    pub(crate) unsafe fn set_below(&self, below: usize) {
        // SAFETY: by the caller's contract (see `start`).
        self.below.with_mut(|p| unsafe { *p = below });
    }

    /// Where the hold was acquired.
    ///
    /// # Safety
    /// As for [`below`](Self::below).
    pub(crate) unsafe fn site(&self) -> &'static Location<'static> {
        // SAFETY: by the caller's contract (see `start`).
        self.site.with(|p| unsafe { *p })
    }
}

/// A lock's identity and counters.
///
/// Aligned to 16 (what `malloc` gives anyway, so no aligned allocation): the held list links and
/// keys holds by this struct's address, with a count (up to 15) or flag bits in the four bits
/// below it (`held.rs`).
#[derive(Debug)]
#[repr(align(16))]
pub(crate) struct LockMeta {
    /// This lock's entry in the held list of the thread that holds it exclusively.
    pub(crate) held: HeldNode,
    pub(crate) info: LockInfo,
    pub(crate) counters: Counters,
    /// [`LEVELED`] and [`TIME_HOLDS`], and above them a copy of [`GLOBAL_FLAGS`]: when this byte
    /// is zero, an acquisition takes the plain fast path (no level, order or clock work).
    pub(crate) flags: StdAtomicU8,
    /// This lock's index in [`LIVE`] (written under its lock).
    live_slot: StdAtomicUsize,
    /// An [`RwLock`](crate::RwLock)'s lock word, kept here so that its exact read count (part of
    /// the word) can be read by whoever holds the metadata (the registry). Unused by the other
    /// kinds (never locked, counts nothing).
    pub(crate) rw: RawRwLock,
}

impl LockMeta {
    /// Creates the metadata of a new lock; named locks are entered in the registry.
    pub(crate) fn register(
        name: Option<&'static str>,
        level: Option<Level>,
        kind: LockKind,
        created_at: &'static Location<'static>,
    ) -> MetaHandle {
        let meta = Arc::new(LockMeta {
            info: LockInfo {
                id: LockId(next_id()),
                name,
                level,
                kind,
                created_at,
            },
            held: HeldNode::new(created_at),
            counters: Counters::new(),
            flags: StdAtomicU8::new(if level.is_some() { LEVELED } else { 0 }),
            live_slot: StdAtomicUsize::new(0),
            rw: RawRwLock::new(),
        });
        {
            let mut live = LIVE.lock();
            let global = GLOBAL_FLAGS.load(StdOrdering::Relaxed);
            meta.set_flag(global << GLOBAL_SHIFT, true);
            meta.live_slot.store(live.0.len(), StdOrdering::Relaxed);
            live.0.push(Arc::as_ptr(&meta));
        }
        if name.is_some() {
            REGISTRY.lock().insert(meta.info.id, Arc::clone(&meta));
        }
        MetaHandle::new(meta)
    }

    /// This lock's statistics: the counters, plus the read acquisitions an `RwLock` counts in its
    /// lock word.
    pub(crate) fn stats(&self) -> LockStats {
        self.counters.read_with_reads(self.rw.reads())
    }

    /// Zeroes the statistics.
    pub(crate) fn reset(&self) {
        self.counters.reset();
        self.rw.reset_reads();
    }

    /// Whether an acquisition must take the instrumented path (levels, order checking, hold
    /// timing): one load of this lock's flags byte, which carries the global switches too.
    #[inline(always)]
    pub(crate) fn instrumented(&self) -> bool {
        self.flags.load(StdOrdering::Relaxed) != 0
    }

    /// Whether an exclusive hold that begins now is timed (this lock's setting or the global one).
    pub(crate) fn times_holds(&self) -> bool {
        self.flags.load(StdOrdering::Relaxed) & (TIME_HOLDS | HOLD_TIMING << GLOBAL_SHIFT) != 0
    }

    /// Times this lock's exclusive holds (or stops), whatever the global setting.
    pub(crate) fn set_hold_timing(&self, on: bool) {
        self.counters.set_hold_times(on);
        let _live = LIVE.lock();
        self.set_flag(TIME_HOLDS, on);
    }

    /// Sets or clears `bits` of [`flags`](Self::flags), and an `RwLock`'s mirror of "any flag
    /// set" in its word. Called under [`LIVE`]'s lock, which every change of the flags takes, so
    /// the mirror never disagrees with the byte once the lock is released. Every change of the
    /// flags goes through here (a lock's creation, its own `set_hold_timing`, a process-wide
    /// switch): an `RwLock` whose byte changed without its DIVERT bit would keep taking the plain
    /// path, skipping the order check and the hold's clock.
    fn set_flag(&self, bits: u8, on: bool) {
        let now = if on {
            self.flags.fetch_or(bits, StdOrdering::Relaxed) | bits
        } else {
            self.flags.fetch_and(!bits, StdOrdering::Relaxed) & !bits
        };
        if self.info.kind == LockKind::RwLock {
            self.rw.set_divert(now != 0);
        }
    }
}

global! {
    /// Every live named lock, by id.
    static REGISTRY: InternalMutex<BTreeMap<LockId, Arc<LockMeta>>> = InternalMutex::new(BTreeMap::new());
}

/// The metadata of every live named lock, by id.
pub(crate) fn named_locks() -> Vec<Arc<LockMeta>> {
    REGISTRY.lock().values().cloned().collect()
}

/// Owns a lock's metadata; leaves the registry (and the learned lock order) when the lock is
/// dropped.
///
/// One strong count of an `Arc<LockMeta>`, kept as the pointer to the `LockMeta` itself (not to
/// the `Arc`'s header), so that reaching the metadata, and building the held list's key from it,
/// is one load with no offset.
#[derive(Debug)]
pub(crate) struct MetaHandle(NonNull<LockMeta>);

// What the two `unsafe impl`s below and the held list's keys rely on, checked at compile time.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<LockMeta>();
    assert!(std::mem::align_of::<LockMeta>() >= 16);
};

// SAFETY: a `MetaHandle` is an `Arc<LockMeta>` in another form, and `LockMeta` is `Send + Sync`
// (atomics and `Copy` identity), so the handle may move and be shared between threads as the
// `Arc` could.
unsafe impl Send for MetaHandle {}
// SAFETY: as above.
unsafe impl Sync for MetaHandle {}

impl MetaHandle {
    fn new(meta: Arc<LockMeta>) -> Self {
        // SAFETY: `Arc::into_raw` never returns null.
        Self(unsafe { NonNull::new_unchecked(Arc::into_raw(meta).cast_mut()) })
    }

    /// Keeps the metadata allocated for the rest of the process: a guard of this lock was leaked
    /// (`mem::forget`), so a thread's held list may still point to it.
    fn leak(&self) {
        // SAFETY: the handle owns one strong count, so the pointer is a live `Arc`'s; the added
        // count is never given back.
        unsafe { Arc::increment_strong_count(self.0.as_ptr().cast_const()) };
    }
}

impl std::ops::Deref for MetaHandle {
    type Target = LockMeta;
    #[inline(always)]
    fn deref(&self) -> &LockMeta {
        // SAFETY: the handle owns a strong count until it is dropped: the pointee is alive.
        unsafe { self.0.as_ref() }
    }
}

/// Whether a raw lock is held by anyone (read by a lock's drop).
pub(crate) trait RawHeld {
    fn is_held(&self) -> bool;
}

/// A blocking lock's raw state and metadata (an `RwLock`'s raw state is `()`: its word is
/// `LockMeta::rw`). Dropping a lock that is still locked (only possible
/// once a guard was leaked with `mem::forget`) leaks the metadata, so that the held list entry of
/// the leaked guard keeps pointing to live memory (see `held.rs`, invariants).
#[derive(Debug)]
pub(crate) struct LockCore<R: RawHeld> {
    pub(crate) raw: R,
    pub(crate) meta: MetaHandle,
}

impl RawHeld for () {
    fn is_held(&self) -> bool {
        false
    }
}

impl<R: RawHeld> Drop for LockCore<R> {
    fn drop(&mut self) {
        if self.raw.is_held() || self.meta.rw.is_held() {
            self.meta.leak();
        }
    }
}

impl Drop for MetaHandle {
    fn drop(&mut self) {
        {
            let mut live = LIVE.lock();
            let slot = self.live_slot.load(StdOrdering::Relaxed);
            live.0.swap_remove(slot);
            if let Some(&moved) = live.0.get(slot) {
                // SAFETY: listed, so alive (see `LiveLocks`).
                unsafe { &*moved }
                    .live_slot
                    .store(slot, StdOrdering::Relaxed);
            }
        }
        crate::deadlock::forget_order(self.info.id);
        if self.info.name.is_some() {
            REGISTRY.lock().remove(&self.info.id);
        }
        // SAFETY: the pointer came from `Arc::into_raw` and this handle's count is given back
        // once, here.
        drop(unsafe { Arc::from_raw(self.0.as_ptr().cast_const()) });
    }
}
