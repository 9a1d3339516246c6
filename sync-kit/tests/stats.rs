//! Statistics: per-lock counters (acquisitions, contentions, wait times), the live list of named
//! locks (`stats::all`), the detector's counters (`deadlock::stats`), and their JSON form.
//!
//! Forced waits are observed through the process-wide probe
//! `deadlock::stats().threads_waiting`, so the tests of this binary that make threads wait hold
//! `common::serial()`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{bounded, join, serial, spawn, wait_for_waiters, waiting};
use serde_json::{Value, json};
use sync_kit::stats::NamedLockStats;
use sync_kit::{Level, LockError, LockKind, LockStats, Mutex, RwLock};

/// The live named locks whose name starts with `prefix`.
fn listed(prefix: &str) -> Vec<NamedLockStats> {
    sync_kit::stats::all()
        .into_iter()
        .filter(|s| s.name.starts_with(prefix))
        .collect()
}

/// How long the holder keeps the lock after the waiter is known to sleep on it. Waits are
/// asserted to be at least this long, which holds whatever the scheduling: the waiter started
/// waiting before this delay began.
const HOLD: Duration = Duration::from_millis(20);

#[test]
fn acquisitions_are_exact_after_concurrent_use() {
    let _serial = serial();
    bounded("acquisitions", || {
        const THREADS: u64 = 8;
        const K: u64 = 500;
        let m = Arc::new(Mutex::named("st-acq-m", 0u64));
        let rw = Arc::new(RwLock::named("st-acq-rw", 0u64));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (m, rw) = (m.clone(), rw.clone());
                spawn(format!("st-acq-{t}"), move || {
                    for i in 0..K {
                        *m.lock().unwrap() += 1;
                        if i % 4 == 0 {
                            *rw.write().unwrap() += 1;
                        } else {
                            let _ = *rw.read().unwrap();
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(join);
        assert_eq!(m.stats().acquisitions, THREADS * K);
        assert_eq!(rw.stats().acquisitions, THREADS * K);
        assert_eq!(*m.lock().unwrap(), THREADS * K);
        assert_eq!(m.stats().acquisitions, THREADS * K + 1);
        let s = m.stats();
        assert!(s.contentions <= s.acquisitions);
        assert!(s.total_wait >= s.max_wait);

        // The list shows the same counters.
        let listed = listed("st-acq-");
        let by_name = |n: &str| listed.iter().find(|s| s.name == n).unwrap().stats.clone();
        assert_eq!(by_name("st-acq-m").acquisitions, THREADS * K + 1);
        assert_eq!(by_name("st-acq-rw").acquisitions, THREADS * K);
    });
}

#[test]
fn refused_and_failed_attempts_are_not_counted() {
    let _serial = serial();
    bounded("failed attempts", || {
        let high = Mutex::with_level("st-fail-high", Level(9), ());
        let low = Mutex::with_level("st-fail-low", Level(1), ());
        let plain = Mutex::named("st-fail-plain", ());
        let g = plain.lock().unwrap();
        assert!(matches!(plain.try_lock(), Err(LockError::Timeout)));
        assert!(matches!(plain.lock(), Err(LockError::Deadlock(_))));
        drop(g);
        let h = high.lock().unwrap();
        assert!(matches!(low.lock(), Err(LockError::LevelViolation { .. })));
        drop(h);
        assert_eq!(plain.stats().acquisitions, 1);
        assert_eq!(low.stats(), LockStats::default());
        assert_eq!(high.stats().acquisitions, 1);
    });
}

#[test]
fn uncontended_locks_record_no_contention() {
    let m = Mutex::new(());
    let rw = RwLock::new(());
    for _ in 0..10 {
        drop(m.lock().unwrap());
        drop(rw.read().unwrap());
        drop(rw.write().unwrap());
    }
    for s in [m.stats(), rw.stats()] {
        assert_eq!(s.contentions, 0);
        assert_eq!(s.total_wait, Duration::ZERO);
        assert_eq!(s.max_wait, Duration::ZERO);
    }
    assert_eq!(m.stats().acquisitions, 10);
    assert_eq!(rw.stats().acquisitions, 20);
}

#[test]
fn a_forced_wait_counts_a_contention_and_its_duration() {
    let _serial = serial();
    bounded("mutex contention", || {
        let base = waiting();
        let waits_before = sync_kit::deadlock::stats().waits_registered;
        let m = Arc::new(Mutex::named("st-wait-m", 0u32));
        for round in 1..=2u32 {
            let g = m.lock().unwrap();
            let waiter = {
                let m = m.clone();
                spawn(format!("st-wait-waiter-{round}"), move || {
                    *m.lock().unwrap() += 1;
                })
            };
            wait_for_waiters(base + 1);
            // The waiter sleeps on the lock; hold on a little, then release.
            std::thread::sleep(HOLD);
            drop(g);
            join(waiter);
            let s = m.stats();
            assert_eq!(s.contentions, u64::from(round), "{s:?}");
            assert!(s.max_wait >= HOLD, "max_wait {:?} < {HOLD:?}", s.max_wait);
            assert!(s.total_wait >= s.max_wait, "{s:?}");
            assert!(s.total_wait >= HOLD * round, "{s:?}");
            assert_eq!(s.acquisitions, u64::from(2 * round));
        }
        let after = sync_kit::deadlock::stats().waits_registered;
        assert!(
            after >= waits_before + 2,
            "waits_registered {waits_before} -> {after}"
        );
        assert_eq!(*m.lock().unwrap(), 2);
    });
}

#[test]
fn forced_waits_on_an_rwlock_are_counted() {
    let _serial = serial();
    bounded("rwlock contention", || {
        let base = waiting();
        let rw = Arc::new(RwLock::named("st-wait-rw", 0u32));

        // A writer waits for a reader.
        let r = rw.read().unwrap();
        let writer = {
            let rw = rw.clone();
            spawn("st-wait-rw-writer", move || *rw.write().unwrap() += 1)
        };
        wait_for_waiters(base + 1);
        std::thread::sleep(HOLD);
        drop(r);
        join(writer);
        let s = rw.stats();
        assert_eq!((s.acquisitions, s.contentions), (2, 1), "{s:?}");
        assert!(s.max_wait >= HOLD && s.total_wait >= s.max_wait, "{s:?}");

        // A reader waits for a writer.
        let w = rw.write().unwrap();
        let reader = {
            let rw = rw.clone();
            spawn("st-wait-rw-reader", move || *rw.read().unwrap())
        };
        wait_for_waiters(base + 1);
        std::thread::sleep(HOLD);
        drop(w);
        assert_eq!(join(reader), 1);
        let s = rw.stats();
        assert_eq!((s.acquisitions, s.contentions), (4, 2), "{s:?}");
        assert!(
            s.total_wait >= HOLD * 2 && s.total_wait >= s.max_wait,
            "{s:?}"
        );
    });
}

#[test]
fn all_lists_live_named_locks_with_name_level_and_kind() {
    let m = Mutex::with_level("st-list-m", Level(31), ());
    let rw = RwLock::named("st-list-rw", ());
    let rwl = RwLock::with_level("st-list-rwl", Level(32), ());
    let mn = Mutex::named("st-list-mn", ());
    drop(m.lock().unwrap());
    drop(rwl.read().unwrap());
    drop(rwl.write().unwrap());

    let found = listed("st-list-");
    let summary: Vec<_> = found
        .iter()
        .map(|s| (s.name, s.level, s.kind, s.stats.acquisitions))
        .collect();
    // Ordered by level, unleveled last, then by name.
    assert_eq!(
        summary,
        [
            ("st-list-m", Some(Level(31)), LockKind::Mutex, 1),
            ("st-list-rwl", Some(Level(32)), LockKind::RwLock, 2),
            ("st-list-mn", None, LockKind::Mutex, 0),
            ("st-list-rw", None, LockKind::RwLock, 0),
        ]
    );
    for s in &found {
        let own = match s.name {
            "st-list-m" => m.stats(),
            "st-list-rw" => rw.stats(),
            "st-list-rwl" => rwl.stats(),
            _ => mn.stats(),
        };
        assert_eq!(s.stats, own);
    }

    drop(m);
    drop(rw);
    let names: Vec<_> = listed("st-list-").iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        ["st-list-rwl", "st-list-mn"],
        "dropped locks leave the list"
    );
    drop((rwl, mn));
    assert!(listed("st-list-").is_empty());
}

#[test]
fn a_lock_moved_into_a_thread_stays_listed_until_dropped_there() {
    bounded("listed across threads", || {
        let m = Mutex::named("st-moved", 1);
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = spawn("st-moved-owner", move || {
            drop(m.lock().unwrap());
            tx.send(()).unwrap();
            done_rx.recv().unwrap();
            drop(m);
        });
        common::recv(&rx, "the owner used the lock");
        assert_eq!(listed("st-moved")[0].stats.acquisitions, 1);
        done_tx.send(()).unwrap();
        join(t);
        assert!(listed("st-moved").is_empty());
    });
}

#[test]
fn unnamed_locks_are_not_listed() {
    let unnamed_m = Mutex::new(());
    let unnamed_rw = RwLock::new(());
    let default_m: Mutex<u8> = Mutex::default();
    drop(unnamed_m.lock().unwrap());
    drop(unnamed_rw.read().unwrap());
    drop(default_m.lock().unwrap());
    // No test creates a lock named "", so an empty name would be one of the unnamed locks.
    let all = sync_kit::stats::all();
    assert!(
        all.iter().all(|s| !s.name.is_empty()),
        "unnamed locks must not be listed: {all:?}"
    );
}

#[test]
fn lock_stats_serialize_to_json() {
    let _serial = serial();
    bounded("LockStats json", || {
        let base = waiting();
        let m = Arc::new(Mutex::named("st-json-stats", ()));
        let g = m.lock().unwrap();
        let waiter = {
            let m = m.clone();
            spawn("st-json-waiter", move || drop(m.lock().unwrap()))
        };
        wait_for_waiters(base + 1);
        drop(g);
        join(waiter);
        let s = m.stats();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["acquisitions"], json!(2));
        assert_eq!(v["contentions"], json!(1));
        // Durations serialize as integer nanoseconds (`total_wait_ns`, `max_wait_ns`).
        let obj = v.as_object().expect("a JSON object");
        let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "acquisitions",
                "contentions",
                "holds",
                "max_wait_ns",
                "p50_wait_ns",
                "p99_wait_ns",
                "top_waiters",
                "total_wait_ns",
                "wait_histogram"
            ],
            "{v}"
        );
        let total = v["total_wait_ns"]
            .as_u64()
            .expect("total_wait_ns is an integer");
        let max = v["max_wait_ns"]
            .as_u64()
            .expect("max_wait_ns is an integer");
        assert_eq!(u128::from(total), s.total_wait.as_nanos());
        assert_eq!(u128::from(max), s.max_wait.as_nanos());
        assert!(total >= max && max > 0, "{v}");
        // One wait: one histogram bucket with one count, one waiting call site.
        assert_eq!(v["wait_histogram"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v["wait_histogram"][0]["count"], json!(1));
        assert_eq!(v["top_waiters"][0]["waits"], json!(1));
        assert!(
            v["top_waiters"][0]["at"]
                .as_str()
                .is_some_and(|at| at.starts_with(file!())),
            "{v}"
        );
        assert_eq!(v["holds"], json!({"timed": 0, "total_ns": 0, "max_ns": 0}));
        // Default stats serialize as well.
        let zero = serde_json::to_value(LockStats::default()).unwrap();
        assert_eq!(zero["acquisitions"], json!(0));
        assert_eq!(zero["max_wait_ns"], json!(0));
        assert_eq!(zero["total_wait_ns"], json!(0));
    });
}

#[test]
fn all_serializes_to_json() {
    let m = Mutex::with_level("st-json-all-m", Level(77), ());
    let rw = RwLock::named("st-json-all-rw", ());
    drop(m.lock().unwrap());
    let text = serde_json::to_string(&sync_kit::stats::all()).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let entries = v.as_array().expect("a JSON array");
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e["name"] == json!(name))
            .unwrap_or_else(|| panic!("{name} missing from {text}"))
    };
    let em = find("st-json-all-m");
    assert_eq!(em["level"], json!(77));
    assert_eq!(em["kind"], json!("mutex"));
    assert_eq!(em["stats"]["acquisitions"], json!(1));
    assert_eq!(em["stats"]["contentions"], json!(0));
    assert_eq!(em["stats"]["total_wait_ns"], json!(0));
    let erw = find("st-json-all-rw");
    assert_eq!(erw["level"], Value::Null);
    assert_eq!(erw["kind"], json!("rwlock"));
    assert_eq!(erw["stats"]["acquisitions"], json!(0));
    drop((m, rw));
}

#[test]
fn detector_counters_increase_and_serialize() {
    let _serial = serial();
    bounded("detector counters", || {
        let before = sync_kit::deadlock::stats();

        let m = Mutex::named("st-det-m", ());
        let g = m.lock().unwrap();
        assert!(matches!(m.lock(), Err(LockError::Deadlock(_))));
        drop(g);

        let high = Mutex::with_level("st-det-high", Level(2), ());
        let low = RwLock::with_level("st-det-low", Level(1), ());
        let h = high.lock().unwrap();
        assert!(matches!(low.read(), Err(LockError::LevelViolation { .. })));
        assert!(matches!(
            low.try_write(),
            Err(LockError::LevelViolation { .. })
        ));
        drop(h);

        let after = sync_kit::deadlock::stats();
        assert!(
            after.cycles_detected > before.cycles_detected,
            "cycles_detected {} -> {}",
            before.cycles_detected,
            after.cycles_detected
        );
        assert!(
            after.level_violations >= before.level_violations + 2,
            "level_violations {} -> {}",
            before.level_violations,
            after.level_violations
        );
        assert!(after.waits_registered >= before.waits_registered);

        let v = serde_json::to_value(after).unwrap();
        let obj = v.as_object().expect("a JSON object");
        for key in [
            "waits_registered",
            "cycles_detected",
            "level_violations",
            "threads_waiting",
        ] {
            assert!(obj[key].is_u64(), "{key} in {v}");
        }
        assert_eq!(obj["cycles_detected"], json!(after.cycles_detected));
        assert_eq!(obj["level_violations"], json!(after.level_violations));
        assert_eq!(obj["threads_waiting"], json!(after.threads_waiting));
    });
}

/// Forces `n` waits on `m` from the call site inside `acquire`: each time the test thread holds the
/// lock until the waiter sleeps on it (seen through the detector probe), then lets it go.
fn force_waits(m: &Arc<Mutex<u32>>, n: u32, acquire: fn(&Mutex<u32>)) {
    for round in 0..n {
        let base = waiting();
        let g = m.lock().unwrap();
        let waiter = {
            let m = m.clone();
            spawn(format!("st-hist-waiter-{round}"), move || acquire(&m))
        };
        wait_for_waiters(base + 1);
        drop(g);
        join(waiter);
    }
}

#[test]
fn waits_fill_a_histogram_with_percentiles_and_the_sites_that_waited() {
    let _serial = serial();
    bounded("wait histogram", || {
        let m = Arc::new(Mutex::named("st-hist-m", 0u32));
        fn site_a(m: &Mutex<u32>) {
            *m.lock().unwrap() += 1;
        }
        fn site_b(m: &Mutex<u32>) {
            *m.lock().unwrap() += 1;
        }
        force_waits(&m, 3, site_a);
        force_waits(&m, 2, site_b);
        let s = m.stats();
        assert_eq!(s.contentions, 5, "{s:?}");
        assert_eq!(s.wait_histogram.total(), 5);
        assert_eq!(s.wait_histogram.buckets().map(|(_, n)| n).sum::<u64>(), 5);
        assert!(s.p50_wait > Duration::ZERO, "{s:?}");
        assert!(
            s.p50_wait <= s.p99_wait && s.p99_wait <= s.max_wait,
            "{s:?}"
        );
        // Each bucket's upper bound is a power of two nanoseconds, and the longest wait falls
        // below the last one.
        let (last_bound, _) = s.wait_histogram.buckets().last().unwrap();
        assert!(last_bound.as_nanos().is_power_of_two() && s.max_wait < last_bound);
        // Two call sites waited: 3 and 2 times, each with its own total.
        let mut counts: Vec<u64> = s.top_waiters.iter().map(|w| w.waits).collect();
        counts.sort_unstable();
        assert_eq!(counts, [2, 3], "{:?}", s.top_waiters);
        assert!(s.top_waiters.iter().all(|w| w.at.file() == file!()));
        assert!(s.top_waiters[0].total_wait >= s.top_waiters[1].total_wait);
        let total: Duration = s.top_waiters.iter().map(|w| w.total_wait).sum();
        assert_eq!(total, s.total_wait);
    });
}

#[test]
fn reset_zeroes_every_named_lock() {
    let _serial = serial();
    bounded("reset", || {
        let m = Arc::new(Mutex::named("st-reset-m", 0u32));
        force_waits(&m, 1, |m| *m.lock().unwrap() += 1);
        assert_eq!(m.stats().contentions, 1);
        sync_kit::stats::reset();
        assert_eq!(m.stats(), LockStats::default());
        *m.lock().unwrap() += 1;
        assert_eq!(m.stats().acquisitions, 1);
    });
}

#[test]
fn hold_times_are_off_by_default_and_opt_in_per_lock_or_globally() {
    let _serial = serial();
    let m = Mutex::named("st-hold-m", 0u32);
    let rw = RwLock::named("st-hold-rw", 0u32);
    *m.lock().unwrap() += 1;
    assert_eq!(m.stats().holds, Default::default(), "off by default");

    m.set_hold_timing(true);
    for _ in 0..3 {
        *m.lock().unwrap() += 1;
    }
    let holds = m.stats().holds;
    assert_eq!(holds.timed, 3);
    assert!(holds.total >= holds.max, "{holds:?}");
    m.set_hold_timing(false);
    *m.lock().unwrap() += 1;
    assert_eq!(m.stats().holds.timed, 3, "off again for this lock");

    sync_kit::stats::set_hold_timing(true);
    *rw.write().unwrap() += 1;
    drop(rw.read().unwrap()); // read holds are not timed
    *m.lock().unwrap() += 1;
    sync_kit::stats::set_hold_timing(false);
    assert_eq!(rw.stats().holds.timed, 1);
    assert_eq!(m.stats().holds.timed, 4);
}

/// The global switch reaches an `RwLock` created before it whatever else is on: here with order
/// checking `Off` (the release default), so only hold timing sends its writes off the plain path
/// (its lock word's DIVERT bit). Turned off again, its writes are no longer timed.
#[test]
fn global_hold_timing_reaches_rwlocks_with_order_checking_off() {
    use sync_kit::deadlock::{OrderChecking, order_checking, set_order_checking};
    let _serial = serial();
    let policy = order_checking();
    set_order_checking(OrderChecking::Off);
    let rw = RwLock::named("st-hold-rw-off", 0u32);
    *rw.write().unwrap() += 1;
    sync_kit::stats::set_hold_timing(true);
    *rw.write().unwrap() += 1;
    drop(rw.read().unwrap());
    sync_kit::stats::set_hold_timing(false);
    *rw.write().unwrap() += 1;
    set_order_checking(policy);
    let s = rw.stats();
    assert_eq!(s.holds.timed, 1, "{s:?}");
    assert_eq!(s.acquisitions, 4, "{s:?}");
}

#[test]
fn prometheus_output_has_one_cumulative_histogram_per_named_lock() {
    let _serial = serial();
    bounded("prometheus", || {
        let m = Arc::new(Mutex::with_level("st-prom \"quoted\"", Level(3), 0u32));
        force_waits(&m, 2, |m| *m.lock().unwrap() += 1);
        let text = sync_kit::stats::prometheus_wait_histograms("synckit");
        assert!(text.contains("# TYPE synckit_lock_wait_seconds histogram\n"));
        let labels = r#"lock="st-prom \"quoted\"",kind="mutex",level="3""#;
        let series: Vec<&str> = text.lines().filter(|l| l.contains(labels)).collect();
        let buckets: Vec<u64> = series
            .iter()
            .filter(|l| l.starts_with("synckit_lock_wait_seconds_bucket{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), 14, "13 bounds and +Inf: {series:#?}");
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "cumulative: {buckets:?}"
        );
        assert_eq!(*buckets.last().unwrap(), 2);
        assert!(
            series
                .iter()
                .any(|l| l.starts_with("synckit_lock_wait_seconds_count{") && l.ends_with(" 2"))
        );
        let sum = series
            .iter()
            .find(|l| l.starts_with("synckit_lock_wait_seconds_sum{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .expect("a _sum series");
        assert!((sum - m.stats().total_wait.as_secs_f64()).abs() < 1e-9);
    });
}

#[test]
fn names_may_be_built_at_run_time_and_are_stored_once() {
    let id = 42;
    let a = Mutex::named(format!("st-dyn-account-{id}"), ());
    let b = RwLock::with_level(format!("st-dyn-account-{id}"), Level(5), ());
    let static_name = Mutex::named("st-dyn-static", ());
    let (a_name, b_name) = (a.info().name.unwrap(), b.info().name.unwrap());
    assert_eq!(a_name, "st-dyn-account-42");
    assert!(std::ptr::eq(a_name, b_name), "one copy per distinct name");
    assert_eq!(static_name.info().name, Some("st-dyn-static"));
    let names: Vec<_> = listed("st-dyn-").into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        ["st-dyn-account-42", "st-dyn-account-42", "st-dyn-static"]
    );
}
