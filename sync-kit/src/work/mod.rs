//! Handing out a `u64` range in chunks to worker threads: [`RangeCoordinator`].
//!
//! Built for searches such as a proof-of-work nonce search: the range is cut into chunks, each
//! worker takes the next free chunk, searches it in small batches and asks
//! [`should_stop`](RangeCoordinator::should_stop) (one atomic load) between batches; the first
//! accepted [`report_success`](RangeCoordinator::report_success) stops every worker. The
//! coordinator is then re-armed for the next job; anything still in flight for an older job
//! (a claim, a report, a finished chunk) is refused as stale.
//!
//! - [`RangeCoordinator`]: the coordinator (`Send + Sync`, shared by `&` or `Arc`), and its
//!   convenience [`search`](RangeCoordinator::search), which arms a job and runs it on scoped
//!   threads.
//! - [`Job`]: the generation of one armed job. [`Chunk`]: a piece of a job's range.
//! - [`JobOutcome`], [`Refused`], [`WorkStats`].
//!
//! A job's life, as seen by each call (`g` is the job, "superseded" means a later `arm`):
//!
//! | job `g` is   | `next_chunk(g)`       | `should_stop(g)` | `report_success` | `wait(g)`    |
//! |--------------|-----------------------|------------------|------------------|--------------|
//! | running      | the next chunk, if any | `false`          | `Ok`: now won    | blocks       |
//! | won          | `None`                | `true`           | `AlreadyWon`     | `Found(v)`   |
//! | cancelled    | `None`                | `true`           | `Stale`          | `Cancelled`  |
//! | exhausted    | `None`                | `true`           | `Stale`          | `Exhausted`  |
//! | superseded   | `None`                | `true`           | `Stale`          | see [`wait`](RangeCoordinator::wait) |
//!
//! Running → won, cancelled or exhausted happens once; only `arm` starts another job. A job is
//! exhausted when all its chunks were handed out and each was finished as searched: never
//! while a chunk is out, and never if any chunk was given up unsearched.
//!
//! **Invariant.** Within a job, every chunk is handed out at most once, and none is handed out
//! for a job once a later `arm` has returned. Chunks are taken by one compare-exchange on a
//! cursor word that carries the job's generation beside the count of chunks left; `arm` closes
//! that word (an atomic swap) before it rewrites the job's layout, and reopens it for the new
//! job after, so a worker whose compare-exchange succeeded read the layout of its own job. Job
//! status changes (won, cancelled, exhausted, superseded) happen under one small mutex, which is
//! also what [`wait`](RangeCoordinator::wait) sleeps on; handing out chunks, finishing them and
//! `should_stop` never take it.
//!
//! The cursor carries the generation's low 24 bits (the other 40 count chunks, so a job has at
//! most 2⁴⁰ − 1 chunks: over a larger range the chunk size grows). A worker could take a chunk
//! of the wrong job only if it stalled between two instructions of `next_chunk` while a multiple
//! of 2²⁴ (16.7 million) jobs were armed: the usual bound of a tagged word. The job itself
//! (`Job`, the status word) carries the full generation.
//!
//! ```
//! use sync_kit::work::{JobOutcome, RangeCoordinator};
//!
//! // Two workers, chunks of 1,000 nonces, `should_stop` checked every 100.
//! let coordinator = RangeCoordinator::new(1_000);
//! let outcome = coordinator.search(0..1_000_000, 2, 100, |nonce| nonce == 123_456);
//! assert_eq!(outcome, JobOutcome::Found(123_456));
//! assert_eq!(coordinator.stats().wins, 1);
//!
//! // Driving a job by hand.
//! let job = coordinator.arm(0..10);
//! while let Some(chunk) = coordinator.next_chunk(job) {
//!     coordinator.finish_chunk(&chunk); // searched it, nothing found
//! }
//! assert_eq!(coordinator.wait(job), JobOutcome::Exhausted);
//! ```

mod coordinator;
mod search;
mod word;

pub use coordinator::RangeCoordinator;

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// One armed job: its generation, unique within its coordinator (the first `arm` returns
/// generation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Job(u64);

impl Job {
    /// The generation: the number of jobs armed on this coordinator up to and including this one.
    pub fn generation(self) -> u64 {
        self.0
    }
}

/// A piece of a job's range, handed out to one worker.
///
/// Every chunk handed out should be ended exactly once: [`finish_chunk`] (searched all of it),
/// [`report_success`] (found a value in it) or [`abandon_chunk`] (stopped early); otherwise the
/// job cannot become exhausted and the statistics do not add up.
///
/// [`finish_chunk`]: RangeCoordinator::finish_chunk
/// [`report_success`]: RangeCoordinator::report_success
/// [`abandon_chunk`]: RangeCoordinator::abandon_chunk
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Chunk {
    /// The job it belongs to.
    pub job: Job,
    /// The values to search (never empty).
    pub range: Range<u64>,
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobOutcome {
    /// A worker found this value (the first accepted report).
    Found(u64),
    /// Every value of the range was searched without success.
    Exhausted,
    /// Cancelled, or superseded by a later `arm` before it ended.
    Cancelled,
}

/// Why [`report_success`](RangeCoordinator::report_success) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refused {
    /// The chunk's job is no longer running: a later job was armed, or the job was cancelled
    /// (or it was exhausted, which means this chunk had already been finished).
    Stale,
    /// Another report for the same job was accepted first.
    AlreadyWon,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::Stale => "the chunk's job is no longer running (re-armed or cancelled)",
            Refused::AlreadyWon => "the chunk's job was already won by another report",
        })
    }
}

impl std::error::Error for Refused {}

/// The coordinator's counters since it was created, read one by one (each is exact; a read
/// during a search may catch them between two updates).
///
/// Every chunk handed out ends as exactly one of searched, wasted or the win of its job (if its
/// worker ends it: see [`Chunk`]), so once every worker is done,
/// `chunks_handed_out == chunks_searched + chunks_wasted + wins`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkStats {
    /// Jobs armed.
    pub jobs: u64,
    /// Chunks handed out by `next_chunk`.
    pub chunks_handed_out: u64,
    /// Chunks finished without success while their job was running.
    pub chunks_searched: u64,
    /// Chunks ended without being searched to the end for a running job: finished, abandoned or
    /// refused after their job was won, cancelled or superseded, or abandoned (which cancels it).
    pub chunks_wasted: u64,
    /// Reports of success accepted (at most one per job).
    pub wins: u64,
}
