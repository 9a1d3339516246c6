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
//! Every version is a persistent ordered map (`imbl::OrdMap`) that shares all it did not change
//! with older versions, so a snapshot is an `Arc` of one version. Memory stays bounded without any
//! walk of the map: a version's nodes are freed when the last snapshot holding them is dropped.
//!
//! Beside the versions, a sharded hash index of the latest version (keys are therefore `Hash`
//! too) holds each key's last write, stamped with its version, tombstones included. It answers
//! [`MvccMap::get`] without any map-wide lock (linearizable: a commit's writes appear all at
//! once), point reads of recent snapshots and of transactions, and commit validation, each in one
//! hash lookup. A version's ordered map is built from the last built version plus the writes
//! since, after the version is published and outside the locks: by its own commit, in place
//! (taking the previous map, no node copied) when no snapshot or transaction still stands on the
//! version it is built from, else by path copy once every few versions (or by the first ordered
//! read that needs it), so a commit does not path-copy the whole B-tree each time.
//!
//! A removal leaves a tombstone in the index so that a later commit still sees that the key was
//! written. Tombstones are queued in commit order and dropped, a few per commit, once no live
//! snapshot or transaction is older than them: from then on an absent key and a tombstone
//! validate the same way.
//!
//! Commits are serialized among themselves. Snapshot creation, the bookkeeping of live snapshot
//! versions and a commit's publication share one short internal critical section (copy or swap
//! an `Arc`, update a counter), which a commit enters once; validation and the index writes
//! happen outside it, the build of ordered maps and the freeing of old versions outside every
//! lock, so no reader ever waits for a commit's work (a reader of a key that a one-key commit is
//! writing waits, on that key's index shard, for the slot's write, the new version's allocation
//! and the publication, not for validation or the build). A commit whose transaction began at the latest version
//! (nothing committed since) has nothing to validate.
//!
//! States and invariants, in short (details on `state::Version` and in `index.rs`):
//!
//! - a version is *unbuilt* (its base, the last built version before it, plus the writes since),
//!   *being built* (once; other callers wait) or *built* (its `OrdMap`); a map is changed in place
//!   only by the build holding the last reference to the version that owned it;
//! - at most one version stamped in the index is unpublished, that of the commit holding the
//!   committer lock; each slot it wrote keeps the write before it until it is published, except
//!   a one-key commit's slot, written and published under its shard's lock;
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

mod index;
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
        Self {
            shared: Arc::clone(&self.shared),
        }
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
        Transaction::new(self.snapshot())
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
        self.shared.latest().number
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
