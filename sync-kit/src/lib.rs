//! # sync-kit
//!
//! Locks that tell you when you are about to deadlock, and say why.
//!
//! - [`Mutex`] and [`RwLock`] (writer-preferring), optionally named and placed at a [`Level`] of
//!   a lock hierarchy: acquiring out of order fails at once with [`LockError::LevelViolation`].
//! - A runtime wait-for-graph deadlock detector ([`deadlock`]): an acquisition that would close a
//!   cycle of waiting threads fails with [`LockError::Deadlock`] and a readable
//!   [`DeadlockReport`] instead of hanging. It costs nothing while no thread waits.
//! - Statistics for every lock ([`LockStats`]), and a live list of every named lock
//!   ([`stats::all`]).
//!
//! ```
//! use std::sync::Arc;
//! use sync_kit::{LockError, Mutex};
//!
//! let a = Arc::new(Mutex::named("a", ()));
//! let b = Arc::new(Mutex::named("b", ()));
//! let (tx, rx) = std::sync::mpsc::channel();
//! let (a2, b2) = (a.clone(), b.clone());
//! let _a = a.lock()?; // this thread holds `a` ...
//! let other = std::thread::spawn(move || {
//!     let _b = b2.lock().unwrap(); // ... the other holds `b` ...
//!     tx.send(()).unwrap();
//!     a2.lock().map(drop) // ... and waits for `a`, or is refused if it would close the cycle
//! });
//! rx.recv().unwrap();
//! // Classic ABBA: exactly one of the two acquisitions is refused; the other then proceeds.
//! let mine = b.lock().map(drop);
//! drop(_a);
//! let theirs = other.join().unwrap();
//! assert!(matches!((&mine, &theirs), (Err(LockError::Deadlock(_)), Ok(())) | (Ok(()), Err(LockError::Deadlock(_)))));
//! # Ok::<(), LockError>(())
//! ```
//!
//! Map of the crate: `lock/` holds the raw state machines (`raw_mutex`, `raw_rwlock`) apart from
//! the typed wrappers (`mutex`, `rwlock`) and the acquisition protocol they share; `held` is the
//! per-thread list of held locks; `deadlock/` is the wait-for graph and its reports; `stats` the
//! counters and the registry of named locks; `loom/` the single std/loom facade.

#![warn(missing_docs)]

mod error;
mod held;
mod lock;
pub(crate) mod loom;

pub mod deadlock;
pub mod fs;
pub mod mvcc;
pub mod ratelimit;
pub mod stats;

pub use deadlock::DeadlockReport;
pub use error::LockError;
pub use held::held_by_current_thread;
pub use lock::meta::{AccessMode, Level, LockId, LockInfo, LockKind, LockUse};
pub use lock::mutex::{Mutex, MutexGuard};
pub use lock::rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use lock::set::{LockSet, LockedSet, Ops, ReadSlot, Readable, Slot};
pub use stats::LockStats;

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
