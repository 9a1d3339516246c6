//! Loops for instruction counting: `benches/scripts/instructions.sh` runs each one under
//! valgrind's callgrind at two iteration counts and divides the difference, which leaves the
//! instructions of one iteration (setup and teardown cancel out).
//!
//! `instructions <op> <iterations>` runs one loop; `instructions` alone (as `cargo bench` runs
//! it) lists the operations. Every operation runs on a free lock (or a bucket that grants), on one
//! thread: the uncontended paths.
//!
//! | op | loop body |
//! |---|---|
//! | `sync_kit_mutex` / `parking_lot_mutex` | lock, increment, unlock |
//! | `sync_kit_read` / `parking_lot_read` | read lock, read, unlock |
//! | `sync_kit_write` / `parking_lot_write` | write lock, increment, unlock |
//! | `sync_kit_bucket` / `governor_bucket` | `try_acquire(1)` / `check()` on a bucket that grants |
//! | `sync_kit_bucket_fake_clock` | `try_acquire(1)` with a fake clock (no clock read) |
//! | `sync_kit_mvcc_get` / `sync_kit_snapshot_get` / `dashmap_get` | one point read of a random key among 100k (`MvccMap::get`, `Snapshot::get`, `DashMap::get`) |
//! | `sync_kit_mvcc_commit` / `rwlock_hashmap_commit` | read one random key, write another, commit (as `mvcc.rs`'s `commit_1_thread`; the floor under a `parking_lot::RwLock<HashMap>` write lock) |
//! | `sync_kit_mvcc_insert_remove` | two commits that change the keys (under the committer lock): insert a key the map lacks, then remove it, among 100k |

use std::hint::black_box;
use std::num::NonZeroU32;

use sync_kit::ratelimit::{FakeClock, Quota, TokenBucket};
use sync_kit_benches::mvcc::{KEYS, SEQUENCE, hash_map, mvcc_map};
use sync_kit_benches::random_keys;

const OPS: [&str; 15] = [
    "sync_kit_mutex",
    "parking_lot_mutex",
    "sync_kit_read",
    "parking_lot_read",
    "sync_kit_write",
    "parking_lot_write",
    "sync_kit_bucket",
    "sync_kit_bucket_fake_clock",
    "governor_bucket",
    "sync_kit_mvcc_get",
    "sync_kit_snapshot_get",
    "dashmap_get",
    "sync_kit_mvcc_commit",
    "rwlock_hashmap_commit",
    "sync_kit_mvcc_insert_remove",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(op), Some(n)) = (
        args.first(),
        args.get(1).and_then(|n| n.parse::<u64>().ok()),
    ) else {
        println!(
            "instruction-count loops (run by benches/scripts/instructions.sh): {}",
            OPS.join(", ")
        );
        return;
    };
    match op.as_str() {
        "sync_kit_mutex" => {
            let m = sync_kit::Mutex::new(0u64);
            for _ in 0..n {
                *black_box(&m).lock().unwrap() += 1;
            }
        }
        "parking_lot_mutex" => {
            let m = parking_lot::Mutex::new(0u64);
            for _ in 0..n {
                *black_box(&m).lock() += 1;
            }
        }
        "sync_kit_read" => {
            let l = sync_kit::RwLock::new(0u64);
            for _ in 0..n {
                black_box(*black_box(&l).read().unwrap());
            }
        }
        "parking_lot_read" => {
            let l = parking_lot::RwLock::new(0u64);
            for _ in 0..n {
                black_box(*black_box(&l).read());
            }
        }
        "sync_kit_write" => {
            let l = sync_kit::RwLock::new(0u64);
            for _ in 0..n {
                *black_box(&l).write().unwrap() += 1;
            }
        }
        "parking_lot_write" => {
            let l = parking_lot::RwLock::new(0u64);
            for _ in 0..n {
                *black_box(&l).write() += 1;
            }
        }
        "sync_kit_bucket" => {
            let bucket = TokenBucket::new(1_000_000_000, u32::MAX);
            for _ in 0..n {
                black_box(black_box(&bucket).try_acquire(1).is_ok());
            }
        }
        "sync_kit_bucket_fake_clock" => {
            let bucket = TokenBucket::with_clock(
                Quota::per_second(1_000_000_000, u32::MAX),
                FakeClock::new(),
            );
            for _ in 0..n {
                black_box(black_box(&bucket).try_acquire(1).is_ok());
            }
        }
        "governor_bucket" => {
            let nz = |n| NonZeroU32::new(n).expect("non-zero");
            let quota = governor::Quota::per_second(nz(1_000_000_000)).allow_burst(nz(u32::MAX));
            let limiter = governor::RateLimiter::direct(quota);
            for _ in 0..n {
                black_box(black_box(&limiter).check().is_ok());
            }
        }
        "sync_kit_mvcc_get" => {
            let (map, keys) = (mvcc_map(KEYS), random_keys(KEYS, SEQUENCE));
            for i in 0..n as usize {
                black_box(black_box(&map).get(&keys[i & (SEQUENCE - 1)]));
            }
        }
        "sync_kit_snapshot_get" => {
            let (map, keys) = (mvcc_map(KEYS), random_keys(KEYS, SEQUENCE));
            let snapshot = map.snapshot();
            for i in 0..n as usize {
                black_box(black_box(&snapshot).get(&keys[i & (SEQUENCE - 1)]));
            }
        }
        "dashmap_get" => {
            let keys = random_keys(KEYS, SEQUENCE);
            let map: dashmap::DashMap<u64, u64> = (0..KEYS).map(|k| (k, k)).collect();
            for i in 0..n as usize {
                black_box(black_box(&map).get(&keys[i & (SEQUENCE - 1)]).map(|v| *v));
            }
        }
        "sync_kit_mvcc_commit" => {
            let (map, keys) = (mvcc_map(KEYS), random_keys(KEYS, SEQUENCE));
            for i in 0..n as usize {
                let mut tx = black_box(&map).begin();
                let v = tx.get(&keys[i & (SEQUENCE - 1)]).unwrap_or(0);
                tx.insert(keys[(i + 1) & (SEQUENCE - 1)], v + 1);
                tx.commit().expect("one thread: no conflict");
            }
        }
        "sync_kit_mvcc_insert_remove" => {
            let (map, keys) = (mvcc_map(KEYS), random_keys(KEYS, SEQUENCE));
            for i in 0..n as usize {
                // Beyond the map's keys: each commit changes which keys have a value.
                let key = KEYS + keys[i & (SEQUENCE - 1)];
                let mut tx = black_box(&map).begin();
                tx.insert(key, 1);
                tx.commit().expect("one thread: no conflict");
                let mut tx = black_box(&map).begin();
                tx.remove(&key);
                tx.commit().expect("one thread: no conflict");
            }
        }
        "rwlock_hashmap_commit" => {
            let keys = random_keys(KEYS, SEQUENCE);
            let map = parking_lot::RwLock::new(hash_map(KEYS));
            for i in 0..n as usize {
                let mut m = black_box(&map).write();
                let v = m.get(&keys[i & (SEQUENCE - 1)]).copied().unwrap_or(0);
                m.insert(keys[(i + 1) & (SEQUENCE - 1)], v + 1);
            }
        }
        other => {
            eprintln!("unknown op {other:?}; one of: {}", OPS.join(", "));
            std::process::exit(2);
        }
    }
}
