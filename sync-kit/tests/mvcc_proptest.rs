//! Property tests of `MvccMap`: against a sequential `BTreeMap` model, and interleaved
//! transactions checked for serializability in commit order, first-committer-wins, no false
//! conflicts, unchanged snapshots and statistics (live snapshots, versions, tombstones).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use sync_kit::mvcc::{MvccMap, Snapshot, Transaction};

type Key = u8;
type Val = u16;
type Model = BTreeMap<Key, Val>;

fn contents(snapshot: &Snapshot<Key, Val>) -> Model {
    let pairs: Vec<(Key, Val)> = snapshot.iter().map(|(k, v)| (*k, *v)).collect();
    assert!(
        pairs.windows(2).all(|w| w[0].0 < w[1].0),
        "iter is in strictly increasing key order: {pairs:?}"
    );
    pairs.into_iter().collect()
}

fn check_snapshot(snapshot: &Snapshot<Key, Val>, model: &Model, version: u64) {
    assert_eq!(snapshot.version(), version);
    assert_eq!(contents(snapshot), *model, "snapshot of version {version}");
    assert_eq!(snapshot.len(), model.len());
    assert_eq!(snapshot.is_empty(), model.is_empty());
    for k in 0..=KEYS {
        assert_eq!(
            snapshot.get(&k),
            model.get(&k).copied(),
            "key {k} at {version}"
        );
        assert_eq!(snapshot.contains_key(&k), model.contains_key(&k));
    }
}

/// Applies up to this many writing commits to drain the tombstone queue; fails if it does not.
fn drain_tombstones(map: &MvccMap<Key, Val>, removals: usize) {
    // Each writing commit drops at least one queued tombstone when nothing older is live.
    let mut rounds = 0;
    while map.stats().tombstones > 0 {
        assert!(
            rounds <= removals + 1,
            "tombstones not drained after {rounds} commits: {:?}",
            map.stats()
        );
        let mut tx = map.begin();
        tx.insert(SENTINEL, 0);
        tx.commit().expect("nothing else runs");
        rounds += 1;
    }
}

const KEYS: Key = 12;
const SENTINEL: Key = 200;

// ---------------------------------------------------------------------------------------------
// (a) One transaction at a time against a BTreeMap.

#[derive(Clone, Debug)]
enum SeqOp {
    Insert(Key, Val),
    Remove(Key),
    TxGet(Key),
    Commit,
    Abort,
    MapGet(Key),
    TakeSnapshot,
    CloneSnapshot(usize),
    CheckSnapshot(usize),
    DropSnapshot(usize),
    Range(Key, Key),
}

fn seq_op() -> impl Strategy<Value = SeqOp> {
    prop_oneof![
        4 => (0..=KEYS, any::<Val>()).prop_map(|(k, v)| SeqOp::Insert(k, v)),
        3 => (0..=KEYS).prop_map(SeqOp::Remove),
        2 => (0..=KEYS).prop_map(SeqOp::TxGet),
        3 => Just(SeqOp::Commit),
        1 => Just(SeqOp::Abort),
        1 => (0..=KEYS).prop_map(SeqOp::MapGet),
        2 => Just(SeqOp::TakeSnapshot),
        1 => any::<usize>().prop_map(SeqOp::CloneSnapshot),
        2 => any::<usize>().prop_map(SeqOp::CheckSnapshot),
        2 => any::<usize>().prop_map(SeqOp::DropSnapshot),
        1 => (0..=KEYS, 0..=KEYS).prop_map(|(a, b)| SeqOp::Range(a, b)),
    ]
}

struct OpenTx {
    tx: Transaction<Key, Val>,
    begin: u64,
    overlay: BTreeMap<Key, Option<Val>>,
}

fn run_sequential(ops: Vec<SeqOp>) {
    let map: MvccMap<Key, Val> = MvccMap::new();
    let mut model = Model::new();
    let mut version = 0u64;
    let mut commits = 0u64;
    let mut removals = 0usize;
    let mut open: Option<OpenTx> = None;
    let mut snapshots: Vec<(Snapshot<Key, Val>, Model)> = Vec::new();

    for op in ops {
        match op {
            SeqOp::Insert(..) | SeqOp::Remove(_) | SeqOp::TxGet(_) => {
                let o = open.get_or_insert_with(|| OpenTx {
                    tx: map.begin(),
                    begin: version,
                    overlay: BTreeMap::new(),
                });
                assert_eq!(o.tx.snapshot_version(), o.begin);
                match op {
                    SeqOp::Insert(k, v) => {
                        o.tx.insert(k, v);
                        o.overlay.insert(k, Some(v));
                    }
                    SeqOp::Remove(k) => {
                        o.tx.remove(&k);
                        o.overlay.insert(k, None);
                    }
                    SeqOp::TxGet(k) => {
                        let expected = match o.overlay.get(&k) {
                            Some(written) => *written,
                            None => model.get(&k).copied(),
                        };
                        assert_eq!(o.tx.get(&k), expected, "tx get {k}");
                    }
                    _ => unreachable!(),
                }
            }
            SeqOp::Commit => {
                let o = open.take().unwrap_or_else(|| OpenTx {
                    tx: map.begin(),
                    begin: version,
                    overlay: BTreeMap::new(),
                });
                let result = o.tx.commit();
                commits += 1;
                if !o.overlay.is_empty() {
                    version += 1;
                }
                for (k, v) in o.overlay {
                    match v {
                        Some(v) => {
                            model.insert(k, v);
                        }
                        None => {
                            removals += 1;
                            model.remove(&k);
                        }
                    }
                }
                assert_eq!(result, Ok(version), "a lone transaction always commits");
            }
            SeqOp::Abort => open = None,
            SeqOp::MapGet(k) => {
                assert_eq!(map.get(&k), model.get(&k).copied());
                assert_eq!(map.contains_key(&k), model.contains_key(&k));
            }
            SeqOp::TakeSnapshot => snapshots.push((map.snapshot(), model.clone())),
            SeqOp::CloneSnapshot(i) if !snapshots.is_empty() => {
                let (s, m) = &snapshots[i % snapshots.len()];
                let copy = (s.clone(), m.clone());
                snapshots.push(copy);
            }
            SeqOp::CheckSnapshot(i) if !snapshots.is_empty() => {
                let (s, m) = &snapshots[i % snapshots.len()];
                check_snapshot(s, m, s.version());
            }
            SeqOp::DropSnapshot(i) if !snapshots.is_empty() => {
                let n = snapshots.len();
                snapshots.swap_remove(i % n);
            }
            SeqOp::Range(a, b) => {
                let (lo, hi) = (a.min(b), a.max(b));
                let got: Vec<(Key, Val)> = map
                    .snapshot()
                    .range(lo..hi)
                    .map(|(k, v)| (*k, *v))
                    .collect();
                let want: Vec<(Key, Val)> = model.range(lo..hi).map(|(k, v)| (*k, *v)).collect();
                assert_eq!(got, want, "range {lo}..{hi}");
            }
            SeqOp::CloneSnapshot(_) | SeqOp::CheckSnapshot(_) | SeqOp::DropSnapshot(_) => {}
        }

        // After every step: the latest version equals the model; the stats add up.
        assert_eq!(map.version(), version);
        assert_eq!(map.len(), model.len());
        assert_eq!(map.is_empty(), model.is_empty());
        let stats = map.stats();
        assert_eq!(stats.version, version);
        assert_eq!(stats.keys, model.len());
        assert_eq!(stats.commits, commits);
        assert_eq!(stats.conflicts, 0);
        assert_eq!(
            stats.live_snapshots,
            snapshots.len() + usize::from(open.is_some())
        );
        let mut live: BTreeSet<u64> = snapshots.iter().map(|(s, _)| s.version()).collect();
        live.extend(open.as_ref().map(|o| o.begin));
        live.insert(version);
        assert_eq!(stats.live_versions, live.len(), "{stats:?}");
        assert!(
            stats.tombstones <= removals,
            "{stats:?} after {removals} removals"
        );
    }

    assert_eq!(contents(&map.snapshot()), model);
    for (s, m) in &snapshots {
        check_snapshot(s, m, s.version());
    }
    drop(open);
    drop(snapshots);
    let stats = map.stats();
    assert_eq!((stats.live_snapshots, stats.live_versions), (0, 1));
    drain_tombstones(&map, removals);
    model.insert(SENTINEL, 0);
    if map.version() > version {
        assert_eq!(contents(&map.snapshot()), model);
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Interleaved transactions, one thread, random schedule.

#[derive(Clone, Copy, Debug)]
enum TxOp {
    Get(Key),
    Insert(Key, Val),
    Remove(Key),
}

#[derive(Clone, Debug)]
struct TxSpec {
    ops: Vec<TxOp>,
    abort: bool,
}

fn tx_op(keys: Key) -> impl Strategy<Value = TxOp> {
    prop_oneof![
        3 => (0..keys).prop_map(TxOp::Get),
        3 => (0..keys, any::<Val>()).prop_map(|(k, v)| TxOp::Insert(k, v)),
        1 => (0..keys).prop_map(TxOp::Remove),
    ]
}

fn tx_spec(keys: Key) -> impl Strategy<Value = TxSpec> {
    (
        prop::collection::vec(tx_op(keys), 0..6),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(ops, abort)| TxSpec { ops, abort })
}

#[derive(Debug)]
enum Outcome {
    Pending,
    Committed(u64),
    Conflicted,
    Aborted,
}

struct Running {
    tx: Option<Transaction<Key, Val>>,
    begin: u64,
    pc: usize,
    touched: BTreeSet<Key>,
    reads: Vec<Option<Val>>,
    outcome: Outcome,
}

/// Runs `txs` interleaved as `schedule` dictates, checks every commit decision as it happens,
/// then replays the committed transactions serially. Returns the number of conflicts.
fn run_interleaved(initial: Model, txs: Vec<TxSpec>, schedule: Vec<u32>) -> u64 {
    let map: MvccMap<Key, Val> = MvccMap::new();
    {
        let mut tx = map.begin();
        for (k, v) in &initial {
            tx.insert(*k, *v);
        }
        tx.commit().unwrap();
    }
    let v0 = map.version();
    // Map content after each version, as observed right after each commit.
    let mut history: BTreeMap<u64, Model> = BTreeMap::from([(v0, initial.clone())]);
    let mut snapshots: Vec<(Snapshot<Key, Val>, u64)> = vec![(map.snapshot(), v0)];
    // Keys written by each writing commit.
    let mut write_log: Vec<(u64, BTreeSet<Key>)> = Vec::new();
    let mut commit_order: Vec<usize> = Vec::new();
    let mut removals = 0usize;
    let mut conflicts = 0u64;

    let mut running: Vec<Running> = txs
        .iter()
        .map(|_| Running {
            tx: None,
            begin: 0,
            pc: 0,
            touched: BTreeSet::new(),
            reads: Vec::new(),
            outcome: Outcome::Pending,
        })
        .collect();

    let mut step = 0usize;
    loop {
        let pending: Vec<usize> = (0..txs.len())
            .filter(|&i| matches!(running[i].outcome, Outcome::Pending))
            .collect();
        if pending.is_empty() {
            break;
        }
        let pick = schedule
            .get(step % schedule.len().max(1))
            .copied()
            .unwrap_or(0) as usize;
        let i = pending[(pick + step / schedule.len().max(1)) % pending.len()];
        step += 1;
        let spec = &txs[i];
        let r = &mut running[i];
        if r.tx.is_none() {
            // Begin.
            let tx = map.begin();
            r.begin = tx.snapshot_version();
            assert_eq!(r.begin, map.version());
            r.tx = Some(tx);
            snapshots.push((map.snapshot(), r.begin));
        } else if r.pc < spec.ops.len() {
            let tx = r.tx.as_mut().unwrap();
            match spec.ops[r.pc] {
                TxOp::Get(k) => {
                    r.touched.insert(k);
                    r.reads.push(tx.get(&k));
                }
                TxOp::Insert(k, v) => {
                    r.touched.insert(k);
                    tx.insert(k, v);
                }
                TxOp::Remove(k) => {
                    r.touched.insert(k);
                    tx.remove(&k);
                }
            }
            r.pc += 1;
        } else {
            let tx = r.tx.take().unwrap();
            if spec.abort {
                drop(tx);
                r.outcome = Outcome::Aborted;
                continue;
            }
            let before_version = map.version();
            let before = contents(&map.snapshot());
            let expected_conflict: Option<u64> = write_log
                .iter()
                .filter(|(v, keys)| *v > r.begin && !keys.is_disjoint(&r.touched))
                .map(|(v, _)| *v)
                .max();
            match tx.commit() {
                Err(c) => {
                    assert!(
                        expected_conflict.is_some(),
                        "false conflict: tx {i} (began at {}, touched {:?}) refused with {c:?}; \
                         writes since: {write_log:?}",
                        r.begin,
                        r.touched
                    );
                    assert!(
                        r.touched.contains(&c.key),
                        "{c:?} names a key the tx touched"
                    );
                    assert_eq!(c.snapshot_version, r.begin);
                    let last_write = write_log
                        .iter()
                        .filter(|(_, keys)| keys.contains(&c.key))
                        .map(|(v, _)| *v)
                        .max();
                    assert_eq!(Some(c.committed_version), last_write, "{c:?}");
                    assert!(c.committed_version > r.begin);
                    assert_eq!(map.version(), before_version, "a conflict changes nothing");
                    assert_eq!(
                        contents(&map.snapshot()),
                        before,
                        "a conflict changes nothing"
                    );
                    conflicts += 1;
                    r.outcome = Outcome::Conflicted;
                }
                Ok(version) => {
                    assert_eq!(
                        expected_conflict, None,
                        "tx {i} (began at {}, touched {:?}) committed although a key it touched \
                         was committed after it began: {write_log:?}",
                        r.begin, r.touched
                    );
                    let writes: BTreeSet<Key> = spec
                        .ops
                        .iter()
                        .filter_map(|op| match op {
                            TxOp::Insert(k, _) | TxOp::Remove(k) => Some(*k),
                            TxOp::Get(_) => None,
                        })
                        .collect();
                    if writes.is_empty() {
                        assert_eq!(
                            version, before_version,
                            "a read-only commit adds no version"
                        );
                    } else {
                        assert_eq!(version, before_version + 1, "versions are consecutive");
                        removals += spec
                            .ops
                            .iter()
                            .filter(|op| matches!(op, TxOp::Remove(_)))
                            .count();
                        write_log.push((version, writes));
                        history.insert(version, contents(&map.snapshot()));
                    }
                    assert_eq!(map.version(), version);
                    commit_order.push(i);
                    r.outcome = Outcome::Committed(version);
                }
            }
        }
    }

    // Serial replay of the committed transactions, in commit order, on a model.
    let mut model = initial;
    let mut version = v0;
    for &i in &commit_order {
        let Outcome::Committed(committed_at) = running[i].outcome else {
            unreachable!()
        };
        let mut overlay: BTreeMap<Key, Option<Val>> = BTreeMap::new();
        let mut reads = running[i].reads.iter();
        for op in &txs[i].ops {
            match *op {
                TxOp::Get(k) => {
                    let want = match overlay.get(&k) {
                        Some(written) => *written,
                        None => model.get(&k).copied(),
                    };
                    assert_eq!(
                        *reads.next().unwrap(),
                        want,
                        "tx {i} read {k} differently from the serial replay"
                    );
                }
                TxOp::Insert(k, v) => {
                    overlay.insert(k, Some(v));
                }
                TxOp::Remove(k) => {
                    overlay.insert(k, None);
                }
            }
        }
        if !overlay.is_empty() {
            version += 1;
        }
        assert_eq!(committed_at, version, "tx {i} commit version");
        for (k, v) in overlay {
            match v {
                Some(v) => model.insert(k, v),
                None => model.remove(&k),
            };
        }
        assert_eq!(history[&version], model, "state after version {version}");
    }
    assert_eq!(map.version(), version);
    assert_eq!(
        contents(&map.snapshot()),
        model,
        "final map = serial replay"
    );

    // Every snapshot still shows its version exactly.
    for (s, v) in &snapshots {
        check_snapshot(s, &history[v], *v);
    }

    let stats = map.stats();
    assert_eq!(stats.commits, 1 + commit_order.len() as u64);
    assert_eq!(stats.conflicts, conflicts);
    assert_eq!(stats.live_snapshots, snapshots.len());
    drop(snapshots);
    let stats = map.stats();
    assert_eq!(
        (stats.live_snapshots, stats.live_versions),
        (0, 1),
        "{stats:?}"
    );
    drain_tombstones(&map, removals);
    conflicts
}

/// Keys of transaction `i` moved to a range of their own.
fn make_disjoint(txs: &mut [TxSpec]) {
    for (i, spec) in txs.iter_mut().enumerate() {
        let base = (i as Key) * 10;
        for op in &mut spec.ops {
            match op {
                TxOp::Get(k) | TxOp::Insert(k, _) | TxOp::Remove(k) => *k = base + *k % 10,
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn sequential_model(ops in prop::collection::vec(seq_op(), 0..120)) {
        run_sequential(ops);
    }

    #[test]
    fn interleaved_transactions_are_serializable(
        initial in prop::collection::btree_map(0..5 as Key, any::<Val>(), 0..5),
        txs in prop::collection::vec(tx_spec(5), 1..7),
        schedule in prop::collection::vec(any::<u32>(), 1..64),
    ) {
        run_interleaved(initial, txs, schedule);
    }

    #[test]
    fn interleaved_transactions_with_wider_keys(
        initial in prop::collection::btree_map(0..12 as Key, any::<Val>(), 0..12),
        txs in prop::collection::vec(tx_spec(12), 2..10),
        schedule in prop::collection::vec(any::<u32>(), 1..128),
    ) {
        run_interleaved(initial, txs, schedule);
    }

    #[test]
    fn disjoint_transactions_always_commit(
        mut txs in prop::collection::vec(tx_spec(10), 1..8),
        schedule in prop::collection::vec(any::<u32>(), 1..64),
    ) {
        make_disjoint(&mut txs);
        for spec in &mut txs {
            spec.abort = false;
        }
        prop_assert_eq!(run_interleaved(Model::new(), txs, schedule), 0);
    }
}

#[test]
fn disjoint_transactions_count_no_conflicts() {
    // A deterministic instance of the property above with the counts checked directly.
    let map: MvccMap<Key, Val> = MvccMap::new();
    let mut txs: Vec<_> = (0..8).map(|_| map.begin()).collect();
    for (i, tx) in txs.iter_mut().enumerate() {
        let k = i as Key * 10;
        assert_eq!(tx.get(&k), None);
        tx.insert(k, i as Val);
        tx.remove(&(k + 1));
    }
    // Commit in an order unrelated to the begin order.
    for i in [3, 7, 0, 5, 1, 6, 2, 4] {
        let tx = std::mem::replace(&mut txs[i], map.begin());
        tx.commit().expect("disjoint keys never conflict");
    }
    drop(txs);
    let s = map.stats();
    assert_eq!((s.commits, s.conflicts, s.keys), (8, 0, 8));
    assert_eq!((s.live_snapshots, s.live_versions), (0, 1));
}

/// Real threads, real races: each thread runs its transactions (no retry), recording what every
/// committed one read and wrote with its commit version. Replaying the committed transactions
/// serially in commit-version order must reproduce every value they read and the final map:
/// concurrent commits are equivalent to that serial order.
fn run_threaded(per_thread: Vec<Vec<TxSpec>>) {
    type Record = (u64, Vec<(Key, Option<Val>)>, BTreeMap<Key, Option<Val>>);
    let map: MvccMap<Key, Val> = MvccMap::new();
    let start = std::sync::Barrier::new(per_thread.len());
    let mut records: Vec<Record> = std::thread::scope(|s| {
        let workers: Vec<_> = per_thread
            .iter()
            .map(|txs| {
                let (map, start) = (&map, &start);
                s.spawn(move || {
                    start.wait();
                    let mut committed = Vec::new();
                    for spec in txs {
                        let mut tx = map.begin();
                        let mut reads = Vec::new();
                        let mut writes = BTreeMap::new();
                        for op in &spec.ops {
                            match *op {
                                TxOp::Get(k) if !writes.contains_key(&k) => {
                                    reads.push((k, tx.get(&k)));
                                }
                                TxOp::Get(_) => {}
                                TxOp::Insert(k, v) => {
                                    tx.insert(k, v);
                                    writes.insert(k, Some(v));
                                }
                                TxOp::Remove(k) => {
                                    tx.remove(&k);
                                    writes.insert(k, None);
                                }
                            }
                        }
                        if spec.abort {
                            continue;
                        }
                        if let Ok(version) = tx.commit() {
                            committed.push((version, reads, writes));
                        }
                    }
                    committed
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    // A read-only commit reports the version it validated against: it comes after that
    // version's writer.
    records.sort_by_key(|(version, _, writes)| (*version, writes.is_empty()));
    let mut model = Model::new();
    let mut last_writing = 0;
    for (version, reads, writes) in records {
        for (k, seen) in reads {
            assert_eq!(
                seen,
                model.get(&k).copied(),
                "read of key {k} by commit {version}"
            );
        }
        if !writes.is_empty() {
            assert!(
                version > last_writing,
                "writing commits get distinct, increasing versions"
            );
            last_writing = version;
        }
        for (k, v) in writes {
            match v {
                Some(v) => model.insert(k, v),
                None => model.remove(&k),
            };
        }
    }
    assert_eq!(
        contents(&map.snapshot()),
        model,
        "final map = serial replay"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn threaded_transactions_equal_their_serial_replay(
        per_thread in prop::collection::vec(prop::collection::vec(tx_spec(4), 1..40), 2..4),
    ) {
        run_threaded(per_thread);
    }
}
