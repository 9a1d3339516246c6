//! `Mutex` basics: exclusion, `try_lock` and the timed forms, guards, no poisoning, accessors,
//! and a `Debug` that never locks.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{bounded, join, recv, spawn};
use sync_kit::{Level, LockError, LockKind, Mutex, MutexGuard};

/// Holds `m` on another thread until the returned function is called.
fn hold_on_other_thread<T: Send + 'static>(m: &Arc<Mutex<T>>) -> impl FnOnce() + use<T> {
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let m = m.clone();
    let handle = spawn("mx-holder", move || {
        let _g = m.lock().unwrap();
        held_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    });
    recv(&held_rx, "the other thread holds the mutex");
    move || {
        release_tx.send(()).unwrap();
        join(handle);
    }
}

#[test]
fn try_lock_on_a_held_mutex_times_out_at_once() {
    bounded("try_lock", || {
        let m = Arc::new(Mutex::new(0));
        let release = hold_on_other_thread(&m);
        assert!(m.is_locked());
        assert!(matches!(m.try_lock(), Err(LockError::Timeout)));
        release();
        assert!(!m.is_locked());
        let g = m.try_lock().unwrap();
        // Held by this very thread: `try_lock` does not wait, so it is a timeout, not a deadlock.
        assert!(matches!(m.try_lock(), Err(LockError::Timeout)));
        drop(g);
        assert_eq!(m.stats().acquisitions, 2, "failed attempts are not counted");
    });
}

#[test]
fn timed_lock_waits_at_least_the_duration_then_times_out() {
    bounded("try_lock_for", || {
        let m = Arc::new(Mutex::new(()));
        let release = hold_on_other_thread(&m);
        for d in [Duration::from_millis(50), Duration::from_millis(200)] {
            let start = Instant::now();
            assert!(matches!(m.try_lock_for(d), Err(LockError::Timeout)));
            let waited = start.elapsed();
            assert!(waited >= d, "try_lock_for({d:?}) gave up after {waited:?}");
            assert!(
                waited < Duration::from_secs(5),
                "try_lock_for({d:?}) took {waited:?}"
            );

            let start = Instant::now();
            assert!(matches!(
                m.try_lock_until(start + d),
                Err(LockError::Timeout)
            ));
            let waited = start.elapsed();
            assert!(
                waited >= d,
                "try_lock_until(+{d:?}) gave up after {waited:?}"
            );
            assert!(waited < Duration::from_secs(5));
        }
        // Zero and past deadlines do not wait.
        assert!(matches!(
            m.try_lock_for(Duration::ZERO),
            Err(LockError::Timeout)
        ));
        assert!(matches!(
            m.try_lock_until(Instant::now() - Duration::from_millis(1)),
            Err(LockError::Timeout)
        ));
        release();
        assert!(m.try_lock_for(Duration::from_millis(1)).is_ok());
        assert_eq!(m.stats().acquisitions, 2);
    });
}

#[test]
fn timed_lock_succeeds_when_released_in_time() {
    bounded("try_lock_for success", || {
        let m = Arc::new(Mutex::new(1));
        let (held_tx, held_rx) = mpsc::channel();
        let holder = {
            let m = m.clone();
            spawn("mx-timed-holder", move || {
                let mut g = m.lock().unwrap();
                held_tx.send(()).unwrap();
                // Only to create contention; the outcome does not depend on the duration.
                std::thread::sleep(Duration::from_millis(30));
                *g = 2;
            })
        };
        recv(&held_rx, "holder holds");
        assert_eq!(*m.try_lock_for(Duration::from_secs(10)).unwrap(), 2);
        join(holder);
        assert_eq!(
            *m.try_lock_until(Instant::now() + Duration::from_secs(1))
                .unwrap(),
            2
        );
    });
}

#[test]
fn mutual_exclusion_under_contention() {
    bounded("exclusion", || {
        const THREADS: u64 = 8;
        const K: u64 = 1000;
        let m = Arc::new(Mutex::new(0u64));
        let inside = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (m, inside) = (m.clone(), inside.clone());
                spawn(format!("mx-excl-{t}"), move || {
                    for i in 0..K {
                        let mut g = m.lock().unwrap();
                        assert!(!inside.swap(true, Ordering::SeqCst), "two threads inside");
                        let v = *g;
                        if i % 16 == 0 {
                            std::thread::yield_now();
                        }
                        *g = v + 1;
                        inside.store(false, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(join);
        assert_eq!(*m.lock().unwrap(), THREADS * K);
    });
}

#[test]
fn guards_deref_and_format_their_data() {
    let m = Mutex::named("mx-guard", vec![1, 2]);
    {
        let mut g = m.lock().unwrap();
        g.push(3);
        assert_eq!(g.len(), 3);
        assert_eq!(&*g, &[1, 2, 3]);
        assert_eq!(format!("{g:?}"), "[1, 2, 3]");
        assert!(std::ptr::eq(MutexGuard::mutex(&g), &m));
    }
    let s = Mutex::new(String::from("hi"));
    let g = s.lock().unwrap();
    assert_eq!(format!("{g}"), "hi");
    assert_eq!(*m.lock().unwrap(), [1, 2, 3]);
}

#[test]
fn no_poisoning_after_a_panic_while_holding_the_lock() {
    bounded("no poisoning", || {
        let m = Arc::new(Mutex::named("mx-poison", vec![1]));
        let panicker = {
            let m = m.clone();
            spawn("mx-poison-panicker", move || {
                let mut g = m.lock().unwrap();
                g.push(2);
                panic!("deliberate panic while holding the mutex");
            })
        };
        assert!(panicker.join().is_err(), "the thread panicked");
        assert!(!m.is_locked(), "the panic released the lock");
        let mut g = m
            .try_lock()
            .expect("usable after the panic, without poisoning");
        assert_eq!(*g, [1, 2], "the data is as the panicking code left it");
        g.push(3);
        drop(g);
        assert_eq!(*m.lock().unwrap(), [1, 2, 3]);
        assert!(sync_kit::held_by_current_thread().is_empty());
    });
}

#[test]
fn into_inner_get_mut_default_and_info() {
    let mut m = Mutex::with_level("mx-info", Level(3), 5);
    *m.get_mut() += 1;
    assert_eq!(*m.lock().unwrap(), 6);
    let info = m.info();
    assert_eq!(info.name, Some("mx-info"));
    assert_eq!(info.level, Some(Level(3)));
    assert_eq!(info.kind, LockKind::Mutex);
    assert_eq!(info.created_at.file(), file!());
    assert_eq!(m.into_inner(), 6);

    let d: Mutex<Vec<u8>> = Mutex::default();
    assert!(d.lock().unwrap().is_empty());
    assert_eq!(d.info().name, None);
    assert_eq!(d.info().level, None);
    assert_ne!(d.info().id, Mutex::new(()).info().id, "ids are unique");
    assert_eq!(d.into_inner(), Vec::<u8>::new());
}

#[test]
fn debug_does_not_lock() {
    bounded("debug", || {
        let m = Mutex::named("mx-debug", 424242);
        let free = format!("{m:?}");
        assert!(free.contains("locked: false"), "{free}");
        assert!(free.contains("mx-debug"), "{free}");
        let g = m.lock().unwrap();
        // Formatting while this thread holds the lock: locking would refuse or wait.
        let held = format!("{m:?}");
        assert!(held.contains("locked: true"), "{held}");
        assert!(
            !held.contains("424242"),
            "Debug must not show the data: {held}"
        );
        assert_eq!(m.stats().acquisitions, 1, "Debug did not acquire");
        drop(g);
    });
}

#[test]
fn held_list_follows_guards_dropped_in_any_order() {
    let a = Mutex::named("mx-held-a", ());
    let b = Mutex::new(());
    let c = Mutex::named("mx-held-c", ());
    let ga = a.lock().unwrap();
    let gb = b.lock().unwrap();
    let gc = c.lock().unwrap();
    let ids = |v: Vec<sync_kit::LockUse>| v.iter().map(|u| u.lock.id).collect::<Vec<_>>();
    assert_eq!(
        ids(sync_kit::held_by_current_thread()),
        [a.info().id, b.info().id, c.info().id]
    );
    drop(gb);
    assert_eq!(
        ids(sync_kit::held_by_current_thread()),
        [a.info().id, c.info().id]
    );
    drop(ga);
    assert_eq!(ids(sync_kit::held_by_current_thread()), [c.info().id]);
    drop(gc);
    assert!(sync_kit::held_by_current_thread().is_empty());
}
