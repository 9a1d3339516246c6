//! Deadlock detection: every acquisition that would close a wait-for cycle returns
//! `Err(Deadlock)` (with a readable report) instead of hanging, and no other wait is refused.
//!
//! These tests read the process-wide probe `deadlock::stats().threads_waiting` to know that a
//! thread is asleep on a lock before the next one acts, so every test of this binary holds
//! `common::serial()`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use common::{bounded, join, recv, site, spawn, wait_for_waiters, wait_until, waiting};
use sync_kit::deadlock::BlockedBy;
use sync_kit::{
    AccessMode, DeadlockReport, Level, LockError, Mutex, MutexGuard, RwLock, RwLockReadGuard,
    RwLockWriteGuard,
};

// ----- helpers -----

/// `common::serial()`, with lock-order checking off for the whole binary. Every scenario here
/// forms wait-for cycles by taking unleveled locks in opposite orders on purpose; learned-order
/// checking (`Refuse` by default in debug builds) would refuse the second order at once, before
/// any cycle of waiting threads could form, and this file tests the wait-for detector behind it.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    let guard = common::serial();
    sync_kit::deadlock::set_order_checking(sync_kit::deadlock::OrderChecking::Off);
    guard
}

/// Either kind of lock, so that one scenario can mix them.
enum AnyLock {
    M(Mutex<()>),
    R(RwLock<()>),
}

impl AnyLock {
    fn id(&self) -> sync_kit::LockId {
        match self {
            AnyLock::M(m) => m.info().id,
            AnyLock::R(r) => r.info().id,
        }
    }
    fn name(&self) -> &'static str {
        match self {
            AnyLock::M(m) => m.info().name.unwrap(),
            AnyLock::R(r) => r.info().name.unwrap(),
        }
    }
    fn level(&self) -> Option<Level> {
        match self {
            AnyLock::M(m) => m.info().level,
            AnyLock::R(r) => r.info().level,
        }
    }
}

/// How to acquire an [`AnyLock`].
#[derive(Clone, Copy, Debug)]
enum How {
    Lock,
    LockFor(Duration),
    LockUntil(Duration),
    Read,
    ReadFor(Duration),
    Write,
    WriteFor(Duration),
}

#[allow(dead_code)] // the guards are only held, never read
enum Guard<'a> {
    M(MutexGuard<'a, ()>),
    R(RwLockReadGuard<'a, ()>),
    W(RwLockWriteGuard<'a, ()>),
}

/// Acquires `lock` as `how` says; `#[track_caller]` so the call site recorded by sync-kit is the
/// caller's line.
#[track_caller]
fn take(lock: &AnyLock, how: How) -> Result<Guard<'_>, LockError> {
    Ok(match (lock, how) {
        (AnyLock::M(m), How::Lock) => Guard::M(m.lock()?),
        (AnyLock::M(m), How::LockFor(d)) => Guard::M(m.try_lock_for(d)?),
        (AnyLock::M(m), How::LockUntil(d)) => Guard::M(m.try_lock_until(Instant::now() + d)?),
        (AnyLock::R(r), How::Read) => Guard::R(r.read()?),
        (AnyLock::R(r), How::ReadFor(d)) => Guard::R(r.try_read_for(d)?),
        (AnyLock::R(r), How::Write) => Guard::W(r.write()?),
        (AnyLock::R(r), How::WriteFor(d)) => Guard::W(r.try_write_for(d)?),
        (lock, how) => panic!("cannot {how:?} a {}", lock.name()),
    })
}

fn deadlock<T>(result: Result<T, LockError>) -> DeadlockReport {
    match result {
        Err(LockError::Deadlock(report)) => *report,
        Err(other) => panic!("expected Deadlock, got {other:?}"),
        Ok(_) => panic!("expected Deadlock, but the lock was acquired"),
    }
}

fn assert_mentions(text: &str, needles: &[String]) {
    for needle in needles {
        assert!(
            text.contains(needle.as_str()),
            "{needle:?} missing from report:\n{text}"
        );
    }
}

/// What happened in a [`ring`].
struct RingOutcome {
    locks: Arc<Vec<AnyLock>>,
    names: Vec<String>,
    ids: Vec<ThreadId>,
    /// The second acquisition of each thread (the last one is the thread closing the cycle).
    results: Vec<Result<(), LockError>>,
    /// How long the closing acquisition took before returning.
    closer_elapsed: Duration,
    /// Line of the first (held) and second (waited for) acquisition in every thread.
    hold_line: u32,
    request_line: u32,
}

/// Runs a ring of `locks.len()` threads: thread i takes `locks[i]` as `first[i]`, then asks for
/// `locks[(i + 1) % n]` as `second[i]`. Threads 0..n-1 ask one after the other, each being
/// observed asleep in the detector before the next asks; the last one closes the cycle.
///
/// Checks on the way that the chain waits are not refused, and that after the closer is refused
/// (and before it releases its lock) the others are still waiting: they proceed only once it
/// drops its guard.
fn ring(prefix: &str, locks: Vec<AnyLock>, first: Vec<How>, second: Vec<How>) -> RingOutcome {
    let n = locks.len();
    assert!(n >= 2 && first.len() == n && second.len() == n);
    let base = waiting();
    let locks = Arc::new(locks);
    let (held_tx, held_rx) = mpsc::channel::<(u32, u32)>();
    let (closer_tx, closer_rx) = mpsc::channel::<(Result<(), LockError>, Duration)>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let mut release_rx = Some(release_rx);
    let mut go = Vec::new();
    let mut handles = Vec::new();
    let mut names = Vec::new();
    for i in 0..n {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        go.push(go_tx);
        let locks = locks.clone();
        let held_tx = held_tx.clone();
        let closer = (i == n - 1).then(|| (closer_tx.clone(), release_rx.take().unwrap()));
        let (how1, how2) = (first[i], second[i]);
        let name = format!("{prefix}-t{i}");
        names.push(name.clone());
        handles.push(spawn(name, move || {
            let hold_line = line!() + 1;
            let held = take(&locks[i], how1).expect("first acquisition");
            let request_line = line!() + 4;
            held_tx.send((hold_line, request_line)).unwrap();
            go_rx.recv().unwrap();
            let start = Instant::now();
            let result = take(&locks[(i + 1) % n], how2).map(drop);
            let elapsed = start.elapsed();
            if let Some((closer_tx, release_rx)) = closer {
                closer_tx.send((result, elapsed)).unwrap();
                release_rx.recv().unwrap();
                drop(held);
                None
            } else {
                drop(held);
                Some(result)
            }
        }));
    }
    let ids: Vec<ThreadId> = handles.iter().map(|h| h.thread().id()).collect();
    let mut lines = Vec::new();
    for _ in 0..n {
        lines.push(recv(&held_rx, "every ring thread holds its first lock"));
    }
    let (hold_line, request_line) = lines[0];
    for (i, go) in go.iter().enumerate().take(n - 1) {
        go.send(()).unwrap();
        wait_for_waiters(base + i as u64 + 1);
    }
    go[n - 1].send(()).unwrap();
    let (closer_result, closer_elapsed) = recv(&closer_rx, "the closing acquisition returns");

    // The closer has not released anything yet: the others must all still be waiting.
    assert_eq!(
        waiting(),
        base + n as u64 - 1,
        "the other threads of the ring are still waiting while the refused thread holds its lock"
    );
    assert!(
        handles[..n - 1].iter().all(|h| !h.is_finished()),
        "no other thread of the ring may finish before the refused one releases"
    );
    release_tx.send(()).unwrap();

    let mut results: Vec<Result<(), LockError>> = handles
        .into_iter()
        .take(n - 1)
        .map(|h| join(h).expect("a non-closing thread returns its result"))
        .collect();
    results.push(closer_result);
    wait_until("the ring threads have left the detector", || {
        waiting() == base
    });
    RingOutcome {
        locks,
        names,
        ids,
        results,
        closer_elapsed,
        hold_line,
        request_line,
    }
}

impl RingOutcome {
    /// Asserts the closer was refused with a full and correct report, and all others succeeded.
    fn check(&self) -> DeadlockReport {
        let n = self.locks.len();
        for (i, result) in self.results[..n - 1].iter().enumerate() {
            assert!(
                result.is_ok(),
                "{} is not part of a closed cycle when it waits and must get its lock: {result:?}",
                self.names[i]
            );
        }
        let report = deadlock(self.results[n - 1].clone());
        let cycle = report.cycle();
        assert_eq!(cycle.len(), n, "cycle length:\n{report}");
        assert_eq!(report.refused_thread().id, self.ids[n - 1]);
        assert_eq!(report.refused_request().lock.id, self.locks[0].id());
        for (k, step) in cycle.iter().enumerate() {
            let thread = (n - 1 + k) % n;
            assert_eq!(step.thread.id, self.ids[thread], "thread of step {k}");
            assert_eq!(
                step.thread.name.as_deref(),
                Some(self.names[thread].as_str())
            );
            assert_eq!(
                step.wants.lock.id,
                self.locks[k].id(),
                "lock wanted at step {k}"
            );
            assert_eq!(step.wants.at.file(), file!());
            assert_eq!(step.wants.at.line(), self.request_line);
            let next = &step.blocked_by;
            assert_eq!(
                next.thread().id,
                self.ids[k],
                "step {k} waits for the holder"
            );
            match next {
                BlockedBy::Holder { held, .. } => {
                    assert_eq!(held.lock.id, self.locks[k].id());
                    assert_eq!(held.at.file(), file!());
                    assert_eq!(held.at.line(), self.hold_line);
                }
                BlockedBy::QueuedWriter { .. } => {
                    panic!("step {k} should wait for a holder: {report}")
                }
            }
        }
        let mut needles = vec![
            site(file!(), self.hold_line),
            site(file!(), self.request_line),
        ];
        for name in &self.names {
            needles.push(format!("{name:?}"));
        }
        for lock in self.locks.iter() {
            needles.push(format!("{:?}", lock.name()));
            if let Some(level) = lock.level() {
                needles.push(format!("level {}", level.0));
            }
        }
        assert_mentions(&report.to_string(), &needles);
        // LockError's Display is the report's.
        assert_eq!(
            self.results[n - 1].as_ref().unwrap_err().to_string(),
            report.to_string()
        );
        report
    }
}

fn mutex(name: &'static str, level: Option<u32>) -> AnyLock {
    AnyLock::M(match level {
        Some(l) => Mutex::with_level(name, Level(l), ()),
        None => Mutex::named(name, ()),
    })
}

fn rwlock(name: &'static str, level: Option<u32>) -> AnyLock {
    AnyLock::R(match level {
        Some(l) => RwLock::with_level(name, Level(l), ()),
        None => RwLock::named(name, ()),
    })
}

const LONG: Duration = Duration::from_secs(60);

// ----- cycles between threads -----

#[test]
fn abba_between_two_threads_is_refused_to_the_thread_closing_it() {
    let _serial = serial();
    bounded("ABBA", || {
        let base = waiting();
        let a = Arc::new(Mutex::with_level("dl-abba-a", Level(10), 1u32));
        let b = Arc::new(Mutex::named("dl-abba-b", 2u32));
        let (held_tx, held_rx) = mpsc::channel::<()>();
        let (go_first_tx, go_first_rx) = mpsc::channel::<()>();
        let (go_second_tx, go_second_rx) = mpsc::channel::<()>();

        let first = {
            let (a, b, held_tx) = (a.clone(), b.clone(), held_tx.clone());
            spawn("dl-abba-first", move || {
                let hold = line!() + 1;
                let mut ga = a.lock().unwrap();
                held_tx.send(()).unwrap();
                go_first_rx.recv().unwrap();
                let request = line!() + 1;
                let gb = b.lock(); // waits; gets `b` once the second thread gives up
                let gb = gb.expect("the first thread is not the one closing the cycle");
                *ga += *gb;
                (*ga, hold, request)
            })
        };
        let second = {
            let (a, b) = (a.clone(), b.clone());
            spawn("dl-abba-second", move || {
                let hold = line!() + 1;
                let _gb = b.lock().unwrap();
                held_tx.send(()).unwrap();
                go_second_rx.recv().unwrap();
                let request = line!() + 1;
                match a.lock() {
                    Err(e) => (e, hold, request),
                    Ok(_) => panic!("the second thread closes the cycle and must be refused"),
                }
            })
        };
        recv(&held_rx, "first holds a");
        recv(&held_rx, "second holds b");
        go_first_tx.send(()).unwrap();
        wait_for_waiters(base + 1);
        go_second_tx.send(()).unwrap();
        let (err, second_hold, second_request) = join(second);
        let (sum, first_hold, first_request) = join(first);
        assert_eq!(sum, 3, "the first thread got both locks in the end");

        let ids = (a.info().id, b.info().id);
        let report = deadlock::<()>(Err(err.clone()));
        let cycle = report.cycle();
        assert_eq!(cycle.len(), 2, "{report}");
        assert_eq!(cycle[0].thread.name.as_deref(), Some("dl-abba-second"));
        assert_eq!(cycle[0].wants.lock.id, ids.0);
        assert_eq!(cycle[0].wants.mode, AccessMode::Exclusive);
        assert_eq!(cycle[0].wants.at.line(), second_request);
        assert_eq!(
            cycle[0].blocked_by.thread().name.as_deref(),
            Some("dl-abba-first")
        );
        match &cycle[0].blocked_by {
            BlockedBy::Holder { held, .. } => {
                assert_eq!(held.lock.id, ids.0);
                assert_eq!(held.at.line(), first_hold);
            }
            other => panic!("unexpected edge {other:?}"),
        }
        assert_eq!(cycle[1].thread.name.as_deref(), Some("dl-abba-first"));
        assert_eq!(cycle[1].wants.lock.id, ids.1);
        assert_eq!(cycle[1].wants.at.line(), first_request);
        assert_eq!(
            cycle[1].blocked_by.thread().name.as_deref(),
            Some("dl-abba-second")
        );
        match &cycle[1].blocked_by {
            BlockedBy::Holder { held, .. } => {
                assert_eq!(held.lock.id, ids.1);
                assert_eq!(held.at.line(), second_hold);
            }
            other => panic!("unexpected edge {other:?}"),
        }
        assert_eq!(report.refused_thread(), &cycle[0].thread);
        assert_eq!(report.refused_request(), &cycle[0].wants);
        assert_eq!(cycle[1].blocked_by.thread(), &cycle[0].thread);

        let text = err.to_string();
        assert_eq!(text, report.to_string());
        assert_mentions(
            &text,
            &[
                "\"dl-abba-first\"".to_owned(),
                "\"dl-abba-second\"".to_owned(),
                "\"dl-abba-a\"".to_owned(),
                "\"dl-abba-b\"".to_owned(),
                "level 10".to_owned(),
                site(file!(), first_hold),
                site(file!(), first_request),
                site(file!(), second_hold),
                site(file!(), second_request),
            ],
        );
        assert_eq!(waiting(), base);
    });
}

#[test]
fn cycle_of_three_threads() {
    let _serial = serial();
    bounded("cycle of 3", || {
        // Levels 10 and 20 and an unleveled lock: every acquisition respects the hierarchy,
        // yet the threads form a cycle through the unleveled lock.
        let out = ring(
            "dl-ring3",
            vec![
                mutex("dl-ring3-a", Some(10)),
                mutex("dl-ring3-b", Some(20)),
                mutex("dl-ring3-c", None),
            ],
            vec![How::Lock; 3],
            vec![How::Lock; 3],
        );
        out.check();
    });
}

#[test]
fn cycle_of_four_threads() {
    let _serial = serial();
    bounded("cycle of 4", || {
        let out = ring(
            "dl-ring4",
            vec![
                mutex("dl-ring4-a", Some(10)),
                mutex("dl-ring4-b", Some(20)),
                mutex("dl-ring4-c", Some(30)),
                mutex("dl-ring4-d", None),
            ],
            vec![How::Lock; 4],
            vec![How::Lock; 4],
        );
        out.check();
    });
}

#[test]
fn cycle_closing_later_is_refused_to_its_closer_and_the_others_proceed() {
    // Two threads wait in a chain for a while (t0 -> t1 -> t2, no cycle, nobody refused); then the
    // holder at the end of the chain starts waiting for the lock held by t0. `ring` checks that
    // only t2 is refused, that t0 and t1 are still waiting until t2 drops its guard, and that
    // they then both get their locks.
    let _serial = serial();
    bounded("late cycle", || {
        let out = ring(
            "dl-late",
            vec![
                mutex("dl-late-a", None),
                rwlock("dl-late-b", None),
                mutex("dl-late-c", None),
            ],
            vec![How::Lock, How::Write, How::Lock],
            vec![How::Write, How::Lock, How::Lock],
        );
        out.check();
    });
}

#[test]
fn cycle_mixing_mutex_and_rwlock() {
    let _serial = serial();
    // Writer wants what a reader holds.
    bounded("mixed cycle, write vs read", || {
        let out = ring(
            "dl-mix1",
            vec![mutex("dl-mix1-m", Some(1)), rwlock("dl-mix1-rw", None)],
            vec![How::Lock, How::Read],
            vec![How::Write, How::Lock],
        );
        out.check();
    });
    // Reader wants what a writer holds, across three threads and two RwLocks.
    bounded("mixed cycle, read vs write", || {
        let out = ring(
            "dl-mix2",
            vec![
                rwlock("dl-mix2-rw1", None),
                mutex("dl-mix2-m", None),
                rwlock("dl-mix2-rw2", None),
            ],
            vec![How::Write, How::Lock, How::Write],
            vec![How::Lock, How::Read, How::Read],
        );
        out.check();
    });
}

// ----- one thread against itself -----

#[test]
fn locking_a_held_unleveled_mutex_again_is_a_deadlock() {
    let _serial = serial();
    bounded("self deadlock", || {
        let m = Mutex::named("dl-self-m", ());
        let hold_line = line!() + 1;
        let _g = m.lock().unwrap();
        let request_line = line!() + 1;
        let report = deadlock(m.lock());
        assert_eq!(report.cycle().len(), 1);
        let step = &report.cycle()[0];
        let me = std::thread::current();
        assert_eq!(step.thread.id, me.id());
        assert_eq!(step.blocked_by.thread().id, me.id());
        assert_eq!(step.wants.at.line(), request_line);
        let text = report.to_string();
        assert_mentions(
            &text,
            &[
                "\"dl-self-m\"".to_owned(),
                "this same thread".to_owned(),
                site(file!(), hold_line),
                site(file!(), request_line),
            ],
        );
        // A timed attempt is refused the same way (not a timeout after the full duration).
        deadlock(m.try_lock_for(LONG));
        // Still held, still usable by this thread.
        assert!(m.is_locked());
    });
}

#[test]
fn rwlock_against_itself() {
    let _serial = serial();
    bounded("rwlock self deadlocks", || {
        let rw = RwLock::named("dl-self-rw", ());
        // Upgrade: write while holding read.
        {
            let _r = rw.read().unwrap();
            let report = deadlock(rw.write());
            assert_eq!(report.cycle().len(), 1, "{report}");
            deadlock(rw.try_write_for(LONG));
        }
        // Write, then write or read again.
        {
            let _w = rw.write().unwrap();
            deadlock(rw.write());
            deadlock(rw.read());
            deadlock(rw.try_read_for(LONG));
        }
        // Reading twice with no writer waiting is fine.
        {
            let _r1 = rw.read().unwrap();
            let _r2 = rw.read().unwrap();
            assert_eq!(rw.reader_count(), 2);
        }
        assert!(sync_kit::held_by_current_thread().is_empty());
        drop(rw.write().unwrap());
    });
}

#[test]
fn upgrade_is_refused_even_when_other_readers_hold_the_lock() {
    let _serial = serial();
    bounded("upgrade with other readers", || {
        let rw = Arc::new(RwLock::named("dl-upgrade-rw", ()));
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let other = {
            let rw = rw.clone();
            spawn("dl-upgrade-other-reader", move || {
                let _r = rw.read().unwrap();
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
        };
        recv(&held_rx, "the other reader holds the lock");
        let _r = rw.read().unwrap();
        let report = deadlock(rw.write());
        assert_eq!(report.cycle().len(), 1, "{report}");
        assert_eq!(report.cycle()[0].wants.mode, AccessMode::Exclusive);
        release_tx.send(()).unwrap();
        join(other);
    });
}

#[test]
fn reading_again_while_a_writer_waits_is_a_deadlock() {
    let _serial = serial();
    bounded("re-read behind a waiting writer", || {
        let base = waiting();
        let rw = Arc::new(RwLock::named("dl-reread-rw", 0u32));
        let reader = std::thread::current();
        let _r = rw.read().unwrap();
        let writer = {
            let rw = rw.clone();
            spawn("dl-reread-writer", move || {
                *rw.write().unwrap() += 1;
            })
        };
        wait_for_waiters(base + 1);
        // The writer is registered; wait until it has also barred new readers.
        wait_until("the waiting writer bars new readers", || {
            rw.try_read().is_err()
        });
        let request_line = line!() + 1;
        let report = deadlock(rw.read());
        let cycle = report.cycle();
        assert_eq!(cycle.len(), 2, "{report}");
        assert_eq!(cycle[0].thread.id, reader.id());
        assert_eq!(cycle[0].wants.mode, AccessMode::Shared);
        assert_eq!(cycle[0].wants.at.line(), request_line);
        match &cycle[0].blocked_by {
            BlockedBy::QueuedWriter { thread, request } => {
                assert_eq!(thread.name.as_deref(), Some("dl-reread-writer"));
                assert_eq!(request.mode, AccessMode::Exclusive);
            }
            other => panic!("the reader queues behind the writer, got {other:?}"),
        }
        assert_eq!(cycle[1].thread.name.as_deref(), Some("dl-reread-writer"));
        assert_eq!(cycle[1].blocked_by.thread().id, reader.id());
        assert_mentions(
            &report.to_string(),
            &[
                "\"dl-reread-writer\"".to_owned(),
                "\"dl-reread-rw\"".to_owned(),
                "writer preference".to_owned(),
                site(file!(), request_line),
            ],
        );
        drop(_r);
        join(writer);
        assert_eq!(*rw.read().unwrap(), 1);
    });
}

// ----- timed waits -----

#[test]
fn a_cycle_closed_by_a_timed_wait_is_a_deadlock_not_a_timeout() {
    let _serial = serial();
    for (k, closing) in [How::LockFor(LONG), How::LockUntil(LONG)]
        .into_iter()
        .enumerate()
    {
        let out = bounded("timed closer (mutex)", move || {
            ring(
                ["dl-timed-close-m0", "dl-timed-close-m1"][k],
                vec![
                    mutex(["dl-timed-close-m0-a", "dl-timed-close-m1-a"][k], None),
                    mutex(["dl-timed-close-m0-b", "dl-timed-close-m1-b"][k], None),
                ],
                vec![How::Lock, How::Lock],
                vec![How::Lock, closing],
            )
        });
        out.check();
        assert!(out.closer_elapsed < Duration::from_secs(10));
    }
    for (k, (held, closing)) in [
        (How::Read, How::WriteFor(LONG)),
        (How::Write, How::ReadFor(LONG)),
    ]
    .into_iter()
    .enumerate()
    {
        let out = bounded("timed closer (rwlock)", move || {
            ring(
                ["dl-timed-close-rw0", "dl-timed-close-rw1"][k],
                vec![
                    rwlock(["dl-timed-close-rw0-r", "dl-timed-close-rw1-r"][k], None),
                    mutex(["dl-timed-close-rw0-m", "dl-timed-close-rw1-m"][k], None),
                ],
                vec![held, How::Lock],
                vec![How::Lock, closing],
            )
        });
        out.check();
        assert!(out.closer_elapsed < Duration::from_secs(10));
    }
}

#[test]
fn a_timed_waiter_is_part_of_another_threads_cycle() {
    let _serial = serial();
    // Thread 0 waits with a timeout; thread 1 closes the cycle through it and is refused; thread
    // 0's timed wait then succeeds (well before its timeout).
    let out = bounded("timed waiter (mutex)", || {
        ring(
            "dl-timed-mid-m",
            vec![
                mutex("dl-timed-mid-m-a", None),
                mutex("dl-timed-mid-m-b", None),
            ],
            vec![How::Lock, How::Lock],
            vec![How::LockFor(LONG), How::Lock],
        )
    });
    out.check();
    let out = bounded("timed waiter (rwlock)", || {
        ring(
            "dl-timed-mid-rw",
            vec![
                mutex("dl-timed-mid-rw-m", None),
                rwlock("dl-timed-mid-rw-r", None),
            ],
            vec![How::Lock, How::Read],
            vec![How::WriteFor(LONG), How::Lock],
        )
    });
    out.check();
}

// ----- races -----

#[test]
fn two_threads_racing_to_close_the_same_cycle_exactly_one_is_refused() {
    let _serial = serial();
    bounded("ABBA race", || {
        let cycles_before = sync_kit::deadlock::stats().cycles_detected;
        const ROUNDS: usize = 50;
        for round in 0..ROUNDS {
            let a = Arc::new(Mutex::new(0u32));
            let b = Arc::new(Mutex::new(0u32));
            let barrier = Arc::new(Barrier::new(2));
            let left = {
                let (a, b, barrier) = (a.clone(), b.clone(), barrier.clone());
                spawn(format!("dl-race-left-{round}"), move || {
                    let mut ga = a.lock().unwrap();
                    barrier.wait();
                    let r = b.lock().map(|mut gb| *gb += 1);
                    *ga += 1;
                    r
                })
            };
            let right = {
                let (a, b) = (a.clone(), b.clone());
                spawn(format!("dl-race-right-{round}"), move || {
                    let mut gb = b.lock().unwrap();
                    barrier.wait();
                    let r = a.lock().map(|mut ga| *ga += 1);
                    *gb += 1;
                    r
                })
            };
            let results = [join(left), join(right)];
            let refused = results
                .iter()
                .filter(|r| matches!(r, Err(LockError::Deadlock(_))))
                .count();
            let ok = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(
                (refused, ok),
                (1, 1),
                "round {round}: exactly one must be refused, got {results:?}"
            );
            assert_eq!(*a.lock().unwrap() + *b.lock().unwrap(), 3);
        }
        let cycles = sync_kit::deadlock::stats().cycles_detected - cycles_before;
        assert_eq!(cycles, ROUNDS as u64);
    });
}

#[test]
fn three_threads_racing_to_close_a_ring_exactly_one_is_refused() {
    let _serial = serial();
    bounded("ring race", || {
        for round in 0..20 {
            let locks: Arc<Vec<Mutex<()>>> = Arc::new((0..3).map(|_| Mutex::new(())).collect());
            let barrier = Arc::new(Barrier::new(3));
            let handles: Vec<_> = (0..3)
                .map(|i| {
                    let (locks, barrier) = (locks.clone(), barrier.clone());
                    spawn(format!("dl-ringrace-{round}-{i}"), move || {
                        let _g = locks[i].lock().unwrap();
                        barrier.wait();
                        locks[(i + 1) % 3].lock().map(drop)
                    })
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(join).collect();
            let refused = results
                .iter()
                .filter(|r| matches!(r, Err(LockError::Deadlock(_))))
                .count();
            let ok = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(
                (refused, ok),
                (1, 2),
                "round {round}: exactly one must be refused, got {results:?}"
            );
            let report = results
                .into_iter()
                .find_map(Result::err)
                .map(|e| deadlock::<()>(Err(e)))
                .unwrap();
            assert_eq!(report.cycle().len(), 3);
        }
    });
}

// ----- no false reports -----

#[test]
fn consistent_order_contention_is_never_refused() {
    let _serial = serial();
    bounded("consistent order", || {
        let before = sync_kit::deadlock::stats();
        let a = Arc::new(Mutex::with_level("dl-order-a", Level(1), 0u64));
        let b = Arc::new(RwLock::with_level("dl-order-b", Level(2), 0u64));
        let c = Arc::new(Mutex::named("dl-order-c", 0u64));
        const THREADS: u64 = 8;
        const ROUNDS: u64 = 300;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (a, b, c) = (a.clone(), b.clone(), c.clone());
                spawn(format!("dl-order-{t}"), move || {
                    for round in 0..ROUNDS {
                        match (round + t) % 3 {
                            0 => {
                                let mut ga = a.lock().unwrap();
                                let mut gb = b.write().unwrap();
                                let mut gc = c.lock().unwrap();
                                *ga += 1;
                                *gb += 1;
                                *gc += 1;
                            }
                            1 => {
                                let gb = b.read().unwrap();
                                let mut gc = c.lock().unwrap();
                                *gc += 1;
                                assert!(*gb <= THREADS * ROUNDS);
                            }
                            _ => {
                                let mut ga = a.lock().unwrap();
                                let mut gc = c.lock().unwrap();
                                *ga += 1;
                                *gc += 1;
                                std::thread::yield_now();
                            }
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(join);
        let after = sync_kit::deadlock::stats();
        assert_eq!(after.cycles_detected, before.cycles_detected);
        assert_eq!(*c.lock().unwrap(), THREADS * ROUNDS);
        assert_eq!(after.threads_waiting, before.threads_waiting);
    });
}

#[test]
fn a_chain_of_waits_is_not_a_cycle() {
    let _serial = serial();
    bounded("chain", || {
        let base = waiting();
        let cycles_before = sync_kit::deadlock::stats().cycles_detected;
        let a = Arc::new(Mutex::named("dl-chain-a", ()));
        let b = Arc::new(RwLock::named("dl-chain-b", ()));
        let c = Arc::new(Mutex::named("dl-chain-c", ()));
        let progress = Arc::new(AtomicU64::new(0));

        // t_c holds C; t_b holds B (write) and waits for C; t_a holds A and waits for B (read);
        // t_d holds nothing and waits for A; t_e waits for B (write) too.
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let t_c = {
            let (c, held_tx) = (c.clone(), held_tx.clone());
            spawn("dl-chain-c-holder", move || {
                let _c = c.lock().unwrap();
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
        };
        recv(&held_rx, "C held");
        let t_b = {
            let (b, c, held_tx, progress) =
                (b.clone(), c.clone(), held_tx.clone(), progress.clone());
            spawn("dl-chain-b-holder", move || {
                let _b = b.write().unwrap();
                held_tx.send(()).unwrap();
                c.lock().map(|_| progress.fetch_add(1, Ordering::SeqCst))
            })
        };
        recv(&held_rx, "B held");
        wait_for_waiters(base + 1);
        let t_a = {
            let (a, b, held_tx, progress) =
                (a.clone(), b.clone(), held_tx.clone(), progress.clone());
            spawn("dl-chain-a-holder", move || {
                let _a = a.lock().unwrap();
                held_tx.send(()).unwrap();
                b.read().map(|_| progress.fetch_add(1, Ordering::SeqCst))
            })
        };
        recv(&held_rx, "A held");
        wait_for_waiters(base + 2);
        let t_d = {
            let (a, progress) = (a.clone(), progress.clone());
            spawn("dl-chain-d", move || {
                a.lock().map(|_| progress.fetch_add(1, Ordering::SeqCst))
            })
        };
        wait_for_waiters(base + 3);
        let t_e = {
            let (b, progress) = (b.clone(), progress.clone());
            spawn("dl-chain-e", move || {
                b.try_write_for(LONG)
                    .map(|_| progress.fetch_add(1, Ordering::SeqCst))
            })
        };
        wait_for_waiters(base + 4);
        assert_eq!(
            progress.load(Ordering::SeqCst),
            0,
            "everyone is still waiting"
        );
        assert_eq!(sync_kit::deadlock::stats().cycles_detected, cycles_before);

        release_tx.send(()).unwrap();
        join(t_c);
        for (name, handle) in [("b", t_b), ("a", t_a), ("d", t_d), ("e", t_e)] {
            assert!(join(handle).is_ok(), "the waiter on {name} must succeed");
        }
        assert_eq!(progress.load(Ordering::SeqCst), 4);
        assert_eq!(sync_kit::deadlock::stats().cycles_detected, cycles_before);
        assert_eq!(waiting(), base);
    });
}

#[test]
fn readers_queued_behind_a_writer_without_a_cycle_are_not_refused() {
    let _serial = serial();
    bounded("queued readers", || {
        let base = waiting();
        let rw = Arc::new(RwLock::named("dl-queue-rw", 0u32));
        let m = Arc::new(Mutex::named("dl-queue-m", ()));
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        // The first reader holds the lock, and also a mutex nobody in the queue holds.
        let first = {
            let (rw, m) = (rw.clone(), m.clone());
            spawn("dl-queue-first-reader", move || {
                let _m = m.lock().unwrap();
                let _r = rw.read().unwrap();
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
        };
        recv(&held_rx, "first reader holds");
        let writer = {
            let rw = rw.clone();
            spawn("dl-queue-writer", move || rw.write().map(|mut g| *g += 1))
        };
        wait_for_waiters(base + 1);
        let readers: Vec<_> = (0..3)
            .map(|i| {
                let rw = rw.clone();
                spawn(format!("dl-queue-reader-{i}"), move || {
                    rw.read().map(|g| *g)
                })
            })
            .collect();
        wait_for_waiters(base + 4);
        release_tx.send(()).unwrap();
        join(first);
        assert!(join(writer).is_ok());
        for reader in readers {
            assert_eq!(join(reader).unwrap(), 1, "readers queued behind the writer");
        }
    });
}

#[test]
fn a_wait_that_timed_out_or_was_refused_leaves_no_trace_in_the_graph() {
    let _serial = serial();
    bounded("stale entries", || {
        let base = waiting();
        let a = Arc::new(Mutex::named("dl-stale-a", ()));
        let b = Arc::new(Mutex::named("dl-stale-b", ()));
        let (timed_tx, timed_rx) = mpsc::channel();
        let (step_tx, step_rx) = mpsc::channel::<()>();
        let ga = a.lock().unwrap();
        // The other thread holds B and fails a timed wait on A (held here): had its wait stayed
        // in the graph, this thread's wait on B below would look like a cycle.
        let other = {
            let (a, b) = (a.clone(), b.clone());
            spawn("dl-stale-other", move || {
                let _b = b.lock().unwrap();
                let timed = a.try_lock_for(Duration::from_millis(20)).map(drop);
                timed_tx.send(timed).unwrap();
                step_rx.recv().unwrap();
            })
        };
        let timed = recv(&timed_rx, "the other thread's timed wait ends");
        assert!(matches!(timed, Err(LockError::Timeout)), "{timed:?}");
        assert_eq!(waiting(), base, "a timed-out wait leaves the detector");
        // Let the other thread release B once this thread waits for it.
        let watcher = spawn("dl-stale-watcher", move || {
            wait_for_waiters(base + 1);
            step_tx.send(()).unwrap();
        });
        assert!(
            b.lock().is_ok(),
            "holding A and waiting for B closes no cycle"
        );
        join(watcher);
        join(other);
        drop(ga);
    });
}

#[test]
fn a_refused_thread_leaves_the_graph_and_later_waits_are_not_refused() {
    let _serial = serial();
    bounded("after refusal", || {
        let base = waiting();
        let m = Mutex::named("dl-after-m", ());
        let g = m.lock().unwrap();
        deadlock(m.lock());
        assert_eq!(waiting(), base);
        drop(g);
        let shared = Arc::new(Mutex::named("dl-after-shared", 0u32));
        let done = Arc::new(AtomicBool::new(false));
        let guard = shared.lock().unwrap();
        let waiter = {
            let (shared, done) = (shared.clone(), done.clone());
            spawn("dl-after-waiter", move || {
                let r = shared.lock().map(|mut g| *g += 1);
                done.store(true, Ordering::SeqCst);
                r
            })
        };
        wait_for_waiters(base + 1);
        assert!(!done.load(Ordering::SeqCst));
        drop(guard);
        assert!(join(waiter).is_ok());
        assert_eq!(*shared.lock().unwrap(), 1);
    });
}

/// The detector copies the held list of a thread about to sleep: an exclusive hold that moved to
/// the held list's base (behind more than 16 shared holds taken after it) is still in the copy,
/// so the cycle through it is refused.
#[test]
fn a_hold_below_many_shared_holds_is_seen_by_the_detector() {
    let _serial = serial();
    bounded("held list base", || {
        let m1 = Arc::new(Mutex::named("dl-base-m1", ()));
        let m2 = Arc::new(Mutex::named("dl-base-m2", ()));
        let reads: Arc<Vec<RwLock<()>>> = Arc::new((0..20).map(|_| RwLock::new(())).collect());
        let b_holds_m2 = m2.lock().unwrap();
        let (tx, rx) = mpsc::channel();
        let a = {
            let (m1, m2, reads) = (Arc::clone(&m1), Arc::clone(&m2), Arc::clone(&reads));
            spawn("dl-base-a", move || {
                let g1 = m1.lock().unwrap();
                let guards: Vec<_> = reads.iter().map(|r| r.read().unwrap()).collect();
                let held = sync_kit::held_by_current_thread();
                assert_eq!(held.len(), 21);
                assert_eq!(held[0].name(), Some("dl-base-m1"));
                tx.send(()).unwrap();
                let g2 = m2.lock().unwrap(); // waits for the main thread
                drop((g1, guards, g2));
            })
        };
        recv(&rx, "a holds m1 and 20 read locks");
        wait_for_waiters(1);
        match m1.lock() {
            Err(LockError::Deadlock(report)) => {
                assert!(
                    report
                        .cycle()
                        .iter()
                        .any(|s| s.wants.name() == Some("dl-base-m2"))
                );
            }
            other => panic!("expected a deadlock, got {:?}", other.map(|_| ())),
        }
        drop(b_holds_m2);
        join(a);
    });
}
