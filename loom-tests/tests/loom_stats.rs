//! loom models of lock statistics: exact acquisition counts under concurrency (the exclusive
//! counter is a plain load + store made under the lock, the shared one a `fetch_add`), and
//! `contentions <= acquisitions`.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::model;
use sync_kit::{Mutex, RwLock};

const THREADS: usize = 2;
const ROUNDS: usize = 2;

/// N threads x K `lock()`s: exactly N*K acquisitions are counted, never fewer (a lost update of
/// the load + store counter would show here), and contentions never exceed acquisitions.
#[test]
fn mutex_acquisitions_are_exact() {
    model(|| {
        let lock = Arc::new(Mutex::new(0usize));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let lock = Arc::clone(&lock);
                thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        *lock.lock().unwrap() += 1;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let stats = lock.stats();
        assert_eq!(stats.acquisitions, (THREADS * ROUNDS) as u64);
        assert!(stats.contentions <= stats.acquisitions, "{stats:?}");
        assert!(stats.max_wait <= stats.total_wait, "{stats:?}");
        assert_eq!(*lock.lock().unwrap(), THREADS * ROUNDS);
    });
}

/// Reads and writes mixed on one `RwLock`: one thread writes then reads, the other reads then
/// writes, and the main thread reads. Shared acquisitions (counted in the lock word: readers
/// holding plus reads done) and exclusive ones (load + store under the write lock) add up
/// exactly.
#[test]
fn rwlock_acquisitions_are_exact() {
    model(|| {
        let lock = Arc::new(RwLock::new(0usize));
        let writer_first = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                *lock.write().unwrap() += 1;
                let _ = *lock.read().unwrap();
            })
        };
        let reader_first = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                let _ = *lock.read().unwrap();
                *lock.write().unwrap() += 1;
            })
        };
        let _ = *lock.read().unwrap();
        writer_first.join().unwrap();
        reader_first.join().unwrap();
        let stats = lock.stats();
        assert_eq!(stats.acquisitions, 5);
        assert!(stats.contentions <= stats.acquisitions, "{stats:?}");
        assert_eq!(*lock.read().unwrap(), 2);
        assert_eq!(lock.stats().acquisitions, 6);
    });
}

/// Readers only: concurrent shared acquisitions, all counted.
#[test]
fn rwlock_shared_acquisitions_are_exact() {
    model(|| {
        let lock = Arc::new(RwLock::new(()));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let lock = Arc::clone(&lock);
                thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        drop(lock.read().unwrap());
                    }
                })
            })
            .collect();
        let _held = lock.read().unwrap();
        for handle in handles {
            handle.join().unwrap();
        }
        let stats = lock.stats();
        assert_eq!(stats.acquisitions, (THREADS * ROUNDS + 1) as u64);
        // No writer ever: nobody had to wait.
        assert_eq!(stats.contentions, 0);
    });
}

/// A lock's flags change while another thread writes and reads it: turning hold timing on and
/// off flips the DIVERT bit the `RwLock` word mirrors them in, racing with both fast paths, the
/// instrumented path's attempts and the unlocks. Every acquisition still takes the lock, the
/// counts stay exact, a timed hold is only ever one that began while timing was on, and the word
/// ends free with DIVERT agreeing with the flags (the plain paths work again afterwards).
#[test]
fn rwlock_flags_flipping_under_acquisitions() {
    model(|| {
        let lock = Arc::new(RwLock::new(0usize));
        let user = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                *lock.write().unwrap() += 1;
                let _ = *lock.read().unwrap();
            })
        };
        lock.set_hold_timing(true);
        lock.set_hold_timing(false);
        user.join().unwrap();
        let stats = lock.stats();
        assert_eq!(stats.acquisitions, 2, "{stats:?}");
        assert!(stats.holds.timed <= 1, "{stats:?}");
        assert!(!lock.is_write_locked());
        assert_eq!(lock.reader_count(), 0);
        *lock.write().unwrap() += 1;
        assert_eq!(*lock.read().unwrap(), 2);
        assert_eq!(lock.stats().acquisitions, 4);
    });
}
