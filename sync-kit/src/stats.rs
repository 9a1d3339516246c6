//! Lock statistics: per lock, for every live named lock and condvar, and as Prometheus text.
//!
//! Every sync-kit lock counts its acquisitions on the fast path (a plain load and store for
//! exclusive locks, one relaxed `fetch_add` for read locks) and, only when it had to wait, the
//! contention, the time waited (sum, max, a power-of-two histogram with p50 and p99) and the call
//! site that waited (the few sites that waited longest are kept, like lock_stat's contention
//! points). Exclusive hold times (sum, max) cost a clock read per acquisition and release, so they
//! are off unless turned on for every lock ([`set_hold_timing`]) or one lock
//! (`Mutex::set_hold_timing`). Named locks (built with `named` or `with_level`) are listed by
//! [`all`] from construction until they are dropped; named condvars by [`condvars`].
//!
//! ```
//! use sync_kit::{Level, Mutex};
//!
//! let accounts = Mutex::with_level("stats-doc-accounts", Level(10), 0u32);
//! *accounts.lock()? += 1;
//! assert_eq!(accounts.stats().acquisitions, 1);
//! let listed = sync_kit::stats::all();
//! assert!(listed.iter().any(|s| s.name == "stats-doc-accounts" && s.stats.acquisitions == 1));
//! let text = sync_kit::stats::prometheus_wait_histograms("synckit");
//! assert!(text.contains("# TYPE synckit_lock_wait_seconds histogram"));
//! # Ok::<(), sync_kit::LockError>(())
//! ```
//!
//! Module layering (no import loop): `lock::counters` (what a lock counts, and these types) ←
//! `lock::meta` (identity, registry) ← this module (reading and resetting them).

use std::fmt::Write as _;

use serde::Serialize;

pub use crate::lock::condvar::CondvarStats;
use crate::lock::condvar::named_condvars;
use crate::lock::counters::set_hold_times_globally;
pub use crate::lock::counters::{HoldStats, LockStats, WaitHistogram, WaitSite};
use crate::lock::meta::named_locks;
use crate::{Level, LockKind};

/// One live named lock and its statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamedLockStats {
    /// The name given at construction.
    pub name: &'static str,
    /// The lock's level, if it is leveled.
    pub level: Option<Level>,
    /// Mutex or RwLock.
    pub kind: LockKind,
    /// Its counters.
    pub stats: LockStats,
}

/// One live named condvar and its statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamedCondvarStats {
    /// The name given at construction.
    pub name: String,
    /// Its counters.
    pub stats: CondvarStats,
}

/// Statistics of every live named lock, ordered by level (unleveled last), then name, then age.
pub fn all() -> Vec<NamedLockStats> {
    let mut all: Vec<NamedLockStats> = named_locks()
        .iter()
        .map(|meta| NamedLockStats {
            name: meta.info.name.unwrap_or_default(),
            level: meta.info.level,
            kind: meta.info.kind,
            stats: meta.stats(),
        })
        .collect();
    all.sort_by_key(|s| (s.level.is_none(), s.level, s.name));
    all
}

/// Statistics of every live named [`Condvar`](crate::Condvar), ordered by name, then age.
pub fn condvars() -> Vec<NamedCondvarStats> {
    let mut all: Vec<NamedCondvarStats> = named_condvars()
        .iter()
        .map(|meta| NamedCondvarStats {
            name: meta.name.as_deref().unwrap_or_default().to_owned(),
            stats: meta.stats(),
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// Zeroes the statistics of every live named lock and condvar (unnamed ones are not reachable
/// from here: read their `stats()` before and subtract). An acquisition that races with the reset
/// may be counted before or after it.
pub fn reset() {
    for meta in named_locks() {
        meta.reset();
    }
    for meta in named_condvars() {
        meta.reset();
    }
}

/// Turns the timing of exclusive holds on or off for every lock (off by default). While on,
/// each exclusive acquisition and release reads the clock (measured in `docs/performance.md`);
/// [`LockStats::holds`] then has the count, total and maximum of the timed holds. A lock can also
/// be timed alone (`Mutex::set_hold_timing`, `RwLock::set_hold_timing`).
pub fn set_hold_timing(on: bool) {
    set_hold_times_globally(on);
    crate::lock::meta::set_global_flag(crate::lock::meta::HOLD_TIMING, on);
}

/// Upper bounds of the Prometheus histogram buckets, in nanoseconds: powers of four from about
/// 1 µs to about 17 s (each exact at a bucket edge of the power-of-two histogram).
const PROMETHEUS_BOUNDS_NS: [u64; 13] = [
    1 << 10,
    1 << 12,
    1 << 14,
    1 << 16,
    1 << 18,
    1 << 20,
    1 << 22,
    1 << 24,
    1 << 26,
    1 << 28,
    1 << 30,
    1 << 32,
    1 << 34,
];

/// The wait histograms of every live named lock in the Prometheus text exposition format, as one
/// histogram family `<prefix>_lock_wait_seconds` with labels `lock`, `kind` and `level` (the
/// same labels as the node's other lock metrics): cumulative `_bucket{le=...}` series, `_sum`
/// (total wait) and `_count` (contended acquisitions). Append it to a `/metrics` body (before an
/// OpenMetrics `# EOF` line). `prefix` may be empty.
pub fn prometheus_wait_histograms(prefix: &str) -> String {
    let name = if prefix.is_empty() {
        "lock_wait_seconds".to_owned()
    } else {
        format!("{prefix}_lock_wait_seconds")
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP {name} Time acquisitions of each named lock waited for it (contended acquisitions only)."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for lock in all() {
        let labels = format!(
            "lock=\"{}\",kind=\"{}\",level=\"{}\"",
            escape_label(lock.name),
            format!("{:?}", lock.kind).to_lowercase(),
            lock.level
                .map_or_else(|| "none".to_owned(), |l| l.0.to_string())
        );
        let histogram = &lock.stats.wait_histogram;
        for bound in PROMETHEUS_BOUNDS_NS {
            let below = histogram.count_below(std::time::Duration::from_nanos(bound));
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{}\"}} {below}",
                bound as f64 / 1e9
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
            histogram.total()
        );
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            lock.stats.total_wait.as_secs_f64()
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", histogram.total());
    }
    out
}

/// Escapes a label value for the text exposition format (backslash, double quote, newline).
pub(crate) fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}
