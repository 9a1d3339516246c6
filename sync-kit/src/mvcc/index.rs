//! The hash index: each key that has a value or a tombstone in the latest version, with its
//! [`Entry`] (the writes of it someone may still read, module `entry`), so that point reads,
//! commit validation and a commit's writes cost one hash lookup and touch one entry, and never
//! walk down a B-tree. The ordered maps of the versions hold the same entries.
//!
//! Only committers change the index and the entries. A commit under the committer lock pushes
//! its writes (stamped with its new, not yet published, version number) *before* it publishes
//! that version, trims the entries after publishing, and commits alone are excluded meanwhile.
//! A commit alone ([`Index::overwrite_alone`]) pushes its write unstamped, takes its number and
//! publishes it in one step, and stamps the write, all with its key's shard held. So every
//! unpublished write in the index is the newest of its entry, and the write before it stays
//! linked until the trim: a read of the latest version loads the published number with the
//! entry's shard locked and takes the newest write if it is published, else the one before
//! ([`Entry::latest`]); linearizable, and it never waits for a commit but for the shard.
//!
//! A key without an entry has no value at any version a live reader stands on: entries are
//! created by writes and removed from the index only with their tombstone (see `state.rs`), once
//! no live snapshot is older than it. (The versions' ordered maps may still hold a removed
//! entry; no live reader reaches it through them.)
//!
//! A one-key commit pushes its write and publishes while holding its key's shard
//! ([`Index::write_published`] under the committer lock, [`Index::overwrite_alone`] alone), and
//! settles the entry before releasing it (with no snapshot live, its write becomes the inline
//! one): no second lookup. Loom model
//! `one_key_commits_publish_with_their_slot`. A snapshot's ordered read of an entry whose inline
//! write is the newest takes no shard lock (`Entry::inline_at`; loom model
//! `lent_values_survive_commits`).
//!
//! The index is sharded (one internal mutex per shard, each on its own cache line), hashed once
//! with `hashbrown`'s default hasher (foldhash, seeded at random per map: several times cheaper
//! than std's SipHash, which a point read and a commit would pay several times over): shard from
//! bits 32 and up, bucket and tag from the rest, as `hashbrown` uses them. A bucket is a pointer
//! to the entry, so the table stays small enough to stay mostly in cache.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::HashTable;

use super::entry::{Entry, Spare};
use crate::loom::InternalMutex;
use crate::loom::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What one write changes in the ordered maps, which hold each live key's entry: nothing when it
/// overwrites a value (or removes an absent key); the key and its entry when it gives the key a
/// value; the key's removal when it removes one.
pub(crate) enum Change<K, V> {
    None,
    Insert(Arc<Entry<K, V>>),
    Remove,
}

impl<K, V> Change<K, V> {
    /// A write of a value (`live`) or a removal that found the key live or not.
    fn of(entry: &Arc<Entry<K, V>>, live: bool, was_live: bool) -> Self {
        match (live, was_live) {
            (true, false) => Change::Insert(Arc::clone(entry)),
            (false, true) => Change::Remove,
            _ => Change::None,
        }
    }

    /// The entry of the ordered maps' delta for `key` (`None`: no entry).
    pub(crate) fn delta_entry(self, key: K) -> Option<KeyChange<K, V>> {
        match self {
            Change::None => None,
            Change::Insert(entry) => Some((key, Some(entry))),
            Change::Remove => Some((key, None)),
        }
    }
}

/// A key that gained a value (with its entry) or lost it (`None`): one change of the keys of
/// the ordered maps.
pub(crate) type KeyChange<K, V> = (K, Option<Arc<Entry<K, V>>>);

/// What [`Index::write_published`] returns: what the publication returned, the versions live
/// registrations stood on then, and the entry if it keeps older writes to trim.
pub(crate) type WrittenPublished<R, K, V> = (R, Vec<u64>, Option<Arc<Entry<K, V>>>);

/// Shards: a power of two. Few under loom, where each is one more object to model.
#[cfg(not(loom))]
const SHARDS: usize = 64;
#[cfg(loom)]
const SHARDS: usize = 2;

type Table<K, V> = HashTable<Arc<Entry<K, V>>>;

/// The shard of a key's hash.
fn shard_index(hash: u64) -> usize {
    (hash >> 32) as usize & (SHARDS - 1)
}

/// How many keys a transaction may have read to commit alone ([`Index::overwrite_alone`]).
pub(crate) const ALONE_READS: usize = 7;

/// The version a write committed alone has until its commit has its number: newer than every
/// number, seen by no one (its shard is locked).
const UNSTAMPED: u64 = u64::MAX;

/// What [`Index::overwrite_alone`] did.
pub(crate) enum Alone<K, V> {
    /// Nothing: the write is not an overwrite of a live value (the key has no entry, or was
    /// removed), for the committer lock.
    Declined(K, V),
    /// Nothing: this key was written after the snapshot, at this version.
    Conflict(K, u64),
    /// Committed: the versions live registrations stood on at the publication, and the entry
    /// if it keeps older writes to trim.
    Committed {
        live: Vec<u64>,
        keeps_older: Option<Arc<Entry<K, V>>>,
    },
}

#[repr(align(64))]
struct Shard<K, V>(InternalMutex<Table<K, V>>);

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

    fn shard(&self, hash: u64) -> &InternalMutex<Table<K, V>> {
        &self.shards[shard_index(hash)].0
    }

    /// Calls `read` with `key`'s entry (if any), its shard locked.
    #[inline]
    fn with_entry<Q, R>(&self, key: &Q, read: impl FnOnce(Option<&Entry<K, V>>) -> R) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let shard = self.shard(hash).lock();
        read(
            shard
                .find(hash, |entry| entry.key().borrow() == key)
                .map(|entry| &**entry),
        )
    }

    /// The value of `key` in the latest version: `published` is loaded with the key's shard
    /// locked (see the module documentation).
    pub(crate) fn get_latest<Q>(&self, key: &Q, published: &AtomicU64) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.with_entry(key, |entry| {
            let entry = entry?;
            // SAFETY: the shard is locked until this returns, and the value is cloned.
            unsafe { entry.latest(published.load(Ordering::Acquire)) }.cloned()
        })
    }

    /// Whether `key` has a value in the latest version (as [`Index::get_latest`]).
    pub(crate) fn contains_latest<Q>(&self, key: &Q, published: &AtomicU64) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.with_entry(key, |entry| {
            // SAFETY: as in `get_latest`.
            entry.is_some_and(|entry| unsafe {
                entry.latest(published.load(Ordering::Acquire)).is_some()
            })
        })
    }

    /// The value of `key` at version `at`, which a live registration of the caller's stands on
    /// until this returns.
    pub(crate) fn get_at<Q>(&self, key: &Q, at: u64) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.with_entry(key, |entry| {
            // SAFETY: the shard is locked and the caller's registration stands on `at` while
            // the value is cloned.
            entry.and_then(|entry| unsafe { entry.at(at) }.cloned().flatten())
        })
    }

    /// Whether `key` has a value at `at` (as [`Index::get_at`]).
    pub(crate) fn contains_at<Q>(&self, key: &Q, at: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.with_entry(key, |entry| {
            // SAFETY: as in `get_at`.
            entry.is_some_and(|entry| unsafe { entry.at(at) }.is_some_and(Option::is_some))
        })
    }

    /// The value `entry` (reached through a version's ordered map) has at version `at`.
    ///
    /// # Safety
    ///
    /// The caller's own registration stands on `at` for as long as it uses the reference, and
    /// it holds `entry` alive as long.
    pub(crate) unsafe fn value_at<'a>(&self, entry: &'a Entry<K, V>, at: u64) -> Option<&'a V> {
        // SAFETY: the caller's contract, which is `inline_at`'s.
        if let Some(value) = unsafe { entry.inline_at(at) } {
            return value.as_ref();
        }
        let _shard = self.shard(self.hash(entry.key())).lock();
        // SAFETY: the shard is locked during the walk; the write found stays in the chain,
        // unchanged, while the caller's registration reads it (module `entry`), and the entry
        // lives as long as the caller holds it.
        unsafe { entry.at(at) }.and_then(Option::as_ref)
    }

    /// The version that last wrote `key` (tombstones included). Committers only.
    pub(crate) fn written_at(&self, key: &K) -> Option<u64> {
        // SAFETY: the shard is locked while the version is read.
        self.with_entry(key, |entry| entry.map(|entry| unsafe { entry.newest() }.0))
    }

    /// Records a write of `key` at the unpublished version `at` (committers only). Returns the
    /// key's hash, for [`Index::trim`] once `at` is published, whether the key had a value
    /// before, and what the write changes in the ordered maps.
    pub(crate) fn write(&self, key: &K, value: Option<V>, at: u64) -> (u64, bool, Change<K, V>) {
        let hash = self.hash(key);
        let mut shard = self.shard(hash).lock();
        let live = value.is_some();
        let was_live = match shard.find(hash, |entry| entry.key() == key) {
            // SAFETY: the shard is locked and the caller holds the committer lock.
            Some(entry) => unsafe {
                let was_live = entry.newest().1.is_some();
                entry.push(at, value, None);
                return (hash, was_live, Change::of(entry, live, was_live));
            },
            None => false,
        };
        let entry = Arc::new(Entry::new(key.clone(), at, value));
        let change = Change::of(&entry, live, was_live);
        shard.insert_unique(hash, entry, |entry| self.hasher.hash_one(entry.key()));
        (hash, was_live, change)
    }

    /// Records a write of `key` at the unpublished version `at` (committers only; pushed in
    /// `spare` if given) and, still holding the key's shard, calls `publish` with whether the key
    /// had a value before, what the write changes in the ordered maps and the key (moved back).
    /// `publish` returns what this returns and the versions live registrations stood on once
    /// `at` was published (ascending), with which the entry is settled ([`Entry::settle`]: with
    /// none, the write becomes the inline one) before the shard is released; the entry comes
    /// back too if it keeps older writes for the caller to trim ([`Index::trim`]). Readers of the
    /// key that take the shard wait until `at` is published and the entry settled.
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
        spare: Option<Spare<V>>,
        publish: impl FnOnce(bool, Change<K, V>, K) -> (R, Vec<u64>),
    ) -> Result<WrittenPublished<R, K, V>, (K, u64)> {
        let hash = self.hash(&key);
        let mut shard = self.shard(hash).lock();
        let live = value.is_some();
        // The write is pushed before the publication (a snapshot registered after it must find
        // it, also without the shard lock: `Entry::inline_at`), and folded into the inline write
        // after it if no snapshot is live then.
        let (entry, was_live, pushed) = match shard.find(hash, |entry| *entry.key() == key) {
            Some(entry) => {
                // SAFETY: the shard is locked and the caller holds the committer lock.
                let (written_at, newest) = unsafe { entry.newest() };
                if let Some(snapshot) = check
                    && written_at > snapshot
                {
                    return Err((key, written_at));
                }
                let was_live = newest.is_some();
                // SAFETY: the shard and the committer lock are held; `at` is newer than every
                // write of the key.
                unsafe { entry.push(at, value, spare) };
                (entry, was_live, true)
            }
            None => {
                let entry = Arc::new(Entry::new(key.clone(), at, value));
                let entry = shard
                    .insert_unique(hash, entry, |entry| self.hasher.hash_one(entry.key()))
                    .into_mut();
                (&*entry, false, false)
            }
        };
        let change = Change::of(entry, live, was_live);
        let (published, live_versions) = publish(was_live, change, key);
        // SAFETY: the shard and the committer lock are held, the newest write was pushed before
        // `at` was published, and `live_versions` was read at the publication.
        // `untouched`: no reader took the shard since the push.
        let keeps_older = pushed && unsafe { entry.settle(&live_versions, true) };
        let keeps_older = keeps_older.then(|| Arc::clone(entry));
        drop(shard);
        Ok((published, live_versions, keeps_older))
    }

    /// Commits an overwrite of `key`'s live value alone, without the committer lock: locks the
    /// shards of `key` and of the keys read (`reads`, at most [`ALONE_READS`]) in shard order,
    /// validates them against `snapshot` (the transaction's version), pushes the write, calls
    /// `publish` for the write's version (which publishes it and reads the live versions then),
    /// stamps the write with it and settles the entry, all before releasing the shards. A reader of one of these keys that takes its shard waits for all of it, and one
    /// that does not (`Entry::inline_at`) finds the write pushed from before its publication.
    ///
    /// The caller excludes commits under the committer lock meanwhile (`registry.rs`), so every
    /// unpublished write in the index is the newest of its entry and its commit holds the
    /// entry's shard. Two commits alone that share a key exclude each other through its shard:
    /// the one that takes it second sees the other's write, published, and fails its validation
    /// if it read or wrote the key; a commit numbered before it that wrote the key held the
    /// shard while it took its number, so it published before this commit took the shard.
    pub(crate) fn overwrite_alone<'k>(
        &self,
        key: K,
        value: V,
        reads: impl Iterator<Item = &'k K>,
        snapshot: u64,
        publish: impl FnOnce() -> (u64, Vec<u64>),
    ) -> Alone<K, V>
    where
        K: 'k,
    {
        let hash = self.hash(&key);
        let mut read_hashes = [0u64; ALONE_READS];
        let mut read_keys: [Option<&K>; ALONE_READS] = [None; ALONE_READS];
        let mut shards = [0usize; ALONE_READS + 1];
        shards[0] = shard_index(hash);
        let mut count = 1;
        for (at, read) in reads.enumerate() {
            let read_hash = self.hash(read);
            read_hashes[at] = read_hash;
            read_keys[at] = Some(read);
            shards[count] = shard_index(read_hash);
            count += 1;
        }
        let shards = &mut shards[..count];
        shards.sort_unstable();
        let mut locked = 0;
        for at in 0..shards.len() {
            if at == 0 || shards[at] != shards[at - 1] {
                shards[locked] = shards[at];
                locked += 1;
            }
        }
        let shards = &shards[..locked];
        // In shard order: the only place that holds two shards at once.
        let mut guards = [const { None }; ALONE_READS + 1];
        for (guard, &shard) in guards.iter_mut().zip(shards) {
            *guard = Some(self.shards[shard].0.lock());
        }
        let table = |hash: u64| {
            let at = shards
                .iter()
                .position(|&shard| shard == shard_index(hash))
                .expect("every key's shard is locked");
            &**guards[at].as_ref().expect("locked")
        };
        for (read_hash, read) in read_hashes.iter().zip(read_keys.iter().map_while(|k| *k)) {
            if let Some(entry) = table(*read_hash).find(*read_hash, |entry| entry.key() == read)
                // SAFETY: the entry's shard is locked.
                && let (written_at, _) = unsafe { entry.newest() }
                && written_at > snapshot
            {
                return Alone::Conflict(read.clone(), written_at);
            }
        }
        let Some(entry) = table(hash).find(hash, |entry| *entry.key() == key) else {
            return Alone::Declined(key, value);
        };
        // SAFETY: the shard is locked.
        let (written_at, newest) = unsafe { entry.newest() };
        if written_at > snapshot {
            return Alone::Conflict(key, written_at);
        }
        if newest.is_none() {
            return Alone::Declined(key, value);
        }
        // SAFETY: the shard is locked and no commit under the committer lock runs; the version
        // is newer than every write of the key (this commit's, stamped once it has its number).
        // The node is allocated here, under the shard: a commit that turns out to write a new
        // key allocates nothing before it goes to the committer lock.
        unsafe { entry.push(UNSTAMPED, Some(value), None) };
        let (number, live) = publish();
        // SAFETY: the shard has been locked since the push.
        let keeps_older = unsafe {
            entry.stamp_newest(number);
            entry.settle(&live, true)
        };
        let keeps_older = keeps_older.then(|| Arc::clone(entry));
        Alone::Committed { live, keeps_older }
    }

    /// Settles the entries of `hash` whose newest write is `at`, now published (committers
    /// only; [`Entry::settle`]), with the versions live registrations stood on when it was
    /// (ascending), adding to `to_trim` the entries that keep older writes. `queued` as in
    /// [`Index::trim`]: the shard was released between the push and the publication, so a
    /// snapshot registered since may hold a reference into the chain.
    pub(crate) fn settle(
        &self,
        hash: u64,
        at: u64,
        live: &[u64],
        queued: &AtomicUsize,
        to_trim: &mut Vec<Arc<Entry<K, V>>>,
    ) {
        let shard = self.shard(hash).lock();
        // As in `trim`: read with the shard locked.
        let untouched = queued.load(Ordering::Relaxed) == 0;
        // May visit entries of other hashes: settling any entry whose newest write is `at` is
        // safe (and settling one twice does nothing more).
        for entry in shard.iter_hash(hash) {
            // SAFETY: the shard and the committer lock are held; an entry whose newest write
            // is `at` has it published; `untouched` as read above.
            unsafe {
                if entry.newest().0 == at && entry.settle(live, untouched) {
                    to_trim.push(Arc::clone(entry));
                }
            }
        }
    }

    /// Trims `entry` ([`Entry::trim`]) with the versions live registrations stood on when the
    /// version `published` was published (ascending); needs no committer lock. `queued`: the
    /// map's count of registrations in the state lock's queue, which holds every snapshot (the
    /// readers that keep references to values). Returns whether the entry still keeps writes
    /// older than its newest.
    pub(crate) fn trim(
        &self,
        entry: &Entry<K, V>,
        live: &[u64],
        published: u64,
        queued: &AtomicUsize,
    ) -> bool {
        let _shard = self.shard(self.hash(entry.key())).lock();
        // Read with the shard locked: a snapshot counted after this read reads the entry after
        // the trim (its reads of a chain with nodes take the shard), and a snapshot that read
        // it before took the shard after it was counted, so it is counted here.
        let no_snapshot = queued.load(Ordering::Relaxed) == 0;
        // SAFETY: the shard is locked, `published` is published and `live` was read then; with
        // `no_snapshot`, no reference lent by `Entry::at` points into the entry.
        unsafe { entry.trim(live, published, no_snapshot) }
    }

    /// Removes `key`'s entry if its newest write is still the tombstone written at `written_at`
    /// (committers only).
    pub(crate) fn remove_tombstone(&self, key: &K, written_at: u64) {
        let hash = self.hash(key);
        let mut shard = self.shard(hash).lock();
        if let Ok(found) = shard.find_entry(hash, |entry| entry.key() == key) {
            // SAFETY: the shard is locked.
            let (version, value) = unsafe { found.get().newest() };
            if version == written_at && value.is_none() {
                found.remove();
            }
        }
    }
}
