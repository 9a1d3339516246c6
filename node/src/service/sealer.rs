//! The block sealer: on the leader, every `block_interval_ms` (or as soon as `block_max_txs`
//! transactions are pooled) it takes the pooled transactions in pool order, searches a nonce on
//! `seal_threads` threads through a [`RangeCoordinator`], and proposes the block as a
//! `SealBlock` command. Every member checks the block when it applies it; a block whose tip
//! moved meanwhile (a new leader sealed first) is refused there and this loop tries again.
//!
//! ```text
//! wait (interval, or woken by apply when the pool is full enough, or stopped)
//!   ─► leader? pool non-empty? ─► template (height, prev, txs) ─► seal (nonce search)
//!   ─► propose SealBlock ─► wait for its outcome ─► figures
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use serde::Serialize;
use sync_kit::work::RangeCoordinator;

use super::{Core, now_ms};
use crate::ledger::block::{self, BlockHeader, Sealed};
use crate::ledger::{Block, MAX_BLOCK_TXS};
use crate::raft::RaftLog;
use crate::state::Command;

/// Nonces one worker takes from the coordinator at a time.
const CHUNK: u64 = 16 * 1024;

/// The sealer's figures.
#[derive(Debug, Default)]
pub(super) struct SealFigures {
    sealed: AtomicU64,
    refused: AtomicU64,
    sealing_micros_total: AtomicU64,
    sealing_micros_last: AtomicU64,
}

/// What `/stats` shows of sealing.
#[derive(Clone, Debug, Serialize)]
pub struct SealStats {
    /// Blocks this member sealed and the cluster applied.
    pub blocks_sealed: u64,
    /// Blocks this member sealed that were refused (the tip moved meanwhile).
    pub blocks_refused: u64,
    /// Time spent searching nonces, in total and for the last block (microseconds).
    pub sealing_micros_total: u64,
    /// The last block's search.
    pub sealing_micros_last: u64,
    /// The coordinator's figures: jobs, chunks handed out, searched, wasted after a win.
    pub coordinator: sync_kit::work::WorkStats,
}

/// The running sealer.
pub(super) struct Sealer {
    stop: Arc<AtomicBool>,
    wake: Sender<()>,
    coordinator: Arc<RangeCoordinator>,
    figures: Arc<SealFigures>,
    thread: Option<JoinHandle<()>>,
}

impl Sealer {
    /// Starts the sealer thread. `wake` (from [`Sealer::waker`]) hurries it.
    pub(super) fn start(
        core: Arc<Core>,
        raft: Arc<RaftLog>,
        wake: (Sender<()>, Receiver<()>),
    ) -> std::io::Result<Sealer> {
        let stop = Arc::new(AtomicBool::new(false));
        let coordinator = Arc::new(RangeCoordinator::new(CHUNK));
        let figures = Arc::new(SealFigures::default());
        let thread = {
            let (stop, coordinator, figures) = (
                Arc::clone(&stop),
                Arc::clone(&coordinator),
                Arc::clone(&figures),
            );
            let woken = wake.1;
            thread::Builder::new()
                .name("sealer".into())
                .spawn(move || {
                    run(&core, &raft, &woken, &stop, &coordinator, &figures);
                })?
        };
        Ok(Sealer {
            stop,
            wake: wake.0,
            coordinator,
            figures,
            thread: Some(thread),
        })
    }

    /// A channel for apply to hurry the sealer (a full enough pool).
    pub(super) fn waker() -> (Sender<()>, Receiver<()>) {
        bounded(1)
    }

    /// The sealer's figures.
    pub(super) fn stats(&self) -> SealStats {
        let f = &self.figures;
        SealStats {
            blocks_sealed: f.sealed.load(Ordering::Relaxed),
            blocks_refused: f.refused.load(Ordering::Relaxed),
            sealing_micros_total: f.sealing_micros_total.load(Ordering::Relaxed),
            sealing_micros_last: f.sealing_micros_last.load(Ordering::Relaxed),
            coordinator: self.coordinator.stats(),
        }
    }
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // A new (empty) job makes the one being searched stale: its workers stop at their next
        // batch.
        self.coordinator.arm(0..0);
        let _ = self.wake.try_send(());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the sealer thread panicked");
        }
    }
}

fn run(
    core: &Arc<Core>,
    raft: &RaftLog,
    woken: &Receiver<()>,
    stop: &AtomicBool,
    coordinator: &RangeCoordinator,
    figures: &SealFigures,
) {
    let config = &core.config;
    let interval = Duration::from_millis(config.block_interval_ms.max(1));
    let max_txs = config.block_max_txs.clamp(1, MAX_BLOCK_TXS);
    let workers = match config.seal_threads {
        0 => thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut last_seal = Instant::now();
    loop {
        let wait = interval.saturating_sub(last_seal.elapsed());
        match woken.recv_timeout(wait.max(Duration::from_millis(1))) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        if !raft.is_leader() {
            last_seal = Instant::now();
            continue;
        }
        let template = match core.state.ledger().template(max_txs) {
            Ok(Some(template)) => template,
            Ok(None) => {
                last_seal = Instant::now();
                continue;
            }
            Err(error) => {
                tracing::error!(%error, "the sealer could not read the pool");
                last_seal = Instant::now();
                continue;
            }
        };
        if template.txs.len() < max_txs && last_seal.elapsed() < interval {
            continue;
        }
        let header = BlockHeader {
            height: template.height,
            prev: template.prev,
            merkle_root: block::merkle_root(&template.txids),
            timestamp: now_ms(),
            difficulty: config.difficulty_bits,
            nonce: 0,
        };
        let started = Instant::now();
        let header = match block::seal(&header, coordinator, workers) {
            Sealed::Found(header) => header,
            Sealed::Stopped => return,
            Sealed::Exhausted => {
                tracing::error!(
                    difficulty = config.difficulty_bits,
                    "no nonce has the work: lower --difficulty-bits"
                );
                last_seal = Instant::now();
                continue;
            }
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        figures.sealing_micros_last.store(micros, Ordering::Relaxed);
        figures
            .sealing_micros_total
            .fetch_add(micros, Ordering::Relaxed);
        let height = header.height;
        let block = Block {
            header,
            txs: template.txs,
        };
        let (answered, answer) = oneshot::channel();
        core.log.propose(
            Command::SealBlock { block },
            Some(Box::new(move |outcome| {
                let _ = answered.send(outcome);
            })),
        );
        match answer.recv() {
            Ok(Ok(crate::state::Outcome::Done)) => {
                figures.sealed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(height, micros, "block sealed");
            }
            Ok(Ok(outcome)) => {
                figures.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(height, ?outcome, "sealed block not applied");
            }
            Ok(Err(error)) => {
                figures.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(height, %error, "sealed block not applied");
            }
            Err(_) => return,
        }
        last_seal = Instant::now();
    }
}
