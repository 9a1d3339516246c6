//! [`TokenBucket`]: one lock-free bucket.

use std::time::Duration;

use super::clock::{Clock, MonotonicClock};
use super::{Quota, RetryAfter, gcra};
use crate::loom::atomic::{AtomicU64, Ordering};

/// A token bucket whose whole state is one atomic word.
///
/// ```
/// use sync_kit::ratelimit::TokenBucket;
/// let bucket = TokenBucket::new(100, 10); // 100 tokens/s, bursts of 10, starts full
/// assert!(bucket.try_acquire(10).is_ok());
/// assert!(bucket.try_acquire(1).is_err());
/// ```
#[derive(Debug)]
pub struct TokenBucket<C: Clock = MonotonicClock> {
    used: AtomicU64,
    quota: Quota,
    clock: C,
}

impl TokenBucket<MonotonicClock> {
    /// `rate_per_sec` tokens per second, holding at most `burst`; starts full.
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

impl<C: Clock> TokenBucket<C> {
    /// A full bucket with `quota`, reading time from `clock`.
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        // Slot 0 is "now" for a fresh clock; for a clock already running, start full at its now.
        let used = quota.slots_at(clock.now());
        Self {
            used: AtomicU64::new(used),
            quota,
            clock,
        }
    }

    /// Takes `n` tokens if available now; otherwise says exactly how long until they are.
    pub fn try_acquire(&self, n: u32) -> Result<(), RetryAfter> {
        let now = self.clock.now();
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let next = gcra::decide(&self.quota, used, now, n)?;
            // Relaxed suffices: the word orders no other memory, and the compare-exchange alone
            // makes concurrent grants add up.
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => used = actual,
            }
        }
    }

    /// Takes `n` tokens, sleeping (on this bucket's clock) until they are available, but never
    /// longer than `timeout` in total: if they cannot be had in time, returns at once with how
    /// long they would have taken.
    pub fn acquire_timeout(&self, n: u32, timeout: Duration) -> Result<(), RetryAfter> {
        let start = self.clock.now();
        loop {
            let wait = match self.try_acquire(n) {
                Ok(()) => return Ok(()),
                Err(RetryAfter::Wait(wait)) => wait,
                Err(never) => return Err(never),
            };
            let spent = self.clock.now().saturating_sub(start);
            if spent + wait > timeout {
                return Err(RetryAfter::Wait(wait));
            }
            self.clock.sleep(wait);
        }
    }

    /// Tokens available right now.
    pub fn available(&self) -> u32 {
        gcra::available(
            &self.quota,
            self.used.load(Ordering::Relaxed),
            self.clock.now(),
        )
    }

    /// The bucket's quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }
}
