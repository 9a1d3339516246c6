//! Several locks acquired together in hierarchy order: [`LockSet`] and its helper types.
//!
//! Build a [`LockSet`] with typed slots ([`Slot`] for exclusive access, [`ReadSlot`] for shared
//! access; both are [`Readable`]), acquire it into a [`LockedSet`], and reach the data through the
//! slots, directly or inside [`LockedSet::run`], whose [`Ops`] can register rollbacks. The
//! acquisition order, the level rule for members and the rollbacks are described on
//! [`LockSet`] and in `docs/design.md`.
//!
//! ```
//! use sync_kit::lockset::{LockSet, Slot};
//! use sync_kit::{Level, Mutex};
//!
//! let from = Mutex::with_level("lockset-doc-from", Level(10), 5u32);
//! let to = Mutex::with_level("lockset-doc-to", Level(10), 0u32);
//! let mut set = LockSet::new();
//! let (a, b): (Slot<u32>, Slot<u32>) = (set.lock(&from), set.lock(&to));
//! let mut held = set.acquire()?;
//! *held.get_mut(a) -= 5;
//! *held.get_mut(b) += 5;
//! assert_eq!((*held.get(a), *held.get(b)), (0, 5));
//! # Ok::<(), sync_kit::LockError>(())
//! ```

pub use crate::lock::set::{LockSet, LockedSet, Ops, ReadSlot, Readable, Slot};
