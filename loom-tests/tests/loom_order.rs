//! loom model of lock-order checking: two threads racing to learn opposite orders.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::model;
use sync_kit::deadlock::{OrderChecking, set_order_checking};
use sync_kit::{LockError, Mutex};

/// One thread takes `a` then `b`, the other `b` then `a`, concurrently, under `Refuse`. Learning
/// an edge and checking for a path happen under one lock, so in every interleaving exactly one of
/// the two second acquisitions is refused as an order inversion (never as a deadlock, never
/// both, never neither), before it waits; the other thread then completes.
#[test]
fn racing_opposite_orders_exactly_one_is_refused() {
    model(|| {
        set_order_checking(OrderChecking::Refuse);
        let a = Arc::new(Mutex::new(0u32));
        let b = Arc::new(Mutex::new(0u32));
        let other = {
            let (a, b) = (Arc::clone(&a), Arc::clone(&b));
            thread::spawn(move || {
                let mut gb = b.lock().unwrap();
                *gb += 1;
                a.lock().map(|mut ga| *ga += 1)
            })
        };
        let mine = {
            let mut ga = a.lock().unwrap();
            *ga += 1;
            b.lock().map(|mut gb| *gb += 1)
        };
        let theirs = other.join().unwrap();
        match (&mine, &theirs) {
            (Ok(()), Err(LockError::OrderInversion(_)))
            | (Err(LockError::OrderInversion(_)), Ok(())) => {}
            other => panic!("expected exactly one order inversion, got {other:?}"),
        }
        // One at a time: holding one while taking the other would be an order question again.
        let total = *a.lock().unwrap();
        assert_eq!(total + *b.lock().unwrap(), 3);
    });
}
