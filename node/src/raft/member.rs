//! One member of a cluster: the [`CommandLog`] whose order raft decides, and the loop that drives
//! raft-rs's `RawNode`.
//!
//! ```text
//! propose(command) ──┐
//! sync, compact ─────┤
//! peers' connections ┼─► mailbox ─► the raft loop (one thread), each turn:
//! syncer's answers ──┘  (one epoll) 1. take what arrived; tick every 100 ms; step peers' messages;
//!                             propose (with a context naming this member's proposal); Readies
//!                             whose fsync is done: durable (on_persist_ready), acks sent
//!                          2. Ready: send the leader's messages (it may send before its fsync)
//!                          3. a snapshot from the leader: snapshot.json, then raft's storage
//!                          4. committed entries ─► the applier, in log order, with the waiters
//!                             of this member's own proposals
//!                          5. write the new entries and the hard state; the fsync goes to the
//!                             syncer thread, and the Ready waits for it in `flights` with its
//!                             acknowledgements (advance_append_async)
//! ```
//!
//! The loop never waits for its fsync: while the syncer runs one, the loop steps the peers'
//! answers, hands on what they commit, and writes the next Ready, which the next fsync covers
//! (fsyncs that queue up are done as one). Raft counts a Ready durable, and its
//! acknowledgements leave, only once its fsync is done, in order (those one fsync releases leave
//! together, and of a follower's acks to its leader only the last counts, so only it is sent:
//! `drop_superseded_acks`); entries reach the applier only once committed and durable here
//! (raft-rs hands on no entry past what is persisted).
//! The only voter of a configuration (a node on its own) gains nothing from that and pays a
//! thread hand-off per commit: it writes and fsyncs within the turn, then sends what needed the
//! fsync and advances (`finish`). A failed write is handled within the turn; a failed fsync cuts
//! the segment back to what is durable and starts raft again from it, as a crash would.
//!
//! Every member applies every committed command through the same applier as a single node;
//! `State::apply` does not know raft exists. A proposal on a follower is forwarded to the leader
//! by raft-rs itself (a turn's adjacent ones merged into one message:
//! `merge_forwarded_proposals`); its entry carries a context (member id, incarnation, sequence
//! number), so whichever member proposed it finds its waiter when the entry commits, wherever it
//! was appended. A proposal that does not commit within [`WRITE_TIMEOUT`] is answered `unavailable`
//! (it was never acknowledged; it may still commit later, which is why sends carry keys). While
//! no leader is known, proposals wait (the same bound) and then get `not_leader` without one.
//!
//! Invariant: an entry reaches the applier only once raft reports it committed, and entries
//! reach it in index order with no gaps (a snapshot install replaces the gap it covers).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io;
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, unbounded};
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeType, ConfState, Entry as RaftEntry, EntryType, Message, MessageType,
    Ready, Snapshot,
};
use raft::{GetEntriesContext, INVALID_ID, RawNode, StateRole, Storage as _};
use serde::Serialize;
use slog::Drain as _;

use super::cluster::{Cluster, Member};
use super::mailbox::{Mailbox, MailboxHandle};
use super::storage::DiskStorage;
use super::transport::{PeerHealth, Transport};
use crate::log::snapshot::{self, SnapshotStore};
use crate::log::{Batch, CommandLog, Committed, Entry, ReadWaiter, Recovered, Waiter};
use crate::protocol::{ErrorCode, ErrorReply};
use crate::state::Command;

/// How often raft's clock ticks.
const TICK: Duration = Duration::from_millis(100);
/// Ticks without a leader's heartbeat before a follower stands for election (1 to 2 s).
const ELECTION_TICKS: usize = 10;
/// Ticks between a leader's heartbeats.
const HEARTBEAT_TICKS: usize = 3;
/// How long a change waits for a majority (or for a leader to be known) before it is answered
/// `unavailable` (or `not_leader`).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Inputs taken per turn of the loop: one Ready (one fsync) covers them all.
const MAX_INPUTS_PER_TURN: usize = 4096;
/// The first byte of a command entry's data: the encoding of what follows.
const ENTRY_FORMAT: u8 = 1;

/// What the loop is asked to do.
enum Input {
    Propose(Command, Option<Waiter>),
    Message(Box<Message>),
    Sync(oneshot::Sender<Result<(), String>>),
    Compact(u64),
    Status(Box<dyn FnOnce(RaftStatus) + Send>),
    Read(ReadWaiter),
    Stop,
    /// An operator's change of the voters; only the leader proposes it.
    ChangeMembership(MembershipChange, Waiter),
    /// The syncer finished an fsync (its outcome is in `MemberLoop::synced`): only wakes the
    /// loop.
    Synced,
}

/// A change of the cluster's voters (raft's ConfChange v1, one member at a time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add this member as a voter (its addresses travel in the change, so every member's
    /// transport learns where it listens).
    Add(Member),
    /// Remove the voter with this id.
    Remove(u64),
}

/// A cluster member's log: ordered by raft, durable on a majority, then applied.
pub struct RaftLog {
    id: u64,
    inbox: MailboxHandle<Input>,
    /// Reads need not ask raft (set by the loop): see `MemberLoop::local_reads`.
    local_reads: Arc<AtomicBool>,
    /// Whether this member leads (set by the loop after every round).
    leading: Arc<AtomicBool>,
    transport: Arc<Transport>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Test hook: the syncer's next fsyncs to fail (see [`RaftLog::fail_syncs`]).
    failing_syncs: Arc<AtomicU64>,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What `/stats` shows of raft.
#[derive(Clone, Debug, Serialize)]
pub struct RaftStatus {
    /// This member's id.
    pub id: u64,
    /// `leader`, `follower`, `candidate` or `pre_candidate`.
    pub role: &'static str,
    /// The current term.
    pub term: u64,
    /// The leader this member knows of (0: none).
    pub leader_id: u64,
    /// The highest index known committed.
    pub commit_index: u64,
    /// The highest index handed to the applier.
    pub applied_index: u64,
    /// The last index in this member's log.
    pub last_index: u64,
    /// The voters of the configuration this member has applied, in increasing order.
    pub voters: Vec<u64>,
    /// The leader's chat address, when a leader is known.
    pub leader_chat_addr: Option<String>,
    /// The voters' chat addresses, in the order of `voters`.
    pub voter_chat_addrs: Vec<String>,
    /// The other members.
    pub peers: Vec<PeerStatus>,
}

/// One other member, as this one sees it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    /// The highest index known replicated on that member (known on the leader only; 0 elsewhere).
    pub match_index: u64,
    /// The link to it.
    #[serde(flatten)]
    pub link: PeerHealth,
}

/// What [`RaftLog::open`] gives back.
pub struct Opened {
    /// The log.
    pub log: Arc<RaftLog>,
    /// Committed entries after the state's snapshot, to apply before serving.
    pub recovered: Recovered,
    /// The applier's stream of committed batches.
    pub batches: Receiver<Batch>,
}

impl RaftLog {
    /// Opens this member's raft storage in `data_dir/raft`, recovers the committed entries after
    /// `applied` (the index the state's snapshot covers), listens on the member's `raft_addr` and
    /// starts the raft loop.
    pub fn open(
        cluster: &Cluster,
        data_dir: &Path,
        snapshots: Arc<SnapshotStore>,
        applied: u64,
    ) -> Result<Opened, String> {
        let me = cluster.me().clone();
        let raft_dir = data_dir.join("raft");
        let mut storage = open_storage(&raft_dir, cluster, &snapshots)?;

        // A node on its own whose state is ahead of a raft log that never ran (a data directory
        // brought forward from an earlier format): raft starts where the state is.
        if cluster.standalone && applied > 0 && storage.hard_state().term == 0 {
            let conf_state = ConfState::from((vec![me.id], vec![]));
            storage
                .start_at(applied, conf_state)
                .map_err(|e| format!("raft's log in {}: {e}", raft_dir.display()))?;
        }
        // Recovery: the committed entries the state's snapshot does not cover.
        let first = storage.first_index().map_err(|e| e.to_string())?;
        if applied + 1 < first {
            return Err(format!(
                "raft's log in {} starts at index {first}, but the state's snapshot covers only \
                 up to {applied}: the entries between are gone; refusing to start (restore \
                 snapshot.json, or replace this member: admin remove-node, then add-node)",
                raft_dir.display()
            ));
        }
        let mut commit = storage.hard_state().commit;
        // The commit index is stored lazily; what was applied was committed. On a node on its
        // own, so is every entry it made durable: it is the only voter, and nobody else can
        // replace its log. Recovery then applies everything the last run wrote, before serving.
        let mut committed = applied;
        if cluster.standalone {
            committed = committed.max(storage.last_index().map_err(|e| e.to_string())?);
        }
        if committed > commit {
            storage.set_commit(committed);
            storage.sync().map_err(|e| format!("raft storage: {e}"))?;
            commit = committed;
        }
        let mut recovered = Recovered {
            through: commit,
            ..Recovered::default()
        };
        let committed = committed_after(&storage, &raft_dir, applied, commit)?;
        let membership = committed.membership;
        for (index, command) in committed.commands {
            match command {
                Ok(command) => recovered.entries.push(Entry { index, command }),
                Err(error) => tracing::error!(index, %error, "entry skipped"),
            }
        }

        let config = raft::Config {
            id: me.id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied: commit,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            batch_append: true,
            ..raft::Config::default()
        };
        let recovered_last = storage.last_index().map_err(|e| e.to_string())?;
        let logger = slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!());
        let raw = start_raw(&config, storage, &logger)?;

        let (mailbox, inbox) =
            Mailbox::new().map_err(|e| format!("cannot start the raft loop's mailbox: {e}"))?;
        // A node on its own has no peers to hear from: no raft port.
        let listener = match cluster.standalone {
            true => None,
            false => Some(
                TcpListener::bind(me.raft_addr)
                    .map_err(|e| format!("cannot listen for raft on {}: {e}", me.raft_addr))?,
            ),
        };
        let peers = cluster
            .members
            .iter()
            .filter(|m| m.id != me.id)
            .map(|m| (m.id, m.raft_addr.to_string()))
            .collect();
        let adopter = inbox.clone();
        let transport = Arc::new(
            Transport::start(
                me.id,
                listener,
                peers,
                Box::new(move |peer, stream| adopter.adopt(peer, stream)),
            )
            .map_err(|e| format!("cannot start the raft transport: {e}"))?,
        );
        let (sync_jobs, jobs) = unbounded();
        let (synced_sender, synced) = unbounded();
        let failing_syncs = Arc::new(AtomicU64::new(0));
        let syncer = {
            let wake = inbox.clone();
            let failing = Arc::clone(&failing_syncs);
            thread::Builder::new()
                .name("raft-sync".into())
                .spawn(move || run_syncer(jobs, synced_sender, wake, failing))
                .map_err(|e| format!("cannot start the raft sync thread: {e}"))?
        };
        let durable_len = raw.store().written_len();
        let (batches, applier) = unbounded();
        let local_reads = Arc::new(AtomicBool::new(false));
        let leading = Arc::new(AtomicBool::new(false));
        let mut member = MemberLoop {
            leading: Arc::clone(&leading),
            raw,
            raft_config: config,
            logger,
            raft_dir,
            storage_error: None,
            held: None,
            flights: VecDeque::new(),
            sync_jobs: Some(sync_jobs),
            synced,
            syncer: Some(syncer),
            generation: 0,
            last_ticket: 0,
            synced_ticket: 0,
            ticket_lens: VecDeque::new(),
            durable_len,
            recovered_last,
            local_reads: Arc::clone(&local_reads),
            cluster: cluster.clone(),
            transport: Arc::clone(&transport),
            mailbox,
            applier: batches,
            snapshots,
            incarnation: incarnation(),
            next_seq: 0,
            pending: BTreeMap::new(),
            waiting: VecDeque::new(),
            syncs: Vec::new(),
            handed: commit,
            reads: BTreeMap::new(),
            reads_at: Vec::new(),
        };
        for entry in membership {
            member.change_membership(&entry);
        }
        let thread = thread::Builder::new()
            .name("raft".into())
            .spawn(move || member.run())
            .map_err(|e| format!("cannot start the raft thread: {e}"))?;
        Ok(Opened {
            log: Arc::new(RaftLog {
                id: me.id,
                inbox,
                local_reads,
                leading,
                transport,
                thread: std::sync::Mutex::new(Some(thread)),
                failing_syncs,
            }),
            recovered,
            batches: applier,
        })
    }

    /// Whether this member is the leader now (as of the loop's last round).
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Raft's figures, from the loop (`None` if it does not answer within a second).
    pub fn status(&self) -> Option<RaftStatus> {
        let (answer, status) = oneshot::channel();
        self.status_then(Box::new(move |figures| {
            let _ = answer.send(figures);
        }))
        .ok()?;
        status.recv_timeout(Duration::from_secs(1)).ok()
    }

    /// Raft's figures, given to `then` on the raft thread (for callers that must not wait, such
    /// as an event loop). `Err` if the loop has stopped (`then` is not called).
    pub fn status_then(&self, then: Box<dyn FnOnce(RaftStatus) + Send>) -> Result<(), String> {
        self.inbox
            .send(Input::Status(then))
            .map_err(|_| "this member's raft loop has stopped".to_string())
    }

    /// Changes the cluster's voters through raft: on the leader, proposes the change and waits
    /// (at most [`WRITE_TIMEOUT`]) until it is committed and applied here; elsewhere answers
    /// `not_leader` with the leader's chat address. Refuses (`invalid_argument`) removing an
    /// unknown id or the last voter and adding an existing id, and (`unavailable`) a change while
    /// another is not yet applied. A leader that removes itself hands leadership over to the
    /// most up-to-date voter once the change is applied.
    pub fn change_membership(&self, change: MembershipChange) -> Result<(), ErrorReply> {
        let (done, answer) = oneshot::channel();
        let waiter: Waiter = Box::new(move |result| {
            let _ = done.send(result.map(|_| ()));
        });
        self.inbox
            .send(Input::ChangeMembership(change, waiter))
            .map_err(|_| stopped())?;
        answer
            .recv_timeout(WRITE_TIMEOUT + Duration::from_secs(2))
            .unwrap_or_else(|_| {
                Err(ErrorReply::new(
                    ErrorCode::Unavailable,
                    "the membership change was not answered in time; check /stats before \
                     retrying",
                ))
            })
    }

    /// Test hook: drops everything to and from `peers` at the transport, as a network cut would.
    pub fn isolate(&self, peers: HashSet<u64>) {
        self.transport.isolate(peers);
    }

    /// Test hook: the syncer's next `count` fsyncs fail (an I/O error, nothing synced), as a
    /// failing disk's would. A member with peers only (the only voter syncs within its turn).
    pub fn fail_syncs(&self, count: u64) {
        self.failing_syncs.store(count, Ordering::SeqCst);
    }
}

fn stopped() -> ErrorReply {
    ErrorReply::new(ErrorCode::Unavailable, "this member has stopped")
}

/// Opens raft's storage in `raft_dir` (a new one starts with the cluster's initial voters), its
/// snapshots read from `snapshots`.
/// The committed commands in `data_dir`'s raft log after index `applied`, read without starting
/// raft (for `verify-chain`, on a stopped member). A member that is its own only voter counts
/// every durable entry as committed, as its start does.
pub fn read_committed(data_dir: &Path, applied: u64) -> Result<Vec<Entry>, String> {
    let raft_dir = data_dir.join("raft");
    if !raft_dir.exists() {
        return Ok(Vec::new());
    }
    let storage = DiskStorage::open(&raft_dir, ConfState::default())
        .map_err(|e| format!("cannot open raft's log in {}: {e}", raft_dir.display()))?;
    let mut commit = storage.hard_state().commit;
    if storage.conf_state().voters.len() <= 1 {
        commit = commit.max(storage.last_index().map_err(|e| e.to_string())?);
    }
    let first = storage.first_index().map_err(|e| e.to_string())?;
    if commit <= applied {
        return Ok(Vec::new());
    }
    if applied + 1 < first {
        return Err(format!(
            "raft's log in {} starts at index {first}, after the snapshot's {applied}: the \
             entries between are gone",
            raft_dir.display()
        ));
    }
    committed_after(&storage, &raft_dir, applied, commit)?
        .commands
        .into_iter()
        .map(|(index, command)| {
            command
                .map(|command| Entry { index, command })
                .map_err(|e| format!("log entry {index}: {e}"))
        })
        .collect()
}

/// The entries of `storage` after `applied` through `commit`: the commands (or why one does
/// not decode), and the membership changes.
struct CommittedAfter {
    commands: Vec<(u64, Result<Command, String>)>,
    membership: Vec<RaftEntry>,
}

fn committed_after(
    storage: &DiskStorage,
    raft_dir: &Path,
    applied: u64,
    commit: u64,
) -> Result<CommittedAfter, String> {
    let mut committed = CommittedAfter {
        commands: Vec::new(),
        membership: Vec::new(),
    };
    if commit <= applied {
        return Ok(committed);
    }
    let entries = storage
        .entries(
            applied + 1,
            commit + 1,
            u64::MAX,
            GetEntriesContext::empty(false),
        )
        .map_err(|e| format!("raft's log in {}: {e}", raft_dir.display()))?;
    for entry in entries {
        match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => {}
            EntryType::EntryNormal => committed
                .commands
                .push((entry.index, decode_command(&entry.data))),
            _ => committed.membership.push(entry),
        }
    }
    Ok(committed)
}

fn open_storage(
    raft_dir: &Path,
    cluster: &Cluster,
    snapshots: &Arc<SnapshotStore>,
) -> Result<DiskStorage, String> {
    let voters = cluster.initial_voters();
    let mut storage = DiskStorage::open(raft_dir, ConfState::from((voters, vec![])))
        .map_err(|e| format!("cannot open raft's log in {}: {e}", raft_dir.display()))?;
    let source = Arc::clone(snapshots);
    storage.set_snapshot_source(Box::new(move || {
        source
            .read_encoded()
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::other("no snapshot written yet"))
    }));
    Ok(storage)
}

/// Starts raft on `storage`. A member that is its configuration's only voter campaigns at once
/// (it wins alone): a single node serves writes as soon as it starts, without waiting out an
/// election timeout.
fn start_raw(
    config: &raft::Config,
    storage: DiskStorage,
    logger: &slog::Logger,
) -> Result<RawNode<DiskStorage>, String> {
    let conf = storage.conf_state().clone();
    let mut raw =
        RawNode::new(config, storage, logger).map_err(|e| format!("cannot start raft: {e}"))?;
    if conf.voters == [config.id] && conf.learners.is_empty() {
        raw.campaign()
            .map_err(|e| format!("cannot start raft: campaigning: {e}"))?;
    }
    Ok(raw)
}

impl CommandLog for RaftLog {
    fn propose(&self, command: Command, waiter: Option<Waiter>) {
        if let Err(Input::Propose(_, Some(waiter))) =
            self.inbox.send(Input::Propose(command, waiter))
        {
            waiter(Err(stopped()));
        }
    }

    fn sync(&self) -> Result<(), String> {
        let (done, synced) = oneshot::channel();
        self.inbox
            .send(Input::Sync(done))
            .map_err(|_| "this member has stopped".to_string())?;
        synced
            .recv()
            .map_err(|_| "this member has stopped".to_string())?
    }

    fn compact(&self, covered: u64) {
        let _ = self.inbox.send(Input::Compact(covered));
    }

    fn read_barrier(&self, done: ReadWaiter) {
        // The only voter, caught up with the log it found at start: at once, on the caller's
        // thread, as a log without replication would.
        if self.local_reads.load(Ordering::Acquire) {
            return done(Ok(()));
        }
        if let Err(Input::Read(done)) = self.inbox.send(Input::Read(done)) {
            done(Err(stopped()));
        }
    }

    fn stop(&self) {
        let _ = self.inbox.send(Input::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the raft thread panicked");
        }
        self.transport.stop();
    }
}

/// The state of the raft loop (on its own thread).
struct MemberLoop {
    raw: RawNode<DiskStorage>,
    /// What raft was started with, and where its storage is: raft restarts from its durable
    /// state after a failed write of this member's own proposals (see `on_ready`).
    raft_config: raft::Config,
    logger: slog::Logger,
    raft_dir: std::path::PathBuf,
    /// Set while raft's storage fails to write (`storage failure: ...`); cleared by the next
    /// write that succeeds.
    storage_error: Option<String>,
    /// A Ready whose entries and hard state could not be made durable: handed back to raft as
    /// not yet persisted (`advance_append_async`), its persisted messages kept, and no other
    /// Ready taken until a retry (every tick, and before every proposal) writes it.
    held: Option<Held>,
    /// Readies written and waiting for the syncer, oldest first (see `on_ready`).
    flights: VecDeque<Flight>,
    /// To the syncer thread (`None` once stopping).
    sync_jobs: Option<Sender<SyncJob>>,
    /// From the syncer thread.
    synced: Receiver<Synced>,
    syncer: Option<JoinHandle<()>>,
    /// Tells the syncer's answers about this raft from those about one restarted since.
    generation: u64,
    /// The last fsync ticket handed out, and the last one done.
    last_ticket: u64,
    synced_ticket: u64,
    /// The segment's length at each ticket not yet done; what is durable.
    ticket_lens: VecDeque<(u64, u64)>,
    durable_len: u64,
    /// The last index of raft's log when this member started: every change acknowledged before
    /// is at or below it.
    recovered_last: u64,
    /// Set while this member is its configuration's only voter and has handed the applier
    /// everything up to `recovered_last`: a read then sees every acknowledged change without
    /// asking raft (every change is applied before it is acknowledged), so `read_barrier`
    /// answers at once.
    local_reads: Arc<AtomicBool>,
    /// Set while this member leads (for the block sealer, which runs on the leader only).
    leading: Arc<AtomicBool>,
    cluster: Cluster,
    transport: Arc<Transport>,
    /// Inputs from other threads, and the peers' connections.
    mailbox: Mailbox<Input>,
    applier: Sender<Batch>,
    snapshots: Arc<SnapshotStore>,
    /// Tells this run's proposals from an earlier run's (sequence numbers restart at 0).
    incarnation: u64,
    next_seq: u64,
    /// This member's proposals in raft, by sequence number: deadline and waiter.
    pending: BTreeMap<u64, (Instant, Waiter)>,
    /// Proposals made while no leader was known, in order.
    waiting: VecDeque<(Instant, Command, Option<Waiter>)>,
    /// `sync` calls: answered once every entry up to the index is handed to the applier.
    syncs: Vec<PendingSync>,
    /// The last index handed to the applier.
    handed: u64,
    /// Reads asking raft for the commit index (ReadIndex), by sequence number: when asked
    /// (asked again while unanswered: raft drops the question without a leader, or before the
    /// leader committed in its term), deadline, waiter.
    reads: BTreeMap<u64, PendingRead>,
    /// Reads whose index is known, waiting for the applier to reach it.
    reads_at: Vec<(u64, ReadWaiter)>,
}

/// A Ready raft holds as written but not yet durable (see `MemberLoop::held`).
struct Held {
    /// Its number, for `on_persist_ready`.
    number: u64,
    /// The messages that may leave only once it is durable (a follower's acknowledgements).
    messages: Vec<Message>,
}

/// A Ready written to raft's log and handed to raft as not yet durable
/// (`advance_append_async`), released in order once the syncer's fsync `ticket` is done.
struct Flight {
    number: u64,
    /// Its acknowledgements: they leave only once it is durable.
    messages: Vec<Message>,
    ticket: u64,
}

/// An fsync for the syncer thread: `file` (the current segment) holds every write made before
/// ticket `ticket` was handed out.
struct SyncJob {
    generation: u64,
    ticket: u64,
    file: std::fs::File,
}

/// What the syncer did with the latest job of a run of them.
struct Synced {
    generation: u64,
    ticket: u64,
    result: io::Result<()>,
}

/// Syncs the raft log for the loop, so that the loop steps acknowledgements and hands
/// committed entries on while an fsync runs. Jobs queued while one runs are covered by one
/// fsync (they are all for the current segment: the loop waits for every job before it rolls,
/// compacts or installs a snapshot). Ends when the loop drops its sender.
fn run_syncer(
    jobs: Receiver<SyncJob>,
    done: Sender<Synced>,
    wake: MailboxHandle<Input>,
    failing: Arc<AtomicU64>,
) {
    while let Ok(mut job) = jobs.recv() {
        while let Ok(later) = jobs.try_recv() {
            job = later;
        }
        let injected = failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let result = match injected {
            true => Err(io::Error::other("fsync failed (injected by a test hook)")),
            false => job.file.sync_data(),
        };
        let synced = Synced {
            generation: job.generation,
            ticket: job.ticket,
            result,
        };
        if done.send(synced).is_err() || wake.send(Input::Synced).is_err() {
            return;
        }
    }
}

/// A read waiting for raft to confirm the commit index it must see.
struct PendingRead {
    asked: Instant,
    deadline: Instant,
    done: ReadWaiter,
}

/// A `sync` call waiting for every entry up to `target` to reach the applier.
struct PendingSync {
    target: u64,
    deadline: Instant,
    done: oneshot::Sender<Result<(), String>>,
}

/// Why the loop stopped taking part in the cluster.
struct Fatal(String);

impl MemberLoop {
    fn run(mut self) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            // 1. What arrived (waiting at most until the next tick, or not at all while raft
            //    has a Ready left from the last turn: an advance can make one, e.g. a sole
            //    voter's commit), then raft's clock.
            let wait = if self.held.is_none() && self.raw.has_ready() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            let arrivals = self.mailbox.wait(wait, MAX_INPUTS_PER_TURN);
            let messages = arrivals.messages.into_iter().filter_map(|(peer, message)| {
                self.transport
                    .admit(peer, &message)
                    .then(|| Input::Message(Box::new(message)))
            });
            let messages: Vec<Input> = messages.collect();
            for input in messages.into_iter().chain(arrivals.inputs) {
                if !self.take(input) {
                    return self.shut_down("this member is stopping");
                }
            }
            if arrivals.closed {
                return;
            }
            if let Err(Fatal(why)) = self.collect_syncs() {
                tracing::error!("raft stopped on this member: {why}");
                return self.shut_down(&why);
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick = Instant::now() + TICK;
                self.expire();
                self.retry_storage();
            }
            self.propose_waiting();
            // 2. to 7.
            if let Err(Fatal(why)) = self.on_ready() {
                tracing::error!("raft stopped on this member: {why}");
                return self.shut_down(&why);
            }
            let local = self.sole_voter() && self.handed >= self.recovered_last;
            self.local_reads.store(local, Ordering::Release);
            let leads = self.raw.raft.state == StateRole::Leader;
            self.leading.store(leads, Ordering::Release);
        }
    }

    /// Handles one input; `false` to stop.
    fn take(&mut self, input: Input) -> bool {
        match input {
            Input::Propose(command, waiter) => match self.storage_blocked() {
                Some(error) => {
                    if let Some(waiter) = waiter {
                        waiter(Err(ErrorReply::new(ErrorCode::Internal, error)));
                    }
                }
                None => self.propose(Instant::now() + WRITE_TIMEOUT, command, waiter),
            },
            Input::Message(message) if self.awaits_configuration(&message) => {
                self.ask_for_snapshot(&message)
            }
            Input::Message(message) => {
                let from = message.from;
                if let Err(error) = self.raw.step(*message) {
                    tracing::debug!(from, %error, "raft message ignored");
                }
            }
            Input::Sync(done) => {
                let target = self.raw.raft.raft_log.last_index();
                if let Some(error) = self.storage_blocked() {
                    let _ = done.send(Err(error));
                } else if target <= self.handed {
                    let _ = done.send(Ok(()));
                } else {
                    self.syncs.push(PendingSync {
                        target,
                        deadline: Instant::now() + WRITE_TIMEOUT,
                        done,
                    });
                }
            }
            Input::Compact(covered) => match self.drain_syncs() {
                Ok(()) => self.compact(covered),
                Err(Fatal(why)) => tracing::error!("compaction skipped: {why}"),
            },
            Input::Status(answer) => answer(self.status()),
            // The only voter commits alone, and answers a change only once it is applied: every
            // change acknowledged by this run is in the state, and every one acknowledged before
            // it is at or below the last index found at start (re-committed by this run's first
            // commit).
            Input::Read(done) if self.sole_voter() => {
                if self.handed >= self.recovered_last {
                    done(Ok(()));
                } else {
                    self.reads_at.push((self.recovered_last, done));
                }
            }
            Input::Read(done) => {
                self.next_seq += 1;
                let now = Instant::now();
                self.raw.read_index(self.context(self.next_seq));
                self.reads.insert(
                    self.next_seq,
                    PendingRead {
                        asked: now,
                        deadline: now + WRITE_TIMEOUT,
                        done,
                    },
                );
            }
            Input::Stop => return false,
            Input::Synced => {}
            Input::ChangeMembership(change, waiter) => self.propose_membership(change, waiter),
        }
        true
    }

    /// On the leader: checks an operator's membership change and proposes it; its waiter is
    /// answered once the entry is applied here (or when it times out, like any proposal).
    fn propose_membership(&mut self, change: MembershipChange, waiter: Waiter) {
        let invalid = |message: String| Err(ErrorReply::new(ErrorCode::InvalidArgument, message));
        if self.cluster.standalone {
            return waiter(invalid(
                "this node was started without --cluster: it has no raft port, so it cannot \
                 take other members (start it with --cluster to form a cluster)"
                    .into(),
            ));
        }
        if self.raw.raft.state != StateRole::Leader {
            return waiter(Err(ErrorReply::not_leader(self.leader_chat_addr())));
        }
        let voters = self.raw.store().conf_state().voters.clone();
        let mut conf_change = ConfChange::default();
        match &change {
            MembershipChange::Remove(id) => {
                if !voters.contains(id) {
                    return waiter(invalid(format!(
                        "member {id} is not a voter (the voters are {voters:?})"
                    )));
                }
                if voters.len() == 1 {
                    return waiter(invalid(format!(
                        "member {id} is the last voter: a cluster cannot remove its last voter"
                    )));
                }
                conf_change.set_change_type(ConfChangeType::RemoveNode);
                conf_change.node_id = *id;
            }
            MembershipChange::Add(member) => {
                if voters.contains(&member.id) {
                    return waiter(invalid(format!(
                        "member {} is already a voter (remove it first to replace it)",
                        member.id
                    )));
                }
                // The same checks as a cluster file's: distinct ids, addresses, directories.
                let mut members: Vec<Member> = self
                    .cluster
                    .members
                    .iter()
                    .filter(|m| voters.contains(&m.id) && m.id != member.id)
                    .cloned()
                    .collect();
                members.push(member.clone());
                if let Err(error) = Cluster::new(member.id, members) {
                    return waiter(invalid(format!("member {}: {error}", member.id)));
                }
                conf_change.set_change_type(ConfChangeType::AddNode);
                conf_change.node_id = member.id;
                conf_change.context = serde_json::to_vec(member).expect("members encode").into();
            }
        }
        if self.raw.raft.has_pending_conf() {
            return waiter(Err(ErrorReply::new(
                ErrorCode::Unavailable,
                "another membership change is not applied yet: retry once it is",
            )));
        }
        self.next_seq += 1;
        let context = ProposalId {
            member: self.cluster.id,
            incarnation: self.incarnation,
            seq: self.next_seq,
        };
        match self.raw.propose_conf_change(context.encode(), conf_change) {
            Ok(()) => {
                tracing::info!(?change, "membership change proposed");
                self.pending
                    .insert(self.next_seq, (Instant::now() + WRITE_TIMEOUT, waiter));
            }
            Err(error) => waiter(Err(ErrorReply::new(
                ErrorCode::Unavailable,
                format!("raft refused the membership change: {error}"),
            ))),
        }
    }

    /// A committed membership change: applied, then its proposer's waiter (on this member)
    /// answered; a leader that removed itself hands leadership to the most up-to-date voter.
    fn conf_change_committed(&mut self, entry: &RaftEntry) {
        self.change_membership(entry);
        let voters = self.raw.store().conf_state().voters.clone();
        if self.raw.raft.state == StateRole::Leader && !voters.contains(&self.cluster.id) {
            let progress = self.raw.raft.prs();
            let successor = voters
                .iter()
                .copied()
                .max_by_key(|id| progress.get(*id).map_or(0, |p| p.matched));
            if let Some(successor) = successor {
                tracing::info!(
                    successor,
                    "this leader was removed: handing leadership over"
                );
                self.raw.transfer_leader(successor);
            }
        }
        let Some(waiter) = self.my_waiter(&entry.context) else {
            return;
        };
        let applied = ConfChange::parse_from_bytes(&entry.data).is_ok_and(|change| {
            let present = voters.contains(&change.node_id);
            match change.get_change_type() {
                ConfChangeType::RemoveNode => !present,
                _ => present,
            }
        });
        waiter(if applied {
            Ok(crate::state::Outcome::Done)
        } else {
            Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                "raft refused the membership change when applying it (see the member's log)",
            ))
        });
    }

    /// A member started with `--join` knows no configuration: it must not replay the log from
    /// its start (the initial voters are not in it), so it answers the leader's appends by
    /// asking for a snapshot, whose configuration names the voters.
    fn awaits_configuration(&self, message: &Message) -> bool {
        let conf = self.raw.store().conf_state();
        message.get_msg_type() == MessageType::MsgAppend
            && conf.voters.is_empty()
            && conf.learners.is_empty()
    }

    /// Refuses an append as raft-rs's `request_snapshot` would (which needs a non-empty log):
    /// the leader then sends its latest snapshot instead of entries.
    fn ask_for_snapshot(&mut self, append: &Message) {
        let mut answer = Message::default();
        answer.set_msg_type(MessageType::MsgAppendResponse);
        answer.to = append.from;
        answer.from = self.cluster.id;
        answer.term = append.term;
        answer.index = append.index;
        answer.reject = true;
        answer.reject_hint = 0;
        answer.request_snapshot = 1;
        tracing::debug!(
            leader = append.from,
            "joining: asking the leader for a snapshot"
        );
        self.transport.send(answer);
    }

    fn propose(&mut self, deadline: Instant, command: Command, waiter: Option<Waiter>) {
        if self.raw.raft.leader_id == INVALID_ID {
            self.waiting.push_back((deadline, command, waiter));
            return;
        }
        self.next_seq += 1;
        match self
            .raw
            .propose(self.context(self.next_seq), encode_command(&command))
        {
            Ok(()) => {
                if let Some(waiter) = waiter {
                    self.pending.insert(self.next_seq, (deadline, waiter));
                }
            }
            // No leader to forward to after all (or a leadership transfer): wait for one.
            Err(raft::Error::ProposalDropped) => {
                self.waiting.push_back((deadline, command, waiter));
            }
            Err(error) => {
                if let Some(waiter) = waiter {
                    waiter(Err(ErrorReply::new(
                        ErrorCode::Unavailable,
                        format!("raft refused the change: {error}"),
                    )));
                }
            }
        }
    }

    /// The context naming this member's proposal or read number `seq`.
    fn context(&self, seq: u64) -> Vec<u8> {
        ProposalId {
            member: self.cluster.id,
            incarnation: self.incarnation,
            seq,
        }
        .encode()
    }

    fn propose_waiting(&mut self) {
        if self.raw.raft.leader_id == INVALID_ID {
            return;
        }
        for (deadline, command, waiter) in std::mem::take(&mut self.waiting) {
            self.propose(deadline, command, waiter);
        }
    }

    /// Answers what waited too long: never acknowledged, so the client may retry.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some((&seq, (deadline, _))) = self.pending.first_key_value() {
            if *deadline > now {
                break;
            }
            if let Some((_, waiter)) = self.pending.remove(&seq) {
                waiter(Err(ErrorReply::new(
                    ErrorCode::Unavailable,
                    format!(
                        "this change was not confirmed by a majority of the cluster within {} s, \
                         so it was not acknowledged; it may still take effect later. Check that \
                         a majority of the members are running and can reach each other, then \
                         check whether the change took effect before making it again (a send \
                         made again with the same idempotency key is stored at most once)",
                        WRITE_TIMEOUT.as_secs()
                    ),
                )));
            }
        }
        while self.waiting.front().is_some_and(|(at, ..)| *at <= now) {
            if let Some((_, _, Some(waiter))) = self.waiting.pop_front() {
                waiter(Err(ErrorReply::not_leader(self.leader_chat_addr())));
            }
        }
        let late: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, read)| read.deadline <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in late {
            if let Some(read) = self.reads.remove(&seq) {
                (read.done)(Err(ErrorReply::new(
                    ErrorCode::Unavailable,
                    format!(
                        "no majority of the cluster confirmed the commit index within {} s",
                        WRITE_TIMEOUT.as_secs()
                    ),
                )));
            }
        }
        // Questions raft dropped (no leader yet, or one that has not committed in its term)
        // are asked again.
        let again: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, read)| now.duration_since(read.asked) >= 2 * TICK)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in again {
            let context = self.context(seq);
            self.raw.read_index(context);
            if let Some(read) = self.reads.get_mut(&seq) {
                read.asked = now;
            }
        }
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.syncs)
            .into_iter()
            .partition(|sync| sync.deadline <= now);
        self.syncs = kept;
        for sync in expired {
            let _ = sync
                .done
                .send(Err("no majority of the cluster answered in time".into()));
        }
    }

    /// Steps 2 to 7: one Ready, handled in raft's order.
    ///
    /// A failed write (a full disk, a failing fsync) does not stop the member: the Ready is not
    /// advanced, and nothing that depends on it is sent. Waiting proposals are answered
    /// `internal` ("storage failure: ..."), and so is every proposal while the write keeps
    /// failing. If the Ready holds entries of this member's own proposals (answered as failed),
    /// raft restarts from its durable state, as after a crash, so that they are not made durable
    /// later behind their refusal (on a single node, a refused change is never applied; in a
    /// cluster, one the leader already sent may still commit, like any unacknowledged change).
    /// Otherwise raft keeps the Ready as not yet durable (it counts none of it, and its
    /// acknowledgements are not sent), and its write is retried every tick and before each
    /// proposal; once one succeeds, raft is told, and the loop goes on.
    fn on_ready(&mut self) -> Result<(), Fatal> {
        if self.held.is_some() || !self.raw.has_ready() {
            return Ok(());
        }
        // A member with peers writes a Ready and lets the syncer fsync it (below); the only
        // voter would only add a thread hand-off to every commit, and syncs here.
        let pipelined = !self.sole_voter();
        if !pipelined {
            self.drain_syncs()?;
        }
        let mut ready = self.raw.ready();
        // Reads whose commit index raft confirmed wait for the applier to reach it.
        for state in ready.take_read_states() {
            let Some(id) = ProposalId::decode(&state.request_ctx) else {
                continue;
            };
            if let Some(read) = self.reads.remove(&id.seq) {
                self.reads_at.push((state.index, read.done));
            }
        }
        // 2. A leader's messages may go before its own fsync: it counts itself only once
        //    persisted.
        self.send(ready.take_messages());
        // A Ready with a snapshot is made durable within the turn (the snapshot is, by its
        // install), after every fsync handed out before it.
        let pipelined = pipelined && ready.snapshot().is_empty();
        // 3. A snapshot from the leader replaces everything before its index. One that cannot
        //    be written (a full disk) leaves this member as it was: raft starts again from its
        //    durable log, as after a crash, and the leader sends the snapshot again once this
        //    member refuses its next append.
        if !ready.snapshot().is_empty() {
            let generation = self.generation;
            self.drain_syncs()?;
            if self.generation != generation {
                // A failed fsync restarted raft: this Ready was the old raft's.
                return Ok(());
            }
        }
        if !ready.snapshot().is_empty()
            && let Err(error) = self.install(ready.snapshot().clone())
        {
            tracing::error!(%error, "the leader's snapshot could not be installed; waiting for it again");
            self.storage_failed(&io::Error::other(error));
            drop(ready);
            self.restart_raft().map_err(Fatal)?;
            return Ok(());
        }
        // 4. Entries committed earlier (and so already durable here) go to the applier.
        self.hand_over(ready.take_committed_entries());
        // 5. New entries and the hard state: durable before anything that depends on them. A
        //    Ready whose only change is the commit index needs no fsync (raft learns the commit
        //    again from the leader); it is written with the next one. With peers, the fsync
        //    runs on the syncer and the Ready waits in `flights` (released by `collect_syncs`).
        let must_sync = ready.must_sync();
        let mine = ready
            .entries()
            .iter()
            .any(|entry| self.is_mine(&entry.context));
        let store = self.raw.mut_store();
        store
            .append(ready.entries())
            .map_err(|e| Fatal(format!("raft storage: {e}")))?;
        if let Some(hard_state) = ready.hs() {
            store.set_hard_state(hard_state.clone());
        }
        if pipelined {
            // With no fsync in flight, everything written is durable (the other paths sync what
            // they write, and the segment rolls only then).
            if self.synced_ticket == self.last_ticket {
                self.durable_len = self.raw.store().written_len();
            }
            let store = self.raw.mut_store();
            let ticket = match must_sync {
                true => match store.write() {
                    Ok(()) => self.request_sync().map_err(Fatal)?,
                    Err(error) => {
                        let generation = self.generation;
                        self.drain_syncs()?;
                        if self.generation != generation {
                            // A failed fsync restarted raft: this Ready was the old raft's.
                            self.storage_failed(&error);
                            return Ok(());
                        }
                        return self.write_failed(ready, &error, mine);
                    }
                },
                // Durable once every Ready before it is.
                false => self.last_ticket,
            };
            self.flights.push_back(Flight {
                number: ready.number(),
                messages: ready.take_persisted_messages(),
                ticket,
            });
            self.raw.advance_append_async(ready);
            self.raw.advance_apply();
            self.release_flights();
            self.answer_reads_handed();
            return Ok(());
        }
        if must_sync {
            if let Err(error) = store.sync() {
                return self.write_failed(ready, &error, mine);
            }
            self.storage_recovered();
        }
        self.finish(ready);
        Ok(())
    }

    /// A Ready's entries and hard state could not be written. If it holds this member's own
    /// proposals, raft starts again from its durable log (their waiters are answered with the
    /// error); otherwise raft keeps it as not durable until a retry writes it.
    fn write_failed(
        &mut self,
        mut ready: Ready,
        error: &io::Error,
        mine: bool,
    ) -> Result<(), Fatal> {
        self.storage_failed(error);
        if mine {
            drop(ready);
            self.restart_raft().map_err(Fatal)?;
        } else {
            // Raft learns it is durable only from `on_persist_ready`, after a retry's
            // fsync: until then it counts none of it, and its acks stay here.
            let held = Held {
                number: ready.number(),
                messages: ready.take_persisted_messages(),
            };
            self.raw.advance_append_async(ready);
            self.raw.advance_apply();
            self.held = Some(held);
        }
        Ok(())
    }

    /// Hands the syncer an fsync of everything written so far; returns its ticket.
    fn request_sync(&mut self) -> Result<u64, String> {
        let (file, len) = self
            .raw
            .store()
            .sync_handle()
            .map_err(|e| format!("raft storage: {e}"))?;
        self.last_ticket += 1;
        let job = SyncJob {
            generation: self.generation,
            ticket: self.last_ticket,
            file,
        };
        let sent = self.sync_jobs.as_ref().map(|jobs| jobs.send(job));
        if !matches!(sent, Some(Ok(()))) {
            return Err("the raft sync thread has stopped".into());
        }
        self.ticket_lens.push_back((self.last_ticket, len));
        Ok(self.last_ticket)
    }

    /// Takes the syncer's answers: a done fsync releases the Readies it covers; a failed one
    /// drops everything written since the last durable point and starts raft again from it.
    fn collect_syncs(&mut self) -> Result<(), Fatal> {
        while let Ok(synced) = self.synced.try_recv() {
            self.on_synced(synced)?;
        }
        Ok(())
    }

    fn on_synced(&mut self, synced: Synced) -> Result<(), Fatal> {
        if synced.generation != self.generation || synced.ticket <= self.synced_ticket {
            return Ok(());
        }
        match synced.result {
            Ok(()) => {
                self.synced_ticket = synced.ticket;
                while let Some(&(ticket, len)) = self.ticket_lens.front() {
                    if ticket > synced.ticket {
                        break;
                    }
                    self.durable_len = len;
                    self.ticket_lens.pop_front();
                }
                self.storage_recovered();
                self.release_flights();
                Ok(())
            }
            Err(error) => {
                // After a failed fsync the written pages may read back as if durable: they
                // are cut off before raft reads its log again.
                self.storage_failed(&error);
                let durable = self.durable_len;
                self.raw
                    .mut_store()
                    .cut_to(durable)
                    .map_err(|e| Fatal(format!("raft storage: cutting off a failed sync: {e}")))?;
                self.restart_raft().map_err(Fatal)
            }
        }
    }

    /// Tells raft, in order, which written Readies are durable, and sends their
    /// acknowledgements.
    fn release_flights(&mut self) {
        let mut released = Vec::new();
        while self
            .flights
            .front()
            .is_some_and(|flight| flight.ticket <= self.synced_ticket)
        {
            let flight = self.flights.pop_front().expect("checked above");
            self.raw.on_persist_ready(flight.number);
            released.extend(flight.messages);
        }
        // One fsync often covers several appends from the leader: their acknowledgements go
        // out together, and only the last of them counts (see `send`).
        self.send(released);
    }

    /// Waits until every fsync handed out is done (before a roll, a compaction, a snapshot
    /// install, a synchronous write), then rolls the segment if it is due.
    fn drain_syncs(&mut self) -> Result<(), Fatal> {
        while self.synced_ticket < self.last_ticket {
            match self.synced.recv() {
                Ok(synced) => self.on_synced(synced)?,
                Err(_) => return Err(Fatal("the raft sync thread has stopped".into())),
            }
        }
        if self.raw.store().roll_due() {
            self.raw.mut_store().roll_if_due();
        }
        Ok(())
    }

    /// Reads whose index the applier was already handed: after what it has in hand.
    fn answer_reads_handed(&mut self) {
        if self.reads_at.iter().any(|(index, _)| *index <= self.handed) {
            let mut batch = Batch::default();
            self.answer_syncs(&mut batch);
            let _ = self.applier.send(batch);
        }
    }

    /// Steps 6 and 7 of a Ready whose entries and hard state are durable.
    fn finish(&mut self, mut ready: Ready) {
        // 6. A follower's answers say "I have these entries": only after the fsync.
        self.send(ready.take_persisted_messages());
        // 7. Advance; the light ready carries what became committed meanwhile.
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        self.send(light.take_messages());
        self.hand_over(light.take_committed_entries());
        self.raw.advance_apply();
        self.answer_reads_handed();
    }

    /// A write of raft's storage failed: everything waiting for a change is answered with it,
    /// and the applier is told (it attempts a snapshot, which lets the log drop old entries).
    fn storage_failed(&mut self, error: &io::Error) {
        let message = format!("storage failure: {error}");
        if self.storage_error.is_none() {
            tracing::error!(
                %error,
                "raft's log could not be written: changes are refused until a retry succeeds"
            );
        }
        self.storage_error = Some(message.clone());
        let reply = ErrorReply::new(ErrorCode::Internal, message.clone());
        for (_, waiter) in std::mem::take(&mut self.pending).into_values() {
            waiter(Err(reply.clone()));
        }
        for (_, _, waiter) in std::mem::take(&mut self.waiting) {
            if let Some(waiter) = waiter {
                waiter(Err(reply.clone()));
            }
        }
        for sync in std::mem::take(&mut self.syncs) {
            let _ = sync.done.send(Err(message.clone()));
        }
        let _ = self.applier.send(Batch {
            storage_failed: true,
            ..Batch::default()
        });
    }

    fn storage_recovered(&mut self) {
        if self.storage_error.take().is_some() {
            tracing::info!("raft's log is written again: changes are accepted");
        }
    }

    /// Writes the held Ready again; once that succeeds, tells raft it is durable and sends its
    /// acknowledgements (what it commits comes with the next Ready).
    fn retry_storage(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        match self.raw.mut_store().sync() {
            Ok(()) => {
                self.storage_recovered();
                self.raw.on_persist_ready(held.number);
                self.send(held.messages);
            }
            Err(error) => {
                self.held = Some(held);
                tracing::debug!(%error, "raft's log still cannot be written");
                self.storage_failed(&error);
            }
        }
    }

    /// The storage error, if writes still fail after a retry (proposals are then refused
    /// without entering raft).
    fn storage_blocked(&mut self) -> Option<String> {
        self.held.as_ref()?;
        self.retry_storage();
        self.held.as_ref()?;
        self.storage_error.clone()
    }

    /// Restarts raft from what its storage holds durably, as a crash and restart would, dropping
    /// whatever was not written. What the applier was handed stays: it was durable.
    fn restart_raft(&mut self) -> Result<(), String> {
        let mut storage = open_storage(&self.raft_dir, &self.cluster, &self.snapshots)?;
        if storage.hard_state().commit < self.handed {
            storage.set_commit(self.handed);
        }
        self.raft_config.applied = self.handed;
        self.raw = start_raw(&self.raft_config, storage, &self.logger)?;
        // Whatever was in flight belonged to the raft just dropped.
        self.generation += 1;
        self.flights.clear();
        self.ticket_lens.clear();
        self.synced_ticket = self.last_ticket;
        self.durable_len = self.raw.store().written_len();
        tracing::warn!(
            applied = self.handed,
            "raft restarted from its durable log after a failed write"
        );
        Ok(())
    }

    /// This member is its configuration's only voter (it commits alone).
    fn sole_voter(&self) -> bool {
        let conf = self.raw.store().conf_state();
        conf.voters == [self.cluster.id] && conf.learners.is_empty()
    }

    /// The context names a proposal this member made in this run.
    fn is_mine(&self, context: &[u8]) -> bool {
        ProposalId::decode(context)
            .is_some_and(|id| id.member == self.cluster.id && id.incarnation == self.incarnation)
    }

    fn send(&mut self, mut messages: Vec<Message>) {
        drop_superseded_acks(&mut messages);
        merge_forwarded_proposals(&mut messages);
        for message in messages {
            let snapshot_to =
                (message.get_msg_type() == MessageType::MsgSnapshot).then_some(message.to);
            self.transport.send(message);
            if let Some(to) = snapshot_to {
                // Queued: if it is lost, the follower's next refusal brings another.
                self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
            }
        }
    }

    /// Committed entries to the applier, as one batch in log order.
    fn hand_over(&mut self, entries: Vec<RaftEntry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        let mut batch = Batch::default();
        for entry in entries {
            match entry.get_entry_type() {
                // A new leader's empty entry.
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => match decode_command(&entry.data) {
                    Ok(command) => batch.entries.push(Committed {
                        index: entry.index,
                        waiter: self.my_waiter(&entry.context),
                        command,
                    }),
                    Err(error) => {
                        tracing::error!(index = entry.index, %error, "a committed entry does not decode: skipped");
                    }
                },
                _ => {
                    // A member joins from a snapshot: have one on disk soon rather than at
                    // the next interval.
                    batch.snapshot_soon |= entry.get_entry_type() == EntryType::EntryConfChange
                        && ConfChange::parse_from_bytes(&entry.data)
                            .is_ok_and(|c| c.get_change_type() == ConfChangeType::AddNode);
                    self.conf_change_committed(&entry);
                }
            }
        }
        self.handed = last;
        batch.through = last;
        self.answer_syncs(&mut batch);
        let _ = self.applier.send(batch);
    }

    /// Adds to `batch` the syncs and reads it lets go: everything up to `handed`.
    fn answer_syncs(&mut self, batch: &mut Batch) {
        let handed = self.handed;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_at)
            .into_iter()
            .partition(|(index, _)| *index <= handed);
        self.reads_at = waiting;
        batch.reads.extend(ready.into_iter().map(|(_, done)| done));
        let (reached, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.syncs)
            .into_iter()
            .partition(|sync| sync.target <= handed);
        self.syncs = kept;
        batch
            .synced
            .extend(reached.into_iter().map(|sync| sync.done));
    }

    /// The waiter of this member's proposal named by an entry's context, if it is one.
    fn my_waiter(&mut self, context: &[u8]) -> Option<Waiter> {
        let id = ProposalId::decode(context)?;
        if id.member != self.cluster.id || id.incarnation != self.incarnation {
            return None;
        }
        self.pending.remove(&id.seq).map(|(_, waiter)| waiter)
    }

    /// A committed membership change: raft's configuration, then the transport's peers.
    fn change_membership(&mut self, entry: &RaftEntry) {
        let change = match entry.get_entry_type() {
            EntryType::EntryConfChange => ConfChange::parse_from_bytes(&entry.data),
            _ => {
                tracing::error!(
                    index = entry.index,
                    "membership changes of the joint kind are not used here: skipped"
                );
                return;
            }
        };
        let change = match change {
            Ok(change) => change,
            Err(error) => {
                tracing::error!(index = entry.index, %error, "a membership change does not decode: skipped");
                return;
            }
        };
        match self.raw.apply_conf_change(&change) {
            Ok(conf_state) => self.raw.mut_store().set_conf_state(conf_state),
            Err(error) => {
                tracing::error!(index = entry.index, %error, "membership change refused");
                return;
            }
        }
        let id = change.node_id;
        match change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                match serde_json::from_slice::<Member>(&change.context) {
                    Ok(member) => {
                        if id != self.cluster.id {
                            self.transport.add_peer(id, member.raft_addr.to_string());
                        }
                        self.cluster.members.retain(|m| m.id != id);
                        self.cluster.members.push(member);
                        tracing::info!(id, "member added");
                    }
                    Err(error) => {
                        tracing::error!(id, %error, "added member without addresses")
                    }
                }
            }
            ConfChangeType::RemoveNode => {
                self.transport.remove_peer(id);
                self.cluster.members.retain(|m| m.id != id);
                tracing::info!(id, "member removed");
            }
        }
    }

    /// Installs a snapshot from the leader: the image where recovery reads it, then raft's
    /// storage, then the state in memory (through the applier, in order). `Err` (nothing
    /// installed) if it does not decode or cannot be written.
    fn install(&mut self, snapshot: Snapshot) -> Result<(), String> {
        let meta = snapshot.get_metadata().clone();
        let image = snapshot::decode(snapshot.get_data())
            .map_err(|e| format!("the leader's snapshot at {}: {e}", meta.index))?;
        if image.applied != meta.index {
            return Err(format!(
                "the leader's snapshot says index {} but holds the state at {}",
                meta.index, image.applied
            ));
        }
        self.snapshots
            .save_encoded(meta.index, snapshot.get_data())?;
        self.raw
            .mut_store()
            .apply_snapshot(&meta)
            .map_err(|e| format!("raft storage: {e}"))?;
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "snapshot received from the leader"
        );
        self.handed = meta.index;
        let mut batch = Batch {
            install: Some(image),
            through: meta.index,
            ..Batch::default()
        };
        self.answer_syncs(&mut batch);
        let _ = self.applier.send(batch);
        Ok(())
    }

    /// A durable snapshot of the state covers `covered`: raft's log may drop what it covers.
    fn compact(&mut self, covered: u64) {
        let store = self.raw.mut_store();
        if covered <= store.snapshot_metadata().index || covered > self.handed {
            return;
        }
        let conf_state = store.conf_state().clone();
        if let Err(error) = store.compact(covered, conf_state) {
            tracing::warn!(%error, "could not compact raft's log; it keeps growing");
        }
    }

    fn leader_chat_addr(&self) -> Option<String> {
        let leader = self.raw.raft.leader_id;
        self.cluster
            .member(leader)
            .map(|member| member.chat_addr.to_string())
    }

    fn status(&self) -> RaftStatus {
        let raft = &self.raw.raft;
        let progress = raft.prs();
        let peers = self
            .transport
            .health()
            .into_iter()
            .map(|link| PeerStatus {
                match_index: match raft.state {
                    StateRole::Leader => progress.get(link.id).map_or(0, |p| p.matched),
                    _ => 0,
                },
                link,
            })
            .collect();
        RaftStatus {
            id: self.cluster.id,
            role: match raft.state {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre_candidate",
            },
            term: raft.term,
            leader_id: raft.leader_id,
            commit_index: raft.raft_log.committed,
            applied_index: self.handed,
            last_index: raft.raft_log.last_index(),
            voters: sorted(&self.raw.store().conf_state().voters),
            leader_chat_addr: self.leader_chat_addr(),
            voter_chat_addrs: sorted(&self.raw.store().conf_state().voters)
                .into_iter()
                .filter_map(|id| self.cluster.member(id))
                .map(|member| member.chat_addr.to_string())
                .collect(),
            peers,
        }
    }

    /// Answers everything still waiting, and leaves the cluster.
    fn shut_down(mut self, why: &str) {
        self.local_reads.store(false, Ordering::Release);
        self.leading.store(false, Ordering::Release);
        let error = ErrorReply::new(ErrorCode::Unavailable, why.to_string());
        for (_, waiter) in std::mem::take(&mut self.pending).into_values() {
            waiter(Err(error.clone()));
        }
        for (_, _, waiter) in std::mem::take(&mut self.waiting) {
            if let Some(waiter) = waiter {
                waiter(Err(error.clone()));
            }
        }
        for sync in std::mem::take(&mut self.syncs) {
            let _ = sync.done.send(Err(why.to_string()));
        }
        for (_, read) in std::mem::take(&mut self.reads) {
            (read.done)(Err(error.clone()));
        }
        for (_, done) in std::mem::take(&mut self.reads_at) {
            done(Err(error.clone()));
        }
        // The syncer ends with its queue; an fsync it runs finishes first.
        self.sync_jobs = None;
        if let Some(syncer) = self.syncer.take()
            && syncer.join().is_err()
        {
            tracing::error!("the raft sync thread panicked");
        }
        self.transport.stop();
    }
}

/// Names a proposal in its entry's context: who proposed it, in which run, which one.
struct ProposalId {
    member: u64,
    incarnation: u64,
    seq: u64,
}

impl ProposalId {
    fn encode(&self) -> Vec<u8> {
        [self.member, self.incarnation, self.seq]
            .iter()
            .flat_map(|n| n.to_le_bytes())
            .collect()
    }

    fn decode(bytes: &[u8]) -> Option<ProposalId> {
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        (bytes.len() == 24).then_some(())?;
        Some(ProposalId {
            member: word(0)?,
            incarnation: word(1)?,
            seq: word(2)?,
        })
    }
}

/// The ids in increasing order.
fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

/// Different in every run of a process (the clock in nanoseconds and the process id).
fn incarnation() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

fn encode_command(command: &Command) -> Vec<u8> {
    postcard::to_extend(command, vec![ENTRY_FORMAT]).expect("commands encode")
}

fn decode_command(data: &[u8]) -> Result<Command, String> {
    match data.split_first() {
        Some((&ENTRY_FORMAT, body)) => {
            postcard::from_bytes(body).map_err(|e| format!("undecodable command: {e}"))
        }
        Some((format, _)) => Err(format!("unknown entry format {format}")),
        None => Err("empty entry".into()),
    }
}

/// Drops every accepting append response that a later one in `messages` to the same leader in
/// the same term supersedes (its index at least as high).
///
/// A leader takes from such a response only "this follower holds everything up to `index`" (and
/// its commit index, which only grows); a later one says the same up to a higher index, so
/// the earlier ones would cost the leader a wake-up, a read and a step each for nothing. Raft
/// tolerates lost messages, so leaving them out changes no outcome. Refusals are all kept:
/// each carries its own hint.
fn drop_superseded_acks(messages: &mut Vec<Message>) {
    let is_ack = |m: &Message| m.get_msg_type() == MessageType::MsgAppendResponse && !m.reject;
    if messages.iter().filter(|m| is_ack(m)).count() < 2 {
        return;
    }
    // (to, term) -> the highest index of the acks kept after this point.
    let mut later: Vec<(u64, u64, u64)> = Vec::new();
    let mut keep = vec![true; messages.len()];
    for (i, message) in messages.iter().enumerate().rev() {
        if !is_ack(message) {
            continue;
        }
        let key = (message.to, message.term);
        match later.iter_mut().find(|(to, term, _)| (*to, *term) == key) {
            Some((_, _, index)) if *index >= message.index => keep[i] = false,
            Some((_, _, index)) => *index = message.index,
            None => later.push((message.to, message.term, message.index)),
        }
    }
    let mut kept = keep.into_iter();
    messages.retain(|_| kept.next().unwrap_or(true));
}

/// Merges each run of consecutive proposals forwarded to the same leader into one message that
/// carries all their entries, in order.
///
/// A follower forwards every proposal it takes as a message of its own (raft-rs does not batch
/// them); a leader steps a proposal of several entries as one append of them all, so a turn's
/// proposals cost the leader one wake-up and one step instead of one each. Only adjacent ones
/// are merged: nothing moves past a message of another kind.
fn merge_forwarded_proposals(messages: &mut Vec<Message>) {
    let is_proposal = |m: &Message| m.get_msg_type() == MessageType::MsgPropose;
    if !messages
        .windows(2)
        .any(|pair| is_proposal(&pair[0]) && is_proposal(&pair[1]) && pair[0].to == pair[1].to)
    {
        return;
    }
    let mut merged: Vec<Message> = Vec::with_capacity(messages.len());
    for mut message in messages.drain(..) {
        match merged.last_mut() {
            Some(last) if is_proposal(last) && is_proposal(&message) && last.to == message.to => {
                let entries = message.take_entries();
                last.mut_entries().extend(entries);
            }
            _ => merged.push(message),
        }
    }
    *messages = merged;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append_response(to: u64, term: u64, index: u64, reject: bool) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppendResponse);
        message.to = to;
        message.term = term;
        message.index = index;
        message.reject = reject;
        message
    }

    #[test]
    fn adjacent_proposals_to_one_leader_travel_as_one_message() {
        let proposal = |to: u64, data: &[u8]| {
            let mut message = Message::default();
            message.set_msg_type(MessageType::MsgPropose);
            message.to = to;
            message.mut_entries().push(RaftEntry {
                data: data.to_vec().into(),
                ..RaftEntry::default()
            });
            message
        };
        let mut messages = vec![
            proposal(1, b"a"),
            proposal(1, b"b"),
            proposal(1, b"c"),
            append_response(1, 5, 9, false),
            proposal(1, b"d"),
            proposal(2, b"e"),
            proposal(2, b"f"),
        ];
        merge_forwarded_proposals(&mut messages);
        let shape: Vec<(MessageType, u64, Vec<Vec<u8>>)> = messages
            .iter()
            .map(|m| {
                let data = m.entries.iter().map(|e| e.data.to_vec()).collect();
                (m.get_msg_type(), m.to, data)
            })
            .collect();
        use MessageType::{MsgAppendResponse as Ack, MsgPropose as Prop};
        let bytes = |items: &[&[u8]]| items.iter().map(|b| b.to_vec()).collect::<Vec<_>>();
        assert_eq!(
            shape,
            [
                (Prop, 1, bytes(&[b"a", b"b", b"c"])),
                (Ack, 1, vec![]),
                (Prop, 1, bytes(&[b"d"])),
                (Prop, 2, bytes(&[b"e", b"f"])),
            ]
        );
    }

    #[test]
    fn only_the_last_ack_to_a_leader_in_a_term_is_sent() {
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeatResponse);
        heartbeat.to = 1;
        let mut messages = vec![
            append_response(1, 5, 10, false),
            append_response(1, 5, 7, true),
            heartbeat,
            append_response(1, 5, 12, false),
            // Another leader (after a membership change) or another term: kept.
            append_response(2, 5, 11, false),
            append_response(1, 4, 9, false),
            // A late answer to a resent append, lower than one before it: kept, and it
            // supersedes nothing.
            append_response(1, 5, 14, false),
            append_response(1, 5, 13, false),
        ];
        drop_superseded_acks(&mut messages);
        let left: Vec<_> = messages
            .iter()
            .map(|m| (m.get_msg_type(), m.to, m.term, m.index, m.reject))
            .collect();
        use MessageType::{MsgAppendResponse as Ack, MsgHeartbeatResponse as Beat};
        assert_eq!(
            left,
            [
                (Ack, 1, 5, 7, true),
                (Beat, 1, 0, 0, false),
                (Ack, 2, 5, 11, false),
                (Ack, 1, 4, 9, false),
                (Ack, 1, 5, 14, false),
                (Ack, 1, 5, 13, false),
            ]
        );
    }

    #[test]
    fn proposal_ids_round_trip_and_refuse_other_shapes() {
        let id = ProposalId {
            member: 3,
            incarnation: u64::MAX - 7,
            seq: 42,
        };
        let decoded = ProposalId::decode(&id.encode()).unwrap();
        assert_eq!(
            (decoded.member, decoded.incarnation, decoded.seq),
            (3, u64::MAX - 7, 42)
        );
        assert!(ProposalId::decode(&[]).is_none());
        assert!(ProposalId::decode(&[0; 23]).is_none());
        assert!(ProposalId::decode(&[0; 25]).is_none());
    }

    #[test]
    fn commands_round_trip_and_bad_data_is_an_error() {
        let command = Command::MarkDelivered {
            marks: vec![("ann".into(), vec![1, 2])],
        };
        assert_eq!(decode_command(&encode_command(&command)).unwrap(), command);
        assert!(decode_command(&[]).is_err());
        assert!(decode_command(&[9, 1, 2]).unwrap_err().contains("format 9"));
        assert!(decode_command(&[ENTRY_FORMAT, 200, 200]).is_err());
    }
}
