//! An MVCC snapshot map: O(1) snapshots, multi-key transactions with first-committer-wins
//! conflict detection.
//!
//! - [`MvccMap::snapshot`] returns a [`Snapshot`]: a consistent, immutable view of the whole map
//!   at one version. It costs the same whatever the map's size (a reference count), and neither
//!   blocks writers nor is blocked by them.
//! - [`MvccMap::begin`] starts a [`Transaction`]: reads see its start snapshot plus its own
//!   writes; [`Transaction::commit`] applies all its writes at once under one new version, or
//!   fails with [`Conflict`] (changing nothing) if any key it read or wrote was committed by
//!   another transaction after its snapshot. Committed transactions are therefore serializable in
//!   commit-version order for every key they read (snapshot isolation plus read validation).
//!
//! # How it works, and its invariants
//!
//! Each key has one *entry* (`entry.rs`): the key and the writes of it that someone may still
//! read, newest first, the oldest stored inline. A sharded hash index (keys are therefore `Hash`
//! too) finds a key's entry; every version's ordered map (a persistent `imbl::OrdMap`, sharing
//! all it did not change with older versions) holds the live keys, each with its entry. So a
//! commit that overwrites values changes the entries alone (the value inline in the entry when
//! no snapshot may read the one it replaces) and publishes a new version number on the same
//! ordered map; only a
//! commit that gives a key a value or removes one changes the ordered map. A snapshot is a
//! version number and an `Arc` of that ordered map, so it costs the same whatever the map's size.
//!
//! Point reads ([`MvccMap::get`], [`Snapshot::get`], a transaction's reads) and commit validation
//! cost one hash lookup and touch one entry, with its index shard locked. An ordered read walks
//! its version's ordered map and reads each entry at its version (without a lock when the
//! entry's inline write is its newest, the usual case; else with the entry's shard locked),
//! lending references to the values: a write stays in its entry, unchanged, while a live
//! snapshot or transaction reads it. Commits trim the others: a commit unlinks from each entry
//! it wrote every write no live snapshot or transaction reads, and with none older than its own
//! version, leaves its newest write alone, inline; entries that kept older writes for a live
//! reader are trimmed again, a few per commit, once no live reader is older (and with no
//! snapshot live, their newest write goes inline then).
//!
//! A removal leaves a tombstone (a removal write) in the index so that a later commit still sees
//! that the key was written. Tombstones are queued in commit order and dropped, a few per commit,
//! once no live snapshot or transaction is older than them: from then on an absent key and a
//! tombstone validate the same way.
//!
//! Commits are serialized among themselves. A transaction registers the version it reads in a
//! slot of its thread's, without a lock, and a commit reads the slots after it publishes (a
//! store-then-load order on each side sees to it that one of the two sees the other), so beginning a
//! transaction and committing one that overwrites values share no lock. Snapshot creation, the
//! bookkeeping of snapshot versions and the publication of a commit that changes the keys share
//! one short internal critical section (copy an `Arc`, store a number, update a counter);
//! validation and the entries' writes happen outside it, the build of ordered maps and the
//! freeing of old versions outside every lock, so no reader ever waits for a commit's work (a
//! reader of a key that a one-key commit is writing waits, on that key's index shard, for the
//! publication and the entry's write, not for validation or a build). A commit whose
//! transaction began at the latest version (nothing committed since) has nothing to validate,
//! and a transaction that is committing holds back no value (it reads no more).
//!
//! States and invariants, in short (details on `state::Version`, in `entry.rs` and in
//! `index.rs`):
//!
//! - an entry keeps a write while a live snapshot or transaction reads it, and its newest write;
//!   at most one write in the index is unpublished, the newest of its entry, that of the commit
//!   holding the committer lock, and the write before it stays until that one is published;
//! - a version's ordered map is *unbuilt* (its base, the last built version before it, plus the
//!   keys that gained or lost a value since), *being built* (once; other callers wait) or
//!   *built*; a map is changed in place only by the build holding the last reference to the
//!   version that owned it;
//! - a tombstone stays in the index while a live snapshot or transaction is older than it.
//!
//! ```
//! use sync_kit::mvcc::MvccMap;
//!
//! let map = MvccMap::new();
//! let mut tx = map.begin();
//! tx.insert("alice", 100);
//! tx.insert("bob", 50);
//! tx.commit().unwrap();
//!
//! let before = map.snapshot();
//! let mut transfer = map.begin();
//! let (a, b) = (transfer.get(&"alice").unwrap(), transfer.get(&"bob").unwrap());
//! transfer.insert("alice", a - 30);
//! transfer.insert("bob", b + 30);
//! transfer.commit().unwrap();
//!
//! assert_eq!(before.get(&"alice"), Some(100)); // the old snapshot is unchanged
//! assert_eq!(map.get(&"alice"), Some(70));
//! assert_eq!(map.snapshot().iter().map(|(_, v)| *v).sum::<i32>(), 150);
//! ```

mod entry;
mod index;
mod registry;
mod snapshot;
mod state;
mod transaction;

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use serde::Serialize;

pub use snapshot::{Iter, Snapshot};
pub use transaction::{Conflict, Transaction};

use state::Shared;

/// A concurrent ordered map with O(1) snapshots and atomic multi-key transactions.
///
/// Cloning the handle is cheap and shares the map.
pub struct MvccMap<K, V> {
    shared: Arc<Shared<K, V>>,
}

impl<K, V> Clone for MvccMap<K, V> {
    fn clone(&self) -> Self {
        self.shared.add_handle();
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, V> Drop for MvccMap<K, V> {
    fn drop(&mut self) {
        self.shared.drop_handle();
    }
}

impl<K: Ord + Hash + Clone, V: Clone> Default for MvccMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Ord + Hash + Clone, V: Clone> MvccMap<K, V> {
    /// An empty map at version 0.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared::new()),
        }
    }

    /// A consistent view of the whole map as of now. O(1); never blocks writers.
    pub fn snapshot(&self) -> Snapshot<K, V> {
        Snapshot::register(&self.shared)
    }

    /// Starts a transaction at the current version.
    pub fn begin(&self) -> Transaction<K, V> {
        Transaction::new(state::Registration::begin(&self.shared))
    }

    /// The latest committed value of `key`, which may be any borrowed form of the key type
    /// (`&str` for `String` keys), as with [`HashMap::get`](std::collections::HashMap::get).
    ///
    /// ```
    /// use sync_kit::mvcc::MvccMap;
    ///
    /// let accounts: MvccMap<String, u32> = MvccMap::new();
    /// let mut tx = accounts.begin();
    /// tx.insert("ann".to_string(), 7);
    /// tx.commit().unwrap();
    /// let name: &str = "ann";
    /// assert_eq!(accounts.get(name), Some(7)); // no String built to look it up
    /// assert!(accounts.contains_key(name) && !accounts.contains_key("ben"));
    /// assert_eq!(accounts.snapshot().get(name), Some(7));
    /// ```
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shared.get_latest(key)
    }

    /// Whether `key` (any borrowed form of the key type) has a committed value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shared.contains_latest(key)
    }

    /// Number of keys in the latest version.
    pub fn len(&self) -> usize {
        self.shared.latest().len
    }

    /// Whether the latest version is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The latest committed version number.
    pub fn version(&self) -> u64 {
        self.shared.latest_number()
    }

    /// Counters and gauges of this map.
    pub fn stats(&self) -> MvccStats {
        self.shared.stats()
    }
}

impl<K, V> fmt::Debug for MvccMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MvccMap").finish_non_exhaustive()
    }
}

/// What an [`MvccMap`] has done and holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MvccStats {
    /// The latest committed version.
    pub version: u64,
    /// Keys in the latest version.
    pub keys: usize,
    /// Transactions committed (read-only ones included).
    pub commits: u64,
    /// Transactions refused with [`Conflict`].
    pub conflicts: u64,
    /// Distinct versions still reachable: the latest, plus those held by live snapshots and
    /// transactions.
    pub live_versions: usize,
    /// Live snapshots and transactions.
    pub live_snapshots: usize,
    /// Tombstones of removed keys not yet dropped (kept while an older snapshot lives).
    pub tombstones: usize,
}
