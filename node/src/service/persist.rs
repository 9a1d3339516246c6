//! Recovery at start, and snapshots that let the log be truncated.
//!
//! A snapshot is the whole durable state at one log position: taken while holding every mailbox
//! shard and `wal-sequence` (one `LockSet`, since the shards share a level), so no change can be
//! half in it; the accounts come from an O(1) MVCC snapshot. The log then starts a new segment at
//! that position; the snapshot is written with `atomic_write`; only then are the segments it
//! covers deleted. A crash at any point leaves either the old snapshot and all its log, or the new
//! one and the log after it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sync_kit::LockSet;

use super::{Account, Mailbox, Service, StartError, lock_failed};
use crate::wal::{Record, StoredMessage, Wal};

const SNAPSHOT_FILE: &str = "snapshot.json";
const FORMAT: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    seq: u64,
    next_message_id: u64,
    accounts: BTreeMap<String, Account>,
    mailboxes: BTreeMap<String, Vec<(StoredMessage, bool)>>,
}

pub(super) struct Recovered {
    pub(super) accounts: BTreeMap<String, Account>,
    pub(super) mailboxes: HashMap<String, Mailbox>,
    pub(super) last_seq: u64,
    pub(super) next_message_id: u64,
    pub(super) records_after_snapshot: u64,
    pub(super) truncated_bytes: u64,
    pub(super) wal: Wal,
}

pub(super) fn recover(dir: &Path) -> Result<Recovered, StartError> {
    let path = dir.join(SNAPSHOT_FILE);
    let snapshot: SnapshotFile = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| StartError(format!("snapshot {} is unreadable: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SnapshotFile::default(),
        Err(e) => return Err(StartError(format!("cannot read {}: {e}", path.display()))),
    };
    if snapshot.format > FORMAT {
        return Err(StartError(format!(
            "snapshot {} has format {}, newer than this node understands ({FORMAT})",
            path.display(),
            snapshot.format
        )));
    }
    let (wal, log) = Wal::open(dir, snapshot.seq)
        .map_err(|e| StartError(format!("cannot open the log in {}: {e}", dir.display())))?;
    let mut accounts = snapshot.accounts;
    let mut mailboxes: HashMap<String, Mailbox> = snapshot
        .mailboxes
        .into_iter()
        .map(|(user, list)| {
            let messages = list.into_iter().map(|(m, d)| (m.id, (m, d))).collect();
            (
                user,
                Mailbox {
                    messages,
                    ..Mailbox::default()
                },
            )
        })
        .collect();
    let mut last_seq = snapshot.seq;
    let mut next_message_id = snapshot.next_message_id.max(1);
    let mut replayed = 0;
    for entry in log.entries {
        if entry.seq <= snapshot.seq {
            continue; // covered by the snapshot (a segment not yet pruned)
        }
        last_seq = last_seq.max(entry.seq);
        replayed += 1;
        match entry.record {
            Record::CreateAccount {
                username,
                password_hash,
                created,
            } => {
                accounts.insert(
                    username,
                    Account {
                        password_hash,
                        created,
                    },
                );
            }
            Record::DeleteAccount { username } => {
                accounts.remove(&username);
                mailboxes.remove(&username);
            }
            Record::Message(message) => {
                next_message_id = next_message_id.max(message.id + 1);
                if accounts.contains_key(&message.to) {
                    mailboxes
                        .entry(message.to.clone())
                        .or_default()
                        .messages
                        .insert(message.id, (message, false));
                }
            }
            Record::Delivered { user, ids } => {
                if let Some(mailbox) = mailboxes.get_mut(&user) {
                    for id in ids {
                        if let Some((_, delivered)) = mailbox.messages.get_mut(&id) {
                            *delivered = true;
                        }
                    }
                }
            }
            Record::DeleteMessages { user, ids } => {
                if let Some(mailbox) = mailboxes.get_mut(&user) {
                    for id in ids {
                        mailbox.messages.remove(&id);
                    }
                }
            }
        }
    }
    Ok(Recovered {
        accounts,
        mailboxes,
        last_seq,
        next_message_id,
        records_after_snapshot: replayed,
        truncated_bytes: log.truncated_bytes,
        wal,
    })
}

impl Service {
    /// Writes a snapshot of the durable state and truncates the log behind it. Returns the log
    /// position it covers.
    pub fn snapshot_now(&self) -> Result<u64, String> {
        let mut set = LockSet::new();
        let shards: Vec<_> = self.mailboxes.iter().map(|shard| set.lock(shard)).collect();
        let sequence = set.lock(&self.sequence);
        let (file, seq) = {
            let held = set.acquire().map_err(|e| lock_failed(e).message)?;
            let seq = *held.get(sequence);
            let accounts = self.accounts.snapshot();
            let mut mailboxes = BTreeMap::new();
            for slot in &shards {
                for (user, mailbox) in held.get(*slot) {
                    mailboxes.insert(user.clone(), mailbox.messages.values().cloned().collect());
                }
            }
            // Records after `seq` go to a new segment; this one (and older) the snapshot covers.
            self.wal.rotate(seq);
            self.records_since_snapshot.store(0, Ordering::Relaxed);
            let file = SnapshotFile {
                format: FORMAT,
                seq,
                next_message_id: self.next_message_id.load(Ordering::Relaxed),
                accounts: accounts
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                mailboxes,
            };
            (file, seq)
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| e.to_string())?;
        sync_kit::fs::atomic_write(self.data_dir.join(SNAPSHOT_FILE), bytes)
            .map_err(|e| format!("writing the snapshot failed: {e}"))?;
        self.wal.prune(seq);
        Ok(seq)
    }
}

/// Takes snapshots in the background when enough has been logged, or enough time has passed.
pub fn start_snapshots(service: Arc<Service>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("snapshots".into())
        .spawn(move || {
            let interval = Duration::from_secs(service.config.snapshot_interval_secs.max(1));
            let every = service.config.snapshot_every_records.max(1);
            let mut last = Instant::now();
            loop {
                // A periodic check, not synchronisation: nothing waits on this thread.
                std::thread::sleep(Duration::from_millis(200));
                let pending = service.records_since_snapshot.load(Ordering::Relaxed);
                if pending >= every || (pending > 0 && last.elapsed() >= interval) {
                    match service.snapshot_now() {
                        Ok(seq) => tracing::info!(seq, "snapshot written, log truncated"),
                        Err(error) => {
                            tracing::error!(%error, "snapshot failed; the log keeps growing")
                        }
                    }
                    last = Instant::now();
                }
            }
        })
        .map(drop)
}
