//! # sync-kit
//!
//! Locks that tell you when you are about to deadlock, and say why.
//!
//! - [`Mutex`] and [`RwLock`] (writer-preferring), optionally named and placed at a [`Level`] of
//!   a lock hierarchy: acquiring out of order fails at once with [`LockError::LevelViolation`].
//! - A runtime wait-for-graph deadlock detector ([`deadlock`]): an acquisition that would close a
//!   cycle of waiting threads fails with [`LockError::Deadlock`] and a readable
//!   [`DeadlockReport`] instead of hanging. It costs nothing while no thread waits.
//! - Lock-order checking ([`deadlock::set_order_checking`]): an acquisition that contradicts the
//!   order learned from earlier ones fails at once with [`LockError::OrderInversion`], even if no
//!   thread waits (`Refuse` by default in debug builds).
//! - [`Condvar`] for [`Mutex`] guards, whose reacquisition goes through the same checks.
//! - With the cargo feature `tokio`: `sync_kit::tokio::{Mutex, RwLock}`, locks for tokio tasks
//!   with the same checks, tasks being the waiters and holders.
//! - Statistics for every lock ([`LockStats`]), and a live list of every named lock
//!   ([`stats::all`]).
//! - With the cargo feature `observe`: `sync_kit::observe`, a live dashboard of every named lock,
//!   the detector's counters and the last refusals drawn as graphs (an HTML page, its JSON, the
//!   same figures as Prometheus text, and a small server); the last refusals themselves are kept
//!   without it ([`deadlock::recent`]).
//! - [`work::RangeCoordinator`]: hands out disjoint chunks of a `u64` range (a proof-of-work
//!   nonce space) to worker threads, stops them all at the first success, and refuses anything
//!   from a job superseded by a re-arm.
//!
//! ```
//! use std::sync::Arc;
//! use sync_kit::{LockError, Mutex};
//!
//! // This example takes two unleveled locks in opposite orders on purpose, to show the wait-for
//! // detector; learned-order checking (below, on by default in debug builds) would refuse the
//! // second order before any thread waits.
//! sync_kit::deadlock::set_order_checking(sync_kit::deadlock::OrderChecking::Off);
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
//! Map of the crate: `lock/` holds the raw state machines (`raw_mutex`, `raw_rwlock`,
//! `raw_condvar`) apart from the typed wrappers (`mutex`, `rwlock`, `condvar`) and the acquisition
//! protocol they share; `held` is the per-thread list of held locks; `deadlock/` is the wait-for
//! graph, the learned lock order, their reports and the last refusals (`recent`); `stats` the
//! counters and the registry of named locks and condvars; `lockset` the public face of `LockSet` and its helper types; `work/`
//! the range coordinator (`word` its atomic words' layouts, `coordinator` the hand-out and a
//! job's end, `search` the worker loop); `loom/` the single std/loom facade; `tokio/` the async
//! locks; `observe/` the dashboard (`page.html`, the JSON `snapshot`, `prometheus` text, `serve`).
//! `mvcc`, `ratelimit` and `fs` are cargo features (on by default), `tokio` and `observe` too (off
//! by default).

#![warn(missing_docs)]

mod error;
mod held;
mod lock;
pub(crate) mod loom;

pub mod deadlock;
#[cfg(feature = "fs")]
pub mod fs;
pub mod lockset;
#[cfg(feature = "mvcc")]
pub mod mvcc;
#[cfg(feature = "observe")]
pub mod observe;
#[cfg(feature = "ratelimit")]
pub mod ratelimit;
pub mod stats;
#[cfg(any(feature = "tokio", loom))]
pub mod tokio;
pub mod work;

pub use deadlock::DeadlockReport;
pub use error::LockError;
pub use held::held_by_current_thread;
pub use lock::condvar::{Condvar, CondvarStats, WaitTimeoutResult};
pub use lock::meta::{AccessMode, Level, LockId, LockInfo, LockKind, LockUse};
pub use lock::mutex::{Mutex, MutexGuard};
pub use lock::rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use lockset::{LockSet, LockedSet};
pub use stats::LockStats;

#[cfg(all(doctest, feature = "mvcc", feature = "ratelimit", feature = "fs"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
