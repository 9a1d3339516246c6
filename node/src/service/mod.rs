//! The node's core, end to end: a request becomes a [`Command`], the log orders it and makes it
//! durable, [`State::apply`] applies it, and the answer goes back to the connection.
//!
//! ```text
//! request ─► Service::handle: validate; read what the request needs (MVCC snapshot, mailbox);
//!            decide everything non-deterministic (clock, Argon2id on the hashing pool) ─► Command
//!              │
//!              ▼  log.propose(command, waiter)            (never blocks on the disk)
//!            raft loop (`crate::raft`): raft orders it; one fsync per Ready (group commit);
//!              │  a single node is a one-member cluster, on the same path
//!              ▼  committed batches, in log order
//!            applier thread (`apply.rs`): State::apply(index, command), lanes by shard
//!              ├─ effects: live pushes (their marks: one MarkDelivered per batch), sessions of
//!              │  a deleted account
//!              ├─ waiter(outcome) ─► the connection's answer (its event loop is woken)
//!              └─ every `snapshot_every_records`: a capture of the state to the snapshot
//!                 thread, which builds the image, writes it, and lets the log drop what it covers
//! ```
//!
//! Recovery is the same path without the network: load the snapshot's image, then apply every
//! logged command after it. Nothing but `State::apply` changes the state.
//!
//! | lock | level | held for |
//! |---|---|---|
//! | `apply-batch` (in [`State`]) | 5 | applying one batch (images wait for it) |
//! | `sessions`: `RwLock<HashMap<user, Vec<SessionHandle>>>` | 10 | who is online (logins, pushes) |
//! | `mailboxes-NN` (in [`State`]) | 20 | applying a command; reading a mailbox |
//! | `state-digest` (in [`State`]) | 30 | reading or storing the last digest, alone |
//!
//! A `LockError` (which would mean a bug in that order) becomes an `internal` error answer and an
//! error log line, never a panic or a hang.

mod apply;
mod checks;
mod connection;
mod ledger;
mod listing;
mod sealer;

pub use connection::{Connection, Outbox, SessionHandle};

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, bounded};
use serde::Serialize;
use sync_kit::fs::FileLock;
use sync_kit::ratelimit::{KeyedLimiter, Quota, RetryAfter};
use sync_kit::{LockError, RwLock};

use crate::config::Config;
use crate::hasher::Hasher;
use crate::log::snapshot::{self, SnapshotStore};
use crate::log::{CommandLog, legacy};
use crate::protocol::{ErrorCode, ErrorReply, Reply, Request, ServerFrame, limits};
use crate::raft::{Cluster, RaftLog, RaftStatus};
use crate::state::{Capture, Command, MessageCounts, Outcome, State};

/// Lock levels of the node (see `docs/node.md`).
pub mod levels {
    use sync_kit::Level;
    /// `sessions`: who is online.
    pub const SESSIONS: Level = Level(10);
    /// `mailboxes-NN`: messages per user, sharded (in the state).
    pub const MAILBOXES: Level = crate::state::MAILBOXES_LEVEL;
}

// The order every operation takes its locks in, checked at compile time.
const _: () = assert!(levels::SESSIONS.0 < levels::MAILBOXES.0);

/// The bytes of messages one read returns at most, so its answer stays within a frame
/// ([`limits::MAX_FRAME`], envelope included).
const READ_BUDGET: usize = limits::MAX_FRAME - 1024;

/// What a request gets back.
pub type Answer = Result<Reply, ErrorReply>;

/// Receives the session back with the answer, on whichever thread finished the request.
pub type Done = Box<dyn FnOnce(Box<Connection>, Answer) + Send>;

/// Why a node could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A running node's core: its state, log, applier and snapshot threads. Dropping it makes
/// everything logged so far durable and applied, then stops the threads.
pub struct Service {
    core: Arc<Core>,
    /// Raft's side of the log (for its figures and membership changes).
    raft: Arc<RaftLog>,
    applier: Option<JoinHandle<()>>,
    snapshots: Option<JoinHandle<()>>,
    /// Seals blocks while this member leads (stopped first when the node stops).
    sealer: Option<sealer::Sealer>,
    _data_lock: FileLock,
}

/// What requests, the applier and the snapshot thread share.
struct Core {
    state: State,
    log: Arc<dyn CommandLog>,
    /// Raft's side of the log, for what the cluster looks like (`cluster_info`).
    raft: Arc<RaftLog>,
    sessions: RwLock<HashMap<String, Vec<SessionHandle>>>,
    hasher: Hasher,
    /// A hash of a random password: verified against when a login names no account, so that
    /// "no such user" and "wrong password" cost the same time.
    decoy_hash: String,
    requests: KeyedLimiter<IpAddr>,
    logins: KeyedLimiter<String>,
    connections: AtomicUsize,
    next_connection: AtomicU64,
    records_since_snapshot: AtomicU64,
    /// Batches whose commands were applied on several threads.
    parallel_batches: AtomicU64,
    started: Instant,
    data_dir: PathBuf,
    config: Config,
    /// Hurries the sealer (apply pooled `block_max_txs` transactions).
    seal_wake: Sender<()>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("data_dir", &self.core.data_dir)
            .field("state", &self.core.state)
            .finish_non_exhaustive()
    }
}

fn start_error(what: &str) -> impl FnOnce(String) -> StartError + '_ {
    move |e| StartError(format!("{what}: {e}"))
}

impl Service {
    /// Locks the data directory, recovers the state (snapshot, then the log applied after it)
    /// and starts the log, applier, snapshot and hashing threads.
    pub fn open(config: &Config) -> Result<Service, StartError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| {
            StartError(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let data_lock = lock_data_dir(dir)?;

        // A data directory of the format before the log-first core is brought forward first,
        // then one written by the single-node log before raft.
        legacy::migrate(dir).map_err(StartError)?;
        let cluster = cluster_of(config);
        if cluster.standalone {
            legacy::migrate_wal(dir).map_err(StartError)?;
        } else {
            legacy::refuse_wal(dir).map_err(StartError)?;
        }
        // Recovery: the snapshot's image, then every command logged after it, through `apply`.
        let state = State::from_image(snapshot::load(dir).map_err(StartError)?)
            .map_err(|e| StartError(format!("snapshot in {}: {e}", dir.display())))?;
        let snapshots = Arc::new(SnapshotStore::new(dir, state.applied_index()));
        let opened = RaftLog::open(&cluster, dir, Arc::clone(&snapshots), state.applied_index())
            .map_err(StartError)?;
        let (raft, recovered, batches) = (opened.log, opened.recovered, opened.batches);
        let log: Arc<dyn CommandLog> = raft.clone();
        let mut replayed = 0u64;
        for entry in recovered.entries {
            if entry.index > state.applied_index() {
                state
                    .apply(entry.index, &entry.command)
                    .map_err(|e| start_error("replaying the log")(e.to_string()))?;
                replayed += 1;
            }
        }
        state.advance_to(recovered.through);
        tracing::info!(
            applied = state.applied_index(),
            replayed,
            accounts = state.accounts_stats().keys,
            truncated_bytes = recovered.truncated_bytes,
            "state recovered from {}",
            dir.display()
        );

        let workers = thread::available_parallelism().map_or(2, |n| n.get());
        let hasher =
            Hasher::start(workers).map_err(|e| start_error("hashing threads")(e.to_string()))?;
        // Not on the pool, whose threads keep their Argon2 memory once they have hashed: a node
        // nobody has logged in to holds none of it.
        let decoy_hash = crate::hasher::hash_once(&format!("decoy-{:?}", Instant::now()))
            .map_err(start_error("hashing"))?;
        let per_minute = Quota::new(
            config.logins_per_minute.max(1),
            Duration::from_secs(60),
            config.login_burst.max(1),
        );
        let seal_wake = sealer::Sealer::waker();
        let core = Arc::new(Core {
            state,
            log: Arc::clone(&log),
            raft: Arc::clone(&raft),
            sessions: RwLock::with_level("sessions", levels::SESSIONS, HashMap::new()),
            hasher,
            decoy_hash,
            requests: KeyedLimiter::new(
                config.requests_per_sec.max(1),
                config.request_burst.max(1),
            ),
            logins: KeyedLimiter::with_clock(per_minute, Default::default()),
            connections: AtomicUsize::new(0),
            next_connection: AtomicU64::new(1),
            records_since_snapshot: AtomicU64::new(replayed),
            parallel_batches: AtomicU64::new(0),
            started: Instant::now(),
            data_dir: dir.clone(),
            config: config.clone(),
            seal_wake: seal_wake.0.clone(),
        });

        let (captures, snapshot_queue) = bounded::<Capture>(1);
        let snapshots = {
            let log = Arc::clone(&log);
            thread::Builder::new()
                .name("snapshots".into())
                .spawn(move || apply::write_snapshots(&snapshots, &*log, snapshot_queue))
                .map_err(|e| start_error("snapshot thread")(e.to_string()))?
        };
        let lanes = match config.apply_threads {
            // Half the cores, up to 4: the event loops, the log and the applier need the rest
            // (on 2 cores a second lane only adds hand-offs).
            0 => (workers / 2).clamp(1, 4),
            n => n,
        };
        let applier = apply::Applier::new(Arc::clone(&core), batches, captures, lanes)
            .map_err(|e| start_error("apply threads")(e.to_string()))?;
        let applier = thread::Builder::new()
            .name("apply".into())
            .spawn(move || applier.run())
            .map_err(|e| start_error("applier thread")(e.to_string()))?;
        let sealer = sealer::Sealer::start(Arc::clone(&core), Arc::clone(&raft), seal_wake)
            .map_err(|e| start_error("sealer thread")(e.to_string()))?;
        Ok(Service {
            core,
            raft,
            applier: Some(applier),
            snapshots: Some(snapshots),
            sealer: Some(sealer),
            _data_lock: data_lock,
        })
    }

    /// Executes one request of `connection`. `done` gets the session back with the answer, on
    /// whichever thread finishes it: at once for requests that change nothing, after the
    /// command is applied for those that do. Nothing here waits for the disk.
    pub fn handle(&self, connection: Box<Connection>, request: Request, done: Done) {
        Core::handle(&self.core, connection, request, done);
    }

    /// [`Service::handle`], waiting for the answer.
    pub fn execute(&self, connection: &mut Connection, request: Request) -> Answer {
        let (answered, answer) = oneshot::channel();
        let session = Box::new(std::mem::replace(connection, Connection::placeholder()));
        self.handle(
            session,
            request,
            Box::new(move |session, answer| {
                let _ = answered.send((session, answer));
            }),
        );
        match answer.recv() {
            Ok((session, answer)) => {
                *connection = *session;
                answer
            }
            Err(_) => Err(ErrorReply::new(ErrorCode::Internal, "the node is stopping")),
        }
    }

    /// Charges one request to `address`'s bucket.
    pub fn admit(&self, address: IpAddr) -> Result<(), ErrorReply> {
        self.core
            .requests
            .try_acquire(&address, 1)
            .map_err(|retry| rate_limited("requests from your address", retry))
    }

    /// Registers a new connection whose pushes go to `outbox`; `None` at the connection limit.
    pub fn connect(&self, peer: IpAddr, outbox: Sender<ServerFrame>) -> Option<Connection> {
        self.connect_to(peer, Outbox::new(outbox))
    }

    /// Like [`Service::connect`], with any [`Outbox`].
    pub fn connect_to(&self, peer: IpAddr, outbox: Outbox) -> Option<Connection> {
        let open = self.core.connections.fetch_add(1, Ordering::Relaxed);
        if open >= self.core.config.max_connections {
            self.core.connections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Connection {
            id: self.core.next_connection.fetch_add(1, Ordering::Relaxed),
            peer,
            user: None,
            account_hash: String::new(),
            cursors: Default::default(),
            next_cursor: 1,
            outbox,
        })
    }

    /// Forgets a closed connection (its session, its cursors).
    pub fn disconnect(&self, mut connection: Connection) {
        self.core.logout(&mut connection);
        self.core.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Makes everything logged so far durable and applied, including the "delivered" marks of
    /// live pushes that nobody waits for: the last step of an orderly shutdown.
    pub fn sync_log(&self) -> Result<(), String> {
        // The first round applies what was queued; marks of pushes made by that apply are
        // proposed before it answers, so the second round makes them durable too.
        self.core.log.sync()?;
        self.core.log.sync()
    }

    /// Node-wide figures for the statistics endpoint.
    pub fn stats(&self) -> NodeStats {
        let core = &self.core;
        let (applied_index, state_digest) = core
            .state
            .digest()
            .unwrap_or_else(|e| (core.state.applied_index(), format!("unavailable: {e}")));
        NodeStats {
            uptime_secs: core.started.elapsed().as_secs(),
            connections: core.connections.load(Ordering::Relaxed),
            accounts: core.state.accounts_stats(),
            messages: core.state.message_counts(Duration::from_millis(100)),
            request_limiter: core.requests.stats(),
            login_limiter: core.logins.stats(),
            records_since_snapshot: core.records_since_snapshot.load(Ordering::Relaxed),
            parallel_batches: core.parallel_batches.load(Ordering::Relaxed),
            applied_index,
            state_digest,
            raft: self.raft.status(),
            ledger: self.ledger_stats(),
        }
    }

    /// The ledger's figures.
    pub fn ledger_stats(&self) -> Option<LedgerStats> {
        let ledger = self.core.state.ledger();
        let info = ledger.info().ok()?;
        let (accepted, refused, blocks_refused) = ledger.counters();
        Some(LedgerStats {
            chain: info,
            difficulty_bits: self.core.config.difficulty_bits,
            transactions_accepted: accepted,
            transactions_refused: refused,
            blocks_refused,
            sealing: self.sealer.as_ref().map(sealer::Sealer::stats),
        })
    }

    /// Raft's side of the log (a node started without `--cluster` is a one-member cluster).
    pub fn raft(&self) -> &Arc<RaftLog> {
        &self.raft
    }

    /// The configuration this node runs with.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.core.data_dir
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        drop(self.sealer.take());
        if let Err(error) = self.sync_log() {
            tracing::error!(%error, "the log could not be synced while stopping");
        }
        self.core.log.stop();
        for thread in [self.applier.take(), self.snapshots.take()]
            .into_iter()
            .flatten()
        {
            if thread.join().is_err() {
                tracing::error!("a node thread panicked");
            }
        }
    }
}

/// The node's cluster: the one in its configuration, or (started without `--cluster`) a
/// cluster of its own, one member with the node's addresses and data directory.
fn cluster_of(config: &Config) -> Cluster {
    config
        .cluster
        .clone()
        .unwrap_or_else(|| Cluster::single(config.chat_addr, config.http_addr, &config.data_dir))
}

fn lock_data_dir(dir: &Path) -> Result<FileLock, StartError> {
    FileLock::try_exclusive(dir.join("node")).map_err(|e| {
        StartError(
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<sync_kit::fs::LockHeld>())
            {
                Some(held) => format!(
                    "data directory {} is in use by another node ({held}); stop it or choose \
                     another --data-dir",
                    dir.display()
                ),
                None => format!("cannot lock data directory {}: {e}", dir.display()),
            },
        )
    })
}

// ----- requests: validate, read, decide, propose -----

impl Core {
    fn handle(self: &Arc<Self>, mut connection: Box<Connection>, request: Request, done: Done) {
        match request {
            Request::CreateAccount { username, password } => {
                if let Err(error) = checks::username(&username)
                    .and_then(|()| checks::password(&password))
                    .and_then(|()| match self.state.has_account(&username) {
                        // Refused early; apply would refuse it too.
                        true => Err(checks::user_exists(&username)),
                        false => Ok(()),
                    })
                {
                    return done(connection, Err(error));
                }
                let core = Arc::clone(self);
                self.hasher.hash_then(password, move |hashed| match hashed {
                    Ok(password_hash) => {
                        let command = Command::OpenAccount {
                            username,
                            password_hash,
                            created: now_ms(),
                            grant: core.config.initial_balance,
                        };
                        core.commit(connection, command, done, |_, _| Reply::Done {});
                    }
                    Err(error) => done(
                        connection,
                        Err(ErrorReply::new(
                            ErrorCode::Internal,
                            format!("hashing failed: {error}"),
                        )),
                    ),
                });
            }
            Request::Login { username, password } => {
                if let Err(error) = checks::username(&username)
                    .and_then(|()| checks::login_password(&password))
                    .and_then(|()| {
                        self.logins
                            .try_acquire(&username, 1)
                            .map_err(|retry| rate_limited("login attempts for this user", retry))
                    })
                {
                    return done(connection, Err(error));
                }
                // The account as of every change acknowledged before the login (on a cluster,
                // this member may not have applied them yet).
                let core = Arc::clone(self);
                self.log.read_barrier(Box::new(move |ready| {
                    if let Err(error) = ready {
                        return done(connection, Err(error));
                    }
                    let hash = core.state.account(&username).map(|a| a.password_hash);
                    let against = hash.clone().unwrap_or_else(|| core.decoy_hash.clone());
                    let verifier = Arc::clone(&core);
                    core.hasher.verify_then(against, password, move |verified| {
                        let answer = verifier.log_in(&mut connection, username, hash, verified);
                        done(connection, answer);
                    });
                }));
            }
            Request::Logout => {
                self.logout(&mut connection);
                done(connection, Ok(Reply::Done {}));
            }
            Request::ClusterInfo {} => {
                // Answered on the raft thread, from its view: never waits on this thread.
                let answered = Arc::new(std::sync::Mutex::new(Some((connection, done))));
                let on_status = Arc::clone(&answered);
                let sent = self.raft.status_then(Box::new(move |status| {
                    if let Some((connection, done)) = take(&on_status) {
                        let reply = Reply::Cluster {
                            leader: status.leader_chat_addr,
                            members: status.voter_chat_addrs,
                        };
                        done(connection, Ok(reply));
                    }
                }));
                if let Err(why) = sent
                    && let Some((connection, done)) = take(&answered)
                {
                    done(
                        connection,
                        Err(ErrorReply::new(ErrorCode::Unavailable, why)),
                    );
                }
            }
            Request::ListAccounts {
                pattern,
                page_size,
                cursor,
            } => {
                if let Err(error) = self.current_user(&mut connection) {
                    return done(connection, Err(error));
                }
                let core = Arc::clone(self);
                self.log.read_barrier(Box::new(move |ready| {
                    let answer = ready.and_then(|()| {
                        let fresh = || core.state.accounts_snapshot();
                        listing::page(&mut connection, fresh, &pattern, page_size, cursor)
                    });
                    done(connection, answer);
                }));
            }
            Request::SendMessage { to, text, key } => {
                let command = self.current_user(&mut connection).and_then(|from| {
                    checks::username(&to)?;
                    checks::text(&text)?;
                    if let Some(key) = &key {
                        checks::key(key)?;
                    }
                    Ok(Command::SendMessage {
                        from,
                        to,
                        text,
                        timestamp: now_ms(),
                        key,
                    })
                });
                match command {
                    Ok(command) => {
                        self.commit(connection, command, done, |_, outcome| match outcome {
                            Outcome::Sent { id, timestamp }
                            | Outcome::AlreadySent { id, timestamp } => {
                                Reply::Sent { id, timestamp }
                            }
                            _ => Reply::Done {},
                        })
                    }
                    Err(error) => done(connection, Err(error)),
                }
            }
            Request::ReadMessages { limit } => self.read_messages(connection, limit, done),
            Request::GetBalance {}
            | Request::ListUtxos {}
            | Request::SubmitTransaction { .. }
            | Request::Transfer { .. }
            | Request::GetTransaction { .. }
            | Request::GetBlock { .. }
            | Request::ChainInfo {} => self.handle_ledger(connection, request, done),
            Request::DeleteMessages { ids } => {
                let command = self.current_user(&mut connection).and_then(|user| {
                    checks::ids(&ids)?;
                    Ok(Command::DeleteMessages { user, ids })
                });
                match command {
                    Ok(Command::DeleteMessages { ids, .. }) if ids.is_empty() => {
                        done(connection, Ok(Reply::Deleted { deleted: 0 }));
                    }
                    Ok(command) => {
                        self.commit(connection, command, done, |_, outcome| match outcome {
                            Outcome::Deleted(deleted) => Reply::Deleted { deleted },
                            _ => Reply::Deleted { deleted: 0 },
                        })
                    }
                    Err(error) => done(connection, Err(error)),
                }
            }
            Request::DeleteAccount { password } => {
                let user = match self.current_user(&mut connection) {
                    Ok(user) => user,
                    Err(error) => return done(connection, Err(error)),
                };
                let Some(password_hash) = self.state.account(&user).map(|a| a.password_hash) else {
                    return done(connection, Err(checks::not_logged_in()));
                };
                let core = Arc::clone(self);
                self.hasher
                    .verify_then(password_hash.clone(), password, move |verified| {
                        if !verified {
                            return done(connection, Err(checks::auth_failed()));
                        }
                        let command = Command::DeleteAccount {
                            username: user,
                            password_hash,
                        };
                        core.commit(connection, command, done, |connection, _| {
                            connection.end_session();
                            Reply::Done {}
                        });
                    });
            }
        }
    }

    /// Proposes `command`; once applied, a refusal is the answer, anything else goes through
    /// `reply` (which may update the session).
    fn commit(
        &self,
        mut connection: Box<Connection>,
        command: Command,
        done: Done,
        reply: impl FnOnce(&mut Connection, Outcome) -> Reply + Send + 'static,
    ) {
        self.log.propose(
            command,
            Some(Box::new(move |result| {
                let answer = match result {
                    Ok(Outcome::Refused(error)) | Err(error) => Err(error),
                    Ok(outcome) => Ok(reply(&mut connection, outcome)),
                };
                done(connection, answer);
            })),
        );
    }

    /// Reading is handing out the oldest waiting messages (so no push or other read hands them
    /// out too) and logging them delivered; the answer waits for that mark, as any change does.
    fn read_messages(self: &Arc<Self>, mut connection: Box<Connection>, limit: u32, done: Done) {
        let user = match self
            .current_user(&mut connection)
            .and_then(|user| checks::page("limit", limit).map(|()| user))
        {
            Ok(user) => user,
            Err(error) => return done(connection, Err(error)),
        };
        // Every message acknowledged before the read is in the mailbox it reads (on a cluster,
        // this member may not have applied them yet).
        let core = Arc::clone(self);
        self.log.read_barrier(Box::new(move |ready| match ready {
            Ok(()) => core.hand_out_and_mark(connection, user, limit, done),
            Err(error) => done(connection, Err(error)),
        }));
    }

    fn hand_out_and_mark(
        self: &Arc<Self>,
        connection: Box<Connection>,
        user: String,
        limit: u32,
        done: Done,
    ) {
        let messages = match self
            .state
            .hand_out_unread(&user, limit as usize, READ_BUDGET)
            .map_err(lock_failed)
        {
            Ok(messages) if messages.is_empty() => {
                return done(connection, Ok(Reply::Messages { messages }));
            }
            Ok(messages) => messages,
            Err(error) => return done(connection, Err(error)),
        };
        let ids: Vec<u64> = messages.iter().map(|m| m.id).collect();
        let marks = vec![(user.clone(), ids.clone())];
        let core = Arc::clone(self);
        self.log.propose(
            Command::MarkDelivered { marks },
            Some(Box::new(move |result| match result {
                Ok(_) => done(connection, Ok(Reply::Messages { messages })),
                Err(error) => {
                    // Not logged as delivered: offered again by the next read.
                    core.take_back(&user, &ids);
                    done(connection, Err(error));
                }
            })),
        );
    }

    /// The end of a login, once the password is verified (on the hashing thread).
    fn log_in(
        &self,
        connection: &mut Connection,
        username: String,
        hash: Option<String>,
        verified: bool,
    ) -> Answer {
        let Some(hash) = hash.filter(|_| verified) else {
            tracing::info!(user = %username, peer = %connection.peer, "login failed");
            return Err(checks::auth_failed());
        };
        self.logout(connection);
        let unread = {
            let mut sessions = self.sessions.write().map_err(lock_failed)?;
            // The applier ends the sessions of a deleted account under this lock, after applying
            // the deletion: checked here, the account verified above is still the one that exists
            // (not deleted, not replaced by a new one of the same name) when this session starts.
            if self.state.account(&username).map(|a| a.password_hash) != Some(hash.clone()) {
                return Err(checks::auth_failed());
            }
            sessions
                .entry(username.clone())
                .or_default()
                .push(connection.handle());
            self.state.unread_count(&username).map_err(lock_failed)?
        };
        connection.user = Some(username);
        connection.account_hash = hash;
        Ok(Reply::LoggedIn {
            unread: u32::try_from(unread).unwrap_or(u32::MAX),
        })
    }

    fn logout(&self, connection: &mut Connection) {
        let Some(user) = connection.end_session() else {
            return;
        };
        match self.sessions.write() {
            Ok(mut sessions) => {
                if let Some(handles) = sessions.get_mut(&user) {
                    handles.retain(|h| h.connection != connection.id);
                    if handles.is_empty() {
                        sessions.remove(&user);
                    }
                }
            }
            Err(error) => {
                lock_failed(error);
            }
        }
    }

    /// The connection's user, if it is logged in and the account it logged into still exists
    /// (not merely an account of the same name, created after a deletion).
    fn current_user(&self, connection: &mut Connection) -> Result<String, ErrorReply> {
        let Some(user) = connection.user.clone() else {
            return Err(checks::not_logged_in());
        };
        let same_account = self
            .state
            .account(&user)
            .is_some_and(|account| account.password_hash == connection.account_hash);
        if same_account {
            Ok(user)
        } else {
            // The account was deleted (from another connection): this session is over.
            self.logout(connection);
            Err(checks::not_logged_in())
        }
    }

    fn take_back(&self, user: &str, ids: &[u64]) {
        if let Err(error) = self.state.take_back(user, ids) {
            lock_failed(error);
        }
    }
}

/// Node-wide figures.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStats {
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Open connections.
    pub connections: usize,
    /// The accounts map.
    pub accounts: sync_kit::mvcc::MvccStats,
    /// Messages held in mailboxes, and how many are undelivered.
    pub messages: MessageCounts,
    /// Per-address request limiter.
    pub request_limiter: sync_kit::ratelimit::KeyedStats,
    /// Per-username login limiter.
    pub login_limiter: sync_kit::ratelimit::KeyedStats,
    /// Commands applied since the last snapshot.
    pub records_since_snapshot: u64,
    /// Batches whose commands on different shards were applied on several threads at once.
    pub parallel_batches: u64,
    /// The log index of the last command applied.
    pub applied_index: u64,
    /// SHA-256 of the state at `applied_index`, in hex: equal on nodes that applied the same
    /// commands.
    pub state_digest: String,
    /// Raft's figures (`None` if its loop did not answer in time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raft: Option<RaftStatus>,
    /// The ledger's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger: Option<LedgerStats>,
}

/// The ledger's figures in `/stats`.
#[derive(Clone, Debug, Serialize)]
pub struct LedgerStats {
    /// Height, tip, mempool size and bytes, supply, confirmed outputs.
    #[serde(flatten)]
    pub chain: crate::ledger::ChainInfo,
    /// The difficulty this member seals with.
    pub difficulty_bits: u32,
    /// Transactions pooled by apply on this member.
    pub transactions_accepted: u64,
    /// Transactions refused, by reason (by a request's check or by apply).
    pub transactions_refused: std::collections::BTreeMap<&'static str, u64>,
    /// Blocks refused by apply.
    pub blocks_refused: u64,
    /// This member's sealing.
    pub sealing: Option<sealer::SealStats>,
}

/// What a shared slot holds, taken once (by whichever side gets there first).
fn take<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A sync-kit refusal inside the node: a bug in its lock order, reported, never a panic.
fn lock_failed(error: LockError) -> ErrorReply {
    tracing::error!(%error, "lock refused inside the node");
    ErrorReply::new(ErrorCode::Internal, format!("internal lock error: {error}"))
}

fn rate_limited(what: &str, retry: RetryAfter) -> ErrorReply {
    let after = retry.wait().map_or_else(
        || "never".to_string(),
        |wait| format!("{} ms", wait.as_millis().max(1)),
    );
    ErrorReply::new(
        ErrorCode::RateLimited,
        format!("too many {what}; retry after {after}"),
    )
}
