//! Rate-limiter benchmarks: `sync_kit::ratelimit` side by side with `governor`.
//!
//! Every criterion group measures the same operation on each implementation in one run, so the
//! figures within a group are comparable (and their ratios are what counts; absolute numbers
//! depend on the machine and its load).
//!
//! Groups:
//! - `bucket_grant_1_thread`: `TokenBucket::try_acquire(1)` next to governor's direct limiter
//!   (`RateLimiter::direct(..).check()`), at 1e9 tokens/s with a burst of `u32::MAX`, so nearly
//!   every call is granted. sync-kit also appears with a `FakeClock` (time never moves; a
//!   reference showing the cost of reading the real clock; governor reads `quanta`'s TSC clock).
//! - `bucket_refused_1_thread`: the same limiters saturated (1 token/s, burst 1, drained first),
//!   so every call is refused.
//! - `bucket_grant_2_threads` / `bucket_refused_2_threads`: two threads hammering one limiter;
//!   wall time per call (both threads together).
//! - `keyed_1000_keys`: `KeyedLimiter::try_acquire(&key, 1)` next to governor's keyed limiter
//!   (`RateLimiter::keyed(..).check_key(&key)`, a `DashMap` state store) on 1000 keys cycled in a
//!   precomputed random order, in three regimes:
//!   - `grant_refilled`: 1e9/s, burst `u32::MAX`; each bucket is full again before its key comes
//!     round (so sync-kit's sweep evicts idle keys, and they are re-inserted: its design cost);
//!   - `grant_partial`: 1/s, burst `u32::MAX`; every call is granted but no bucket refills, so
//!     no key is ever evicted (the steady lookup path);
//!   - `refused`: 1/s, burst 1, every key drained first; every call is refused.
//! - `reference_costs`: the clocks measured alone: one read of sync-kit's `MonotonicClock`
//!   (`quanta`'s TSC clock since the figures of `docs/performance.md` showed `Instant` to be
//!   most of the bucket's cost), one read of governor's default clock (also `quanta`), and
//!   `std::time::Instant::elapsed`, what `MonotonicClock` read before.
//!
//! Run with `cargo bench -p sync-kit-benches --bench ratelimit`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use governor::RateLimiter;
use governor::clock::{Clock as _, QuantaClock};
use sync_kit::ratelimit::{
    Clock as _, FakeClock, KeyedLimiter, MonotonicClock, Quota, TokenBucket,
};
use sync_kit_benches::{random_keys, wall_time_split};

/// Settings for the single-threaded groups: short, but enough samples for a stable median.
fn quick(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(100);
}

/// Settings for the two-thread groups.
fn threaded(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
}

/// A rate high enough that the bucket (nearly) never runs dry.
const FAST_RATE: u32 = 1_000_000_000;
/// A rate low enough that a drained bucket stays empty for the whole run.
const SLOW_RATE: u32 = 1;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

fn governor_quota(rate: u32, burst: u32) -> governor::Quota {
    governor::Quota::per_second(nz(rate)).allow_burst(nz(burst))
}

/// A drained sync-kit bucket (1 token/s, burst 1): every later call within a second is refused.
fn empty_bucket() -> TokenBucket {
    let bucket = TokenBucket::new(SLOW_RATE, 1);
    bucket.try_acquire(1).expect("starts full");
    assert!(bucket.try_acquire(1).is_err());
    bucket
}

/// A drained governor direct limiter (1 token/s, burst 1).
fn empty_governor() -> governor::DefaultDirectRateLimiter {
    let limiter = RateLimiter::direct(governor_quota(SLOW_RATE, 1));
    limiter.check().expect("starts full");
    assert!(limiter.check().is_err());
    limiter
}

fn bucket_1_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("bucket_grant_1_thread");
    quick(&mut group);
    let bucket = TokenBucket::new(FAST_RATE, u32::MAX);
    group.bench_function("sync_kit", |b| {
        b.iter(|| black_box(&bucket).try_acquire(1).is_ok());
    });
    // Time stands still: u32::MAX tokens are enough for the whole run.
    let fake = TokenBucket::with_clock(Quota::per_second(FAST_RATE, u32::MAX), FakeClock::new());
    group.bench_function("sync_kit_fake_clock", |b| {
        b.iter(|| black_box(&fake).try_acquire(1).is_ok());
    });
    let limiter = RateLimiter::direct(governor_quota(FAST_RATE, u32::MAX));
    group.bench_function("governor", |b| {
        b.iter(|| black_box(&limiter).check().is_ok());
    });
    group.finish();

    let mut group = c.benchmark_group("bucket_refused_1_thread");
    quick(&mut group);
    let bucket = empty_bucket();
    group.bench_function("sync_kit", |b| {
        b.iter(|| black_box(&bucket).try_acquire(1).is_ok());
    });
    let fake = TokenBucket::with_clock(Quota::per_second(SLOW_RATE, 1), FakeClock::new());
    fake.try_acquire(1).expect("starts full");
    group.bench_function("sync_kit_fake_clock", |b| {
        b.iter(|| black_box(&fake).try_acquire(1).is_ok());
    });
    let limiter = empty_governor();
    group.bench_function("governor", |b| {
        b.iter(|| black_box(&limiter).check().is_ok());
    });
    group.finish();
}

/// Threads calling the shared limiter in the two-thread groups.
const THREADS: u64 = 2;

/// Runs `iters` calls of `op` split over [`THREADS`] threads; returns their wall time (see
/// [`wall_time_split`]).
fn two_threads(iters: u64, op: impl Fn() -> bool + Sync) -> Duration {
    wall_time_split(iters, THREADS, |_, n| {
        for _ in 0..n {
            black_box(op());
        }
    })
}

fn bucket_2_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("bucket_grant_2_threads");
    threaded(&mut group);
    let bucket = TokenBucket::new(FAST_RATE, u32::MAX);
    group.bench_function("sync_kit", |b| {
        b.iter_custom(|iters| two_threads(iters, || black_box(&bucket).try_acquire(1).is_ok()));
    });
    let limiter = RateLimiter::direct(governor_quota(FAST_RATE, u32::MAX));
    group.bench_function("governor", |b| {
        b.iter_custom(|iters| two_threads(iters, || black_box(&limiter).check().is_ok()));
    });
    group.finish();

    let mut group = c.benchmark_group("bucket_refused_2_threads");
    threaded(&mut group);
    let bucket = empty_bucket();
    group.bench_function("sync_kit", |b| {
        b.iter_custom(|iters| two_threads(iters, || black_box(&bucket).try_acquire(1).is_ok()));
    });
    let limiter = empty_governor();
    group.bench_function("governor", |b| {
        b.iter_custom(|iters| two_threads(iters, || black_box(&limiter).check().is_ok()));
    });
    group.finish();
}

/// Keys of the keyed limiters.
const KEYS: u64 = 1000;
/// Length of the precomputed random key sequence (a power of two, cycled through).
const SEQUENCE: usize = 1 << 14;

fn keyed(c: &mut Criterion) {
    let keys = random_keys(KEYS, SEQUENCE);
    let mut group = c.benchmark_group("keyed_1000_keys");
    quick(&mut group);

    // (regime, rate, burst, drain every key first)
    let regimes = [
        ("grant_refilled", FAST_RATE, u32::MAX, false),
        ("grant_partial", SLOW_RATE, u32::MAX, false),
        ("refused", SLOW_RATE, 1, true),
    ];
    for (regime, rate, burst, drain) in regimes {
        let ours = KeyedLimiter::new(rate, burst);
        let theirs = RateLimiter::keyed(governor_quota(rate, burst));
        for k in 0..KEYS {
            // Every key gets its state (and, if asked, an empty bucket) before the timing.
            let granted = ours.try_acquire(&k, 1).is_ok() && theirs.check_key(&k).is_ok();
            assert!(granted);
            if drain {
                assert!(ours.try_acquire(&k, 1).is_err() && theirs.check_key(&k).is_err());
            }
        }

        let mut i = 0;
        group.bench_function(format!("{regime}/sync_kit"), |b| {
            b.iter(|| {
                i = (i + 1) & (SEQUENCE - 1);
                black_box(&ours).try_acquire(&keys[i], 1).is_ok()
            });
        });
        group.bench_function(format!("{regime}/governor"), |b| {
            b.iter(|| {
                i = (i + 1) & (SEQUENCE - 1);
                black_box(&theirs).check_key(&keys[i]).is_ok()
            });
        });
    }
    group.finish();
}

fn reference_costs(c: &mut Criterion) {
    let mut group = c.benchmark_group("reference_costs");
    quick(&mut group);
    let ours = MonotonicClock::new();
    group.bench_function("sync_kit_monotonic_clock_now", |b| {
        b.iter(|| black_box(&ours).now());
    });
    let theirs = QuantaClock::default();
    group.bench_function("governor_quanta_clock_now", |b| {
        b.iter(|| black_box(&theirs).now());
    });
    let origin = Instant::now();
    group.bench_function("std_instant_elapsed", |b| {
        b.iter(|| black_box(&origin).elapsed());
    });
    group.finish();
}

criterion_group!(
    benches,
    bucket_1_thread,
    bucket_2_threads,
    keyed,
    reference_costs
);
criterion_main!(benches);
