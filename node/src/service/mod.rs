//! The chat service: every operation, executed on sync-kit primitives, whatever the protocol.
//!
//! | state | primitive | lock level |
//! |---|---|---|
//! | accounts | `MvccMap<String, Account>` (O(1) snapshots for paging, conflict-checked commits) | internal |
//! | live sessions | `RwLock<HashMap<user, Vec<SessionHandle>>>` named `sessions` | 10 |
//! | mailboxes | 16 shards, each a `Mutex<HashMap<user, Mailbox>>` named `mailboxes-NN` | 20 |
//! | log order | `Mutex<u64>` named `wal-sequence`: the last sequence number given out | 90 |
//! | rate limits | `KeyedLimiter` per client address and per username (logins) | none |
//! | data directory | `FileLock` on `<data>/node` | cross-process |
//! | snapshots | `atomic_write` of `<data>/snapshot.json` | - |
//!
//! The level order is the order every operation takes them: who is online, then the mailbox,
//! then the log position. A `LockError` (which would mean a bug in that order) becomes an
//! `internal` error response and an error log line, never a panic or a hang.
//!
//! Every change follows one pattern: change the state in memory while holding its lock, take a
//! sequence number and queue the log record under `wal-sequence` (so log order is the order of
//! the changes), release the locks, wait until the log has made the record durable, then answer.
//! Nothing is acknowledged before it is on disk.

mod accounts;
mod connection;
mod messages;
mod persist;

pub use persist::start_snapshots;

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sync_kit::fs::FileLock;
use sync_kit::mvcc::MvccMap;
use sync_kit::ratelimit::{KeyedLimiter, Quota, RetryAfter};
use sync_kit::{LockError, Mutex, RwLock};

pub use connection::{Connection, SessionHandle};

use crate::config::Config;
use crate::hasher::Hasher;
use crate::protocol::{ErrorCode, ErrorReply, Reply, Request};
use crate::wal::{Durable, Entry, Record, StoredMessage, Wal};

/// Lock levels of the node (see `docs/node.md`).
pub mod levels {
    use sync_kit::Level;
    /// `sessions`: who is online.
    pub const SESSIONS: Level = Level(10);
    /// `mailboxes-NN`: messages per user, sharded.
    pub const MAILBOXES: Level = Level(20);
    /// `wal-sequence`: log order.
    pub const WAL_SEQUENCE: Level = Level(90);
}

const SHARDS: usize = 16;
const SHARD_NAMES: [&str; SHARDS] = [
    "mailboxes-00",
    "mailboxes-01",
    "mailboxes-02",
    "mailboxes-03",
    "mailboxes-04",
    "mailboxes-05",
    "mailboxes-06",
    "mailboxes-07",
    "mailboxes-08",
    "mailboxes-09",
    "mailboxes-10",
    "mailboxes-11",
    "mailboxes-12",
    "mailboxes-13",
    "mailboxes-14",
    "mailboxes-15",
];

/// A stored account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
}

/// One user's messages, oldest (lowest id) first.
#[derive(Clone, Debug, Default)]
pub struct Mailbox {
    /// Message id → message and whether it was delivered.
    pub messages: BTreeMap<u64, (StoredMessage, bool)>,
    /// Messages stored while the recipient was online, not pushed yet (they wait for their log
    /// record to be durable), with the sessions that were live when each was sent. Kept here, under
    /// the mailbox's lock, so that pushes leave in id order whichever sender wakes first.
    pub(super) unpushed: BTreeMap<u64, Vec<SessionHandle>>,
}

type Shard = Mutex<HashMap<String, Mailbox>>;

/// The node's state and operations.
pub struct Service {
    accounts: MvccMap<String, Account>,
    sessions: RwLock<HashMap<String, Vec<SessionHandle>>>,
    mailboxes: Vec<Shard>,
    sequence: Mutex<u64>,
    wal: Wal,
    hasher: Hasher,
    /// A hash of a random password: verified against when a login names no account, so that
    /// "no such user" and "wrong password" cost the same time.
    decoy_hash: String,
    requests: KeyedLimiter<IpAddr>,
    logins: KeyedLimiter<String>,
    next_message_id: AtomicU64,
    records_since_snapshot: AtomicU64,
    connections: AtomicUsize,
    next_connection: AtomicU64,
    started: Instant,
    data_dir: PathBuf,
    _data_lock: FileLock,
    config: Config,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Why a node could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl Service {
    /// Locks the data directory, recovers the state (snapshot + log) and starts the log and
    /// hashing threads.
    pub fn open(config: &Config) -> Result<Service, StartError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| {
            StartError(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let data_lock = FileLock::try_exclusive(dir.join("node")).map_err(|e| {
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
        })?;
        let recovered = persist::recover(dir)?;
        let mut mailboxes: Vec<Shard> = SHARD_NAMES
            .iter()
            .map(|name| Mutex::with_level(*name, levels::MAILBOXES, HashMap::new()))
            .collect();
        let accounts = MvccMap::new();
        let mut tx = accounts.begin();
        for (name, account) in recovered.accounts {
            tx.insert(name, account);
        }
        tx.commit()
            .map_err(|e| StartError(format!("loading accounts: {e}")))?;
        for (user, mailbox) in recovered.mailboxes {
            let shard = shard_index(&user);
            mailboxes[shard].get_mut().insert(user, mailbox);
        }
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let per_minute = Quota::new(
            config.logins_per_minute.max(1),
            std::time::Duration::from_secs(60),
            config.login_burst.max(1),
        );
        tracing::info!(
            accounts = accounts.len(),
            last_seq = recovered.last_seq,
            truncated_bytes = recovered.truncated_bytes,
            "state recovered from {}",
            dir.display()
        );
        let hasher = Hasher::start(workers)
            .map_err(|e| StartError(format!("cannot start hashing threads: {e}")))?;
        let decoy_hash = hasher
            .hash(format!("decoy-{:?}", Instant::now()))
            .map_err(|e| StartError(format!("cannot hash: {e}")))?;
        Ok(Service {
            accounts,
            sessions: RwLock::with_level("sessions", levels::SESSIONS, HashMap::new()),
            mailboxes,
            sequence: Mutex::with_level("wal-sequence", levels::WAL_SEQUENCE, recovered.last_seq),
            wal: recovered.wal,
            hasher,
            decoy_hash,
            requests: KeyedLimiter::new(
                config.requests_per_sec.max(1),
                config.request_burst.max(1),
            ),
            logins: KeyedLimiter::with_clock(per_minute, Default::default()),
            next_message_id: AtomicU64::new(recovered.next_message_id),
            records_since_snapshot: AtomicU64::new(recovered.records_after_snapshot),
            connections: AtomicUsize::new(0),
            next_connection: AtomicU64::new(1),
            started: Instant::now(),
            data_dir: dir.clone(),
            _data_lock: data_lock,
            config: config.clone(),
        })
    }

    /// Executes one request for `connection`.
    pub fn execute(
        &self,
        connection: &mut Connection,
        request: Request,
    ) -> Result<Reply, ErrorReply> {
        match request {
            Request::CreateAccount { username, password } => {
                self.create_account(username, password)
            }
            Request::Login { username, password } => self.login(connection, username, password),
            Request::Logout => self.logout(connection),
            Request::ListAccounts {
                pattern,
                page_size,
                cursor,
            } => self.list_accounts(connection, &pattern, page_size, cursor),
            Request::SendMessage { to, text } => self.send_message(connection, to, text),
            Request::ReadMessages { limit } => self.read_messages(connection, limit),
            Request::DeleteMessages { ids } => self.delete_messages(connection, ids),
            Request::DeleteAccount { password } => self.delete_account(connection, password),
        }
    }

    /// Charges one request to `address`'s bucket.
    pub fn admit(&self, address: IpAddr) -> Result<(), ErrorReply> {
        self.requests
            .try_acquire(&address, 1)
            .map_err(|retry| rate_limited("requests from your address", retry))
    }

    fn shard(&self, user: &str) -> &Shard {
        &self.mailboxes[shard_index(user)]
    }

    /// Under the `wal-sequence` lock, runs `change` (which applies a change in memory and
    /// returns its log records) and queues the records with the next sequence numbers. Callers
    /// still hold the locks of the state they changed, so the log's order is the order of the
    /// changes. Returns a handle that answers when the last record (and so all) is durable.
    fn sequenced(
        &self,
        change: impl FnOnce() -> Result<Vec<Record>, ErrorReply>,
    ) -> Result<Option<Durable>, ErrorReply> {
        let mut sequence = self.sequence.lock().map_err(lock_failed)?;
        let records = change()?;
        Ok(self.queue(&mut sequence, records, true))
    }

    /// Like [`Service::sequenced`] for records nobody waits for: they become durable with the
    /// next batch.
    fn sequenced_quietly(&self, records: Vec<Record>) -> Result<(), ErrorReply> {
        let mut sequence = self.sequence.lock().map_err(lock_failed)?;
        self.queue(&mut sequence, records, false);
        Ok(())
    }

    fn queue(&self, sequence: &mut u64, records: Vec<Record>, wait: bool) -> Option<Durable> {
        let mut durable = None;
        for record in records {
            *sequence += 1;
            let entry = Entry {
                seq: *sequence,
                record,
            };
            if wait {
                durable = Some(self.wal.append(entry));
            } else {
                self.wal.append_quietly(entry);
            }
            self.records_since_snapshot.fetch_add(1, Ordering::Relaxed);
        }
        durable
    }

    /// Waits until a logged change is durable.
    fn durable(durable: Option<Durable>) -> Result<(), ErrorReply> {
        let Some(durable) = durable else {
            return Ok(());
        };
        match durable.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ErrorReply::new(ErrorCode::Internal, error)),
            Err(_) => Err(ErrorReply::new(ErrorCode::Internal, "the log stopped")),
        }
    }

    /// Makes everything logged so far durable, including what nobody waited for (the
    /// "delivered" marks of live pushes): the last step of an orderly shutdown.
    pub fn sync_log(&self) -> Result<(), String> {
        self.wal.sync()
    }

    /// Node-wide figures for the statistics endpoint.
    pub fn stats(&self) -> NodeStats {
        let mut stored = 0;
        let mut undelivered = 0;
        for shard in &self.mailboxes {
            if let Ok(shard) = shard.try_lock_for(std::time::Duration::from_millis(100)) {
                for mailbox in shard.values() {
                    stored += mailbox.messages.len();
                    undelivered += mailbox.messages.values().filter(|(_, d)| !d).count();
                }
            }
        }
        NodeStats {
            uptime_secs: self.started.elapsed().as_secs(),
            connections: self.connections.load(Ordering::Relaxed),
            accounts: self.accounts.stats(),
            messages_stored: stored,
            messages_undelivered: undelivered,
            request_limiter: self.requests.stats(),
            login_limiter: self.logins.stats(),
            records_since_snapshot: self.records_since_snapshot.load(Ordering::Relaxed),
        }
    }

    /// The configuration this node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
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
    /// Messages held in mailboxes.
    pub messages_stored: usize,
    /// Of which not yet delivered.
    pub messages_undelivered: usize,
    /// Per-address request limiter.
    pub request_limiter: sync_kit::ratelimit::KeyedStats,
    /// Per-username login limiter.
    pub login_limiter: sync_kit::ratelimit::KeyedStats,
    /// Log records since the last snapshot.
    pub records_since_snapshot: u64,
}

fn shard_index(user: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    user.hash(&mut hasher);
    (hasher.finish() % SHARDS as u64) as usize
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

// The order every operation takes its locks in, checked at compile time.
const _: () = {
    assert!(levels::SESSIONS.0 < levels::MAILBOXES.0);
    assert!(levels::MAILBOXES.0 < levels::WAL_SEQUENCE.0);
};
