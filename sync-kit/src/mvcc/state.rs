//! The shared state of one map: the latest version, the live snapshot versions, the tombstone
//! queue, and the commit procedure.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use imbl::OrdMap;

use super::MvccStats;
use super::transaction::Conflict;
use crate::loom::InternalMutex;

/// One committed entry: its value (`None` for a tombstone) and the version that wrote it.
#[derive(Clone, Debug)]
pub(crate) struct Entry<V> {
    pub(crate) written_at: u64,
    pub(crate) value: Option<V>,
}

/// One immutable version of the map.
pub(crate) struct Version<K, V> {
    pub(crate) number: u64,
    pub(crate) entries: OrdMap<K, Entry<V>>,
    /// Live (non-tombstone) keys.
    pub(crate) len: usize,
}

impl<K: Ord + Clone, V: Clone> Version<K, V> {
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.entries.get(key).and_then(|e| e.value.clone())
    }
}

struct State<K, V> {
    latest: Arc<Version<K, V>>,
    /// Version number → how many live snapshots (and transactions) stand on it.
    live: BTreeMap<u64, usize>,
    /// Removed keys in commit order, with the version that removed them.
    tombstones: VecDeque<(u64, K)>,
}

impl<K, V> State<K, V> {
    fn release(&mut self, version: u64) {
        if let Some(count) = self.live.get_mut(&version) {
            *count -= 1;
            if *count == 0 {
                self.live.remove(&version);
            }
        }
    }
}

/// A live snapshot's claim on its version; released on drop unless a commit released it.
pub(crate) struct Registration<K: Ord + Clone, V: Clone> {
    pub(crate) shared: Arc<Shared<K, V>>,
    pub(crate) version: u64,
    active: bool,
}

impl<K: Ord + Clone, V: Clone> Registration<K, V> {
    /// Registers a snapshot of the latest version, returning it.
    pub(crate) fn latest(shared: &Arc<Shared<K, V>>) -> (Self, Arc<Version<K, V>>) {
        let version = shared.acquire_latest();
        let registration = Self {
            shared: Arc::clone(shared),
            version: version.number,
            active: true,
        };
        (registration, version)
    }

    /// Registers one more snapshot of the same version.
    pub(crate) fn duplicate(&self) -> Self {
        self.shared.retain(self.version);
        Self {
            shared: Arc::clone(&self.shared),
            version: self.version,
            active: true,
        }
    }
}

impl<K: Ord + Clone, V: Clone> Drop for Registration<K, V> {
    fn drop(&mut self) {
        if self.active {
            self.shared.release(self.version);
        }
    }
}

pub(crate) struct Shared<K, V> {
    state: InternalMutex<State<K, V>>,
    // Plain counters; they order no other memory.
    commits: AtomicU64,
    conflicts: AtomicU64,
}

/// How many tombstones one commit may drop: bounds a commit's extra work while still draining
/// the queue faster than commits can fill it (a commit removes at most as many keys as it writes).
const TOMBSTONES_PER_COMMIT: usize = 64;

impl<K: Ord + Clone, V: Clone> Shared<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            state: InternalMutex::new(State {
                latest: Arc::new(Version {
                    number: 0,
                    entries: OrdMap::new(),
                    len: 0,
                }),
                live: BTreeMap::new(),
                tombstones: VecDeque::new(),
            }),
            commits: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
        }
    }

    /// The latest version, without registering a snapshot.
    pub(crate) fn latest(&self) -> Arc<Version<K, V>> {
        Arc::clone(&self.state.lock().latest)
    }

    /// The latest version, registered as live until [`Shared::release`].
    pub(crate) fn acquire_latest(&self) -> Arc<Version<K, V>> {
        let mut state = self.state.lock();
        let latest = Arc::clone(&state.latest);
        *state.live.entry(latest.number).or_default() += 1;
        latest
    }

    /// Registers one more snapshot of `version` (a clone of a live snapshot).
    pub(crate) fn retain(&self, version: u64) {
        *self.state.lock().live.entry(version).or_default() += 1;
    }

    /// One snapshot of `version` is gone.
    pub(crate) fn release(&self, version: u64) {
        self.state.lock().release(version);
    }

    /// Validates and applies a transaction's writes. The transaction's snapshot `registration`
    /// is released here, under the state lock and only after validation: released earlier, a
    /// concurrent commit could drop a tombstone this validation needs and miss a conflict.
    pub(crate) fn commit(
        &self,
        registration: &mut Registration<K, V>,
        reads: &BTreeSet<K>,
        writes: BTreeMap<K, Option<V>>,
    ) -> Result<u64, Conflict<K>> {
        let snapshot_version = registration.version;
        let mut state = self.state.lock();
        for key in reads.iter().chain(writes.keys()) {
            if let Some(entry) = state.latest.entries.get(key)
                && entry.written_at > snapshot_version
            {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                return Err(Conflict {
                    key: key.clone(),
                    snapshot_version,
                    committed_version: entry.written_at,
                });
            }
        }
        state.release(snapshot_version);
        registration.active = false;
        self.commits.fetch_add(1, Ordering::Relaxed);
        if writes.is_empty() {
            return Ok(state.latest.number);
        }
        let number = state.latest.number + 1;
        let mut entries = state.latest.entries.clone();
        let mut len = state.latest.len;
        for (key, value) in writes {
            let was_live = entries.get(&key).is_some_and(|e| e.value.is_some());
            match (&value, was_live) {
                (Some(_), false) => len += 1,
                (None, true) => len -= 1,
                _ => {}
            }
            if value.is_none() {
                state.tombstones.push_back((number, key.clone()));
            }
            entries.insert(
                key,
                Entry {
                    written_at: number,
                    value,
                },
            );
        }
        let oldest_live = state.live.keys().next().copied();
        drop_old_tombstones(&mut entries, &mut state.tombstones, oldest_live);
        state.latest = Arc::new(Version {
            number,
            entries,
            len,
        });
        Ok(number)
    }

    pub(crate) fn stats(&self) -> MvccStats {
        let state = self.state.lock();
        let latest = state.latest.number;
        MvccStats {
            version: latest,
            keys: state.latest.len,
            commits: self.commits.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            live_versions: state.live.len() + usize::from(!state.live.contains_key(&latest)),
            live_snapshots: state.live.values().sum(),
            tombstones: state.tombstones.len(),
        }
    }
}

/// Drops tombstones that no live snapshot is old enough to need: a tombstone written at version
/// `t` matters only to a transaction whose snapshot is older than `t`.
fn drop_old_tombstones<K: Ord + Clone, V: Clone>(
    entries: &mut OrdMap<K, Entry<V>>,
    queue: &mut VecDeque<(u64, K)>,
    oldest_live: Option<u64>,
) {
    for _ in 0..TOMBSTONES_PER_COMMIT {
        let Some((written_at, _)) = queue.front() else {
            return;
        };
        if oldest_live.is_some_and(|oldest| oldest < *written_at) {
            return;
        }
        let (written_at, key) = queue.pop_front().expect("front exists");
        // Only if the key was not written again since.
        if entries
            .get(&key)
            .is_some_and(|e| e.written_at == written_at && e.value.is_none())
        {
            entries.remove(&key);
        }
    }
}
