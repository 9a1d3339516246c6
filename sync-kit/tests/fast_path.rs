//! "No cost while nobody waits", as far as a test can see it: uncontended acquisitions never
//! touch the wait-for graph. (Their speed is measured in `benches/`, not here.) This file holds a
//! single test so that no other test in the process moves the detector's global counters.

use sync_kit::{Level, Mutex, RwLock};

#[test]
fn uncontended_acquisitions_never_enter_the_wait_for_graph() {
    let before = sync_kit::deadlock::stats();
    let plain = Mutex::new(0u64);
    let leveled = Mutex::with_level("fast-path-outer", Level(1), 0u64);
    // Unleveled, so that reading it twice is not a level violation.
    let rw = RwLock::named("fast-path-rw", 0u64);
    for _ in 0..10_000 {
        *plain.lock().unwrap() += 1;
        let mut outer = leveled.lock().unwrap();
        *outer += 1;
        *rw.write().unwrap() += 1;
        let r1 = rw.read().unwrap();
        assert!(
            rw.try_read().is_ok(),
            "no writer waits: a second read shares"
        );
        drop(r1);
        drop(outer);
        assert!(
            plain
                .try_lock_for(std::time::Duration::from_secs(1))
                .is_ok()
        );
    }
    let after = sync_kit::deadlock::stats();
    assert_eq!(
        after.waits_registered, before.waits_registered,
        "no wait was registered"
    );
    assert_eq!(after.cycles_detected, before.cycles_detected);
    assert_eq!(after.threads_waiting, 0);
    // Every acquisition was counted, none as a contention.
    assert_eq!(plain.stats().acquisitions, 20_000);
    assert_eq!(plain.stats().contentions, 0);
    assert_eq!(rw.stats().acquisitions, 30_000);
    assert_eq!(rw.stats().contentions, 0);
    assert!(sync_kit::held_by_current_thread().is_empty());
}
