//! `work::RangeCoordinator`: workers never get the same chunk and together cover the range
//! (2, 3 and 4 threads); the first success stops every worker within one batch; a re-arm makes the
//! old job stale (reports refused with `Stale`, no more chunks, `wait` says `Cancelled`); a
//! second success is `AlreadyWon`; exhaustion, cancellation and empty ranges end the job and wake
//! `wait`; a panicking `check` cancels the job; the statistics add up
//! (`handed_out == searched + wasted + wins`) once every worker is done.
//!
//! No test sleeps to synchronise: threads start together at a barrier and are joined.

use std::collections::HashSet;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use sync_kit::work::{Chunk, JobOutcome, RangeCoordinator, Refused, WorkStats};

mod common;
use common::bounded;

/// Every chunk handed out was ended, and each in exactly one way.
fn assert_adds_up(stats: WorkStats) {
    assert_eq!(
        stats.chunks_handed_out,
        stats.chunks_searched + stats.chunks_wasted + stats.wins,
        "{stats:?}"
    );
}

/// Sorts `chunks` and asserts they are pairwise disjoint and exactly cover `range`.
fn assert_disjoint_cover(mut chunks: Vec<Range<u64>>, range: Range<u64>, chunk_size: u64) {
    chunks.sort_by_key(|c| c.start);
    let mut next = range.start;
    for chunk in &chunks {
        assert_eq!(chunk.start, next, "gap or overlap before {chunk:?}");
        assert!(!chunk.is_empty() && chunk.end - chunk.start <= chunk_size);
        next = chunk.end;
    }
    assert_eq!(
        next, range.end,
        "the chunks do not reach the end of the range"
    );
}

#[test]
fn workers_never_get_the_same_chunk_and_cover_the_range() {
    bounded("disjoint chunks", || {
        for workers in [2, 3, 4] {
            let coordinator = Arc::new(RangeCoordinator::new(7));
            let range = 5..10_003; // not a multiple of the chunk size: the last chunk is short
            let job = coordinator.arm(range.clone());
            let start = Arc::new(Barrier::new(workers));
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let (coordinator, start) = (Arc::clone(&coordinator), Arc::clone(&start));
                    thread::spawn(move || {
                        start.wait();
                        let mut mine = Vec::new();
                        while let Some(chunk) = coordinator.next_chunk(job) {
                            assert_eq!(chunk.job, job);
                            coordinator.finish_chunk(&chunk);
                            mine.push(chunk.range);
                        }
                        mine
                    })
                })
                .collect();
            let chunks: Vec<_> = handles
                .into_iter()
                .flat_map(|h| h.join().expect("worker"))
                .collect();
            let expected = (range.end - range.start).div_ceil(7);
            assert_eq!(chunks.len() as u64, expected);
            assert_disjoint_cover(chunks, range, 7);
            assert_eq!(coordinator.wait(job), JobOutcome::Exhausted);
            assert!(coordinator.should_stop(job));
            let stats = coordinator.stats();
            assert_eq!(
                stats,
                WorkStats {
                    jobs: 1,
                    chunks_handed_out: expected,
                    chunks_searched: expected,
                    chunks_wasted: 0,
                    wins: 0,
                }
            );
        }
    });
}

/// Workers run `work` on their own threads so that `check` can ask `should_stop` itself: a check
/// made after this worker saw the job stop is "late". Each worker's next between-batch
/// `should_stop` then reads the status again (a later load of the same atomic), so it stops: at
/// most `batch - 1` late checks per worker, and at most one wasted chunk per losing worker.
#[test]
fn the_first_success_stops_every_worker_within_a_batch() {
    bounded("success stops workers", || {
        const BATCH: u64 = 16;
        const TARGET: u64 = 40_000;
        for workers in [2usize, 4] {
            // Chunks of 1M: a worker that did not stop mid-chunk would make ~1M late checks.
            let coordinator = Arc::new(RangeCoordinator::new(1 << 20));
            let job = coordinator.arm(0..u64::MAX);
            let late = Arc::new(AtomicU64::new(0));
            let start = Arc::new(Barrier::new(workers));
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let (coordinator, late, start) = (
                        Arc::clone(&coordinator),
                        Arc::clone(&late),
                        Arc::clone(&start),
                    );
                    thread::spawn(move || {
                        start.wait();
                        coordinator.work(job, BATCH, |value| {
                            if coordinator.should_stop(job) {
                                late.fetch_add(1, Ordering::Relaxed);
                            }
                            value == TARGET // in the first chunk
                        });
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("worker");
            }
            assert_eq!(coordinator.wait(job), JobOutcome::Found(TARGET));
            let late = late.load(Ordering::Relaxed);
            assert!(
                late < workers as u64 * BATCH,
                "{late} checks after the stop with {workers} workers"
            );
            let stats = coordinator.stats();
            assert_eq!(stats.wins, 1);
            assert!(
                stats.chunks_wasted < workers as u64,
                "{stats:?}: more than one wasted chunk per losing worker"
            );
            assert_adds_up(stats);
        }
    });
}

#[test]
fn search_finds_the_value_and_the_stats_add_up() {
    bounded("search", || {
        let coordinator = RangeCoordinator::new(1_000);
        for workers in [1, 2, 3] {
            let outcome = coordinator.search(0..10_000_000, workers, 64, |n| n == 123_457);
            assert_eq!(outcome, JobOutcome::Found(123_457));
        }
        let stats = coordinator.stats();
        assert_eq!((stats.jobs, stats.wins), (3, 3));
        // At most one wasted chunk per losing worker: 0 + 1 + 2.
        assert!(stats.chunks_wasted <= 3, "{stats:?}");
        assert_adds_up(stats);
    });
}

#[test]
fn search_without_success_exhausts_the_range() {
    bounded("search exhausts", || {
        let coordinator = RangeCoordinator::new(100);
        let checked = AtomicU64::new(0);
        let outcome = coordinator.search(3..10_001, 2, 7, |_| {
            checked.fetch_add(1, Ordering::Relaxed);
            false
        });
        assert_eq!(outcome, JobOutcome::Exhausted);
        assert_eq!(
            checked.load(Ordering::Relaxed),
            9_998,
            "every value exactly once"
        );
        let stats = coordinator.stats();
        assert_eq!(stats.chunks_handed_out, 100);
        assert_eq!(stats.chunks_searched, 100);
        assert_adds_up(stats);
    });
}

#[test]
fn a_rearm_makes_the_old_job_stale() {
    let coordinator = RangeCoordinator::new(10);
    let old = coordinator.arm(0..100);
    let a = coordinator.next_chunk(old).expect("a chunk");
    let b = coordinator.next_chunk(old).expect("another");
    assert_eq!((a.range.clone(), b.range.clone()), (0..10, 10..20));

    let new = coordinator.arm(1_000..1_050);
    assert_ne!(old, new);
    assert_eq!(new.generation(), old.generation() + 1);
    assert!(coordinator.should_stop(old));
    assert!(!coordinator.should_stop(new));
    assert_eq!(coordinator.next_chunk(old), None);
    assert_eq!(coordinator.report_success(&a, 5), Err(Refused::Stale));
    coordinator.finish_chunk(&b); // counted as wasted, and does not touch the new job's count
    assert_eq!(coordinator.wait(old), JobOutcome::Cancelled);

    // The new job starts from its own beginning and is exhausted by its own five chunks only.
    let chunks: Vec<Chunk> = std::iter::from_fn(|| coordinator.next_chunk(new)).collect();
    assert_eq!(chunks.len(), 5);
    assert!(chunks.iter().all(|c| c.job == new));
    assert_disjoint_cover(
        chunks.iter().map(|c| c.range.clone()).collect(),
        1_000..1_050,
        10,
    );
    for (i, chunk) in chunks.iter().enumerate() {
        assert!(
            !coordinator.should_stop(new),
            "not exhausted before chunk {i} is finished"
        );
        coordinator.finish_chunk(chunk);
    }
    assert_eq!(coordinator.wait(new), JobOutcome::Exhausted);

    let stats = coordinator.stats();
    assert_eq!((stats.jobs, stats.chunks_handed_out), (2, 7));
    assert_eq!((stats.chunks_searched, stats.chunks_wasted), (5, 2));
    assert_adds_up(stats);
}

#[test]
fn a_second_success_is_already_won() {
    let coordinator = RangeCoordinator::new(10);
    let job = coordinator.arm(0..100);
    let a = coordinator.next_chunk(job).expect("a chunk");
    let b = coordinator.next_chunk(job).expect("another");
    assert_eq!(coordinator.report_success(&b, 17), Ok(()));
    assert!(coordinator.should_stop(job));
    assert_eq!(coordinator.report_success(&a, 3), Err(Refused::AlreadyWon));
    assert_eq!(coordinator.next_chunk(job), None);
    assert_eq!(coordinator.wait(job), JobOutcome::Found(17));
    assert_eq!(
        Refused::AlreadyWon.to_string(),
        "the chunk's job was already won by another report"
    );

    // The won job's outcome outlives a re-arm (a waiter woken by the win may run after it).
    let next = coordinator.arm(0..100);
    assert_eq!(coordinator.wait(job), JobOutcome::Found(17));
    coordinator.cancel(next);
    let stats = coordinator.stats();
    assert_eq!(stats.wins, 1);
    assert_adds_up(stats);
}

#[test]
fn wait_returns_when_another_thread_ends_the_job() {
    bounded("wait wakes", || {
        let coordinator = Arc::new(RangeCoordinator::new(4));
        for end in ["exhaust", "cancel", "win", "rearm"] {
            let job = coordinator.arm(0..16);
            let chunks: Vec<Chunk> = std::iter::from_fn(|| coordinator.next_chunk(job)).collect();
            let started = Arc::new(Barrier::new(2));
            let waiter = {
                let (coordinator, started) = (Arc::clone(&coordinator), Arc::clone(&started));
                thread::spawn(move || {
                    started.wait();
                    coordinator.wait(job)
                })
            };
            started.wait();
            // Whether the waiter is asleep yet or not, it must return the same outcome.
            let expected = match end {
                "exhaust" => {
                    chunks.iter().for_each(|c| coordinator.finish_chunk(c));
                    JobOutcome::Exhausted
                }
                "cancel" => {
                    coordinator.cancel(job);
                    chunks.iter().for_each(|c| coordinator.abandon_chunk(c));
                    JobOutcome::Cancelled
                }
                "win" => {
                    coordinator
                        .report_success(&chunks[2], 9)
                        .expect("first win");
                    JobOutcome::Found(9)
                }
                _ => {
                    coordinator.arm(0..1);
                    JobOutcome::Cancelled
                }
            };
            assert_eq!(waiter.join().expect("waiter"), expected, "{end}");
        }
    });
}

#[test]
fn cancel_stops_the_hand_out_and_is_idempotent() {
    let coordinator = RangeCoordinator::new(10);
    let job = coordinator.arm(0..100);
    let chunk = coordinator.next_chunk(job).expect("a chunk");
    coordinator.cancel(job);
    coordinator.cancel(job);
    assert!(coordinator.should_stop(job));
    assert_eq!(coordinator.next_chunk(job), None);
    assert_eq!(coordinator.report_success(&chunk, 1), Err(Refused::Stale));
    assert_eq!(coordinator.wait(job), JobOutcome::Cancelled);
    let stats = coordinator.stats();
    assert_eq!((stats.chunks_handed_out, stats.chunks_wasted), (1, 1));
}

#[test]
fn abandoning_a_chunk_of_a_running_job_cancels_it() {
    // Part of the range would never be searched: the job cannot be exhausted, so it ends now
    // instead of leaving `wait` blocked.
    let coordinator = RangeCoordinator::new(10);
    let job = coordinator.arm(0..30);
    let chunk = coordinator.next_chunk(job).expect("a chunk");
    coordinator.abandon_chunk(&chunk);
    assert_eq!(coordinator.wait(job), JobOutcome::Cancelled);
    assert_eq!(coordinator.stats().chunks_wasted, 1);
}

#[test]
fn an_empty_range_is_exhausted_at_once() {
    let coordinator = RangeCoordinator::new(0); // taken as 1
    assert_eq!(coordinator.chunk_size(), 1);
    let (high, low) = (9, 3); // a reversed range, built at run time
    for range in [5..5, high..low] {
        let job = coordinator.arm(range);
        assert_eq!(coordinator.next_chunk(job), None);
        assert_eq!(coordinator.wait(job), JobOutcome::Exhausted);
    }
    assert_eq!(
        coordinator.search(7..7, 2, 1, |_| true),
        JobOutcome::Exhausted
    );
}

#[test]
fn a_huge_range_gets_larger_chunks() {
    // At most 2^40 - 1 chunks per job: the whole u64 space in chunks of at least 2^24.
    let coordinator = RangeCoordinator::new(1);
    let job = coordinator.arm(0..u64::MAX);
    let step = u64::MAX.div_ceil((1 << 40) - 1);
    assert_eq!(coordinator.next_chunk(job).map(|c| c.range), Some(0..step));
    assert_eq!(
        coordinator.next_chunk(job).map(|c| c.range),
        Some(step..2 * step)
    );
    // Near the top of the space, chunks end exactly at the range's end.
    let job = coordinator.arm(u64::MAX - 3..u64::MAX);
    let chunks: Vec<_> = std::iter::from_fn(|| coordinator.next_chunk(job))
        .map(|c| c.range)
        .collect();
    assert_eq!(
        chunks,
        [
            u64::MAX - 3..u64::MAX - 2,
            u64::MAX - 2..u64::MAX - 1,
            u64::MAX - 1..u64::MAX
        ]
    );
}

#[test]
fn a_job_of_another_coordinator_is_stale() {
    let (one, other) = (RangeCoordinator::new(1), RangeCoordinator::new(1));
    let job = one.arm(0..10);
    assert!(other.should_stop(job));
    assert_eq!(other.next_chunk(job), None);
    assert_eq!(other.wait(job), JobOutcome::Cancelled);
}

#[test]
fn a_panicking_check_cancels_the_job_and_stops_the_others() {
    bounded("panicking check", || {
        let coordinator = RangeCoordinator::new(1_000);
        let searched = panic::catch_unwind(AssertUnwindSafe(|| {
            coordinator.search(0..u64::MAX, 2, 16, |n| {
                assert!(n != 5_000, "check failed on purpose at {n}");
                false
            })
        }));
        assert!(searched.is_err(), "the panic reaches search's caller");
        // The other worker stopped (search returned at all, over the whole u64 space).
        let stats = coordinator.stats();
        assert_eq!(stats.wins, 0);
        // The job was cancelled: the coordinator is ready for the next one.
        assert_eq!(
            coordinator.search(0..100, 2, 8, |n| n == 50),
            JobOutcome::Found(50)
        );
    });
}

#[test]
#[should_panic(expected = "outside its chunk")]
fn a_report_outside_the_chunk_panics() {
    let coordinator = RangeCoordinator::new(10);
    let job = coordinator.arm(0..100);
    let chunk = coordinator.next_chunk(job).expect("a chunk");
    let _ = coordinator.report_success(&chunk, 10);
}

#[test]
fn the_coordinator_is_send_and_sync_and_debug() {
    fn shareable<T: Send + Sync + std::fmt::Debug>() {}
    shareable::<RangeCoordinator>();
    let coordinator = RangeCoordinator::default();
    let chunks: HashSet<_> = {
        let job = coordinator.arm(0..10_000);
        std::iter::from_fn(|| coordinator.next_chunk(job)).collect()
    };
    assert_eq!(chunks.len(), 3);
    let shown = format!("{coordinator:?}");
    assert!(
        shown.contains("chunk_size: 4096") && shown.contains("Running"),
        "{shown}"
    );
}
