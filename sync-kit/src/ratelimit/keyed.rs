//! [`KeyedLimiter`]: one bucket per key, idle keys forgotten automatically.

use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64 as StdAtomicU64, Ordering as StdOrdering};

use dashmap::DashMap;
use serde::Serialize;

use super::clock::{Clock, MonotonicClock};
use super::{Quota, RetryAfter, gcra};
use crate::loom::atomic::{AtomicU64, Ordering};

/// How many calls between two sweeps for idle keys, at least.
const MIN_SWEEP_INTERVAL: u64 = 1024;

/// A token bucket per key (client address, user name, ...), in a sharded concurrent map.
///
/// A key whose bucket has refilled completely is indistinguishable from a key never seen, so it is
/// dropped by a periodic sweep (every `max(1024, keys left by the previous sweep)` calls;
/// amortised O(1) per call, since a sweep visits at most those keys plus one new key per call
/// since; one shard locked at a time) without changing any decision.
///
/// ```
/// use sync_kit::ratelimit::KeyedLimiter;
/// let per_ip = KeyedLimiter::new(5, 5);
/// assert!(per_ip.try_acquire(&"10.0.0.1", 5).is_ok());
/// assert!(per_ip.try_acquire(&"10.0.0.1", 1).is_err());
/// assert!(per_ip.try_acquire(&"10.0.0.2", 1).is_ok()); // its own bucket
/// ```
#[derive(Debug)]
pub struct KeyedLimiter<K: Hash + Eq, C: Clock = MonotonicClock> {
    buckets: DashMap<K, AtomicU64>,
    quota: Quota,
    clock: C,
    allowed: StdAtomicU64,
    limited: StdAtomicU64,
    evicted: StdAtomicU64,
    /// The value of `allowed + limited` at which the next sweep is due.
    next_sweep_at: StdAtomicU64,
    sweeping: AtomicBool,
}

/// Counters of a [`KeyedLimiter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeyedStats {
    /// Requests granted.
    pub allowed: u64,
    /// Requests refused.
    pub limited: u64,
    /// Keys with a bucket right now.
    pub keys: usize,
    /// Idle keys forgotten so far.
    pub evicted: u64,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K, MonotonicClock> {
    /// `rate_per_sec` tokens per second per key, at most `burst` at once.
    ///
    /// # Panics
    /// If `rate_per_sec` or `burst` is zero.
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        Self::with_clock(
            Quota::per_second(rate_per_sec, burst),
            MonotonicClock::new(),
        )
    }
}

impl<K: Hash + Eq + Clone, C: Clock> KeyedLimiter<K, C> {
    /// A limiter with `quota` per key, reading time from `clock`.
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        Self {
            buckets: DashMap::new(),
            quota,
            clock,
            allowed: StdAtomicU64::new(0),
            limited: StdAtomicU64::new(0),
            evicted: StdAtomicU64::new(0),
            next_sweep_at: StdAtomicU64::new(MIN_SWEEP_INTERVAL),
            sweeping: AtomicBool::new(false),
        }
    }

    /// Takes `n` tokens from `key`'s bucket if available now.
    pub fn try_acquire(&self, key: &K, n: u32) -> Result<(), RetryAfter> {
        let now = self.clock.now();
        let result = match self.buckets.get(key) {
            Some(bucket) => self.take(&bucket, now, n),
            None => {
                let bucket = self
                    .buckets
                    .entry(key.clone())
                    .or_insert_with(|| AtomicU64::new(0));
                self.take(&bucket, now, n)
            }
        };
        let (counter, other) = if result.is_ok() {
            (&self.allowed, &self.limited)
        } else {
            (&self.limited, &self.allowed)
        };
        // One shared read-modify-write per call: the call count that paces sweeps is derived
        // from the two outcome counters rather than kept in a third.
        let calls =
            counter.fetch_add(1, StdOrdering::Relaxed) + 1 + other.load(StdOrdering::Relaxed);
        if calls >= self.next_sweep_at.load(StdOrdering::Relaxed) {
            self.sweep_if_first(calls, now);
        }
        result
    }

    fn take(&self, bucket: &AtomicU64, now: std::time::Duration, n: u32) -> Result<(), RetryAfter> {
        let mut used = bucket.load(Ordering::Relaxed);
        loop {
            let next = gcra::decide(&self.quota, used, now, n)?;
            match bucket.compare_exchange_weak(used, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => used = actual,
            }
        }
    }

    /// Sweeps unless another thread already is; the next sweep is due after as many calls as
    /// there are keys left (at least [`MIN_SWEEP_INTERVAL`]).
    #[cold]
    fn sweep_if_first(&self, calls: u64, now: std::time::Duration) {
        if self.sweeping.swap(true, StdOrdering::Acquire) {
            return;
        }
        self.sweep(now);
        let interval = MIN_SWEEP_INTERVAL.max(self.buckets.len() as u64);
        self.next_sweep_at
            .store(calls.saturating_add(interval), StdOrdering::Relaxed);
        self.sweeping.store(false, StdOrdering::Release);
    }

    fn sweep(&self, now: std::time::Duration) {
        let before = self.buckets.len();
        self.buckets
            .retain(|_, used| !gcra::is_full(&self.quota, used.load(Ordering::Relaxed), now));
        let removed = before.saturating_sub(self.buckets.len());
        self.evicted.fetch_add(removed as u64, StdOrdering::Relaxed);
    }

    /// Forgets every key whose bucket is full now (this also happens automatically).
    pub fn evict_idle(&self) {
        self.sweep(self.clock.now());
    }

    /// Tokens available to `key` right now.
    pub fn available(&self, key: &K) -> u32 {
        let used = self
            .buckets
            .get(key)
            .map_or(0, |bucket| bucket.load(Ordering::Relaxed));
        gcra::available(&self.quota, used, self.clock.now())
    }

    /// Counters.
    pub fn stats(&self) -> KeyedStats {
        KeyedStats {
            allowed: self.allowed.load(StdOrdering::Relaxed),
            limited: self.limited.load(StdOrdering::Relaxed),
            keys: self.buckets.len(),
            evicted: self.evicted.load(StdOrdering::Relaxed),
        }
    }

    /// The per-key quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }
}
