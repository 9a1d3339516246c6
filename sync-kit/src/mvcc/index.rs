//! The hash index of the latest version: one slot per key that has a value or a tombstone in
//! it, so that point reads and commit validation cost one hash lookup instead of a walk down a
//! B-tree (tombstones live here only: the ordered maps of the versions hold values).
//!
//! Each slot keeps the key's last write (`written_at`, `value`) and, while that write's version is
//! being published, the write before it (`prev`: its version and value). Only committers change
//! the index, under the committer lock: a commit writes its slots (stamped with its new, not yet
//! published, version number) *before* it publishes that version, forgets the previous writes
//! after publishing, and the next commit cannot start before that. So at any moment at most one
//! version stamped in the index is unpublished, and for any version `at` that a reader may stand
//! on, a slot answers exactly when `written_at <= at` (the value) or when it keeps a previous
//! write of version `<= at` (that value); otherwise the reader falls back to the ordered map of
//! its version (a snapshot) or loads the published version again (a read of the latest: once a
//! previous write is forgotten, the version that replaced it is published). A key without a slot
//! has no value at any version a live reader stands on: slots are created by writes and removed
//! only with their tombstone (see `state.rs`), once no live snapshot is older than it.
//!
//! A one-key commit does without the previous write ([`Index::write_published`]): it writes the
//! slot and publishes its version while holding the slot's shard mutex, so no reader can look at
//! the slot between the two, and afterwards no reader needs what it replaced (a reader of an older
//! published version that was waiting on the shard finds the slot written after its version, as
//! when a previous write has been forgotten: it reads the published number again, or its
//! snapshot's ordered map); the previous write is dropped before the shard is released, with no
//! second lookup. Loom model `one_key_commits_publish_with_their_slot`.
//!
//! The index is sharded (one internal mutex per shard, each on its own cache line), hashed once
//! with `hashbrown`'s default hasher (foldhash, seeded at random per map: several times cheaper
//! than std's SipHash, which a point read and a commit would pay several times over): shard from
//! bits 32 and up, bucket and tag from the rest, as `hashbrown` uses them.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use crate::loom::InternalMutex;

/// One key's last write and, while its version is being published, the write before it
/// (inline: a box would cost an allocation and a free per written key and commit).
/// `prev == None`: the previous value is no longer kept (`written_at` is published), so readers of
/// older versions go to their version's ordered map and the index never keeps an overwritten
/// value alive. `prev == Some((0, None))`: nothing before `written_at` that a reader can see.
///
/// Aligned to a cache line: a slot of small keys and values (64 bytes for `u64 → u64`) then
/// lies on one line, where the table's 16-byte-aligned buckets put most slots across two, so a
/// commit's write and its forgetting of the previous write touch one line, not two.
#[repr(align(64))]
struct Slot<K, V> {
    key: K,
    written_at: u64,
    value: Option<V>,
    prev: Option<(u64, Option<V>)>,
}

impl<K, V> Slot<K, V> {
    /// The slot of a key first written at `at` (before it, the key was absent).
    fn first(key: K, value: Option<V>, at: u64) -> Self {
        Slot {
            key,
            written_at: at,
            value,
            prev: Some((0, None)),
        }
    }

    /// Records a write at `at`, keeping the previous one; whether the key had a value.
    #[inline]
    fn overwrite(&mut self, value: Option<V>, at: u64) -> bool {
        let was_live = self.value.is_some();
        let prev = std::mem::replace(&mut self.value, value);
        let prev_at = std::mem::replace(&mut self.written_at, at);
        self.prev = Some((prev_at, prev));
        was_live
    }
}

/// Shards: a power of two. Few under loom, where each is one more object to model.
#[cfg(not(loom))]
const SHARDS: usize = 64;
#[cfg(loom)]
const SHARDS: usize = 2;

#[repr(align(64))]
struct Shard<K, V>(InternalMutex<HashTable<Slot<K, V>>>);

/// Seeded at random per map in production (foldhash); fixed under loom, whose runs must repeat:
/// the shard a key lands in decides which interleavings exist.
#[cfg(not(loom))]
type IndexHasher = hashbrown::DefaultHashBuilder;
#[cfg(loom)]
type IndexHasher = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

pub(crate) struct Index<K, V> {
    hasher: IndexHasher,
    shards: Box<[Shard<K, V>]>,
}

/// What the index says about one key at one version.
pub(crate) enum Lookup<V> {
    /// The key's value at that version (`None`: absent or removed).
    Known(Option<V>),
    /// Written twice since that version: ask the version's ordered map.
    Older,
}

impl<K: Hash + Eq + Clone, V: Clone> Index<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            hasher: IndexHasher::default(),
            shards: (0..SHARDS)
                .map(|_| Shard(InternalMutex::new(HashTable::new())))
                .collect(),
        }
    }

    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &InternalMutex<HashTable<Slot<K, V>>> {
        &self.shards[(hash >> 32) as usize & (SHARDS - 1)].0
    }

    /// The value of `key` at version `at`, if the index can tell. `at` must be a published
    /// version that the caller stands on (a live snapshot's, or the latest one read just before).
    pub(crate) fn get_at<Q>(&self, key: &Q, at: u64) -> Lookup<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let shard = self.shard(hash).lock();
        match shard.find(hash, |slot| slot.key.borrow() == key) {
            None => Lookup::Known(None),
            Some(slot) if slot.written_at <= at => Lookup::Known(slot.value.clone()),
            Some(Slot {
                prev: Some(prev), ..
            }) if prev.0 <= at => Lookup::Known(prev.1.clone()),
            Some(_) => Lookup::Older,
        }
    }

    /// Whether `key` has a value at version `at`, if the index can tell (as [`Index::get_at`]).
    pub(crate) fn contains_at<Q>(&self, key: &Q, at: u64) -> Option<bool>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let shard = self.shard(hash).lock();
        match shard.find(hash, |slot| slot.key.borrow() == key) {
            None => Some(false),
            Some(slot) if slot.written_at <= at => Some(slot.value.is_some()),
            Some(Slot {
                prev: Some(prev), ..
            }) if prev.0 <= at => Some(prev.1.is_some()),
            Some(_) => None,
        }
    }

    /// The version that last wrote `key` (tombstones included). Committers only.
    pub(crate) fn written_at(&self, key: &K) -> Option<u64> {
        let hash = self.hash(key);
        let shard = self.shard(hash).lock();
        shard
            .find(hash, |slot| slot.key == *key)
            .map(|slot| slot.written_at)
    }

    /// Records a write of `key` at the unpublished version `at` (committers only). Returns the
    /// key's hash, for [`Index::forget_prev`] once `at` is published, and whether the key had a
    /// value before.
    pub(crate) fn write(&self, key: &K, value: Option<V>, at: u64) -> (u64, bool) {
        let hash = self.hash(key);
        let mut shard = self.shard(hash).lock();
        if let Some(slot) = shard.find_mut(hash, |slot| slot.key == *key) {
            (hash, slot.overwrite(value, at))
        } else {
            shard.insert_unique(hash, Slot::first(key.clone(), value, at), |slot| {
                self.hasher.hash_one(&slot.key)
            });
            (hash, false)
        }
    }

    /// Records a write of `key` at the unpublished version `at` (committers only) and, still
    /// holding the key's shard, calls `publish` with whether the key had a value before and the
    /// key (moved back), returning what it returns. Readers of the key wait on the shard until
    /// `at` is published, so the slot's previous write is dropped before the shard is released
    /// and no reader needs it: a reader that loaded an older published number before waiting
    /// finds the slot written after it and reads again (or asks its snapshot's ordered map).
    ///
    /// With `check`, the transaction's snapshot version, the key is validated first: if it was
    /// written after `check`, nothing is written or published and the key comes back with the
    /// version that wrote it.
    pub(crate) fn write_published<R>(
        &self,
        key: K,
        value: Option<V>,
        at: u64,
        check: Option<u64>,
        publish: impl FnOnce(bool, K) -> R,
    ) -> Result<R, (K, u64)> {
        let hash = self.hash(&key);
        let mut shard = self.shard(hash).lock();
        // The previous write is kept in the slot until the publication is done, as by
        // [`Index::write`], only so that a panic inside `publish` (a user `Clone`) leaves the
        // slot as readers of the published versions need it; it is dropped before the shard is
        // released, so no reader ever sees it.
        let (slot, was_live) = match shard.find_mut(hash, |slot| slot.key == key) {
            Some(slot) => {
                if let Some(snapshot) = check
                    && slot.written_at > snapshot
                {
                    return Err((key, slot.written_at));
                }
                let was_live = slot.overwrite(value, at);
                (slot, was_live)
            }
            None => {
                let slot = shard
                    .insert_unique(hash, Slot::first(key.clone(), value, at), |slot| {
                        self.hasher.hash_one(&slot.key)
                    })
                    .into_mut();
                (slot, false)
            }
        };
        let published = publish(was_live, key);
        slot.prev = None;
        drop(shard);
        Ok(published)
    }

    /// Drops the previous values kept by the slots of `hash` written at `at`, now published
    /// (committers only). Readers of versions before `at` then ask their ordered map, and a
    /// read of the latest version that loaded a number before `at` reads it again.
    pub(crate) fn forget_prev(&self, hash: u64, at: u64) {
        let mut shard = self.shard(hash).lock();
        // May visit slots of other hashes: forgetting any slot written at `at` is safe.
        for slot in shard.iter_hash_mut(hash) {
            if slot.written_at == at {
                slot.prev = None;
            }
        }
    }

    /// Removes `key`'s slot if it is still the tombstone written at `written_at` (committers
    /// only, with the same tombstone dropped from the ordered map).
    pub(crate) fn remove_tombstone(&self, key: &K, written_at: u64) {
        let hash = self.hash(key);
        let mut shard = self.shard(hash).lock();
        if let Ok(entry) = shard.find_entry(hash, |slot| slot.key == *key)
            && entry.get().written_at == written_at
            && entry.get().value.is_none()
        {
            entry.remove();
        }
    }
}
