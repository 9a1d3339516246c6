//! [`Transaction`]: reads from a snapshot, buffered writes, validated commit.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hash;

use super::state::{Registration, Shared};

/// A multi-key transaction on an [`MvccMap`](super::MvccMap).
///
/// Reads see the snapshot the transaction began at plus its own writes; writes are buffered and
/// applied together by [`commit`](Transaction::commit). Dropping a transaction without committing
/// discards it.
pub struct Transaction<K: Ord + Hash + Clone, V: Clone> {
    /// Its snapshot: a registration of the version it began at (point reads need no ordered
    /// map, so it holds none).
    registration: Registration<K, V>,
    reads: KeyMap<K, ()>,
    writes: KeyMap<K, Option<V>>,
}

/// A map from keys, its first entry kept inline: most transactions read and write one or two
/// keys, and they then allocate nothing for their read and write sets. The other entries are in
/// a `BTreeMap` (which allocates from its first entry on).
pub(crate) struct KeyMap<K, T> {
    first: Option<(K, T)>,
    /// Entries whose keys differ from `first`'s.
    rest: BTreeMap<K, T>,
}

impl<K: Ord, T> KeyMap<K, T> {
    fn new() -> Self {
        Self {
            first: None,
            rest: BTreeMap::new(),
        }
    }

    fn get(&self, key: &K) -> Option<&T> {
        match &self.first {
            Some((first, value)) if first == key => Some(value),
            _ => self.rest.get(key),
        }
    }

    fn insert(&mut self, key: K, value: T) {
        match &mut self.first {
            None => self.first = Some((key, value)),
            Some((first, slot)) if *first == key => *slot = value,
            Some(_) => {
                self.rest.insert(key, value);
            }
        }
    }

    /// How many keys there are.
    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// The keys, in no particular order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.first
            .iter()
            .map(|(key, _)| key)
            .chain(self.rest.keys())
    }

    /// The entries sorted by key (one entry without an allocation).
    pub(crate) fn into_sorted(self) -> Sorted<(K, T)> {
        let Some(first) = self.first else {
            return Sorted::Many(Vec::new());
        };
        if self.rest.is_empty() {
            return Sorted::One(first);
        }
        let mut sorted = Vec::with_capacity(1 + self.rest.len());
        let mut first = Some(first);
        for (key, value) in self.rest {
            if first.as_ref().is_some_and(|(first, _)| *first < key) {
                sorted.extend(first.take());
            }
            sorted.push((key, value));
        }
        sorted.extend(first);
        Sorted::Many(sorted)
    }
}

/// A list of entries sorted by key, one entry kept inline (a one-key commit's writes).
pub(crate) enum Sorted<E> {
    One(E),
    Many(Vec<E>),
}

impl<E> Sorted<E> {
    pub(crate) fn as_slice(&self) -> &[E] {
        match self {
            Sorted::One(entry) => std::slice::from_ref(entry),
            Sorted::Many(entries) => entries,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    pub(crate) fn into_iter(self) -> impl Iterator<Item = E> {
        let (one, many) = match self {
            Sorted::One(entry) => (Some(entry), Vec::new()),
            Sorted::Many(entries) => (None, entries),
        };
        one.into_iter().chain(many)
    }
}

impl<K: Ord + Hash + Clone, V: Clone> Transaction<K, V> {
    pub(crate) fn new(registration: Registration<K, V>) -> Self {
        Self {
            registration,
            reads: KeyMap::new(),
            writes: KeyMap::new(),
        }
    }

    /// The value of `key` as this transaction sees it. The key joins the read set: the commit
    /// fails if another transaction commits it first.
    pub fn get(&mut self, key: &K) -> Option<V> {
        if let Some(written) = self.writes.get(key) {
            return written.clone();
        }
        if self.reads.get(key).is_none() {
            self.reads.insert(key.clone(), ());
        }
        self.registration
            .shared
            .get_at(key, self.registration.version)
    }

    /// Sets `key` to `value` when the transaction commits.
    pub fn insert(&mut self, key: K, value: V) {
        self.writes.insert(key, Some(value));
    }

    /// Removes `key` when the transaction commits.
    pub fn remove(&mut self, key: &K) {
        self.writes.insert(key.clone(), None);
    }

    /// The version this transaction reads from.
    pub fn snapshot_version(&self) -> u64 {
        self.registration.version
    }

    /// Applies every write atomically at a new version and returns it (a transaction that wrote
    /// nothing returns the latest version). Fails with [`Conflict`], changing nothing, if any key
    /// read or written here was committed by another transaction after this one began.
    pub fn commit(self) -> Result<u64, Conflict<K>> {
        let Transaction {
            mut registration,
            reads,
            writes,
        } = self;
        Shared::commit(&mut registration, &reads, writes.into_sorted())
    }
}

impl<K: Ord + Hash + Clone + fmt::Debug, V: Clone> fmt::Debug for Transaction<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("snapshot_version", &self.registration.version)
            .field("reads", &self.reads.keys().collect::<Vec<_>>())
            .field("writes", &self.writes.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A commit refused because another transaction committed `key` after this one's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict<K> {
    /// A key this transaction read or wrote that changed under it.
    pub key: K,
    /// The version this transaction read from.
    pub snapshot_version: u64,
    /// The version that wrote `key` after it.
    pub committed_version: u64,
}

impl<K: fmt::Debug> fmt::Display for Conflict<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "commit conflict on key {:?}: written at version {} after this transaction's snapshot \
             (version {})",
            self.key, self.committed_version, self.snapshot_version
        )
    }
}

impl<K: fmt::Debug> std::error::Error for Conflict<K> {}
