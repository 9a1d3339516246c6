//! The applier: durable batches from the log, applied in log order, then their effects, then
//! their answers.
//!
//! ```text
//! batch ─► (apply-batch held) split by shard into lanes ─► each lane, on its own thread:
//!            State::apply in log order; effects (a live push, sessions of a deleted account)
//!        ─► (released) the marks of the batch's pushes go to the log as one command
//!        ─► every waiter gets its outcome; syncs are answered
//! ```
//!
//! Commands on different mailbox shards are independent (each touches only its users' shards,
//! and a message's id is its log index, not a shared counter), so a batch's lanes apply in
//! parallel and the state is the same as applying the batch in log order: lane `l` takes the
//! shards `s` with `s % lanes == l`, in log order. A `MarkDelivered` naming users of several
//! lanes is split per lane; a keyed send whose sender and recipient are in different lanes
//! (its key is kept with the sender) applies alone, after the lanes before it and before the
//! ones after it. Small batches apply on the applier thread alone: fanning out costs more than it
//! saves.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};

use super::{Core, SessionHandle, lock_failed};
use crate::log::snapshot::SnapshotStore;
use crate::log::{Batch, CommandLog, Committed, Waiter};
use crate::protocol::{Push, ServerFrame};
use crate::state::{Capture, Command, Outcome, SHARDS, shard_of};

/// Batches smaller than this apply on the applier thread alone.
const PARALLEL_FROM: usize = 16;

/// One lane's share of a batch: commands in log order, with their waiters.
type Lane = Vec<(u64, Command, Option<Waiter>)>;

/// A part of a batch: lanes applied at once, or one command applied alone between them.
enum Step {
    Lanes(Vec<Lane>),
    Alone((u64, Command, Option<Waiter>)),
}

/// What a lane gives back: the answers to make, the pushes to mark.
#[derive(Default)]
struct LaneDone {
    answers: Vec<(Waiter, Outcome)>,
    pushed: Pushed,
}

pub(super) struct Applier {
    core: Arc<Core>,
    batches: Receiver<Batch>,
    captures: Sender<Capture>,
    /// Lanes 1.. run on these threads; lane 0 on the applier's own.
    helpers: Vec<Sender<Lane>>,
    helped: Receiver<LaneDone>,
}

impl Applier {
    /// Starts `lanes - 1` helper threads and returns the applier to run.
    pub(super) fn new(
        core: Arc<Core>,
        batches: Receiver<Batch>,
        captures: Sender<Capture>,
        lanes: usize,
    ) -> std::io::Result<Applier> {
        let (done, helped) = unbounded();
        let mut helpers = Vec::new();
        for lane in 1..lanes.clamp(1, SHARDS) {
            let (work, queue) = unbounded::<Lane>();
            let (core, done) = (Arc::clone(&core), done.clone());
            thread::Builder::new()
                .name(format!("apply-{lane}"))
                .spawn(move || {
                    for entries in queue {
                        if done.send(core.apply_lane(entries)).is_err() {
                            return;
                        }
                    }
                })?;
            helpers.push(work);
        }
        Ok(Applier {
            core,
            batches,
            captures,
            helpers,
            helped,
        })
    }

    /// Applies batches until the log stops; snapshots every `snapshot_every_records` commands
    /// (or `snapshot_interval_secs` with any), when a batch asks for one (a member joined), and
    /// after a failed log write (a snapshot is the
    /// one way to let the log drop old segments and free space), at most once a second.
    pub(super) fn run(self) {
        let interval = Duration::from_secs(self.core.config.snapshot_interval_secs.max(1));
        let mut last_snapshot = Instant::now();
        let mut storage_failed = false;
        let mut snapshot_soon = false;
        loop {
            match self
                .batches
                .recv_timeout(interval.min(Duration::from_secs(1)))
            {
                Ok(batch) => {
                    storage_failed |= batch.storage_failed;
                    snapshot_soon |= batch.snapshot_soon;
                    self.apply(batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let pending = self.core.records_since_snapshot.load(Ordering::Relaxed);
            let reclaim = storage_failed && last_snapshot.elapsed() >= Duration::from_secs(1);
            if reclaim
                || snapshot_soon
                || pending >= self.core.config.snapshot_every_records.max(1)
                || (pending > 0 && last_snapshot.elapsed() >= interval)
            {
                self.snapshot();
                last_snapshot = Instant::now();
                storage_failed = false;
                snapshot_soon = false;
            }
        }
    }

    /// Applies a batch, then queues the marks of the pushes it made, then answers: whatever a
    /// client does after its answer comes after those marks in the log.
    fn apply(&self, batch: Batch) {
        let core = &self.core;
        if let Some(image) = batch.install {
            let index = image.applied;
            match core.state.install(image) {
                Ok(()) => tracing::info!(index, "snapshot from the leader installed"),
                Err(error) => tracing::error!(index, %error, "snapshot from the leader refused"),
            }
        }
        let applied = batch.entries.len() as u64;
        let mut done = LaneDone::default();
        {
            let _batch = match core.state.batch() {
                Ok(guard) => Some(guard),
                Err(error) => {
                    lock_failed(error);
                    None
                }
            };
            if batch.entries.len() < PARALLEL_FROM || self.helpers.is_empty() {
                let lane = batch
                    .entries
                    .into_iter()
                    .map(|c| (c.index, c.command, c.waiter))
                    .collect();
                done = core.apply_lane(lane);
            } else {
                core.parallel_batches.fetch_add(1, Ordering::Relaxed);
                for step in self.plan(batch.entries, &mut done) {
                    match step {
                        Step::Lanes(lanes) => done.merge(self.apply_lanes(lanes)),
                        Step::Alone(entry) => done.merge(core.apply_lane(vec![entry])),
                    }
                }
            }
        }
        core.state.advance_to(batch.through);
        core.records_since_snapshot
            .fetch_add(applied, Ordering::Relaxed);
        done.pushed.mark_delivered(core);
        for (waiter, outcome) in done.answers {
            waiter(Ok(outcome));
        }
        for synced in batch.synced {
            let _ = synced.send(Ok(()));
        }
        for read in batch.reads {
            read(Ok(()));
        }
    }

    /// Applies lanes at once: lane 0 here, the others on the helper threads.
    fn apply_lanes(&self, mut lanes: Vec<Lane>) -> LaneDone {
        let mine = std::mem::take(&mut lanes[0]);
        let mut sent = 0;
        for (helper, lane) in self.helpers.iter().zip(lanes.into_iter().skip(1)) {
            if !lane.is_empty() && helper.send(lane).is_ok() {
                sent += 1;
            }
        }
        let mut done = self.core.apply_lane(mine);
        for _ in 0..sent {
            match self.helped.recv() {
                Ok(lane) => done.merge(lane),
                Err(_) => break,
            }
        }
        done
    }

    /// Splits a batch into steps: runs of lanes (each lane in log order), and between them any
    /// command that touches several lanes and cannot be split (a keyed send whose sender and
    /// recipient are in different lanes), applied alone once everything before it is. A
    /// `MarkDelivered` spanning several lanes is split per lane; its waiter is answered once the
    /// batch is applied.
    fn plan(&self, entries: Vec<Committed>, done: &mut LaneDone) -> Vec<Step> {
        let count = self.helpers.len() + 1;
        let lane_of = |user: &str| shard_of(user) % count;
        let fresh = || -> Vec<Lane> { (0..count).map(|_| Vec::new()).collect() };
        let mut steps = Vec::new();
        let mut lanes = fresh();
        for Committed {
            index,
            command,
            waiter,
        } in entries
        {
            let users = command.users();
            let first = users.first().map_or(0, |user| lane_of(user));
            let single = users.iter().all(|user| lane_of(user) == first);
            // Ledger-ordered commands keep their order among themselves: on lane 0, or alone.
            let ledger = command.ledger_ordered();
            match command {
                _ if ledger && single && first == 0 => lanes[0].push((index, command, waiter)),
                _ if single && !ledger => lanes[first].push((index, command, waiter)),
                Command::MarkDelivered { marks } => {
                    let mut parts: Vec<Vec<(String, Vec<u64>)>> = vec![Vec::new(); count];
                    for (user, ids) in marks {
                        parts[lane_of(&user)].push((user, ids));
                    }
                    for (lane, marks) in lanes.iter_mut().zip(parts) {
                        if !marks.is_empty() {
                            lane.push((index, Command::MarkDelivered { marks }, None));
                        }
                    }
                    if let Some(waiter) = waiter {
                        done.answers.push((waiter, Outcome::Done));
                    }
                }
                command => {
                    steps.push(Step::Lanes(std::mem::replace(&mut lanes, fresh())));
                    steps.push(Step::Alone((index, command, waiter)));
                }
            }
        }
        steps.push(Step::Lanes(lanes));
        steps
    }

    /// Hands a capture of the state (O(users), between batches) to the snapshot thread, unless
    /// it is still writing the last one: building and writing the image stalls no command.
    fn snapshot(&self) {
        match self.core.state.capture() {
            Ok(image) => {
                if self.captures.try_send(image).is_ok() {
                    self.core.records_since_snapshot.store(0, Ordering::Relaxed);
                }
            }
            Err(error) => {
                lock_failed(error);
            }
        }
    }
}

impl LaneDone {
    fn merge(&mut self, other: LaneDone) {
        self.answers.extend(other.answers);
        self.pushed.0.extend(other.pushed.0);
    }
}

impl Core {
    /// Applies one lane's commands in log order, with their effects.
    fn apply_lane(&self, lane: Lane) -> LaneDone {
        let mut done = LaneDone::default();
        for (index, command, waiter) in lane {
            let outcome = self
                .state
                .apply(index, &command)
                .unwrap_or_else(|error| Outcome::Refused(lock_failed(error)));
            match (&command, &outcome) {
                (Command::SendMessage { to, .. }, Outcome::Sent { id, .. }) => {
                    self.push(to, *id, &mut done.pushed);
                }
                (
                    Command::CreateAccount { username, .. } | Command::OpenAccount { username, .. },
                    Outcome::Done,
                ) => {
                    tracing::info!(user = %username, index, "account created");
                }
                (Command::DeleteAccount { username, .. }, Outcome::Done) => {
                    self.end_sessions(username);
                    tracing::info!(user = %username, index, "account deleted");
                }
                (_, Outcome::Pooled { .. } | Outcome::Done)
                    if matches!(
                        command,
                        Command::OpenAccount { .. }
                            | Command::SubmitTransaction { .. }
                            | Command::Transfer { .. }
                            | Command::KeyedTransfer { .. }
                    ) && self.state.ledger().pooled() >= self.config.block_max_txs =>
                {
                    let _ = self.seal_wake.try_send(());
                }
                _ => {}
            }
            if let Some(waiter) = waiter {
                done.answers.push((waiter, outcome));
            }
        }
        done
    }

    /// Pushes message `id` to every live session of `user`, if it is still waiting (not handed
    /// out by a read). A message counts as delivered once at least one session's queue took it;
    /// a full queue drops the push rather than stall the applier behind one slow reader.
    fn push(&self, user: &str, id: u64, pushed: &mut Pushed) {
        let sessions: Vec<SessionHandle> = match self.sessions.read() {
            Ok(sessions) => sessions.get(user).cloned().unwrap_or_default(),
            Err(error) => {
                lock_failed(error);
                return;
            }
        };
        if sessions.is_empty() {
            return;
        }
        let message = match self.state.hand_out(user, id) {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(error) => {
                lock_failed(error);
                return;
            }
        };
        let frame = ServerFrame::Push(Push::Deliver(message));
        let took = sessions
            .iter()
            .filter(|session| session.outbox.offer(frame.clone()))
            .count();
        if took > 0 {
            pushed.add(user, id);
        } else {
            self.take_back(user, &[id]);
        }
    }

    /// Ends every session of a deleted account.
    fn end_sessions(&self, user: &str) {
        match self.sessions.write() {
            Ok(mut sessions) => {
                sessions.remove(user);
            }
            Err(error) => {
                lock_failed(error);
            }
        }
    }
}

/// Messages pushed live during one batch: their marks go to the log as one command.
#[derive(Default)]
struct Pushed(Vec<(String, Vec<u64>)>);

impl Pushed {
    fn add(&mut self, user: &str, id: u64) {
        match self.0.iter_mut().find(|(u, _)| u == user) {
            Some((_, ids)) => ids.push(id),
            None => self.0.push((user.to_string(), vec![id])),
        }
    }

    fn mark_delivered(self, core: &Arc<Core>) {
        if self.0.is_empty() {
            return;
        }
        let marks = self.0;
        let taken_back = marks.clone();
        let core_again = Arc::clone(core);
        core.log.propose(
            Command::MarkDelivered { marks },
            Some(Box::new(move |result| {
                if let Err(error) = result {
                    // The pushes happened, but their marks are lost: offered again by a read
                    // (delivery is at least once when the disk fails).
                    tracing::warn!(%error, "delivered marks not logged");
                    for (user, ids) in &taken_back {
                        core_again.take_back(user, ids);
                    }
                }
            })),
        );
    }
}

/// Writes the captures the applier hands over as snapshots, then lets the log drop what each
/// covers.
pub(super) fn write_snapshots(
    store: &SnapshotStore,
    log: &dyn CommandLog,
    captures: Receiver<Capture>,
) {
    for capture in captures {
        let applied = capture.applied();
        match store.save(capture.image()) {
            Ok(true) => {
                log.compact(applied);
                tracing::info!(applied, "snapshot written; the log is compacted behind it");
            }
            Ok(false) => {
                tracing::info!(
                    applied,
                    "snapshot skipped: a newer one was installed meanwhile"
                );
            }
            Err(error) => tracing::error!(%error, "snapshot failed; the log keeps growing"),
        }
    }
}
