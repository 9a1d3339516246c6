//! Where a limiter reads the time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic source of time for limiters.
pub trait Clock: Send + Sync {
    /// Time elapsed since this clock's origin. Never decreases.
    fn now(&self) -> Duration;
    /// Waits `duration` of this clock's time.
    fn sleep(&self, duration: Duration);
}

/// Real time, with its origin at construction, read through `quanta`: the CPU's invariant
/// time-stamp counter scaled to nanoseconds where the processor has one (about a third of the
/// cost of `std::time::Instant::now` on the machines measured in `docs/performance.md`), the
/// operating system's monotonic clock otherwise.
///
/// The first clock created in a process calibrates the counter against the monotonic clock once
/// (quanta documents up to 200 ms); later ones reuse that calibration. Readings on different
/// cores may differ by the counters' skew (nanoseconds on invariant-TSC hardware); a limiter
/// only turns that into a decision that much stricter or looser.
#[derive(Clone, Debug)]
pub struct MonotonicClock {
    clock: quanta::Clock,
    origin: quanta::Instant,
}

impl MonotonicClock {
    /// A clock starting at zero now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.now();
        Self { clock, origin }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> Duration {
        // Saturates at zero rather than going below the origin.
        self.clock.now().duration_since(self.origin)
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// A clock that moves only when told to; clones share the same time. `sleep` advances it, so
/// code that waits on a fake clock returns at once with the time moved on.
#[derive(Clone, Debug, Default)]
pub struct FakeClock {
    nanos: Arc<AtomicU64>,
}

impl FakeClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::Relaxed);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }

    fn sleep(&self, duration: Duration) {
        self.advance(duration);
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }

    fn sleep(&self, duration: Duration) {
        (**self).sleep(duration);
    }
}
