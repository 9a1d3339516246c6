//! loom models of the async locks' wait path (`sync_kit::tokio`, built under loom without tokio:
//! every owner is a thread, and futures are driven by `loom::future::block_on`).
#![cfg(loom)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use loom::future::block_on;
use loom::sync::Arc;
use loom::thread;
use loom_tests::model;
use sync_kit::tokio::Mutex;

/// The detector's `threads_waiting` is process-wide: the tests of this file run one at a time, so
/// one test's waiters never show up in the other's count.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn increment(counter: &Mutex<u32>) {
    block_on(async {
        let mut guard = counter.lock().await.expect("one lock held: never refused");
        let seen = *guard;
        *guard = seen + 1;
    });
}

/// Two spawned threads and main increment through `lock().await`: every interleaving ends with
/// the exact count, and every queued waiter is handed the lock by a release and woken (loom
/// reports a deadlock if a waiter is left asleep).
#[test]
fn async_mutex_mutual_exclusion_and_no_lost_wakeup() {
    let _serial = one_at_a_time();
    model(|| {
        let counter = Arc::new(Mutex::new(0u32));
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
        assert_eq!(*block_on(counter.lock()).unwrap(), 3);
        assert!(!counter.is_locked());
    });
}

/// A `lock()` future is polled once (queued behind main's hold) and dropped, racing with main's
/// release: whether the release granted it the lock first or not, the cancelled wait leaves the
/// queue and the graph and passes on any lock it was handed, so main locks again, and nothing is
/// left waiting.
#[test]
fn async_cancelled_wait_leaves_nothing_behind() {
    let _serial = one_at_a_time();
    model(|| {
        let waiting_before = sync_kit::deadlock::stats().threads_waiting;
        let m = Arc::new(Mutex::new(0u32));
        let guard = block_on(m.lock()).unwrap();
        let canceller = {
            let m = Arc::clone(&m);
            thread::spawn(move || {
                let mut future = pin!(m.lock());
                let mut cx = Context::from_waker(Waker::noop());
                // Pending: queued, and dropped right after. Ready: main had released already.
                if let Poll::Ready(guard) = future.as_mut().poll(&mut cx) {
                    drop(guard.unwrap());
                }
            })
        };
        drop(guard);
        canceller.join().unwrap();
        *block_on(m.lock()).unwrap() += 1;
        assert!(!m.is_locked());
        assert_eq!(
            sync_kit::deadlock::stats().threads_waiting,
            waiting_before,
            "the abandoned wait left the graph"
        );
    });
}
