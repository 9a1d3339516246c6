//! loom model of the token bucket's compare-exchange update: concurrent grants add up exactly.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::model;
use sync_kit::ratelimit::{FakeClock, Quota, TokenBucket};

/// Three threads take one token each from a bucket of two while time stands still: exactly two
/// succeed, in every interleaving (no lost update of the one atomic word, no double grant).
#[test]
fn concurrent_acquisitions_never_exceed_the_burst() {
    model(|| {
        let bucket = Arc::new(TokenBucket::with_clock(
            Quota::per_second(1, 2),
            FakeClock::new(),
        ));
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let bucket = Arc::clone(&bucket);
                thread::spawn(move || bucket.try_acquire(1).is_ok())
            })
            .collect();
        let mine = bucket.try_acquire(1).is_ok();
        let granted = takers
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|ok| *ok)
            .count()
            + usize::from(mine);
        assert_eq!(granted, 2);
        assert_eq!(bucket.available(), 0);
    });
}
