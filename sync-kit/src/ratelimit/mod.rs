//! Token-bucket rate limiting: one bucket ([`TokenBucket`]) or one per key ([`KeyedLimiter`]).
//!
//! A bucket holds up to `burst` tokens and refills at `rate` tokens per period; it starts full.
//! Each bucket's whole state is one `AtomicU64` updated by compare-exchange (no lock), and the
//! arithmetic is exact integer arithmetic: over any interval the tokens granted never exceed
//! `burst + ⌊elapsed · rate⌋`, and a continuously busy bucket gets exactly that many, with no
//! drift however long it runs.
//!
//! - [`Clock`]: where "now" comes from. [`MonotonicClock`] in production, [`FakeClock`] (moved by
//!   hand with `advance`) in tests, so timing tests are deterministic.
//! - [`Quota`]: rate and burst.
//! - `gcra`: the pure decision, given the state and the time.
//! - [`TokenBucket`], [`KeyedLimiter`]: the stores, which own the compare-exchange loop.
//!
//! ```
//! use std::time::Duration;
//! use sync_kit::ratelimit::{FakeClock, Quota, RetryAfter, TokenBucket};
//!
//! let clock = FakeClock::new();
//! let bucket = TokenBucket::with_clock(Quota::per_second(10, 2), clock.clone());
//! assert!(bucket.try_acquire(2).is_ok()); // the burst
//! assert_eq!(bucket.try_acquire(1), Err(RetryAfter::Wait(Duration::from_millis(100))));
//! clock.advance(Duration::from_millis(100));
//! assert!(bucket.try_acquire(1).is_ok());
//! assert!(matches!(bucket.try_acquire(3), Err(RetryAfter::Never { .. }))); // more than burst
//! ```

mod bucket;
mod clock;
mod gcra;
mod keyed;
mod quota;

pub use bucket::TokenBucket;
pub use clock::{Clock, FakeClock, MonotonicClock};
pub use keyed::{KeyedLimiter, KeyedStats};
pub use quota::Quota;

use std::fmt;
use std::time::Duration;

/// Why tokens were not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// Not enough tokens now: exactly this long from now, they will be (if nobody else takes
    /// them first).
    Wait(Duration),
    /// More tokens than the burst were asked for at once: that can never be granted.
    Never {
        /// Tokens asked for.
        requested: u32,
        /// The bucket's capacity.
        burst: u32,
    },
}

impl RetryAfter {
    /// How long to wait before retrying, or `None` if retrying cannot help.
    pub fn wait(&self) -> Option<Duration> {
        match self {
            RetryAfter::Wait(wait) => Some(*wait),
            RetryAfter::Never { .. } => None,
        }
    }
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryAfter::Wait(wait) => write!(f, "rate limited: retry after {wait:?}"),
            RetryAfter::Never { requested, burst } => write!(
                f,
                "rate limited: {requested} tokens requested at once but the burst is {burst}"
            ),
        }
    }
}

impl std::error::Error for RetryAfter {}
