//! loom models of the wait-for-graph deadlock detector: ABBA is refused on at most one side and
//! never hangs; locking in one order is never refused.
#![cfg(loom)]

use std::sync::atomic::{AtomicBool, Ordering as StdOrdering};

use loom::sync::Arc;
use loom::thread;
use loom_tests::model;
use sync_kit::deadlock::BlockedBy;
use sync_kit::{LockError, Mutex, RwLock};

/// Locks `first`, then `second`, releases both; returns the outcome of the second acquisition.
/// A refused second acquisition must be a `Deadlock` whose report names this thread and this
/// request, with a two-thread cycle.
fn lock_in_order(first: &Mutex<u32>, second: &Mutex<u32>) -> Result<(), ()> {
    let mut a = first
        .lock()
        .expect("nothing held yet: the first lock is never refused");
    *a += 1;
    let outcome = match second.lock() {
        Ok(mut b) => {
            *b += 1;
            Ok(())
        }
        Err(LockError::Deadlock(report)) => {
            assert_eq!(report.cycle().len(), 2, "{report}");
            assert_eq!(report.refused_thread().id, thread::current().id());
            assert_eq!(report.refused_request().lock.id, second.info().id);
            Err(())
        }
        Err(other) => panic!("unexpected error: {other:?}"),
    };
    drop(a);
    outcome
}

/// Classic ABBA between two named, unleveled mutexes. In every interleaving:
/// - never both refused, and nobody hangs (loom reports a thread parked forever);
/// - a refusal is a `Deadlock` naming the refused thread and its request, and the other thread
///   then completes both acquisitions;
/// - with no contended acquisition at all (the two critical sections did not overlap), both
///   succeed: a thread is refused only while the other really waits for it;
/// - the data reflects exactly the acquisitions that succeeded.
///
/// Also checks that loom explored both a refused and a clean run.
#[test]
fn abba_never_refuses_both_and_never_hangs() {
    static SAW_REFUSAL: AtomicBool = AtomicBool::new(false);
    static SAW_CLEAN: AtomicBool = AtomicBool::new(false);
    model(|| {
        let a = Arc::new(Mutex::named("loom-a", 0u32));
        let b = Arc::new(Mutex::named("loom-b", 0u32));
        let t1 = {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            thread::spawn(move || lock_in_order(&a, &b))
        };
        let t2 = {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            thread::spawn(move || lock_in_order(&b, &a))
        };
        let r1 = t1.join().unwrap();
        let r2 = t2.join().unwrap();
        assert!(r1.is_ok() || r2.is_ok(), "both sides of ABBA were refused");

        let contentions = a.stats().contentions + b.stats().contentions;
        if r1.is_err() || r2.is_err() {
            // A refusal is only right if the survivor was waiting for the very lock the refused
            // thread held (its first one): that lock, and no other, proves the cycle.
            let refused_first_lock = if r1.is_err() { &a } else { &b };
            assert!(
                refused_first_lock.stats().contentions >= 1,
                "refused although the other thread never waited for the refused thread's lock"
            );
            SAW_REFUSAL.store(true, StdOrdering::Relaxed);
        } else {
            SAW_CLEAN.store(true, StdOrdering::Relaxed);
        }
        if contentions == 0 {
            assert!(r1.is_ok() && r2.is_ok());
        }

        // Each thread took its first lock once; second locks only when granted.
        let (Ok(mut a), Ok(mut b)) = (Arc::try_unwrap(a), Arc::try_unwrap(b)) else {
            panic!("threads joined: no other reference left");
        };
        assert_eq!(*a.get_mut(), 1 + u32::from(r2.is_ok()));
        assert_eq!(*b.get_mut(), 1 + u32::from(r1.is_ok()));
        assert_eq!(a.stats().acquisitions, u64::from(*a.get_mut()));
        assert_eq!(b.stats().acquisitions, u64::from(*b.get_mut()));
        assert!(!a.is_locked() && !b.is_locked());
    });
    assert!(
        SAW_REFUSAL.load(StdOrdering::Relaxed),
        "no explored run closed the ABBA cycle"
    );
    assert!(
        SAW_CLEAN.load(StdOrdering::Relaxed),
        "no explored run avoided the ABBA cycle"
    );
}

/// Two threads both lock A then B (unnamed, unleveled): the detector never reports a deadlock,
/// whatever the interleaving, and both complete.
#[test]
fn same_order_is_never_refused() {
    model(|| {
        let a = Arc::new(Mutex::new(0u32));
        let b = Arc::new(Mutex::new(0u32));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (a, b) = (Arc::clone(&a), Arc::clone(&b));
                thread::spawn(move || lock_in_order(&a, &b))
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap(), Ok(()), "false deadlock report");
        }
        assert_eq!(*a.lock().unwrap(), 2);
        assert_eq!(*b.lock().unwrap(), 2);
    });
}

/// Three threads in a ring (A then B, B then C, C then A): at most one acquisition is refused,
/// its report is the whole three-thread cycle, and nobody hangs.
#[test]
fn three_thread_ring_refuses_at_most_one() {
    static SAW_REFUSAL: AtomicBool = AtomicBool::new(false);
    model(|| {
        let locks: Vec<_> = (0..3).map(|_| Arc::new(Mutex::new(0u32))).collect();
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let first = Arc::clone(&locks[i]);
                let second = Arc::clone(&locks[(i + 1) % 3]);
                thread::spawn(move || {
                    let _first = first.lock().unwrap();
                    match second.lock() {
                        Ok(_) => Ok(()),
                        Err(LockError::Deadlock(report)) => {
                            assert_eq!(report.cycle().len(), 3, "{report}");
                            assert_eq!(report.refused_thread().id, thread::current().id());
                            Err(())
                        }
                        Err(other) => panic!("unexpected error: {other:?}"),
                    }
                })
            })
            .collect();
        let refused = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(Result::is_err)
            .count();
        assert!(refused <= 1, "{refused} threads refused");
        if refused == 1 {
            SAW_REFUSAL.store(true, StdOrdering::Relaxed);
        }
    });
    assert!(
        SAW_REFUSAL.load(StdOrdering::Relaxed),
        "no explored run closed the ring"
    );
}

/// Reader/writer ABBA: T1 reads L then locks M; T2 locks M then writes L. A wait-for cycle
/// through an `RwLock` hold in shared mode is refused on at most one side (and on one side in
/// some explored run), never hangs.
#[test]
fn rwlock_mutex_cycle_refuses_at_most_one() {
    static SAW_REFUSAL: AtomicBool = AtomicBool::new(false);
    model(|| {
        let l = Arc::new(RwLock::new(0u32));
        let m = Arc::new(Mutex::new(0u32));
        let t1 = {
            let (l, m) = (Arc::clone(&l), Arc::clone(&m));
            thread::spawn(move || {
                let read = l.read().unwrap();
                let outcome = m.lock().map(|mut g| *g += *read);
                drop(read);
                outcome
            })
        };
        let t2 = {
            let (l, m) = (Arc::clone(&l), Arc::clone(&m));
            thread::spawn(move || {
                let held = m.lock().unwrap();
                let outcome = l.write().map(|mut g| *g += 1);
                drop(held);
                outcome
            })
        };
        let r1 = t1.join().unwrap();
        let r2 = t2.join().unwrap();
        assert!(r1.is_ok() || r2.is_ok(), "both sides were refused");
        for r in [&r1, &r2] {
            assert!(matches!(r, Ok(()) | Err(LockError::Deadlock(_))), "{r:?}");
        }
        assert_eq!(*l.read().unwrap(), u32::from(r2.is_ok()));
        if r1.is_err() || r2.is_err() {
            SAW_REFUSAL.store(true, StdOrdering::Relaxed);
        }
    });
    assert!(
        SAW_REFUSAL.load(StdOrdering::Relaxed),
        "no explored run closed the cycle"
    );
}

/// Refusals through a queued writer are true positives. T1 holds mutex A and reads L; Z reads
/// L, then locks A; W writes L; main holds L for writing at the start so that T1 and Z can
/// register as waiters.
///
/// History: loom found that a reader which had already taken L could still be in the wait-for
/// graph (it left the graph after its raw slow path returned), and that a writer's "parked" bit
/// was set only after its registration; W was then refused for a cycle that could not form.
/// Since then a registered thread acquires and leaves the graph in one critical section of the
/// graph's lock, and a waiter's parked bit is set in the same critical section as its accepted
/// registration. So when W finds the cycle W → Z (read holder) → T1 (holds A) → W (T1 is still
/// waiting to read, and W's queued write would hold it back), accepting W would have made it a
/// real deadlock: T1 could no longer get in. This model checks, in every interleaving: at most
/// one refusal, nobody hangs, and a refusal describes exactly such a cycle.
#[test]
fn no_false_report_when_waiting_reader_gets_in() {
    use loom::sync::atomic::{AtomicBool, Ordering};
    model(|| {
        let l = Arc::new(RwLock::new(0u32));
        let a = Arc::new(Mutex::new(0u32));
        let z_holds_read = Arc::new(AtomicBool::new(false));
        let held_write = l.write().unwrap();
        let t1 = {
            let (l, a, z_holds_read) = (Arc::clone(&l), Arc::clone(&a), Arc::clone(&z_holds_read));
            thread::spawn(move || {
                let _a = a.lock().unwrap();
                let _read = l.read()?;
                Ok::<bool, LockError>(z_holds_read.load(Ordering::SeqCst))
            })
        };
        let z = {
            let (l, a, z_holds_read) = (Arc::clone(&l), Arc::clone(&a), Arc::clone(&z_holds_read));
            thread::spawn(move || {
                let read = l.read().expect("Z holds nothing: never refused");
                z_holds_read.store(true, Ordering::SeqCst);
                let outcome = a.lock().map(drop);
                z_holds_read.store(false, Ordering::SeqCst);
                drop(read);
                outcome
            })
        };
        let w = {
            let l = Arc::clone(&l);
            thread::spawn(move || l.write().map(|mut g| *g += 1))
        };
        drop(held_write);
        let t1 = t1.join().unwrap();
        let z = z.join().unwrap();
        let w = w.join().unwrap();
        let refused = [t1.is_err(), z.is_err(), w.is_err()];
        assert!(refused.iter().filter(|r| **r).count() <= 1, "{refused:?}");
        for outcome in [
            t1.as_ref().map(drop),
            z.as_ref().map(drop),
            w.as_ref().map(drop),
        ] {
            match outcome {
                Ok(()) => {}
                Err(LockError::Deadlock(report)) => {
                    // Every refusal is the three-thread cycle through W's queued write.
                    assert_eq!(report.cycle().len(), 3, "{report}");
                    let queued_behind_writer = report
                        .cycle()
                        .iter()
                        .any(|step| matches!(step.blocked_by, BlockedBy::QueuedWriter { .. }));
                    assert!(queued_behind_writer, "{report}");
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    });
}
