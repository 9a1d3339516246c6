//! Loops for instruction counting: `benches/scripts/instructions.sh` runs each one under
//! valgrind's callgrind at two iteration counts and divides the difference, which leaves the
//! instructions of one iteration (setup and teardown cancel out).
//!
//! `instructions <op> <iterations>` runs one loop; `instructions` alone (as `cargo bench` runs
//! it) lists the operations. Every operation runs on a free lock (or a bucket that grants), on one
//! thread: the uncontended paths.
//!
//! | op | loop body |
//! |---|---|
//! | `sync_kit_mutex` / `parking_lot_mutex` | lock, increment, unlock |
//! | `sync_kit_read` / `parking_lot_read` | read lock, read, unlock |
//! | `sync_kit_write` / `parking_lot_write` | write lock, increment, unlock |
//! | `sync_kit_bucket` / `governor_bucket` | `try_acquire(1)` / `check()` on a bucket that grants |
//! | `sync_kit_bucket_fake_clock` | `try_acquire(1)` with a fake clock (no clock read) |

use std::hint::black_box;
use std::num::NonZeroU32;

use sync_kit::ratelimit::{FakeClock, Quota, TokenBucket};

const OPS: [&str; 9] = [
    "sync_kit_mutex",
    "parking_lot_mutex",
    "sync_kit_read",
    "parking_lot_read",
    "sync_kit_write",
    "parking_lot_write",
    "sync_kit_bucket",
    "sync_kit_bucket_fake_clock",
    "governor_bucket",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(op), Some(n)) = (
        args.first(),
        args.get(1).and_then(|n| n.parse::<u64>().ok()),
    ) else {
        println!(
            "instruction-count loops (run by benches/scripts/instructions.sh): {}",
            OPS.join(", ")
        );
        return;
    };
    match op.as_str() {
        "sync_kit_mutex" => {
            let m = sync_kit::Mutex::new(0u64);
            for _ in 0..n {
                *black_box(&m).lock().unwrap() += 1;
            }
        }
        "parking_lot_mutex" => {
            let m = parking_lot::Mutex::new(0u64);
            for _ in 0..n {
                *black_box(&m).lock() += 1;
            }
        }
        "sync_kit_read" => {
            let l = sync_kit::RwLock::new(0u64);
            for _ in 0..n {
                black_box(*black_box(&l).read().unwrap());
            }
        }
        "parking_lot_read" => {
            let l = parking_lot::RwLock::new(0u64);
            for _ in 0..n {
                black_box(*black_box(&l).read());
            }
        }
        "sync_kit_write" => {
            let l = sync_kit::RwLock::new(0u64);
            for _ in 0..n {
                *black_box(&l).write().unwrap() += 1;
            }
        }
        "parking_lot_write" => {
            let l = parking_lot::RwLock::new(0u64);
            for _ in 0..n {
                *black_box(&l).write() += 1;
            }
        }
        "sync_kit_bucket" => {
            let bucket = TokenBucket::new(1_000_000_000, u32::MAX);
            for _ in 0..n {
                black_box(black_box(&bucket).try_acquire(1).is_ok());
            }
        }
        "sync_kit_bucket_fake_clock" => {
            let bucket = TokenBucket::with_clock(
                Quota::per_second(1_000_000_000, u32::MAX),
                FakeClock::new(),
            );
            for _ in 0..n {
                black_box(black_box(&bucket).try_acquire(1).is_ok());
            }
        }
        "governor_bucket" => {
            let nz = |n| NonZeroU32::new(n).expect("non-zero");
            let quota = governor::Quota::per_second(nz(1_000_000_000)).allow_burst(nz(u32::MAX));
            let limiter = governor::RateLimiter::direct(quota);
            for _ in 0..n {
                black_box(black_box(&limiter).check().is_ok());
            }
        }
        other => {
            eprintln!("unknown op {other:?}; one of: {}", OPS.join(", "));
            std::process::exit(2);
        }
    }
}
