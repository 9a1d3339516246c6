//! Helpers shared by the criterion suites in `benches/` (the suites themselves live there).

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
