//! `Condvar`: waits release the mutex and take it back through the full acquisition protocol.
//!
//! Proves: no notification is lost and every item of a producer/consumer queue arrives once;
//! `notify_one` wakes exactly one waiter; a wait releases the mutex and the held list follows;
//! timed waits time out and still return with the mutex; a wait that could only reacquire out of
//! hierarchy order is refused before anything is released; a wait-for cycle closed by the
//! reacquisition on wake-up is refused to the waking thread, whose guard then holds nothing; the
//! per-condvar statistics count waits, notifies and timeouts.
//!
//! One test reads the process-wide detector probe and one resets statistics, and the others make
//! threads wait on locks: every test holds `common::serial()`.

mod common;

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use common::{bounded, join, serial, spawn, wait_for_waiters};
use sync_kit::deadlock::{OrderChecking, set_order_checking};
use sync_kit::{Condvar, Level, LockError, Mutex, MutexGuard, held_by_current_thread};

/// A bounded queue: `not_empty` and `not_full` over one mutex.
struct Bounded {
    items: Mutex<VecDeque<u64>>,
    not_empty: Condvar,
    not_full: Condvar,
    capacity: usize,
}

#[test]
fn producer_consumer_queue_delivers_every_item_once() {
    let _serial = serial();
    bounded("producer/consumer", || {
        const PER_PRODUCER: u64 = 2_000;
        let queue = Arc::new(Bounded {
            items: Mutex::named("cv-test-queue", VecDeque::new()),
            not_empty: Condvar::named("cv-test-not-empty"),
            not_full: Condvar::named("cv-test-not-full"),
            capacity: 4,
        });
        let producers: Vec<_> = (0..2u64)
            .map(|p| {
                let q = Arc::clone(&queue);
                spawn(format!("producer-{p}"), move || {
                    for i in 0..PER_PRODUCER {
                        let mut items = q.items.lock().unwrap();
                        q.not_full
                            .wait_while(&mut items, |items| items.len() == q.capacity)
                            .unwrap();
                        items.push_back(p * PER_PRODUCER + i);
                        drop(items);
                        q.not_empty.notify_one();
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|c| {
                let q = Arc::clone(&queue);
                spawn(format!("consumer-{c}"), move || {
                    let mut got = Vec::new();
                    loop {
                        let mut items = q.items.lock().unwrap();
                        while items.is_empty() {
                            q.not_empty.wait(&mut items).unwrap();
                        }
                        let item = items.pop_front().unwrap();
                        drop(items);
                        q.not_full.notify_one();
                        if item == u64::MAX {
                            return got;
                        }
                        got.push(item);
                    }
                })
            })
            .collect();
        producers.into_iter().for_each(join);
        for _ in 0..2 {
            let mut items = queue.items.lock().unwrap();
            queue
                .not_full
                .wait_while(&mut items, |items| items.len() == queue.capacity)
                .unwrap();
            items.push_back(u64::MAX);
            drop(items);
            queue.not_empty.notify_one();
        }
        let mut all: Vec<u64> = consumers.into_iter().flat_map(join).collect();
        all.sort_unstable();
        assert_eq!(all, (0..2 * PER_PRODUCER).collect::<Vec<_>>());
        assert!(!queue.items.is_locked());
    });
}

struct Waiters {
    state: Mutex<(usize, usize)>, // (waiting, woken)
    go: Condvar,
    changed: Condvar,
}

#[test]
fn notify_one_wakes_exactly_one_waiter() {
    let _serial = serial();
    bounded("notify_one", || {
        let shared = Arc::new(Waiters {
            state: Mutex::new((0, 0)),
            go: Condvar::new(),
            changed: Condvar::new(),
        });
        let waiters: Vec<_> = (0..2)
            .map(|i| {
                let s = Arc::clone(&shared);
                spawn(format!("waiter-{i}"), move || {
                    let mut g = s.state.lock().unwrap();
                    g.0 += 1;
                    s.changed.notify_all();
                    // No spurious wake-ups: one wait, one notification.
                    s.go.wait(&mut g).unwrap();
                    g.1 += 1;
                    s.changed.notify_all();
                })
            })
            .collect();
        let mut g = shared.state.lock().unwrap();
        // Counted under the mutex, released only once queued: both are asleep on `go` now.
        shared.changed.wait_while(&mut g, |s| s.0 < 2).unwrap();
        assert!(shared.go.notify_one(), "a queued waiter was woken");
        shared.changed.wait_while(&mut g, |s| s.1 < 1).unwrap();
        assert_eq!(g.1, 1, "one notify_one, one waiter woken");
        drop(g);
        assert_eq!(shared.go.notify_all(), 1, "the other one still waited");
        waiters.into_iter().for_each(join);
        assert_eq!(*shared.state.lock().unwrap(), (2, 2));
    });
}

#[test]
fn a_wait_releases_the_mutex_and_the_held_list_follows() {
    let _serial = serial();
    bounded("release and reacquire", || {
        let shared = Arc::new((Mutex::new(false), Condvar::new()));
        let mut g = shared.0.lock().unwrap();
        assert_eq!(held_by_current_thread().len(), 1);
        let other = {
            let shared = Arc::clone(&shared);
            spawn("setter", move || {
                // Gets the mutex only because the waiter released it.
                *shared.0.lock().unwrap() = true;
                shared.1.notify_one();
            })
        };
        shared.1.wait_while(&mut g, |ready| !*ready).unwrap();
        assert!(*g);
        let held = held_by_current_thread();
        assert_eq!(held.len(), 1, "the mutex is listed once again: {held:?}");
        assert_eq!(held[0].lock.id, shared.0.info().id);
        drop(g);
        join(other);
        assert!(held_by_current_thread().is_empty());
        // Two acquisitions by this thread plus the setter's: the reacquisition counts as one.
        assert!(shared.0.stats().acquisitions >= 2);
    });
}

#[test]
fn timed_waits_time_out_and_return_with_the_mutex() {
    let _serial = serial();
    let m = Mutex::new(0);
    let cv = Condvar::new();
    let mut g = m.lock().unwrap();
    let r = cv.wait_for(&mut g, Duration::from_millis(5)).unwrap();
    assert!(r.timed_out());
    *g += 1; // still held
    assert!(m.is_locked());
    let r = cv
        .wait_while_for(&mut g, Duration::from_millis(5), |v| *v < 100)
        .unwrap();
    assert!(r.timed_out(), "nobody changes the value");
    let r = cv
        .wait_while_for(&mut g, Duration::from_millis(5), |v| *v < 1)
        .unwrap();
    assert!(!r.timed_out(), "the condition is already false");
    assert_eq!(cv.stats().timeouts, 2);
    assert_eq!(cv.stats().waits, 2);
    assert_eq!(held_by_current_thread().len(), 1);
}

#[test]
fn a_wait_that_could_only_reacquire_out_of_order_is_refused_at_once() {
    let _serial = serial();
    let low = Mutex::with_level("cv-test-low", Level(10), 1);
    let high = Mutex::with_level("cv-test-high", Level(20), ());
    let cv = Condvar::new();
    let mut g = low.lock().unwrap();
    let _h = high.lock().unwrap();
    match cv.wait_for(&mut g, Duration::from_secs(60)) {
        Err(LockError::LevelViolation { held, requested }) => {
            assert_eq!(held.name(), Some("cv-test-high"));
            assert_eq!(requested.name(), Some("cv-test-low"));
        }
        other => panic!("expected a level violation, got {other:?}"),
    }
    // Nothing was released: the guard still holds the mutex, the held list is unchanged.
    assert!(MutexGuard::is_held(&g));
    assert_eq!(*g, 1);
    let names: Vec<_> = held_by_current_thread()
        .iter()
        .map(|h| h.name().unwrap())
        .collect();
    assert_eq!(names, ["cv-test-low", "cv-test-high"]);
    assert_eq!(cv.stats().waits, 0);
}

/// deloxide's condvar cycle: the waiter holds `a` and waits on `b`'s condvar; the notifier holds
/// `b` and waits for `a`. The waiter's reacquisition of `b` on wake-up closes the cycle and is
/// refused; its guard then holds nothing, and once it lets `a` go the notifier proceeds.
#[test]
fn a_cycle_closed_on_wake_up_is_refused_to_the_waking_thread() {
    let _serial = serial();
    // The scenario takes `a` then `b` on one thread and `b` then `a` on the other on purpose: the
    // learned lock order would refuse the second before the wait-for cycle could form.
    set_order_checking(OrderChecking::Off);
    bounded("condvar cycle", || {
        let shared = Arc::new((
            Mutex::named("cv-cycle-a", ()),
            Mutex::named("cv-cycle-b", false),
            Condvar::named("cv-cycle"),
        ));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let waiter = {
            let shared = Arc::clone(&shared);
            spawn("cv-waiter", move || {
                let (a, b, cv) = &*shared;
                let _a = a.lock().unwrap();
                let mut g = b.lock().unwrap();
                started_tx.send(()).unwrap();
                let result = loop {
                    match cv.wait(&mut g) {
                        Ok(()) if !*g => continue,
                        other => break other,
                    }
                };
                let held = MutexGuard::is_held(&g);
                let touched = catch_unwind(AssertUnwindSafe(|| *g)).is_err();
                (result, held, touched)
            })
        };
        common::recv(&started_rx, "the waiter holds a and b");
        let (a, b, cv) = &*shared;
        // Wait until the waiter has released `b` inside its wait.
        let mut gb = b.lock().unwrap();
        *gb = true;
        let notifier = {
            let shared = Arc::clone(&shared);
            spawn("cv-notifier", move || {
                // This thread holds nothing; it wakes the waiter once main waits for `a`.
                wait_for_waiters(1);
                shared.2.notify_one();
            })
        };
        // Main holds `b` and waits for `a`, held by the (sleeping) waiter: no cycle yet.
        let ga = a.lock().expect("main is not the one that closes the cycle");
        drop(ga);
        drop(gb);
        join(notifier);
        let (result, held, touched) = join(waiter);
        match result {
            Err(LockError::Deadlock(report)) => {
                assert_eq!(report.refused_request().name(), Some("cv-cycle-b"));
                let text = report.to_string();
                assert!(
                    text.contains("cv-waiter") && text.contains("cv-cycle-a"),
                    "{text}"
                );
            }
            other => panic!("expected the reacquisition to be refused, got {other:?}"),
        }
        assert!(!held, "the refused guard holds nothing");
        assert!(touched, "reaching the data through it panics");
        assert!(!a.is_locked() && !b.is_locked());
        let _ = cv;
    });
    set_order_checking(OrderChecking::default());
}

#[test]
fn named_condvars_are_listed_with_their_counters_and_reset() {
    let _serial = serial();
    let m = Mutex::new(());
    let cv = Condvar::named("cv-test-listed");
    assert!(!cv.notify_one(), "nobody waits");
    assert_eq!(cv.notify_all(), 0);
    let mut g = m.lock().unwrap();
    assert!(
        cv.wait_for(&mut g, Duration::from_millis(1))
            .unwrap()
            .timed_out()
    );
    drop(g);
    let listed = sync_kit::stats::condvars();
    let entry = listed
        .iter()
        .find(|c| c.name == "cv-test-listed")
        .expect("a named condvar is listed");
    assert_eq!(
        (
            entry.stats.waits,
            entry.stats.notifies,
            entry.stats.timeouts
        ),
        (1, 2, 1)
    );
    sync_kit::stats::reset();
    assert_eq!(cv.stats(), Default::default());
    drop(cv);
    assert!(
        !sync_kit::stats::condvars()
            .iter()
            .any(|c| c.name == "cv-test-listed")
    );
}
