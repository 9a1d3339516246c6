//! Lock hierarchy: a thread holding a leveled lock at level n may only acquire leveled locks at
//! levels strictly above n; anything else is refused at once with `LevelViolation`.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{bounded, join, recv, site, spawn};
use sync_kit::{AccessMode, Level, LockError, LockKind, LockUse, Mutex, RwLock};

/// Unpacks a `LevelViolation`, failing with the actual result otherwise.
fn violation<T>(result: Result<T, LockError>) -> (LockUse, LockUse) {
    match result {
        Err(LockError::LevelViolation { held, requested }) => (*held, *requested),
        Err(other) => panic!("expected LevelViolation, got {other:?}"),
        Ok(_) => panic!("expected LevelViolation, but the lock was acquired"),
    }
}

fn assert_violation<T>(result: Result<T, LockError>, held: &str, requested: &str) {
    let (h, r) = violation(result);
    assert_eq!(h.name(), Some(held), "held lock of the violation");
    assert_eq!(r.name(), Some(requested), "requested lock of the violation");
}

fn held_names() -> Vec<&'static str> {
    sync_kit::held_by_current_thread()
        .iter()
        .map(|u| u.name().unwrap_or("<unnamed>"))
        .collect()
}

#[test]
fn lower_level_is_refused_when_the_requested_lock_is_free() {
    let high = Mutex::with_level("lv-free-high", Level(20), ());
    let low = Mutex::with_level("lv-free-low", Level(10), 5u8);
    let low_rw = RwLock::with_level("lv-free-low-rw", Level(10), 5u8);

    let _h = high.lock().unwrap();
    let before = held_names();
    assert_violation(low.lock(), "lv-free-high", "lv-free-low");
    assert_violation(low_rw.read(), "lv-free-high", "lv-free-low-rw");
    assert_violation(low_rw.write(), "lv-free-high", "lv-free-low-rw");

    // Nothing was acquired: not locked, not counted, not recorded as held.
    assert!(!low.is_locked());
    assert!(!low_rw.is_write_locked());
    assert_eq!(low_rw.reader_count(), 0);
    assert_eq!(low.stats().acquisitions, 0);
    assert_eq!(low_rw.stats().acquisitions, 0);
    assert_eq!(held_names(), before);
    assert_eq!(before, ["lv-free-high"]);
}

#[test]
fn lower_level_is_refused_at_once_when_the_requested_lock_is_held_by_another_thread() {
    bounded("level violation on a held lock", || {
        let low = Arc::new(Mutex::with_level("lv-busy-low", Level(10), ()));
        let low_rw = Arc::new(RwLock::with_level("lv-busy-low-rw", Level(11), ()));
        let high = Mutex::with_level("lv-busy-high", Level(20), ());

        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = {
            let (low, low_rw) = (low.clone(), low_rw.clone());
            spawn("lv-busy-holder", move || {
                let _a = low.lock().unwrap();
                let _b = low_rw.write().unwrap();
                held_tx.send(()).unwrap();
                // Released only after the violations below have returned: had they waited for
                // the lock, they would wait forever (and `bounded` would report it).
                release_rx.recv().unwrap();
            })
        };
        recv(&held_rx, "the holder holds both low locks");

        let _h = high.lock().unwrap();
        let start = Instant::now();
        assert_violation(low.lock(), "lv-busy-high", "lv-busy-low");
        assert_violation(
            low.try_lock_for(Duration::from_secs(60)),
            "lv-busy-high",
            "lv-busy-low",
        );
        assert_violation(low_rw.read(), "lv-busy-high", "lv-busy-low-rw");
        assert_violation(low_rw.write(), "lv-busy-high", "lv-busy-low-rw");
        assert_violation(
            low_rw.try_write_for(Duration::from_secs(60)),
            "lv-busy-high",
            "lv-busy-low-rw",
        );
        let elapsed = start.elapsed();
        // Refused before touching the lock: no contention recorded, no waiting.
        assert_eq!(low.stats().contentions, 0);
        assert_eq!(low_rw.stats().contentions, 0);
        assert!(
            elapsed < Duration::from_secs(5),
            "the violations took {elapsed:?}: they must not wait"
        );
        assert!(low.is_locked() && low_rw.is_write_locked());

        release_tx.send(()).unwrap();
        join(holder);
    });
}

#[test]
fn equal_levels_are_refused() {
    let a = Mutex::with_level("lv-eq-a", Level(10), ());
    let b = Mutex::with_level("lv-eq-b", Level(10), ());
    let rw = RwLock::with_level("lv-eq-rw", Level(10), ());

    let ga = a.lock().unwrap();
    assert_violation(b.lock(), "lv-eq-a", "lv-eq-b");
    assert_violation(b.try_lock(), "lv-eq-a", "lv-eq-b");
    assert_violation(rw.read(), "lv-eq-a", "lv-eq-rw");
    assert_violation(rw.write(), "lv-eq-a", "lv-eq-rw");
    // The same leveled mutex again: equal level, refused as a violation (not a deadlock, and
    // without waiting for itself).
    assert_violation(a.lock(), "lv-eq-a", "lv-eq-a");
    drop(ga);

    // Same for an RwLock: write or read while holding it (its own level) is refused.
    let gr = rw.read().unwrap();
    assert_violation(rw.write(), "lv-eq-rw", "lv-eq-rw");
    // Spec: levels must be strictly greater, so re-reading a leveled RwLock is refused too.
    assert_violation(rw.read(), "lv-eq-rw", "lv-eq-rw");
    assert_violation(a.lock(), "lv-eq-rw", "lv-eq-a");
    drop(gr);

    let gw = rw.write().unwrap();
    assert_violation(rw.read(), "lv-eq-rw", "lv-eq-rw");
    assert_violation(b.lock(), "lv-eq-rw", "lv-eq-b");
    drop(gw);

    assert!(sync_kit::held_by_current_thread().is_empty());
    // Once released, each may be taken alone.
    drop(a.lock().unwrap());
    drop(b.lock().unwrap());
}

#[test]
fn strictly_increasing_levels_are_accepted_across_kinds() {
    let l10 = Mutex::with_level("lv-inc-10", Level(10), 1);
    let l20 = RwLock::with_level("lv-inc-20", Level(20), 2);
    let l30 = Mutex::with_level("lv-inc-30", Level(30), 3);
    let l40 = RwLock::with_level("lv-inc-40", Level(40), 4);

    let a = l10.lock().unwrap();
    let b = l20.read().unwrap();
    let c = l30.try_lock().unwrap();
    let d = l40.try_write_for(Duration::from_secs(1)).unwrap();
    assert_eq!(*a + *b + *c + *d, 10);

    let held = sync_kit::held_by_current_thread();
    let summary: Vec<_> = held
        .iter()
        .map(|u| (u.name().unwrap(), u.level().unwrap(), u.lock.kind, u.mode))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "lv-inc-10",
                Level(10),
                LockKind::Mutex,
                AccessMode::Exclusive
            ),
            ("lv-inc-20", Level(20), LockKind::RwLock, AccessMode::Shared),
            (
                "lv-inc-30",
                Level(30),
                LockKind::Mutex,
                AccessMode::Exclusive
            ),
            (
                "lv-inc-40",
                Level(40),
                LockKind::RwLock,
                AccessMode::Exclusive
            ),
        ]
    );
    drop((a, b, c, d));
    assert!(sync_kit::held_by_current_thread().is_empty());
}

#[test]
fn unleveled_locks_skip_the_level_check() {
    let high = Mutex::with_level("lv-unl-high", Level(50), ());
    let low = Mutex::with_level("lv-unl-low", Level(1), ());
    let plain = Mutex::named("lv-unl-plain", ());
    let anon = Mutex::new(());
    let plain_rw = RwLock::new(());

    // Holding a leveled lock, unleveled locks are always allowed.
    let h = high.lock().unwrap();
    let p = plain.lock().unwrap();
    let q = anon.lock().unwrap();
    let r = plain_rw.write().unwrap();
    // ... but they do not reset the hierarchy: the level held is still 50.
    let (held, requested) = violation(low.lock());
    assert_eq!(held.name(), Some("lv-unl-high"));
    assert_eq!(held.level(), Some(Level(50)));
    assert_eq!(requested.name(), Some("lv-unl-low"));
    drop((h, p, q, r));

    // Holding only unleveled locks, any leveled lock is allowed. (Fresh unleveled locks: taking
    // `plain` before `high` would contradict the order learned above, `high` before `plain`, and
    // be refused as an order inversion, which is not what this test is about.)
    let plain = Mutex::named("lv-unl-plain-2", ());
    let plain_rw = RwLock::new(());
    let p = plain.lock().unwrap();
    let r = plain_rw.read().unwrap();
    let l = low.lock().unwrap();
    let h = high.lock().unwrap();
    drop((p, r, l, h));
    assert!(sync_kit::held_by_current_thread().is_empty());
}

#[test]
fn unleveled_locks_still_take_part_in_deadlock_detection() {
    // The ABBA below takes two unleveled locks in both orders on purpose, to reach the wait-for
    // detector; learned-order checking would refuse the second order first. Off for this test
    // (no other test of this binary depends on it).
    sync_kit::deadlock::set_order_checking(sync_kit::deadlock::OrderChecking::Off);
    // Locking an unleveled mutex the thread holds is a (one-thread) deadlock, whereas a leveled
    // one is a level violation.
    bounded("unleveled self-deadlock", || {
        let plain = Mutex::named("lv-dl-plain", ());
        let leveled = Mutex::with_level("lv-dl-leveled", Level(3), ());
        let _g = plain.lock().unwrap();
        match plain.lock() {
            Err(LockError::Deadlock(report)) => assert_eq!(report.cycle().len(), 1),
            other => panic!("expected Deadlock, got {:?}", other.map(drop)),
        }
        let _l = leveled.lock().unwrap();
        assert_violation(leveled.lock(), "lv-dl-leveled", "lv-dl-leveled");
    });

    // ABBA on two unleveled locks, each thread also holding a leveled lock (which must not
    // exempt them from detection): exactly one of the two is refused, the other proceeds.
    bounded("unleveled ABBA", || {
        let a = Arc::new(Mutex::named("lv-dl-a", ()));
        let b = Arc::new(RwLock::named("lv-dl-b", ()));
        let barrier = Arc::new(Barrier::new(2));
        let first = {
            let (a, b, barrier) = (a.clone(), b.clone(), barrier.clone());
            spawn("lv-dl-first", move || {
                let top = Mutex::with_level("lv-dl-first-top", Level(7), ());
                let _t = top.lock().unwrap();
                let _a = a.lock().unwrap();
                barrier.wait();
                b.write().map(drop)
            })
        };
        let second = spawn("lv-dl-second", move || {
            let top = Mutex::with_level("lv-dl-second-top", Level(7), ());
            let _t = top.lock().unwrap();
            let _b = b.read().unwrap();
            barrier.wait();
            a.lock().map(drop)
        });
        let results = [join(first), join(second)];
        let refused = results
            .iter()
            .filter(|r| matches!(r, Err(LockError::Deadlock(_))))
            .count();
        let acquired = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            (refused, acquired),
            (1, 1),
            "exactly one side must be refused: {results:?}"
        );
    });
}

#[test]
fn releasing_out_of_order_then_acquiring_again() {
    let l10 = Mutex::with_level("lv-ooo-10", Level(10), ());
    let l20 = RwLock::with_level("lv-ooo-20", Level(20), ());
    let l25 = Mutex::with_level("lv-ooo-25", Level(25), ());
    let l30 = Mutex::with_level("lv-ooo-30", Level(30), ());
    let l40 = Mutex::with_level("lv-ooo-40", Level(40), ());

    let g10 = l10.lock().unwrap();
    let g20 = l20.write().unwrap();
    let g30 = l30.lock().unwrap();

    // Drop the middle one: the highest held is still 30.
    drop(g20);
    assert_eq!(held_names(), ["lv-ooo-10", "lv-ooo-30"]);
    assert_violation(l25.lock(), "lv-ooo-30", "lv-ooo-25");
    assert_violation(l20.read(), "lv-ooo-30", "lv-ooo-20");

    // Drop the top one: now 10 is the highest, so 20 and 25 are allowed again.
    drop(g30);
    assert_eq!(held_names(), ["lv-ooo-10"]);
    let g20 = l20.read().unwrap();
    let g25 = l25.lock().unwrap();
    assert_violation(l20.write(), "lv-ooo-25", "lv-ooo-20");

    // Drop the bottom one first: 25 is still the highest held.
    drop(g10);
    assert_eq!(held_names(), ["lv-ooo-20", "lv-ooo-25"]);
    assert_violation(l10.lock(), "lv-ooo-25", "lv-ooo-10");
    let g40 = l40.lock().unwrap();
    assert_violation(l30.lock(), "lv-ooo-40", "lv-ooo-30");

    drop(g25);
    drop(g40);
    assert_eq!(held_names(), ["lv-ooo-20"]);
    assert_violation(l10.lock(), "lv-ooo-20", "lv-ooo-10");
    let g30 = l30.lock().unwrap();
    drop(g20);
    drop(g30);
    assert!(sync_kit::held_by_current_thread().is_empty());

    // Everything free again: any order is possible from scratch.
    let g10 = l10.lock().unwrap();
    drop(g10);
    let g40 = l40.lock().unwrap();
    drop(g40);
    let _g10 = l10.lock().unwrap();
}

#[test]
fn violation_carries_names_levels_and_call_sites() {
    let held_lock = RwLock::with_level("lv-report-held", Level(42), ());
    let requested_lock = Mutex::with_level("lv-report-requested", Level(7), ());

    let held_line = line!() + 1;
    let _g = held_lock.read().unwrap();
    let requested_line = line!() + 1;
    let err = requested_lock.lock().map(drop).unwrap_err();

    let LockError::LevelViolation { held, requested } = &err else {
        panic!("expected LevelViolation, got {err:?}");
    };
    assert_eq!(held.name(), Some("lv-report-held"));
    assert_eq!(held.level(), Some(Level(42)));
    assert_eq!(held.lock.kind, LockKind::RwLock);
    assert_eq!(held.mode, AccessMode::Shared);
    assert_eq!(held.lock.id, held_lock.info().id);
    assert_eq!(held.at.file(), file!());
    assert_eq!(held.at.line(), held_line);

    assert_eq!(requested.name(), Some("lv-report-requested"));
    assert_eq!(requested.level(), Some(Level(7)));
    assert_eq!(requested.lock.kind, LockKind::Mutex);
    assert_eq!(requested.mode, AccessMode::Exclusive);
    assert_eq!(requested.lock.id, requested_lock.info().id);
    assert_eq!(requested.at.file(), file!());
    assert_eq!(requested.at.line(), requested_line);

    let text = err.to_string();
    for needle in [
        "lv-report-held".to_owned(),
        "lv-report-requested".to_owned(),
        "level 42".to_owned(),
        "level 7".to_owned(),
        site(file!(), held_line),
        site(file!(), requested_line),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing from: {text}");
    }
    // The error is a std error.
    let _: &dyn std::error::Error = &err;
}

#[test]
fn every_try_form_checks_the_level_instead_of_timing_out() {
    let high = Mutex::with_level("lv-try-high", Level(100), ());
    let m = Mutex::with_level("lv-try-m", Level(1), ());
    let rw = RwLock::with_level("lv-try-rw", Level(2), ());
    let later = Instant::now() + Duration::from_secs(1);
    let d = Duration::from_secs(1);

    let _h = high.lock().unwrap();
    assert_violation(m.try_lock(), "lv-try-high", "lv-try-m");
    assert_violation(m.try_lock_for(d), "lv-try-high", "lv-try-m");
    assert_violation(m.try_lock_until(later), "lv-try-high", "lv-try-m");
    assert_violation(rw.try_read(), "lv-try-high", "lv-try-rw");
    assert_violation(rw.try_read_for(d), "lv-try-high", "lv-try-rw");
    assert_violation(rw.try_read_until(later), "lv-try-high", "lv-try-rw");
    assert_violation(rw.try_write(), "lv-try-high", "lv-try-rw");
    assert_violation(rw.try_write_for(d), "lv-try-high", "lv-try-rw");
    assert_violation(rw.try_write_until(later), "lv-try-high", "lv-try-rw");
}

#[test]
fn levels_are_per_thread() {
    bounded("levels per thread", || {
        let high = Arc::new(Mutex::with_level("lv-thread-high", Level(90), ()));
        let low = Arc::new(Mutex::with_level("lv-thread-low", Level(9), ()));
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = {
            let high = high.clone();
            spawn("lv-thread-holder", move || {
                let _h = high.lock().unwrap();
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
        };
        recv(&held_rx, "the other thread holds level 90");
        // Another thread's holdings do not constrain this one.
        drop(low.lock().unwrap());
        release_tx.send(()).unwrap();
        join(holder);
    });
}

#[test]
fn deep_nesting_keeps_the_hierarchy_through_out_of_order_releases() {
    // More holds than fit inline in the per-thread list, released out of order.
    let locks: Vec<Mutex<u32>> = (0..40)
        .map(|i| Mutex::with_level("lv-deep", Level(10 * (i + 1)), i))
        .collect();
    let probe = |level: u32| Mutex::with_level("lv-deep-probe", Level(level), ());
    let mut guards: Vec<Option<_>> = locks.iter().map(|l| Some(l.lock().unwrap())).collect();
    assert_eq!(sync_kit::held_by_current_thread().len(), 40);
    let (held, _) = violation(probe(395).lock());
    assert_eq!(held.level(), Some(Level(400)));

    // Release the top, the middle, the inline/spill boundary and the bottom.
    for i in [39, 20, 15, 16, 0] {
        guards[i] = None;
    }
    assert_eq!(sync_kit::held_by_current_thread().len(), 35);
    let (held, _) = violation(probe(385).lock());
    assert_eq!(
        held.level(),
        Some(Level(390)),
        "the highest held is now level 390"
    );
    drop(probe(395).lock().unwrap());

    // Release everything above 100 (out of order): level 100 is the highest left.
    let odd = (10..39).rev().filter(|i| i % 2 == 1);
    let even = (10..39).filter(|i| i % 2 == 0);
    for i in odd.chain(even) {
        guards[i] = None;
    }
    let levels: Vec<u32> = sync_kit::held_by_current_thread()
        .iter()
        .map(|u| u.level().unwrap().0)
        .collect();
    assert_eq!(levels, (2..=10).map(|i| 10 * i).collect::<Vec<_>>());
    let (held, _) = violation(probe(100).lock());
    assert_eq!(held.level(), Some(Level(100)));
    drop(probe(101).lock().unwrap());
    // Reacquire the released locks (in increasing order): allowed again.
    for (i, lock) in locks.iter().enumerate().skip(10) {
        guards[i] = Some(lock.lock().unwrap());
    }
    assert_eq!(sync_kit::held_by_current_thread().len(), 39);
    drop(guards);
    assert!(sync_kit::held_by_current_thread().is_empty());
}
