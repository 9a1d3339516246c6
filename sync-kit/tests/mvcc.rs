//! `MvccMap` integration tests: snapshot isolation, first-committer-wins conflicts (and no false
//! ones), statistics, tombstone draining, and a multi-threaded transfer workload.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use sync_kit::mvcc::{Conflict, MvccMap, MvccStats, Snapshot};

mod common;
use common::bounded;

fn contents<K: Ord + std::hash::Hash + Clone, V: Clone>(snapshot: &Snapshot<K, V>) -> Vec<(K, V)> {
    snapshot
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn commit_all<K: Ord + std::hash::Hash + Clone, V: Clone>(
    map: &MvccMap<K, V>,
    entries: &[(K, V)],
) -> u64 {
    let mut tx = map.begin();
    for (k, v) in entries {
        tx.insert(k.clone(), v.clone());
    }
    tx.commit()
        .unwrap_or_else(|_| panic!("an uncontended commit succeeds"))
}

/// Runs `check` on snapshots of `map`, taken one after another on a thread of its own, until
/// `done` is set (at least once); the thread returns how many it checked.
fn spawn_snapshot_checker(
    map: &MvccMap<u64, i64>,
    done: &Arc<AtomicBool>,
    mut check: impl FnMut(&Snapshot<u64, i64>) + Send + 'static,
) -> thread::JoinHandle<u64> {
    let (map, done) = (map.clone(), Arc::clone(done));
    thread::spawn(move || {
        let mut checks = 0u64;
        while !done.load(Ordering::Relaxed) || checks == 0 {
            check(&map.snapshot());
            checks += 1;
        }
        checks
    })
}

/// Starts `threads` writers on `map`, released together by a barrier: writer `t` runs
/// `write(t, map, seed)`, its seed for [`next_random`] its own.
fn spawn_writers<T: Send + 'static>(
    threads: u64,
    map: &MvccMap<u64, i64>,
    write: impl Fn(u64, &MvccMap<u64, i64>, u64) -> T + Clone + Send + 'static,
) -> Vec<thread::JoinHandle<T>> {
    let start = Arc::new(Barrier::new(threads as usize));
    (0..threads)
        .map(|t| {
            let (map, start, write) = (map.clone(), Arc::clone(&start), write.clone());
            thread::spawn(move || {
                start.wait();
                write(t, &map, t * 7919 + 1)
            })
        })
        .collect()
}

/// Steps a writer thread's pseudo-random sequence (a 64-bit linear congruential generator, the
/// same every run) and returns the new value.
fn next_random(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed
}

#[test]
fn new_map_is_empty_at_version_zero() {
    let map: MvccMap<u32, u32> = MvccMap::default();
    assert!(map.is_empty());
    assert_eq!(map.len(), 0);
    assert_eq!(map.version(), 0);
    assert_eq!(map.get(&1), None);
    assert!(!map.contains_key(&1));
    assert_eq!(
        map.stats(),
        MvccStats {
            version: 0,
            keys: 0,
            commits: 0,
            conflicts: 0,
            live_versions: 1,
            live_snapshots: 0,
            tombstones: 0,
        }
    );
    let snap = map.snapshot();
    assert_eq!(snap.version(), 0);
    assert!(snap.is_empty());
    assert_eq!(snap.iter().count(), 0);
}

#[test]
fn snapshots_never_change() {
    let map = MvccMap::new();
    assert_eq!(commit_all(&map, &[(1, "a"), (2, "b"), (3, "c")]), 1);
    let s1 = map.snapshot();

    let mut tx = map.begin();
    tx.insert(2, "B");
    tx.remove(&3);
    tx.insert(4, "d");
    assert_eq!(tx.commit(), Ok(2));
    let s2 = map.snapshot();

    let mut tx = map.begin();
    tx.remove(&1);
    tx.remove(&2);
    tx.remove(&4);
    assert_eq!(tx.commit(), Ok(3));

    // The old snapshots still show their versions exactly.
    assert_eq!(s1.version(), 1);
    assert_eq!(contents(&s1), vec![(1, "a"), (2, "b"), (3, "c")]);
    assert_eq!(s1.len(), 3);
    assert!(s1.contains_key(&3));
    assert_eq!(s1.get(&2), Some("b"));

    assert_eq!(s2.version(), 2);
    assert_eq!(contents(&s2), vec![(1, "a"), (2, "B"), (4, "d")]);
    assert_eq!(s2.len(), 3);
    assert!(!s2.contains_key(&3), "a tombstone is not a value");
    assert_eq!(s2.get(&3), None);

    // The latest version.
    assert!(map.is_empty());
    assert_eq!(map.version(), 3);
    let s3 = map.snapshot();
    assert_eq!(s3.iter().count(), 0, "tombstones are skipped by iter");
    assert_eq!(s3.len(), 0);

    // A clone sees the same version, not the latest.
    let s1b = s1.clone();
    assert_eq!(s1b.version(), 1);
    assert_eq!(contents(&s1b), contents(&s1));
}

#[test]
fn range_pages_through_a_snapshot_in_key_order() {
    let map = MvccMap::new();
    let entries: Vec<(u32, u32)> = (0..100).rev().map(|k| (k * 2, k)).collect();
    commit_all(&map, &entries);
    let mut tx = map.begin();
    for k in (0..200).step_by(6) {
        tx.remove(&k);
    }
    tx.commit().unwrap();
    let snap = map.snapshot();
    let expected: Vec<(u32, u32)> = (0..100u32)
        .map(|k| (k * 2, k))
        .filter(|(k, _)| k % 6 != 0)
        .collect();
    assert_eq!(contents(&snap), expected);
    assert_eq!(snap.len(), expected.len());

    // Paging with Excluded(last) reproduces the whole content, tombstones skipped.
    let mut paged = Vec::new();
    let mut from = Bound::Unbounded;
    loop {
        let page: Vec<(u32, u32)> = snap
            .range((from, Bound::Unbounded))
            .take(7)
            .map(|(k, v)| (*k, *v))
            .collect();
        let Some(&(last, _)) = page.last() else { break };
        paged.extend(page);
        from = Bound::Excluded(last);
    }
    assert_eq!(paged, expected);
    let mid: Vec<u32> = snap.range(10..=20).map(|(k, _)| *k).collect();
    assert_eq!(mid, vec![10, 14, 16, 20]);
}

#[test]
fn transaction_sees_its_snapshot_plus_its_own_writes() {
    let map = MvccMap::new();
    commit_all(&map, &[("x", 1), ("y", 2)]);
    let mut tx = map.begin();
    assert_eq!(tx.snapshot_version(), 1);
    commit_all(&map, &[("z", 3)]); // after tx began: invisible to it
    assert_eq!(tx.get(&"z"), None);
    tx.insert("x", 10);
    assert_eq!(tx.get(&"x"), Some(10));
    tx.remove(&"y");
    assert_eq!(tx.get(&"y"), None);
    tx.insert("y", 20);
    assert_eq!(tx.get(&"y"), Some(20));
    // Nothing is visible outside before commit.
    assert_eq!(map.get(&"x"), Some(1));
    assert_eq!(map.get(&"y"), Some(2));
    // It read "z", which was committed after it began: first committer wins.
    let err = tx.commit().unwrap_err();
    assert_eq!(
        err,
        Conflict {
            key: "z",
            snapshot_version: 1,
            committed_version: 2
        }
    );
    assert_eq!(map.get(&"x"), Some(1));
}

#[test]
fn read_then_concurrent_write_conflicts_and_changes_nothing() {
    let map = MvccMap::new();
    commit_all(&map, &[(1, 100), (2, 200)]);
    let mut t1 = map.begin();
    assert_eq!(t1.get(&1), Some(100));
    t1.insert(3, 300);

    let mut t2 = map.begin();
    t2.insert(1, 101);
    assert_eq!(t2.commit(), Ok(2));

    let before = contents(&map.snapshot());
    let err = t1.commit().unwrap_err();
    assert_eq!(err.key, 1);
    assert_eq!(err.snapshot_version, 1);
    assert_eq!(err.committed_version, 2);
    assert_eq!(
        contents(&map.snapshot()),
        before,
        "a conflict changes nothing"
    );
    assert_eq!(map.version(), 2);
    assert_eq!(map.get(&3), None);
    let s = map.stats();
    assert_eq!((s.commits, s.conflicts), (2, 1));
    assert_eq!(s.live_snapshots, 0);
    assert_eq!(s.live_versions, 1);
}

#[test]
fn blind_write_write_conflicts() {
    let map = MvccMap::new();
    let mut t1 = map.begin();
    let mut t2 = map.begin();
    t1.insert("k", 1);
    t2.insert("k", 2);
    assert_eq!(t2.commit(), Ok(1));
    let err = t1.commit().unwrap_err();
    assert_eq!(
        (err.key, err.snapshot_version, err.committed_version),
        ("k", 0, 1)
    );
    assert_eq!(map.get(&"k"), Some(2));
}

#[test]
fn absent_key_read_conflicts_with_a_later_insert() {
    let map = MvccMap::new();
    let mut t1 = map.begin();
    assert_eq!(t1.get(&"new"), None);
    t1.insert("other", 1);
    let mut t2 = map.begin();
    t2.insert("new", 2);
    t2.commit().unwrap();
    assert_eq!(t1.commit().unwrap_err().key, "new");
}

#[test]
fn read_conflicts_with_a_later_removal_via_its_tombstone() {
    let map = MvccMap::new();
    commit_all(&map, &[("a", 1)]);
    let mut t1 = map.begin();
    assert_eq!(t1.get(&"a"), Some(1));
    t1.insert("b", 1);
    let mut t2 = map.begin();
    t2.remove(&"a");
    assert_eq!(t2.commit(), Ok(2));
    assert_eq!(map.stats().tombstones, 1, "t1 is older than the removal");
    // Many unrelated commits in between must not drop the tombstone t1 still needs.
    for i in 0..200 {
        let mut t = map.begin();
        t.insert("filler", i);
        t.remove(&"gone");
        t.commit().unwrap();
    }
    let err = t1.commit().unwrap_err();
    assert_eq!((err.key, err.committed_version), ("a", 2));
    // Now nothing is live: the next writing commits drain every tombstone.
    for _ in 0..10 {
        commit_all(&map, &[("filler", -1)]);
    }
    assert_eq!(map.stats().tombstones, 0);
}

#[test]
fn removing_an_absent_key_is_a_write() {
    let map: MvccMap<&str, i32> = MvccMap::new();
    let mut reader = map.begin();
    assert_eq!(reader.get(&"ghost"), None);
    reader.insert("x", 1);
    let mut remover = map.begin();
    remover.remove(&"ghost");
    assert_eq!(remover.commit(), Ok(1), "a removal creates a version");
    assert_eq!(map.len(), 0);
    assert_eq!(reader.commit().unwrap_err().key, "ghost");
}

#[test]
fn disjoint_transactions_never_conflict() {
    let map = MvccMap::new();
    commit_all(&map, &[(1, 0), (2, 0), (3, 0), (4, 0)]);
    let mut txs: Vec<_> = (1..=4).map(|_| map.begin()).collect();
    for (i, tx) in txs.iter_mut().enumerate() {
        let k = i as i32 + 1;
        let v = tx.get(&k).unwrap();
        tx.insert(k, v + 10);
        tx.get(&(k + 100)); // absent keys, also disjoint
    }
    for tx in txs {
        tx.commit().expect("disjoint key sets never conflict");
    }
    assert_eq!(
        contents(&map.snapshot()),
        vec![(1, 10), (2, 10), (3, 10), (4, 10)]
    );
    assert_eq!(map.stats().conflicts, 0);
}

#[test]
fn writes_before_begin_do_not_conflict() {
    let map = MvccMap::new();
    commit_all(&map, &[("k", 1)]);
    let mut t1 = map.begin();
    assert_eq!(t1.get(&"k"), Some(1));
    t1.insert("k", 2);
    assert_eq!(t1.commit(), Ok(2));
    let mut t2 = map.begin();
    assert_eq!(t2.get(&"k"), Some(2));
    t2.insert("k", 3);
    assert_eq!(t2.commit(), Ok(3));
}

#[test]
fn read_only_commit_returns_the_latest_version_without_creating_one() {
    let map = MvccMap::new();
    commit_all(&map, &[(1, 1)]);
    let mut ro = map.begin();
    assert_eq!(ro.get(&1), Some(1));
    commit_all(&map, &[(2, 2)]); // unrelated key
    assert_eq!(ro.commit(), Ok(2));
    assert_eq!(map.version(), 2);
    let empty = map.begin();
    assert_eq!(empty.commit(), Ok(2));
    let s = map.stats();
    assert_eq!((s.version, s.commits, s.conflicts), (2, 4, 0));

    // A read-only transaction is still validated.
    let mut ro = map.begin();
    assert_eq!(ro.get(&1), Some(1));
    commit_all(&map, &[(1, 5)]);
    assert_eq!(ro.commit().unwrap_err().key, 1);
}

#[test]
fn dropped_transaction_discards_its_writes_and_registration() {
    let map = MvccMap::new();
    let mut tx = map.begin();
    tx.insert(1, 1);
    assert_eq!(map.stats().live_snapshots, 1);
    drop(tx);
    assert_eq!(map.get(&1), None);
    let s = map.stats();
    assert_eq!(
        (s.version, s.commits, s.conflicts, s.live_snapshots),
        (0, 0, 0, 0)
    );
}

#[test]
fn stats_track_live_snapshots_and_versions() {
    let map = MvccMap::new();
    let s0 = map.snapshot();
    let t0 = map.begin();
    assert_eq!(map.stats().live_snapshots, 2);
    assert_eq!(
        map.stats().live_versions,
        1,
        "both stand on the latest version"
    );
    commit_all(&map, &[(1, 1)]);
    assert_eq!(
        map.stats().live_versions,
        2,
        "version 0 (held) and version 1 (latest)"
    );
    let s1 = map.snapshot();
    let s1b = s1.clone();
    let s0b = s0.clone();
    assert_eq!(s0b.version(), 0);
    commit_all(&map, &[(2, 2)]);
    let s = map.stats();
    assert_eq!(s.live_snapshots, 5);
    assert_eq!(s.live_versions, 3);
    assert_eq!(s.keys, 2);
    drop((s0, s0b));
    assert_eq!(
        map.stats().live_snapshots,
        3,
        "t0 still stands on version 0"
    );
    assert_eq!(map.stats().live_versions, 3);
    drop(t0);
    assert_eq!(map.stats().live_versions, 2);
    drop(s1);
    assert_eq!(
        map.stats().live_versions,
        2,
        "a clone keeps version 1 alive"
    );
    drop(s1b);
    let s = map.stats();
    assert_eq!((s.live_snapshots, s.live_versions), (0, 1));
}

/// A thread with several transactions live at once (one in its slot, the others in the queue,
/// as are transactions of threads whose slot another thread holds) counts them all, and each
/// reads its own version however they are registered and released.
#[test]
fn many_transactions_on_one_thread_each_keep_their_version() {
    let map = MvccMap::new();
    commit_all(&map, &[(1, 0)]);
    let mut open = Vec::new();
    for round in 1..=12u64 {
        open.push((map.begin(), round - 1));
        commit_all(&map, &[(1, round)]);
    }
    assert_eq!(map.stats().live_snapshots, 12);
    assert_eq!(map.stats().live_versions, 13, "12 held and the latest");
    // Released out of order: every other one first.
    let (mut odd, mut even): (Vec<_>, Vec<_>) =
        open.into_iter().enumerate().partition(|(i, _)| i % 2 == 1);
    for (_, (tx, value)) in odd.iter_mut().chain(even.iter_mut()) {
        assert_eq!(
            tx.get(&1),
            Some(*value),
            "at version {}",
            tx.snapshot_version()
        );
    }
    drop(odd);
    assert_eq!(map.stats().live_snapshots, 6);
    for (_, (tx, value)) in &mut even {
        assert_eq!(tx.get(&1), Some(*value));
    }
    drop(even);
    let s = map.stats();
    assert_eq!((s.live_snapshots, s.live_versions), (0, 1));
    commit_all(&map, &[(1, 99)]);
    assert_eq!(map.get(&1), Some(99));
}

/// Transactions begun on many threads while a writer commits without pause each read one
/// version: the writer keeps `a == b` in every commit (one key per commit alternately, so that
/// each one-key commit folds or keeps the value it replaces depending on who is registered), and
/// a transaction that read `a` then `b` must find them equal, however its registration raced the
/// commits. More threads than slots, so some register in the queue.
#[test]
fn transactions_registered_without_a_lock_read_one_version() {
    bounded("one version per transaction", || {
        const READERS: usize = 12;
        const COMMITS: u64 = 4_000;
        let map: MvccMap<&'static str, u64> = MvccMap::new();
        commit_all(&map, &[("a", 0), ("b", 0)]);
        let done = AtomicBool::new(false);
        thread::scope(|scope| {
            scope.spawn(|| {
                for value in 1..=COMMITS {
                    let mut tx = map.begin();
                    tx.insert("a", value);
                    tx.insert("b", value);
                    tx.commit().expect("the only writer");
                    // One-key commits too: the value stays the same, the versions move on.
                    for key in ["a", "b"] {
                        let mut tx = map.begin();
                        tx.insert(key, value);
                        tx.commit().expect("the only writer");
                    }
                }
                done.store(true, Ordering::Release);
            });
            for _ in 0..READERS {
                scope.spawn(|| {
                    let mut reads = 0u64;
                    while !done.load(Ordering::Acquire) || reads < 100 {
                        let mut tx = map.begin();
                        let a = tx.get(&"a").expect("always set");
                        thread::yield_now();
                        let b = tx.get(&"b").expect("always set");
                        assert_eq!(a, b, "at version {}", tx.snapshot_version());
                        assert_eq!(tx.get(&"a"), Some(a), "reads repeat");
                        reads += 1;
                    }
                });
            }
        });
        let s = map.stats();
        assert_eq!((s.live_snapshots, s.live_versions), (0, 1));
        assert_eq!(map.get(&"a"), Some(COMMITS));
    });
}

#[test]
fn tombstones_are_kept_while_needed_then_drained() {
    let map = MvccMap::new();
    let n = 1000u32;
    let all: Vec<(u32, u32)> = (0..n).map(|k| (k, k)).collect();
    commit_all(&map, &all);
    let old = map.snapshot();
    let mut tx = map.begin();
    for k in 0..n {
        tx.remove(&k);
    }
    tx.commit().unwrap();
    assert_eq!(map.len(), 0);
    assert_eq!(
        map.stats().tombstones,
        n as usize,
        "the old snapshot needs them"
    );
    for i in 0..50 {
        commit_all(&map, &[(u32::MAX, i)]);
    }
    assert_eq!(map.stats().tombstones, n as usize, "still needed");
    assert_eq!(old.len(), n as usize);
    assert_eq!(contents(&old), all);
    drop(old);
    // Each writing commit drops a bounded batch: it drains within a bounded number of commits.
    let mut commits = 0;
    while map.stats().tombstones > 0 {
        commit_all(&map, &[(u32::MAX, commits)]);
        commits += 1;
        assert!(commits <= n, "tombstones are never drained");
    }
    assert!(commits >= 2, "draining is amortised over several commits");
    let s = map.stats();
    assert_eq!(
        (s.keys, s.live_snapshots, s.live_versions, s.tombstones),
        (1, 0, 1, 0)
    );
    assert_eq!(contents(&map.snapshot()), vec![(u32::MAX, commits - 1)]);
    // A removed key can be inserted again and read normally.
    commit_all(&map, &[(7, 70)]);
    assert_eq!(map.get(&7), Some(70));
}

#[test]
fn tombstones_without_any_snapshot_are_dropped_by_the_next_commit() {
    let map = MvccMap::new();
    commit_all(&map, &[(1, 1), (2, 2)]);
    let mut tx = map.begin();
    tx.remove(&1);
    tx.commit().unwrap();
    // Kept by its own commit: snapshots of the version before it could be taken until it
    // published.
    assert_eq!(map.stats().tombstones, 1);
    assert_eq!(map.len(), 1);
    commit_all(&map, &[(3, 3)]);
    assert_eq!(map.stats().tombstones, 0);
    assert_eq!(map.len(), 2);
    assert_eq!(map.get(&1), None);
}

#[test]
fn conflict_display_names_key_and_versions() {
    let c = Conflict {
        key: "acct",
        snapshot_version: 4,
        committed_version: 9,
    };
    let text = c.to_string();
    assert!(text.contains("\"acct\""), "{text}");
    assert!(text.contains('4') && text.contains('9'), "{text}");
    let _: &dyn std::error::Error = &c;
}

#[test]
fn cloned_handles_share_one_map() {
    let map = MvccMap::new();
    let other = map.clone();
    commit_all(&other, &[(1, 1)]);
    assert_eq!(map.get(&1), Some(1));
    assert_eq!(map.stats(), other.stats());
    assert!(format!("{map:?}").contains("MvccMap"));
}

/// Threads move money between accounts with retrying transactions while readers check every
/// snapshot sums to the same total; the counters match what the threads saw.
#[test]
fn concurrent_transfers_preserve_the_total() {
    bounded("concurrent transfers", || {
        const ACCOUNTS: u64 = 16;
        const WRITERS: u64 = 6;
        const TRANSFERS: u64 = 400;
        let map: MvccMap<u64, i64> = MvccMap::new();
        let initial: Vec<(u64, i64)> = (0..ACCOUNTS).map(|a| (a, 1000)).collect();
        commit_all(&map, &initial);
        let total: i64 = 1000 * ACCOUNTS as i64;
        let conflicts = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(WRITERS as usize + 3));

        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (map, done, start) = (map.clone(), done.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    let mut checks = 0u64;
                    let mut last_version = 0;
                    while !done.load(Ordering::Relaxed) || checks == 0 {
                        let snap = map.snapshot();
                        assert!(snap.version() >= last_version, "versions never go back");
                        last_version = snap.version();
                        assert_eq!(snap.iter().map(|(_, v)| *v).sum::<i64>(), total);
                        assert_eq!(snap.len(), ACCOUNTS as usize);
                        checks += 1;
                    }
                    checks
                })
            })
            .collect();

        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (map, conflicts, start) = (map.clone(), conflicts.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    let mut seed = w * 7919 + 1;
                    for _ in 0..TRANSFERS {
                        next_random(&mut seed);
                        let from = (seed >> 33) % ACCOUNTS;
                        let to = (from + 1 + (seed >> 40) % (ACCOUNTS - 1)) % ACCOUNTS;
                        let amount = ((seed >> 50) % 50) as i64;
                        loop {
                            let mut tx = map.begin();
                            let a = tx.get(&from).unwrap();
                            let b = tx.get(&to).unwrap();
                            tx.insert(from, a - amount);
                            tx.insert(to, b + amount);
                            match tx.commit() {
                                Ok(_) => break,
                                Err(c) => {
                                    assert!(c.key == from || c.key == to);
                                    conflicts.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        start.wait();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        let s = map.stats();
        assert_eq!(s.commits, 1 + WRITERS * TRANSFERS);
        assert_eq!(s.conflicts, conflicts.load(Ordering::Relaxed));
        assert_eq!(s.version, 1 + WRITERS * TRANSFERS);
        assert_eq!((s.live_snapshots, s.live_versions, s.tombstones), (0, 1, 0));
        let fin: BTreeMap<u64, i64> = map.snapshot().iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(fin.values().sum::<i64>(), total);
    });
}

/// Concurrent inserts and removals on a shared key range: every committed transaction is
/// applied exactly once (counted by a per-key generation), and tombstones drain afterwards.
#[test]
fn concurrent_inserts_and_removals_drain_tombstones() {
    bounded("concurrent inserts/removals", || {
        let map: MvccMap<u32, u64> = MvccMap::new();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let map = map.clone();
                thread::spawn(move || {
                    let mut committed = 0u64;
                    for i in 0..300u64 {
                        let key = ((i * 7 + t * 13) % 32) as u32;
                        let mut tx = map.begin();
                        let old = tx.get(&key);
                        match old {
                            Some(_) => tx.remove(&key),
                            None => tx.insert(key, t),
                        }
                        // A long-lived snapshot now and then keeps tombstones around.
                        let keep = (i % 50 == 0).then(|| map.snapshot());
                        if tx.commit().is_ok() {
                            committed += 1;
                        }
                        drop(keep);
                    }
                    committed
                })
            })
            .collect();
        let committed: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
        let s = map.stats();
        assert_eq!(s.commits, committed);
        assert_eq!(s.commits + s.conflicts, 1200);
        assert_eq!((s.live_snapshots, s.live_versions), (0, 1));
        let mut rounds = 0;
        while map.stats().tombstones > 0 {
            let mut tx = map.begin();
            tx.insert(1000, rounds);
            tx.commit().unwrap();
            rounds += 1;
            assert!(rounds < 100, "tombstones never drained");
        }
        assert_eq!(map.snapshot().iter().count(), map.len());
    });
}

/// Reclamation measured on the values themselves, not on the map's bookkeeping: an overwritten
/// value lives as long as some snapshot or transaction can still see it, and no longer than the
/// next commit after the last of them drops (the latest version may still stand on the version
/// that held it, whose ordered map the next commit then takes over and changes in place).
#[test]
fn overwritten_values_are_freed_when_the_last_snapshot_that_sees_them_drops() {
    let tracked = Arc::new(0u32);
    let map: MvccMap<u32, Arc<u32>> = MvccMap::new();
    let mut tx = map.begin();
    tx.insert(1, Arc::clone(&tracked));
    tx.commit().unwrap();
    assert_eq!(
        Arc::strong_count(&tracked),
        2,
        "the latest version holds it once (in its key's entry, which the hash index and the \
         ordered maps share)"
    );
    // Overwritten with no snapshot: freed by the commit itself.
    let mut tx = map.begin();
    tx.insert(1, Arc::new(1));
    tx.commit().unwrap();
    assert_eq!(Arc::strong_count(&tracked), 1);
    let mut tx = map.begin();
    tx.insert(1, Arc::clone(&tracked));
    tx.commit().unwrap();
    assert_eq!(Arc::strong_count(&tracked), 2);

    let snapshot = map.snapshot();
    let reader = map.begin();
    let mut tx = map.begin();
    tx.insert(1, Arc::new(1));
    tx.commit().unwrap();
    assert_eq!(
        Arc::strong_count(&tracked),
        2,
        "the old version is still seen"
    );
    drop(snapshot);
    assert_eq!(
        Arc::strong_count(&tracked),
        2,
        "a transaction still sees it"
    );
    drop(reader);
    assert!(Arc::strong_count(&tracked) <= 2);
    let mut tx = map.begin();
    tx.insert(3, Arc::new(3));
    tx.commit().unwrap();
    assert_eq!(
        Arc::strong_count(&tracked),
        1,
        "nobody can see it: freed by the next commit at the latest"
    );

    // With no snapshot at all, an overwrite frees the old value at once.
    let mut tx = map.begin();
    tx.insert(2, Arc::clone(&tracked));
    tx.commit().unwrap();
    let mut tx = map.begin();
    tx.remove(&2);
    tx.commit().unwrap();
    assert_eq!(Arc::strong_count(&tracked), 1);
}

/// `MvccMap::get` reads the latest version through the hash index, without the state lock: a
/// commit's writes still appear to it all at once. The writer sets `a` and `b` to `i` in one
/// commit (the index is written in key order, `a` first); a reader that sees `a == i` must then
/// see `b >= i`, and values never go backwards.
#[test]
fn latest_reads_see_multi_key_commits_atomically() {
    let map: MvccMap<&str, u64> = MvccMap::new();
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            for i in 1..=20_000u64 {
                let mut tx = map.begin();
                tx.insert("a", i);
                tx.insert("b", i);
                tx.commit().expect("the only writer");
            }
            done.store(true, Ordering::Release);
        });
        s.spawn(|| {
            let mut last_a = 0;
            while !done.load(Ordering::Acquire) {
                let a = map.get(&"a").unwrap_or(0);
                let b = map.get(&"b").unwrap_or(0);
                assert!(b >= a, "torn commit: a = {a} then b = {b}");
                assert!(a >= last_a, "went backwards: {last_a} then {a}");
                if a > 0 {
                    assert!(map.contains_key(&"a") && map.contains_key(&"b"));
                }
                last_a = a;
            }
        });
    });
    assert_eq!((map.get(&"a"), map.get(&"b")), (Some(20_000), Some(20_000)));
}

/// Snapshots of every version, most of whose ordered maps are never built by a commit (a commit
/// builds one every few versions), answer point reads, `contains_key`, `iter` and `range` as of
/// their version, whether the index can answer (recent versions) or not (keys overwritten
/// twice since).
#[test]
fn snapshots_of_unbuilt_versions_read_as_of_their_version() {
    let map: MvccMap<u32, u32> = MvccMap::new();
    let mut model: BTreeMap<u32, u32> = BTreeMap::new();
    let mut snapshots = Vec::new();
    for round in 0..100u32 {
        let mut tx = map.begin();
        let key = round % 7;
        if round % 5 == 4 {
            tx.remove(&key);
            model.remove(&key);
        } else {
            tx.insert(key, round);
            model.insert(key, round);
        }
        tx.commit().unwrap();
        snapshots.push((map.snapshot(), model.clone()));
    }
    for (snapshot, expected) in snapshots.iter().rev() {
        for key in 0..8 {
            assert_eq!(snapshot.get(&key), expected.get(&key).copied(), "key {key}");
            assert_eq!(snapshot.contains_key(&key), expected.contains_key(&key));
        }
        assert_eq!(
            contents(snapshot),
            expected.clone().into_iter().collect::<Vec<_>>()
        );
        assert_eq!(snapshot.len(), expected.len());
        let tail: Vec<_> = snapshot.range(3..).map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            tail,
            expected
                .range(3..)
                .map(|(k, v)| (*k, *v))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(map.len(), model.len());
}

/// A commit whose base version nobody else holds changes its ordered map in place: a snapshot
/// taken before many such commits (and one in the middle) must still iterate, range over and
/// read exactly its own version, and the latest version must match a model after every commit.
#[test]
fn snapshots_survive_many_in_place_commits() {
    let map: MvccMap<u32, u32> = MvccMap::new();
    let initial: Vec<(u32, u32)> = (0..2_000).map(|k| (k, k)).collect();
    commit_all(&map, &initial);
    let mut model: BTreeMap<u32, u32> = initial.iter().copied().collect();
    let before = (map.snapshot(), model.clone());
    let mut middle = None;
    let mut x = 12_345u32;
    for round in 0..3_000u32 {
        // A small LCG: random-looking keys in and beyond the initial range.
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let key = (x >> 8) % 2_500;
        let mut tx = map.begin();
        if round % 9 == 0 {
            tx.remove(&key);
            model.remove(&key);
        } else {
            let v = tx.get(&key).unwrap_or(0);
            assert_eq!(Some(v), model.get(&key).copied().or(Some(0)));
            tx.insert(key, v + round);
            model.insert(key, v + round);
        }
        tx.commit().unwrap();
        if round == 1_500 {
            middle = Some((map.snapshot(), model.clone()));
        }
    }
    let latest = map.snapshot();
    for (snapshot, expected) in [&before, middle.as_ref().unwrap(), &(latest, model.clone())] {
        assert_eq!(
            contents(snapshot),
            expected.clone().into_iter().collect::<Vec<_>>()
        );
        assert_eq!(snapshot.len(), expected.len());
        let page: Vec<_> = snapshot
            .range(1_000..1_100)
            .map(|(k, v)| (*k, *v))
            .collect();
        assert_eq!(
            page,
            expected
                .range(1_000..1_100)
                .map(|(k, v)| (*k, *v))
                .collect::<Vec<_>>()
        );
        for key in (0..2_500).step_by(7) {
            assert_eq!(snapshot.get(&key), expected.get(&key).copied(), "key {key}");
        }
    }
    assert_eq!(map.len(), model.len());
}

/// While an old snapshot lives, a key written again and again keeps only the writes some live
/// snapshot reads (here none: the snapshot predates the key), however many commits follow; and
/// everything the snapshot alone held is freed by the next commit after it drops.
#[test]
fn pending_writes_stay_bounded_while_an_old_snapshot_lives() {
    let map: MvccMap<u32, Arc<u32>> = MvccMap::new();
    let mut tx = map.begin();
    tx.insert(0, Arc::new(0));
    tx.commit().unwrap();
    let old = map.snapshot();
    let seen_by_old = old.get(&0).unwrap();
    let tracked: Vec<Arc<u32>> = (1..=200).map(Arc::new).collect();
    // Key 1 written 200 times: each value is overwritten by the next commit, and no snapshot
    // but `old` (which predates them all) lives.
    for value in &tracked {
        let mut tx = map.begin();
        tx.insert(1, Arc::clone(value));
        tx.commit().unwrap();
    }
    let alive = tracked[..199]
        .iter()
        .filter(|value| Arc::strong_count(value) > 1)
        .count();
    assert_eq!(
        alive, 0,
        "{alive} overwritten values still held while an old snapshot that sees none lives"
    );
    assert_eq!(map.get(&1).as_deref(), Some(&200));
    assert_eq!(old.get(&1), None);
    assert_eq!(contents(&old).len(), 1);
    drop(old);
    let mut tx = map.begin();
    tx.insert(2, Arc::new(2));
    tx.commit().unwrap();
    assert_eq!(
        Arc::strong_count(&seen_by_old),
        2,
        "this clone, and the key's entry"
    );
    assert!(
        tracked[..199]
            .iter()
            .all(|value| Arc::strong_count(value) == 1),
        "the old snapshot is gone: no overwritten value is kept"
    );
    assert_eq!(map.stats().live_versions, 1);
}

/// Many threads committing at once: they commit on keys of their own (a counter, and a key they
/// insert and remove in turn) and move amounts between shared accounts, while a reader checks
/// every snapshot. Checked: every commit that returned is seen
/// by reads of the latest version at once (its own keys, which nobody else writes, read back
/// exactly); snapshots are a consistent prefix (shared total conserved, each thread's counter
/// never goes back, `len` equals the entries iterated); commit versions are distinct and leave no
/// gap; refused commits touched a shared key, and the counters match.
#[test]
fn concurrent_disjoint_and_overlapping_commits() {
    bounded("disjoint and overlapping commits", || {
        const THREADS: u64 = 4;
        const ROUNDS: u64 = 3000;
        const SHARED: u64 = 4;
        // Keys: shared accounts 0..SHARED; thread t's counter 100 + t, its toggled key 200 + t.
        let map: MvccMap<u64, i64> = MvccMap::new();
        commit_all(&map, &(0..SHARED).map(|k| (k, 100)).collect::<Vec<_>>());
        let done = Arc::new(AtomicBool::new(false));
        let mut last = BTreeMap::new();
        let reader = spawn_snapshot_checker(&map, &done, move |snap| {
            let entries: BTreeMap<u64, i64> = snap.iter().map(|(k, v)| (*k, *v)).collect();
            assert_eq!(snap.len(), entries.len(), "at version {}", snap.version());
            let total: i64 = (0..SHARED).map(|k| entries[&k]).sum();
            assert_eq!(total, 100 * SHARED as i64, "at version {}", snap.version());
            for t in 0..THREADS {
                let counter = entries.get(&(100 + t)).copied().unwrap_or(0);
                let before = last.insert(t, counter).unwrap_or(0);
                assert!(counter >= before, "thread {t}'s counter went back");
                // Point reads of the snapshot agree with its ordered map.
                assert_eq!(snap.get(&(100 + t)), entries.get(&(100 + t)).copied());
            }
        });
        let writers = spawn_writers(THREADS, &map, |t, map, mut seed| {
            let (counter, toggled) = (100 + t, 200 + t);
            let (mut versions, mut refused) = (Vec::new(), 0u64);
            for round in 0..ROUNDS {
                next_random(&mut seed);
                let mut tx = map.begin();
                if round % 3 == 2 {
                    // Overlapping: a transfer between two shared accounts.
                    let from = (seed >> 33) % SHARED;
                    let to = (from + 1 + (seed >> 40) % (SHARED - 1)) % SHARED;
                    let (a, b) = (tx.get(&from).unwrap(), tx.get(&to).unwrap());
                    tx.insert(from, a - 1);
                    tx.insert(to, b + 1);
                    match tx.commit() {
                        Ok(version) => versions.push(version),
                        Err(c) => {
                            assert!(c.key == from || c.key == to, "{c:?}");
                            assert!(c.committed_version > c.snapshot_version, "{c:?}");
                            refused += 1;
                        }
                    }
                } else {
                    // Disjoint: this thread's own keys, never refused.
                    let n = tx.get(&counter).unwrap_or(0) + 1;
                    tx.insert(counter, n);
                    let present = tx.get(&toggled).is_some();
                    if present {
                        tx.remove(&toggled);
                    } else {
                        tx.insert(toggled, n);
                    }
                    let version = tx.commit().expect("own keys never conflict");
                    versions.push(version);
                    // Returned, so every read of the latest version sees it.
                    assert_eq!(map.get(&counter), Some(n));
                    assert_eq!(map.contains_key(&toggled), !present);
                    assert!(map.version() >= version);
                    assert!(map.snapshot().version() >= version);
                }
            }
            (versions, refused)
        });
        let mut versions = Vec::new();
        let mut refused = 0;
        for w in writers {
            let (v, r) = w.join().unwrap();
            versions.extend(v);
            refused += r;
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        versions.sort_unstable();
        let expected: Vec<u64> = (2..2 + versions.len() as u64).collect();
        assert_eq!(versions, expected, "distinct versions, no gap");
        let s = map.stats();
        assert_eq!(s.version, 1 + versions.len() as u64);
        assert_eq!(s.commits, 1 + versions.len() as u64);
        assert_eq!(s.conflicts, refused);
        assert_eq!(s.commits + s.conflicts, 1 + THREADS * ROUNDS);
        assert_eq!((s.live_snapshots, s.live_versions), (0, 1));
        let snap = map.snapshot();
        assert_eq!(snap.len(), snap.iter().count());
        assert_eq!(
            (0..SHARED).map(|k| map.get(&k).unwrap()).sum::<i64>(),
            100 * SHARED as i64
        );
        for t in 0..THREADS {
            assert_eq!(map.get(&(100 + t)), Some((ROUNDS - ROUNDS / 3) as i64));
        }
    });
}

type Contents = Vec<(u32, String)>;

/// A value a snapshot lent from a node stays there while the snapshot lives, even once the
/// write before it is unlinked and the node's write is the entry's only one: the trim that
/// would fold it into the entry's inline write (and free the node) waits for no snapshot to be
/// live. A fold here would leave `lent` pointing into a freed node: a changed value, or an
/// invalid read under valgrind.
#[test]
fn a_value_lent_from_a_node_stays_there_until_no_snapshot_lives() {
    let map: MvccMap<u32, String> = MvccMap::new();
    commit_all(&map, &[(0, "first".to_string())]);
    // A transaction at version 1 keeps "first": the next write of key 0 goes into a node.
    let old_reader = map.begin();
    commit_all(&map, &[(0, "second".to_string())]);
    let snapshot = map.snapshot();
    let lent: Vec<(&u32, &String)> = snapshot.iter().collect();
    assert_eq!(lent, [(&0, &"second".to_string())]);
    drop(old_reader);
    // These commits trim key 0's entry ("first" is read by no one now), and allocate.
    for round in 0..20 {
        commit_all(&map, &[(1, format!("other-{round}"))]);
    }
    assert_eq!(lent, [(&0, &"second".to_string())], "a lent value moved");
    drop(lent);
    drop(snapshot);
    commit_all(&map, &[(1, "last".to_string())]);
    assert_eq!(map.get(&0).as_deref(), Some("second"));
    assert_eq!(map.snapshot().get(&0).as_deref(), Some("second"));
}

/// What a snapshot's iterator lends stays valid and unchanged while the snapshot lives, however
/// many commits overwrite, remove and re-insert its keys meanwhile: each commit trims the writes
/// of its keys that no live snapshot reads, and the writes a live snapshot reads are never among
/// them. The values are heap strings, so a write freed too early would show as a changed or
/// garbled value here, and as an invalid read under valgrind (`valgrind target/.../mvcc-*`).
/// Readers hold snapshots of many different versions at once, some across the whole run.
#[test]
fn lent_values_stay_valid_while_their_snapshot_lives() {
    bounded("lent values", || {
        const KEYS: u32 = 12;
        const ROUNDS: u32 = 300;
        let map: MvccMap<u32, String> = MvccMap::new();
        let seed: Vec<(u32, String)> = (0..KEYS).map(|k| (k, format!("0-{k}"))).collect();
        commit_all(&map, &seed);
        let oldest = map.snapshot();
        let oldest_lent: Vec<(&u32, &String)> = oldest.iter().collect();
        let done = AtomicBool::new(false);
        thread::scope(|scope| {
            scope.spawn(|| {
                for round in 1..=ROUNDS {
                    let mut tx = map.begin();
                    for key in 0..KEYS {
                        match (round + key) % 7 {
                            0 => tx.remove(&key),
                            // Some rounds leave a key alone, so its older writes wait for the
                            // queue of entries to trim rather than for the key's next write.
                            1 | 2 if round % 3 == 0 => {}
                            _ => tx.insert(key, format!("{round}-{key}")),
                        }
                    }
                    tx.commit().expect("the only writer");
                    // One-key commits too (they write in place when no snapshot is live).
                    let mut tx = map.begin();
                    tx.insert(round % KEYS, format!("{round}-{}-alone", round % KEYS));
                    tx.commit().expect("the only writer");
                }
                done.store(true, Ordering::Release);
            });
            for reader in 0..2u32 {
                let (map, done) = (&map, &done);
                scope.spawn(move || {
                    // Each snapshot held, with a copy of what it lent when taken.
                    let mut held: Vec<(Snapshot<u32, String>, Contents)> = Vec::new();
                    let mut checks = 0u32;
                    while !done.load(Ordering::Acquire) || checks < 50 {
                        let snapshot = map.snapshot();
                        let copy = contents(&snapshot);
                        held.push((snapshot, copy));
                        // Every snapshot still held lends exactly what it lent when taken.
                        for (snapshot, copy) in &held {
                            let lent: Vec<(&u32, &String)> = snapshot.iter().collect();
                            assert_eq!(lent.len(), copy.len());
                            for ((key, value), (k, v)) in lent.iter().zip(copy) {
                                assert_eq!(
                                    (*key, *value),
                                    (k, v),
                                    "version {}",
                                    snapshot.version()
                                );
                            }
                            for (k, v) in copy {
                                assert_eq!(snapshot.get(k).as_ref(), Some(v));
                            }
                        }
                        // Drop some, keep others: live versions come and go out of order.
                        if held.len() > 6 {
                            held.remove((checks as usize * 5 + reader as usize) % held.len());
                        }
                        checks += 1;
                    }
                });
            }
        });
        // The first snapshot, held across every commit, still lends its first values.
        for (key, value) in &oldest_lent {
            assert_eq!(**value, format!("0-{key}"));
        }
        drop(oldest_lent);
        drop(oldest);
        // Nothing live: one more commit trims every entry down to its newest write.
        let mut tx = map.begin();
        tx.insert(0, "last".to_string());
        tx.commit().unwrap();
        assert_eq!(map.stats().live_snapshots, 0);
    });
}

/// Overwrites of one live key commit alone, without the committer lock: they count in the
/// statistics like any commit (made and refused), and a value one of them keeps for a live
/// reader is freed once that reader is gone, by the thread's next commit alone, or by the next
/// commit under the lock.
#[test]
fn commits_alone_count_and_free_what_they_kept() {
    let tracked = Arc::new(0u32);
    let map: MvccMap<u32, Arc<u32>> = MvccMap::new();
    commit_all(&map, &[(1, Arc::clone(&tracked)), (2, Arc::new(2))]);
    let overwrite = |key: u32| {
        let mut tx = map.begin();
        tx.insert(key, Arc::new(key));
        tx.commit()
    };
    for kept_until in [
        "the thread's next commit alone",
        "the next commit under the lock",
    ] {
        let before = map.stats();
        let snapshot = map.snapshot();
        overwrite(1).unwrap();
        assert_eq!(Arc::strong_count(&tracked), 2, "the snapshot still sees it");
        assert_eq!(snapshot.get(&1).as_deref(), Some(&0));
        drop(snapshot);
        if kept_until == "the next commit under the lock" {
            // A new key: a commit under the lock, which trims what commits alone kept.
            commit_all(&map, &[(3, Arc::new(3))]);
        } else {
            overwrite(2).unwrap();
        }
        assert_eq!(Arc::strong_count(&tracked), 1, "freed by {kept_until}");
        let after = map.stats();
        assert_eq!(after.commits, before.commits + 2);
        assert_eq!(after.version, before.version + 2);
        // Put it back for the second round.
        let mut tx = map.begin();
        tx.insert(1, Arc::clone(&tracked));
        tx.commit().unwrap();
    }
    // A refused commit alone counts as a conflict and changes nothing.
    let mut stale = map.begin();
    stale.insert(2, Arc::new(20));
    overwrite(2).unwrap();
    let before = map.stats();
    let conflict = stale.commit().unwrap_err();
    assert_eq!(conflict.key, 2);
    let after = map.stats();
    assert_eq!(
        (after.commits, after.conflicts, after.version),
        (before.commits, before.conflicts + 1, before.version)
    );
    assert_eq!(map.get(&2).as_deref(), Some(&2));
    assert_eq!((after.live_snapshots, after.live_versions), (0, 1));
}

/// Commits alone (one key overwritten, others read) and commits under the committer lock (new
/// keys, several keys), from several threads at once, stay serializable, and snapshots see a
/// consistent state:
///
/// - Pairs of accounts `(2p, 2p + 1)`; a withdrawal reads both and takes one from either if
///   their sum stays at or above zero. It writes one key, so it commits alone; write skew (two
///   withdrawals from the same pair, each from another account, both on the same old sum) would
///   take a pair below zero. Deposits (one key: alone) keep the sums near zero, where that
///   matters.
/// - Every eighth round a thread also moves one from one pair to another if the first pair's
///   sum stays at or above zero (two keys written: under the lock), and adds or removes a key of
///   its own (new keys: under the lock).
/// - A reader checks in every snapshot that each pair's sum is at or above zero; at the end the
///   total is what the committed deposits and withdrawals left.
#[test]
fn commits_alone_and_under_the_lock_stay_serializable() {
    bounded("commits alone and under the lock", || {
        const THREADS: u64 = 3;
        const ROUNDS: u64 = 100_000;
        const PAIRS: u64 = 2;
        let map: MvccMap<u64, i64> = MvccMap::new();
        commit_all(&map, &(0..2 * PAIRS).map(|k| (k, 5)).collect::<Vec<_>>());
        let done = Arc::new(AtomicBool::new(false));
        let reader = spawn_snapshot_checker(&map, &done, |snap| {
            for pair in 0..PAIRS {
                let (a, b) = (
                    snap.get(&(2 * pair)).unwrap(),
                    snap.get(&(2 * pair + 1)).unwrap(),
                );
                assert!(
                    a + b >= 0,
                    "pair {pair} at {a} + {b}, version {}",
                    snap.version()
                );
            }
        });
        let writers = spawn_writers(THREADS, &map, |t, map, mut seed| {
            let (mut deposited, mut withdrawn) = (0i64, 0i64);
            let mut own_key_present = false;
            for round in 0..ROUNDS {
                next_random(&mut seed);
                let pair = (seed >> 33) % PAIRS;
                let from = 2 * pair + (seed >> 40) % 2;
                if round % 2 == 0 {
                    let mut tx = map.begin();
                    let balance = tx.get(&(from ^ 1)).unwrap();
                    tx.insert(from ^ 1, balance + 1);
                    if tx.commit().is_ok() {
                        deposited += 1;
                    }
                }
                let mut tx = map.begin();
                let (a, b) = (
                    tx.get(&(2 * pair)).unwrap(),
                    tx.get(&(2 * pair + 1)).unwrap(),
                );
                if a + b >= 1 {
                    let balance = if from.is_multiple_of(2) { a } else { b };
                    tx.insert(from, balance - 1);
                    if tx.commit().is_ok() {
                        withdrawn += 1;
                    }
                }
                if round % 8 == 7 {
                    let mut tx = map.begin();
                    let to = (from + 2) % (2 * PAIRS);
                    let (f, p, g) = (
                        tx.get(&from).unwrap(),
                        tx.get(&(from ^ 1)).unwrap(),
                        tx.get(&to).unwrap(),
                    );
                    if f + p >= 1 {
                        tx.insert(from, f - 1);
                        tx.insert(to, g + 1);
                    }
                    let own = 1000 + t;
                    if own_key_present {
                        tx.remove(&own);
                    } else {
                        tx.insert(own, 1);
                    }
                    if tx.commit().is_ok() {
                        own_key_present = !own_key_present;
                    }
                }
            }
            (deposited, withdrawn)
        });
        let (mut deposited, mut withdrawn) = (0, 0);
        for w in writers {
            let (d, w) = w.join().unwrap();
            deposited += d;
            withdrawn += w;
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        let total: i64 = (0..2 * PAIRS).map(|k| map.get(&k).unwrap()).sum();
        assert_eq!(total, 10 * PAIRS as i64 + deposited - withdrawn);
        for pair in 0..PAIRS {
            let (a, b) = (
                map.get(&(2 * pair)).unwrap(),
                map.get(&(2 * pair + 1)).unwrap(),
            );
            assert!(a + b >= 0, "pair {pair} at {a} + {b}");
        }
        let s = map.stats();
        assert_eq!((s.live_snapshots, s.live_versions), (0, 1));
        assert_eq!(
            s.version, s.commits,
            "every commit made a version (setup included)"
        );
    });
}

/// Transactions registered in a slot hold the map through their slot's lease, not a reference
/// count of their own (`state.rs`'s `Hold`): the map's state, and every value in it, lives
/// until its last handle and its last transaction are gone, whichever goes last, and no longer.
/// (Under valgrind in CI: a lease given back twice, or too early, is an invalid read.)
#[test]
fn transactions_that_outlive_their_map_keep_it_and_free_it() {
    let tracked = Arc::new(0u32);
    // The map dropped first, a transaction on this thread still live.
    let map: MvccMap<u32, Arc<u32>> = MvccMap::new();
    commit_all(&map, &[(1, Arc::clone(&tracked))]);
    let mut tx = map.begin();
    drop(map);
    assert_eq!(
        tx.get(&1).as_deref(),
        Some(&0),
        "the transaction still reads the map"
    );
    tx.insert(1, Arc::new(1));
    tx.commit().unwrap();
    assert_eq!(
        Arc::strong_count(&tracked),
        1,
        "freed with the last transaction"
    );

    // The map dropped while another thread's transaction lives, then that one ends.
    let map: MvccMap<u32, Arc<u32>> = MvccMap::new();
    commit_all(&map, &[(1, Arc::clone(&tracked))]);
    let (began, begun) = std::sync::mpsc::channel();
    let (dropped, map_dropped) = std::sync::mpsc::channel::<()>();
    let other = {
        let map = map.clone();
        thread::spawn(move || {
            let mut tx = map.begin();
            drop(map);
            began.send(()).unwrap();
            map_dropped.recv().unwrap();
            assert_eq!(tx.get(&1).as_deref(), Some(&0));
        })
    };
    begun.recv().unwrap();
    drop(map);
    assert_eq!(
        Arc::strong_count(&tracked),
        2,
        "a transaction still holds the map"
    );
    dropped.send(()).unwrap();
    other.join().unwrap();
    assert_eq!(
        Arc::strong_count(&tracked),
        1,
        "freed with the last transaction"
    );

    // No transaction live when the map goes: the leases are given back at once.
    let map: MvccMap<u32, Arc<u32>> = MvccMap::new();
    commit_all(&map, &[(1, Arc::clone(&tracked))]);
    for _ in 0..3 {
        let mut tx = map.begin();
        tx.get(&1);
        drop(tx);
    }
    let clone = map.clone();
    drop(map);
    assert_eq!(
        Arc::strong_count(&tracked),
        2,
        "a clone still holds the map"
    );
    drop(clone);
    assert_eq!(Arc::strong_count(&tracked), 1, "freed with the last handle");
}
