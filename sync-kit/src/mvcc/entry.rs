//! One key of an [`MvccMap`](super::MvccMap): the key and the writes of it that someone may
//! still read, newest first. The same entry is reachable from the hash index (point reads,
//! validation, commits) and from the ordered map of every version that holds the key (ordered
//! reads), so a commit that overwrites a key changes the entry alone: no ordered map, no second
//! copy of the value.
//!
//! The writes form a chain: boxed nodes from `head` (the newest first), then the *inline* write
//! stored in the entry itself, the oldest. With no reader live across commits (the usual case)
//! the chain is the inline write alone: each commit pushes a node (freed again at once, so the
//! allocator hands back the same memory) and folds it into the inline write after it is
//! published, so a commit touches one cache line of the map per written key. Transactions that
//! are committing read nothing more and hold nothing back (`registry.rs`).
//!
//! | chain | when | what the next write does |
//! |---|---|---|
//! | inline alone | no live reader stood on a version older than the last write at its publication, or a later trim folded it | pushes a node, then after publishing folds it into the inline write if no live reader is older than it |
//! | nodes, then inline | a live reader may read an older write | pushes a node; after publishing unlinks and frees every write no live reader can read |
//! | nodes, inline unlinked | as above, the inline write read by no one; or the newest write alone in a node, kept there while a snapshot may hold a reference into it | as above |
//!
//! Invariants (all hold while the entry's index shard is locked; every change of the chain, and
//! every read but one, is made with it locked, so readers and the one committer never run on a
//! chain at once; the exception, [`Entry::inline_at`], reads an inline write that no commit can
//! change while the reader's registration lives):
//!
//! - Versions strictly decrease along the chain. The newest write may be unpublished (its commit
//!   is between writing and publishing); then the write after it is the one published. (A commit
//!   alone pushes its write with a placeholder version above every number, and stamps it with its
//!   number before it releases the shard: no one sees the placeholder.)
//! - A write is in the chain if a live snapshot or transaction stands on a version from its own
//!   up to (not including) the next newer write's, or if it is the newest. Trims remove the
//!   others, only after the newest write is published, using the live versions read when it was.
//!   A reader at version `at` reads the first write at or below `at`: it stays in the chain
//!   while the reader's registration lives, so a reference to its value does too, after the
//!   shard is released (what [`Snapshot::iter`](super::Snapshot::iter) lends).
//! - A value is moved into the inline write (a fold) only when no live reader needs a write
//!   older than it and no reference into the chain can be held: its commit has held the shard
//!   since it pushed the write, or no snapshot (the readers that keep references; transactions
//!   copy what they read) is registered, read with the shard locked. The fold writes the
//!   inline write before it sets `head` null.
//! - A commit pushes its write before it publishes, so a registration taken after the
//!   publication finds `head` set until the fold is complete.

use std::marker::PhantomData;
use std::ptr;

use crate::loom::atomic::{AtomicPtr, Ordering};
use crate::loom::cell::UnsafeCell;

/// A write kept in the chain before the inline one: boxed, never changed once linked except for
/// its `older` link.
struct Node<V> {
    version: u64,
    value: Option<V>,
    /// The next older boxed write; null: the inline write comes next (if linked).
    older: *mut Node<V>,
}

/// A node allocated ahead of a push, outside the map's locks (see [`Entry::push`]).
pub(crate) struct Spare<V>(Box<Node<V>>);

impl<V> Spare<V> {
    pub(crate) fn new() -> Self {
        Spare(Box::new(Node {
            version: 0,
            value: None,
            older: ptr::null_mut(),
        }))
    }
}

/// See the module documentation. Small: 40 bytes for `u64` keys and values (56 with the
/// reference counts), so that the entries of a large map stay in cache as long as they can.
pub(crate) struct Entry<K, V> {
    key: K,
    /// The newest boxed write; null: the inline write is the newest. Changed with the shard
    /// locked; loaded without it by [`Entry::inline_at`] (Acquire, against the Release of a fold
    /// that wrote the inline write before setting it null).
    head: AtomicPtr<Node<V>>,
    /// The inline write's version; [`UNLINKED`]: it is not in the chain (read by no one, its
    /// value dropped).
    inline_version: UnsafeCell<u64>,
    inline_value: UnsafeCell<Option<V>>,
    /// Owns the boxed writes.
    _owns: PhantomData<Box<Node<V>>>,
}

// SAFETY: every access to the interior-mutable fields is made with the entry's index shard
// locked (the methods' contract), which orders them; values are read (`&V`, clones) from other
// threads and dropped by whichever thread trims or drops, hence the bounds.
unsafe impl<K: Send + Sync, V: Send + Sync> Sync for Entry<K, V> {}
// SAFETY: as above.
unsafe impl<K: Send + Sync, V: Send + Sync> Send for Entry<K, V> {}

/// No write is at version 0 (the empty map's), so it marks an unlinked inline write.
const UNLINKED: u64 = 0;

/// Whether a live version (`live`, ascending) lies in `[version, newer)`: a reader stands where
/// the write of `version` is the first at or below it.
fn needed(live: &[u64], version: u64, newer: u64) -> bool {
    let at = live.partition_point(|&s| s < version);
    live.get(at).is_some_and(|&s| s < newer)
}

impl<K, V> Entry<K, V> {
    /// A key's entry with its first write.
    pub(crate) fn new(key: K, version: u64, value: Option<V>) -> Self {
        Self {
            key,
            head: AtomicPtr::new(ptr::null_mut()),
            inline_version: UnsafeCell::new(version),
            inline_value: UnsafeCell::new(value),
            _owns: PhantomData,
        }
    }

    pub(crate) fn key(&self) -> &K {
        &self.key
    }

    /// The newest write: its version and value.
    ///
    /// # Safety
    ///
    /// The entry's shard is locked for as long as the reference is used.
    pub(crate) unsafe fn newest(&self) -> (u64, &Option<V>) {
        // SAFETY: the shard lock orders this against every change of the chain.
        unsafe {
            let head = self.head.load(Ordering::Relaxed);
            if head.is_null() {
                (
                    self.inline_version.with(|v| *v),
                    self.inline_value.with(|value| &*value),
                )
            } else {
                ((*head).version, &(*head).value)
            }
        }
    }

    /// The write before the newest one, if the chain keeps it.
    ///
    /// # Safety
    ///
    /// As [`Entry::newest`].
    unsafe fn second(&self) -> Option<(u64, &Option<V>)> {
        // SAFETY: as in `newest`.
        unsafe {
            let head = self.head.load(Ordering::Relaxed);
            if head.is_null() {
                return None;
            }
            let older = (*head).older;
            if !older.is_null() {
                Some(((*older).version, &(*older).value))
            } else {
                let version = self.inline_version.with(|v| *v);
                (version != UNLINKED).then(|| (version, self.inline_value.with(|value| &*value)))
            }
        }
    }

    /// The key's value in the latest version, `published` being the latest published version
    /// number loaded while the shard is locked: the newest write if it is published, else the
    /// one before it (none: the key had no value).
    ///
    /// # Safety
    ///
    /// As [`Entry::newest`].
    pub(crate) unsafe fn latest(&self, published: u64) -> Option<&V> {
        // SAFETY: the caller's contract. An unpublished newest write was pushed after the last
        // trim (trims follow publication), so the write before it is still linked.
        unsafe {
            let (version, value) = self.newest();
            if version <= published {
                value.as_ref()
            } else {
                self.second().and_then(|(_, value)| value.as_ref())
            }
        }
    }

    /// The write a reader at version `at` sees: the first at or below `at` (`None`: the key had
    /// no write by then; `Some(None)`: it was removed).
    ///
    /// # Safety
    ///
    /// The entry's shard is locked during the call, and the caller's own registration stands on
    /// `at` while it uses the reference (which may outlive the lock: the write stays in the
    /// chain, unchanged, while a live registration reads it).
    pub(crate) unsafe fn at(&self, at: u64) -> Option<&Option<V>> {
        // SAFETY: the caller's contract; nodes are never changed once linked but for `older`.
        unsafe {
            let mut node = self.head.load(Ordering::Relaxed);
            while !node.is_null() {
                if (*node).version <= at {
                    return Some(&(*node).value);
                }
                node = (*node).older;
            }
            let version = self.inline_version.with(|v| *v);
            if version != UNLINKED && version <= at {
                return Some(self.inline_value.with(|value| &*value));
            }
        }
        None
    }

    /// The write a reader at version `at` sees, without the shard lock, if it is the inline write
    /// and the inline write is the newest (`None`: ask [`Entry::at`] with the shard locked).
    ///
    /// # Safety
    ///
    /// The caller's own registration stands on `at` from before this call until it stops using
    /// the reference, and it holds the entry alive as long. Then no commit changes the inline
    /// write under it: a commit writes the inline write only when no registration is live at its
    /// publication (a fold, which sets `head` null last), and pushes before it publishes, so a
    /// registration taken after a publication finds `head` set until the fold is complete; and a
    /// trim unlinks the inline write only when it is not the newest and no live registration
    /// reads it.
    pub(crate) unsafe fn inline_at(&self, at: u64) -> Option<&Option<V>> {
        if !self.head.load(Ordering::Acquire).is_null() {
            return None;
        }
        // SAFETY: the caller's contract: nothing writes the inline write meanwhile.
        unsafe {
            let version = self.inline_version.with(|v| *v);
            (version != UNLINKED && version <= at).then(|| self.inline_value.with(|value| &*value))
        }
    }

    /// Links a write at `version`, newer than every write in the chain, in `spare` if given (a
    /// node allocated before the caller's locks).
    ///
    /// # Safety
    ///
    /// The entry's shard is held, and the map's committer lock (or, for a commit alone, the
    /// commits under it are excluded and `version` is the placeholder that
    /// [`Entry::stamp_newest`] replaces before the shard is released).
    pub(crate) unsafe fn push(&self, version: u64, value: Option<V>, spare: Option<Spare<V>>) {
        let head = self.head.load(Ordering::Relaxed);
        let node = match spare {
            Some(Spare(mut node)) => {
                *node = Node {
                    version,
                    value,
                    older: head,
                };
                node
            }
            None => Box::new(Node {
                version,
                value,
                older: head,
            }),
        };
        self.head.store(Box::into_raw(node), Ordering::Release);
    }

    /// Gives the newest write, pushed before its commit had its number, that number.
    ///
    /// # Safety
    ///
    /// The entry's shard has been locked since that push (no one has seen the write), and
    /// `version` is newer than every other write in the chain.
    pub(crate) unsafe fn stamp_newest(&self, version: u64) {
        let head = self.head.load(Ordering::Relaxed);
        // SAFETY: the caller's contract; `head` is the node `push` made.
        unsafe { (*head).version = version };
    }

    /// After the commit of the newest write published it, with the versions live snapshots and
    /// transactions stood on then (`live`, ascending): trims the entry for that publication
    /// ([`Entry::trim`]), so that with no live reader older than the newest write (those
    /// registered after the publication read the newest write) and `untouched`, the newest
    /// write becomes the inline one, alone in the chain. Returns whether older writes remain,
    /// for a later trim, once the readers that need them are gone.
    ///
    /// # Safety
    ///
    /// The entry's shard is held, and the map's committer lock (or the shard has been held since
    /// a commit alone pushed the newest write); the newest write was pushed before its commit
    /// published it, and `live` was read at that publication. `untouched`: no
    /// reference lent by [`Entry::at`] into the chain is held (the shard has been locked since
    /// the push, or no snapshot, the readers that keep references, is live now).
    pub(crate) unsafe fn settle(&self, live: &[u64], untouched: bool) -> bool {
        // SAFETY: the caller's contract, which includes `trim`'s (the newest write's version is
        // published) and, when no live reader is older than the newest write, `fold`'s.
        unsafe {
            let head = self.head.load(Ordering::Relaxed);
            if head.is_null() {
                return false;
            }
            // The usual case, without the walk of `trim`: nothing older is read.
            if untouched && live.first().is_none_or(|&oldest| oldest >= (*head).version) {
                self.fold(head);
                return false;
            }
            self.trim(live, (*head).version, untouched)
        }
    }

    /// Removes the writes no reader can read any more: those older than a write of version at
    /// most `published` (the trimming commit's own version) that no version in `live` (the
    /// versions live snapshots and transactions stood on at that commit's publication,
    /// ascending) reads. Registrations taken since stand on `published` or later, so they read
    /// none of those; writes pushed since by later commits, and the writes just below them,
    /// are left alone. If that leaves the newest write alone in a node and `no_snapshot` holds,
    /// it becomes the inline write (a fold), so that the entry is one allocation again.
    /// Returns whether writes older than the newest remain.
    ///
    /// # Safety
    ///
    /// The entry's shard is locked (the committer lock need not be: pushes and in-place writes
    /// take the shard too); `published` is published and `live` was read at its publication.
    /// `no_snapshot`: no reference lent by [`Entry::at`] into this entry is held (the readers
    /// that keep them, snapshots, are counted, and none was, with the shard locked).
    pub(crate) unsafe fn trim(&self, live: &[u64], published: u64, no_snapshot: bool) -> bool {
        // SAFETY: the caller's contract: no reader and no committer is on the chain, and every
        // write removed here is read by no live registration (`needed`, and the bound), so no
        // reference lent by `at` points into it.
        unsafe {
            let head = self.head.load(Ordering::Relaxed);
            if head.is_null() {
                return false;
            }
            let mut newer = (*head).version;
            let mut link: *mut *mut Node<V> = &raw mut (*head).older;
            while !(*link).is_null() {
                let node = *link;
                let version = (*node).version;
                if newer > published || needed(live, version, newer) {
                    link = &raw mut (*node).older;
                } else {
                    *link = (*node).older;
                    drop(Box::from_raw(node));
                }
                newer = version;
            }
            let version = self.inline_version.with(|v| *v);
            if version != UNLINKED && newer <= published && !needed(live, version, newer) {
                self.inline_version.with_mut(|v| *v = UNLINKED);
                self.inline_value.with_mut(|value| *value = None);
            }
            let alone = (*head).older.is_null() && self.inline_version.with(|v| *v) == UNLINKED;
            // The newest write alone, published, and no reference into its node: moving its
            // value changes nothing a reader sees (transactions copy what they read, with the
            // shard locked).
            if alone && no_snapshot && (*head).version <= published {
                self.fold(head);
            }
            !alone
        }
    }

    /// Makes the newest write (the boxed `head`) the inline one, alone in the chain.
    ///
    /// # Safety
    ///
    /// The entry's shard is locked; no live registration reads a write but the newest, and no
    /// reference into the chain is held ([`Entry::settle`], [`Entry::trim`]).
    unsafe fn fold(&self, head: *mut Node<V>) {
        // SAFETY: the caller's contract; `head` and the nodes after it were made by `push`.
        unsafe {
            let newest = Box::from_raw(head);
            let Node {
                version,
                value,
                older,
            } = *newest;
            // The inline write first, then `head` (Release): a reader that loads `head` null
            // without the shard lock sees the inline write whole ([`Entry::inline_at`]).
            self.inline_version.with_mut(|v| *v = version);
            let replaced = self
                .inline_value
                .with_mut(|inline| std::mem::replace(&mut *inline, value));
            self.head.store(ptr::null_mut(), Ordering::Release);
            free_chain(older);
            drop(replaced);
        }
    }

    /// The versions in the chain, newest first (tests).
    #[cfg(test)]
    fn versions(&self) -> Vec<u64> {
        let mut versions = Vec::new();
        // SAFETY: single-threaded test.
        unsafe {
            let mut node = self.head.load(Ordering::Relaxed);
            while !node.is_null() {
                versions.push((*node).version);
                node = (*node).older;
            }
            let version = self.inline_version.with(|v| *v);
            if version != UNLINKED {
                versions.push(version);
            }
        }
        versions
    }
}

impl<K, V> Drop for Entry<K, V> {
    fn drop(&mut self) {
        // SAFETY: the last reference is gone: no reader or committer is on the chain.
        unsafe { free_chain(self.head.load(Ordering::Relaxed)) }
    }
}

/// Frees `node` and the boxed writes after it.
///
/// # Safety
///
/// No one else reaches that part of the chain, now or later.
unsafe fn free_chain<V>(mut node: *mut Node<V>) {
    while !node.is_null() {
        // SAFETY: the caller hands the nodes over; each was made by `Box::into_raw`.
        let owned = unsafe { Box::from_raw(node) };
        node = owned.older;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn seen(entry: &Entry<u8, &'static str>, at: u64) -> Option<Option<&'static str>> {
        // SAFETY: single-threaded: nothing changes the chain while the reference is used.
        unsafe { entry.at(at) }.copied()
    }

    #[test]
    fn a_reader_sees_the_write_at_or_before_its_version() {
        let entry = Entry::new(0, 3, Some("a"));
        // SAFETY: single-threaded.
        unsafe {
            entry.push(5, None, None);
            entry.push(8, Some("b"), None);
        }
        assert_eq!(seen(&entry, 2), None, "before the first write");
        assert_eq!(seen(&entry, 3), Some(Some("a")));
        assert_eq!(seen(&entry, 7), Some(None), "removed at 5");
        assert_eq!(seen(&entry, 100), Some(Some("b")));
    }

    #[test]
    fn the_latest_value_is_the_newest_published_write() {
        let entry = Entry::new(0, 3, Some("a"));
        // SAFETY: single-threaded.
        unsafe {
            assert_eq!(
                entry.latest(2),
                None,
                "first written by an unpublished commit"
            );
            assert_eq!(entry.latest(3), Some(&"a"));
            entry.push(4, Some("b"), None);
            assert_eq!(
                entry.latest(3),
                Some(&"a"),
                "version 4 is not published yet"
            );
            assert_eq!(entry.latest(4), Some(&"b"));
        }
    }

    #[test]
    fn a_trim_keeps_exactly_what_live_readers_read() {
        let entry = Entry::new(0, 1, Some("a"));
        // SAFETY: single-threaded.
        unsafe {
            for (version, value) in [(4, "b"), (6, "c"), (9, "d")] {
                entry.push(version, Some(value), None);
            }
            // Readers at 5 (reads 4) and 1 (reads 1); none reads 6.
            assert!(entry.trim(&[1, 5], 9, false));
            assert_eq!(entry.versions(), [9, 4, 1]);
            assert_eq!(seen(&entry, 5), Some(Some("b")));
            assert_eq!(seen(&entry, 1), Some(Some("a")));
            // The reader at 1 is gone.
            assert!(entry.trim(&[5], 9, false));
            assert_eq!(entry.versions(), [9, 4]);
            assert!(!entry.trim(&[9], 9, false));
            assert_eq!(entry.versions(), [9]);
            entry.push(12, Some("e"), Some(Spare::new()));
            assert!(
                !entry.settle(&[], true),
                "no reader: the newest write folded inline"
            );
            assert_eq!(entry.versions(), [12]);
            assert!(entry.head.load(Ordering::Relaxed).is_null());
            assert_eq!(entry.newest(), (12, &Some("e")));
        }
    }

    #[test]
    fn with_no_reader_a_write_is_folded_inline() {
        let entry = Entry::new(0, 1, Some("a"));
        // SAFETY: single-threaded.
        unsafe {
            assert_eq!(
                entry.inline_at(5),
                Some(&Some("a")),
                "read without the lock"
            );
            entry.push(2, Some("b"), None);
            assert_eq!(
                entry.inline_at(5),
                None,
                "a boxed write is newer: ask with the lock"
            );
            assert!(!entry.settle(&[], true));
            assert!(
                entry.head.load(Ordering::Relaxed).is_null(),
                "nothing boxed"
            );
            assert_eq!(entry.newest(), (2, &Some("b")));
            assert_eq!(entry.inline_at(5), Some(&Some("b")));
            assert_eq!(entry.inline_at(1), None, "older than the inline write");
            entry.push(3, Some("c"), None);
            assert!(entry.settle(&[2], true), "older writes to trim");
            assert!(entry.trim(&[2], 3, false), "a reader at 2 keeps version 2");
            assert_eq!(entry.versions(), [3, 2]);
            assert_eq!(seen(&entry, 2), Some(Some("b")));
        }
    }

    #[test]
    fn a_trim_leaves_what_later_commits_pushed() {
        let entry = Entry::new(0, 1, Some("a"));
        // SAFETY: single-threaded.
        unsafe {
            entry.push(4, Some("b"), None);
            // A commit at 6 pushes after the trimming commit (4) published; a registration
            // taken at 5, after 4's publication, is not in 4's live versions but reads 4.
            entry.push(6, Some("c"), None);
            assert!(entry.trim(&[], 4, false));
            assert_eq!(entry.versions(), [6, 4], "1 freed; 4 may be read at 5");
            assert!(!entry.trim(&[], 6, false));
            assert_eq!(entry.versions(), [6]);
        }
    }

    #[test]
    fn a_reader_older_than_the_first_write_needs_nothing() {
        let entry = Entry::new(0, 7, Some("a"));
        // SAFETY: single-threaded.
        unsafe {
            entry.push(8, Some("b"), None);
            assert!(!entry.trim(&[3], 8, false));
            assert_eq!(entry.versions(), [8]);
            assert_eq!(seen(&entry, 3), None);
        }
    }

    #[test]
    fn every_value_is_dropped_once() {
        let value = std::sync::Arc::new(());
        let entry = Entry::new(0u8, 1, Some(std::sync::Arc::clone(&value)));
        // SAFETY: single-threaded.
        unsafe {
            entry.push(2, Some(std::sync::Arc::clone(&value)), None);
            entry.push(3, Some(std::sync::Arc::clone(&value)), None);
            assert_eq!(std::sync::Arc::strong_count(&value), 4);
            assert!(
                entry.trim(&[2], 3, false),
                "the reader at 2 keeps version 2"
            );
            assert_eq!(std::sync::Arc::strong_count(&value), 3, "version 1 dropped");
            entry.push(4, Some(std::sync::Arc::clone(&value)), None);
            assert!(!entry.settle(&[], true));
            assert_eq!(
                std::sync::Arc::strong_count(&value),
                2,
                "folded: one value left"
            );
        }
        drop(entry);
        assert_eq!(std::sync::Arc::strong_count(&value), 1);
    }

    #[test]
    fn a_write_newer_than_every_reader_is_folded_at_once() {
        let entry = Entry::new(0, 1, Some("a"));
        // SAFETY: single-threaded.
        unsafe {
            entry.push(3, Some("b"), None);
            assert!(
                entry.settle(&[2], true),
                "a reader at 2 reads version 1: kept"
            );
            entry.push(5, Some("c"), None);
            assert!(
                !entry.settle(&[5, 7], true),
                "readers registered after the publication read 5 alone"
            );
            assert_eq!(entry.versions(), [5]);
            assert!(entry.head.load(Ordering::Relaxed).is_null());
            entry.push(6, Some("d"), None);
            assert!(!entry.settle(&[], false), "5 is read by no one");
            assert_eq!(entry.versions(), [6]);
            assert!(
                !entry.head.load(Ordering::Relaxed).is_null(),
                "a snapshot may hold a reference into the chain: 6 stays in its node"
            );
        }
    }

    #[test]
    fn a_trim_that_leaves_the_newest_write_alone_folds_it_without_snapshots() {
        let entry = Entry::new(0, 1, Some("a"));
        // SAFETY: single-threaded.
        unsafe {
            entry.push(4, Some("b"), None);
            assert!(entry.settle(&[2], true));
            assert!(
                !entry.trim(&[5], 4, false),
                "version 1 unlinked; a snapshot may still hold a reference into 4"
            );
            assert!(!entry.head.load(Ordering::Relaxed).is_null());
            assert!(!entry.trim(&[5], 4, true));
            assert!(
                entry.head.load(Ordering::Relaxed).is_null(),
                "4 folded inline"
            );
            assert_eq!(entry.newest(), (4, &Some("b")));
            assert_eq!(entry.inline_at(5), Some(&Some("b")));
            // A later commit's write, not yet published, is left alone.
            entry.push(6, Some("c"), None);
            assert!(entry.trim(&[], 4, true));
            assert_eq!(entry.versions(), [6, 4]);
        }
    }
}
