//! Lock benchmarks: sync-kit side by side with `parking_lot` and `std`.
//!
//! Every criterion group measures the same operation on each implementation in one run, so the
//! figures within a group are comparable (and their ratios are what counts; absolute numbers
//! depend on the machine and its load).
//!
//! Groups:
//! - `mutex_uncontended`: lock + unlock of a free mutex (sync-kit unleveled and leveled,
//!   parking_lot, std).
//! - `rwlock_read_uncontended` / `rwlock_write_uncontended`: read + unlock and write + unlock of
//!   a free reader-writer lock (sync-kit, parking_lot, std).
//! - `mutex_contended_2_threads`: two threads each lock / increment / unlock a shared mutex in a
//!   loop; the reported time is wall time per operation (both threads together).
//! - `leveled_holding_3`: lock + unlock of a leveled sync-kit mutex while the thread already holds
//!   three other leveled locks (the per-thread held list and the level check), with the same lock
//!   holding nothing and parking_lot holding three locks as references.
//! - `order_checking_nested_2`: lock `a`, then lock `b` while holding it, unlock both, on two
//!   unleveled sync-kit mutexes under `OrderChecking::Refuse` (the pair is learned on the first
//!   iteration; every later one is the per-thread lookup) and `Off`, next to parking_lot.
//! - `async_mutex_uncontended`: `lock().await` + unlock of a free `sync_kit::tokio::Mutex` next to
//!   `tokio::sync::Mutex`, each future polled once by hand with a no-op waker (no runtime: the
//!   cost of the lock alone; outside a task the thread is the owner).
//! - `hold_timing`: lock + unlock of a free sync-kit mutex with hold timing off (the default) and
//!   on (two clock reads per iteration), next to parking_lot.
//!
//! Run with `cargo bench -p sync-kit-benches --bench locks`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use sync_kit::Level;
use sync_kit_benches::wall_time_split;

/// Settings for the single-threaded groups: short, but enough samples for a stable median.
fn quick(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(100);
}

fn mutex_uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("mutex_uncontended");
    quick(&mut group);

    let m = sync_kit::Mutex::new(0u64);
    group.bench_function("sync_kit", |b| {
        b.iter(|| {
            let mut g = black_box(&m).lock().unwrap();
            *g += 1;
        });
    });

    let m = sync_kit::Mutex::with_level("bench-mutex-leveled", Level(10), 0u64);
    group.bench_function("sync_kit_leveled", |b| {
        b.iter(|| {
            let mut g = black_box(&m).lock().unwrap();
            *g += 1;
        });
    });

    let m = parking_lot::Mutex::new(0u64);
    group.bench_function("parking_lot", |b| {
        b.iter(|| {
            let mut g = black_box(&m).lock();
            *g += 1;
        });
    });

    let m = std::sync::Mutex::new(0u64);
    group.bench_function("std", |b| {
        b.iter(|| {
            let mut g = black_box(&m).lock().unwrap();
            *g += 1;
        });
    });

    group.finish();
}

fn rwlock_uncontended(c: &mut Criterion) {
    let sk = sync_kit::RwLock::new(0u64);
    let pl = parking_lot::RwLock::new(0u64);
    let st = std::sync::RwLock::new(0u64);

    let mut group = c.benchmark_group("rwlock_read_uncontended");
    quick(&mut group);
    group.bench_function("sync_kit", |b| {
        b.iter(|| black_box(*black_box(&sk).read().unwrap()));
    });
    group.bench_function("parking_lot", |b| {
        b.iter(|| black_box(*black_box(&pl).read()));
    });
    group.bench_function("std", |b| {
        b.iter(|| black_box(*black_box(&st).read().unwrap()));
    });
    group.finish();

    let mut group = c.benchmark_group("rwlock_write_uncontended");
    quick(&mut group);
    group.bench_function("sync_kit", |b| {
        b.iter(|| *black_box(&sk).write().unwrap() += 1);
    });
    group.bench_function("parking_lot", |b| {
        b.iter(|| *black_box(&pl).write() += 1);
    });
    group.bench_function("std", |b| {
        b.iter(|| *black_box(&st).write().unwrap() += 1);
    });
    group.finish();
}

/// Number of threads hammering the shared mutex in the contended group.
const THREADS: u64 = 2;

/// Runs `iters` lock / increment / unlock operations split over [`THREADS`] threads; returns
/// their wall time (see [`wall_time_split`]).
fn contended<L: Sync>(iters: u64, lock: &L, op: impl Fn(&L) + Sync) -> Duration {
    wall_time_split(iters, THREADS, |_, n| {
        for _ in 0..n {
            op(black_box(lock));
        }
    })
}

fn mutex_contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("mutex_contended_2_threads");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(50);

    let m = sync_kit::Mutex::new(0u64);
    group.bench_function("sync_kit", |b| {
        b.iter_custom(|iters| contended(iters, &m, |m| *m.lock().unwrap() += 1));
    });

    let m = parking_lot::Mutex::new(0u64);
    group.bench_function("parking_lot", |b| {
        b.iter_custom(|iters| contended(iters, &m, |m| *m.lock() += 1));
    });

    let m = std::sync::Mutex::new(0u64);
    group.bench_function("std", |b| {
        b.iter_custom(|iters| contended(iters, &m, |m| *m.lock().unwrap() += 1));
    });

    group.finish();
}

fn leveled_holding_3(c: &mut Criterion) {
    let mut group = c.benchmark_group("leveled_holding_3");
    quick(&mut group);

    let outer = [
        sync_kit::Mutex::with_level("bench-held-10", Level(10), ()),
        sync_kit::Mutex::with_level("bench-held-20", Level(20), ()),
        sync_kit::Mutex::with_level("bench-held-30", Level(30), ()),
    ];
    let target = sync_kit::Mutex::with_level("bench-target-40", Level(40), 0u64);

    // Reference: the same leveled lock with nothing held.
    group.bench_function("sync_kit_leveled_held_0", |b| {
        b.iter(|| *black_box(&target).lock().unwrap() += 1);
    });

    group.bench_function("sync_kit_leveled_held_3", |b| {
        let held: Vec<_> = outer.iter().map(|m| m.lock().unwrap()).collect();
        b.iter(|| *black_box(&target).lock().unwrap() += 1);
        drop(held);
    });

    let outer = [
        parking_lot::Mutex::new(()),
        parking_lot::Mutex::new(()),
        parking_lot::Mutex::new(()),
    ];
    let target = parking_lot::Mutex::new(0u64);
    group.bench_function("parking_lot_held_3", |b| {
        let held: Vec<_> = outer.iter().map(|m| m.lock()).collect();
        b.iter(|| *black_box(&target).lock() += 1);
        drop(held);
    });

    let outer = [
        std::sync::Mutex::new(()),
        std::sync::Mutex::new(()),
        std::sync::Mutex::new(()),
    ];
    let target = std::sync::Mutex::new(0u64);
    group.bench_function("std_held_3", |b| {
        let held: Vec<_> = outer.iter().map(|m| m.lock().unwrap()).collect();
        b.iter(|| *black_box(&target).lock().unwrap() += 1);
        drop(held);
    });

    group.finish();
}

fn order_checking_nested_2(c: &mut Criterion) {
    use sync_kit::deadlock::{OrderChecking, set_order_checking};

    let mut group = c.benchmark_group("order_checking_nested_2");
    quick(&mut group);

    let (a, b) = (sync_kit::Mutex::new(0u64), sync_kit::Mutex::new(0u64));
    for (name, policy) in [
        ("sync_kit_refuse", OrderChecking::Refuse),
        ("sync_kit_off", OrderChecking::Off),
    ] {
        set_order_checking(policy);
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let mut ga = black_box(&a).lock().unwrap();
                let mut gb = black_box(&b).lock().unwrap();
                *ga += 1;
                *gb += 1;
            });
        });
    }
    set_order_checking(OrderChecking::default());

    let (a, b) = (parking_lot::Mutex::new(0u64), parking_lot::Mutex::new(0u64));
    group.bench_function("parking_lot", |bench| {
        bench.iter(|| {
            let mut ga = black_box(&a).lock();
            let mut gb = black_box(&b).lock();
            *ga += 1;
            *gb += 1;
        });
    });

    group.finish();
}

fn hold_timing(c: &mut Criterion) {
    let mut group = c.benchmark_group("hold_timing");
    quick(&mut group);

    let off = sync_kit::Mutex::new(0u64);
    group.bench_function("sync_kit_off", |b| {
        b.iter(|| *black_box(&off).lock().unwrap() += 1);
    });
    let on = sync_kit::Mutex::new(0u64);
    on.set_hold_timing(true);
    group.bench_function("sync_kit_on", |b| {
        b.iter(|| *black_box(&on).lock().unwrap() += 1);
    });
    let pl = parking_lot::Mutex::new(0u64);
    group.bench_function("parking_lot", |b| {
        b.iter(|| *black_box(&pl).lock() += 1);
    });

    group.finish();
}

/// Polls a future that must be ready at once (an uncontended acquisition).
fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("an uncontended acquisition waited"),
    }
}

fn async_mutex_uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("async_mutex_uncontended");
    quick(&mut group);

    let m = sync_kit::tokio::Mutex::new(0u64);
    group.bench_function("sync_kit", |b| {
        b.iter(|| *ready(black_box(&m).lock()).unwrap() += 1);
    });
    let m = tokio::sync::Mutex::new(0u64);
    group.bench_function("tokio", |b| {
        b.iter(|| *ready(black_box(&m).lock()) += 1);
    });

    group.finish();
}

criterion_group!(
    benches,
    async_mutex_uncontended,
    hold_timing,
    order_checking_nested_2,
    mutex_uncontended,
    rwlock_uncontended,
    mutex_contended,
    leveled_holding_3
);
criterion_main!(benches);
