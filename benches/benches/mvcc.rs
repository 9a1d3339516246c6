//! MVCC benchmarks: `sync_kit::mvcc::MvccMap` side by side with what a user would pick instead.
//!
//! Every criterion group measures the same operation on each implementation in one run, so the
//! figures within a group are comparable (and their ratios are what counts; absolute numbers
//! depend on the machine and its load).
//!
//! Groups:
//! - `snapshot`: `MvccMap::snapshot` (and dropping it) on maps of 1k, 100k and 1M keys, next to
//!   the deep copy a naive port would make (`HashMap::clone` of the same keys). The maps are
//!   built once, outside the timing. The ratio 1M / 1k of `MvccMap::snapshot` is the O(1) claim.
//! - `point_read_100k`: one `get` of a random key (the sequence is precomputed) in 100k keys:
//!   from a `Snapshot`, from the latest version (`MvccMap::get`), from a `dashmap::DashMap`, and
//!   from a `parking_lot::RwLock<HashMap>` (read lock + get).
//! - `scan_100k`: a whole snapshot of 100k keys in key order (`Snapshot::iter`, summing the
//!   values), next to the same walk of a `BTreeMap` under a `parking_lot::RwLock` read lock; and
//!   a page of 100 keys from a random start (`Snapshot::range`), next to `BTreeMap::range`.
//! - `commit_1_thread` / `commit_2_threads`: a small transaction (read one key, write one key,
//!   commit) on a 100k-key map, next to the same read and write under a
//!   `parking_lot::RwLock<HashMap>` write lock (no isolation, no history: the floor). With two
//!   threads the key ranges are disjoint (no conflicts) and the figure is wall time per commit
//!   (both threads together).
//!
//! Run with `cargo bench -p sync-kit-benches --bench mvcc`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use sync_kit_benches::mvcc::{KEYS, SEQUENCE, hash_map, locked_rw, mvcc_map, mvcc_rw};
use sync_kit_benches::{random_keys, wall_time_split};

/// Settings for the fast single-threaded groups: short, but enough samples for a stable median.
fn quick(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(100);
}

const SIZES: [(u64, &str); 3] = [(1_000, "1k"), (100_000, "100k"), (1_000_000, "1M")];

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (n, label) in SIZES {
        let map = mvcc_map(n);
        group.sample_size(100);
        group.bench_function(BenchmarkId::new("sync_kit", label), |b| {
            b.iter(|| black_box(&map).snapshot());
        });
        drop(map);

        let copy = hash_map(n);
        // A deep copy of 1M keys takes milliseconds: fewer samples.
        group.sample_size(if n >= 1_000_000 { 10 } else { 50 });
        group.bench_function(BenchmarkId::new("deep_copy_hashmap", label), |b| {
            b.iter(|| black_box(&copy).clone());
        });
    }
    group.finish();
}

fn point_read(c: &mut Criterion) {
    let keys = random_keys(KEYS, SEQUENCE);
    let mut group = c.benchmark_group("point_read_100k");
    quick(&mut group);

    let map = mvcc_map(KEYS);
    let snap = map.snapshot();
    let mut i = 0;
    group.bench_function("sync_kit_snapshot_get", |b| {
        b.iter(|| {
            i = (i + 1) & (SEQUENCE - 1);
            black_box(&snap).get(&keys[i])
        });
    });
    group.bench_function("sync_kit_map_get_latest", |b| {
        b.iter(|| {
            i = (i + 1) & (SEQUENCE - 1);
            black_box(&map).get(&keys[i])
        });
    });
    drop(snap);
    drop(map);

    let dash: dashmap::DashMap<u64, u64> = (0..KEYS).map(|k| (k, k)).collect();
    group.bench_function("dashmap_get", |b| {
        b.iter(|| {
            i = (i + 1) & (SEQUENCE - 1);
            black_box(&dash).get(&keys[i]).map(|v| *v)
        });
    });
    drop(dash);

    let locked = parking_lot::RwLock::new(hash_map(KEYS));
    group.bench_function("parking_lot_rwlock_hashmap_get", |b| {
        b.iter(|| {
            i = (i + 1) & (SEQUENCE - 1);
            black_box(&locked).read().get(&keys[i]).copied()
        });
    });
    group.finish();
}

fn scan(c: &mut Criterion) {
    let keys = random_keys(KEYS, SEQUENCE);
    let mut group = c.benchmark_group("scan_100k");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    let map = mvcc_map(KEYS);
    let snap = map.snapshot();
    group.bench_function("sync_kit_snapshot_iter", |b| {
        b.iter(|| black_box(&snap).iter().map(|(_, v)| *v).sum::<u64>());
    });
    let tree = parking_lot::RwLock::new(
        (0..KEYS)
            .map(|k| (k, k))
            .collect::<std::collections::BTreeMap<u64, u64>>(),
    );
    group.bench_function("rwlock_btreemap_iter", |b| {
        b.iter(|| black_box(&tree).read().values().sum::<u64>());
    });
    group.sample_size(100);
    let mut i = 0;
    group.bench_function("sync_kit_snapshot_range_100", |b| {
        b.iter(|| {
            i = (i + 1) & (SEQUENCE - 1);
            black_box(&snap)
                .range(keys[i]..)
                .take(100)
                .map(|(_, v)| *v)
                .sum::<u64>()
        });
    });
    group.bench_function("rwlock_btreemap_range_100", |b| {
        b.iter(|| {
            i = (i + 1) & (SEQUENCE - 1);
            black_box(&tree)
                .read()
                .range(keys[i]..)
                .take(100)
                .map(|(_, v)| *v)
                .sum::<u64>()
        });
    });
    group.finish();
}

fn commit_1_thread(c: &mut Criterion) {
    let keys = random_keys(KEYS, SEQUENCE);
    let mut group = c.benchmark_group("commit_1_thread");
    quick(&mut group);

    let map = mvcc_map(KEYS);
    let mut i = 0;
    group.bench_function("sync_kit", |b| {
        b.iter(|| {
            i = (i + 1) & (SEQUENCE - 1);
            mvcc_rw(black_box(&map), keys[i], keys[(i + 1) & (SEQUENCE - 1)]);
        });
    });
    drop(map);

    let locked = parking_lot::RwLock::new(hash_map(KEYS));
    group.bench_function("parking_lot_rwlock_hashmap", |b| {
        b.iter(|| {
            i = (i + 1) & (SEQUENCE - 1);
            locked_rw(black_box(&locked), keys[i], keys[(i + 1) & (SEQUENCE - 1)]);
        });
    });
    group.finish();
}

/// Threads committing in the two-thread group.
const THREADS: u64 = 2;

/// Runs `iters` operations split over [`THREADS`] threads; thread `t` passes keys from its own
/// part of the key space (disjoint, so transactions never conflict). Returns their wall time (see
/// [`wall_time_split`]).
fn two_threads(iters: u64, keys: &[u64], op: impl Fn(u64, u64) + Sync) -> Duration {
    wall_time_split(iters, THREADS, |t, n| {
        // Thread t uses keys ≡ t (mod THREADS): disjoint sets.
        let own = |k: u64| k - k % THREADS + t;
        let mut i = t as usize * 7919;
        for _ in 0..n {
            i = (i + 1) & (SEQUENCE - 1);
            op(own(keys[i]), own(keys[(i + 1) & (SEQUENCE - 1)]));
        }
    })
}

fn commit_2_threads(c: &mut Criterion) {
    let keys = random_keys(KEYS, SEQUENCE);
    let mut group = c.benchmark_group("commit_2_threads");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(50);

    let map = mvcc_map(KEYS);
    group.bench_function("sync_kit", |b| {
        b.iter_custom(|iters| two_threads(iters, &keys, |r, w| mvcc_rw(&map, r, w)));
    });
    drop(map);

    let locked = parking_lot::RwLock::new(hash_map(KEYS));
    group.bench_function("parking_lot_rwlock_hashmap", |b| {
        b.iter_custom(|iters| two_threads(iters, &keys, |r, w| locked_rw(&locked, r, w)));
    });
    group.finish();
}

criterion_group!(
    benches,
    snapshot,
    point_read,
    scan,
    commit_1_thread,
    commit_2_threads
);
criterion_main!(benches);
