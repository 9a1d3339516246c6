#![cfg(loom)]
//! temp
use std::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use sync_kit::Mutex;
#[test]
fn probe() {
    static N: AtomicUsize = AtomicUsize::new(0);
    static C: AtomicUsize = AtomicUsize::new(0);
    loom_tests::model(|| {
        N.fetch_add(1, Ordering::Relaxed);
        let m = Arc::new(Mutex::new(0usize));
        let hs: Vec<_> = (0..3).map(|_| { let m = m.clone(); loom::thread::spawn(move || { *m.lock().unwrap() += 1; }) }).collect();
        for h in hs { h.join().unwrap(); }
        if m.stats().contentions > 0 { C.fetch_add(1, Ordering::Relaxed); }
    });
    eprintln!("executions {} contended {}", N.load(Ordering::Relaxed), C.load(Ordering::Relaxed));
}
