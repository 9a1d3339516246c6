//! The single-node log: commands are numbered under the `wal-sequence` lock, written by one
//! thread with group commit, and handed to the applier once durable.
//!
//! ```text
//! propose ──(wal-sequence: next index, queue)──► log thread: take every job queued,
//!                                                 write them all, fsync once ──► applier
//! ```
//!
//! Group commit: N proposals queued while the previous `fsync` ran cost one `fsync`, not N. The
//! queue is filled under `wal-sequence`, so queue order = index order = log order.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender, unbounded};
use sync_kit::{Level, Mutex};

use super::segments::{self, Entry, Recovered, Segments};
use super::{Batch, CommandLog, Committed, Waiter};
use crate::protocol::{ErrorCode, ErrorReply};
use crate::state::Command;

/// Lock level of `wal-sequence`, the last of the node's locks (see `docs/node.md`).
pub const WAL_SEQUENCE_LEVEL: Level = Level(90);

/// Jobs a log thread takes at most per batch.
const MAX_BATCH: usize = 4096;

enum Job {
    Append {
        entry: Entry,
        waiter: Option<Waiter>,
    },
    Sync(oneshot::Sender<Result<(), String>>),
    Compact {
        covered: u64,
    },
    Stop,
}

/// The log of one node, on local disk.
#[derive(Debug)]
pub struct LocalLog {
    /// The last index given out.
    sequence: Mutex<u64>,
    jobs: Sender<Job>,
    writer: std::sync::Mutex<Option<thread::JoinHandle<()>>>,
}

impl LocalLog {
    /// Recovers the log in `dir` (cutting a torn tail) and starts its thread. `applied` is the
    /// index a snapshot already covers. Returns the log, what it recovered (to be replayed), and
    /// the stream of durable batches for the applier.
    pub fn open(
        dir: &Path,
        applied: u64,
    ) -> io::Result<(Arc<LocalLog>, Recovered, Receiver<Batch>)> {
        let (segments, recovered) = Segments::open(dir, applied + 1)?;
        let last = recovered
            .entries
            .last()
            .map_or(applied, |entry| entry.index.max(applied));
        let (jobs, queue) = unbounded();
        let (batches, applier) = unbounded();
        let writer = LogThread {
            segments,
            last_written: last,
        };
        let writer = thread::Builder::new()
            .name("log".into())
            .spawn(move || writer.run(queue, batches))?;
        let log = LocalLog {
            sequence: Mutex::with_level("wal-sequence", WAL_SEQUENCE_LEVEL, last),
            jobs,
            writer: std::sync::Mutex::new(Some(writer)),
        };
        Ok((Arc::new(log), recovered, applier))
    }
}

fn stopped() -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, "the log has stopped")
}

impl CommandLog for LocalLog {
    fn propose(&self, command: Command, waiter: Option<Waiter>) {
        let refused = match self.sequence.lock() {
            Ok(mut last) => {
                *last += 1;
                let entry = Entry {
                    index: *last,
                    command,
                };
                match self.jobs.send(Job::Append { entry, waiter }) {
                    Ok(()) => return,
                    Err(crossbeam_channel::SendError(Job::Append { waiter, .. })) => {
                        (waiter, stopped())
                    }
                    Err(_) => return,
                }
            }
            Err(error) => {
                tracing::error!(%error, "lock refused inside the node");
                (
                    waiter,
                    ErrorReply::new(ErrorCode::Internal, format!("internal lock error: {error}")),
                )
            }
        };
        if let (Some(waiter), error) = refused {
            waiter(Err(error));
        }
    }

    fn sync(&self) -> Result<(), String> {
        let (done, synced) = oneshot::channel();
        self.jobs
            .send(Job::Sync(done))
            .map_err(|_| "the log has stopped".to_string())?;
        synced
            .recv()
            .map_err(|_| "the log has stopped".to_string())?
    }

    fn compact(&self, covered: u64) {
        let _ = self.jobs.send(Job::Compact { covered });
    }

    /// Stops the log thread after everything queued before the call: it is written, and handed
    /// to the applier; the applier's stream then ends.
    fn stop(&self) {
        let _ = self.jobs.send(Job::Stop);
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!("the log thread panicked");
        }
    }
}

struct LogThread {
    segments: Segments,
    /// The index of the last entry written (or covered by the snapshot at start).
    last_written: u64,
}

impl LogThread {
    fn run(mut self, queue: Receiver<Job>, applier: Sender<Batch>) {
        let mut buffer = Vec::new();
        while let Ok(first) = queue.recv() {
            let mut batch = Batch::default();
            let mut stop = false;
            let mut compact = None;
            for job in std::iter::once(first).chain(queue.try_iter().take(MAX_BATCH - 1)) {
                match job {
                    Job::Append { entry, waiter } => {
                        segments::encode_into(&entry, &mut buffer);
                        batch.entries.push(Committed {
                            index: entry.index,
                            command: entry.command,
                            waiter,
                        });
                    }
                    Job::Sync(done) => batch.synced.push(done),
                    Job::Compact { covered } => compact = Some(covered),
                    Job::Stop => {
                        stop = true;
                        break;
                    }
                }
            }
            let written = self.segments.append(&buffer);
            buffer.clear();
            match written {
                Ok(()) => {
                    if let Some(last) = batch.entries.last() {
                        self.last_written = last.index;
                    }
                    if applier.send(batch).is_err() {
                        return; // the applier is gone: the node is stopping
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "log write failed: the commands of this batch are not durable and not applied");
                    let reply =
                        ErrorReply::new(ErrorCode::Internal, format!("storage failure: {error}"));
                    for committed in batch.entries {
                        if let Some(waiter) = committed.waiter {
                            waiter(Err(reply.clone()));
                        }
                    }
                    for done in batch.synced {
                        let _ = done.send(Err(reply.message.clone()));
                    }
                    let failed = Batch {
                        storage_failed: true,
                        ..Batch::default()
                    };
                    if applier.send(failed).is_err() {
                        return;
                    }
                }
            }
            if let Some(covered) = compact
                && let Err(error) = self.segments.compact(covered, self.last_written + 1)
            {
                tracing::warn!(%error, "could not compact the log; it keeps growing");
            }
            if stop {
                return;
            }
        }
    }
}
