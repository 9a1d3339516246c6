//! A tour of sync-kit in one run: a lock hierarchy, a lock-order inversion refused before any
//! thread waits, an ABBA deadlock refused with a report instead of a hang, and the live
//! statistics of every named lock.
//!
//! `cargo run -p sync-kit --example deadlock_demo`
//!
//! With the dashboard (`sync_kit::observe`): after the tour it serves the page, prints its URL,
//! keeps a few threads busy on named locks and provokes a refused ABBA cycle and a refused
//! order inversion every few seconds, so that one is always drawn:
//!
//! `cargo run -p sync-kit --example deadlock_demo --features observe [-- --addr 127.0.0.1:7880]
//! [--for-secs N]` (it runs until stopped, or for N seconds).

use std::sync::{Arc, Barrier};
use std::thread;

use sync_kit::deadlock::{OrderChecking, set_order_checking};
use sync_kit::{Level, LockError, Mutex, RwLock};

fn main() {
    let accounts = Arc::new(Mutex::with_level("accounts", Level(10), vec![100u64, 50]));
    let ledger = Arc::new(RwLock::with_level(
        "ledger",
        Level(20),
        Vec::<String>::new(),
    ));

    // 1. In hierarchy order everything works.
    {
        let balances = accounts.lock().expect("in order");
        ledger
            .write()
            .expect("level 20 after level 10")
            .push(format!("total {}", balances.iter().sum::<u64>()));
    }

    // 2. Out of order is refused at once, before it could ever deadlock.
    {
        let _ledger = ledger.read().expect("free");
        match accounts.lock() {
            Err(error @ LockError::LevelViolation { .. }) => println!("refused: {error}\n"),
            other => println!("unexpected: {other:?}"),
        }
    }

    // 3. Unleveled locks get their order from experience: `a` before `b` once, then `b` before
    //    `a` is refused at once, on one thread, with nobody waiting.
    set_order_checking(OrderChecking::Refuse);
    match order_inversion() {
        Err(error @ LockError::OrderInversion(_)) => println!("refused: {error}\n"),
        other => println!("unexpected: {other:?}"),
    }

    // 4. Two unleveled locks taken in opposite orders by two threads: a real ABBA deadlock.
    //    (Order checking would refuse the second order before anyone waits; turned off here to
    //    show the wait-for detector.) sync-kit refuses the acquisition that would close the
    //    cycle; the other thread proceeds.
    for outcome in abba() {
        match outcome {
            Ok(()) => println!("one transfer completed"),
            Err(error) => println!("the other was refused:\n{error}\n"),
        }
    }

    // 5. Statistics of every live named lock, and of the detector, as JSON.
    let stats = serde_json::json!({
        "locks": sync_kit::stats::all(),
        "detector": sync_kit::deadlock::stats(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&stats).expect("serializable")
    );

    #[cfg(feature = "observe")]
    live::run();
}

/// Step 3: `a` before `b` once, then `a` while holding `b` (refused under `Refuse`).
fn order_inversion() -> Result<(), LockError> {
    let a = Mutex::named("a", ());
    let b = Mutex::named("b", ());
    drop((a.lock()?, b.lock()?));
    let _b = b.lock()?;
    a.lock().map(drop)
}

/// Step 4: two threads take `left` and `right` in opposite orders; returns both outcomes.
fn abba() -> [Result<(), LockError>; 2] {
    let policy = sync_kit::deadlock::order_checking();
    set_order_checking(OrderChecking::Off);
    let left = Arc::new(Mutex::named("left", 0u32));
    let right = Arc::new(Mutex::named("right", 0u32));
    let both_hold_one = Arc::new(Barrier::new(2));
    let spawn = |name: &str, first: Arc<Mutex<u32>>, second: Arc<Mutex<u32>>| {
        let barrier = Arc::clone(&both_hold_one);
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut a = first.lock().expect("free at start");
                *a += 1;
                barrier.wait();
                second.lock().map(|mut b| *b += 1)
            })
            .expect("spawn")
    };
    let t1 = spawn("transfer-1", Arc::clone(&left), Arc::clone(&right));
    let t2 = spawn("transfer-2", Arc::clone(&right), Arc::clone(&left));
    let outcomes = [t1.join().expect("no panic"), t2.join().expect("no panic")];
    set_order_checking(policy);
    outcomes
}

#[cfg(feature = "observe")]
mod live {
    //! The dashboard: served, fed by busy threads and a refusal every few seconds.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::thread;
    use std::time::{Duration, Instant};

    use sync_kit::deadlock::{OrderChecking, set_order_checking};
    use sync_kit::{Level, Mutex, RwLock};

    pub(super) fn run() {
        let mut addr = "127.0.0.1:7880".to_owned();
        let mut for_secs: Option<u64> = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--addr" => addr = args.next().expect("--addr ADDR"),
                "--for-secs" => {
                    for_secs = Some(
                        args.next()
                            .and_then(|s| s.parse().ok())
                            .expect("--for-secs N"),
                    )
                }
                other => panic!("unknown argument {other:?} (expected --addr ADDR, --for-secs N)"),
            }
        }
        let rounds = Arc::new(AtomicU64::new(0));
        let shown = Arc::clone(&rounds);
        let started = Instant::now();
        let bound = sync_kit::observe::serve_with_panels(addr.as_str(), move || {
            serde_json::json!([{
                "title": "deadlock_demo",
                "rows": [
                    ["rounds of refusals provoked", shown.load(Ordering::Relaxed)],
                    ["every", "3 s: an ABBA cycle (left/right), an order inversion (a/b)"],
                    ["running for", format!("{} s", started.elapsed().as_secs())],
                ],
            }])
        })
        .expect("bind the dashboard");
        println!("dashboard: http://{bound}/");

        // Busy threads on leveled locks (in hierarchy order), so the table moves; their holds
        // are timed, so the hold columns fill too.
        sync_kit::stats::set_hold_timing(true);
        let accounts = Arc::new(Mutex::with_level("balances", Level(10), 0u64));
        let journal = Arc::new(RwLock::with_level("journal", Level(20), Vec::<u64>::new()));
        for worker in 0..3 {
            let (accounts, journal) = (Arc::clone(&accounts), Arc::clone(&journal));
            thread::Builder::new()
                .name(format!("worker-{worker}"))
                .spawn(move || {
                    loop {
                        {
                            let mut total = accounts.lock().expect("in order");
                            *total += 1;
                            let mut journal = journal.write().expect("level 20 after 10");
                            journal.push(*total);
                            if journal.len() > 1000 {
                                journal.clear();
                            }
                            thread::sleep(Duration::from_micros(200));
                        }
                        let _ = journal.read().expect("alone").len();
                        thread::sleep(Duration::from_millis(2 + worker));
                    }
                })
                .expect("spawn a worker");
        }

        loop {
            set_order_checking(OrderChecking::Refuse);
            let _ = super::order_inversion();
            let _ = super::abba();
            rounds.fetch_add(1, Ordering::Relaxed);
            if for_secs.is_some_and(|limit| started.elapsed() >= Duration::from_secs(limit)) {
                return;
            }
            thread::sleep(Duration::from_secs(3));
        }
    }
}
