//! The data behind the page: [`snapshot_json`].

use std::panic::Location;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::deadlock::{self, BlockedBy, OrderChecking, OrderEdge, Refusal, ThreadInfo};
use crate::lock::meta::{LockInfo, LockUse};
use crate::stats;

/// Everything the page shows, as one JSON document (durations in nanoseconds, times in
/// milliseconds since the Unix epoch):
///
/// ```text
/// { "time_ms": 1700000000000,
///   "order_checking": "refuse" | "warn" | "off",
///   "detector": { "waits_registered", "cycles_detected", "level_violations",
///                 "threads_waiting", "order_inversions" },
///   "locks": [ { "name", "kind", "level" (or null), "acquisitions", "contentions",
///                "contention_ratio", "total_wait_ns", "max_wait_ns", "p50_wait_ns",
///                "p99_wait_ns", "holds_timed", "hold_total_ns", "hold_max_ns",
///                "top_waiters": [ { "at", "waits", "total_wait_ns" } ] } ],
///   "condvars": [ { "name", "stats": { ... } } ],
///   "refusals": [ (oldest first)
///     { "seq", "time_ms", "kind": "deadlock", "text",
///       "cycle": [ { "thread": { "id", "name", "task" }, "wants": USE,
///                    "blocked_by": { "kind": "holder" | "queued_writer",
///                                    "thread": THREAD, "use": USE } } ] },
///     { "seq", "time_ms", "kind": "inversion", "refused", "text",
///       "requested": USE, "held": USE,
///       "learned": [ { "before": LOCK, "after": LOCK, "before_at", "after_at", "by_level" } ] } ] }
/// USE = { "lock": LOCK, "mode": "exclusive" | "shared", "at": "file:line:column" }
/// LOCK = { "id", "name" (or null), "label", "kind", "level" (or null) }
/// ```
///
/// `locks` is [`stats::all`]'s order (by level, then name). An application adds its own
/// `"panels"` (see the [module documentation](super)) before serving it.
pub fn snapshot_json() -> Value {
    let locks: Vec<Value> = stats::all()
        .into_iter()
        .map(|lock| {
            let s = &lock.stats;
            let ratio = if s.acquisitions == 0 {
                0.0
            } else {
                s.contentions as f64 / s.acquisitions as f64
            };
            json!({
                "name": lock.name,
                "kind": lock.kind,
                "level": lock.level,
                "acquisitions": s.acquisitions,
                "contentions": s.contentions,
                "contention_ratio": ratio,
                "total_wait_ns": nanos(s.total_wait),
                "max_wait_ns": nanos(s.max_wait),
                "p50_wait_ns": nanos(s.p50_wait),
                "p99_wait_ns": nanos(s.p99_wait),
                "holds_timed": s.holds.timed,
                "hold_total_ns": nanos(s.holds.total),
                "hold_max_ns": nanos(s.holds.max),
                "top_waiters": s.top_waiters.iter().map(|w| json!({
                    "at": site(w.at),
                    "waits": w.waits,
                    "total_wait_ns": nanos(w.total_wait),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let refusals: Vec<Value> = deadlock::recent()
        .into_iter()
        .map(|recent| {
            let mut entry = match &recent.refusal {
                Refusal::Deadlock(report) => json!({
                    "kind": "deadlock",
                    "text": report.to_string(),
                    "cycle": report.cycle().iter().map(|step| json!({
                        "thread": thread(&step.thread),
                        "wants": lock_use(&step.wants),
                        "blocked_by": match &step.blocked_by {
                            BlockedBy::Holder { thread: t, held } => json!({
                                "kind": "holder", "thread": thread(t), "use": lock_use(held),
                            }),
                            BlockedBy::QueuedWriter { thread: t, request } => json!({
                                "kind": "queued_writer", "thread": thread(t), "use": lock_use(request),
                            }),
                        },
                    })).collect::<Vec<_>>(),
                }),
                Refusal::Inversion(report) => json!({
                    "kind": "inversion",
                    "refused": report.refused,
                    "text": report.to_string(),
                    "requested": lock_use(&report.requested),
                    "held": lock_use(&report.held),
                    "learned": report.learned.iter().map(edge).collect::<Vec<_>>(),
                }),
            };
            entry["seq"] = json!(recent.seq);
            entry["time_ms"] = json!(millis(recent.at));
            entry
        })
        .collect();
    let order_checking = match deadlock::order_checking() {
        OrderChecking::Refuse => "refuse",
        OrderChecking::Warn => "warn",
        OrderChecking::Off => "off",
    };
    json!({
        "time_ms": millis(SystemTime::now()),
        "order_checking": order_checking,
        "detector": deadlock::stats(),
        "locks": locks,
        "condvars": stats::condvars(),
        "refusals": refusals,
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn site(at: &Location<'_>) -> String {
    at.to_string()
}

fn thread(t: &ThreadInfo) -> Value {
    // `ThreadId`'s only stable rendering is `Debug` ("ThreadId(5)"): keep the number.
    let id = format!("{:?}", t.id);
    let id = id
        .trim_start_matches("ThreadId(")
        .trim_end_matches(')')
        .to_owned();
    json!({ "id": id, "name": t.name, "task": t.task })
}

fn lock(info: &LockInfo) -> Value {
    let label = match info.name {
        Some(name) => name.to_owned(),
        None => format!("unnamed {} #{}", info.kind, info.id.0),
    };
    json!({
        "id": info.id,
        "name": info.name,
        "label": label,
        "kind": info.kind,
        "level": info.level,
    })
}

fn lock_use(u: &LockUse) -> Value {
    json!({ "lock": lock(&u.lock), "mode": u.mode, "at": site(u.at) })
}

fn edge(e: &OrderEdge) -> Value {
    json!({
        "before": lock(&e.before),
        "after": lock(&e.after),
        "before_at": site(e.before_at),
        "after_at": site(e.after_at),
        "by_level": e.by_level,
    })
}
