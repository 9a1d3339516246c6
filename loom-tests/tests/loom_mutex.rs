//! loom models of `sync_kit::Mutex`: mutual exclusion, no lost wake-up, timeout clean-up.
#![cfg(loom)]

use std::sync::atomic::{AtomicBool, Ordering as StdOrdering};
use std::time::Duration;

use loom::sync::Arc;
use loom::thread;
use loom_tests::model;
use sync_kit::{LockError, Mutex};

/// Long enough that it never expires in real time; under loom a timed park times out at once.
const TIMEOUT: Duration = Duration::from_secs(60);

fn increment(counter: &Mutex<usize>) {
    let mut guard = counter
        .lock()
        .expect("unleveled mutex, one lock held: never refused");
    // A read and a separate write: a second thread inside would lose an update (and loom's
    // UnsafeCell tracking inside sync-kit would report the concurrent access first).
    let seen = *guard;
    *guard = seen + 1;
}

/// Two spawned threads and the main thread increment a counter under the mutex: every
/// interleaving ends with the exact count, and some interleaving had a contended acquisition
/// (so the park/unpark path was explored, not only the fast path).
#[test]
fn mutex_mutual_exclusion() {
    static SAW_CONTENTION: AtomicBool = AtomicBool::new(false);
    model(|| {
        let counter = Arc::new(Mutex::new(0usize));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let counter = Arc::clone(&counter);
                thread::spawn(move || increment(&counter))
            })
            .collect();
        increment(&counter);
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(*counter.lock().unwrap(), 3);
        assert!(!counter.is_locked());
        if counter.stats().contentions > 0 {
            SAW_CONTENTION.store(true, StdOrdering::Relaxed);
        }
    });
    assert!(
        SAW_CONTENTION.load(StdOrdering::Relaxed),
        "no explored execution ever waited"
    );
}

/// Three spawned threads contend while main only joins: whoever parks is always woken (loom
/// reports a deadlock if a thread is left parked when all others finish), with up to two threads
/// parked at once (the unlock that finds more sleepers must keep PARKED set).
#[test]
fn mutex_no_lost_wakeup_three_threads() {
    model(|| {
        let counter = Arc::new(Mutex::new(0usize));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let counter = Arc::clone(&counter);
                thread::spawn(move || increment(&counter))
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(*counter.lock().unwrap(), 3);
    });
}

/// Timed and blocking acquisitions mixed: a `try_lock_for` that gives up (under loom it gives up
/// whenever it would sleep) must leave the PARKED bookkeeping so that a blocking waiter is still
/// woken. Only `Ok` or `Timeout` may come back from the timed call, and the counter counts
/// exactly the successful acquisitions.
#[test]
fn mutex_timeout_mixed_with_blocking() {
    model(|| {
        let counter = Arc::new(Mutex::new(0usize));
        let timed = {
            let counter = Arc::clone(&counter);
            thread::spawn(move || match counter.try_lock_for(TIMEOUT) {
                Ok(mut guard) => {
                    *guard += 1;
                    1
                }
                Err(LockError::Timeout) => 0,
                Err(other) => panic!("timed lock failed with {other:?}"),
            })
        };
        let blocking = {
            let counter = Arc::clone(&counter);
            thread::spawn(move || increment(&counter))
        };
        increment(&counter);
        let timed_ok = timed.join().unwrap();
        blocking.join().unwrap();
        let final_count = *counter.lock().unwrap();
        assert_eq!(final_count, 2 + timed_ok);
        // The final `lock()` above is counted too.
        assert_eq!(counter.stats().acquisitions, 3 + timed_ok as u64);
    });
}

/// The main thread holds the mutex while one thread gives up a timed wait and another blocks.
/// The timed one must return `Timeout` (the lock is never free for it), and after the main thread
/// unlocks, the blocking one must be woken whether it parked before or after the timed one left
/// (the last timed-out waiter clears PARKED only if nobody else is queued).
#[test]
fn mutex_timed_out_waiter_does_not_strand_blocked_waiter() {
    model(|| {
        let counter = Arc::new(Mutex::new(0usize));
        let guard = counter.lock().unwrap();
        let timed = {
            let counter = Arc::clone(&counter);
            thread::spawn(move || counter.try_lock_for(TIMEOUT).map(drop))
        };
        let blocking = {
            let counter = Arc::clone(&counter);
            thread::spawn(move || increment(&counter))
        };
        assert!(matches!(timed.join().unwrap(), Err(LockError::Timeout)));
        drop(guard);
        blocking.join().unwrap();
        assert_eq!(*counter.lock().unwrap(), 1);
    });
}
