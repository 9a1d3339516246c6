//! Rate limiting: `TokenBucket` against an exact reference model on a `FakeClock` (grants, exact
//! `RetryAfter::Wait`, `Never`, no drift over 10^6 s, `acquire_timeout`), and `KeyedLimiter`
//! (independent keys, counters, idle-key eviction that no decision can observe).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sync_kit::ratelimit::{
    Clock, FakeClock, KeyedLimiter, KeyedStats, MonotonicClock, Quota, RetryAfter, TokenBucket,
};

mod common;
use common::bounded;

/// A small deterministic PRNG (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The reference: a classic token counter, refilled by one whole token at each boundary
/// `k · period / tokens` (an exact rational, never rounded until compared with nanoseconds) and
/// capped at `burst`. It starts full.
#[derive(Clone, Debug)]
struct Model {
    tokens: u128,
    period: u128,
    burst: u64,
    available: u64,
    /// Refill boundaries passed so far.
    boundaries: u128,
}

impl Model {
    fn new(tokens: u32, period_nanos: u64, burst: u32, now: u128) -> Self {
        let mut model = Self {
            tokens: u128::from(tokens),
            period: u128::from(period_nanos),
            burst: u64::from(burst),
            available: u64::from(burst),
            boundaries: 0,
        };
        model.boundaries = model.boundaries_at(now);
        model
    }

    /// Boundaries `k` with `k · period / tokens ≤ now` (exact rational comparison).
    fn boundaries_at(&self, now: u128) -> u128 {
        now * self.tokens / self.period
    }

    /// The first nanosecond `t` with `t ≥ k · period / tokens`.
    fn time_of_boundary(&self, k: u128) -> u128 {
        (k * self.period).div_ceil(self.tokens)
    }

    fn refill(&mut self, now: u128) {
        let b = self.boundaries_at(now);
        assert!(b >= self.boundaries, "time went back");
        let gained = b - self.boundaries;
        self.available = u64::try_from(u128::from(self.available) + gained)
            .unwrap_or(u64::MAX)
            .min(self.burst);
        self.boundaries = b;
    }

    fn acquire(&mut self, now: u128, n: u32) -> Result<(), RetryAfter> {
        self.refill(now);
        let n64 = u64::from(n);
        if n64 > self.burst {
            return Err(RetryAfter::Never {
                requested: n,
                burst: self.burst as u32,
            });
        }
        if n64 <= self.available {
            self.available -= n64;
            return Ok(());
        }
        let missing = u128::from(n64 - self.available);
        let ready = self.time_of_boundary(self.boundaries + missing);
        assert!(ready > now);
        Err(RetryAfter::Wait(Duration::from_nanos(
            u64::try_from(ready - now).unwrap(),
        )))
    }
}

fn nanos(clock: &FakeClock) -> u128 {
    clock.now().as_nanos()
}

#[derive(Clone, Debug)]
enum BucketOp {
    Advance(u64),
    Acquire(u32),
    /// Advance exactly to the end of the last `Wait`, then retry the same request.
    WaitAndRetry(u32),
}

fn quota_strategy() -> impl Strategy<Value = (u32, u64, u32)> {
    (
        // Any ratio a `Quota` accepts (at most one token per nanosecond: the period is raised to
        // the token count below), including awkward ones like 7 per 1000 ns.
        prop_oneof![
            1..=10u32,
            1..=1000u32,
            Just(3u32),
            Just(7u32),
            Just(1_000_000u32)
        ],
        prop_oneof![
            Just(1_000_000_000u64),
            1..=20_000_000_000u64,
            1..=1000u64,
            Just(1u64)
        ],
        prop_oneof![1..=5u32, 1..=64u32],
    )
        .prop_map(|(tokens, period, burst)| (tokens, period.max(u64::from(tokens)), burst))
}

fn bucket_ops(period: u64, tokens: u32, burst: u32) -> impl Strategy<Value = Vec<BucketOp>> {
    let slot = (period / u64::from(tokens)).max(1);
    let big = slot.saturating_mul(u64::from(burst) + 2);
    prop::collection::vec(
        prop_oneof![
            2 => (0..=slot.saturating_mul(2)).prop_map(BucketOp::Advance),
            1 => (0..=big).prop_map(BucketOp::Advance),
            1 => (0..=3u64).prop_map(BucketOp::Advance),
            4 => (0..=burst + 1).prop_map(BucketOp::Acquire),
            1 => (1..=burst).prop_map(BucketOp::WaitAndRetry),
        ],
        0..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Every decision (grant, exact wait, never) and every `available()` equals the model's.
    #[test]
    fn token_bucket_matches_the_model(
        ((tokens, period, burst), start, ops) in quota_strategy().prop_flat_map(|(t, p, b)| {
            (Just((t, p, b)), 0..=40_000_000_000u64, bucket_ops(p, t, b))
        })
    ) {
        let clock = FakeClock::new();
        clock.advance(Duration::from_nanos(start));
        let quota = Quota::new(tokens, Duration::from_nanos(period), burst);
        let bucket = TokenBucket::with_clock(quota, clock.clone());
        prop_assert_eq!(bucket.quota(), quota);
        let mut model = Model::new(tokens, period, burst, nanos(&clock));
        prop_assert_eq!(bucket.available(), burst, "starts full");
        for op in ops {
            match op {
                BucketOp::Advance(ns) => clock.advance(Duration::from_nanos(ns)),
                BucketOp::Acquire(n) => {
                    let got = bucket.try_acquire(n);
                    let want = model.acquire(nanos(&clock), n);
                    prop_assert_eq!(got, want, "try_acquire({}) at {}ns", n, nanos(&clock));
                }
                BucketOp::WaitAndRetry(n) => {
                    let got = bucket.try_acquire(n);
                    prop_assert_eq!(got, model.acquire(nanos(&clock), n));
                    if let Err(RetryAfter::Wait(d)) = got {
                        clock.advance(d);
                        prop_assert_eq!(bucket.try_acquire(n), Ok(()), "after waiting {:?}", d);
                        prop_assert_eq!(model.acquire(nanos(&clock), n), Ok(()));
                    }
                }
            }
            model.refill(nanos(&clock));
            prop_assert_eq!(u64::from(bucket.available()), model.available);
        }
    }

    /// `Wait(d)` is exact: one nanosecond earlier is still too early (by exactly 1 ns), at `d` the
    /// request is granted.
    #[test]
    fn retry_after_is_exact(
        (tokens, period, burst) in quota_strategy(),
        start in 0..=10_000_000_000u64,
        taken in prop::collection::vec(1..=64u32, 1..6),
        n in 1..=64u32,
    ) {
        let n = n.min(burst);
        let clock = FakeClock::new();
        clock.advance(Duration::from_nanos(start));
        let bucket =
            TokenBucket::with_clock(Quota::new(tokens, Duration::from_nanos(period), burst), clock.clone());
        for t in taken {
            let _ = bucket.try_acquire(t.min(burst));
        }
        match bucket.try_acquire(n) {
            Ok(()) => {}
            Err(RetryAfter::Wait(d)) => {
                prop_assert!(d > Duration::ZERO);
                clock.advance(d - Duration::from_nanos(1));
                prop_assert_eq!(
                    bucket.try_acquire(n),
                    Err(RetryAfter::Wait(Duration::from_nanos(1))),
                    "1 ns before the announced time"
                );
                clock.advance(Duration::from_nanos(1));
                prop_assert_eq!(bucket.try_acquire(n), Ok(()), "at the announced time");
            }
            Err(never) => prop_assert!(false, "n <= burst, got {:?}", never),
        }
    }

    /// Asking for more than the burst is `Never`, changes nothing, and is counted as limited.
    #[test]
    fn more_than_burst_is_never(burst in 1..=1000u32, extra in 1..=1000u32, used in 0..=1000u32) {
        let clock = FakeClock::new();
        let bucket = TokenBucket::with_clock(Quota::per_second(10, burst), clock.clone());
        let _ = bucket.try_acquire(used.min(burst));
        let before = bucket.available();
        let n = burst + extra;
        let err = bucket.try_acquire(n).unwrap_err();
        prop_assert_eq!(err, RetryAfter::Never { requested: n, burst });
        prop_assert_eq!(err.wait(), None);
        prop_assert_eq!(bucket.available(), before);
        prop_assert_eq!(
            bucket.acquire_timeout(n, Duration::from_secs(3600)),
            Err(RetryAfter::Never { requested: n, burst })
        );
        prop_assert_eq!(clock.now(), Duration::ZERO, "no time spent on an impossible request");
    }
}

/// Continuous demand for 10^6 s at 3 tokens/s (a rate that does not divide a second): after
/// every drain the total granted is exactly `burst + ⌊elapsed · 3⌋`.
#[test]
fn no_drift_over_a_million_seconds() {
    bounded("no drift", || {
        const RATE: u128 = 3;
        const BURST: u32 = 600; // 200 s of tokens: steps below that never hit the cap
        let clock = FakeClock::new();
        let bucket = TokenBucket::with_clock(Quota::per_second(3, BURST), clock.clone());
        let mut rng = Rng(0x5eed_0001);
        assert_eq!(bucket.try_acquire(BURST), Ok(()), "starts full");
        let mut granted: u128 = u128::from(BURST);
        let end = 1_000_000u128 * 1_000_000_000;
        let mut steps = 0u64;
        while nanos(&clock) < end {
            // Mostly large steps with odd nanoseconds, sometimes exactly to the next token.
            if rng.below(4) == 0 {
                match bucket.try_acquire(1) {
                    Err(RetryAfter::Wait(d)) => clock.advance(d),
                    other => panic!("a drained bucket must say when: {other:?}"),
                }
            } else {
                clock.advance(Duration::from_nanos(rng.below(190_000_000_000) + 1));
            }
            // Drain: big requests first, then single tokens.
            let mut chunk = BURST;
            while chunk > 0 {
                match bucket.try_acquire(chunk) {
                    Ok(()) => granted += u128::from(chunk),
                    Err(RetryAfter::Wait(_)) => chunk /= 2,
                    Err(never) => panic!("{never:?}"),
                }
            }
            let now = nanos(&clock);
            let expected = u128::from(BURST) + now * RATE / 1_000_000_000;
            assert_eq!(granted, expected, "granted at {now} ns (step {steps})");
            // And the next token is announced for exactly the next boundary.
            let next_boundary = (now * RATE / 1_000_000_000 + 1) * 1_000_000_000;
            let ready = next_boundary.div_ceil(RATE);
            assert_eq!(
                bucket.try_acquire(1),
                Err(RetryAfter::Wait(Duration::from_nanos((ready - now) as u64)))
            );
            steps += 1;
        }
        assert!(steps > 1000, "{steps}");
        assert!(granted >= 3_000_000);
    });
}

/// Token-by-token: advance exactly by each announced wait, 10^5 times; the grants land exactly
/// on the boundaries `⌈k / 3⌉` s.
#[test]
fn waiting_exactly_as_told_grants_one_token_per_boundary() {
    let clock = FakeClock::new();
    let bucket = TokenBucket::with_clock(Quota::per_second(3, 1), clock.clone());
    assert_eq!(bucket.try_acquire(1), Ok(()));
    for k in 1..=100_000u128 {
        let Err(RetryAfter::Wait(d)) = bucket.try_acquire(1) else {
            panic!("empty bucket")
        };
        clock.advance(d);
        assert_eq!(nanos(&clock), (k * 1_000_000_000).div_ceil(3));
        assert_eq!(bucket.try_acquire(1), Ok(()));
    }
}

#[test]
fn acquire_timeout_on_a_fake_clock() {
    let clock = FakeClock::new();
    let bucket = TokenBucket::with_clock(Quota::per_second(10, 5), clock.clone());
    // Available now: no time passes even with a zero timeout.
    assert_eq!(bucket.acquire_timeout(5, Duration::ZERO), Ok(()));
    assert_eq!(clock.now(), Duration::ZERO);

    // 2 tokens need 200 ms. A timeout 1 ns short fails at once, announcing the wait, without
    // moving the clock.
    let need = Duration::from_millis(200);
    assert_eq!(
        bucket.acquire_timeout(2, need - Duration::from_nanos(1)),
        Err(RetryAfter::Wait(need))
    );
    assert_eq!(clock.now(), Duration::ZERO, "gave up without sleeping");
    // Exactly the wait fits: succeeds after sleeping (advancing the fake clock) exactly that long.
    assert_eq!(bucket.acquire_timeout(2, need), Ok(()));
    assert_eq!(clock.now(), need);
    // A generous timeout: sleeps exactly what is needed, no more.
    assert_eq!(bucket.acquire_timeout(5, Duration::from_secs(60)), Ok(()));
    assert_eq!(clock.now(), need + Duration::from_millis(500));
    assert_eq!(bucket.available(), 0);

    // Time already spent counts against the timeout: nothing else runs, so the one wait decides.
    clock.advance(Duration::from_millis(30));
    assert_eq!(
        bucket.acquire_timeout(1, Duration::from_millis(69)),
        Err(RetryAfter::Wait(Duration::from_millis(70)))
    );
    assert_eq!(bucket.acquire_timeout(1, Duration::from_millis(70)), Ok(()));
}

/// A fake clock whose `sleep` also lets a "thief" take a token from the bucket that is sleeping
/// on it (at most `max_steals` times): `acquire_timeout` must retry within its budget, and give
/// up at once (without sleeping) when the next wait no longer fits.
#[derive(Debug)]
struct StealingClock {
    time: FakeClock,
    bucket: OnceLock<Weak<TokenBucket<Arc<StealingClock>>>>,
    steals: AtomicU64,
    max_steals: u64,
}

impl Clock for StealingClock {
    fn now(&self) -> Duration {
        self.time.now()
    }

    fn sleep(&self, duration: Duration) {
        self.time.advance(duration);
        let bucket = self.bucket.get().and_then(Weak::upgrade);
        if let Some(bucket) = bucket
            && self.steals.load(Ordering::Relaxed) < self.max_steals
            && bucket.try_acquire(1).is_ok()
        {
            self.steals.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn stolen_bucket(max_steals: u64) -> (Arc<TokenBucket<Arc<StealingClock>>>, Arc<StealingClock>) {
    let clock = Arc::new(StealingClock {
        time: FakeClock::new(),
        bucket: OnceLock::new(),
        steals: AtomicU64::new(0),
        max_steals,
    });
    let bucket = Arc::new(TokenBucket::with_clock(
        Quota::per_second(10, 1),
        clock.clone(),
    ));
    clock.bucket.set(Arc::downgrade(&bucket)).unwrap();
    (bucket, clock)
}

#[test]
fn acquire_timeout_retries_when_tokens_are_taken_while_it_sleeps() {
    let (bucket, clock) = stolen_bucket(2);
    assert_eq!(bucket.try_acquire(1), Ok(()));
    // Two tokens are stolen at 100 ms and 200 ms; ours comes at 300 ms, exactly the budget.
    assert_eq!(
        bucket.acquire_timeout(1, Duration::from_millis(300)),
        Ok(())
    );
    assert_eq!(clock.now(), Duration::from_millis(300));
    assert_eq!(clock.steals.load(Ordering::Relaxed), 2);

    let (bucket, clock) = stolen_bucket(2);
    assert_eq!(bucket.try_acquire(1), Ok(()));
    // One nanosecond less: after the second theft the next wait no longer fits; it gives up at
    // 200 ms, announcing the remaining wait, without a third sleep.
    assert_eq!(
        bucket.acquire_timeout(1, Duration::from_millis(300) - Duration::from_nanos(1)),
        Err(RetryAfter::Wait(Duration::from_millis(100)))
    );
    assert_eq!(clock.now(), Duration::from_millis(200));
    assert_eq!(clock.steals.load(Ordering::Relaxed), 2);
}

#[test]
fn concurrent_grants_on_a_frozen_clock_add_up_to_the_burst() {
    bounded("frozen clock", || {
        let clock = FakeClock::new();
        let bucket = Arc::new(TokenBucket::with_clock(
            Quota::per_second(1000, 500),
            clock.clone(),
        ));
        let granted = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (bucket, granted, barrier) = (bucket.clone(), granted.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    for i in 0..2000u32 {
                        let n = 1 + (i + t) % 3;
                        if bucket.try_acquire(n).is_ok() {
                            granted.fetch_add(u64::from(n), Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let g = granted.load(Ordering::Relaxed);
        assert_eq!(g, 500, "exactly the burst, however the requests interleave");
        assert_eq!(bucket.available(), 0);
    });
}

#[test]
fn real_clock_never_exceeds_burst_plus_rate_times_elapsed() {
    bounded("real clock", || {
        let bucket = Arc::new(TokenBucket::new(2000, 20));
        let granted = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (bucket, granted) = (bucket.clone(), granted.clone());
                thread::spawn(move || {
                    let until = Instant::now() + Duration::from_millis(60);
                    while Instant::now() < until {
                        if bucket.try_acquire(1).is_ok() {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The bucket's clock started after `started`, so this elapsed time bounds its own.
        let elapsed = started.elapsed();
        let bound = 20 + (elapsed.as_nanos() * 2000 / 1_000_000_000) as u64;
        let g = granted.load(Ordering::Relaxed);
        assert!(g <= bound, "{g} granted, bound {bound} after {elapsed:?}");
        assert!(g >= 20, "at least the burst: {g}");
    });
}

#[test]
fn monotonic_clock_moves_forward() {
    let clock = MonotonicClock::new();
    let a = clock.now();
    clock.sleep(Duration::from_millis(2));
    assert!(clock.now() >= a + Duration::from_millis(2));
    let fake = FakeClock::new();
    let twin = fake.clone();
    fake.sleep(Duration::from_secs(3));
    assert_eq!(twin.now(), Duration::from_secs(3), "clones share the time");
}

#[test]
fn quota_accessors_and_display() {
    let q = Quota::new(5, Duration::from_secs(10), 7);
    assert_eq!(
        (q.tokens(), q.period(), q.burst()),
        (5, Duration::from_secs(10), 7)
    );
    assert_eq!(Quota::per_second(3, 4).period(), Duration::from_secs(1));
    let wait = RetryAfter::Wait(Duration::from_millis(5));
    assert_eq!(wait.wait(), Some(Duration::from_millis(5)));
    assert!(wait.to_string().contains("5ms"), "{wait}");
    let never = RetryAfter::Never {
        requested: 9,
        burst: 4,
    };
    assert!(never.to_string().contains('9') && never.to_string().contains('4'));
}

/// Rates above one token per nanosecond are refused at construction: beyond that the slot
/// counter (`now · tokens / period`) could overflow within a bucket's lifetime.
#[test]
#[should_panic(expected = "at most one token per nanosecond")]
fn rates_above_one_token_per_nanosecond_are_refused() {
    let _ = Quota::new(u32::MAX, Duration::from_nanos(1), 1);
}

/// At the highest allowed rate the bucket stays exact centuries after its clock's origin.
#[test]
fn the_highest_rate_stays_limited_for_centuries() {
    let clock = FakeClock::new();
    let bucket = TokenBucket::with_clock(Quota::new(1, Duration::from_nanos(1), 1), clock.clone());
    clock.advance(Duration::from_secs(500 * 365 * 24 * 3600));
    assert_eq!(bucket.try_acquire(1), Ok(()));
    // The clock is frozen: nothing beyond the burst may be granted.
    let extra = (0..100).filter(|_| bucket.try_acquire(1).is_ok()).count();
    assert_eq!(
        extra, 0,
        "granted {extra} tokens beyond the burst with no time elapsed"
    );
    clock.advance(Duration::from_nanos(1));
    assert_eq!(bucket.try_acquire(1), Ok(()));
}

#[test]
#[should_panic]
fn zero_rate_is_refused() {
    let _ = Quota::per_second(0, 1);
}

#[test]
#[should_panic]
fn zero_burst_is_refused() {
    let _ = Quota::per_second(1, 0);
}

#[test]
#[should_panic]
fn zero_period_is_refused() {
    let _ = Quota::new(1, Duration::ZERO, 1);
}

// ---------------------------------------------------------------------------------------------
// KeyedLimiter

#[test]
fn keys_have_independent_buckets_and_counters() {
    let clock = FakeClock::new();
    let limiter = KeyedLimiter::with_clock(Quota::per_second(10, 3), clock.clone());
    assert_eq!(limiter.quota(), Quota::per_second(10, 3));
    assert_eq!(
        limiter.available(&"a"),
        3,
        "an unseen key has a full bucket"
    );
    assert_eq!(limiter.try_acquire(&"a", 3), Ok(()));
    assert_eq!(
        limiter.try_acquire(&"a", 1),
        Err(RetryAfter::Wait(Duration::from_millis(100)))
    );
    assert_eq!(limiter.try_acquire(&"b", 2), Ok(()));
    assert_eq!(limiter.try_acquire(&"b", 1), Ok(()));
    assert_eq!(
        limiter.try_acquire(&"b", 2),
        Err(RetryAfter::Wait(Duration::from_millis(200)))
    );
    assert_eq!(
        limiter.try_acquire(&"c", 4),
        Err(RetryAfter::Never {
            requested: 4,
            burst: 3
        })
    );
    assert_eq!((limiter.available(&"a"), limiter.available(&"b")), (0, 0));
    assert_eq!(limiter.available(&"c"), 3);
    clock.advance(Duration::from_millis(100));
    assert_eq!((limiter.available(&"a"), limiter.available(&"b")), (1, 1));
    assert_eq!(limiter.try_acquire(&"a", 1), Ok(()));
    assert_eq!(
        limiter.stats(),
        KeyedStats {
            allowed: 4,
            limited: 3,
            keys: 3,
            evicted: 0
        }
    );
}

#[test]
fn evict_idle_forgets_exactly_the_full_buckets() {
    let clock = FakeClock::new();
    let limiter = KeyedLimiter::with_clock(Quota::per_second(10, 5), clock.clone());
    for k in 0..3000u32 {
        assert_eq!(limiter.try_acquire(&k, 1 + k % 2), Ok(()));
    }
    let s = limiter.stats();
    assert_eq!((s.keys, s.evicted, s.allowed), (3000, 0, 3000));
    limiter.evict_idle();
    assert_eq!(limiter.stats().keys, 3000, "no bucket is full yet");
    // After one slot the keys that took one token are full again; the others are not.
    clock.advance(Duration::from_millis(100));
    limiter.evict_idle();
    let s = limiter.stats();
    assert_eq!((s.keys, s.evicted), (1500, 1500));
    clock.advance(Duration::from_millis(100));
    limiter.evict_idle();
    let s = limiter.stats();
    assert_eq!((s.keys, s.evicted), (0, 3000));
    // A forgotten key behaves as a fresh one.
    assert_eq!(limiter.available(&7), 5);
    assert_eq!(limiter.try_acquire(&7, 5), Ok(()));
}

#[test]
fn idle_keys_are_evicted_automatically_by_calls() {
    let clock = FakeClock::new();
    let limiter = KeyedLimiter::with_clock(Quota::per_second(100, 2), clock.clone());
    for k in 0..3000u32 {
        limiter.try_acquire(&k, 1).unwrap();
    }
    assert_eq!(limiter.stats().evicted, 0);
    clock.advance(Duration::from_secs(1)); // every bucket refills
    // Calls on one hot key (mostly refused) trigger a sweep within max(1024, keys) calls.
    let hot = u32::MAX;
    let mut calls = 0;
    while limiter.stats().evicted < 3000 {
        let _ = limiter.try_acquire(&hot, 1);
        calls += 1;
        assert!(
            calls <= 2 * 3001 + 1,
            "no sweep after {calls} calls: {:?}",
            limiter.stats()
        );
    }
    let s = limiter.stats();
    assert_eq!(s.evicted, 3000);
    assert_eq!(s.keys, 1, "only the hot key, which is not full, remains");
    assert_eq!(s.allowed + s.limited, 3000 + calls);
}

#[derive(Clone, Debug)]
enum KeyedOp {
    Advance(u64),
    Acquire(u8, u32),
    Evict,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Eviction is unobservable: a limiter evicting after every step decides exactly as one
    /// never evicting and as a separate, never-forgotten `TokenBucket` per key.
    #[test]
    fn eviction_is_unobservable(
        (tokens, period, burst) in quota_strategy(),
        ops in prop::collection::vec(prop_oneof![
            2 => (0..=2_000_000_000u64).prop_map(KeyedOp::Advance),
            1 => (0..=50u64).prop_map(KeyedOp::Advance),
            5 => (0..6u8, 0..=66u32).prop_map(|(k, n)| KeyedOp::Acquire(k, n)),
            1 => Just(KeyedOp::Evict),
        ], 0..150),
    ) {
        let quota = Quota::new(tokens, Duration::from_nanos(period), burst);
        let clock = FakeClock::new();
        let evicting = KeyedLimiter::with_clock(quota, clock.clone());
        let keeping = KeyedLimiter::with_clock(quota, clock.clone());
        let mut reference: HashMap<u8, TokenBucket<FakeClock>> = HashMap::new();
        for op in ops {
            match op {
                KeyedOp::Advance(ns) => clock.advance(Duration::from_nanos(ns)),
                KeyedOp::Evict => evicting.evict_idle(),
                KeyedOp::Acquire(k, n) => {
                    let want = reference
                        .entry(k)
                        .or_insert_with(|| TokenBucket::with_clock(quota, clock.clone()))
                        .try_acquire(n);
                    prop_assert_eq!(evicting.try_acquire(&k, n), want);
                    prop_assert_eq!(keeping.try_acquire(&k, n), want);
                    evicting.evict_idle();
                }
            }
            for k in 0..6u8 {
                let want = reference.get(&k).map_or(burst, TokenBucket::available);
                prop_assert_eq!(evicting.available(&k), want, "key {}", k);
                prop_assert_eq!(keeping.available(&k), want);
            }
        }
        let (e, k) = (evicting.stats(), keeping.stats());
        prop_assert_eq!((e.allowed, e.limited), (k.allowed, k.limited));
        prop_assert_eq!(k.evicted, 0);
        prop_assert!(e.keys <= k.keys);
        prop_assert!(e.keys as u64 + e.evicted >= k.keys as u64);
    }
}

#[test]
fn concurrent_keyed_grants_with_concurrent_sweeps() {
    bounded("keyed concurrency", || {
        const KEYS: u32 = 32;
        const BURST: u32 = 50;
        let clock = FakeClock::new();
        let limiter = Arc::new(KeyedLimiter::with_clock(
            Quota::per_second(1, BURST),
            clock.clone(),
        ));
        let barrier = Arc::new(Barrier::new(5));
        let workers: Vec<_> = (0..4u32)
            .map(|t| {
                let (limiter, barrier) = (limiter.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    let mut granted = vec![0u64; KEYS as usize];
                    for i in 0..5000u32 {
                        let key = (i * 7 + t) % KEYS;
                        if limiter.try_acquire(&key, 1).is_ok() {
                            granted[key as usize] += 1;
                        }
                        if i % 500 == 0 {
                            limiter.evict_idle();
                        }
                    }
                    granted
                })
            })
            .collect();
        barrier.wait();
        let mut total = vec![0u64; KEYS as usize];
        for w in workers {
            for (t, g) in total.iter_mut().zip(w.join().unwrap()) {
                *t += g;
            }
        }
        // Time is frozen: each key grants exactly its burst, eviction or not.
        assert!(total.iter().all(|&g| g == u64::from(BURST)), "{total:?}");
        let s = limiter.stats();
        assert_eq!(s.allowed, u64::from(KEYS * BURST));
        assert_eq!(s.allowed + s.limited, 20_000);
        assert_eq!(
            s.evicted, 0,
            "no bucket is ever full again while time is frozen"
        );
    });
}
