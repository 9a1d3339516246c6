//! Lock-order checking: an acquisition that contradicts the order learned from earlier
//! acquisitions is a potential deadlock, refused at once (`Refuse`), reported once (`Warn`) or
//! ignored (`Off`), whether or not the lock is free and whether or not any thread waits.
//!
//! Proves: ABBA and longer cycles are refused on a single thread, with the call sites of every
//! edge in the report; successful `try_*` acquisitions learn nothing and are never refused; a
//! dropped lock's edges are forgotten; `LockSet` acquisitions learn their ordered edges; pairs of
//! a leveled and an unleveled lock are learned (two leveled ones are not: levels order them);
//! `Warn` calls the hook once per inversion and counts it; `Off` checks nothing.
//!
//! The policy is process-wide: every test holds `common::serial()` and sets the policy it needs.

mod common;

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use common::{serial, site};
use sync_kit::deadlock::{
    InversionReport, OrderChecking, reset_order_hook, set_order_checking, set_order_hook,
};
use sync_kit::{Level, LockError, LockSet, Mutex, RwLock};

fn inversion<T>(result: Result<T, LockError>) -> InversionReport {
    match result {
        Err(LockError::OrderInversion(report)) => *report,
        Err(other) => panic!("expected OrderInversion, got {other:?}"),
        Ok(_) => panic!("expected OrderInversion, but the lock was acquired"),
    }
}

#[test]
fn abba_is_refused_at_once_on_one_thread_with_every_call_site() {
    let _serial = serial();
    set_order_checking(OrderChecking::Refuse);
    let a = Mutex::named("ord-abba-a", ());
    let b = RwLock::named("ord-abba-b", ());
    // Learned: a before b.
    let (a_line, b_line) = {
        let _a = a.lock().unwrap();
        let a_line = line!() - 1;
        let _b = b.write().unwrap();
        let b_line = line!() - 1;
        (a_line, b_line)
    };
    let _b = b.read().unwrap();
    let held_line = line!() - 1;
    let report = inversion(a.lock());
    let refused_line = line!() - 1;
    assert!(report.refused);
    assert_eq!(report.requested.name(), Some("ord-abba-a"));
    assert_eq!(report.held.name(), Some("ord-abba-b"));
    assert_eq!(report.learned.len(), 1);
    let text = report.to_string();
    for line in [a_line, b_line, held_line, refused_line] {
        assert!(
            text.contains(&site(file!(), line)),
            "line {line} missing:\n{text}"
        );
    }
    assert!(
        text.contains("ord-abba-a") && text.contains("ord-abba-b"),
        "{text}"
    );
    println!("{text}");
    // Nothing was acquired, and the lock is free: the refusal did not depend on waiting.
    assert!(!a.is_locked());
    assert_eq!(sync_kit::held_by_current_thread().len(), 1);
    // A timed acquisition is checked like a blocking one.
    inversion(a.try_lock_for(Duration::from_secs(60)));
}

#[test]
fn a_cycle_of_three_is_refused_to_the_acquisition_closing_it() {
    let _serial = serial();
    set_order_checking(OrderChecking::Refuse);
    let a = Mutex::named("ord-3-a", ());
    let b = Mutex::named("ord-3-b", ());
    let c = Mutex::named("ord-3-c", ());
    for (first, second) in [(&a, &b), (&b, &c)] {
        let _f = first.lock().unwrap();
        let _s = second.lock().unwrap();
    }
    // Other threads may learn edges too: the graph is process-wide.
    std::thread::scope(|s| {
        s.spawn(|| {
            let _c = c.lock().unwrap();
            let report = inversion(a.lock());
            let path: Vec<_> = report
                .learned
                .iter()
                .map(|e| (e.before.name.unwrap(), e.after.name.unwrap()))
                .collect();
            assert_eq!(path, [("ord-3-a", "ord-3-b"), ("ord-3-b", "ord-3-c")]);
            assert!(report.to_string().contains("cycle of 3 locks"), "{report}");
        });
    });
}

#[test]
fn successful_try_acquisitions_learn_nothing_and_are_never_refused() {
    let _serial = serial();
    set_order_checking(OrderChecking::Refuse);
    let a = Mutex::named("ord-try-a", ());
    let b = Mutex::named("ord-try-b", ());
    {
        let _a = a.lock().unwrap();
        let _b = b.try_lock().unwrap(); // learns nothing
    }
    {
        let _b = b.lock().unwrap();
        let _a = a.lock().expect("no order was learned by try_lock");
    }
    // Now b before a is learned; a try_lock in the other order is still allowed.
    let _a = a.lock().unwrap();
    let _b = b
        .try_lock()
        .expect("try_lock cannot wait, so cannot deadlock");
}

#[test]
fn a_dropped_lock_forgets_its_edges() {
    let _serial = serial();
    set_order_checking(OrderChecking::Refuse);
    let a = Mutex::named("ord-drop-a", ());
    let b = Mutex::named("ord-drop-b", ());
    let c = Mutex::named("ord-drop-c", ());
    for (first, second) in [(&a, &b), (&b, &c)] {
        let _f = first.lock().unwrap();
        let _s = second.lock().unwrap();
    }
    drop(b); // the path a -> b -> c goes with it
    let _c = c.lock().unwrap();
    let _a = a.lock().expect("c before a contradicts nothing any more");
}

#[test]
fn lockset_acquisitions_learn_their_ordered_edges() {
    let _serial = serial();
    set_order_checking(OrderChecking::Refuse);
    let first = Mutex::named("ord-set-first", 0); // created first: lower id, taken first
    let second = Mutex::named("ord-set-second", 0);
    {
        let mut set = LockSet::new();
        set.lock(&second);
        set.lock(&first);
        let _held = set.acquire().unwrap();
    }
    let _s = second.lock().unwrap();
    let report = inversion(first.lock());
    assert_eq!(report.learned[0].before.name, Some("ord-set-first"));
    assert_eq!(report.learned[0].after.name, Some("ord-set-second"));
}

#[test]
fn leveled_and_unleveled_pairs_are_learned_but_two_leveled_locks_are_not() {
    let _serial = serial();
    set_order_checking(OrderChecking::Refuse);
    let low = Mutex::with_level("ord-lv-low", Level(10), ());
    let high = Mutex::with_level("ord-lv-high", Level(20), ());
    let plain = Mutex::named("ord-lv-plain", ());
    {
        let _l = low.lock().unwrap();
        let _h = high.lock().unwrap(); // ordered by levels: nothing learned
        let _p = plain.lock().unwrap(); // learned: low before plain, high before plain
    }
    let _p = plain.lock().unwrap();
    let report = inversion(high.lock());
    assert_eq!(report.held.name(), Some("ord-lv-plain"));
}

#[test]
fn warn_reports_each_inversion_once_counts_it_and_lets_it_go_on() {
    let _serial = serial();
    set_order_checking(OrderChecking::Warn);
    let seen: Arc<StdMutex<Vec<String>>> = Arc::default();
    {
        let seen = Arc::clone(&seen);
        set_order_hook(move |report| seen.lock().unwrap().push(report.summary()));
    }
    let a = Mutex::named("ord-warn-a", ());
    let b = Mutex::named("ord-warn-b", ());
    {
        let _a = a.lock().unwrap();
        let _b = b.lock().unwrap();
    }
    let before = sync_kit::deadlock::stats().order_inversions;
    for _ in 0..3 {
        let _b = b.lock().unwrap();
        let _a = a.lock().expect("Warn lets the acquisition go on");
    }
    let after = sync_kit::deadlock::stats().order_inversions;
    reset_order_hook();
    set_order_checking(OrderChecking::default());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "reported once: {seen:?}");
    assert!(seen[0].contains("ord-warn-a") && seen[0].contains("ord-warn-b"));
    assert_eq!(after - before, 1);
}

#[test]
fn off_checks_and_learns_nothing() {
    let _serial = serial();
    set_order_checking(OrderChecking::Off);
    let a = Mutex::named("ord-off-a", ());
    let b = Mutex::named("ord-off-b", ());
    {
        let _a = a.lock().unwrap();
        let _b = b.lock().unwrap();
    }
    {
        let _b = b.lock().unwrap();
        let _a = a.lock().unwrap();
    }
    // Nothing was learned while off: turning it on later finds no contradiction either way.
    set_order_checking(OrderChecking::Refuse);
    let _a = a.lock().unwrap();
    let _b = b.lock().unwrap();
    set_order_checking(OrderChecking::default());
}

/// Turning checking on reaches locks created while it was off, `RwLock`s included: their fast
/// paths see the switch in their lock word (its DIVERT bit), so their acquisitions are checked
/// and learned from. (The release default is `Off`, so this is how release builds turn it on.)
#[test]
fn turning_checking_on_reaches_locks_created_while_it_was_off() {
    let _serial = serial();
    set_order_checking(OrderChecking::Off);
    let a = Mutex::named("ord-late-a", ());
    let b = RwLock::named("ord-late-b", ());
    set_order_checking(OrderChecking::Refuse);
    {
        let _a = a.lock().unwrap();
        let _b = b.write().unwrap(); // learned: a before b
    }
    let held = b.read().unwrap();
    let report = inversion(a.lock());
    assert_eq!(report.held.name(), Some("ord-late-b"));
    drop(held);
    // And off again: nothing is checked, the plain paths work.
    set_order_checking(OrderChecking::Off);
    {
        let _b = b.write().unwrap();
        let _a = a.lock().unwrap();
    }
    set_order_checking(OrderChecking::default());
}

#[test]
fn the_default_policy_refuses_in_debug_builds() {
    assert_eq!(
        OrderChecking::default(),
        if cfg!(debug_assertions) {
            OrderChecking::Refuse
        } else {
            OrderChecking::Off
        }
    );
}

/// `plain` before `low` (learned), `low` below `high` (the hierarchy): taking `plain` while
/// holding `high` closes the cycle through the level order, with nothing learned between the two
/// leveled locks.
#[test]
fn cycles_through_the_level_order_are_inversions_too() {
    let _serial = serial();
    set_order_checking(OrderChecking::Refuse);
    let plain = Mutex::named("ord-lvc-plain", ());
    let low = Mutex::with_level("ord-lvc-low", Level(10), ());
    let high = Mutex::with_level("ord-lvc-high", Level(20), ());
    {
        let _p = plain.lock().unwrap();
        let _l = low.lock().unwrap(); // learned: plain before low
    }
    let _h = high.lock().unwrap();
    let report = inversion(plain.lock());
    let path: Vec<_> = report
        .learned
        .iter()
        .map(|e| (e.before.name.unwrap(), e.after.name.unwrap(), e.by_level))
        .collect();
    assert_eq!(
        path,
        [
            ("ord-lvc-plain", "ord-lvc-low", false),
            ("ord-lvc-low", "ord-lvc-high", true)
        ]
    );
    assert!(report.to_string().contains("by their levels"), "{report}");
}
