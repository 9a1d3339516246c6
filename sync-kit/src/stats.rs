//! Lock statistics: per lock, and for every live named lock.
//!
//! Every sync-kit lock counts its acquisitions on the fast path (a plain load and store for
//! exclusive locks, one relaxed `fetch_add` for read locks) and, only when it had to wait, the
//! contention and the time waited. Named locks (built with `named` or `with_level`) are listed by
//! [`all`] from construction until they are dropped.
//!
//! ```
//! use sync_kit::{Level, Mutex};
//!
//! let accounts = Mutex::with_level("stats-doc-accounts", Level(10), 0u32);
//! *accounts.lock()? += 1;
//! assert_eq!(accounts.stats().acquisitions, 1);
//! let listed = sync_kit::stats::all();
//! assert!(listed.iter().any(|s| s.name == "stats-doc-accounts" && s.stats.acquisitions == 1));
//! # Ok::<(), sync_kit::LockError>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::lock::condvar::CondvarMeta;
pub use crate::lock::condvar::CondvarStats;
use crate::lock::meta::{LockId, LockMeta};
use crate::loom::{InternalMutex, global};
use crate::{Level, LockKind};

/// Counters of one lock, as read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LockStats {
    /// Successful acquisitions (read and write for an `RwLock`).
    pub acquisitions: u64,
    /// Acquisitions that found the lock unavailable and had to wait (spin or sleep).
    pub contentions: u64,
    /// Time spent waiting, summed over all contended acquisitions (serialized as
    /// `total_wait_ns`, integer nanoseconds).
    #[serde(rename = "total_wait_ns", serialize_with = "as_nanos")]
    pub total_wait: Duration,
    /// The longest single wait (serialized as `max_wait_ns`).
    #[serde(rename = "max_wait_ns", serialize_with = "as_nanos")]
    pub max_wait: Duration,
}

fn as_nanos<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
}

/// One live named lock and its statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamedLockStats {
    /// The name given at construction.
    pub name: &'static str,
    /// The lock's level, if it is leveled.
    pub level: Option<Level>,
    /// Mutex or RwLock.
    pub kind: LockKind,
    /// Its counters.
    pub stats: LockStats,
}

/// One live named condvar and its statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamedCondvarStats {
    /// The name given at construction.
    pub name: String,
    /// Its counters.
    pub stats: CondvarStats,
}

global! {
    static CONDVARS: InternalMutex<BTreeMap<u64, Arc<CondvarMeta>>> = InternalMutex::new(BTreeMap::new());
}

pub(crate) fn condvar_registry_insert(meta: &Arc<CondvarMeta>) {
    CONDVARS.lock().insert(meta.id, Arc::clone(meta));
}

pub(crate) fn condvar_registry_remove(id: u64) {
    CONDVARS.lock().remove(&id);
}

/// Statistics of every live named [`Condvar`](crate::Condvar), ordered by name, then age.
pub fn condvars() -> Vec<NamedCondvarStats> {
    let metas: Vec<Arc<CondvarMeta>> = CONDVARS.lock().values().cloned().collect();
    let mut all: Vec<NamedCondvarStats> = metas
        .iter()
        .map(|meta| NamedCondvarStats {
            name: meta.name.as_deref().unwrap_or_default().to_owned(),
            stats: meta.stats(),
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

global! {
    static REGISTRY: InternalMutex<BTreeMap<LockId, Arc<LockMeta>>> = InternalMutex::new(BTreeMap::new());
}

pub(crate) fn registry_insert(meta: &Arc<LockMeta>) {
    REGISTRY.lock().insert(meta.info.id, Arc::clone(meta));
}

pub(crate) fn registry_remove(id: LockId) {
    REGISTRY.lock().remove(&id);
}

/// Statistics of every live named lock, ordered by level (unleveled last), then name, then age.
pub fn all() -> Vec<NamedLockStats> {
    let metas: Vec<Arc<LockMeta>> = REGISTRY.lock().values().cloned().collect();
    let mut all: Vec<NamedLockStats> = metas
        .iter()
        .map(|meta| NamedLockStats {
            name: meta.info.name.unwrap_or_default(),
            level: meta.info.level,
            kind: meta.info.kind,
            stats: meta.stats(),
        })
        .collect();
    all.sort_by_key(|s| (s.level.is_none(), s.level, s.name));
    all
}

/// Zeroes the statistics of every live named lock and condvar (unnamed ones are not reachable
/// from here: read their `stats()` before and subtract). An acquisition that races with the reset
/// may be counted before or after it.
pub fn reset() {
    let metas: Vec<Arc<LockMeta>> = REGISTRY.lock().values().cloned().collect();
    for meta in metas {
        meta.reset();
    }
    let condvars: Vec<Arc<CondvarMeta>> = CONDVARS.lock().values().cloned().collect();
    for meta in condvars {
        meta.reset();
    }
}
