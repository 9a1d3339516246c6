//! [`RangeCoordinator`]: the atomic words, the hand-out, and the job's end under one mutex.
//!
//! | word          | layout (`word.rs`)              | written by                               |
//! |---------------|---------------------------------|------------------------------------------|
//! | `control`     | generation, status              | `arm` and the job's end, under `ledger`  |
//! | `cursor`      | generation tag, chunks left     | `arm` (close, reopen); `next_chunk` (−1) |
//! | `unfinished`  | generation tag, chunks to search | `arm`; `finish_chunk` (−1)               |
//! | layout        | start, end, step, chunks        | `arm`, between closing and reopening     |
//!
//! Fast paths (`next_chunk`, `should_stop`, `finish_chunk`, a refused report) touch atomics only;
//! the slow paths (`arm`, a job's end, `wait`) take `ledger`, a sync-kit [`Mutex`] that is a leaf:
//! no other lock is taken and no caller code runs while it is held, so its acquisition can be
//! neither a deadlock nor an order inversion, whatever locks the caller holds.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64 as StatAtomicU64, Ordering as StatOrdering};

use super::word::{MAX_CHUNKS, Status, control, tagged};
use super::{Chunk, Job, JobOutcome, Refused, WorkStats};
use crate::loom::atomic::{AtomicU64, Ordering};
use crate::{Condvar, Mutex, MutexGuard};

/// How many superseded jobs' outcomes `wait` remembers.
const HISTORY: usize = 8;

/// Why taking `ledger` cannot fail (see the module docs).
const LEAF: &str = "the work ledger is a leaf lock: never held while taking another";

/// Hands out disjoint chunks of a `u64` range to workers, stops them all at the first success,
/// and is re-armed for each new job. See the [module docs](crate::work) for the states and the
/// invariant.
///
/// ```
/// use std::sync::Arc;
/// use sync_kit::work::{JobOutcome, Refused, RangeCoordinator};
///
/// let coordinator = Arc::new(RangeCoordinator::new(16));
/// let job = coordinator.arm(0..100);
/// let worker = {
///     let coordinator = Arc::clone(&coordinator);
///     std::thread::spawn(move || {
///         while let Some(chunk) = coordinator.next_chunk(job) {
///             if chunk.range.contains(&42) {
///                 return coordinator.report_success(&chunk, 42);
///             }
///             coordinator.finish_chunk(&chunk);
///         }
///         Err(Refused::Stale)
///     })
/// };
/// assert_eq!(coordinator.wait(job), JobOutcome::Found(42));
/// assert_eq!(worker.join().unwrap(), Ok(()));
///
/// let next = coordinator.arm(0..100); // the old job is stale from now on
/// assert!(coordinator.should_stop(job) && !coordinator.should_stop(next));
/// ```
pub struct RangeCoordinator {
    /// The chunk size asked for (at least 1).
    chunk_size: u64,
    /// The current job's generation and status (`word::control`).
    control: AtomicU64,
    /// Chunks of the current job not yet handed out, tagged with its generation.
    cursor: AtomicU64,
    /// Chunks of the current job not yet finished as searched, tagged with its generation.
    unfinished: AtomicU64,
    /// The current job's layout: chunk `i` is `start + i·step .. min(end, start + (i+1)·step)`,
    /// for `i < chunks`. Written by `arm` only while `cursor` is closed.
    start: AtomicU64,
    end: AtomicU64,
    step: AtomicU64,
    chunks: AtomicU64,
    /// The outcomes, for `wait`; every status change is made holding it.
    ledger: Mutex<Ledger>,
    /// Notified (all) at every job's end and every `arm`.
    ended: Condvar,
    tally: Tally,
}

/// What `wait` reads: which job is current, and how the recent ones ended.
#[derive(Debug)]
struct Ledger {
    /// The current job's generation (0 before the first `arm`).
    current: u64,
    /// How the current job ended, once it has.
    outcome: Option<JobOutcome>,
    /// `(generation, outcome)` of the last [`HISTORY`] superseded jobs, oldest first.
    history: VecDeque<(u64, JobOutcome)>,
}

impl Ledger {
    /// The outcome of `generation`, or `None` while it runs.
    fn outcome_of(&self, generation: u64) -> Option<JobOutcome> {
        if generation == self.current {
            return self.outcome;
        }
        let remembered = self.history.iter().find(|(g, _)| *g == generation);
        Some(remembered.map_or(JobOutcome::Cancelled, |(_, outcome)| *outcome))
    }

    /// Makes `generation` the current job; the previous one, if it still ran, was cancelled.
    fn supersede(&mut self, generation: u64, outcome: Option<JobOutcome>) {
        if self.current != 0 {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            let previous = self.outcome.unwrap_or(JobOutcome::Cancelled);
            self.history.push_back((self.current, previous));
        }
        self.current = generation;
        self.outcome = outcome;
    }
}

/// The statistics. Plain std atomics: they order no other memory (as every statistic in
/// sync-kit), so there is nothing for loom to explore in them.
#[derive(Debug, Default)]
struct Tally {
    jobs: StatAtomicU64,
    handed_out: StatAtomicU64,
    searched: StatAtomicU64,
    wasted: StatAtomicU64,
    wins: StatAtomicU64,
}

impl Tally {
    #[inline]
    fn add(counter: &StatAtomicU64) {
        counter.fetch_add(1, StatOrdering::Relaxed);
    }
}

impl RangeCoordinator {
    /// A coordinator handing out chunks of `chunk_size` values (0 is taken as 1). Over a range of
    /// more than 2⁴⁰ − 1 chunks, the chunk size of that job grows to `⌈len / (2⁴⁰ − 1)⌉`.
    pub fn new(chunk_size: u64) -> Self {
        Self {
            chunk_size: chunk_size.max(1),
            // Generation 0 is never armed: every `Job` of another coordinator that reaches this one
            // before its first `arm` is stale.
            control: AtomicU64::new(control::pack(0, Status::Cancelled)),
            cursor: AtomicU64::new(tagged::pack(0, 0)),
            unfinished: AtomicU64::new(tagged::pack(0, 0)),
            start: AtomicU64::new(0),
            end: AtomicU64::new(0),
            step: AtomicU64::new(1),
            chunks: AtomicU64::new(0),
            ledger: Mutex::new(Ledger {
                current: 0,
                outcome: None,
                history: VecDeque::with_capacity(HISTORY),
            }),
            ended: Condvar::new(),
            tally: Tally::default(),
        }
    }

    /// The chunk size asked for at construction (at least 1).
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Starts a new job over `range` (an empty or reversed range is exhausted at once). The
    /// previous job, whatever its state, becomes stale: its workers' `should_stop` turns true,
    /// `next_chunk` returns `None`, reports are refused with [`Refused::Stale`], and a previous
    /// job still running counts as [`JobOutcome::Cancelled`].
    pub fn arm(&self, range: Range<u64>) -> Job {
        let len = range.end.saturating_sub(range.start);
        let step = self.chunk_size.max(len.div_ceil(MAX_CHUNKS));
        let chunks = len.div_ceil(step);
        let (status, outcome) = if chunks == 0 {
            (Status::Exhausted, Some(JobOutcome::Exhausted))
        } else {
            (Status::Running, None)
        };

        let mut ledger = self.lock_ledger();
        let generation = ledger.current + 1;
        // 1. The previous job is over: its workers' `should_stop` turns true, its reports and
        //    finished chunks are refused or counted as wasted.
        self.control
            .store(control::pack(generation, status), Ordering::Release);
        // 2. Close the hand-out. A swap (read-modify-write) reads the latest cursor value, so
        //    every claim that succeeded before it synchronises with it (Acquire): the layout
        //    those claims read happens before the layout is rewritten below.
        self.cursor
            .swap(tagged::pack(generation, 0), Ordering::Acquire);
        // 3. The new job's layout and its count of chunks to search.
        self.start.store(range.start, Ordering::Relaxed);
        self.end.store(range.end, Ordering::Relaxed);
        self.step.store(step, Ordering::Relaxed);
        self.chunks.store(chunks, Ordering::Relaxed);
        // A swap where a store would do (here and below): loom can let a concurrent
        // compare-exchange read the value before a plain store, as if the store had not happened
        // (tokio-rs/loom#254, open), so a stale `finish_chunk` or `next_chunk` would overwrite
        // the new job's word in the model. A read-modify-write is ordered against them in loom as
        // on hardware, and `arm` is not a hot path.
        self.unfinished
            .swap(tagged::pack(generation, chunks), Ordering::Relaxed);
        // 4. Reopen: a worker that reads this value (or a later claim's) sees all of step 3.
        self.cursor
            .swap(tagged::pack(generation, chunks), Ordering::Release);
        ledger.supersede(generation, outcome);
        Tally::add(&self.tally.jobs);
        drop(ledger);
        // Waiters of the superseded job learn it is over.
        self.ended.notify_all();
        Job(generation)
    }

    /// The next chunk of `job`, or `None` once it is stale, won, cancelled, or has no chunk left
    /// to hand out. Lock-free: one load of the status, then a compare-exchange on the cursor.
    #[inline]
    pub fn next_chunk(&self, job: Job) -> Option<Chunk> {
        if self.control.load(Ordering::Acquire) != control::running(job.0) {
            return None;
        }
        let mut word = self.cursor.load(Ordering::Acquire);
        let mut left = tagged::count_for(word, job.0)?;
        // The word carries this job, so the load above synchronised with the `arm` that opened
        // it: this layout is this job's, unless a later `arm` is rewriting it, in which case the
        // compare-exchange below fails (the word was closed first) and the layout is not used.
        let layout = self.layout();
        loop {
            match self
                .cursor
                .compare_exchange(word, word - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    Tally::add(&self.tally.handed_out);
                    return Some(Chunk {
                        job,
                        range: layout.chunk(layout.chunks - left),
                    });
                }
                Err(now) => {
                    word = now;
                    left = tagged::count_for(word, job.0)?;
                }
            }
        }
    }

    /// `true` once `job` is no longer running (won, cancelled, exhausted or superseded): one
    /// relaxed atomic load, for workers to call between small batches.
    #[inline]
    pub fn should_stop(&self, job: Job) -> bool {
        self.control.load(Ordering::Relaxed) != control::running(job.0)
    }

    /// The worker searched all of `chunk` and found nothing. Counted as searched if its job was
    /// still running, as wasted otherwise; the last chunk of a job to be finished makes it
    /// exhausted.
    #[inline]
    pub fn finish_chunk(&self, chunk: &Chunk) {
        let job = chunk.job.0;
        if self.control.load(Ordering::Acquire) == control::running(job) {
            let mut word = self.unfinished.load(Ordering::Acquire);
            while let Some(left) = tagged::count_for(word, job) {
                match self.unfinished.compare_exchange(
                    word,
                    word - 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        Tally::add(&self.tally.searched);
                        if left == 1 {
                            // Refused only if the job ended meanwhile: that end stands.
                            let _ = self.end(job, JobOutcome::Exhausted);
                        }
                        return;
                    }
                    Err(now) => word = now,
                }
            }
        }
        Tally::add(&self.tally.wasted);
    }

    /// The worker found `value` in `chunk`. The first report for the current job wins: the job
    /// ends with [`JobOutcome::Found`]`(value)` and every worker's `should_stop` turns true.
    ///
    /// # Errors
    /// [`Refused::AlreadyWon`] if another report for the job was accepted first,
    /// [`Refused::Stale`] if the job was cancelled or superseded. A refused chunk counts as
    /// wasted.
    ///
    /// # Panics
    /// If `value` is not in `chunk.range`: the worker reported a value it was not given, a bug
    /// in the caller (checked in every build: a report is once per job).
    pub fn report_success(&self, chunk: &Chunk, value: u64) -> Result<(), Refused> {
        assert!(
            chunk.range.contains(&value),
            "reported value {value} is outside its chunk {:?}",
            chunk.range
        );
        let job = chunk.job.0;
        let word = self.control.load(Ordering::Acquire);
        let refused = if word == control::running(job) {
            match self.end(job, JobOutcome::Found(value)) {
                Ok(()) => return Ok(()),
                Err(refused) => refused,
            }
        } else {
            refusal(word, job)
        };
        Tally::add(&self.tally.wasted);
        Err(refused)
    }

    /// The worker gives `chunk` up without searching all of it, normally because
    /// `should_stop` said so; counted as wasted. If the job is in fact still running, part of
    /// its range would never be searched, so the job is cancelled rather than left to wait for an
    /// exhaustion that cannot come.
    pub fn abandon_chunk(&self, chunk: &Chunk) {
        Tally::add(&self.tally.wasted);
        self.cancel(chunk.job);
    }

    /// Stops `job` ([`JobOutcome::Cancelled`]) if it is still running; otherwise does nothing.
    pub fn cancel(&self, job: Job) {
        if self.control.load(Ordering::Acquire) == control::running(job.0) {
            // Lost a race with another end: that end stands, and there is nothing to do.
            let _ = self.end(job.0, JobOutcome::Cancelled);
        }
    }

    /// Blocks until `job` has ended, and says how: won, exhausted (every chunk handed out and
    /// finished, none left), or cancelled. A job superseded by `arm` before it ended is
    /// cancelled; the outcome of a job that ended before being superseded is remembered for the
    /// next 8 jobs, after which `wait` reports it as cancelled too.
    pub fn wait(&self, job: Job) -> JobOutcome {
        let mut ledger = self.lock_ledger();
        loop {
            if let Some(outcome) = ledger.outcome_of(job.0) {
                return outcome;
            }
            self.ended.wait(&mut ledger).expect(LEAF);
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> WorkStats {
        let read = |counter: &StatAtomicU64| counter.load(StatOrdering::Relaxed);
        WorkStats {
            jobs: read(&self.tally.jobs),
            chunks_handed_out: read(&self.tally.handed_out),
            chunks_searched: read(&self.tally.searched),
            chunks_wasted: read(&self.tally.wasted),
            wins: read(&self.tally.wins),
        }
    }

    /// Ends `job` with `outcome` if it is still the running job; otherwise says why not.
    #[cold]
    fn end(&self, job: u64, outcome: JobOutcome) -> Result<(), Refused> {
        let mut ledger = self.lock_ledger();
        let word = self.control.load(Ordering::Acquire);
        if word != control::running(job) {
            return Err(refusal(word, job));
        }
        let status = match outcome {
            JobOutcome::Found(_) => Status::Won,
            JobOutcome::Exhausted => Status::Exhausted,
            JobOutcome::Cancelled => Status::Cancelled,
        };
        self.control
            .store(control::pack(job, status), Ordering::Release);
        ledger.outcome = Some(outcome);
        if status == Status::Won {
            Tally::add(&self.tally.wins);
        }
        drop(ledger);
        self.ended.notify_all();
        Ok(())
    }

    #[cold]
    fn lock_ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().expect(LEAF)
    }

    /// The current job's layout, as `arm` last wrote it (see `next_chunk` for when that is the
    /// caller's job).
    #[inline]
    fn layout(&self) -> Layout {
        Layout {
            start: self.start.load(Ordering::Relaxed),
            end: self.end.load(Ordering::Relaxed),
            step: self.step.load(Ordering::Relaxed),
            chunks: self.chunks.load(Ordering::Relaxed),
        }
    }
}

/// Why a report for `job` is refused, given a control word that is not `running(job)`.
fn refusal(word: u64, job: u64) -> Refused {
    match control::unpack(word) {
        (generation, Status::Won) if generation == job => Refused::AlreadyWon,
        _ => Refused::Stale,
    }
}

/// One job's cut into chunks.
#[derive(Clone, Copy, Debug)]
struct Layout {
    start: u64,
    end: u64,
    step: u64,
    chunks: u64,
}

impl Layout {
    /// Chunk `index` (`index < chunks`, so `start + index·step < end`: no overflow).
    #[inline]
    fn chunk(self, index: u64) -> Range<u64> {
        let from = self.start + index * self.step;
        from..from.saturating_add(self.step).min(self.end)
    }
}

impl Default for RangeCoordinator {
    /// Chunks of 4,096 values.
    fn default() -> Self {
        Self::new(4096)
    }
}

impl fmt::Debug for RangeCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (generation, status) = control::unpack(self.control.load(Ordering::Relaxed));
        f.debug_struct("RangeCoordinator")
            .field("chunk_size", &self.chunk_size)
            .field("job", &generation)
            .field("status", &status)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
