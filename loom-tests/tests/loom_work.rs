//! loom models of `sync_kit::work::RangeCoordinator`: the lock-free hand-out (no chunk twice
//! within a job), cancellation, the first report winning, and re-arming (no chunk, report or
//! finished chunk of the old job ever reaches the new one; the old job's chunks carry the old
//! job's layout even while `arm` rewrites it), and the worker loop that `search` runs. Two
//! threads, ranges of two or three chunks.
#![cfg(loom)]

use std::ops::Range;

use loom::sync::Arc;
use loom::thread;
use loom_tests::model;
use sync_kit::work::{Job, JobOutcome, RangeCoordinator, Refused};

/// Takes chunks of `job` until there are none, finishing each; returns their ranges.
fn drain(coordinator: &RangeCoordinator, job: Job) -> Vec<Range<u64>> {
    let mut taken = Vec::new();
    while let Some(chunk) = coordinator.next_chunk(job) {
        assert_eq!(chunk.job, job);
        coordinator.finish_chunk(&chunk);
        taken.push(chunk.range);
    }
    taken
}

/// Asserts `chunks` are pairwise distinct chunks of size 1 inside `range`.
fn assert_distinct_within(chunks: &[Range<u64>], range: Range<u64>) {
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.end, chunk.start + 1, "{chunk:?}");
        assert!(
            range.contains(&chunk.start),
            "{chunk:?} is not in {range:?}"
        );
        assert!(!chunks[..i].contains(chunk), "{chunk:?} handed out twice");
    }
}

/// Two workers drain a job of three chunks: together they get each chunk exactly once, and the
/// job is exhausted (the last finisher ends it, and `wait` sees that).
#[test]
fn two_workers_never_take_the_same_chunk() {
    model(|| {
        let coordinator = Arc::new(RangeCoordinator::new(1));
        let job = coordinator.arm(0..3);
        let other = {
            let coordinator = Arc::clone(&coordinator);
            thread::spawn(move || drain(&coordinator, job))
        };
        let mut chunks = drain(&coordinator, job);
        chunks.extend(other.join().unwrap());
        assert_eq!(chunks.len(), 3);
        assert_distinct_within(&chunks, 0..3);
        assert_eq!(coordinator.wait(job), JobOutcome::Exhausted);
        let stats = coordinator.stats();
        assert_eq!((stats.chunks_handed_out, stats.chunks_searched), (3, 3));
    });
}

/// A worker drains a job while the main thread cancels it. Once `cancel` has returned, no chunk
/// is handed out; the job is cancelled unless the worker finished every chunk first; the
/// counters add up either way.
#[test]
fn cancel_stops_the_hand_out() {
    model(|| {
        let coordinator = Arc::new(RangeCoordinator::new(1));
        let job = coordinator.arm(0..2);
        let worker = {
            let coordinator = Arc::clone(&coordinator);
            thread::spawn(move || drain(&coordinator, job))
        };
        coordinator.cancel(job);
        assert!(coordinator.should_stop(job));
        assert_eq!(coordinator.next_chunk(job), None);
        let chunks = worker.join().unwrap();
        assert_distinct_within(&chunks, 0..2);
        let outcome = coordinator.wait(job);
        if chunks.len() < 2 {
            assert_eq!(outcome, JobOutcome::Cancelled);
        } else {
            assert!(matches!(
                outcome,
                JobOutcome::Cancelled | JobOutcome::Exhausted
            ));
        }
        let stats = coordinator.stats();
        assert_eq!(
            stats.chunks_handed_out,
            stats.chunks_searched + stats.chunks_wasted
        );
        assert_eq!(stats.chunks_handed_out, chunks.len() as u64);
    });
}

/// A worker of the old job keeps taking and finishing chunks while the main thread re-arms over
/// another range and drains the new job. The worker only ever gets old chunks with the old
/// layout (inside `0..2`); the main thread gets all of the new job (nothing taken by the stale
/// worker), and the new job is exhausted by its own chunks only (a stale `finish_chunk` is not
/// counted towards it).
#[test]
fn rearm_makes_the_old_job_stale() {
    model(|| {
        let coordinator = Arc::new(RangeCoordinator::new(1));
        let old = coordinator.arm(0..2);
        let worker = {
            let coordinator = Arc::clone(&coordinator);
            thread::spawn(move || drain(&coordinator, old))
        };
        let new = coordinator.arm(10..12);
        assert_eq!(coordinator.next_chunk(old), None);
        let mut mine = Vec::new();
        while let Some(chunk) = coordinator.next_chunk(new) {
            assert_eq!(chunk.job, new);
            mine.push(chunk);
        }
        let ranges: Vec<_> = mine.iter().map(|c| c.range.clone()).collect();
        assert_eq!(
            ranges.len(),
            2,
            "the stale worker took a chunk of the new job"
        );
        assert_distinct_within(&ranges, 10..12);
        for (i, chunk) in mine.iter().enumerate() {
            // Not exhausted by anything the stale worker finished.
            assert!(!coordinator.should_stop(new), "exhausted early at {i}");
            coordinator.finish_chunk(chunk);
        }
        assert!(
            coordinator.should_stop(new),
            "its own chunks exhaust the new job"
        );
        let theirs = worker.join().unwrap();
        assert_distinct_within(&theirs, 0..2);
        assert_eq!(coordinator.wait(new), JobOutcome::Exhausted);
        assert!(matches!(
            coordinator.wait(old),
            JobOutcome::Cancelled | JobOutcome::Exhausted
        ));
    });
}

/// Two workers report success on two chunks of one job at once: exactly one wins, the other is
/// refused with `AlreadyWon`, and `wait` returns the winner's value.
#[test]
fn the_first_report_wins() {
    model(|| {
        let coordinator = Arc::new(RangeCoordinator::new(1));
        let job = coordinator.arm(0..2);
        let a = coordinator.next_chunk(job).unwrap();
        let b = coordinator.next_chunk(job).unwrap();
        let other = {
            let coordinator = Arc::clone(&coordinator);
            thread::spawn(move || coordinator.report_success(&b, b.range.start))
        };
        let mine = coordinator.report_success(&a, a.range.start);
        let theirs = other.join().unwrap();
        let found = match (mine, theirs) {
            (Ok(()), Err(Refused::AlreadyWon)) => 0,
            (Err(Refused::AlreadyWon), Ok(())) => 1,
            outcome => panic!("not exactly one winner: {outcome:?}"),
        };
        assert_eq!(coordinator.wait(job), JobOutcome::Found(found));
        assert_eq!(coordinator.stats().wins, 1);
    });
}

/// A report races with a re-arm: it is accepted iff it came first, `wait` on the old job agrees
/// with it, and the new job is untouched (still running, nothing won).
#[test]
fn a_report_racing_a_rearm() {
    model(|| {
        let coordinator = Arc::new(RangeCoordinator::new(1));
        let old = coordinator.arm(0..1);
        let chunk = coordinator.next_chunk(old).unwrap();
        let reporter = {
            let coordinator = Arc::clone(&coordinator);
            thread::spawn(move || coordinator.report_success(&chunk, 0))
        };
        let new = coordinator.arm(0..1);
        let reported = reporter.join().unwrap();
        match reported {
            Ok(()) => assert_eq!(coordinator.wait(old), JobOutcome::Found(0)),
            Err(refused) => {
                assert_eq!(refused, Refused::Stale);
                assert_eq!(coordinator.wait(old), JobOutcome::Cancelled);
            }
        }
        assert!(!coordinator.should_stop(new));
        assert!(coordinator.next_chunk(new).is_some());
    });
}

/// Two threads run the worker loop (`work`, what `search` runs on each thread) over three
/// chunks of two values, one of which succeeds: the job is found in every interleaving, each
/// worker stops, and every chunk handed out is counted once (searched, wasted or the win).
#[test]
fn two_worker_loops_find_the_value_and_stop() {
    model(|| {
        let coordinator = Arc::new(RangeCoordinator::new(2));
        let job = coordinator.arm(0..6);
        let other = {
            let coordinator = Arc::clone(&coordinator);
            thread::spawn(move || coordinator.work(job, 1, |value| value == 3))
        };
        coordinator.work(job, 1, |value| value == 3);
        other.join().unwrap();
        assert_eq!(coordinator.wait(job), JobOutcome::Found(3));
        let stats = coordinator.stats();
        assert_eq!(stats.wins, 1);
        assert_eq!(
            stats.chunks_handed_out,
            stats.chunks_searched + stats.chunks_wasted + stats.wins
        );
    });
}
