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
//! | `FREE` | no registration | a claim by a thread given this slot: compare-and-swap to `v + 1` |
//! | `v + 1` | a transaction reads version `v`, or is still confirming that `v` is the latest | its claimer stores a later version while confirming; its release stores `FREE` |
//!
//! A registration must be seen by every commit that could drop what it reads, without the two
//! sharing a lock. Both sides write, fence, then read (Dekker's pattern, with `SeqCst` fences,
//! which loom models, rather than `SeqCst` accesses, which it does not):
//!
//! - a claim stores `v + 1` in its slot, fences, and loads the published version; if that is
//!   still `v`, the registration is confirmed at `v`, else it stores the newer version and checks
//!   again;
//! - a commit stores its version `n` as the published one, fences, and then reads the slots.
//!
//! One of the two fences comes first in their single total order. If the claim's, the commit
//! reads the slot (or a later store to it); if the commit's, the claim loads `n` or a later
//! version and does not confirm `v`. Invariant: **a registration confirmed at `v` is among the
//! live versions of every commit that publishes a version after `v`, until it is released.** A
//! commit that publishes `n <= v` needs no such word: it keeps the newest write at or below `n`
//! of each entry it trims, and never touches a newer one (`entry.rs`). Loom model
//! `transactions_keep_what_they_read`.

use crate::loom::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use crate::loom::{global, thread_local};

/// A slot's value with no registration in it (a registration at `v` stores `v + 1`).
const FREE: u64 = 0;

#[repr(align(64))]
struct Slot(AtomicU64);

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
                .map(|_| Slot(AtomicU64::new(FREE)))
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
        let slot = &self.slots[index].0;
        let mut version = published.load(Ordering::Acquire);
        slot.compare_exchange(FREE, version + 1, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        loop {
            fence(Ordering::SeqCst);
            // Acquire: the entries' writes of `latest` happen before this thread's reads.
            let latest = published.load(Ordering::Acquire);
            if latest == version {
                return Some((index, version));
            }
            version = latest;
            slot.store(version + 1, Ordering::Relaxed);
        }
    }

    /// Ends the registration in `slot`.
    #[inline]
    pub(crate) fn release(&self, slot: usize) {
        self.slots[slot].0.store(FREE, Ordering::Release);
    }

    /// Adds the versions registered in the slots to `live` (in slot order, repeats included).
    /// A commit calls this after it stored its version as the published one and fenced
    /// (`SeqCst`), for the module's invariant.
    pub(crate) fn collect(&self, live: &mut Vec<u64>) {
        for slot in &self.slots {
            let value = slot.0.load(Ordering::Relaxed);
            if value != FREE {
                live.push(value - 1);
            }
        }
    }
}
