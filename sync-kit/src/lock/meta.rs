//! What a lock is (identity, name, level, kind) and what it has counted (its statistics).
//!
//! Every sync-kit lock owns an `Arc<LockMeta>`; named locks share theirs with the registry
//! behind [`crate::stats::all`], so statistics stay readable while the lock lives and the entry
//! disappears when it is dropped.

use std::fmt;
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::time::Duration;

use serde::Serialize;

use crate::loom::atomic::{AtomicU64, Ordering};
use crate::stats::{self, LockStats};

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
    /// The name given at construction (`named`, `with_level`), if any.
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

/// A new process-unique id, shared by locks and condvars.
pub(crate) fn next_id() -> u64 {
    // Only uniqueness matters; no other memory is ordered by this counter.
    NEXT_LOCK_ID.fetch_add(1, StdOrdering::Relaxed)
}

/// A lock's identity and counters.
#[derive(Debug)]
pub(crate) struct LockMeta {
    pub(crate) info: LockInfo,
    acquisitions: AtomicU64,
    contentions: AtomicU64,
    wait_nanos: AtomicU64,
    max_wait_nanos: AtomicU64,
}

impl LockMeta {
    /// Creates the metadata of a new lock; named locks are entered in the stats registry.
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
            acquisitions: AtomicU64::new(0),
            contentions: AtomicU64::new(0),
            wait_nanos: AtomicU64::new(0),
            max_wait_nanos: AtomicU64::new(0),
        });
        if name.is_some() {
            stats::registry_insert(&meta);
        }
        MetaHandle(meta)
    }

    /// Counts an exclusive acquisition. Only the holder of an exclusive lock writes the counter
    /// at that moment, so a load and a store suffice: no read-modify-write on the fast path.
    #[inline]
    pub(crate) fn count_exclusive(&self) {
        let n = self.acquisitions.load(Ordering::Relaxed);
        self.acquisitions
            .store(n.wrapping_add(1), Ordering::Relaxed);
    }

    /// Counts a shared acquisition (other readers may count concurrently).
    #[inline]
    pub(crate) fn count_shared(&self) {
        self.acquisitions.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that an acquisition had to wait for `waited`.
    pub(crate) fn count_wait(&self, waited: Duration) {
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.contentions.fetch_add(1, Ordering::Relaxed);
        self.wait_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.max_wait_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Zeroes the counters. An acquisition racing with the reset may be counted on either side.
    pub(crate) fn reset(&self) {
        self.acquisitions.store(0, Ordering::Relaxed);
        self.contentions.store(0, Ordering::Relaxed);
        self.wait_nanos.store(0, Ordering::Relaxed);
        self.max_wait_nanos.store(0, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> LockStats {
        LockStats {
            acquisitions: self.acquisitions.load(Ordering::Relaxed),
            contentions: self.contentions.load(Ordering::Relaxed),
            total_wait: Duration::from_nanos(self.wait_nanos.load(Ordering::Relaxed)),
            max_wait: Duration::from_nanos(self.max_wait_nanos.load(Ordering::Relaxed)),
        }
    }
}

/// Owns a lock's metadata; leaving the registry when the lock is dropped.
#[derive(Debug)]
pub(crate) struct MetaHandle(Arc<LockMeta>);

impl std::ops::Deref for MetaHandle {
    type Target = LockMeta;
    #[inline]
    fn deref(&self) -> &LockMeta {
        &self.0
    }
}

impl Drop for MetaHandle {
    fn drop(&mut self) {
        crate::deadlock::forget_order(self.0.info.id);
        if self.0.info.name.is_some() {
            stats::registry_remove(self.0.info.id);
        }
    }
}
