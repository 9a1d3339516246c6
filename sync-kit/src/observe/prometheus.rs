//! The page's figures for a scraper: [`prometheus_text`].

use std::fmt::Write as _;

use crate::deadlock;
use crate::stats::{self, escape_label};

/// The figures of the page in the Prometheus text exposition format (version 0.0.4): per named
/// lock (labels `lock`, `kind`, `level`) `synckit_lock_acquisitions_total`,
/// `synckit_lock_contentions_total`, `synckit_lock_max_wait_seconds`,
/// `synckit_lock_holds_timed_total`, `synckit_lock_hold_seconds_total`,
/// `synckit_lock_max_hold_seconds`, and the wait histogram `synckit_lock_wait_seconds`
/// ([`stats::prometheus_wait_histograms`]: its `_sum` is the total wait); the detector's counters
/// `synckit_deadlock_waits_registered_total`, `synckit_deadlock_cycles_refused_total`,
/// `synckit_deadlock_level_violations_total`, `synckit_deadlock_order_inversions_total` and the
/// gauge `synckit_deadlock_threads_waiting`. Serve it as `text/plain; version=0.0.4`.
pub fn prometheus_text() -> String {
    let mut out = String::new();
    let locks = stats::all();
    let labels: Vec<String> = locks
        .iter()
        .map(|lock| {
            format!(
                "lock=\"{}\",kind=\"{}\",level=\"{}\"",
                escape_label(lock.name),
                format!("{:?}", lock.kind).to_lowercase(),
                lock.level
                    .map_or_else(|| "none".to_owned(), |l| l.0.to_string())
            )
        })
        .collect();
    type Figure = fn(&stats::LockStats) -> f64;
    let families: [(&str, &str, &str, Figure); 6] = [
        (
            "synckit_lock_acquisitions_total",
            "counter",
            "Acquisitions of each named lock.",
            |s| s.acquisitions as f64,
        ),
        (
            "synckit_lock_contentions_total",
            "counter",
            "Acquisitions of each named lock that had to wait.",
            |s| s.contentions as f64,
        ),
        (
            "synckit_lock_max_wait_seconds",
            "gauge",
            "Longest single wait for each named lock.",
            |s| s.max_wait.as_secs_f64(),
        ),
        (
            "synckit_lock_holds_timed_total",
            "counter",
            "Exclusive holds of each named lock that were timed (hold timing on).",
            |s| s.holds.timed as f64,
        ),
        (
            "synckit_lock_hold_seconds_total",
            "counter",
            "Total time of the timed exclusive holds of each named lock.",
            |s| s.holds.total.as_secs_f64(),
        ),
        (
            "synckit_lock_max_hold_seconds",
            "gauge",
            "Longest timed exclusive hold of each named lock.",
            |s| s.holds.max.as_secs_f64(),
        ),
    ];
    for (name, kind, help, figure) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (lock, labels) in locks.iter().zip(&labels) {
            let _ = writeln!(out, "{name}{{{labels}}} {}", figure(&lock.stats));
        }
    }
    let detector = deadlock::stats();
    for (name, kind, help, value) in [
        (
            "synckit_deadlock_waits_registered_total",
            "counter",
            "Acquisitions that slept and so entered the wait-for graph.",
            detector.waits_registered,
        ),
        (
            "synckit_deadlock_cycles_refused_total",
            "counter",
            "Acquisitions refused because they would have closed a wait-for cycle.",
            detector.cycles_detected,
        ),
        (
            "synckit_deadlock_level_violations_total",
            "counter",
            "Acquisitions refused because they broke the lock hierarchy.",
            detector.level_violations,
        ),
        (
            "synckit_deadlock_order_inversions_total",
            "counter",
            "Acquisitions that inverted the learned lock order.",
            detector.order_inversions,
        ),
        (
            "synckit_deadlock_threads_waiting",
            "gauge",
            "Waits in the wait-for graph now.",
            detector.threads_waiting,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    out.push_str(&stats::prometheus_wait_histograms("synckit"));
    out
}
