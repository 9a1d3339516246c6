//! Helpers shared by the criterion suites in `benches/` (the suites themselves live there) and
//! the examples in `examples/`.

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

/// Runs `iters` operations split over `threads` workers, started once for a criterion sample and
/// released together by a barrier: worker `t` calls `run(t, n)` to perform its `n` operations
/// (the `n` add up to exactly `iters`). Returns the wall time from the first worker's start to the
/// last worker's end, both read by the workers themselves, so criterion reports wall time per
/// operation; a measuring thread scheduled late (2 vCPUs, 3 threads) could otherwise shorten the
/// span, or make it zero.
pub fn wall_time_split(iters: u64, threads: u64, run: impl Fn(u64, u64) + Sync) -> Duration {
    assert!(threads > 0, "at least one worker");
    let barrier = Barrier::new(threads as usize);
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let n = iters / threads + u64::from(t < iters % threads);
                let (barrier, run) = (&barrier, &run);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    run(t, n);
                    (start, Instant::now())
                })
            })
            .collect();
        let spans: Vec<(Instant, Instant)> = workers
            .into_iter()
            .map(|w| w.join().expect("benchmark thread panicked"))
            .collect();
        let start = spans.iter().map(|&(s, _)| s).min().expect("threads > 0");
        let end = spans.iter().map(|&(_, e)| e).max().expect("threads > 0");
        end.saturating_duration_since(start)
    })
}

/// `count` pseudo-random keys below `n`: splitmix64 from a fixed seed, so every run measures the
/// same sequence, without another dependency.
pub fn random_keys(n: u64, count: usize) -> Vec<u64> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..count)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        })
        .collect()
}

/// The MVCC workload of `mvcc.rs`'s point-read and commit groups, `instructions.rs`'s MVCC loops
/// and the `mvcc_scaling` example: one map of [`KEYS`](mvcc::KEYS) keys, random keys cycled
/// from a sequence of [`SEQUENCE`](mvcc::SEQUENCE), and the `RwLock<HashMap>` floor.
pub mod mvcc {
    use std::collections::HashMap;

    use sync_kit::mvcc::MvccMap;

    /// Keys in the point-read and commit workloads.
    pub const KEYS: u64 = 100_000;
    /// Length of the precomputed random key sequence (a power of two, cycled through).
    pub const SEQUENCE: usize = 1 << 16;

    /// A map of `n` keys `0..n` (value = key), built in one transaction.
    pub fn mvcc_map(n: u64) -> MvccMap<u64, u64> {
        let map = MvccMap::new();
        let mut tx = map.begin();
        for k in 0..n {
            tx.insert(k, k);
        }
        tx.commit().expect("nothing else commits");
        assert_eq!(map.len() as u64, n);
        map
    }

    /// The same keys in a plain `HashMap`.
    pub fn hash_map(n: u64) -> HashMap<u64, u64> {
        (0..n).map(|k| (k, k)).collect()
    }

    /// One small transaction: read `read`, write `write` with it plus one.
    pub fn mvcc_rw(map: &MvccMap<u64, u64>, read: u64, write: u64) {
        let mut tx = map.begin();
        let v = tx.get(&read).unwrap_or(0);
        tx.insert(write, v + 1);
        tx.commit().expect("disjoint keys never conflict");
    }

    /// The same read and write under one write lock: the floor.
    pub fn locked_rw(map: &parking_lot::RwLock<HashMap<u64, u64>>, read: u64, write: u64) {
        let mut m = map.write();
        let v = m.get(&read).copied().unwrap_or(0);
        m.insert(write, v + 1);
    }
}
