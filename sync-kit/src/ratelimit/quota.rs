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
    #[inline]
    pub(crate) fn slots_at(&self, now: Duration) -> u64 {
        let tokens = u64::from(self.tokens.get());
        // The same quotient in 64 bits whenever the product fits (hours of uptime at any rate a
        // limiter meets in practice): a 64-bit division costs a fraction of a 128-bit one.
        if let Ok(nanos) = u64::try_from(now.as_nanos())
            && let Some(product) = nanos.checked_mul(tokens)
        {
            return product / self.period_nanos;
        }
        let slots = now.as_nanos() * u128::from(tokens) / u128::from(self.period_nanos);
        u64::try_from(slots).unwrap_or(u64::MAX)
    }

    /// The earliest time at which `slot` slots have elapsed.
    pub(crate) fn time_of_slot(&self, slot: u64) -> Duration {
        let tokens = u64::from(self.tokens.get());
        if let Some(product) = slot.checked_mul(self.period_nanos) {
            return Duration::from_nanos(product.div_ceil(tokens));
        }
        let nanos = (u128::from(slot) * u128::from(self.period_nanos)).div_ceil(u128::from(tokens));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 128-bit formulas, which the 64-bit fast paths must match exactly.
    fn slots_wide(q: &Quota, now: Duration) -> u64 {
        let slots = now.as_nanos() * u128::from(q.tokens.get()) / u128::from(q.period_nanos);
        u64::try_from(slots).unwrap_or(u64::MAX)
    }

    fn time_wide(q: &Quota, slot: u64) -> Duration {
        let nanos =
            (u128::from(slot) * u128::from(q.period_nanos)).div_ceil(u128::from(q.tokens.get()));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    #[test]
    fn fast_paths_agree_with_the_wide_formulas_on_both_sides_of_overflow() {
        let quotas = [
            Quota::per_second(1, 1),
            Quota::per_second(7, 3),
            Quota::per_second(1_000_000, 10),
            Quota::per_second(1_000_000_000, 1),
            Quota::new(3, Duration::from_secs(3600 * 24 * 365), 1),
        ];
        for q in &quotas {
            let tokens = u64::from(q.tokens.get());
            // Around the point where `nanos * tokens` leaves 64 bits, and far beyond it.
            let edge = u64::MAX / tokens;
            for nanos in [
                0,
                1,
                999_999_999,
                edge - 1,
                edge,
                edge.saturating_add(1),
                u64::MAX,
            ] {
                let now = Duration::from_nanos(nanos);
                assert_eq!(q.slots_at(now), slots_wide(q, now), "{q:?} at {nanos} ns");
            }
            let huge = Duration::from_secs(u64::MAX);
            assert_eq!(q.slots_at(huge), slots_wide(q, huge));
            let edge = u64::MAX / q.period_nanos;
            for slot in [
                0,
                1,
                12_345,
                edge - 1,
                edge,
                edge.saturating_add(1),
                u64::MAX,
            ] {
                assert_eq!(
                    q.time_of_slot(slot),
                    time_wide(q, slot),
                    "{q:?} slot {slot}"
                );
            }
        }
    }
}
