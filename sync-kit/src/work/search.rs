//! The worker loop ([`RangeCoordinator::work`]) and the all-in-one
//! [`RangeCoordinator::search`] on the calling thread and scoped threads.
//!
//! A worker takes chunks until `next_chunk` returns `None`; inside a chunk it checks `batch`
//! values, then asks `should_stop`, so it stops within one batch of another worker's win (or a
//! cancel, or a re-arm). Every chunk it takes it ends exactly once: finished, reported or
//! abandoned. A worker whose `check` panics cancels the job as it unwinds, so the others stop
//! too and `search` propagates the panic instead of searching on.
//!
//! `search` works on the calling thread too, and spawns the other workers with
//! `std::thread::scope`, which loom cannot model (it has no scoped threads); the loom models run
//! `work` (and so everything `search` calls) on loom threads instead.

use std::ops::Range;

use super::{Job, JobOutcome, RangeCoordinator};

impl RangeCoordinator {
    /// Arms a job over `range` and searches it with `workers` workers (at least 1): the calling
    /// thread and `workers - 1` scoped threads, each running [`work`](Self::work) with `batch`
    /// and `check` (so one worker spawns no thread). Returns when every worker is done,
    /// with the job's outcome: `check(value)` returning `true` for some value gives
    /// [`JobOutcome::Found`] of the first one reported.
    ///
    /// # Panics
    /// If `check` panics (after every worker has stopped: the job is cancelled first).
    pub fn search<F: Fn(u64) -> bool + Sync>(
        &self,
        range: Range<u64>,
        workers: usize,
        batch: u64,
        check: F,
    ) -> JobOutcome {
        let job = self.arm(range);
        std::thread::scope(|scope| {
            for _ in 1..workers.max(1) {
                scope.spawn(|| self.work(job, batch, &check));
            }
            self.work(job, batch, &check);
        });
        self.wait(job)
    }

    /// One worker's loop for `job`, on the calling thread: takes chunks, checks their values in
    /// order, asks [`should_stop`](Self::should_stop) after every `batch` values (0 is taken as
    /// 1), reports the first value for which `check` is `true`. Returns when the job has no chunk
    /// left for it or has ended.
    pub fn work(&self, job: Job, batch: u64, check: impl Fn(u64) -> bool) {
        let batch = batch.max(1);
        let _cancel_on_panic = CancelOnPanic {
            coordinator: self,
            job,
        };
        while let Some(chunk) = self.next_chunk(job) {
            let mut from = chunk.range.start;
            loop {
                let to = from.saturating_add(batch).min(chunk.range.end);
                if let Some(found) = (from..to).find(|&value| check(value)) {
                    // Refused means another worker won or the job was superseded: this worker
                    // is done either way, and the chunk is counted.
                    let _ = self.report_success(&chunk, found);
                    return;
                }
                from = to;
                if from == chunk.range.end {
                    self.finish_chunk(&chunk);
                    break;
                }
                if self.should_stop(job) {
                    self.abandon_chunk(&chunk);
                    return;
                }
            }
        }
    }
}

/// Cancels the job if the worker unwinds (its `check` panicked), so the other workers stop.
struct CancelOnPanic<'a> {
    coordinator: &'a RangeCoordinator,
    job: Job,
}

impl Drop for CancelOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.coordinator.cancel(self.job);
        }
    }
}
