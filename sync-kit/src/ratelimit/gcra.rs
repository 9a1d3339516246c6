//! The pure decision of a token bucket, as a function of its state and the time.
//!
//! State: one `u64`, `used`, the slot up to which tokens have been handed out (a generic cell
//! rate algorithm's "theoretical arrival time", counted in whole slots). With `now` the number of
//! whole slots elapsed, `max(used, now)` is where the next grant starts, and a grant of `n` is
//! allowed when it ends no more than `burst` slots ahead of `now`:
//!
//! ```text
//!     allowed(n)  ⇔  max(used, now) + n ≤ now + burst        new used = max(used, now) + n
//! ```
//!
//! Everything is integers, so the bound `granted ≤ burst + now` holds exactly, forever. A state
//! with `used ≤ now` is a full bucket, indistinguishable from a fresh one (`used = 0`): that is
//! why a keyed limiter can forget such keys without changing any decision.

use std::time::Duration;

use super::{Quota, RetryAfter};

/// Decides a request for `n` tokens at slot `now_slot`. `Ok(new_used)` grants it.
pub(crate) fn decide(quota: &Quota, used: u64, now: Duration, n: u32) -> Result<u64, RetryAfter> {
    if n > quota.burst() {
        return Err(RetryAfter::Never {
            requested: n,
            burst: quota.burst(),
        });
    }
    let now_slot = quota.slots_at(now);
    let start = used.max(now_slot);
    let end = start.saturating_add(u64::from(n));
    if end <= now_slot.saturating_add(u64::from(quota.burst())) {
        return Ok(end);
    }
    // Allowed once `end - burst` slots have elapsed.
    let ready_at = quota.time_of_slot(end - u64::from(quota.burst()));
    Err(RetryAfter::Wait(ready_at.saturating_sub(now)))
}

/// Whether a bucket in state `used` is full at `now` (and so can be forgotten).
pub(crate) fn is_full(quota: &Quota, used: u64, now: Duration) -> bool {
    used <= quota.slots_at(now)
}

/// Tokens available at `now` in state `used`.
pub(crate) fn available(quota: &Quota, used: u64, now: Duration) -> u32 {
    let ahead = used.saturating_sub(quota.slots_at(now));
    let burst = u64::from(quota.burst());
    u32::try_from(burst.saturating_sub(ahead)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_retry_after_for_rates_that_do_not_divide_a_second() {
        let quota = Quota::per_second(3, 1);
        let used = decide(&quota, 0, Duration::ZERO, 1).unwrap();
        // The next token comes after one third of a second, rounded up to the nanosecond.
        assert_eq!(
            decide(&quota, used, Duration::ZERO, 1),
            Err(RetryAfter::Wait(Duration::from_nanos(333_333_334)))
        );
        assert!(decide(&quota, used, Duration::from_nanos(333_333_334), 1).is_ok());
        assert!(decide(&quota, used, Duration::from_nanos(333_333_333), 1).is_err());
    }
}
