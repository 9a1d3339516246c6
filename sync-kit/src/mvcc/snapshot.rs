//! [`Snapshot`]: one immutable version of an [`MvccMap`](super::MvccMap).

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::ops::RangeBounds;
use std::sync::Arc;

use super::index::Lookup;
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

    /// Gives up the data, keeping the registration (for a commit to release).
    pub(crate) fn into_registration(self) -> Registration<K, V> {
        self.registration
    }

    /// The value of `key` at this version. One hash lookup in the latest version's index when
    /// the key was written at most once since this version (almost always, for a recent
    /// snapshot); otherwise a lookup in this version's ordered map.
    ///
    /// `key` may be any borrowed form of the key type (`&str` for `String` keys), as with
    /// [`HashMap::get`](std::collections::HashMap::get).
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + Ord + ?Sized,
    {
        match self.registration.shared.lookup_at(key, self.version.number) {
            Lookup::Known(value) => value,
            Lookup::Older => self.version.get(key),
        }
    }

    /// Whether `key` (any borrowed form of the key type) has a value at this version.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + Ord + ?Sized,
    {
        self.registration
            .shared
            .contains_at(key, self.version.number)
            .unwrap_or_else(|| self.version.entries().contains_key(key))
    }

    /// The version number this snapshot sees.
    pub fn version(&self) -> u64 {
        self.version.number
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
        Iter {
            inner: Box::new(self.version.entries().iter()),
        }
    }

    /// The entries whose keys fall in `range`, in key order (for paging: resume after the last
    /// key of the previous page with `(Bound::Excluded(last), Bound::Unbounded)`).
    pub fn range<R: RangeBounds<K>>(&self, range: R) -> Iter<'_, K, V> {
        Iter {
            inner: Box::new(self.version.entries().range(range)),
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
            .field("version", &self.version.number)
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
