//! loom models of `sync_kit::mvcc::MvccMap`: the commit and snapshot paths under every
//! interleaving (its internal lock comes from loom through sync-kit's facade).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::model;
use sync_kit::mvcc::MvccMap;

/// A map holding `a = 0` (version 1), and a thread that commits `a = 1` and then `a = 2`, the
/// only writer (so neither commit conflicts).
fn key_with_a_writer() -> (Arc<MvccMap<&'static str, i32>>, thread::JoinHandle<()>) {
    let map = Arc::new(MvccMap::new());
    let mut setup = map.begin();
    setup.insert("a", 0);
    setup.commit().unwrap();
    let writer = {
        let map = Arc::clone(&map);
        thread::spawn(move || {
            for i in 1..=2 {
                let mut tx = map.begin();
                tx.insert("a", i);
                tx.commit().expect("the only writer never conflicts");
            }
        })
    };
    (map, writer)
}

/// Two read-modify-write transactions on one key: no update is lost. Each commit either
/// succeeds or conflicts, and the final value counts exactly the successful ones.
#[test]
fn concurrent_increments_lose_no_update() {
    model(|| {
        let map = Arc::new(MvccMap::new());
        let increment = |map: &MvccMap<&'static str, u32>| {
            let mut tx = map.begin();
            let seen = tx.get(&"counter").unwrap_or(0);
            tx.insert("counter", seen + 1);
            tx.commit().is_ok()
        };
        let other = {
            let map = Arc::clone(&map);
            thread::spawn(move || increment(&map))
        };
        let mine = increment(&map);
        let theirs = other.join().unwrap();
        let committed = u32::from(mine) + u32::from(theirs);
        assert!(committed >= 1, "first committer always wins");
        assert_eq!(map.get(&"counter").unwrap_or(0), committed);
        assert_eq!(map.stats().conflicts, u64::from(2 - committed));
    });
}

/// A multi-key commit is atomic for snapshots: a snapshot taken concurrently sees both keys
/// before or both after, never one of each; and it stays the same after later commits.
#[test]
fn snapshots_see_whole_commits() {
    model(|| {
        let map = Arc::new(MvccMap::new());
        let writer = {
            let map = Arc::clone(&map);
            thread::spawn(move || {
                let mut tx = map.begin();
                tx.insert("a", 1);
                tx.insert("b", 1);
                tx.commit().expect("the only writer never conflicts");
            })
        };
        let snapshot = map.snapshot();
        let (a, b) = (snapshot.get(&"a"), snapshot.get(&"b"));
        assert_eq!(a, b, "a torn commit was visible");
        writer.join().unwrap();
        assert_eq!((snapshot.get(&"a"), snapshot.get(&"b")), (a, b));
        assert_eq!(map.get(&"a"), Some(1));
    });
}

/// A write/remove race on one key with a third commit that drops old tombstones: if both the
/// writer and the remover commit, they ran one after the other (the writer read the key as its
/// predecessor left it). Guards the rule that a transaction's snapshot stays registered until its
/// validation is done, so a concurrent commit cannot drop the tombstone it must see.
#[test]
fn removal_and_rewrite_are_serializable() {
    model(|| {
        let map = Arc::new(MvccMap::new());
        let mut setup = map.begin();
        setup.insert("a", 1);
        setup.commit().unwrap();

        let remover = {
            let map = Arc::clone(&map);
            thread::spawn(move || {
                let mut tx = map.begin();
                tx.remove(&"a");
                let removed = tx.commit().is_ok();
                // Another commit, which drops tombstones no live snapshot needs.
                let mut other = map.begin();
                other.insert("b", 1);
                other.commit().unwrap();
                removed
            })
        };
        let mut tx = map.begin();
        let read = tx.get(&"a");
        tx.insert("a", 2);
        let wrote = tx.commit().is_ok();
        let removed = remover.join().unwrap();
        let last = map.get(&"a");
        if wrote && removed {
            let writer_then_remover = read == Some(1) && last.is_none();
            let remover_then_writer = read.is_none() && last == Some(2);
            assert!(
                writer_then_remover || remover_then_writer,
                "not serializable: read {read:?}, final {last:?}"
            );
        }
        assert!(wrote || removed, "first committer always wins");
    });
}

/// `MvccMap::get` reads the latest version through the hash index, without the state lock, while
/// a commit writes the index before it publishes: once a read has seen one key of a commit, a
/// later read sees the other, and a value once seen never goes back (the index's previous values
/// and the published version number, under every interleaving).
#[test]
fn latest_reads_see_whole_commits() {
    model(|| {
        let map = Arc::new(MvccMap::new());
        let writer = {
            let map = Arc::clone(&map);
            thread::spawn(move || {
                for i in 1..=2 {
                    let mut tx = map.begin();
                    tx.insert("a", i);
                    tx.insert("b", i);
                    tx.commit().expect("the only writer never conflicts");
                }
            })
        };
        let a = map.get(&"a").unwrap_or(0);
        let b = map.get(&"b").unwrap_or(0);
        assert!(b >= a, "a torn commit was visible: a = {a}, then b = {b}");
        let again = map.get(&"a").unwrap_or(0);
        assert!(again >= a, "went back from {a} to {again}");
        writer.join().unwrap();
        assert_eq!((map.get(&"a"), map.get(&"b")), (Some(2), Some(2)));
    });
}

/// A commit changes its base version's ordered map in place when nothing else holds that
/// version any more: a snapshot taken concurrently (of the base, or of a version whose map is
/// built from it) must keep iterating exactly its version, whichever commit or snapshot gets
/// there first, and the map must end with both commits applied.
#[test]
fn in_place_builds_never_change_a_live_snapshot() {
    model(|| {
        let (map, writer) = key_with_a_writer();
        let snapshot = map.snapshot();
        let seen: Vec<(&str, i32)> = snapshot.iter().map(|(k, v)| (*k, *v)).collect();
        let expected = i32::try_from(snapshot.version()).unwrap() - 1;
        assert_eq!(seen, [("a", expected)], "at version {}", snapshot.version());
        writer.join().unwrap();
        let again: Vec<(&str, i32)> = snapshot.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(again, seen, "a live snapshot changed");
        assert_eq!(map.snapshot().iter().next(), Some((&"a", &2)));
    });
}

/// What a snapshot's iterator lends stays put while the snapshot lives: the writer's one-key
/// commits overwrite the key's entry in place only when no snapshot is live, else push a write
/// and trim what no live snapshot reads, so the write a live snapshot lent is neither changed
/// nor freed, whichever of the snapshot and the commits comes first. Once the snapshot is gone,
/// the next commit leaves the newest write alone.
#[test]
fn lent_values_survive_commits() {
    model(|| {
        let (map, writer) = key_with_a_writer();
        let snapshot = map.snapshot();
        let lent: Vec<(&&str, &i32)> = snapshot.iter().collect();
        let expected = i32::try_from(snapshot.version()).unwrap() - 1;
        assert_eq!(
            lent,
            [(&"a", &expected)],
            "at version {}",
            snapshot.version()
        );
        writer.join().unwrap();
        assert_eq!(
            *lent[0].1, expected,
            "a lent value changed under its snapshot"
        );
        drop(lent);
        drop(snapshot);
        let mut tx = map.begin();
        tx.insert("a", 3);
        tx.commit().unwrap();
        assert_eq!(map.get(&"a"), Some(3));
        assert_eq!(map.snapshot().iter().next(), Some((&"a", &3)));
    });
}

/// A transaction registers its version in its thread's slot, without a lock, while the writer's
/// commits fold their writes into the key's entry whenever no registration is live: whichever
/// comes first, the commit sees the registration or the transaction sees the commit's version
/// (`registry.rs`), so the transaction reads the value of its own version, twice the same.
/// Without the fence and the second look at the published version, a commit can fold the value
/// the transaction stands on away.
#[test]
fn transactions_keep_what_they_read() {
    model(|| {
        let (map, writer) = key_with_a_writer();
        let mut tx = map.begin();
        let seen = tx.get(&"a");
        let expected = i32::try_from(tx.snapshot_version()).unwrap() - 1;
        assert_eq!(seen, Some(expected), "at version {}", tx.snapshot_version());
        writer.join().unwrap();
        assert_eq!(tx.get(&"a"), seen, "a transaction's reads repeat");
        drop(tx);
        assert_eq!(map.stats().live_snapshots, 0, "every registration released");
    });
}

/// Two commits on disjoint keys from two threads, and a reader: versions are published in
/// version order (a read of the latest version that sees the later commit's key sees the earlier
/// one's, whichever thread got the lower version), a snapshot sees a prefix of the commits, and
/// once a commit has returned, every read of the latest version sees it. Any design in which
/// commits overlap (validation and index writes side by side, only the version claim and the
/// publication serialized) must keep passing this.
#[test]
fn disjoint_commits_publish_in_version_order() {
    use loom::sync::atomic::{AtomicBool, Ordering};
    model(|| {
        let map = Arc::new(MvccMap::new());
        let a_done = Arc::new(AtomicBool::new(false));
        let commit = |map: &Arc<MvccMap<&'static str, u32>>, key: &'static str| {
            let map = Arc::clone(map);
            move || {
                let mut tx = map.begin();
                tx.insert(key, 1);
                tx.commit().expect("disjoint keys never conflict")
            }
        };
        let a = {
            let (run, done) = (commit(&map, "a"), Arc::clone(&a_done));
            thread::spawn(move || {
                let version = run();
                done.store(true, Ordering::Release);
                version
            })
        };
        let b = thread::spawn(commit(&map, "b"));
        let a1 = map.get(&"a").is_some();
        let b1 = map.get(&"b").is_some();
        let a2 = map.get(&"a").is_some();
        let snapshot = map.snapshot();
        let (sa, sb) = (snapshot.get(&"a").is_some(), snapshot.get(&"b").is_some());
        if a_done.load(Ordering::Acquire) {
            assert_eq!(map.get(&"a"), Some(1), "a returned commit is not visible");
        }
        let (va, vb) = (a.join().unwrap(), b.join().unwrap());
        assert_ne!(va, vb);
        if va < vb {
            assert!(!b1 || a2, "saw version {vb} (b) before version {va} (a)");
            assert!(!sb || sa, "snapshot has b's version {vb} without a's {va}");
        } else {
            assert!(!a1 || b1, "saw version {va} (a) before version {vb} (b)");
            assert!(!sa || sb, "snapshot has a's version {va} without b's {vb}");
        }
        assert_eq!(
            snapshot.version(),
            u64::from(sa) + u64::from(sb),
            "a snapshot's version counts the commits it sees"
        );
        assert_eq!((map.get(&"a"), map.get(&"b")), (Some(1), Some(1)));
    });
}

/// Write skew: each transaction reads the key the other writes. Both may commit only if one read
/// the other's write (both committing on the old values would not be serializable: the later one
/// read a value the earlier one had overwritten), and one always commits. With overlapping
/// commits this is the read validation against a commit that has claimed its version but not
/// yet written the key (the fifth session's attempt failed it with that check left out).
#[test]
fn write_skew_is_refused() {
    model(|| skew_both_ways(&Arc::new(MvccMap::new())));
}

/// Two transactions on `map` (`x` and `y` absent or 0), one reading `x` and writing `y` one more,
/// the other reading `y` and writing `x`: one always commits, and both only if one of them read
/// the other's write.
fn skew_both_ways(map: &Arc<MvccMap<&'static str, u32>>) {
    let skew = |map: &MvccMap<&'static str, u32>, read: &'static str, write: &'static str| {
        let mut tx = map.begin();
        let seen = tx.get(&read);
        tx.insert(write, seen.unwrap_or(0) + 1);
        tx.commit().is_ok()
    };
    let other = {
        let map = Arc::clone(map);
        thread::spawn(move || skew(&map, "y", "x"))
    };
    let mine = skew(map, "x", "y");
    let theirs = other.join().unwrap();
    assert!(mine || theirs, "one of them always commits");
    if mine && theirs {
        // Only serializable if one of them read the other's write.
        let (x, y) = (map.get(&"x").unwrap(), map.get(&"y").unwrap());
        assert!(x == 2 || y == 2, "write skew committed: x = {x}, y = {y}");
    }
    assert_eq!(map.stats().conflicts, u64::from(!mine) + u64::from(!theirs));
}

/// A one-key commit publishes its version and writes its key's entry (in place, when no
/// snapshot is live) while holding the entry's index shard: reads of the latest version racing
/// with such commits see each value whole and never go back (a read takes the entry's newest
/// write if its version is published, else the one before), and a snapshot reads exactly its
/// version, whichever of the snapshot and the commits comes first. (The name is the one the
/// model had when the index held slots, not entries.)
#[test]
fn one_key_commits_publish_with_their_slot() {
    model(|| {
        let (map, writer) = key_with_a_writer();
        let first = map.get(&"a").expect("never removed");
        let snapshot = map.snapshot();
        let seen = snapshot.get(&"a").expect("never removed");
        assert_eq!(u64::try_from(seen).unwrap() + 1, snapshot.version());
        assert!(seen >= first, "went back from {first} to {seen}");
        let again = map.get(&"a").expect("never removed");
        assert!(again >= seen, "went back from {seen} to {again}");
        writer.join().unwrap();
        assert_eq!(snapshot.get(&"a"), Some(seen), "a live snapshot changed");
        assert_eq!(map.get(&"a"), Some(2));
    });
}

/// Two blind one-key writes of the same key (neither reads it): both commit only if one began
/// after the other had committed; otherwise the second to commit is refused (first committer
/// wins on written keys too). A one-key commit validates its key under the shard lock it writes
/// it with; with that check taken out, both commit from the same snapshot.
#[test]
fn blind_one_key_writes_conflict() {
    model(|| {
        let map = Arc::new(MvccMap::new());
        let blind_write = |map: &MvccMap<&'static str, u32>, value| {
            let mut tx = map.begin();
            let began = tx.snapshot_version();
            tx.insert("a", value);
            (began, tx.commit())
        };
        let other = {
            let map = Arc::clone(&map);
            thread::spawn(move || blind_write(&map, 2))
        };
        let (my_start, mine) = blind_write(&map, 1);
        let (their_start, theirs) = other.join().unwrap();
        match (mine, theirs) {
            (Ok(my_version), Ok(their_version)) => assert!(
                my_start >= their_version || their_start >= my_version,
                "both committed from overlapping snapshots"
            ),
            (Ok(_), Err(_)) | (Err(_), Ok(_)) => {}
            (Err(_), Err(_)) => panic!("first committer always wins"),
        }
    });
}

/// A map holding `x = 0` and `y = 0`, so that one-key writes of either overwrite a live value:
/// commits alone, without the committer lock.
fn two_live_keys() -> Arc<MvccMap<&'static str, u32>> {
    let map = Arc::new(MvccMap::new());
    let mut setup = map.begin();
    setup.insert("x", 0);
    setup.insert("y", 0);
    setup.commit().unwrap();
    map
}

/// Write skew between two commits alone (each reads the key the other overwrites): refused as
/// under the committer lock. Each holds the shards of the keys it read and wrote while it takes
/// its number, so the later of the two sees the earlier's write, stamped, when it validates.
#[test]
fn write_skew_is_refused_between_commits_alone() {
    model(|| skew_both_ways(&two_live_keys()));
}

/// Write skew between a commit alone (reads `x`, overwrites `y`) and one under the committer
/// lock (reads `y`, writes `x` and a new key): refused. The commit under the lock excludes
/// commits alone from before its validation to its publication (`Slots::exclude_alone`); with
/// that exclusion taken out, both commit.
#[test]
fn write_skew_is_refused_between_a_commit_alone_and_one_under_the_lock() {
    model(|| {
        let map = two_live_keys();
        let other = {
            let map = Arc::clone(&map);
            thread::spawn(move || {
                let mut tx = map.begin();
                let seen = tx.get(&"y").expect("live");
                tx.insert("x", seen + 1);
                tx.insert("z", 1);
                tx.commit().is_ok()
            })
        };
        let mut tx = map.begin();
        let seen = tx.get(&"x").expect("live");
        tx.insert("y", seen + 1);
        let mine = tx.commit().is_ok();
        let theirs = other.join().unwrap();
        assert!(mine || theirs, "one of them always commits");
        if mine && theirs {
            let (x, y) = (map.get(&"x").unwrap(), map.get(&"y").unwrap());
            assert!(x == 2 || y == 2, "write skew committed: x = {x}, y = {y}");
        }
    });
}

/// Two commits alone on different keys take their numbers from the published version itself
/// (one read-modify-write each, no lock), so the later number may be published before the
/// earlier one's write is stamped. Reads and snapshots still see them in version order: each
/// commit holds its key's shard from before it takes its number until its write is stamped,
/// and a reader of the key waits for that shard.
#[test]
fn commits_alone_are_seen_in_version_order() {
    model(|| {
        let map = two_live_keys();
        let overwrite = |map: &Arc<MvccMap<&'static str, u32>>, key: &'static str| {
            let map = Arc::clone(map);
            move || {
                let mut tx = map.begin();
                tx.insert(key, 1);
                tx.commit().expect("disjoint keys never conflict")
            }
        };
        let x = thread::spawn(overwrite(&map, "x"));
        let y = thread::spawn(overwrite(&map, "y"));
        let snapshot = map.snapshot();
        let (sx, sy) = (snapshot.get(&"x").unwrap(), snapshot.get(&"y").unwrap());
        let (vx, vy) = (x.join().unwrap(), y.join().unwrap());
        assert_ne!(vx, vy);
        let (first, second) = if vx < vy { (sx, sy) } else { (sy, sx) };
        assert!(
            second == 0 || first == 1,
            "a snapshot saw version {} without {}",
            vx.max(vy),
            vx.min(vy)
        );
        assert_eq!(
            snapshot.version(),
            1 + u64::from(sx) + u64::from(sy),
            "a snapshot's version counts the commits it sees"
        );
        assert_eq!(map.stats().commits, 3);
    });
}

/// A transaction registered in a slot holds the map through the slot's lease; when the map's
/// last handle is dropped while the transaction ends on another thread, the lease is given back
/// exactly once, by whichever of the two comes second (Dekker's pattern between the release,
/// which stores the free slot then loads `orphaned`, and the last handle, which stores
/// `orphaned` then loads the slot): every value is freed, and none twice.
#[test]
fn leases_are_given_back_once_when_the_map_and_its_transaction_end() {
    model(|| {
        let tracked = std::sync::Arc::new(());
        let map: MvccMap<&'static str, std::sync::Arc<()>> = MvccMap::new();
        let mut setup = map.begin();
        setup.insert("a", std::sync::Arc::clone(&tracked));
        setup.commit().unwrap();
        let mut tx = map.begin();
        let other = thread::spawn(move || {
            assert!(tx.get(&"a").is_some());
            drop(tx);
        });
        drop(map);
        other.join().unwrap();
        assert_eq!(
            std::sync::Arc::strong_count(&tracked),
            1,
            "the map was not freed"
        );
    });
}
