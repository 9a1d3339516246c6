//! [`Quota`]: how fast a bucket refills and how much it holds.

use std::num::NonZeroU32;
use std::time::Duration;

/// `tokens` per `period`, holding at most `burst`.
///
/// Internally time is measured in slots of `period / tokens`; the slot boundaries are computed
/// exactly (`⌊now · tokens / period⌋` in 128-bit integers), which is what keeps long runs exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    tokens: NonZeroU32,
    period_nanos: u64,
    burst: NonZeroU32,
}

impl Quota {
    /// `rate` tokens per second, at most `burst` at once.
    ///
    /// # Panics
    /// If `rate` or `burst` is zero.
    pub fn per_second(rate: u32, burst: u32) -> Self {
        Self::new(rate, Duration::from_secs(1), burst)
    }

    /// `tokens` per `period` (e.g. 1 per 10 seconds), at most `burst` at once.
    ///
    /// # Panics
    /// If `tokens` or `burst` is zero, if `period` is zero or longer than ~584 years, or if the
    /// rate exceeds one token per nanosecond (10⁹ per second). That bound keeps the slot count,
    /// which grows at the rate, exact for at least 584 years of clock time.
    pub fn new(tokens: u32, period: Duration, burst: u32) -> Self {
        let tokens = NonZeroU32::new(tokens).expect("a quota needs a non-zero number of tokens");
        let burst = NonZeroU32::new(burst).expect("a quota needs a non-zero burst");
        let period_nanos = u64::try_from(period.as_nanos())
            .ok()
            .filter(|&n| n > 0)
            .expect("a quota's period must be non-zero and fit in u64 nanoseconds");
        assert!(
            u64::from(tokens.get()) <= period_nanos,
            "a quota may grant at most one token per nanosecond ({tokens} per {period:?} is more)"
        );
        Self {
            tokens,
            period_nanos,
            burst,
        }
    }

    /// The most tokens that can be taken at once (the bucket's capacity).
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// Refill: tokens per period.
    pub fn tokens(&self) -> u32 {
        self.tokens.get()
    }

    /// Refill: the period.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.period_nanos)
    }

    /// The number of whole slots elapsed at `now` (slot = `period / tokens`).
    pub(crate) fn slots_at(&self, now: Duration) -> u64 {
        let slots = now.as_nanos() * u128::from(self.tokens.get()) / u128::from(self.period_nanos);
        u64::try_from(slots).unwrap_or(u64::MAX)
    }

    /// The earliest time at which `slot` slots have elapsed.
    pub(crate) fn time_of_slot(&self, slot: u64) -> Duration {
        let tokens = u128::from(self.tokens.get());
        let nanos = (u128::from(slot) * u128::from(self.period_nanos)).div_ceil(tokens);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}
