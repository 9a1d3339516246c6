//! `sync_kit::tokio::{Mutex, RwLock}`: the blocking locks' guarantees with tasks as waiters.
//!
//! Proves, on multi-threaded runtimes: an ABBA between two tasks refuses one `lock().await` with a
//! report naming both tasks and both locks, and the other proceeds; guards held across `.await`
//! stay recorded for their task (not their thread); a `lock()` future dropped while queued
//! leaves no wait behind (no later false refusal, the queue moves on); levels and order checking
//! apply; writer preference holds; many tasks hammering mutexes and rwlocks keep exact counts.
//!
//! Tests read the process-wide detector probe or set the process-wide order-checking policy:
//! every test holds `common::serial()`.

mod common;

use std::sync::Arc;

use common::{bounded, serial};
use sync_kit::deadlock::{OrderChecking, set_order_checking};
use sync_kit::tokio::{Mutex, RwLock, held_by_current_task};
use sync_kit::{Level, LockError};
use tokio::sync::{Barrier, oneshot};

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn waiting() -> u64 {
    sync_kit::deadlock::stats().threads_waiting
}

/// Yields until `done` holds (bounded by the test body's timeout).
async fn until(mut done: impl FnMut() -> bool) {
    while !done() {
        tokio::task::yield_now().await;
    }
}

#[test]
fn abba_between_two_tasks_refuses_one_naming_both_tasks_and_locks() {
    let _serial = serial();
    // Both orders on purpose, to reach the wait-for graph: learned-order checking would refuse
    // the second order before any task waits.
    set_order_checking(OrderChecking::Off);
    bounded("async ABBA", || {
        runtime(2).block_on(async {
            let a = Arc::new(Mutex::named("tk-abba-a", 0u32));
            let b = Arc::new(Mutex::named("tk-abba-b", 0u32));
            let barrier = Arc::new(Barrier::new(2));
            let spawn = |first: Arc<Mutex<u32>>, second: Arc<Mutex<u32>>| {
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    let id = tokio::task::id().to_string();
                    let mut g1 = first.lock().await.expect("free at start");
                    *g1 += 1;
                    barrier.wait().await;
                    let outcome = second.lock().await.map(|mut g2| *g2 += 1);
                    drop(g1);
                    outcome.map(|()| id.clone()).map_err(|e| (e, id))
                })
            };
            let t1 = spawn(Arc::clone(&a), Arc::clone(&b));
            let t2 = spawn(Arc::clone(&b), Arc::clone(&a));
            let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
            let (refused, ok_id) = match (r1, r2) {
                (Err((e, _)), Ok(id)) | (Ok(id), Err((e, _))) => (e, id),
                other => panic!("expected exactly one refusal, got {other:?}"),
            };
            let LockError::Deadlock(report) = refused else {
                panic!("expected a deadlock, got {refused:?}");
            };
            let text = report.to_string();
            assert!(text.contains(&format!("task {ok_id}")), "{text}");
            assert_eq!(report.cycle().len(), 2, "{text}");
            assert!(report.cycle().iter().all(|step| step.thread.task.is_some()));
            assert!(
                text.contains("tk-abba-a") && text.contains("tk-abba-b"),
                "{text}"
            );
            // One task completed both increments, the other only its first.
            assert_eq!(*a.lock().await.unwrap() + *b.lock().await.unwrap(), 3);
            Ok::<(), LockError>(())
        })
    })
    .unwrap();
    set_order_checking(OrderChecking::default());
}

#[test]
fn guards_held_across_await_move_with_their_task() {
    let _serial = serial();
    bounded("held per task", || {
        runtime(2).block_on(async {
            let locks: Vec<Arc<Mutex<u32>>> = (0..4)
                .map(|i| Arc::new(Mutex::named(format!("tk-held-{i}"), 0)))
                .collect();
            let tasks: Vec<_> = locks
                .iter()
                .cloned()
                .map(|lock| {
                    tokio::spawn(async move {
                        let mut guard = lock.lock().await.unwrap();
                        let me = std::thread::current().id();
                        let mut moved = false;
                        for _ in 0..200 {
                            tokio::task::yield_now().await; // may resume on another worker
                            moved |= std::thread::current().id() != me;
                            let held = held_by_current_task();
                            assert_eq!(held.len(), 1, "{held:?}");
                            assert_eq!(held[0].lock.id, lock.info().id);
                            *guard += 1;
                        }
                        drop(guard);
                        assert!(held_by_current_task().is_empty());
                        moved
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            for lock in &locks {
                assert_eq!(*lock.lock().await.unwrap(), 200);
            }
            // This thread (outside any task) holds nothing either.
            assert!(held_by_current_task().is_empty());
        });
    });
}

#[test]
fn a_dropped_lock_future_leaves_no_wait_behind() {
    let _serial = serial();
    // Task B holds `x` and waits for `m`; main holds `m` and later waits for `x`: opposite orders
    // on purpose (the point is that B's abandoned wait must not make main's wait a "cycle").
    set_order_checking(OrderChecking::Off);
    bounded("cancellation", || {
        runtime(2).block_on(async {
            let m = Arc::new(Mutex::named("tk-cancel-m", 0u32));
            let x = Arc::new(Mutex::named("tk-cancel-x", 0u32));
            let base = waiting();
            let gm = m.lock().await.unwrap();
            let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
            let b = {
                let (m, x) = (Arc::clone(&m), Arc::clone(&x));
                tokio::spawn(async move {
                    let gx = x.lock().await.unwrap();
                    tokio::select! {
                        _ = m.lock() => panic!("m is held by main until B gave up"),
                        _ = cancel_rx => {}
                    }
                    // Gone from the graph: only main's coming wait for `x` will be there.
                    until(|| waiting() == base + 1).await;
                    drop(gx);
                })
            };
            until(|| waiting() == base + 1).await; // B is queued on `m`
            cancel_tx.send(()).unwrap();
            until(|| waiting() == base).await; // ... and gave up
            // Main holds `m` and waits for `x` (held by B): no cycle any more.
            let gx = x.lock().await.expect("B's abandoned wait left no edge");
            drop(gx);
            b.await.unwrap();
            drop(gm);
            // The queue moved on: `m` is free, and its stats counted no wait for the abandoned one.
            assert!(m.try_lock().is_ok());
            assert_eq!(m.stats().contentions, 0);
            assert_eq!(waiting(), base);
        });
    });
    set_order_checking(OrderChecking::default());
}

#[test]
fn levels_and_learned_order_apply_to_tasks() {
    let _serial = serial();
    set_order_checking(OrderChecking::Refuse);
    bounded("levels and order", || {
        runtime(2).block_on(async {
            tokio::spawn(async {
                let low = Mutex::with_level("tk-lv-low", Level(10), ());
                let high = RwLock::with_level("tk-lv-high", Level(20), ());
                let _h = high.read().await.unwrap();
                tokio::task::yield_now().await;
                match low.lock().await {
                    Err(LockError::LevelViolation { held, requested }) => {
                        assert_eq!(held.name(), Some("tk-lv-high"));
                        assert_eq!(requested.name(), Some("tk-lv-low"));
                    }
                    other => panic!("expected a level violation, got {:?}", other.map(drop)),
                }
                // try_lock is level-checked too.
                assert!(matches!(
                    low.try_lock(),
                    Err(LockError::LevelViolation { .. })
                ));

                let a = Mutex::named("tk-ord-a", ());
                let b = Mutex::named("tk-ord-b", ());
                {
                    let _a = a.lock().await.unwrap();
                    let _b = b.lock().await.unwrap(); // learned: a before b
                }
                let _b = b.lock().await.unwrap();
                match a.lock().await {
                    Err(LockError::OrderInversion(report)) => {
                        assert_eq!(report.requested.name(), Some("tk-ord-a"));
                    }
                    other => panic!("expected an order inversion, got {:?}", other.map(drop)),
                }
                assert!(
                    a.try_lock().is_ok(),
                    "a try_lock that succeeds is never refused"
                );
            })
            .await
            .unwrap();
        });
    });
    set_order_checking(OrderChecking::default());
}

#[test]
fn a_queued_writer_holds_new_readers_back() {
    let _serial = serial();
    bounded("writer preference", || {
        runtime(2).block_on(async {
            let lock = Arc::new(RwLock::named("tk-wp", Vec::<&str>::new()));
            let base = waiting();
            let first = lock.read().await.unwrap();
            let writer = {
                let lock = Arc::clone(&lock);
                tokio::spawn(async move { lock.write().await.unwrap().push("writer") })
            };
            until(|| waiting() == base + 1).await; // the writer is queued
            assert!(
                matches!(lock.try_read(), Err(LockError::Timeout)),
                "no reader overtakes a queued writer"
            );
            let second_writer = {
                let lock = Arc::clone(&lock);
                tokio::spawn(async move { lock.write().await.unwrap().push("after") })
            };
            until(|| waiting() == base + 2).await;
            drop(first);
            writer.await.unwrap();
            second_writer.await.unwrap();
            assert_eq!(*lock.read().await.unwrap(), ["writer", "after"]);
        });
    });
}

#[test]
fn many_tasks_on_a_multi_threaded_runtime_keep_exact_counts() {
    let _serial = serial();
    bounded("stress", || {
        const TASKS: u64 = 32;
        const ROUNDS: u64 = 200;
        runtime(4).block_on(async {
            let counter = Arc::new(Mutex::named("tk-stress-m", 0u64));
            let table = Arc::new(RwLock::named("tk-stress-rw", (0u64, 0u64)));
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let (counter, table) = (Arc::clone(&counter), Arc::clone(&table));
                    tokio::spawn(async move {
                        for round in 0..ROUNDS {
                            {
                                let mut c = counter.lock().await.unwrap();
                                let seen = *c;
                                tokio::task::yield_now().await; // held across an await
                                *c = seen + 1;
                            }
                            if (t + round) % 4 == 0 {
                                let mut w = table.write().await.unwrap();
                                w.0 += 1;
                                tokio::task::yield_now().await;
                                w.1 += 1;
                            } else {
                                let r = table.read().await.unwrap();
                                assert_eq!(r.0, r.1, "a reader saw a half-done write");
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            assert_eq!(*counter.lock().await.unwrap(), TASKS * ROUNDS);
            let writes = (0..TASKS)
                .flat_map(|t| (0..ROUNDS).map(move |r| (t + r) % 4 == 0))
                .filter(|&w| w)
                .count() as u64;
            assert_eq!(*table.read().await.unwrap(), (writes, writes));
            assert_eq!(counter.stats().acquisitions, TASKS * ROUNDS + 1);
            assert_eq!(table.stats().acquisitions, TASKS * ROUNDS + 1);
            assert!(held_by_current_task().is_empty());
        });
    });
}
