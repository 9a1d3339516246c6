//! Where transactions register the version they read without a lock: a few slots, each on a
//! cache line of its own, one per thread (threads are numbered as they first register, and a
//! thread's number picks its slot). Beginning a transaction writes the thread's own slot, and a
//! commit reads every slot once: no line that every transaction writes, such as the state
//! lock's, moves between the cores. A transaction whose slot is taken (its thread has another
//! transaction live, or more threads than slots run them) registers in the state lock's queue
//! instead, as snapshots do (`state.rs`).
//!
//! | slot | means | moves on |
//! |---|---|---|
//! | `FREE` | no registration | a claim by a thread given this slot: compare-and-swap to `reading(v)` |
//! | `reading(v)` | a transaction reads version `v`, or is still confirming that `v` is the latest | its claimer stores a later version while confirming; its commit marks it `committing(v)` (and alone, below); its release stores `FREE` |
//! | `committing(v)` | the transaction stood on `v` and reads no more values: its commit validates it (which needs the tombstones since `v`, not the values) | its release stores `FREE` |
//! | `committing(v)`, alone | its commit runs alone, without the committer lock (`state.rs`): commits under the lock wait until no slot is alone | the commit's end clears the bit; its release stores `FREE` |
//!
//! A commit marks its slot alone, then loads `exclusive`; a commit under the lock stores
//! `exclusive`, then reads every slot and waits for those marked alone (Dekker's pattern again,
//! [`Slots::committing_alone`] against [`Slots::exclude_alone`]): one of the two sees the other,
//! so no commit alone runs while a commit under the lock does. A commit alone that sees
//! `exclusive` unmarks its slot and takes the committer lock instead.
//!
//! Each slot also keeps a *lease* on the map (one reference count, taken by its first
//! registration and kept for the next ones: `state.rs`'s `Hold`), given back when the map's last
//! handle is dropped: by that drop for a free slot, by the registration's release for a slot in
//! use ([`Slots::release`] stores `FREE` then loads `orphaned`; the last handle stores
//! `orphaned` then loads the slot: Dekker's pattern once more).
//!
//! A committing transaction holds no value back: under contention, transactions spend much of
//! their life waiting for the committer lock, and the commits before theirs can then fold their
//! writes into their entries at once instead of keeping the values they replace.
//!
//! A registration must be seen by every commit that could drop what it reads, without the two
//! sharing a lock. Both sides write, then read (Dekker's pattern, with the orderings of
//! `crate::loom::dekker`: `SeqCst` accesses, and under loom a `SeqCst` fence between them):
//!
//! - a claim stores `reading(v)` in its slot, then loads the published version; if that is
//!   still `v`, the registration is confirmed at `v`, else it stores the newer version and checks
//!   again;
//! - a commit stores its version `n` as the published one, then reads the slots.
//!
//! One of the two stores comes first in their single total order (of the `SeqCst` operations,
//! or under loom of the fences after them). If the claim's, the commit reads the slot (or a
//! later store to it); if the commit's, the claim loads `n` or a later version and does not
//! confirm `v`. Invariant: **a registration confirmed at `v` is among the
//! live versions of every commit that publishes a version after `v`, until it is released.** A
//! commit that publishes `n <= v` needs no such word: it keeps the newest write at or below `n`
//! of each entry it trims, and never touches a newer one (`entry.rs`). Loom model
//! `transactions_keep_what_they_read`.

use crate::loom::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use crate::loom::{SpinWait, dekker, global, thread_local, yield_now};

/// A slot's value with no registration in it.
const FREE: u64 = 0;
/// The low bit of a slot's value: its transaction is committing.
const COMMITTING: u64 = 1;
/// The next bit: its transaction is committing alone (without the committer lock).
const ALONE: u64 = 2;

/// A slot's value for a transaction that reads version `version`.
fn reading(version: u64) -> u64 {
    (version + 1) << 2
}

/// The version a slot's value (not `FREE`) stands on.
fn version_of(value: u64) -> u64 {
    (value >> 2) - 1
}

/// Consecutive declined attempts to commit alone after which a slot pauses them
/// ([`Slots::try_alone`]).
const DECLINES_BEFORE_PAUSE: u32 = 4;
/// How many commits a paused slot sends straight to the committer lock.
const PAUSED_ATTEMPTS: u32 = 32;

#[repr(align(64))]
struct Slot {
    /// `FREE`, or `reading(v)` with the `COMMITTING` and `ALONE` bits.
    value: AtomicU64,
    /// Commits made alone, and refused alone, by the transactions registered here (each
    /// changed only by the slot's registered transaction: a load and a store).
    commits: AtomicU64,
    conflicts: AtomicU64,
    /// How the slot's recent attempts to commit alone went ([`Slots::try_alone`]): changed
    /// only by the slot's registered transaction, a load and a store.
    declines: AtomicU32,
    /// The slot's lease on the map's shared state (`state.rs`'s `Hold`): one reference count,
    /// made by `Arc::into_raw` and taken by the first registration here, or null.
    lease: AtomicPtr<()>,
}

/// The transactions' registration slots of one map.
pub(crate) struct Slots {
    slots: Box<[Slot]>,
}

global! {
    /// The next thread number: the first registration of each thread takes one.
    static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
}

thread_local! {
    static THREAD_NUMBER: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// Slots per map: twice the cores (threads numbered one after the other land on different
/// slots), a power of two, between 4 and 64; a commit reads them all, so not more. Two under
/// loom, so that its models reach the queue too.
#[cfg(not(loom))]
fn slot_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(4, |cores| cores.get())
            .saturating_mul(2)
            .next_power_of_two()
            .clamp(4, 64)
    })
}
#[cfg(loom)]
fn slot_count() -> usize {
    2
}

impl Slots {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..slot_count())
                .map(|_| Slot {
                    value: AtomicU64::new(FREE),
                    commits: AtomicU64::new(0),
                    conflicts: AtomicU64::new(0),
                    declines: AtomicU32::new(0),
                    lease: AtomicPtr::new(std::ptr::null_mut()),
                })
                .collect(),
        }
    }

    /// Registers a transaction at the latest version in this thread's slot: returns the slot
    /// and the version, confirmed (see the module's documentation), or `None` if the slot is
    /// taken. `published` is the map's latest published version.
    #[inline]
    pub(crate) fn claim(&self, published: &AtomicU64) -> Option<(usize, u64)> {
        // During the thread's teardown its number may be gone: the queue then.
        let index = THREAD_NUMBER.try_with(|number| *number).ok()? & (self.slots.len() - 1);
        let slot = &self.slots[index].value;
        let mut version = published.load(Ordering::Acquire);
        slot.compare_exchange(FREE, reading(version), dekker::STORE, Ordering::Relaxed)
            .ok()?;
        loop {
            dekker::fence();
            // Acquire (at least): the entries' writes of `latest` happen before this thread's
            // reads.
            let latest = published.load(dekker::LOAD);
            if latest == version {
                return Some((index, version));
            }
            version = latest;
            slot.store(reading(version), dekker::STORE);
        }
    }

    /// Marks the registration in `slot` committing: its transaction reads no more values.
    /// Release: its reads happen before a commit that sees this frees what they read (they
    /// were made with the entries' shards locked, which orders them too).
    #[inline]
    pub(crate) fn committing(&self, slot: usize) {
        let slot = &self.slots[slot].value;
        slot.store(slot.load(Ordering::Relaxed) | COMMITTING, Ordering::Release);
    }

    /// The versions the slots' registrations stand on, committing ones included (for
    /// statistics: read without a fence).
    pub(crate) fn registered(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots.iter().filter_map(|slot| {
            let value = slot.value.load(Ordering::Relaxed);
            (value != FREE).then(|| version_of(value))
        })
    }

    /// Whether a slot other than `own` holds a registration (a hint: another thread is likely
    /// to commit soon).
    pub(crate) fn others_busy(&self, own: Option<usize>) -> bool {
        self.slots
            .iter()
            .enumerate()
            .any(|(index, slot)| Some(index) != own && slot.value.load(Ordering::Relaxed) != FREE)
    }

    /// Gives `slot` (claimed by the caller) its lease if it has none: `make` makes one.
    #[inline]
    pub(crate) fn lease(&self, slot: usize, make: impl FnOnce() -> *const ()) {
        let lease = &self.slots[slot].lease;
        // Only the slot's registration sets it, and the last handle's drop (which takes it)
        // happens after every claim: no race.
        if lease.load(Ordering::Relaxed).is_null() {
            lease.store(make().cast_mut(), Ordering::Relaxed);
        }
    }

    /// Ends the registration in `slot`; returns its lease if the map's last handle is gone
    /// (`orphaned`), for the caller to give back once it no longer uses the map (see
    /// `state.rs`'s `Hold`).
    #[inline]
    pub(crate) fn release(&self, slot: usize, orphaned: &AtomicBool) -> Option<*const ()> {
        let slot = &self.slots[slot];
        slot.value.store(FREE, dekker::STORE);
        dekker::fence();
        if !orphaned.load(dekker::LOAD) {
            return None;
        }
        Self::take_lease(slot)
    }

    /// `slot`'s lease if the slot is free (the map's last handle is being dropped, after it
    /// set `orphaned`): a registration still in it gives it back when it ends.
    pub(crate) fn take_lease_if_free(&self, slot: usize) -> Option<*const ()> {
        let slot = &self.slots[slot];
        if slot.value.load(dekker::LOAD) != FREE {
            return None;
        }
        Self::take_lease(slot)
    }

    /// Takes `slot`'s lease (at most one caller gets it).
    fn take_lease(slot: &Slot) -> Option<*const ()> {
        let lease = slot.lease.swap(std::ptr::null_mut(), Ordering::Acquire);
        (!lease.is_null()).then_some(lease.cast_const())
    }

    /// How many slots there are (numbered from 0).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the transaction registered in `slot` should try to commit alone: yes, unless
    /// the slot's last [`DECLINES_BEFORE_PAUSE`] attempts were all declined (each wrote a key
    /// that had no value, which a commit alone cannot: a thread inserting new keys). Then the
    /// next [`PAUSED_ATTEMPTS`] commits go straight to the committer lock, and the one after
    /// tries again. A declined attempt costs a locked lookup of the key (about 200
    /// instructions) on top of the commit under the lock.
    #[inline]
    pub(crate) fn try_alone(&self, slot: usize) -> bool {
        let declines = &self.slots[slot].declines;
        let seen = declines.load(Ordering::Relaxed);
        if seen < DECLINES_BEFORE_PAUSE {
            return true;
        }
        let next = if seen >= DECLINES_BEFORE_PAUSE + PAUSED_ATTEMPTS {
            DECLINES_BEFORE_PAUSE - 1
        } else {
            seen + 1
        };
        declines.store(next, Ordering::Relaxed);
        next < DECLINES_BEFORE_PAUSE
    }

    /// Records how `slot`'s attempt to commit alone went: `declined` (the key had no value).
    #[inline]
    pub(crate) fn tried_alone(&self, slot: usize, declined: bool) {
        let declines = &self.slots[slot].declines;
        let seen = declines.load(Ordering::Relaxed);
        let next = if declined { seen + 1 } else { 0 };
        if next != seen {
            declines.store(next, Ordering::Relaxed);
        }
    }

    /// Marks the registration in `slot` committing (as [`Slots::committing`]) and alone, unless
    /// a commit under the committer lock excludes those (`exclusive`, then only committing):
    /// returns whether it may commit alone. Dekker's pattern against [`Slots::exclude_alone`]:
    /// one of the two sees the other.
    #[inline]
    pub(crate) fn committing_alone(&self, slot: usize, exclusive: &AtomicBool) -> bool {
        let value = &self.slots[slot].value;
        let reading = value.load(Ordering::Relaxed);
        value.store(reading | COMMITTING | ALONE, dekker::STORE);
        dekker::fence();
        if exclusive.load(dekker::LOAD) {
            value.store(reading | COMMITTING, Ordering::Release);
            return false;
        }
        true
    }

    /// Ends `slot`'s commit alone, counting it as made or refused (`committed`); the
    /// registration stays, committing, until it is released.
    #[inline]
    pub(crate) fn finish_alone(&self, slot: usize, committed: bool) {
        let slot = &self.slots[slot];
        let counter = if committed {
            &slot.commits
        } else {
            &slot.conflicts
        };
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        slot.value.store(
            slot.value.load(Ordering::Relaxed) & !ALONE,
            Ordering::Release,
        );
    }

    /// Ends `slot`'s attempt to commit alone without a commit (the commit is made under the
    /// committer lock instead): the registration stays, committing.
    pub(crate) fn decline_alone(&self, slot: usize) {
        let value = &self.slots[slot].value;
        value.store(value.load(Ordering::Relaxed) & !ALONE, Ordering::Release);
    }

    /// Excludes commits alone: sets `exclusive`, then waits until no slot's commit is alone
    /// (they are short and never wait for a lock). The caller holds the committer lock and
    /// clears `exclusive` (Release) when its commit is published.
    pub(crate) fn exclude_alone(&self, exclusive: &AtomicBool) {
        exclusive.store(true, dekker::STORE);
        dekker::fence();
        let mut spin = SpinWait::new();
        for slot in self.slots.iter() {
            // Acquire: the commit's writes and publication happen before what follows.
            while slot.value.load(dekker::LOAD) & ALONE != 0 {
                if !spin.spin() {
                    // Its thread may be descheduled in the middle of it.
                    yield_now();
                }
            }
        }
    }

    /// Commits made, and refused, alone (statistics).
    pub(crate) fn counts(&self) -> (u64, u64) {
        self.slots
            .iter()
            .fold((0, 0), |(commits, conflicts), slot| {
                (
                    commits + slot.commits.load(Ordering::Relaxed),
                    conflicts + slot.conflicts.load(Ordering::Relaxed),
                )
            })
    }

    /// Adds the versions that the slots' transactions still read values at to `readers` (in
    /// slot order, repeats included), and returns the oldest version any of them stands on,
    /// committing ones included; the slot `own` (the caller's transaction's) left out. A commit
    /// calls this after it stored its version as the published one (`dekker::STORE`, then
    /// `dekker::fence`), for the module's invariant.
    pub(crate) fn collect(&self, own: Option<usize>, readers: &mut Vec<u64>) -> Option<u64> {
        let mut oldest = None;
        for (index, slot) in self.slots.iter().enumerate() {
            let value = slot.value.load(dekker::LOAD);
            if value != FREE && Some(index) != own {
                let version = version_of(value);
                if value & COMMITTING == 0 {
                    readers.push(version);
                }
                oldest = Some(oldest.map_or(version, |oldest: u64| oldest.min(version)));
            }
        }
        oldest
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// After four declined attempts in a row a slot pauses for 32 commits, then tries once
    /// more: paused again if that one is declined too, back to trying every commit if not.
    #[test]
    fn declined_attempts_pause_then_retry() {
        let slots = Slots::new();
        for _ in 0..DECLINES_BEFORE_PAUSE {
            assert!(slots.try_alone(0));
            slots.tried_alone(0, true);
        }
        let paused = (0..PAUSED_ATTEMPTS).filter(|_| !slots.try_alone(0)).count();
        assert_eq!(paused, PAUSED_ATTEMPTS as usize);
        assert!(slots.try_alone(0), "one more attempt after the pause");
        slots.tried_alone(0, true);
        assert!(!slots.try_alone(0), "declined again: paused again");
        for _ in 1..PAUSED_ATTEMPTS {
            assert!(!slots.try_alone(0));
        }
        assert!(slots.try_alone(0));
        slots.tried_alone(0, false);
        assert!(
            (0..100).all(|_| slots.try_alone(0)),
            "a commit alone ends the pause"
        );
        assert!(slots.try_alone(1), "other slots are not paused");
    }
}
