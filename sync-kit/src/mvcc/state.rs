//! The shared state of one map: the latest version (its number and its ordered map of keys),
//! the registrations of live snapshots and transactions, the hash index of the keys' entries,
//! the tombstone and trim queues, and the commit procedure.
//!
//! Registrations: a transaction registers the version it reads in its thread's slot, without a
//! lock (`registry.rs`); snapshots (which hold a version's ordered map) and the transactions
//! whose slot is taken register in the queue under `state`, counted in `Publication::queued`. A
//! commit stores its version as the published one, then reads the slots (Dekker's pattern,
//! `crate::loom::dekker`), and the queue only if that count is not zero.
//!
//! Two ways to commit:
//!
//! - **Alone** ([`Shared::commit_alone`], [`Index::overwrite_alone`]): a transaction registered
//!   in a slot that overwrites one key's live value (and read at most [`ALONE_READS`] keys)
//!   takes no lock but the shards of its keys, in shard order. Holding them, it validates its
//!   keys, pushes its write, takes its number and publishes it with one read-modify-write of
//!   the published version, reads the registrations, stamps and settles the entry. Readers of
//!   those keys wait for the shards; the others never see the unstamped write. Two such commits
//!   on disjoint keys share no lock, so they run side by side: what lets two threads commit
//!   faster in total than one.
//! - **Under the committer lock**: every other commit (several keys written, a key gaining or
//!   losing its value, a transaction registered in the queue). It takes `committer`, then
//!   excludes commits alone until it has published ([`Slots::exclude_alone`]: it sets
//!   `Exclusion::exclusive` and waits for the slots marked alone, Dekker's pattern against
//!   [`Slots::committing_alone`]), so that it runs as the only commit, as all commits did
//!   before: it numbers its version after the published one, and while it holds the lock the
//!   latest version cannot change.
//!
//! Locks, always taken in this order:
//!
//! - `committer`: held by one commit under the lock from validation to publication. The
//!   tombstone and trim queues, the commit counters and a second copy of the latest version's
//!   keys (so that a commit reads its base without the state lock) are theirs. Trims of the
//!   entries take their shards' mutexes after it is released (`entry.rs`). Commits alone take it
//!   only with `try_lock`, after they published, to drain its queues when
//!   `Exclusion::housekeeping` says they hold something no registration needs any more. Before
//!   taking it, a one-key commit reads its key's entry and allocates a node for its write if
//!   another commit holds the lock at that moment (`is_locked`, one load; the shard's mutex
//!   alone, as a reader takes it), so that the other committers do not wait for that cache miss
//!   and allocation.
//! - An index shard's mutex (`index.rs`): one at a time, but for a commit alone, which takes
//!   the shards of its keys in shard order.
//! - A version's `pending` mutex, then `state`: the latest version's keys and the queued
//!   registrations. `state` is held only to copy or swap an `Arc`, store the published version
//!   number, update a counter and copy the queued versions (a few numbers), never across
//!   validation, the entries' writes, the build of a version's ordered map or the freeing of an
//!   old one, so snapshots and reads never wait for a commit's work. A commit that changes the
//!   keys takes it once, to swap in its version and publish it; a commit that only overwrites
//!   values, only to read the queue when a snapshot is registered.
//! - A slot's queue of entries kept by its commits alone (`Shared::kept_alone`): taken alone by
//!   commits alone, after `committer` by commits under the lock.
//!
//! No path takes two of these the other way; readers take a shard or `state` alone. A version's
//! `pending` is a `std` mutex and its map a `std` `OnceLock`, not loom's: neither is ever held
//! across a loom operation (a build only takes, clones and changes `imbl` maps), so under loom
//! they can neither block nor be interleaved, and loom still explores every interleaving of the
//! atomics and internal mutexes around them.
//!
//! While a commit holds `committer` and excludes commits alone, the latest version cannot
//! change, so the version it validated against is the one it replaces; if that is still the
//! transaction's own snapshot version, nothing was committed since the transaction began and
//! there is nothing to validate. Loom models `write_skew_is_refused_between_commits_alone`,
//! `write_skew_is_refused_between_a_commit_alone_and_one_under_the_lock` and
//! `commits_alone_are_seen_in_version_order`.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};

use imbl::OrdMap;

use super::MvccStats;
use super::entry::{Entry, Spare};
use super::index::{ALONE_READS, Alone, Index, KeyChange};
use super::registry::Slots;
use super::transaction::{Conflict, KeyMap, Sorted};
use crate::loom::InternalMutex;
use crate::loom::atomic::{AtomicBool, AtomicU64 as SyncAtomicU64, AtomicUsize, Ordering};
use crate::loom::dekker;

/// The keys of one or more versions of the map: the number of the version that last changed
/// which keys have a value, the live key count, and the ordered map of the live keys with their
/// entries (tombstones are not in it: only the index needs those, for validation). A commit that
/// only overwrites values publishes a new version number on the same `Version` (the entries hold
/// the values by version), so a snapshot is a version number plus an `Arc` of this.
///
/// A commit that does change the keys does not path-copy the latest `OrdMap` of the whole map
/// before publishing. Its version records the last built version (`base`) and the keys that
/// gained or lost a value since (`delta`, a short sorted list, a one-key commit's inline), and its
/// map is built from them once (`OnceLock`):
///
/// | state | `entries` | `pending` | what moves it on |
/// |---|---|---|---|
/// | unbuilt | empty | `Some(base, delta)` | the first `entries()`: the committing thread right after publishing (below), or an ordered read |
/// | being built | initializing | `None` (taken) | that call; other callers wait for it |
/// | built | set | `None` | nothing; a successor's build may take the map whole (`into_entries`) once no one else holds this version |
///
/// The build is `base`'s map plus `delta` ([`Pending::build`]). Once the commit has published
/// its version, if no live snapshot or transaction stands on `base` or a later version (read in
/// the publishing critical section: then nothing but the new version holds `base`, the usual
/// case when no snapshot lives across commits) and `base` is built, it builds its version
/// itself, outside the locks, taking `base`'s map and changing it in place: a B-tree descent per
/// inserted or removed key, no node copied (if a passing handle such as
/// [`MvccMap::len`](super::MvccMap::len)'s still holds `base`, the build copies the path
/// instead: `Arc::try_unwrap` decides, never the check). If a snapshot holds `base`, the commit
/// leaves its version unbuilt and the next commits extend the delta (merging their changes into
/// a copy of it) until `base` is free again, or until [`MATERIALIZE_EVERY`] versions (or
/// [`MATERIALIZE_WRITES`] changed keys) are pending: then the committing thread builds its
/// version by path copy, one copy of the upper levels for all of them.
///
/// Invariant: an unbuilt version's `base` is built or being built, and no version refers to an
/// older one other than its `base`; a version's map (or `base` plus `delta`) is exactly the live
/// keys of every version number published on it; a map is changed in place only by the build
/// that holds the last reference to the version that owned it, which no one can reach any more
/// (it is not the latest version). The values are not here: an overwritten value is freed by the
/// trims of its entry (`entry.rs`), never by a build.
pub(crate) struct Version<K, V> {
    pub(crate) number: u64,
    /// Live (non-tombstone) keys.
    pub(crate) len: usize,
    entries: OnceLock<Entries<K, V>>,
    /// Until `entries` is built: the last built version before it and the changes since. Taken
    /// (and the link to `base` dropped) by the build. Locked inside `entries`' initialization,
    /// which runs once, and by the commits (under the committer lock) that decide whether to
    /// build it or extend its delta: never held across anything else, and its lock order is
    /// committer, then this.
    pending: std::sync::Mutex<Option<Pending<K, V>>>,
}

/// A version's live keys in order, each with its entry (the key's values by version).
pub(crate) type Entries<K, V> = OrdMap<K, Arc<Entry<K, V>>>;

/// The changes of a version's keys since another version: sorted by key, one entry per key
/// that gained a value (with its entry) or lost it (`None`) since then.
type Delta<K, V> = Sorted<KeyChange<K, V>>;

struct Pending<K, V> {
    base: Arc<Version<K, V>>,
    /// The keys that gained or lost a value since `base`.
    delta: Delta<K, V>,
}

impl<K: Ord + Hash + Clone, V: Clone> Pending<K, V> {
    /// `base`'s entries plus `delta`. When this is the last reference to `base` (no snapshot,
    /// transaction or other unbuilt version holds it, and nothing can reach it any more: it is
    /// not the latest version), its map is taken and changed in place, so that only the nodes it
    /// still shares with older live versions are copied; otherwise `base`'s map is cloned (O(1))
    /// and the writes path-copy it. `base` is built, or being built by the commit that made it
    /// (then it is shared, and `entries` waits for that build).
    fn build(self) -> Entries<K, V> {
        let Pending { base, delta } = self;
        let mut entries = match Arc::try_unwrap(base) {
            Ok(base) => base.into_entries(),
            Err(base) => base.entries().clone(),
        };
        match delta {
            Sorted::One((key, value)) => apply(&mut entries, key, value),
            Sorted::Many(delta) => {
                for (key, value) in delta {
                    apply(&mut entries, key, value);
                }
            }
        }
        entries
    }
}

/// Adds `key` with its entry to `entries` (`None`: removes it).
fn apply<K: Ord + Clone, V>(entries: &mut Entries<K, V>, key: K, entry: Option<Arc<Entry<K, V>>>) {
    match entry {
        Some(entry) => {
            entries.insert(key, entry);
        }
        None => {
            entries.remove(&key);
        }
    }
}

impl<K: Ord + Hash + Clone, V: Clone> Version<K, V> {
    fn built(number: u64, entries: Entries<K, V>) -> Self {
        Self {
            number,
            len: entries.len(),
            entries: OnceLock::from(entries),
            pending: std::sync::Mutex::new(None),
        }
    }

    /// This version's entries in key order, built on first use (see the type's documentation).
    pub(crate) fn entries(&self) -> &Entries<K, V> {
        self.entries.get_or_init(|| {
            let pending = self
                .pending()
                .take()
                .expect("an unbuilt version keeps its base and writes");
            pending.build()
        })
    }

    /// This version's entries, owned: taken if built, else built from its base and writes.
    fn into_entries(self) -> Entries<K, V> {
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

    fn pending(&self) -> std::sync::MutexGuard<'_, Option<Pending<K, V>>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What a version committed on this one with the (sorted) writes `fresh` is built from:
    /// this one's base and its delta merged with `fresh` while this one is unbuilt and `extend`
    /// (its build not started), else this version and `fresh`.
    fn successor_pending(self: &Arc<Self>, extend: bool, fresh: Delta<K, V>) -> Pending<K, V> {
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

    /// Whether this version's ordered map is built (not unbuilt, nor being built).
    fn is_built(&self) -> bool {
        self.entries.get().is_some()
    }
}

/// A new latest version's keys, and the version they replaced as the latest.
type Replacement<K, V> = (Arc<Version<K, V>>, Arc<Version<K, V>>);

/// What a commit learns when it publishes its version.
struct Published<K, V> {
    /// The new version's keys and the version they replaced as the latest (`None`: the keys
    /// did not change).
    next: Option<Replacement<K, V>>,
    /// Whether a live snapshot or transaction stands on the version `next` is built from, or
    /// a later one.
    held: bool,
    /// With `next`: whether the version it is to be built from is built, and how many keys
    /// gained or lost a value since that version.
    build: Option<(bool, usize)>,
    /// The oldest version a live registration stood on, committing transactions included
    /// (for the tombstones: validations need them).
    oldest: Option<u64>,
}

/// A version's live key count after a write of one key (`live`: a value, not a removal) that
/// found the key live or not.
fn live_after(len: usize, live: bool, was_live: bool) -> usize {
    match (live, was_live) {
        (true, false) => len + 1,
        (false, true) => len - 1,
        _ => len,
    }
}

/// The sorted union of `older` and `newer` (both sorted, one entry per key), `newer` winning.
fn merge<K: Ord + Clone, V>(older: &[KeyChange<K, V>], newer: Delta<K, V>) -> Vec<KeyChange<K, V>> {
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
    /// The latest version's keys: the version that last changed which keys have a value (its
    /// `number` may be older than the latest: commits that only overwrite values publish a new
    /// number on the same key set, without this lock).
    latest: Arc<Version<K, V>>,
    /// (version number, how many live snapshots and queued transactions stand on it), in
    /// version order, counts above zero. A snapshot registers at the latest version, which is
    /// at the back or goes there, and most are released at the back or the front: no
    /// allocation once the deque has grown, no search for the common cases. Transactions
    /// register here only when their thread's slot is taken (`registry.rs`).
    live: VecDeque<(u64, usize)>,
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
        // Most releases are of the newest or the oldest live version: no search.
        let at = match (self.live.front(), self.live.back()) {
            (_, Some(&(last, _))) if last == version => Ok(self.live.len() - 1),
            (Some(&(first, _)), _) if first == version => Ok(0),
            _ => self.live.binary_search_by_key(&version, |&(v, _)| v),
        };
        if let Ok(at) = at {
            let count = &mut self.live[at].1;
            *count -= 1;
            if *count == 0 {
                if at + 1 == self.live.len() {
                    self.live.pop_back();
                } else {
                    self.live.remove(at);
                }
            }
        }
    }

    /// Whether a live snapshot or transaction stands on `version` or a later one.
    fn holds_since(&self, version: u64) -> bool {
        self.live.back().is_some_and(|&(last, _)| last >= version)
    }
}

/// What only committers touch (under `Shared::committer`).
struct CommitterState<K, V> {
    /// The latest version's keys, as in `State::latest` (only committers replace it): a commit
    /// reads its base here without taking the state lock.
    latest: Arc<Version<K, V>>,
    /// Transactions committed (read-only ones included) and refused.
    commits: u64,
    conflicts: u64,
    /// Removed keys in commit order, with the version that removed them.
    tombstones: VecDeque<(u64, K)>,
    /// Entries that kept writes older than their newest for live snapshots when a commit
    /// published, with that commit's version, in commit order: trimmed (after a later commit's
    /// lock) once no live snapshot is older than that version.
    trims: VecDeque<(u64, Arc<Entry<K, V>>)>,
    /// The versions live registrations stood on at the running commit's publication
    /// (ascending; kept here to reuse the allocation).
    live: Vec<u64>,
    /// Hashes of the keys the running commit wrote, whose entries are trimmed once it is
    /// published (kept here to reuse the allocation).
    written: Vec<u64>,
    /// Versions committed, and keys they wrote, since the last one whose build a commit started.
    unbuilt_versions: u64,
    unbuilt_writes: usize,
}

/// A live snapshot's or transaction's claim on its version; released on drop unless a commit
/// released it.
pub(crate) struct Registration<K: Ord + Hash + Clone, V: Clone> {
    pub(crate) shared: Hold<K, V>,
    pub(crate) version: u64,
    claim: Claim,
}

/// A registration's hold on the map's shared state: a reference count of its own (snapshots,
/// transactions in the queue), or its slot's lease (transactions in a slot).
///
/// A slot's *lease* is one reference count taken by the first transaction that registers in
/// the slot and kept there, so that the next ones need not take one: a transaction that
/// began and ended changed no line that the other threads' transactions change too (the `Arc`'s
/// counts). The map's handles (`MvccMap` and its clones) are counted apart
/// ([`Shared::handles`]); when the last one is dropped, no transaction can begin any more, and
/// the leases are given back ([`Shared::orphan_leases`]): at once for free slots, and by the
/// transaction's release for a slot in use (Dekker's pattern between the two: the releaser
/// stores `FREE` then loads `orphaned`, the last handle stores `orphaned` then loads the slot).
pub(crate) struct Hold<K, V> {
    shared: std::ptr::NonNull<Shared<K, V>>,
    /// Whether this hold owns a reference count (else it stands on its slot's lease).
    owned: bool,
}

// SAFETY: a `Hold` is a reference-counted pointer to the map's state, like the `Arc` it stands
// for; it is `Send` and `Sync` exactly when that `Arc` would be.
unsafe impl<K, V> Send for Hold<K, V> where Arc<Shared<K, V>>: Send {}
// SAFETY: as above.
unsafe impl<K, V> Sync for Hold<K, V> where Arc<Shared<K, V>>: Sync {}

impl<K, V> Hold<K, V> {
    /// A hold that owns a reference count of its own (given back by `Registration::drop`).
    fn owned(shared: &Arc<Shared<K, V>>) -> Self {
        let pointer = Arc::into_raw(Arc::clone(shared)).cast_mut();
        Self {
            shared: std::ptr::NonNull::new(pointer).expect("an Arc is never null"),
            owned: true,
        }
    }

    fn leased(shared: &Arc<Shared<K, V>>) -> Self {
        Self {
            shared: std::ptr::NonNull::from(&**shared),
            owned: false,
        }
    }
}

impl<K, V> Hold<K, V> {
    /// A hold of the same state that owns a reference count of its own.
    fn another(&self) -> Self {
        // SAFETY: the state is alive (this hold); the count taken is owned by the new hold.
        unsafe { Arc::increment_strong_count(self.shared.as_ptr().cast_const()) };
        Self {
            shared: self.shared,
            owned: true,
        }
    }
}

impl<K, V> std::ops::Deref for Hold<K, V> {
    type Target = Shared<K, V>;
    fn deref(&self) -> &Shared<K, V> {
        // SAFETY: the state lives while this hold does: it owns a reference count, or its
        // registration's slot holds a lease that is given back only by that registration's
        // release (`Registration::drop`, which ends with it).
        unsafe { self.shared.as_ref() }
    }
}

/// Where a registration is recorded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// In this slot of the map's `Slots` (transactions only).
    Slot(usize),
    /// In the state lock's queue, `State::live`.
    Queue,
    /// Released (by the commit that published the transaction's writes).
    Released,
}

impl<K: Ord + Hash + Clone, V: Clone> Registration<K, V> {
    /// Registers a snapshot of the latest version, returning its keys.
    pub(crate) fn latest(shared: &Arc<Shared<K, V>>) -> (Self, Arc<Version<K, V>>) {
        let (keys, number) = shared.acquire_latest();
        let registration = Self {
            shared: Hold::owned(shared),
            version: number,
            claim: Claim::Queue,
        };
        (registration, keys)
    }

    /// Registers a transaction at the latest version (its reads need no ordered map): in its
    /// thread's slot, without a lock, or else in the queue.
    pub(crate) fn begin(shared: &Arc<Shared<K, V>>) -> Self {
        let (claim, version, hold) = match shared.slots.claim(&shared.publication.published) {
            Some((slot, version)) => {
                shared
                    .slots
                    .lease(slot, || Arc::into_raw(Arc::clone(shared)).cast());
                (Claim::Slot(slot), version, Hold::leased(shared))
            }
            None => (
                Claim::Queue,
                shared.register_queued(&mut shared.state.lock()),
                Hold::owned(shared),
            ),
        };
        Self {
            shared: hold,
            version,
            claim,
        }
    }

    /// Registers one more snapshot of the same version.
    pub(crate) fn duplicate(&self) -> Self {
        self.shared.retain(self.version);
        Self {
            shared: self.shared.another(),
            version: self.version,
            claim: Claim::Queue,
        }
    }
}

/// The slot a registration is recorded in, if it is.
fn own_slot(claim: &Claim) -> Option<usize> {
    match *claim {
        Claim::Slot(slot) => Some(slot),
        _ => None,
    }
}

impl Claim {
    /// Ends the registration of `version` if it is in the queue; `state`: the state lock, if
    /// the caller holds it. A registration in a slot ends when it is dropped (its commit leaves
    /// it out of the live versions meanwhile).
    fn release_queued<K: Ord + Hash + Clone, V: Clone>(
        &mut self,
        shared: &Shared<K, V>,
        version: u64,
        state: Option<&mut State<K, V>>,
    ) {
        if *self == Claim::Queue {
            *self = Claim::Released;
            match state {
                Some(state) => shared.release_queued(state, version),
                None => shared.release(version),
            }
        }
    }
}

impl<K: Ord + Hash + Clone, V: Clone> Drop for Registration<K, V> {
    fn drop(&mut self) {
        // The last use of the shared state, unless this hold owns a count: a lease given back
        // here may be its last reference.
        let lease = match self.claim {
            Claim::Slot(slot) => self.shared.slots.release(slot, &self.shared.orphaned),
            Claim::Queue | Claim::Released => {
                self.claim.release_queued(&self.shared, self.version, None);
                None
            }
        };
        if self.shared.owned {
            // SAFETY: this hold owns one reference count (`Hold::owned`, `Hold::another`), given
            // back once.
            drop(unsafe { Arc::from_raw(self.shared.shared.as_ptr().cast_const()) });
        }
        if let Some(lease) = lease {
            // SAFETY: a lease is a reference count made by `Arc::into_raw` in `begin`, and
            // `Slots::release` hands it over once (see `Hold`).
            drop(unsafe { Arc::from_raw(lease.cast::<Shared<K, V>>()) });
        }
    }
}

/// The map's shared state. Laid out in cache lines by who writes them, so that a line written
/// on every commit does not also hold what every read needs: the `Arc`'s counts (changed by
/// every transaction's begin and end) on the line before `index` and `slots` (read-only after
/// creation), then the publication, the committer and the state lock, each on lines of its own.
#[repr(C)]
pub(crate) struct Shared<K, V> {
    /// The latest version's entries by hash (see `index.rs`), written by committers before they
    /// publish.
    index: Line<Index<K, V>>,
    /// The transactions registered without a lock (`registry.rs`).
    slots: Slots,
    publication: Line<Publication>,
    /// Read by every commit alone, written by commits under the lock alone.
    exclusion: Line<Exclusion>,
    /// How many `MvccMap` handles share this state (see [`Hold`]).
    handles: AtomicUsize,
    /// Set when the last handle is dropped: the slots' leases are given back (see [`Hold`]).
    orphaned: AtomicBool,
    committer: Line<InternalMutex<CommitterState<K, V>>>,
    state: Line<InternalMutex<State<K, V>>>,
    /// Per slot, the entries that commits alone of its transactions left with older writes for
    /// live readers, with their versions, in commit order (as `CommitterState::trims`): trimmed
    /// by the slot's later commits alone, or by commits under the committer lock.
    kept_alone: Box<[KeptAlone<K, V>]>,
}

/// Entries that keep writes older than their newest for live readers, each with the version
/// whose commit left them so, in commit order.
type Trims<K, V> = VecDeque<(u64, Arc<Entry<K, V>>)>;

/// One slot's [`Trims`] of its commits alone, on a line of its own.
#[repr(align(64))]
struct KeptAlone<K, V> {
    entries: InternalMutex<Trims<K, V>>,
    /// Whether `entries` holds any (written with it locked, read without: the slot's commits
    /// alone, which alone add to it, skip the lock when it is empty and they add nothing).
    any: AtomicBool,
}

impl<K, V> KeptAlone<K, V> {
    fn new() -> Self {
        Self {
            entries: InternalMutex::new(VecDeque::new()),
            any: AtomicBool::new(false),
        }
    }

    /// Takes up to `limit` entries kept at versions that `eligible` accepts into `to_trim`,
    /// adding `kept` first.
    fn take(
        &self,
        kept: Option<(u64, Arc<Entry<K, V>>)>,
        limit: usize,
        eligible: impl Fn(u64) -> bool,
        to_trim: &mut Vec<Arc<Entry<K, V>>>,
    ) {
        if kept.is_none() && !self.any.load(Ordering::Relaxed) {
            return;
        }
        let mut entries = self.entries.lock();
        entries.extend(kept);
        while to_trim.len() < limit
            && let Some(&(kept_at, _)) = entries.front()
            && eligible(kept_at)
        {
            to_trim.extend(entries.pop_front().map(|(_, entry)| entry));
        }
        self.any.store(!entries.is_empty(), Ordering::Relaxed);
    }
}

/// What a commit writes (`published`) and then reads (`queued`) to publish a version, on one
/// line.
struct Publication {
    /// The latest published version number: stored (Release) by the commit that publishes the
    /// version, under the committer lock, after the index holds its writes (and, when the
    /// version changes the keys, inside `state`'s critical section that swaps in its `Version`);
    /// loaded (Acquire) by [`Shared::get_latest`] before it asks the index, and by registrations.
    published: SyncAtomicU64,
    /// How many registrations `State::live` counts: changed under `state`, read by commits
    /// that publish without it (after they store the version: a snapshot increments this before
    /// it loads the version it registers at, as a slot's claim stores before it loads; both with
    /// `dekker`'s orderings).
    queued: AtomicUsize,
}

impl<K, V> Shared<K, V> {
    /// One more `MvccMap` handle shares this state.
    pub(crate) fn add_handle(&self) {
        self.handles.fetch_add(1, Ordering::Relaxed);
    }

    /// One `MvccMap` handle is dropped; the last one gives the slots' leases back (see
    /// [`Hold`]): no transaction can begin any more, and those still live give theirs back
    /// when they end. The caller still holds its own reference count, so this state outlives
    /// the call.
    pub(crate) fn drop_handle(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        self.orphaned.store(true, dekker::STORE);
        dekker::fence();
        for slot in 0..self.slots.len() {
            if let Some(lease) = self.slots.take_lease_if_free(slot) {
                // SAFETY: a lease is a reference count made by `Arc::into_raw` in `begin`,
                // handed over once; the caller's own count keeps `self` alive.
                drop(unsafe { Arc::from_raw(lease.cast::<Self>()) });
            }
        }
    }
}

/// A value starting a cache line of its own.
#[repr(align(64))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// How many times a commit polls the committer lock before it waits as for any lock (a few
/// microseconds; 2,000 measured no better than 200).
const COMMITTER_POLLS: u32 = 200;

/// How many tombstones one commit may drop: bounds a commit's extra work while still draining
/// the queue faster than commits can fill it (a commit removes at most as many keys as it writes).
const TOMBSTONES_PER_COMMIT: usize = 64;

impl<K: Ord + Hash + Clone, V: Clone> Shared<K, V> {
    pub(crate) fn new() -> Self {
        let first = Arc::new(Version::built(0, OrdMap::new()));
        let slots = Slots::new();
        let slots_len = slots.len();
        Self {
            state: Line(InternalMutex::new(State {
                latest: Arc::clone(&first),
                live: VecDeque::new(),
            })),
            slots,
            publication: Line(Publication {
                published: SyncAtomicU64::new(0),
                queued: AtomicUsize::new(0),
            }),
            exclusion: Line(Exclusion {
                exclusive: AtomicBool::new(false),
                housekeeping: SyncAtomicU64::new(Exclusion::NONE),
            }),
            kept_alone: (0..slots_len).map(|_| KeptAlone::new()).collect(),
            handles: AtomicUsize::new(1),
            orphaned: AtomicBool::new(false),
            committer: Line(InternalMutex::new(CommitterState {
                latest: first,
                commits: 0,
                conflicts: 0,
                tombstones: VecDeque::new(),
                trims: VecDeque::new(),
                live: Vec::new(),
                written: Vec::new(),
                unbuilt_versions: 0,
                unbuilt_writes: 0,
            })),
            index: Line(Index::new()),
        }
    }

    /// The latest committed value of `key`, without the state lock: the index answers for the
    /// published version read just before. If the key was written twice since (two commits
    /// published while this thread was between the load and the lookup), read again.
    ///
    /// Linearizable: the answer is the key's value at a version that was the latest at some
    /// moment of the call (the one loaded, or one published during the lookup), never at an
    /// unpublished one, so a commit's writes appear to these reads all at once.
    pub(crate) fn get_latest<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index.get_latest(key, &self.publication.published)
    }

    /// Whether `key` has a value in the latest version (as [`Shared::get_latest`]).
    pub(crate) fn contains_latest<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index.contains_latest(key, &self.publication.published)
    }

    /// The value of `key` at `version`, which a live snapshot of the caller's stands on.
    pub(crate) fn get_at<Q>(&self, key: &Q, version: u64) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index.get_at(key, version)
    }

    /// Whether `key` has a value at `version` (a live snapshot's of the caller).
    pub(crate) fn contains_at<Q>(&self, key: &Q, version: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index.contains_at(key, version)
    }

    /// The value `entry` (from the ordered map of a version a live snapshot of the caller's
    /// stands on) has at that version, `at`.
    ///
    /// # Safety
    ///
    /// As [`Index::value_at`].
    pub(crate) unsafe fn value_at<'a>(&self, entry: &'a Entry<K, V>, at: u64) -> Option<&'a V> {
        // SAFETY: the caller's contract.
        unsafe { self.index.value_at(entry, at) }
    }

    /// The latest version, without registering a snapshot.
    pub(crate) fn latest(&self) -> Arc<Version<K, V>> {
        Arc::clone(&self.state.lock().latest)
    }

    /// The latest version number, and its keys.
    pub(crate) fn latest_number(&self) -> u64 {
        self.publication.published.load(Ordering::Acquire)
    }

    /// The latest version's keys and number, registered in the queue as live until
    /// [`Shared::release`].
    pub(crate) fn acquire_latest(&self) -> (Arc<Version<K, V>>, u64) {
        let mut state = self.state.lock();
        let number = self.register_queued(&mut state);
        // Under the state lock, `latest` holds this version's keys: the commits that change
        // the keys swap it in and publish inside this lock, the others publish a number on the
        // same keys.
        (Arc::clone(&state.latest), number)
    }

    /// Records a registration at the latest version in the queue (`state` is the locked state)
    /// and returns that version.
    fn register_queued(&self, state: &mut State<K, V>) -> u64 {
        // As a slot's claim (`registry.rs`): counted before the version is read, so that a
        // commit that publishes a later one without the state lock either sees the count (and
        // then takes the lock to read the queue) or is seen here.
        let queued = &self.publication.queued;
        queued.store(queued.load(Ordering::Relaxed) + 1, dekker::STORE);
        dekker::fence();
        let number = self.publication.published.load(dekker::LOAD);
        state.retain(number);
        number
    }

    /// Registers one more snapshot of `version` (a clone of a live snapshot: already counted
    /// by every commit that could drop what it reads).
    pub(crate) fn retain(&self, version: u64) {
        let mut state = self.state.lock();
        // Every change of the count holds the state lock: a load and a store, no read-modify-write.
        let queued = &self.publication.queued;
        queued.store(queued.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        state.retain(version);
    }

    /// One queued registration of `version` is gone.
    pub(crate) fn release(&self, version: u64) {
        self.release_queued(&mut self.state.lock(), version);
    }

    fn release_queued(&self, state: &mut State<K, V>, version: u64) {
        state.release(version);
        let queued = &self.publication.queued;
        queued.store(queued.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
    }

    /// The versions live registrations still read values at, ascending and without repeats,
    /// into `live` (cleared first): the slots' (but committing transactions' and the slot
    /// `own`), and the queue's if `state` is given or the queue is not empty. Returns the oldest
    /// version a live registration stands on, committing transactions included. A commit calls
    /// this after it published its version (`dekker::STORE`, then `dekker::fence`).
    fn live_versions(
        &self,
        own: Option<usize>,
        state: Option<&State<K, V>>,
        live: &mut Vec<u64>,
    ) -> Option<u64> {
        live.clear();
        let oldest_in_slots = self.slots.collect(own, live);
        let queued = |live: &mut Vec<u64>, state: &State<K, V>| {
            live.extend(state.live.iter().map(|&(version, _)| version));
            state.live.front().map(|&(version, _)| version)
        };
        let oldest_queued = match state {
            Some(state) => queued(live, state),
            None if self.publication.queued.load(dekker::LOAD) > 0 => {
                queued(live, &self.state.lock())
            }
            None => None,
        };
        if live.len() > 1 {
            live.sort_unstable();
            live.dedup();
        }
        match (oldest_in_slots, oldest_queued) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Validates and applies a transaction's writes. The transaction's snapshot `registration`
    /// is released only when the new version is published (or the commit fails): released
    /// earlier, a concurrent commit could drop a tombstone this validation needs and miss a
    /// conflict.
    pub(crate) fn commit(
        registration: &mut Registration<K, V>,
        reads: &KeyMap<K, ()>,
        writes: Sorted<(K, Option<V>)>,
    ) -> Result<u64, Conflict<K>> {
        // The registration's own handle on the map: no `Arc` clone of it for the commit.
        let this: &Self = &registration.shared;
        let claim = &mut registration.claim;
        let snapshot_version = registration.version;
        let mut writes = writes;
        let alone = matches!(writes, Sorted::One((_, Some(_)))) && reads.len() <= ALONE_READS;
        if let Claim::Slot(slot) = *claim {
            // The transaction reads no more values: the commits before this one need not keep
            // those it could have read (`registry.rs`), whichever way it commits.
            if alone && this.slots.try_alone(slot) {
                // An overwrite of one key's value needs no order but its number's, and its
                // shards: committed alone, without the committer lock, unless a commit under
                // it runs or the key has no value (then under the lock, the slot committing).
                if this.slots.committing_alone(slot, &this.exclusion.exclusive) {
                    let Sorted::One((key, Some(value))) = writes else {
                        unreachable!("matched above")
                    };
                    match this.commit_alone(slot, snapshot_version, reads, key, value) {
                        Ok(result) => return result,
                        Err((key, value)) => writes = Sorted::One((key, Some(value))),
                    }
                }
            } else {
                this.slots.committing(slot);
            }
        }
        // What can be done before the committer lock is, so that other committers do not wait
        // for it: if another thread has a transaction live or a commit holds the lock now
        // (others are likely to wait for this commit), the written key's entry, read below
        // under the lock, is brought into the cache (a miss or two: the table's bucket and the
        // entry) before the lock, and the node for the write is allocated. A lone committer
        // skips that lookup (its shard lock and unlock are two atomic read-modify-writes, and
        // the misses are the same). Reading the other slots brings them into the cache too,
        // for the publication.
        let mut spare = None;
        if let Sorted::One((key, _)) = &writes
            && (this.slots.others_busy(own_slot(claim)) || this.committer.is_locked())
        {
            let _ = this.index.written_at(key);
            spare = Some(Spare::new());
        }
        // Commits come back for the lock at once and hold it for about 100 ns: a waiter polls
        // it a while rather than park (`InternalMutex::lock_polling`).
        let mut guard = this.committer.lock_polling(COMMITTER_POLLS);
        let committer = &mut *guard;
        // No commit alone runs from here until `exclusive` is dropped, after the publication
        // and before the lock is released.
        let exclusive = Exclusive::new(&this.slots, &this.exclusion.exclusive);
        // Only this commit can replace `latest` or publish until it releases `committer`.
        let base_number = this.publication.published.load(Ordering::Acquire);
        // The index holds every key's newest write, all published while `committer` is held:
        // one hash lookup per key instead of a walk down the ordered map. If nothing was
        // committed since the transaction's snapshot, nothing it read or wrote has changed.
        // A one-key commit validates its written key when it writes it (one lookup, not two).
        let check = (snapshot_version != base_number).then_some(snapshot_version);
        let written_keys = match &writes {
            Sorted::One(_) => &[],
            Sorted::Many(writes) => writes.as_slice(),
        };
        if check.is_some()
            && let Err(conflict) = this.validate(
                snapshot_version,
                reads.keys().chain(written_keys.iter().map(|(key, _)| key)),
            )
        {
            committer.conflicts += 1;
            return Err(conflict);
        }
        if writes.is_empty() {
            committer.commits += 1;
            claim.release_queued(this, snapshot_version, None);
            return Ok(base_number);
        }
        let number = base_number + 1;
        // Extend `base`'s delta while `base` is unbuilt (no commit decided to build it).
        let extend = committer.unbuilt_versions > 0;
        let base = &committer.latest;
        let mut live = std::mem::take(&mut committer.live);
        // Publishes the version with `len` live keys whose keys changed from `base` by `delta`:
        // releases the transaction's registration, publishes the number (and swaps in the new
        // keys, if they changed, under the state lock). Returns what the commit learns, and the
        // versions live registrations stand on then.
        let publish = move |len: usize, delta: Delta<K, V>| {
            let changed_keys = delta.len();
            // No key gained or lost a value (each write overwrote a value, in its key's entry):
            // the new version has `base`'s keys and entries, and publishes only its number.
            // Nothing to allocate, swap or build.
            let next = if delta.is_empty() && base.is_built() {
                debug_assert_eq!(len, base.len);
                None
            } else {
                let pending = base.successor_pending(extend, delta);
                // Built, or being built by a reader (then this build would wait for that one:
                // the next commits extend the delta instead).
                let from = (pending.base.number, pending.base.is_built());
                let next = Arc::new(Version {
                    number,
                    len,
                    entries: OnceLock::new(),
                    pending: std::sync::Mutex::new(Some(pending)),
                });
                Some((next, from))
            };
            // The published number is stored after the index holds this version's writes (the
            // shard mutexes order them before), and ordered before the reads of the registrations
            // (`registry.rs`): from here on they stand on `number` or later, or are counted in
            // `live`. The transaction's own registration is not counted: a queued one is released
            // first, one in a slot left out (and released once the lock is).
            let published = match next {
                None => {
                    // A registration in a slot is left out of the live versions instead, and
                    // released once the lock is (its slot's line need not move under it).
                    let own = own_slot(claim);
                    if own.is_none() {
                        claim.release_queued(this, snapshot_version, None);
                    }
                    this.publication.published.store(number, dekker::STORE);
                    dekker::fence();
                    let oldest = this.live_versions(own, None, &mut live);
                    Published {
                        next: None,
                        held: false,
                        build: None,
                        oldest,
                    }
                }
                Some((next, (from, from_built))) => {
                    let mut state = this.state.lock();
                    claim.release_queued(this, snapshot_version, Some(&mut state));
                    this.publication.published.store(number, dekker::STORE);
                    dekker::fence();
                    let previous = std::mem::replace(&mut state.latest, Arc::clone(&next));
                    let oldest = this.live_versions(own_slot(claim), Some(&state), &mut live);
                    Published {
                        // Snapshots alone hold versions: they are all in the queue.
                        held: state.holds_since(from),
                        next: Some((next, previous)),
                        build: Some((from_built, changed_keys)),
                        oldest,
                    }
                }
            };
            (published, live)
        };
        // The entries this commit wrote that keep older writes for live readers (trimmed for
        // its publication already), queued below for a later trim.
        let mut kept = Vec::new();
        let (published, live) = match writes {
            Sorted::One((key, value)) => {
                // One key: its entry is validated, written, the version published and the entry
                // trimmed under the entry's shard lock, so no reader sees the write without the
                // publication (nothing to trim afterwards).
                let live_value = value.is_some();
                let tombstone = (!live_value).then(|| key.clone());
                let published = this.index.write_published(
                    key,
                    value,
                    number,
                    check,
                    spare,
                    |was_live, change, key| {
                        let len = live_after(base.len, live_value, was_live);
                        let delta = match change.delta_entry(key) {
                            Some(entry) => Sorted::One(entry),
                            None => Sorted::Many(Vec::new()),
                        };
                        publish(len, delta)
                    },
                );
                match published {
                    Ok((published, live, keeps_older)) => {
                        if let Some(key) = tombstone {
                            committer.tombstones.push_back((number, key));
                        }
                        kept.extend(keeps_older);
                        (published, live)
                    }
                    Err((key, written_at)) => {
                        committer.conflicts += 1;
                        return Err(Conflict {
                            key,
                            snapshot_version,
                            committed_version: written_at,
                        });
                    }
                }
            }
            writes => {
                let mut len = base.len;
                let mut delta = Vec::new();
                for (key, value) in writes.into_iter() {
                    let live_value = value.is_some();
                    // Stamped `number`, which no reader stands on before it is published below.
                    let (hash, was_live, change) = this.index.write(&key, value, number);
                    committer.written.push(hash);
                    len = live_after(len, live_value, was_live);
                    if !live_value {
                        committer.tombstones.push_back((number, key.clone()));
                    }
                    // In key order, as `writes`.
                    delta.extend(change.delta_entry(key));
                }
                let (published, live) = publish(len, Sorted::Many(delta));
                // `number` is published: with no snapshot live, each entry keeps its newest
                // write alone; else the entries are trimmed below.
                for hash in committer.written.drain(..) {
                    this.index
                        .settle(hash, number, &live, &this.publication.queued, &mut kept);
                }
                (published, live)
            }
        };
        committer.commits += 1;
        let Published {
            next,
            held,
            build,
            oldest,
        } = published;
        let oldest_live = live.first().copied();
        // The replaced version is `next`'s base or a version standing on the same base (dropping
        // it frees at most its delta list, or the few nodes a reader's build of it copied, never
        // a whole map). Its two handles go once the committer lock is released (a free there
        // would hold up the other committers), and before the build, so that `next` may hold
        // the base's last reference then.
        let replaced =
            next.map(|(next, previous)| (previous, std::mem::replace(&mut committer.latest, next)));
        // Registrations taken after `oldest` was read stand on `number`, newer than every
        // queued tombstone.
        drop_old_tombstones(&this.index, &mut committer.tombstones, oldest, number);
        // The entries this commit wrote that keep older writes are queued for the trim that
        // frees them once the readers that need them are gone; queued entries no live reader
        // needs older writes of any more are taken now, to be trimmed after the lock (an entry
        // queued at `t` kept them for readers older than `t`).
        committer
            .trims
            .extend(kept.into_iter().map(|entry| (number, entry)));
        let mut to_trim = Vec::new();
        while to_trim.len() < TRIMS_PER_COMMIT
            && let Some(&(queued_at, _)) = committer.trims.front()
            && oldest_live.is_none_or(|oldest| oldest >= queued_at)
        {
            to_trim.push(committer.trims.pop_front().expect("front exists").1);
        }
        // And those the commits alone kept, which no commit alone runs to trim meanwhile (every
        // one of them published before this one).
        for kept in this.kept_alone.iter() {
            kept.take(
                None,
                TRIMS_PER_COMMIT,
                |kept_at| oldest_live.is_none_or(|oldest| oldest >= kept_at),
                &mut to_trim,
            );
        }
        this.exclusion.set_housekeeping(committer);
        // The live versions are needed after the lock for the trims; with none, the (empty,
        // allocated) list goes back for the next commit.
        let live = if live.is_empty() {
            committer.live = live;
            Vec::new()
        } else {
            live
        };
        // No live snapshot or transaction stands on `from` or a later version, so (but for a
        // passing handle, such as `MvccMap::len`'s) `next` holds `from`'s last reference: the
        // build takes its map and changes it in place, cheaply. Otherwise build by path copy
        // only every few versions, the next commits extending the delta meanwhile.
        let to_build = match build {
            // The same keys as the version before: nothing to build.
            None => None,
            Some((from_built, changed_keys)) => {
                committer.unbuilt_versions += 1;
                committer.unbuilt_writes += changed_keys;
                let build = from_built
                    && (!held
                        || committer.unbuilt_versions >= MATERIALIZE_EVERY
                        || committer.unbuilt_writes >= MATERIALIZE_WRITES);
                build.then(|| {
                    committer.unbuilt_versions = 0;
                    committer.unbuilt_writes = 0;
                    Arc::clone(&committer.latest)
                })
            }
        };
        drop(exclusive);
        drop(guard);
        drop(replaced);
        // Outside both locks: other commits go on while this one trims and builds its version's
        // ordered map. Readers that need it meanwhile wait for the build (or do it, if they came
        // first).
        for entry in to_trim {
            this.index
                .trim(&entry, &live, number, &this.publication.queued);
        }
        if let Some(version) = to_build {
            version.entries();
        }
        Ok(number)
    }

    /// Commits the transaction registered in `slot` (marked committing alone), which overwrites
    /// `key`'s value, alone ([`Index::overwrite_alone`]); gives the write back, with the slot
    /// marked committing, if it is not an overwrite of a live value.
    fn commit_alone(
        &self,
        slot: usize,
        snapshot_version: u64,
        reads: &KeyMap<K, ()>,
        key: K,
        value: V,
    ) -> Result<Result<u64, Conflict<K>>, (K, V)> {
        let alone = AloneCommit {
            slots: &self.slots,
            slot,
        };
        let published = &self.publication.published;
        let mut number = 0;
        let mut oldest = None;
        let outcome =
            self.index
                .overwrite_alone(key, value, reads.keys(), snapshot_version, || {
                    // The number and the publication at once (see `Index::overwrite_alone`), then
                    // the registrations (Dekker's pattern, as any publication).
                    number = published.fetch_add(1, dekker::RMW) + 1;
                    dekker::fence();
                    let mut live = Vec::new();
                    oldest = self.live_versions(Some(slot), None, &mut live);
                    (number, live)
                });
        self.slots
            .tried_alone(slot, matches!(outcome, Alone::Declined(..)));
        let (live, keeps_older) = match outcome {
            // `alone` dropped: committing, not alone.
            Alone::Declined(key, value) => return Err((key, value)),
            Alone::Conflict(key, written_at) => {
                alone.finish(false);
                return Ok(Err(Conflict {
                    key,
                    snapshot_version,
                    committed_version: written_at,
                }));
            }
            Alone::Committed { live, keeps_older } => (live, keeps_older),
        };
        alone.finish(true);
        // The entries kept for readers: this slot's queue, trimmed once no reader as old as
        // their commits is live (at most one more than this commit queues); then the committer
        // lock's queues, if they hold anything and the lock is free.
        let oldest_reader = live.first().copied();
        let eligible =
            |kept_at: u64| kept_at <= number && oldest_reader.is_none_or(|o| o >= kept_at);
        let mut to_trim = Vec::new();
        self.kept_alone[slot].take(
            keeps_older.map(|entry| (number, entry)),
            2,
            eligible,
            &mut to_trim,
        );
        if self.exclusion.housekeeping_due(number, oldest)
            && let Some(mut committer) = self.committer.try_lock()
        {
            // As a commit under the lock would, with this commit's publication: registrations
            // taken since stand on `number` or later.
            drop_old_tombstones(&self.index, &mut committer.tombstones, oldest, number);
            while to_trim.len() < TRIMS_PER_COMMIT
                && let Some(&(queued_at, _)) = committer.trims.front()
                && eligible(queued_at)
            {
                to_trim.extend(committer.trims.pop_front().map(|(_, entry)| entry));
            }
            self.exclusion.set_housekeeping(&committer);
        }
        for entry in to_trim {
            self.index
                .trim(&entry, &live, number, &self.publication.queued);
        }
        Ok(Ok(number))
    }

    /// Fails with the first of `keys` (read or written) written after `snapshot_version`.
    fn validate<'k>(
        &self,
        snapshot_version: u64,
        keys: impl Iterator<Item = &'k K>,
    ) -> Result<(), Conflict<K>>
    where
        K: 'k,
    {
        for key in keys {
            if let Some(written_at) = self.index.written_at(key)
                && written_at > snapshot_version
            {
                return Err(Conflict {
                    key: key.clone(),
                    snapshot_version,
                    committed_version: written_at,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn stats(&self) -> MvccStats {
        let (alone, refused_alone) = self.slots.counts();
        let (tombstones, commits, conflicts) = {
            let committer = self.committer.lock();
            (
                committer.tombstones.len(),
                committer.commits + alone,
                committer.conflicts + refused_alone,
            )
        };
        let state = self.state.lock();
        let latest = self.publication.published.load(Ordering::Acquire);
        let mut versions: Vec<u64> = self.slots.registered().collect();
        let in_slots = versions.len();
        versions.extend(state.live.iter().map(|&(version, _)| version));
        versions.push(latest);
        versions.sort_unstable();
        versions.dedup();
        MvccStats {
            version: latest,
            keys: state.latest.len,
            commits,
            conflicts,
            live_versions: versions.len(),
            live_snapshots: in_slots + state.live.iter().map(|&(_, count)| count).sum::<usize>(),
            tombstones,
        }
    }
}

/// A commit alone in progress in a slot: ends it, committed or refused, with [`AloneCommit::finish`];
/// dropped otherwise (the commit goes to the committer lock, or unwinds), it leaves the slot
/// committing but not alone, so that commits under the lock do not wait for it.
struct AloneCommit<'a> {
    slots: &'a Slots,
    slot: usize,
}

impl AloneCommit<'_> {
    fn finish(self, committed: bool) {
        self.slots.finish_alone(self.slot, committed);
        std::mem::forget(self);
    }
}

impl Drop for AloneCommit<'_> {
    fn drop(&mut self) {
        self.slots.decline_alone(self.slot);
    }
}

/// What commits under the committer lock tell the commits alone, on a line that only they
/// write.
struct Exclusion {
    /// Set while a commit under the committer lock runs: commits alone wait for the lock
    /// instead (`registry.rs`, [`Slots::exclude_alone`]).
    exclusive: AtomicBool,
    /// The oldest version among the committer lock's queued tombstones and trims (`NONE`:
    /// both queues are empty): a commit alone whose publication found no registration older
    /// than it drains some, if it finds the lock free. (Not whether they hold anything: while a
    /// long-lived snapshot holds them back, every commit alone would take the lock for
    /// nothing.)
    housekeeping: SyncAtomicU64,
}

impl Exclusion {
    /// [`Exclusion::housekeeping`] when the queues are empty.
    const NONE: u64 = u64::MAX;

    fn set_housekeeping<K, V>(&self, committer: &CommitterState<K, V>) {
        let tombstone = committer.tombstones.front().map(|&(version, _)| version);
        let trim = committer.trims.front().map(|&(version, _)| version);
        let due = tombstone
            .into_iter()
            .chain(trim)
            .min()
            .unwrap_or(Self::NONE);
        if self.housekeeping.load(Ordering::Relaxed) != due {
            self.housekeeping.store(due, Ordering::Relaxed);
        }
    }

    /// Whether a commit alone at `number`, whose publication found registrations at `oldest`
    /// or later, has queued work to do under the committer lock.
    fn housekeeping_due(&self, number: u64, oldest: Option<u64>) -> bool {
        let due = self.housekeeping.load(Ordering::Relaxed);
        due < number && oldest.is_none_or(|oldest| oldest >= due)
    }
}

/// Commits alone excluded (see [`Slots::exclude_alone`]) while this lives.
struct Exclusive<'a>(&'a AtomicBool);

impl<'a> Exclusive<'a> {
    fn new(slots: &Slots, exclusive: &'a AtomicBool) -> Self {
        slots.exclude_alone(exclusive);
        Self(exclusive)
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// How many queued entries one commit may trim (as [`TOMBSTONES_PER_COMMIT`]: a commit queues
/// at most one entry per key it writes).
const TRIMS_PER_COMMIT: usize = 64;

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
