use sync_kit_benches::mvcc::{KEYS, SEQUENCE, mvcc_map, mvcc_rw};
use sync_kit_benches::{random_keys, wall_time_split};
fn main() {
    let threads: u64 = std::env::args().nth(1).unwrap().parse().unwrap();
    let iters: u64 = std::env::args().nth(2).unwrap().parse().unwrap();
    let keys = random_keys(KEYS, SEQUENCE);
    let map = mvcc_map(KEYS);
    let wall = wall_time_split(iters, threads, |t, n| {
        let own = |k: u64| k - k % threads + t;
        let mut i = t as usize * 7919;
        for _ in 0..n {
            i = (i + 1) & (SEQUENCE - 1);
            mvcc_rw(&map, own(keys[i]), own(keys[(i + 1) & (SEQUENCE - 1)]));
        }
    });
    println!("{:.1} ns/commit", wall.as_nanos() as f64 / iters as f64);
}
