//! loom models of `sync_kit::Condvar`: no lost wake-up, `notify_one` wakes one waiter, timed
//! waits clean up.
#![cfg(loom)]

use std::time::Duration;

use loom::sync::Arc;
use loom::thread;
use loom_tests::model;
use sync_kit::{Condvar, Mutex};

/// A waiter sleeps until a flag is set; the notifier sets it under the mutex and notifies after
/// releasing it. In every interleaving the waiter returns (loom reports a deadlock if it is left
/// asleep: that would be a lost wake-up), with the mutex held and the flag seen.
#[test]
fn condvar_no_lost_wakeup() {
    model(|| {
        let shared = Arc::new((Mutex::new(false), Condvar::new()));
        let notifier = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                *shared.0.lock().unwrap() = true;
                shared.1.notify_one();
            })
        };
        let (ready, cv) = &*shared;
        let mut guard = ready.lock().unwrap();
        while !*guard {
            cv.wait(&mut guard).unwrap();
        }
        assert!(*guard);
        drop(guard);
        notifier.join().unwrap();
        assert!(!ready.is_locked());
    });
}

/// Two waiters are both asleep (each counted itself under the mutex before waiting, and a wait
/// releases the mutex only once queued). One `notify_one` wakes exactly one of them: while the
/// main thread holds the mutex after the first wake-up, the other has not woken; a second
/// notification wakes it.
#[test]
fn condvar_notify_one_wakes_one() {
    model(|| {
        let shared = Arc::new((Mutex::new((0usize, 0usize)), Condvar::new(), Condvar::new()));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let shared = Arc::clone(&shared);
                thread::spawn(move || {
                    let (state, go, changed) = &*shared;
                    let mut g = state.lock().unwrap();
                    g.0 += 1;
                    changed.notify_one();
                    go.wait(&mut g).unwrap();
                    g.1 += 1;
                    changed.notify_one();
                })
            })
            .collect();
        let (state, go, changed) = &*shared;
        let mut g = state.lock().unwrap();
        while g.0 < 2 {
            changed.wait(&mut g).unwrap();
        }
        assert!(go.notify_one());
        while g.1 < 1 {
            changed.wait(&mut g).unwrap();
        }
        assert_eq!(g.1, 1, "a single notify_one woke both waiters");
        assert!(go.notify_one());
        drop(g);
        for waiter in waiters {
            waiter.join().unwrap();
        }
        assert_eq!(*state.lock().unwrap(), (2, 2));
    });
}

/// A timed wait (which times out at once under loom) races with a notification: whichever way
/// it goes, the waiter returns holding the mutex, the notifier is never stuck, and the waiter
/// count goes back to zero (a later `notify_all` wakes nobody).
#[test]
fn condvar_timed_wait_cleans_up() {
    model(|| {
        let shared = Arc::new((Mutex::new(0u32), Condvar::new()));
        let notifier = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                *shared.0.lock().unwrap() += 1;
                shared.1.notify_one();
            })
        };
        let (value, cv) = &*shared;
        let mut guard = value.lock().unwrap();
        let _ = cv.wait_for(&mut guard, Duration::from_secs(60)).unwrap();
        *guard += 1;
        drop(guard);
        notifier.join().unwrap();
        assert_eq!(*value.lock().unwrap(), 2);
        assert_eq!(cv.notify_all(), 0);
    });
}
