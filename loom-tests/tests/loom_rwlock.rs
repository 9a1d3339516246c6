//! loom models of `sync_kit::RwLock`: writers exclude everyone, readers share, nobody parked is
//! left asleep, and timed writers that give up re-admit the readers they held back.
#![cfg(loom)]

use std::sync::atomic::{AtomicBool, Ordering as StdOrdering};
use std::time::Duration;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use loom_tests::model;
use sync_kit::{LockError, RwLock};

/// Long enough that it never expires in real time; under loom a timed park times out at once.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A pair a writer updates in two steps: a reader that ever sees the halves differ saw a write in
/// progress.
type Pair = (usize, usize);

fn write_pair(lock: &RwLock<Pair>) {
    let mut guard = lock
        .write()
        .expect("unleveled lock, nothing else held: never refused");
    guard.0 += 1;
    thread::yield_now();
    guard.1 += 1;
}

fn read_pair(lock: &RwLock<Pair>) -> usize {
    let guard = lock
        .read()
        .expect("unleveled lock, nothing else held: never refused");
    let (a, b) = *guard;
    assert_eq!(a, b, "a reader saw a half-done write");
    a
}

/// Two writers and one reader: the writers' two-step updates never interleave with each other or
/// with the reader (the reader sees 0, 1 or 2 complete writes), the final state has both writes,
/// and every thread that parked was woken (two writers + one reader is the mix that exercises
/// the writer hand-off and the reader wake-up).
#[test]
fn rwlock_writers_exclude_writers_and_readers() {
    model(|| {
        let lock = Arc::new(RwLock::new((0, 0)));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let lock = Arc::clone(&lock);
                thread::spawn(move || write_pair(&lock))
            })
            .collect();
        let reader = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || read_pair(&lock))
        };
        for writer in writers {
            writer.join().unwrap();
        }
        let seen = reader.join().unwrap();
        assert!(seen <= 2);
        assert_eq!(*lock.read().unwrap(), (2, 2));
        assert!(!lock.is_write_locked());
        assert_eq!(lock.reader_count(), 0);
    });
}

/// One writer and two readers (each reading twice, a second reader may arrive while the first
/// holds): readers never see a half-done write, and nobody is left parked.
#[test]
fn rwlock_no_lost_wakeup_one_writer_two_readers() {
    model(|| {
        let lock = Arc::new(RwLock::new((0, 0)));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let lock = Arc::clone(&lock);
                thread::spawn(move || {
                    let first = read_pair(&lock);
                    let second = read_pair(&lock);
                    assert!(first <= second, "a write was undone");
                })
            })
            .collect();
        write_pair(&lock);
        for reader in readers {
            reader.join().unwrap();
        }
        assert_eq!(*lock.read().unwrap(), (1, 1));
    });
}

/// Readers share: with no writer around, a read lock held by one thread never stops another
/// thread's `try_read` (both hold at once), while a `try_write` is refused with `Timeout` as long
/// as a reader holds.
#[test]
fn rwlock_readers_share_and_exclude_writers() {
    model(|| {
        let lock = Arc::new(RwLock::new(7usize));
        let guard = lock.read().unwrap();
        let other_reader = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                let guard = lock
                    .try_read()
                    .expect("a second reader must share the lock");
                assert_eq!(*guard, 7);
                // The main thread holds its read lock until after this thread is joined.
                assert_eq!(lock.reader_count(), 2);
            })
        };
        let writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                assert!(matches!(lock.try_write(), Err(LockError::Timeout)));
            })
        };
        other_reader.join().unwrap();
        writer.join().unwrap();
        assert_eq!(*guard, 7);
        drop(guard);
        *lock.write().unwrap() += 1;
        assert_eq!(*lock.read().unwrap(), 8);
    });
}

/// Two threads `read()` concurrently: some interleaving has both inside at once (counted with a
/// loom atomic while holding), and no interleaving loses a reader.
#[test]
fn rwlock_two_blocking_readers_can_overlap() {
    static SAW_OVERLAP: AtomicBool = AtomicBool::new(false);
    model(|| {
        let lock = Arc::new(RwLock::new(()));
        let inside = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (lock, inside) = (Arc::clone(&lock), Arc::clone(&inside));
                thread::spawn(move || {
                    let _guard = lock.read().unwrap();
                    let before = inside.fetch_add(1, Ordering::SeqCst);
                    thread::yield_now();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    before == 1
                })
            })
            .collect();
        let overlapped = readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .fold(false, |a, b| a | b);
        if overlapped {
            SAW_OVERLAP.store(true, StdOrdering::Relaxed);
        }
        assert_eq!(lock.stats().acquisitions, 2);
    });
    assert!(
        SAW_OVERLAP.load(StdOrdering::Relaxed),
        "two readers never held the lock together"
    );
}

/// Timed and blocking acquisitions mixed: a blocking writer, a timed writer and a timed reader
/// against the main thread's blocking reads. Timed calls return `Ok` or `Timeout` only, nobody is
/// left parked, and the writes that succeeded are all in the final state.
#[test]
fn rwlock_timeouts_mixed_with_blocking() {
    model(|| {
        let lock = Arc::new(RwLock::new((0, 0)));
        let blocking_writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || write_pair(&lock))
        };
        let timed_writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || match lock.try_write_for(TIMEOUT) {
                Ok(mut guard) => {
                    guard.0 += 1;
                    guard.1 += 1;
                    1
                }
                Err(LockError::Timeout) => 0,
                Err(other) => panic!("timed write failed with {other:?}"),
            })
        };
        let timed_reader = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || match lock.try_read_for(TIMEOUT) {
                Ok(guard) => assert_eq!(guard.0, guard.1),
                Err(LockError::Timeout) => {}
                Err(other) => panic!("timed read failed with {other:?}"),
            })
        };
        read_pair(&lock);
        blocking_writer.join().unwrap();
        let timed_ok = timed_writer.join().unwrap();
        timed_reader.join().unwrap();
        assert_eq!(*lock.read().unwrap(), (1 + timed_ok, 1 + timed_ok));
    });
}

/// A writer that gives up must re-admit the readers it held back. The main thread holds a read
/// lock for the whole model; a timed writer queues (setting writer preference, which blocks new
/// readers) and times out; a blocking reader that arrived meanwhile must then get in *while the
/// main thread still holds its read lock*. Main joins that reader before releasing, so a reader
/// left parked is a deadlock loom reports.
#[test]
fn rwlock_timed_out_writer_readmits_blocked_readers() {
    static SAW_READER_WAIT: AtomicBool = AtomicBool::new(false);
    model(|| {
        let lock = Arc::new(RwLock::new(0usize));
        let guard = lock.read().unwrap();
        let timed_writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || lock.try_write_for(TIMEOUT).map(drop))
        };
        let reader = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || *lock.read().unwrap())
        };
        assert_eq!(reader.join().unwrap(), 0);
        assert!(matches!(
            timed_writer.join().unwrap(),
            Err(LockError::Timeout)
        ));
        // Only the blocking reader can have waited (main's read was first, the writer timed
        // out): it waited because the timed writer had set writer preference.
        if lock.stats().contentions > 0 {
            SAW_READER_WAIT.store(true, StdOrdering::Relaxed);
        }
        drop(guard);
        *lock.write().unwrap() += 1;
        assert_eq!(*lock.read().unwrap(), 1);
    });
    assert!(
        SAW_READER_WAIT.load(StdOrdering::Relaxed),
        "no explored run had the reader wait behind the timed writer"
    );
}

/// The same with a blocked writer: main holds a write lock, a timed writer gives up, a blocking
/// writer and a blocking reader wait. After main unlocks, both must get in (the timed-out writer
/// uncounts itself; readers are let in only once no writer is counted).
#[test]
fn rwlock_timed_out_writer_does_not_strand_blocked_writer() {
    model(|| {
        let lock = Arc::new(RwLock::new((0, 0)));
        let guard = lock.write().unwrap();
        let timed_writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || lock.try_write_for(TIMEOUT).map(drop))
        };
        let blocking_writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || write_pair(&lock))
        };
        let reader = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || read_pair(&lock))
        };
        assert!(matches!(
            timed_writer.join().unwrap(),
            Err(LockError::Timeout)
        ));
        drop(guard);
        blocking_writer.join().unwrap();
        assert!(reader.join().unwrap() <= 1);
        assert_eq!(*lock.read().unwrap(), (1, 1));
    });
}
