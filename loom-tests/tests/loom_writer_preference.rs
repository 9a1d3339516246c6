//! loom models of `sync_kit::RwLock`'s writer preference, asserting exactly what
//! `raw_rwlock.rs` guarantees.
//!
//! What holds: once a writer that must wait for readers has been counted among the waiting
//! writers (in the same critical section as its accepted wait-for-graph registration), no new
//! reader enters until that writer has written or given up. A re-read by one of the readers
//! inside is refused as a deadlock. The only public probe of "a writer waits" is a `try_read` by
//! a thread that already holds a read lock: with no writer holding (impossible while we read), it
//! fails exactly when a writer is counted.
#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;
use loom_tests::model;
use sync_kit::deadlock::BlockedBy;
use sync_kit::{LockError, RwLock};

/// Spins (yielding to loom) until a writer is observed waiting: `try_read` by this thread, which
/// holds a read lock, fails only while a writer is counted as waiting.
fn wait_until_writer_queued<T>(lock: &RwLock<T>) {
    loop {
        match lock.try_read() {
            Ok(extra) => drop(extra),
            Err(LockError::Timeout) => return,
            Err(other) => panic!("try_read failed with {other:?}"),
        }
        thread::yield_now();
    }
}

/// R1 (main) holds a read lock; W asks to write; once W is observed queued, R2 arrives.
/// - R2's `try_read` fails, and R2's blocking `read` does not get in while R1 still holds:
///   new readers queue behind the waiting writer.
/// - R1 reading again is refused with `Deadlock` (R1 would wait behind W, which waits for R1),
///   and the report's first step is "queued behind waiting writer".
/// - After R1 releases, W and R2 both complete (nobody left parked), exclusively.
#[test]
fn new_reader_waits_behind_queued_writer() {
    model(|| {
        let lock = Arc::new(RwLock::new(0usize));
        let r2_tried = Arc::new(AtomicBool::new(false));
        let r2_inside = Arc::new(AtomicBool::new(false));
        let r1 = lock.read().unwrap();

        let writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || *lock.write().unwrap() += 1)
        };
        wait_until_writer_queued(&lock);

        let reader2 = {
            let (lock, r2_tried, r2_inside) = (
                Arc::clone(&lock),
                Arc::clone(&r2_tried),
                Arc::clone(&r2_inside),
            );
            thread::spawn(move || {
                // R1 still holds its read lock here (it waits for `r2_tried` before releasing).
                assert!(
                    matches!(lock.try_read(), Err(LockError::Timeout)),
                    "a new reader got in past a queued writer"
                );
                r2_tried.store(true, Ordering::SeqCst);
                let guard = lock.read().unwrap();
                r2_inside.store(true, Ordering::SeqCst);
                *guard
            })
        };

        while !r2_tried.load(Ordering::SeqCst) {
            thread::yield_now();
        }

        // A second read by R1 would wait behind W, which waits for R1: refused, not hung.
        match lock.read() {
            Err(LockError::Deadlock(report)) => {
                assert_eq!(report.cycle().len(), 2, "{report}");
                assert_eq!(report.refused_thread().id, thread::current().id());
                assert!(matches!(
                    report.cycle()[0].blocked_by,
                    BlockedBy::QueuedWriter { .. }
                ));
                assert!(matches!(
                    report.cycle()[1].blocked_by,
                    BlockedBy::Holder { .. }
                ));
            }
            Ok(_) => panic!("re-read got in past a queued writer"),
            Err(other) => panic!("re-read failed with {other:?}"),
        }

        // Still only R1 inside, and R2 cannot have entered.
        assert_eq!(lock.reader_count(), 1);
        assert!(!lock.is_write_locked());
        assert!(!r2_inside.load(Ordering::SeqCst));

        drop(r1);
        writer.join().unwrap();
        let seen_by_r2 = reader2.join().unwrap();
        assert!(seen_by_r2 <= 1);
        assert_eq!(*lock.read().unwrap(), 1);
    });
}

/// Before a writer is queued, re-reading is allowed (no writer waits, so no deadlock); a writer
/// that arrives meanwhile still gets in once both read guards are gone. Checks that the
/// detector never refuses the re-read unless the writer is queued (registered and counted, in
/// one critical section): the re-read either succeeds or, if it found the writer queued, is
/// refused, never anything else and never a hang.
#[test]
fn reentrant_read_races_arriving_writer() {
    model(|| {
        let lock = Arc::new(RwLock::new(0usize));
        let r1 = lock.read().unwrap();
        let writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || *lock.write().unwrap() += 1)
        };
        match lock.read() {
            Ok(again) => {
                assert_eq!(*again, 0);
                assert_eq!(lock.reader_count(), 2);
            }
            Err(LockError::Deadlock(report)) => assert_eq!(report.cycle().len(), 2),
            Err(other) => panic!("re-read failed with {other:?}"),
        }
        drop(r1);
        writer.join().unwrap();
        assert_eq!(*lock.read().unwrap(), 1);
    });
}

/// R2 arrives only after W was observed queued (counted while R1 reads); when R1 releases, W
/// writes before R2 reads, in every interleaving.
///
/// History: loom first found a counterexample here. W had set a "writer parked" bit but not yet
/// entered the parking queue; R1's unlock found no writer in the queue, cleared the bit as
/// stale, and R2 overtook W. The lock word now counts waiting writers, so no unlock guesses.
#[test]
fn writer_first_after_release() {
    model(|| {
        let lock = Arc::new(RwLock::new(0usize));
        let r1 = lock.read().unwrap();
        let writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || *lock.write().unwrap() += 1)
        };
        wait_until_writer_queued(&lock);
        let reader2 = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || *lock.read().unwrap())
        };
        drop(r1);
        writer.join().unwrap();
        assert_eq!(
            reader2.join().unwrap(),
            1,
            "R2 read before the queued writer wrote"
        );
    });
}
