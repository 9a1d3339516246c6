//! `sync_kit::work::RangeCoordinator` benchmarks: a SHA-256 proof-of-work seal with 1 and 2
//! workers, and the coordinator's cost per chunk next to a bare `AtomicU64::fetch_add` cursor.
//!
//! The work: an 80-byte header (its first 8 bytes are a header number, so every seal is a new
//! search) followed by an 8-byte little-endian nonce; a seal is the first nonce reported whose
//! SHA-256 has [`DIFFICULTY`] leading zero bits (about 2¹³ hashes per seal on average, a
//! geometric distribution, so each figure averages many headers: the iterations cycle through
//! [`HEADERS`] of them, the same sequence for every variant). The first 64 bytes are hashed once
//! per header (the midstate) and cloned for each nonce, as miners do.
//!
//! Groups:
//! - `pow_seal_13_bits`: one seal per iteration. `plain_loop` is one thread trying nonces in
//!   order with no coordinator (the floor); `search_1_worker` and `search_2_workers` call
//!   `RangeCoordinator::search(0..u64::MAX, workers, 64, check)` with chunks of 1,024 nonces
//!   (which arms a job each time and, with 2 workers, spawns and joins a scoped thread for the
//!   second: that cost is in the figure).
//! - `chunk_overhead`: taking one chunk. `fetch_add` is the floor (one `fetch_add` on a cursor and
//!   the chunk's bounds computed from it); `next_chunk` is the coordinator's hand-out (one status
//!   load, one compare-exchange); `next_chunk+finish_chunk` adds ending it (one status load, one
//!   compare-exchange). With 2 threads both hammer one cursor: wall time per chunk, both threads
//!   together. `should_stop` next to a plain `AtomicBool` load.
//! - After criterion, `ratios` (only under `cargo bench`; `WORK_RATIOS=0` skips it): five rounds
//!   of 512 headers sealed by the plain loop, then with 1 worker, then with 2, and the median
//!   speed-up; the same at 16 bits (128 headers a round), where a seal is 8 times the work and the
//!   fixed cost of a search (arming, spawning and joining its thread, also printed) weighs 8
//!   times less; then the per-chunk cost ratio over 10⁷ chunks. One run reports every ratio.
//!
//! Run with `cargo bench -p sync-kit-benches --bench work -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, criterion_group, measurement::WallTime};
use sha2::{Digest, Sha256};
use sync_kit::work::{JobOutcome, RangeCoordinator};
use sync_kit_benches::wall_time_split;

/// Leading zero bits a seal's hash must have.
const DIFFICULTY: u32 = 13;
/// Headers cycled through by the seal benchmarks.
const HEADERS: u64 = 256;
/// Nonces per chunk in the seal benchmarks.
const CHUNK: u64 = 1024;
/// Nonces between two `should_stop` calls.
const BATCH: u64 = 64;

/// A header to seal: the midstate after its first 64 bytes, its last 16, and the difficulty.
struct Header {
    midstate: Sha256,
    tail: [u8; 16],
    difficulty: u32,
}

impl Header {
    /// Header number `n` at [`DIFFICULTY`].
    fn new(n: u64) -> Self {
        Self::with_difficulty(n, DIFFICULTY)
    }

    /// Header number `n`: 8 bytes of `n`, then a fixed pattern up to 80 bytes.
    fn with_difficulty(n: u64, difficulty: u32) -> Self {
        let mut bytes = [0u8; 80];
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        for (i, b) in bytes.iter_mut().enumerate().skip(8) {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        let mut midstate = Sha256::new();
        midstate.update(&bytes[..64]);
        let mut tail = [0u8; 16];
        tail.copy_from_slice(&bytes[64..]);
        Self {
            midstate,
            tail,
            difficulty,
        }
    }

    /// Whether `nonce` seals this header.
    #[inline]
    fn seals(&self, nonce: u64) -> bool {
        let mut hasher = self.midstate.clone();
        hasher.update(self.tail);
        hasher.update(nonce.to_le_bytes());
        let digest = hasher.finalize();
        u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]).leading_zeros()
            >= self.difficulty
    }
}

/// The floor: one thread, nonces in order, no coordinator.
fn plain_seal(header: &Header) -> u64 {
    (0..u64::MAX)
        .find(|&nonce| header.seals(nonce))
        .expect("a seal exists")
}

/// A seal through the coordinator with `workers` threads.
fn coordinated_seal(coordinator: &RangeCoordinator, header: &Header, workers: usize) -> u64 {
    match coordinator.search(0..u64::MAX, workers, BATCH, |nonce| header.seals(nonce)) {
        JobOutcome::Found(nonce) => nonce,
        other => panic!("no seal: {other:?}"),
    }
}

fn seal_group(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
}

fn pow_seal(c: &mut Criterion) {
    let headers: Vec<Header> = (0..HEADERS).map(Header::new).collect();
    let mut group = c.benchmark_group("pow_seal_13_bits");
    seal_group(&mut group);
    let mut next = 0usize;
    group.bench_function("plain_loop", |b| {
        b.iter(|| {
            next = (next + 1) % headers.len();
            black_box(plain_seal(&headers[next]))
        });
    });
    let coordinator = RangeCoordinator::new(CHUNK);
    for (name, workers) in [("search_1_worker", 1), ("search_2_workers", 2)] {
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                next = (next + 1) % headers.len();
                black_box(coordinated_seal(&coordinator, &headers[next], workers))
            });
        });
    }
    group.finish();
}

/// The bounds of chunk `index` of a job starting at 0 with chunks of `step`.
#[inline]
fn bounds(index: u64, step: u64) -> (u64, u64) {
    let from = index * step;
    (from, from + step)
}

fn chunk_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunk_overhead");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(100);

    // 0..u64::MAX in chunks of 1 becomes 2^40 - 1 chunks of 2^24: never exhausted here.
    let coordinator = RangeCoordinator::new(1);
    let job = coordinator.arm(0..u64::MAX);
    let cursor = AtomicU64::new(0);

    group.bench_function("fetch_add/1_thread", |b| {
        b.iter(|| bounds(cursor.fetch_add(1, Ordering::Relaxed), 1 << 24));
    });
    group.bench_function("next_chunk/1_thread", |b| {
        b.iter(|| coordinator.next_chunk(job).expect("chunks left"));
    });
    group.bench_function("next_chunk+finish_chunk/1_thread", |b| {
        b.iter(|| {
            let chunk = coordinator.next_chunk(job).expect("chunks left");
            coordinator.finish_chunk(&chunk);
        });
    });
    group.bench_function("fetch_add/2_threads", |b| {
        b.iter_custom(|iters| {
            wall_time_split(iters, 2, |_, n| {
                for _ in 0..n {
                    black_box(bounds(cursor.fetch_add(1, Ordering::Relaxed), 1 << 24));
                }
            })
        });
    });
    group.bench_function("next_chunk+finish_chunk/2_threads", |b| {
        b.iter_custom(|iters| {
            wall_time_split(iters, 2, |_, n| {
                for _ in 0..n {
                    let chunk = coordinator.next_chunk(job).expect("chunks left");
                    coordinator.finish_chunk(black_box(&chunk));
                }
            })
        });
    });
    let flag = AtomicBool::new(false);
    group.bench_function("should_stop", |b| {
        b.iter(|| coordinator.should_stop(black_box(job)));
    });
    group.bench_function("atomic_bool_load", |b| {
        b.iter(|| black_box(&flag).load(Ordering::Relaxed));
    });
    group.finish();
}

/// The median of `values`.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Times sealing `headers` with `seal`, in seconds.
fn time_seals(headers: &[Header], seal: &dyn Fn(&Header) -> u64) -> f64 {
    let start = Instant::now();
    for header in headers {
        black_box(seal(header));
    }
    start.elapsed().as_secs_f64()
}

/// 2 workers against 1 (at [`DIFFICULTY`] and at 16 bits, where the fixed cost of a search
/// weighs 8 times less), the fixed cost itself (spawning and joining a scoped thread), and the
/// per-chunk cost against `fetch_add`, measured back to back and printed as ratios.
fn ratios() {
    const ROUNDS: u64 = 5;
    let coordinator = RangeCoordinator::new(CHUNK);
    for (difficulty, seals) in [(DIFFICULTY, 512), (16, 128)] {
        let (mut speed_ups, mut overheads) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let headers: Vec<Header> = (0..seals)
                .map(|n| Header::with_difficulty(1_000 + round * seals + n, difficulty))
                .collect();
            let plain = time_seals(&headers, &|h| plain_seal(h));
            let one = time_seals(&headers, &|h| coordinated_seal(&coordinator, h, 1));
            let two = time_seals(&headers, &|h| coordinated_seal(&coordinator, h, 2));
            println!(
                "ratios {difficulty} bits, round {round}: {seals} seals: plain {:.1} ms, \
                 search 1 worker {:.1} ms, 2 workers {:.1} ms",
                plain * 1e3,
                one * 1e3,
                two * 1e3
            );
            speed_ups.push(one / two);
            overheads.push(one / plain);
        }
        println!(
            "ratios {difficulty} bits: seal speed-up, 2 workers vs 1 (median of {ROUNDS} rounds): \
             {:.2}x; search with 1 worker vs a plain loop: {:.3}x the time",
            median(speed_ups),
            median(overheads)
        );
    }

    const SPAWNS: u32 = 1_000;
    let start = Instant::now();
    for _ in 0..SPAWNS {
        std::thread::scope(|s| {
            s.spawn(|| black_box(0));
        });
    }
    let spawn = start.elapsed().as_secs_f64() * 1e6 / f64::from(SPAWNS);
    let start = Instant::now();
    for _ in 0..SPAWNS {
        black_box(coordinated_seal(
            &coordinator,
            &Header::with_difficulty(7, 0),
            1,
        ));
    }
    let empty = start.elapsed().as_secs_f64() * 1e6 / f64::from(SPAWNS);
    println!(
        "ratios: fixed cost of a search: spawning and joining a scoped thread {spawn:.1} us; \
         a 1-worker search that succeeds at once (arm, first chunk, report, wait) {empty:.2} us"
    );

    const CHUNKS: u64 = 10_000_000;
    let job = coordinator.arm(0..u64::MAX);
    let cursor = AtomicU64::new(0);
    let start = Instant::now();
    for _ in 0..CHUNKS {
        black_box(bounds(cursor.fetch_add(1, Ordering::Relaxed), CHUNK));
    }
    let plain = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..CHUNKS {
        let chunk = coordinator.next_chunk(job).expect("chunks left");
        coordinator.finish_chunk(black_box(&chunk));
    }
    let coordinated = start.elapsed().as_secs_f64();
    coordinator.cancel(job);

    let per = |seconds: f64| seconds * 1e9 / CHUNKS as f64;
    let hash = plain_hash_ns();
    println!(
        "ratios: per chunk, next_chunk+finish_chunk {:.1} ns vs fetch_add cursor {:.1} ns: {:.1}x",
        per(coordinated),
        per(plain),
        coordinated / plain
    );
    println!(
        "ratios: at {CHUNK} nonces per chunk and {hash:.0} ns per hash, the hand-out is {:.4} % \
         of a chunk's work",
        100.0 * per(coordinated) / (CHUNK as f64 * hash)
    );
}

/// The time of one hash (one nonce tried), from 10⁵ tries.
fn plain_hash_ns() -> f64 {
    let header = Header::new(7);
    let start = Instant::now();
    let mut found = 0u64;
    for nonce in 0..100_000 {
        found += u64::from(header.seals(black_box(nonce)));
    }
    black_box(found);
    start.elapsed().as_secs_f64() * 1e9 / 100_000.0
}

criterion_group!(benches, pow_seal, chunk_overhead);

fn main() {
    benches();
    let benching = std::env::args().any(|arg| arg == "--bench");
    if benching && std::env::var_os("WORK_RATIOS").is_none_or(|v| v != "0") {
        ratios();
    }
    Criterion::default().configure_from_args().final_summary();
}
