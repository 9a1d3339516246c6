//! Commits on disjoint keys, one thread against two, in many short alternating rounds: for a
//! machine shared with other builds, where criterion's long back-to-back groups see the load
//! change between the one-thread and the two-thread group.
//!
//! Each round times the `commit_1_thread` / `commit_2_threads` workload of `benches/mvcc.rs`
//! (begin, read one key, write another, commit, on 100k keys; two threads on disjoint keys), the
//! same two threads each on a map of its own (nothing shared: what two threads can do on this
//! machine at best, with twice the data in the caches), then the `RwLock<HashMap>` floor, one
//! thread and two, each after an unmeasured run of the same length (warm caches: the key
//! sequence's whole working set touched).
//! Printed: the minimum and the median over the rounds of the wall time per commit, and of the
//! two-thread ÷ one-thread ratios taken within each round.
//!
//! ```text
//! cargo run --release -p sync-kit-benches --example mvcc_scaling -- 15
//! ```

use sync_kit_benches::mvcc::{KEYS, SEQUENCE, hash_map, locked_rw, mvcc_map, mvcc_rw};
use sync_kit_benches::{random_keys, wall_time_split};

/// Wall nanoseconds per operation of `iters` operations split over `threads` threads on disjoint
/// keys (thread `t` uses keys ≡ t modulo `threads`), as `benches/mvcc.rs` does.
fn per_op(iters: u64, threads: u64, keys: &[u64], op: &(dyn Fn(u64, u64) + Sync)) -> f64 {
    let wall = wall_time_split(iters, threads, |t, n| {
        let own = |k: u64| k - k % threads + t;
        let mut i = t as usize * 7919;
        for _ in 0..n {
            i = (i + 1) & (SEQUENCE - 1);
            op(own(keys[i]), own(keys[(i + 1) & (SEQUENCE - 1)]));
        }
    });
    wall.as_nanos() as f64 / iters as f64
}

/// (minimum, median).
fn min_median(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[0], values[values.len() / 2])
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(15, |n| n.parse().expect("rounds: a number"));
    let keys = random_keys(KEYS, SEQUENCE);
    let (map, other_map) = (mvcc_map(KEYS), mvcc_map(KEYS));
    let locked = parking_lot::RwLock::new(hash_map(KEYS));
    let mvcc = |r, w| mvcc_rw(&map, r, w);
    // Thread t's keys are ≡ t (mod 2): thread 1 on a map of its own.
    let separate = |r: u64, w: u64| {
        mvcc_rw(
            if r.is_multiple_of(2) {
                &map
            } else {
                &other_map
            },
            r,
            w,
        )
    };
    let floor = |r, w| locked_rw(&locked, r, w);
    // Warm-up.
    per_op(100_000, 1, &keys, &mvcc);
    per_op(100_000, 2, &keys, &mvcc);
    let mut columns: [Vec<f64>; 8] = Default::default();
    // Each measurement follows an unmeasured run of the same workload, so that every one
    // starts with its data in the caches (before the twelfth session the one-thread run came
    // right after the floor's, with the map's entries evicted, and came out up to twice as slow
    // as criterion's one-thread group: the ratios favoured two threads).
    let warm = |iters: u64, threads: u64, op: &(dyn Fn(u64, u64) + Sync)| {
        per_op(iters, threads, &keys, op);
        per_op(iters, threads, &keys, op)
    };
    for _ in 0..rounds {
        let one = warm(100_000, 1, &mvcc);
        let two = warm(100_000, 2, &mvcc);
        let two_separate = warm(100_000, 2, &separate);
        let floor_one = warm(1_000_000, 1, &floor);
        let floor_two = warm(1_000_000, 2, &floor);
        for (column, value) in columns.iter_mut().zip([
            one,
            two,
            two / one,
            two_separate,
            two_separate / one,
            floor_one,
            floor_two,
            floor_two / floor_one,
        ]) {
            column.push(value);
        }
    }
    let names = [
        "sync_kit 1 thread (ns)",
        "sync_kit 2 threads (ns)",
        "sync_kit 2 ÷ 1",
        "2 threads, 2 maps (ns)",
        "2 maps ÷ 1 thread",
        "floor 1 thread (ns)",
        "floor 2 threads (ns)",
        "floor 2 ÷ 1",
    ];
    println!("{rounds} rounds: minimum / median");
    for (name, column) in names.iter().zip(columns) {
        let (min, median) = min_median(column);
        println!("{name:<26} {min:>9.2} / {median:>9.2}");
    }
}
