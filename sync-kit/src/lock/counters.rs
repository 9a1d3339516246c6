//! What one lock counts, and the snapshot types it is read into ([`LockStats`]).
//!
//! | counter                          | written                                  | by                     |
//! |----------------------------------|------------------------------------------|------------------------|
//! | acquisitions                     | every acquisition (fast path)            | exclusive: the holder (load + store); shared: `fetch_add` (async locks; a blocking `RwLock` counts reads in its lock word, `raw_rwlock.rs`) |
//! | contentions, wait sum and max    | slow path, after a wait                  | the waiter             |
//! | wait histogram, waiting sites    | slow path, after a wait (allocated on the first) | the waiter     |
//! | hold sum, max and count          | release of an exclusive hold, when timed | the holder             |
//!
//! Invariants: every counter is written by whoever just acquired or waited for the lock, never on
//! the fast path of a lock that never waits (beyond the acquisition count and, when hold timing is
//! on, one clock read per acquire and per release). The histogram's bucket counts sum to
//! `contentions`, barring a concurrent read or reset. A leaf module: it knows nothing of names,
//! registries or the detector.

use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::{LazyLock, Mutex as StdMutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use crate::loom::atomic::{AtomicU64, Ordering};

/// Power-of-two buckets of the wait histogram: bucket `i` counts waits of `[2^i, 2^(i+1))` ns
/// (bucket 0 also counts 0 ns).
pub(crate) const WAIT_BUCKETS: usize = 64;

/// Call sites tracked per lock for "who waited most".
const TRACKED_SITES: usize = 8;

/// Counters of one lock, as read at one moment.
///
/// The wait figures cover contended acquisitions only (an acquisition that did not wait costs
/// nothing to time). Percentiles come from a power-of-two histogram: each is the upper bound of
/// the bucket it falls in, at most [`max_wait`](LockStats::max_wait).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LockStats {
    /// Successful acquisitions (read and write for an `RwLock`).
    pub acquisitions: u64,
    /// Acquisitions that found the lock unavailable and had to wait (spin or sleep).
    pub contentions: u64,
    /// Time spent waiting, summed over all contended acquisitions (serialized as
    /// `total_wait_ns`, integer nanoseconds).
    #[serde(rename = "total_wait_ns", serialize_with = "as_nanos")]
    pub total_wait: Duration,
    /// The longest single wait (serialized as `max_wait_ns`).
    #[serde(rename = "max_wait_ns", serialize_with = "as_nanos")]
    pub max_wait: Duration,
    /// The median wait of contended acquisitions (bucket upper bound; `p50_wait_ns`).
    #[serde(rename = "p50_wait_ns", serialize_with = "as_nanos")]
    pub p50_wait: Duration,
    /// The 99th percentile wait of contended acquisitions (bucket upper bound; `p99_wait_ns`).
    #[serde(rename = "p99_wait_ns", serialize_with = "as_nanos")]
    pub p99_wait: Duration,
    /// The distribution of waits.
    pub wait_histogram: WaitHistogram,
    /// The call sites that waited longest in total, longest first (at most eight are tracked per
    /// lock; past eight distinct sites the one with the least total wait makes room).
    pub top_waiters: Vec<WaitSite>,
    /// Hold times of exclusive holds, when timed (see [`crate::stats::set_hold_timing`]).
    pub holds: HoldStats,
}

/// How long exclusive holds lasted, over the holds that were timed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HoldStats {
    /// Exclusive holds that were timed.
    pub timed: u64,
    /// Their total duration (serialized as `total_ns`).
    #[serde(rename = "total_ns", serialize_with = "as_nanos")]
    pub total: Duration,
    /// The longest one (serialized as `max_ns`).
    #[serde(rename = "max_ns", serialize_with = "as_nanos")]
    pub max: Duration,
}

/// One call site and how much its acquisitions of a lock waited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct WaitSite {
    /// Where the waiting acquisitions were made (serialized as `file:line:column`).
    #[serde(serialize_with = "as_display")]
    pub at: &'static Location<'static>,
    /// How many of them waited.
    pub waits: u64,
    /// Their total wait (serialized as `total_wait_ns`).
    #[serde(rename = "total_wait_ns", serialize_with = "as_nanos")]
    pub total_wait: Duration,
}

/// Counts of waits by power-of-two duration.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct WaitHistogram {
    /// Count per bucket `i` (`[2^i, 2^(i+1))` ns), without trailing empty buckets.
    counts: Vec<u64>,
}

impl fmt::Debug for WaitHistogram {
    /// The non-empty buckets as `upper bound: count`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.buckets()).finish()
    }
}

impl WaitHistogram {
    /// The non-empty buckets, shortest first: (upper bound, waits in the bucket). A wait falls in
    /// the first bucket whose upper bound exceeds it.
    pub fn buckets(&self) -> impl Iterator<Item = (Duration, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(i, &n)| (bucket_upper(i), n))
    }

    /// Waits shorter than `bound` (exactly, when `bound` is a power of two nanoseconds; else
    /// those in buckets that end at or below it).
    pub fn count_below(&self, bound: Duration) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .take_while(|&(i, _)| bucket_upper(i) <= bound)
            .map(|(_, &n)| n)
            .sum()
    }

    /// All waits counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound of the bucket holding the `q`-quantile wait (`q` in `[0, 1]`), or zero
    /// when nothing waited.
    pub fn quantile(&self, q: f64) -> Duration {
        let total = self.total();
        if total == 0 {
            return Duration::ZERO;
        }
        // The rank of the quantile wait, 1-based: ceil(q * total), at least 1.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_upper(i);
            }
        }
        bucket_upper(WAIT_BUCKETS - 1)
    }
}

impl Serialize for WaitHistogram {
    /// As a list of `{ "le_ns": upper bound, "count": n }` for the non-empty buckets.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Bucket {
            le_ns: u64,
            count: u64,
        }
        serializer.collect_seq(self.buckets().map(|(upper, count)| Bucket {
            le_ns: u64::try_from(upper.as_nanos()).unwrap_or(u64::MAX),
            count,
        }))
    }
}

fn bucket_upper(i: usize) -> Duration {
    Duration::from_nanos(1u64.checked_shl(i as u32 + 1).unwrap_or(u64::MAX))
}

fn bucket_of(nanos: u64) -> usize {
    (u64::BITS - 1 - (nanos | 1).leading_zeros()) as usize
}

fn as_nanos<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
}

fn as_display<S: Serializer, T: fmt::Display>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Details of waits, allocated on a lock's first contended acquisition.
#[derive(Debug)]
struct WaitDetail {
    buckets: [StdAtomicU64; WAIT_BUCKETS],
    /// (site, waits, total wait in ns); at most [`TRACKED_SITES`].
    sites: StdMutex<Vec<(&'static Location<'static>, u64, u64)>>,
}

// Hold timing, process-wide: a setting, ordering no other memory.
static HOLD_TIMES: AtomicBool = AtomicBool::new(false);
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Turns hold timing on or off for every lock (off by default; see [`Counters::set_hold_times`]
/// for one lock). The async locks read this; the blocking locks' fast path reads the copy of
/// `meta::GLOBAL_FLAGS` in each lock (an `RwLock`'s mirrored in its word's DIVERT bit), which
/// `stats::set_hold_timing` sets with this.
pub(crate) fn set_hold_times_globally(on: bool) {
    HOLD_TIMES.store(on, StdOrdering::Relaxed);
}

/// A clock reading for hold times: nanoseconds since the first reading, plus one (0 means "this
/// hold was not timed").
fn hold_clock() -> u64 {
    nanos(EPOCH.elapsed()).saturating_add(1)
}

/// The counters of one lock.
///
/// `acquisitions` takes part in loom models (it is written on the fast path); the rest are plain
/// diagnostics written after a wait or around timed holds and order no other memory (std atomics,
/// even under loom).
#[derive(Debug)]
pub(crate) struct Counters {
    acquisitions: AtomicU64,
    contentions: StdAtomicU64,
    wait_nanos: StdAtomicU64,
    max_wait_nanos: StdAtomicU64,
    detail: OnceLock<Box<WaitDetail>>,
    /// This lock times its exclusive holds even when hold timing is off globally.
    time_holds: AtomicBool,
    /// When the current exclusive hold started ([`hold_clock`]), 0 when it is not timed. Written
    /// only by the holder (set when a timed hold begins, cleared when it ends).
    hold_start: StdAtomicU64,
    holds_timed: StdAtomicU64,
    hold_nanos: StdAtomicU64,
    max_hold_nanos: StdAtomicU64,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            acquisitions: AtomicU64::new(0),
            contentions: StdAtomicU64::new(0),
            wait_nanos: StdAtomicU64::new(0),
            max_wait_nanos: StdAtomicU64::new(0),
            detail: OnceLock::new(),
            time_holds: AtomicBool::new(false),
            hold_start: StdAtomicU64::new(0),
            holds_timed: StdAtomicU64::new(0),
            hold_nanos: StdAtomicU64::new(0),
            max_hold_nanos: StdAtomicU64::new(0),
        }
    }

    /// Counts an exclusive acquisition (the async locks; the blocking ones read their flags and
    /// call [`count_exclusive_only`](Self::count_exclusive_only)). Only the holder of an exclusive lock writes the counter
    /// at that moment, so a load and a store suffice: no read-modify-write on the fast path.
    #[cfg(any(feature = "tokio", loom))]
    #[inline]
    pub(crate) fn count_exclusive(&self) {
        let n = self.acquisitions.load(Ordering::Relaxed);
        self.acquisitions
            .store(n.wrapping_add(1), Ordering::Relaxed);
        if self.hold_timing() {
            self.hold_start.store(hold_clock(), StdOrdering::Relaxed);
        }
    }

    /// Counts an exclusive acquisition and nothing else (the blocking locks' fast path: the
    /// caller decided, from the lock's flags, that the hold is not timed).
    #[inline(always)]
    pub(crate) fn count_exclusive_only(&self) {
        let n = self.acquisitions.load(Ordering::Relaxed);
        self.acquisitions
            .store(n.wrapping_add(1), Ordering::Relaxed);
    }

    /// Records the start of a timed exclusive hold (the holder calls it right after acquiring);
    /// [`end_timed_hold`](Self::end_timed_hold) ends it.
    pub(crate) fn start_hold(&self) {
        self.hold_start.store(hold_clock(), StdOrdering::Relaxed);
    }

    /// Ends a hold begun with [`start_hold`](Self::start_hold).
    #[cold]
    pub(crate) fn end_timed_hold(&self) {
        let start = self.hold_start.load(StdOrdering::Relaxed);
        if start != 0 {
            self.end_hold(start);
        }
    }

    /// Counts a shared acquisition (other readers may count concurrently; the blocking
    /// `RwLock` counts its reads in its lock word instead).
    #[cfg(any(feature = "tokio", loom))]
    #[inline]
    pub(crate) fn count_shared(&self) {
        self.acquisitions.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(any(feature = "tokio", loom))]
    #[inline]
    fn hold_timing(&self) -> bool {
        self.time_holds.load(StdOrdering::Relaxed) || HOLD_TIMES.load(StdOrdering::Relaxed)
    }

    /// An exclusive hold ends: times it if its start was recorded (whatever the setting is now:
    /// one load, and a hold that began timed is always counted).
    #[cfg(any(feature = "tokio", loom))]
    #[inline]
    pub(crate) fn release_exclusive(&self) {
        let start = self.hold_start.load(StdOrdering::Relaxed);
        if start != 0 {
            self.end_hold(start);
        }
    }

    #[cold]
    fn end_hold(&self, start: u64) {
        // Only the holder writes `hold_start`: clear it for the next hold.
        self.hold_start.store(0, StdOrdering::Relaxed);
        let held = hold_clock().saturating_sub(start);
        self.holds_timed.fetch_add(1, StdOrdering::Relaxed);
        self.hold_nanos.fetch_add(held, StdOrdering::Relaxed);
        self.max_hold_nanos.fetch_max(held, StdOrdering::Relaxed);
    }

    /// Times this lock's exclusive holds (or stops), whatever the global setting.
    pub(crate) fn set_hold_times(&self, on: bool) {
        self.time_holds.store(on, StdOrdering::Relaxed);
    }

    /// Records that an acquisition made at `at` had to wait for `waited`.
    pub(crate) fn count_wait(&self, waited: Duration, at: &'static Location<'static>) {
        let ns = nanos(waited);
        self.contentions.fetch_add(1, StdOrdering::Relaxed);
        self.wait_nanos.fetch_add(ns, StdOrdering::Relaxed);
        self.max_wait_nanos.fetch_max(ns, StdOrdering::Relaxed);
        let detail = self.detail.get_or_init(|| {
            Box::new(WaitDetail {
                buckets: [const { StdAtomicU64::new(0) }; WAIT_BUCKETS],
                sites: StdMutex::new(Vec::with_capacity(TRACKED_SITES)),
            })
        });
        detail.buckets[bucket_of(ns)].fetch_add(1, StdOrdering::Relaxed);
        let mut sites = detail.sites.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(site) = sites.iter_mut().find(|s| std::ptr::eq(s.0, at)) {
            site.1 += 1;
            site.2 = site.2.saturating_add(ns);
        } else if sites.len() < TRACKED_SITES {
            sites.push((at, 1, ns));
        } else if let Some(least) = sites.iter_mut().min_by_key(|s| s.2) {
            *least = (at, 1, ns);
        }
    }

    /// Zeroes everything. An acquisition racing with the reset may be counted on either side.
    pub(crate) fn reset(&self) {
        self.acquisitions.store(0, Ordering::Relaxed);
        for counter in [
            &self.contentions,
            &self.wait_nanos,
            &self.max_wait_nanos,
            &self.holds_timed,
            &self.hold_nanos,
            &self.max_hold_nanos,
        ] {
            counter.store(0, StdOrdering::Relaxed);
        }
        if let Some(detail) = self.detail.get() {
            for bucket in &detail.buckets {
                bucket.store(0, StdOrdering::Relaxed);
            }
            detail
                .sites
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }

    /// The statistics, with `reads` more acquisitions (an `RwLock`'s reads, counted in its lock
    /// word).
    pub(crate) fn read_with_reads(&self, reads: u64) -> LockStats {
        let max_wait = Duration::from_nanos(self.max_wait_nanos.load(StdOrdering::Relaxed));
        let (wait_histogram, top_waiters) = match self.detail.get() {
            None => (WaitHistogram::default(), Vec::new()),
            Some(detail) => {
                let mut counts: Vec<u64> = detail
                    .buckets
                    .iter()
                    .map(|b| b.load(StdOrdering::Relaxed))
                    .collect();
                // Trailing empty buckets are dropped: equal histograms compare equal.
                while counts.last() == Some(&0) {
                    counts.pop();
                }
                let mut sites: Vec<WaitSite> = detail
                    .sites
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .map(|&(at, waits, ns)| WaitSite {
                        at,
                        waits,
                        total_wait: Duration::from_nanos(ns),
                    })
                    .collect();
                sites.sort_by_key(|site| std::cmp::Reverse(site.total_wait));
                (WaitHistogram { counts }, sites)
            }
        };
        LockStats {
            acquisitions: self
                .acquisitions
                .load(Ordering::Relaxed)
                .wrapping_add(reads),
            contentions: self.contentions.load(StdOrdering::Relaxed),
            total_wait: Duration::from_nanos(self.wait_nanos.load(StdOrdering::Relaxed)),
            max_wait,
            p50_wait: wait_histogram.quantile(0.50).min(max_wait),
            p99_wait: wait_histogram.quantile(0.99).min(max_wait),
            wait_histogram,
            top_waiters,
            holds: HoldStats {
                timed: self.holds_timed.load(StdOrdering::Relaxed),
                total: Duration::from_nanos(self.hold_nanos.load(StdOrdering::Relaxed)),
                max: Duration::from_nanos(self.max_hold_nanos.load(StdOrdering::Relaxed)),
            },
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(1023), 9);
        assert_eq!(bucket_of(1024), 10);
        assert_eq!(bucket_of(u64::MAX), 63);
        assert_eq!(bucket_upper(9), Duration::from_nanos(1024));
    }

    #[test]
    fn quantiles_take_the_bucket_upper_bound() {
        let mut counts = vec![0; WAIT_BUCKETS];
        counts[10] = 98; // [1024, 2048) ns
        counts[20] = 2; // [~1 ms, ~2 ms)
        let h = WaitHistogram { counts };
        assert_eq!(h.quantile(0.5), Duration::from_nanos(2048));
        assert_eq!(h.quantile(0.98), Duration::from_nanos(2048));
        assert_eq!(h.quantile(0.99), Duration::from_nanos(1 << 21));
        assert_eq!(h.count_below(Duration::from_nanos(2048)), 98);
        assert_eq!(h.total(), 100);
        assert_eq!(WaitHistogram::default().quantile(0.5), Duration::ZERO);
    }
}
