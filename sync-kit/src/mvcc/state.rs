//! The shared state of one map: the latest version, the live snapshot versions, the latest
//! version's hash index, the tombstone queue, and the commit procedure.
//!
//! Two internal locks, always taken in this order:
//!
//! - `committer`: held by one commit from validation to publication. Commits are serialized
//!   (each builds on the version the previous one published); the tombstone queue and the
//!   index's writes are theirs.
//! - `state`: the latest version and the live snapshot versions. Held only to copy or swap an
//!   `Arc`, store the published version number and update a counter, never across validation,
//!   the index and delta writes, the build of a version's ordered map or the freeing of an old
//!   one, so snapshots and reads never wait for a commit's work.
//!
//! Under `committer`, an index shard's mutex or a recent version's `pending` mutex may be taken,
//! each alone and for a moment. A version's `pending` is a `std` mutex and its map a `std`
//! `OnceLock`, not loom's: neither is ever held across a loom operation (a build only takes,
//! clones and changes `imbl` maps), so under loom they can neither block nor be interleaved, and loom
//! still explores every interleaving of the atomics and internal mutexes around them.
//!
//! While a commit holds `committer`, `state.latest` cannot change, so the version it validated
//! against is the one it replaces.

use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use imbl::OrdMap;

use super::MvccStats;
use super::index::{Index, Lookup, ReadCheck, Reserve};
use super::transaction::{Conflict, KeyMap, Sorted};
use crate::loom::atomic::{AtomicU64 as SyncAtomicU64, Ordering};
use crate::loom::{InternalMutex, SpinWait};

/// One immutable version of the map: its number, its live key count, and its ordered entries
/// (tombstones are not in them: only the index needs those, for validation).
///
/// A commit does not path-copy the latest `OrdMap` of the whole map before publishing. Its
/// version records the last built version (`base`) and every write since it (`delta`, a short
/// sorted list, the one-key commit's inline), and its map is built from them once (`OnceLock`):
///
/// | state | `entries` | `pending` | what moves it on |
/// |---|---|---|---|
/// | unbuilt | empty | `Some(base, delta)` | the first `entries()`: the committing thread right after publishing (below), or a reader (an ordered read, or a point read the index cannot answer) |
/// | being built | initializing | `None` (taken) | that call; other callers wait for it |
/// | built | set | `None` | nothing; a successor's build may take the map whole (`into_entries`) once no one else holds this version |
///
/// The build is `base`'s map plus `delta` ([`Pending::build`]). Once the commit has published
/// its version, if nothing else holds `base` (no snapshot, transaction or other version: the
/// usual case when no snapshot lives across commits), it builds its version itself, taking
/// `base`'s map and changing it in place: a B-tree descent per written key, no node copied, the
/// overwritten value freed at once. If something holds `base`, the commit leaves its version
/// unbuilt and the next commits extend the delta (merging their writes into a copy of it) until
/// `base` is free again, or until [`MATERIALIZE_EVERY`] versions (or [`MATERIALIZE_WRITES`]
/// written keys) are pending: then the committing thread builds its version by path copy, one
/// copy of the upper levels for all of them.
///
/// Invariant: an unbuilt version's `base` is built or being built, and no version refers to an
/// older one other than its `base`; a version's map (or `base` plus `delta`) is exactly its
/// contents; a map is changed in place only by the build that holds the last reference to the
/// version that owned it, which no one can reach any more (it is not the latest version). So an
/// overwritten value is freed with the last snapshot that sees it, or, if the latest version
/// still stands on the version that held it, by the next commit that can build in place, at the
/// latest after [`MATERIALIZE_EVERY`] more commits.
pub(crate) struct Version<K, V> {
    pub(crate) number: u64,
    /// Live (non-tombstone) keys.
    pub(crate) len: usize,
    entries: OnceLock<OrdMap<K, V>>,
    /// Until `entries` is built: the last built version before it and the writes since. Taken
    /// (and the link to `base` dropped) by the build. Locked inside `entries`' initialization,
    /// which runs once, and by the commits (under the committer lock) that decide whether to
    /// build it or extend its delta: never held across anything else, and its lock order is
    /// committer, then this.
    pending: std::sync::Mutex<Option<Pending<K, V>>>,
}

struct Pending<K, V> {
    base: Arc<Version<K, V>>,
    /// Sorted by key, one entry per key (the last write since `base`).
    delta: Sorted<(K, Option<V>)>,
}

impl<K: Ord + Hash + Clone, V: Clone> Pending<K, V> {
    /// `base`'s entries plus `delta`. When this is the last reference to `base` (no snapshot,
    /// transaction or other unbuilt version holds it, and nothing can reach it any more: it is
    /// not the latest version), its map is taken and changed in place, so that only the nodes it
    /// still shares with older live versions are copied; otherwise `base`'s map is cloned (O(1))
    /// and the writes path-copy it. `base` is built, or being built by the commit that made it
    /// (then it is shared, and `entries` waits for that build).
    fn build(self) -> OrdMap<K, V> {
        let Pending { base, delta } = self;
        let mut entries = match Arc::try_unwrap(base) {
            Ok(base) => base.into_entries(),
            Err(base) => base.entries().clone(),
        };
        for (key, value) in delta.into_iter() {
            match value {
                // An overwrite (the common write) in one descent that changes no node's shape.
                Some(value) => match entries.get_mut(&key) {
                    Some(slot) => *slot = value,
                    None => {
                        entries.insert(key, value);
                    }
                },
                None => {
                    entries.remove(&key);
                }
            }
        }
        entries
    }
}

impl<K: Ord + Hash + Clone, V: Clone> Version<K, V> {
    fn built(number: u64, entries: OrdMap<K, V>) -> Self {
        Self {
            number,
            len: entries.len(),
            entries: OnceLock::from(entries),
            pending: std::sync::Mutex::new(None),
        }
    }

    /// This version's entries in key order, built on first use (see the type's documentation).
    pub(crate) fn entries(&self) -> &OrdMap<K, V> {
        self.entries.get_or_init(|| {
            let pending = self
                .pending()
                .take()
                .expect("an unbuilt version keeps its base and writes");
            pending.build()
        })
    }

    /// This version's entries, owned: taken if built, else built from its base and writes.
    fn into_entries(self) -> OrdMap<K, V> {
        match self.entries.into_inner() {
            Some(entries) => entries,
            None => self
                .pending
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .expect("an unbuilt version keeps its base and writes")
                .build(),
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.entries().get(key).cloned()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Option<Pending<K, V>>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What a version committed on this one with the (sorted) writes `fresh` is built from:
    /// this one's base and its delta merged with `fresh` while this one is unbuilt and `extend`
    /// (its build not started), else this version and `fresh`.
    fn successor_pending(
        self: &Arc<Self>,
        extend: bool,
        fresh: Sorted<(K, Option<V>)>,
    ) -> Pending<K, V> {
        if extend && let Some(pending) = self.pending().as_ref() {
            return Pending {
                base: Arc::clone(&pending.base),
                delta: Sorted::Many(merge(pending.delta.as_slice(), fresh)),
            };
        }
        Pending {
            base: Arc::clone(self),
            delta: fresh,
        }
    }
}

/// The sorted union of `older` and `newer` (both sorted, one entry per key), `newer` winning.
fn merge<K: Ord + Clone, V: Clone>(
    older: &[(K, Option<V>)],
    newer: Sorted<(K, Option<V>)>,
) -> Vec<(K, Option<V>)> {
    let mut merged = Vec::with_capacity(older.len() + newer.len());
    let mut older = older.iter().peekable();
    for (key, value) in newer.into_iter() {
        while let Some((old_key, _)) = older.peek() {
            match old_key.cmp(&key) {
                std::cmp::Ordering::Less => merged.push(older.next().expect("peeked").clone()),
                std::cmp::Ordering::Equal => {
                    older.next();
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        merged.push((key, value));
    }
    merged.extend(older.cloned());
    merged
}

/// A commit builds its version's ordered map itself (after publishing it) when this many
/// versions were committed since the last one built...
const MATERIALIZE_EVERY: u64 = 16;
/// ...or when the versions since then wrote this many keys (a bulk load is built at once).
const MATERIALIZE_WRITES: usize = 64;

struct State<K, V> {
    latest: Arc<Version<K, V>>,
    /// (version number, how many live snapshots and transactions stand on it), in version
    /// order, counts above zero. A snapshot registers at the latest version, which is at the
    /// back or goes there, and most are released at the back or the front: no allocation once
    /// the deque has grown, no search for the common cases.
    live: VecDeque<(u64, usize)>,
}

/// What only the publishing commit touches (under `Shared::publisher`, taken by one commit at a
/// time: the one whose predecessor has published).
struct Publisher<K, V> {
    /// The latest version (the same as `State::latest`, which readers use).
    latest: Arc<Version<K, V>>,
    /// Versions published, and keys they wrote, since the last one whose build a commit started.
    unbuilt_versions: u64,
    unbuilt_writes: usize,
}

impl<K, V> State<K, V> {
    /// One more snapshot of `version`, which is the latest or already registered.
    fn retain(&mut self, version: u64) {
        match self.live.back_mut() {
            Some((last, count)) if *last == version => *count += 1,
            Some((last, _)) if *last > version => {
                match self.live.binary_search_by_key(&version, |&(v, _)| v) {
                    Ok(at) => self.live[at].1 += 1,
                    Err(at) => self.live.insert(at, (version, 1)),
                }
            }
            _ => self.live.push_back((version, 1)),
        }
    }

    fn release(&mut self, version: u64) {
        if let Ok(at) = self.live.binary_search_by_key(&version, |&(v, _)| v) {
            let count = &mut self.live[at].1;
            *count -= 1;
            if *count == 0 {
                self.live.remove(at);
            }
        }
    }

    /// The oldest version a live snapshot or transaction stands on, not counting one claim on
    /// `except` (the committing transaction's own, which it gives up on success).
    fn oldest_live_except(&self, except: u64) -> Option<u64> {
        self.live
            .iter()
            .find(|&&(version, count)| version != except || count > 1)
            .map(|&(version, _)| version)
    }
}

/// What only committers touch (under `Shared::committer`).
struct CommitterState<K> {
    /// Removed keys in commit order, with the version that removed them.
    tombstones: VecDeque<(u64, K)>,
    /// The last version number claimed.
    claimed: u64,
    /// Writing transactions committed (counted here, on the lock's cache line, rather than in a
    /// shared atomic).
    commits: u64,
    /// (version, key hash) of every key written by a claimed version that may not have written
    /// its slots yet: a read validated after the claim of such a version and before its write
    /// sees the slot reserved, and must know whether its writer comes before it. Entries of
    /// published versions are dropped at each claim.
    in_flight: VecDeque<(u64, u64)>,
}

/// A live snapshot's claim on its version; released on drop unless a commit released it.
pub(crate) struct Registration<K: Ord + Hash + Clone, V: Clone> {
    pub(crate) shared: Arc<Shared<K, V>>,
    pub(crate) version: u64,
    active: bool,
}

impl<K: Ord + Hash + Clone, V: Clone> Registration<K, V> {
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

    /// Commits a transaction standing on this registration (see [`Shared::commit`]), which
    /// releases it, without another reference to the shared state.
    pub(crate) fn commit(
        &mut self,
        reads: &KeyMap<K, ()>,
        writes: Sorted<(K, Option<V>)>,
    ) -> Result<u64, Conflict<K>> {
        let Self {
            shared,
            version,
            active,
        } = self;
        shared.commit(*version, active, reads, writes)
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

impl<K: Ord + Hash + Clone, V: Clone> Drop for Registration<K, V> {
    fn drop(&mut self) {
        if self.active {
            self.shared.release(self.version);
        }
    }
}

/// One field on cache lines of its own: two committers on different cores take the committer
/// lock, the state lock and the published number in turn, and each of these should move between
/// the cores alone, not drag the index's hasher or the `Arc`'s reference counts with it.
#[repr(align(64))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

pub(crate) struct Shared<K, V> {
    /// The latest version's entries by hash (see `index.rs`), written by committers before they
    /// publish.
    index: Line<Index<K, V>>,
    committer: Line<InternalMutex<CommitterState<K>>>,
    state: Line<InternalMutex<State<K, V>>>,
    publisher: Line<InternalMutex<Publisher<K, V>>>,
    /// The latest published version number: stored (Release) inside `state`'s critical section
    /// that publishes the version, after the index holds the writes of this version and every
    /// earlier one; loaded (Acquire) by [`Shared::get_latest`] before it asks the index.
    published: Line<SyncAtomicU64>,
    /// Commits asleep in `wait_for_turn`.
    #[cfg(not(loom))]
    turn_waiters: Line<std::sync::atomic::AtomicUsize>,
    // Plain counters; they order no other memory.
    read_only_commits: AtomicU64,
    conflicts: AtomicU64,
}

/// How many tombstones one commit may drop: bounds a commit's extra work while still draining
/// the queue faster than commits can fill it (a commit removes at most as many keys as it writes).
const TOMBSTONES_PER_COMMIT: usize = 64;

impl<K: Ord + Hash + Clone, V: Clone> Shared<K, V> {
    pub(crate) fn new() -> Self {
        let first = Arc::new(Version::built(0, OrdMap::new()));
        Self {
            state: Line(InternalMutex::new(State {
                latest: Arc::clone(&first),
                live: VecDeque::new(),
            })),
            publisher: Line(InternalMutex::new(Publisher {
                latest: first,
                unbuilt_versions: 0,
                unbuilt_writes: 0,
            })),
            committer: Line(InternalMutex::new(CommitterState {
                tombstones: VecDeque::new(),
                claimed: 0,
                commits: 0,
                in_flight: VecDeque::new(),
            })),
            index: Line(Index::new()),
            published: Line(SyncAtomicU64::new(0)),
            #[cfg(not(loom))]
            turn_waiters: Line(std::sync::atomic::AtomicUsize::new(0)),
            read_only_commits: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
        }
    }

    /// The latest committed value of `key`, without the state lock: the index answers for the
    /// published version read just before. If the key was written twice since (two commits
    /// published while this thread was between the load and the lookup), read again.
    ///
    /// Linearizable: the answer is the key's value at a version that was the latest at some
    /// moment of the call (the one loaded, or one published during the lookup), never at an
    /// unpublished one, so a commit's writes appear to these reads all at once.
    pub(crate) fn get_latest(&self, key: &K) -> Option<V> {
        loop {
            let at = self.published.load(Ordering::Acquire);
            if let Lookup::Known(value) = self.index.get_at(key, at) {
                return value;
            }
        }
    }

    /// Whether `key` has a value in the latest version (as [`Shared::get_latest`]).
    pub(crate) fn contains_latest(&self, key: &K) -> bool {
        loop {
            let at = self.published.load(Ordering::Acquire);
            if let Some(live) = self.index.contains_at(key, at) {
                return live;
            }
        }
    }

    /// The value of `key` at `version`, which a live snapshot stands on, if the index can tell.
    pub(crate) fn lookup_at(&self, key: &K, version: u64) -> Lookup<V> {
        self.index.get_at(key, version)
    }

    /// Whether `key` has a value at `version` (a live snapshot's), if the index can tell.
    pub(crate) fn contains_at(&self, key: &K, version: u64) -> Option<bool> {
        self.index.contains_at(key, version)
    }

    /// The latest version, without registering a snapshot.
    pub(crate) fn latest(&self) -> Arc<Version<K, V>> {
        Arc::clone(&self.state.lock().latest)
    }

    /// The latest version, registered as live until [`Shared::release`].
    pub(crate) fn acquire_latest(&self) -> Arc<Version<K, V>> {
        let mut state = self.state.lock();
        let latest = Arc::clone(&state.latest);
        state.retain(latest.number);
        latest
    }

    /// Registers one more snapshot of `version` (a clone of a live snapshot).
    pub(crate) fn retain(&self, version: u64) {
        self.state.lock().retain(version);
    }

    /// One snapshot of `version` is gone.
    pub(crate) fn release(&self, version: u64) {
        self.state.lock().release(version);
    }

    /// Validates and applies a transaction's writes. The transaction's snapshot `registration`
    /// is released only when the new version is published (or the commit fails): released
    /// earlier, a concurrent commit could drop a tombstone this validation needs and miss a
    /// conflict.
    fn commit(
        &self,
        snapshot_version: u64,
        registered: &mut bool,
        reads: &KeyMap<K, ()>,
        writes: Sorted<(K, Option<V>)>,
    ) -> Result<u64, Conflict<K>> {
        if writes.is_empty() {
            return self.commit_read_only(snapshot_version, registered, reads);
        }
        // 1. Reserve the written keys, in key order (so two commits never wait for each other
        //    in a cycle), each refused if written after the snapshot.
        let mut held = Hashes::default();
        let mut len_change = 0isize;
        for (at, (key, value)) in writes.as_slice().iter().enumerate() {
            let mut spin = SpinWait::new();
            let (hash, was_live) = loop {
                match self.index.reserve(key, snapshot_version) {
                    Reserve::Held { hash, was_live } => break (hash, was_live),
                    Reserve::Conflict(written_at) => {
                        self.unreserve(&writes.as_slice()[..at], &held);
                        return Err(self.refuse(snapshot_version, registered, key, written_at));
                    }
                    // Held by a commit that has passed this step: it writes or gives up without
                    // waiting for a reservation.
                    Reserve::Busy => wait(&mut spin),
                }
            };
            held.push(hash);
            len_change += match (value.is_some(), was_live) {
                (true, false) => 1,
                (false, true) => -1,
                _ => 0,
            };
        }
        // 2. Under the committer lock: validate the reads, claim the next number.
        let number = {
            let mut committer = self.committer.lock();
            let published = self.published.load(Ordering::Acquire);
            while committer
                .in_flight
                .front()
                .is_some_and(|&(version, _)| version <= published)
            {
                committer.in_flight.pop_front();
            }
            for key in reads.keys() {
                if writes
                    .as_slice()
                    .binary_search_by(|(written, _)| written.cmp(key))
                    .is_ok()
                {
                    continue; // validated by its reservation
                }
                let written_at = match self.index.check_read(key, snapshot_version) {
                    ReadCheck::Clear => continue,
                    ReadCheck::Written(written_at) => written_at,
                    // A claimed version will write it (before this one); a commit not yet
                    // claimed will come after this one, and is no conflict.
                    ReadCheck::Reserved(hash) => {
                        match committer.in_flight.iter().find(|&&(_, h)| h == hash) {
                            Some(&(version, _)) => version,
                            None => continue,
                        }
                    }
                };
                drop(committer);
                self.unreserve(writes.as_slice(), &held);
                return Err(self.refuse(snapshot_version, registered, key, written_at));
            }
            committer.claimed += 1;
            let number = committer.claimed;
            committer.commits += 1;
            for &hash in held.iter() {
                committer.in_flight.push_back((number, hash));
            }
            for (key, value) in writes.as_slice() {
                if value.is_none() {
                    committer.tombstones.push_back((number, key.clone()));
                }
            }
            if committer
                .tombstones
                .front()
                .is_some_and(|&(t, _)| t <= published)
            {
                let oldest_live = self.state.lock().oldest_live_except(snapshot_version);
                // Only published tombstones (their slots are written); snapshots registered
                // since `oldest_live` was read stand on a version at least `published`.
                drop_old_tombstones(
                    &self.index,
                    &mut committer.tombstones,
                    oldest_live,
                    published + 1,
                );
            }
            number
        };
        // 3. Write the reserved slots, stamped `number`, which no reader stands on before it is
        //    published below.
        for ((key, value), &hash) in writes.as_slice().iter().zip(held.iter()) {
            self.index.write_reserved(key, hash, value.clone(), number);
        }
        // 4. Publish in version order: after the version before this one.
        if self.published.load(Ordering::Acquire) != number - 1 {
            self.wait_for_turn(number);
        }
        let written = writes.len();
        let to_build = {
            // Only this commit publishes until it stores `number`: the lock is never contended
            // (but for `stats`), it only keeps the publisher's data out of the state lock, which
            // snapshots take.
            let mut publisher = self.publisher.lock();
            // Extend the latest version's delta unless it is being built by the commit that
            // made it.
            let pending = publisher
                .latest
                .successor_pending(publisher.unbuilt_versions > 0, writes);
            publisher.unbuilt_versions += 1;
            publisher.unbuilt_writes += written;
            let next = Arc::new(Version {
                number,
                len: publisher.latest.len.wrapping_add_signed(len_change),
                entries: OnceLock::new(),
                pending: std::sync::Mutex::new(Some(pending)),
            });
            {
                let mut state = self.state.lock();
                state.release(snapshot_version);
                *registered = false;
                // After the index holds this version's writes and every earlier one's.
                self.published.store(number, Ordering::Release);
                // Frees nothing: `publisher` still holds the replaced version.
                state.latest = Arc::clone(&next);
            }
            self.wake_next();
            // The replaced version is `next`'s base or a version standing on the same base
            // (dropping it frees at most its delta list, or the few nodes a reader's build of it
            // copied, never a whole map): let go of it first, so that `next` may hold the base's
            // last reference.
            drop(std::mem::replace(&mut publisher.latest, Arc::clone(&next)));
            let build = match next.pending().as_ref() {
                // Nothing else holds the base (see `Pending::build`): built in place, cheaply.
                Some(pending) if Arc::strong_count(&pending.base) == 1 => true,
                // Not while `base` is still being built by the commit that started it (another
                // thread): this build would wait for that one. The next commits keep extending
                // the delta instead.
                Some(pending) => {
                    (publisher.unbuilt_versions >= MATERIALIZE_EVERY
                        || publisher.unbuilt_writes >= MATERIALIZE_WRITES)
                        && pending.base.entries.get().is_some()
                }
                None => false,
            };
            if build {
                publisher.unbuilt_versions = 0;
                publisher.unbuilt_writes = 0;
            }
            build.then_some(next)
        };
        // `number` is published: the overwritten values need not stay in the index (older
        // snapshots find them in their own versions).
        for &hash in held.iter() {
            self.index.forget_prev(hash, number);
        }
        // Outside every lock: other commits go on while this one builds its version's ordered
        // map (in place, or path copies of the versions since the last build, the upper levels
        // copied once).
        if let Some(version) = to_build {
            version.entries();
        }
        Ok(number)
    }

    /// Waits until `number - 1` is published: spins a little, then sleeps until the publisher
    /// wakes it (a preempted predecessor may take a whole time slice).
    #[cold]
    fn wait_for_turn(&self, number: u64) {
        let mut spin = SpinWait::new();
        while self.published.load(Ordering::Acquire) != number - 1 {
            if spin.spin() {
                continue;
            }
            #[cfg(loom)]
            crate::loom::thread::yield_now();
            #[cfg(not(loom))]
            {
                self.turn_waiters.fetch_add(1, Ordering::SeqCst);
                let key = std::ptr::from_ref(&*self.published) as usize;
                // SAFETY: `key` is the address of `published`, which outlives every thread
                // parked on it (they hold a reference to this map); the closures neither panic
                // nor call into the parking lot.
                unsafe {
                    parking_lot_core::park(
                        key,
                        || self.published.load(Ordering::SeqCst) != number - 1,
                        || {},
                        |_, _| {},
                        parking_lot_core::DEFAULT_PARK_TOKEN,
                        None,
                    );
                }
                self.turn_waiters.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Wakes the commits waiting for their turn to publish, if any (after `published` moved).
    #[inline]
    fn wake_next(&self) {
        #[cfg(not(loom))]
        {
            // Pairs with the waiter's increment before its check of `published` (both
            // sequentially consistent): either it sees the new number or this sees it waiting.
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.turn_waiters.load(Ordering::SeqCst) > 0 {
                let key = std::ptr::from_ref(&*self.published) as usize;
                // SAFETY: as in `wait_for_turn`.
                unsafe {
                    parking_lot_core::unpark_all(key, parking_lot_core::DEFAULT_UNPARK_TOKEN);
                }
            }
        }
    }

    /// A transaction that wrote nothing: its reads are validated against the version published
    /// before they are looked up, which it returns (it comes after that version's writer).
    fn commit_read_only(
        &self,
        snapshot_version: u64,
        registered: &mut bool,
        reads: &KeyMap<K, ()>,
    ) -> Result<u64, Conflict<K>> {
        let at = self.published.load(Ordering::Acquire);
        for key in reads.keys() {
            if let Some(written_at) = self.index.written_at(key)
                && written_at > snapshot_version
            {
                return Err(self.refuse(snapshot_version, registered, key, written_at));
            }
        }
        self.read_only_commits.fetch_add(1, Ordering::Relaxed);
        self.release_registration(snapshot_version, registered);
        Ok(at)
    }

    /// Counts a refused commit and releases its snapshot.
    #[cold]
    fn refuse(
        &self,
        snapshot_version: u64,
        registered: &mut bool,
        key: &K,
        written_at: u64,
    ) -> Conflict<K> {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
        self.release_registration(snapshot_version, registered);
        Conflict {
            key: key.clone(),
            snapshot_version,
            committed_version: written_at,
        }
    }

    /// Gives up the reservations of `writes` (whose hashes are the first of `held`).
    #[cold]
    fn unreserve(&self, writes: &[(K, Option<V>)], held: &Hashes) {
        for ((key, _), &hash) in writes.iter().zip(held.iter()) {
            self.index.unreserve(key, hash);
        }
    }

    fn release_registration(&self, snapshot_version: u64, registered: &mut bool) {
        self.state.lock().release(snapshot_version);
        *registered = false;
    }

    pub(crate) fn stats(&self) -> MvccStats {
        let (tombstones, writing_commits) = {
            let committer = self.committer.lock();
            (committer.tombstones.len(), committer.commits)
        };
        let state = self.state.lock();
        let latest = state.latest.number;
        MvccStats {
            version: latest,
            keys: state.latest.len,
            commits: writing_commits + self.read_only_commits.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            live_versions: state.live.len()
                + usize::from(state.live.back().is_none_or(|&(last, _)| last != latest)),
            live_snapshots: state.live.iter().map(|&(_, count)| count).sum(),
            tombstones,
        }
    }
}

/// Drops tombstones that no live snapshot is old enough to need: a tombstone written at version
/// `t` matters only to a transaction whose snapshot is older than `t`. Tombstones live in the
/// index only (the ordered maps hold values alone).
fn drop_old_tombstones<K: Ord + Hash + Clone, V: Clone>(
    index: &Index<K, V>,
    queue: &mut VecDeque<(u64, K)>,
    oldest_live: Option<u64>,
    committing: u64,
) {
    for _ in 0..TOMBSTONES_PER_COMMIT {
        let Some((written_at, _)) = queue.front() else {
            return;
        };
        // This commit's own tombstones wait for a later commit: snapshots of `base`, which is
        // older than them, may be taken until it is published.
        if *written_at >= committing || oldest_live.is_some_and(|oldest| oldest < *written_at) {
            return;
        }
        let (written_at, key) = queue.pop_front().expect("front exists");
        // Only if the key was not written again since.
        index.remove_tombstone(&key, written_at);
    }
}

/// Waits a moment for another commit (to write a reserved key, or to publish the version before
/// this one): spins briefly, then yields.
#[cold]
fn wait(spin: &mut SpinWait) {
    if !spin.spin() {
        crate::loom::thread::yield_now();
    }
}

/// The hashes of a commit's written keys, in key order; the first inline (a one-key commit
/// allocates nothing for them).
#[derive(Default)]
struct Hashes {
    first: Option<u64>,
    rest: Vec<u64>,
}

impl Hashes {
    fn push(&mut self, hash: u64) {
        if self.first.is_none() {
            self.first = Some(hash);
        } else {
            self.rest.push(hash);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &u64> {
        self.first.iter().chain(self.rest.iter())
    }
}
