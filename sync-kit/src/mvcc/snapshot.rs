//! [`Snapshot`]: one immutable version of an [`MvccMap`](super::MvccMap).

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::ops::RangeBounds;
use std::sync::Arc;

use super::entry::Entry;
use super::state::{Registration, Shared, Version};

/// A consistent view of an [`MvccMap`](super::MvccMap) at one version.
///
/// It never changes, whatever is committed after it, and keeps its version alive until dropped.
/// Cloning registers another snapshot of the same version.
pub struct Snapshot<K: Ord + Hash + Clone, V: Clone> {
    version: Arc<Version<K, V>>,
    registration: Registration<K, V>,
}

impl<K: Ord + Hash + Clone, V: Clone> Snapshot<K, V> {
    pub(crate) fn register(shared: &Arc<Shared<K, V>>) -> Self {
        let (registration, version) = Registration::latest(shared);
        Self {
            version,
            registration,
        }
    }

    /// The value of `key` at this version: one hash lookup, and the key's entry read at this
    /// version (its newest write, for a recent snapshot).
    ///
    /// `key` may be any borrowed form of the key type (`&str` for `String` keys), as with
    /// [`HashMap::get`](std::collections::HashMap::get).
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + Ord + ?Sized,
    {
        self.registration
            .shared
            .get_at(key, self.registration.version)
    }

    /// Whether `key` (any borrowed form of the key type) has a value at this version.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + Ord + ?Sized,
    {
        self.registration
            .shared
            .contains_at(key, self.registration.version)
    }

    /// The version number this snapshot sees.
    pub fn version(&self) -> u64 {
        self.registration.version
    }

    /// Number of keys at this version.
    pub fn len(&self) -> usize {
        self.version.len
    }

    /// Whether the map was empty at this version.
    pub fn is_empty(&self) -> bool {
        self.version.len == 0
    }

    /// All entries at this version, in key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        self.values(self.version.entries().iter())
    }

    /// The entries whose keys fall in `range`, in key order (for paging: resume after the last
    /// key of the previous page with `(Bound::Excluded(last), Bound::Unbounded)`).
    pub fn range<R: RangeBounds<K>>(&self, range: R) -> Iter<'_, K, V> {
        self.values(self.version.entries().range(range))
    }

    /// The values at this version of the keys `entries` yields (this version's keys, with
    /// their entries).
    fn values<'a>(
        &'a self,
        entries: impl Iterator<Item = (&'a K, &'a Arc<Entry<K, V>>)> + 'a,
    ) -> Iter<'a, K, V> {
        let at = self.registration.version;
        let shared = &self.registration.shared;
        Iter {
            inner: Box::new(entries.filter_map(move |(key, entry)| {
                // SAFETY: this snapshot's registration stands on `at` for as long as it is
                // borrowed ('a), and its version's map holds the entry as long.
                let value = unsafe { shared.value_at(entry, at) };
                // A key of this version's map has a value at it.
                debug_assert!(value.is_some());
                value.map(|value| (key, value))
            })),
        }
    }
}

impl<K: Ord + Hash + Clone, V: Clone> Clone for Snapshot<K, V> {
    fn clone(&self) -> Self {
        // Register the same version again (not the latest one).
        Self {
            version: Arc::clone(&self.version),
            registration: self.registration.duplicate(),
        }
    }
}

impl<K: Ord + Hash + Clone, V: Clone> fmt::Debug for Snapshot<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.registration.version)
            .field("len", &self.version.len)
            .finish()
    }
}

/// Iterator over a snapshot's entries, in key order.
pub struct Iter<'a, K, V> {
    inner: Box<dyn Iterator<Item = (&'a K, &'a V)> + 'a>,
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

impl<K, V> fmt::Debug for Iter<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}
