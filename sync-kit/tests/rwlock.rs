//! `RwLock`: sharing, exclusion, the try/timed forms, writer preference (a writer gets in under a
//! flood of readers, and once it waits new readers queue behind it), no poisoning, and the
//! accessors.
//!
//! Some tests read the process-wide probe `deadlock::stats().threads_waiting`, so every test of
//! this binary that makes threads wait holds `common::serial()`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{bounded, join, recv, serial, spawn, wait_for_waiters, wait_until, waiting};
use sync_kit::{LockError, LockKind, RwLock};

/// Runs `hold` on a named thread that keeps a read (or write) lock of `rw` until released; returns
/// a function releasing it and joining the thread.
fn hold_on_other_thread(name: &str, rw: &Arc<RwLock<u32>>, write: bool) -> impl FnOnce() + use<> {
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let rw = rw.clone();
    let handle = spawn(name, move || {
        if write {
            let _g = rw.write().unwrap();
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        } else {
            let _g = rw.read().unwrap();
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        }
    });
    recv(&held_rx, "the other thread holds the lock");
    move || {
        release_tx.send(()).unwrap();
        join(handle);
    }
}

#[test]
fn readers_share_the_lock_across_threads() {
    let _serial = serial();
    bounded("shared readers", || {
        const READERS: usize = 4;
        let rw = Arc::new(RwLock::new(7u32));
        let all_in = Arc::new(Barrier::new(READERS + 1));
        let may_leave = Arc::new(Barrier::new(READERS + 1));
        let readers: Vec<_> = (0..READERS)
            .map(|i| {
                let (rw, all_in, may_leave) = (rw.clone(), all_in.clone(), may_leave.clone());
                spawn(format!("rw-share-{i}"), move || {
                    let g = rw.read().unwrap();
                    // Every reader reaches this point while the others hold their read lock.
                    all_in.wait();
                    may_leave.wait();
                    *g
                })
            })
            .collect();
        all_in.wait();
        assert_eq!(rw.reader_count(), READERS);
        assert!(!rw.is_write_locked());
        // One more reader on this thread is fine too; a writer is not.
        assert_eq!(*rw.try_read().unwrap(), 7);
        assert!(matches!(rw.try_write(), Err(LockError::Timeout)));
        may_leave.wait();
        for reader in readers {
            assert_eq!(join(reader), 7);
        }
        assert_eq!(rw.reader_count(), 0);
    });
}

#[test]
fn a_writer_excludes_readers_and_writers() {
    let _serial = serial();
    bounded("writer exclusion", || {
        let rw = Arc::new(RwLock::new(0u32));
        let release = hold_on_other_thread("rw-excl-writer", &rw, true);
        assert!(rw.is_write_locked());
        assert_eq!(rw.reader_count(), 0);
        assert!(matches!(rw.try_read(), Err(LockError::Timeout)));
        assert!(matches!(rw.try_write(), Err(LockError::Timeout)));

        let d = Duration::from_millis(100);
        let start = Instant::now();
        assert!(matches!(rw.try_read_for(d), Err(LockError::Timeout)));
        let waited = start.elapsed();
        assert!(
            waited >= d,
            "try_read_for returned after {waited:?} < {d:?}"
        );
        assert!(
            waited < Duration::from_secs(5),
            "try_read_for took {waited:?}"
        );

        let start = Instant::now();
        assert!(matches!(rw.try_write_for(d), Err(LockError::Timeout)));
        let waited = start.elapsed();
        assert!(
            waited >= d,
            "try_write_for returned after {waited:?} < {d:?}"
        );
        assert!(
            waited < Duration::from_secs(5),
            "try_write_for took {waited:?}"
        );

        let start = Instant::now();
        assert!(matches!(
            rw.try_read_until(start + d),
            Err(LockError::Timeout)
        ));
        assert!(start.elapsed() >= d);
        let start = Instant::now();
        assert!(matches!(
            rw.try_write_until(start + d),
            Err(LockError::Timeout)
        ));
        assert!(start.elapsed() >= d);

        // A deadline in the past or a zero duration does not wait.
        assert!(matches!(
            rw.try_write_for(Duration::ZERO),
            Err(LockError::Timeout)
        ));
        assert!(matches!(
            rw.try_read_until(Instant::now()),
            Err(LockError::Timeout)
        ));
        release();
        assert!(!rw.is_write_locked());
        *rw.try_write().unwrap() += 1;
        assert_eq!(*rw.try_read().unwrap(), 1);
    });
}

#[test]
fn readers_exclude_writers() {
    let _serial = serial();
    bounded("reader excludes writer", || {
        let rw = Arc::new(RwLock::new(0u32));
        let release = hold_on_other_thread("rw-rx-reader", &rw, false);
        assert_eq!(rw.reader_count(), 1);
        assert!(matches!(rw.try_write(), Err(LockError::Timeout)));
        let d = Duration::from_millis(100);
        let start = Instant::now();
        assert!(matches!(rw.try_write_for(d), Err(LockError::Timeout)));
        assert!(start.elapsed() >= d);
        // A writer that gave up does not keep readers out.
        drop(
            rw.try_read()
                .expect("readers may enter once the writer gave up"),
        );
        release();
        drop(rw.try_write().unwrap());
    });
}

#[test]
fn timed_acquisitions_succeed_when_the_lock_is_released_in_time() {
    let _serial = serial();
    bounded("timed success", || {
        let rw = Arc::new(RwLock::new(1u32));
        let holder = {
            let rw = rw.clone();
            let (held_tx, held_rx) = mpsc::channel();
            let h = spawn("rw-timed-holder", move || {
                let mut g = rw.write().unwrap();
                held_tx.send(()).unwrap();
                // Only to create contention; the outcome does not depend on this duration.
                std::thread::sleep(Duration::from_millis(30));
                *g = 2;
            });
            recv(&held_rx, "writer holds");
            h
        };
        assert_eq!(*rw.try_read_for(Duration::from_secs(10)).unwrap(), 2);
        join(holder);
        *rw.try_write_for(Duration::from_secs(10)).unwrap() = 3;
        assert_eq!(
            *rw.try_read_until(Instant::now() + Duration::from_secs(1))
                .unwrap(),
            3
        );
    });
}

#[test]
fn a_writer_gets_in_under_a_continuous_flood_of_readers() {
    let _serial = serial();
    bounded("writer vs reader flood", || {
        const READERS: usize = 4;
        let rw = Arc::new(RwLock::named("rw-flood", 0u64));
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..READERS)
            .map(|i| {
                let (rw, stop, reads) = (rw.clone(), stop.clone(), reads.clone());
                spawn(format!("rw-flood-reader-{i}"), move || {
                    let mut seen_write = false;
                    while !stop.load(Ordering::Relaxed) {
                        let g = rw.read().unwrap();
                        seen_write |= *g == 1;
                        // Hold a little so that readers overlap and the lock is rarely free.
                        // (Creates contention only; nothing relies on the duration.)
                        std::thread::sleep(Duration::from_micros(200));
                        drop(g);
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    seen_write
                })
            })
            .collect();
        wait_until("the readers are flooding", || {
            reads.load(Ordering::Relaxed) >= 200
        });

        let start = Instant::now();
        let result = rw.try_write_for(Duration::from_secs(10));
        let waited = start.elapsed();
        match result {
            Ok(mut g) => *g = 1,
            Err(e) => panic!("the writer did not get in within 10s of reader flood: {e:?}"),
        }
        // The readers go on after the writer.
        let after = reads.load(Ordering::Relaxed);
        wait_until("the readers resume after the writer", || {
            reads.load(Ordering::Relaxed) >= after + 100
        });
        stop.store(true, Ordering::Relaxed);
        let saw_write = readers.into_iter().map(join).filter(|&seen| seen).count();
        assert!(saw_write > 0, "readers resumed and saw the write");
        assert!(waited < Duration::from_secs(10));
    });
}

#[test]
fn once_a_writer_waits_new_readers_wait_behind_it() {
    let _serial = serial();
    bounded("new readers queue behind a waiting writer", || {
        let base = waiting();
        let rw = Arc::new(RwLock::named("rw-queue", 0u32));
        let release_first_reader = hold_on_other_thread("rw-queue-first-reader", &rw, false);

        let writer = {
            let rw = rw.clone();
            spawn("rw-queue-writer", move || {
                let mut g = rw.write().unwrap();
                *g += 1;
            })
        };
        wait_for_waiters(base + 1);

        // Only a reader holds the lock, yet a new reader on a third thread is refused now (it
        // is registered once the writer is asleep; the polling covers the instant between the
        // writer's registration in the detector and its marking the lock as awaited).
        let third = {
            let rw = rw.clone();
            spawn("rw-queue-third-reader", move || {
                wait_until(
                    "a new reader is kept out by the waiting writer",
                    || match rw.try_read() {
                        Err(LockError::Timeout) => true,
                        Ok(_) => false,
                        Err(e) => panic!("unexpected {e:?}"),
                    },
                );
                assert_eq!(rw.reader_count(), 1, "only the first reader holds the lock");
                assert!(!rw.is_write_locked());
                // And a blocking read waits behind the writer: it sees the writer's update.
                rw.read().map(|g| *g)
            })
        };
        wait_for_waiters(base + 2);
        assert!(!third.is_finished() && !writer.is_finished());
        release_first_reader();
        join(writer);
        assert_eq!(
            join(third).unwrap(),
            1,
            "the queued reader enters after the writer"
        );
    });
}

#[test]
fn readers_queued_behind_a_writer_that_times_out_proceed() {
    let _serial = serial();
    bounded("writer timeout releases queued readers", || {
        let base = waiting();
        let rw = Arc::new(RwLock::named("rw-wto", 5u32));
        let release_first_reader = hold_on_other_thread("rw-wto-first-reader", &rw, false);
        let d = Duration::from_millis(1500);
        let writer = {
            let rw = rw.clone();
            spawn("rw-wto-writer", move || {
                let start = Instant::now();
                let r = rw.try_write_for(d).map(drop);
                (r, start.elapsed())
            })
        };
        wait_for_waiters(base + 1);
        let (tx, rx) = mpsc::channel();
        let reader = {
            let rw = rw.clone();
            spawn("rw-wto-queued-reader", move || {
                let g = rw.read();
                tx.send(g.map(|g| *g)).unwrap();
            })
        };
        // The reader really queues behind the writer (both wait) before the writer gives up.
        wait_for_waiters(base + 2);
        assert!(
            !writer.is_finished(),
            "the writer timed out before the reader queued: the test proved nothing"
        );
        // The first reader still holds the lock: the queued reader must get in as soon as the
        // writer gives up, not when the first reader leaves.
        let got = rx.recv_timeout(Duration::from_secs(10));
        release_first_reader();
        join(reader);
        let got = got.expect("the queued reader stayed blocked after the writer timed out");
        assert!(matches!(got, Ok(5)), "{got:?}");
        let (result, waited) = join(writer);
        assert!(matches!(result, Err(LockError::Timeout)), "{result:?}");
        assert!(waited >= d, "the writer gave up after {waited:?} < {d:?}");
    });
}

#[test]
fn recursive_read_of_an_unleveled_lock_without_a_waiting_writer_is_fine() {
    let rw = RwLock::new(3);
    let a = rw.read().unwrap();
    let b = rw.read().unwrap();
    let c = rw.try_read().unwrap();
    assert_eq!(*a + *b + *c, 9);
    assert_eq!(rw.reader_count(), 3);
    assert_eq!(sync_kit::held_by_current_thread().len(), 3);
    drop(b);
    assert_eq!(rw.reader_count(), 2);
    drop((a, c));
    assert!(sync_kit::held_by_current_thread().is_empty());
}

#[test]
fn writers_and_readers_see_consistent_data() {
    let _serial = serial();
    bounded("consistency", || {
        const WRITERS: u64 = 4;
        const READERS: u64 = 4;
        const K: u64 = 500;
        let rw = Arc::new(RwLock::new((0u64, 0u64)));
        let mut handles = Vec::new();
        for i in 0..WRITERS {
            let rw = rw.clone();
            handles.push(spawn(format!("rw-cons-w{i}"), move || {
                for _ in 0..K {
                    let mut g = rw.write().unwrap();
                    g.0 += 1;
                    std::thread::yield_now();
                    g.1 += 1;
                }
            }));
        }
        for i in 0..READERS {
            let rw = rw.clone();
            handles.push(spawn(format!("rw-cons-r{i}"), move || {
                for _ in 0..K {
                    let g = rw.read().unwrap();
                    assert_eq!(g.0, g.1, "a reader saw a half-done write");
                }
            }));
        }
        handles.into_iter().for_each(join);
        assert_eq!(*rw.read().unwrap(), (WRITERS * K, WRITERS * K));
        assert_eq!(rw.stats().acquisitions, WRITERS * K + READERS * K + 1);
    });
}

#[test]
fn no_poisoning_after_a_panic_while_holding_the_lock() {
    let _serial = serial();
    bounded("no poisoning", || {
        let rw = Arc::new(RwLock::new(vec![1, 2]));
        let writer = {
            let rw = rw.clone();
            spawn("rw-poison-writer", move || {
                let mut g = rw.write().unwrap();
                g.push(3);
                panic!("deliberate panic while holding the write lock");
            })
        };
        assert!(writer.join().is_err());
        assert!(!rw.is_write_locked());
        assert_eq!(
            *rw.read().unwrap(),
            [1, 2, 3],
            "the data is left as the panic left it"
        );

        let reader = {
            let rw = rw.clone();
            spawn("rw-poison-reader", move || {
                let g = rw.read().unwrap();
                assert_eq!(g.len(), 3);
                panic!("deliberate panic while holding a read lock");
            })
        };
        assert!(reader.join().is_err());
        assert_eq!(rw.reader_count(), 0);
        rw.write().unwrap().push(4);
        assert_eq!(*rw.try_read().unwrap(), [1, 2, 3, 4]);
    });
}

#[test]
fn guards_accessors_and_debug() {
    bounded("rwlock accessors", || {
        let mut rw = RwLock::named("rw-acc", String::from("ab"));
        assert_eq!(rw.info().name, Some("rw-acc"));
        assert_eq!(rw.info().kind, LockKind::RwLock);
        assert_eq!(rw.info().level, None);
        assert_eq!(rw.info().created_at.file(), file!());
        {
            let mut w = rw.write().unwrap();
            w.push('c');
            assert_eq!(w.len(), 3);
            assert_eq!(format!("{w}"), "abc");
            assert_eq!(format!("{w:?}"), "\"abc\"");
            // Debug of the lock does not lock (it would refuse or wait) and does not show data.
            let shown = format!("{rw:?}");
            assert!(shown.contains("write_locked: true"), "{shown}");
            assert!(!shown.contains("abc"), "{shown}");
        }
        {
            let r = rw.read().unwrap();
            assert_eq!(r.as_str(), "abc");
            assert_eq!(format!("{r}|{r:?}"), "abc|\"abc\"");
            let shown = format!("{rw:?}");
            assert!(shown.contains("readers: 1"), "{shown}");
            assert!(shown.contains("write_locked: false"), "{shown}");
        }
        rw.get_mut().push('d');
        assert_eq!(rw.into_inner(), "abcd");
        let d: RwLock<Vec<u8>> = RwLock::default();
        assert!(d.read().unwrap().is_empty());
        assert_eq!(d.info().name, None);
    });
}

/// A lock whose flags send it down the instrumented path (here: its own hold timing) mirrors
/// that in its word, where both fast paths fail on it; the instrumented path still takes the
/// lock, and once the flags are clear again the plain path does. Counts stay exact throughout.
#[test]
fn hold_timing_on_and_off_diverts_and_restores_both_fast_paths() {
    let rw = RwLock::new(0u32);
    rw.set_hold_timing(true);
    *rw.write().unwrap() += 1;
    drop(rw.read().unwrap());
    assert_eq!(*rw.try_read().unwrap(), 1);
    rw.set_hold_timing(false);
    *rw.write().unwrap() += 1;
    drop(rw.read().unwrap());
    assert!(rw.try_write().is_ok());
    let stats = rw.stats();
    assert_eq!(stats.acquisitions, 6);
    assert_eq!(
        stats.holds.timed, 1,
        "only the write taken while timing was on"
    );
    assert_eq!((rw.is_write_locked(), rw.reader_count()), (false, 0));
    // A leveled lock is diverted for good, and still refuses what it must.
    let low = RwLock::with_level("rw-divert-low", sync_kit::Level(1), ());
    let high = RwLock::with_level("rw-divert-high", sync_kit::Level(2), ());
    let h = high.write().unwrap();
    assert!(matches!(
        low.read(),
        Err(sync_kit::LockError::LevelViolation { .. })
    ));
    drop(h);
    drop(low.write().unwrap());
    assert_eq!(low.stats().acquisitions, 1);
}
