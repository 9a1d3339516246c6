//! What a lock is (identity, name, level, kind) and what it has counted (its statistics).
//!
//! Every sync-kit lock owns an `Arc<LockMeta>`; named locks share theirs with the registry kept
//! here (read by [`crate::stats::all`]), so statistics stay readable while the lock lives and the
//! entry disappears when it is dropped. The counters themselves are `counters.rs`; this module
//! depends on it and on nothing above the lock layer.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::{Mutex as StdMutex, PoisonError};

use serde::Serialize;

use super::counters::Counters;
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

/// A lock's identity and counters.
#[derive(Debug)]
pub(crate) struct LockMeta {
    pub(crate) info: LockInfo,
    pub(crate) counters: Counters,
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
            counters: Counters::new(),
        });
        if name.is_some() {
            REGISTRY.lock().insert(meta.info.id, Arc::clone(&meta));
        }
        MetaHandle(meta)
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
            REGISTRY.lock().remove(&self.0.info.id);
        }
    }
}
