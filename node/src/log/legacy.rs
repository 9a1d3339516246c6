//! Data directories written before the log-first core (format 1: a JSON snapshot with its own
//! message-id counter, and log records of JSON state changes), brought forward once at start.
//!
//! The old snapshot and every old record after it are replayed into a state image, exactly as
//! the old node recovered them; the image becomes a format-2 snapshot (written with
//! `atomic_write`), and only then are the old segments moved into `legacy-format-1/` (kept, not
//! deleted). A crash between the two leaves a format-2 snapshot next to old segments: the next
//! start finds them covered and just moves them. The image's applied index is above every old
//! sequence number and message id, so new message ids (log indexes) keep increasing.
//!
//! Format 2 (the single-node log before raft: `wal-*.log` segments of [`Entry`] records next to
//! a format-2 `snapshot.json`) is brought forward by [`migrate_wal`] when a node starts without
//! `--cluster` (it now runs as a one-member raft group), in an order that a crash at any step
//! leaves redone or finished at the next start:
//!
//! 1. recover the state as the single-node log did: the snapshot, then every record after it
//!    through `State::apply` (a torn tail is cut, damage refused, as before);
//! 2. write that state as the snapshot (`atomic_write`), covering index `n`;
//! 3. initialise raft's storage (`raft/`) at `n`: snapshot metadata at `n` with term 1 and the
//!    one-member configuration, hard state term 1 and commit `n`, fsynced (skipped when it
//!    already starts at `n`);
//! 4. only then move the segments into `legacy-format-2/` (kept, not deleted).
//!
//! Steps 1 and 2 give the same state again when repeated (the segments' records at or below the
//! snapshot's index are skipped), step 3 is skipped once done, and step 4 only moves what is
//! left. A format-1 directory goes through [`migrate`] first, which leaves a format-2 snapshot
//! and no segments.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use raft::prelude::ConfState;

use super::segments::{self, Entry};
use super::snapshot::SNAPSHOT_FILE;
use crate::raft::storage::DiskStorage;
use crate::state::{Account, Image, ImageMessage, State};

/// Where the old segments are moved.
pub const LEGACY_DIR: &str = "legacy-format-1";
/// Where the single-node log's segments (format 2) are moved once raft's storage holds their
/// state.
pub const LEGACY_WAL_DIR: &str = "legacy-format-2";
/// The raft id of a node started without `--cluster`.
const SINGLE_ID: u64 = 1;

#[derive(Deserialize)]
struct OldSnapshot {
    format: u32,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    next_message_id: u64,
    #[serde(default)]
    accounts: BTreeMap<String, Account>,
    #[serde(default)]
    mailboxes: BTreeMap<String, Vec<(OldMessage, bool)>>,
}

#[derive(Deserialize)]
struct OldMessage {
    id: u64,
    from: String,
    timestamp: u64,
    text: String,
}

#[derive(Deserialize)]
struct OldEntry {
    seq: u64,
    record: OldRecord,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OldRecord {
    CreateAccount {
        username: String,
        password_hash: String,
        created: u64,
    },
    DeleteAccount {
        username: String,
    },
    Message {
        id: u64,
        from: String,
        to: String,
        timestamp: u64,
        text: String,
    },
    Delivered {
        user: String,
        ids: Vec<u64>,
    },
    DeleteMessages {
        user: String,
        ids: Vec<u64>,
    },
}

/// The segments of `dir` whose records are format-1 JSON.
fn legacy_segments(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(name.starts_with("wal-") && name.ends_with(".log")) {
            continue;
        }
        // The first payload byte of a format-1 record is a JSON object's `{`; of a format-2
        // record, the format byte. Nine bytes tell, whatever the segment's size.
        let mut start = [0u8; 9];
        let read = fs::File::open(&path)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut start));
        match read {
            Ok(()) if start[8] == b'{' => found.push(path),
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {} // too short to tell
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    found.sort();
    Ok(found)
}

/// The format of the snapshot in `dir`, if there is one.
fn snapshot_format(dir: &Path) -> Result<Option<(u32, Vec<u8>)>, String> {
    #[derive(Deserialize)]
    struct FormatOnly {
        format: u32,
    }
    let path = dir.join(SNAPSHOT_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let format = serde_json::from_slice::<FormatOnly>(&bytes)
                .map_err(|e| format!("snapshot {} is unreadable: {e}", path.display()))?
                .format;
            Ok(Some((format, bytes)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Brings a format-1 data directory forward (see the module's summary). Returns the applied
/// index of the snapshot it wrote, or `None` if there was nothing to bring forward.
pub fn migrate(dir: &Path) -> Result<Option<u64>, String> {
    let segments = legacy_segments(dir)?;
    let snapshot = snapshot_format(dir)?;
    let old_snapshot = match &snapshot {
        Some((1, bytes)) => {
            Some(serde_json::from_slice::<OldSnapshot>(bytes).map_err(|e| {
                format!("format-1 snapshot in {} is unreadable: {e}", dir.display())
            })?)
        }
        Some((_, _)) if !segments.is_empty() => {
            // A migration that stopped after writing its snapshot: finish it.
            move_aside(dir, &segments)?;
            return Ok(None);
        }
        _ if segments.is_empty() => return Ok(None),
        _ => None,
    };
    let mut old = old_snapshot.unwrap_or(OldSnapshot {
        format: 1,
        seq: 0,
        next_message_id: 1,
        accounts: BTreeMap::new(),
        mailboxes: BTreeMap::new(),
    });
    debug_assert_eq!(old.format, 1);
    let mut mailboxes: BTreeMap<String, BTreeMap<u64, ImageMessage>> = old
        .mailboxes
        .into_iter()
        .map(|(user, list)| {
            let messages = list
                .into_iter()
                .map(|(m, delivered)| {
                    let message = ImageMessage {
                        id: m.id,
                        from: m.from,
                        timestamp: m.timestamp,
                        text: m.text,
                        delivered,
                    };
                    (m.id, message)
                })
                .collect();
            (user, messages)
        })
        .collect();
    let mut last = old.seq.max(old.next_message_id.saturating_sub(1));
    for path in &segments {
        for entry in read_records(path)? {
            if entry.seq <= old.seq {
                continue;
            }
            last = last.max(entry.seq);
            match entry.record {
                OldRecord::CreateAccount {
                    username,
                    password_hash,
                    created,
                } => {
                    old.accounts.insert(
                        username,
                        Account {
                            password_hash,
                            created,
                        },
                    );
                }
                OldRecord::DeleteAccount { username } => {
                    old.accounts.remove(&username);
                    mailboxes.remove(&username);
                }
                OldRecord::Message {
                    id,
                    from,
                    to,
                    timestamp,
                    text,
                } => {
                    last = last.max(id);
                    if old.accounts.contains_key(&to) {
                        let message = ImageMessage {
                            id,
                            from,
                            timestamp,
                            text,
                            delivered: false,
                        };
                        mailboxes.entry(to).or_default().insert(id, message);
                    }
                }
                OldRecord::Delivered { user, ids } => {
                    if let Some(mailbox) = mailboxes.get_mut(&user) {
                        for id in ids {
                            if let Some(message) = mailbox.get_mut(&id) {
                                message.delivered = true;
                            }
                        }
                    }
                }
                OldRecord::DeleteMessages { user, ids } => {
                    if let Some(mailbox) = mailboxes.get_mut(&user) {
                        for id in ids {
                            mailbox.remove(&id);
                        }
                    }
                }
            }
        }
    }
    let image = Image {
        applied: last,
        accounts: old.accounts,
        mailboxes: mailboxes
            .into_iter()
            .map(|(user, messages)| (user, messages.into_values().collect()))
            .collect(),
        sent_keys: BTreeMap::new(),
        ledger: Default::default(),
    };
    super::snapshot::save(dir, image)?;
    move_aside(dir, &segments)?;
    tracing::info!(
        applied = last,
        segments = segments.len(),
        "a format-1 data directory was brought forward; its old segments are in {LEGACY_DIR}/"
    );
    Ok(Some(last))
}

/// The whole records of a format-1 segment. Damage with no whole record after it is a write torn
/// by a crash, and ends the segment (as the old node treated it); damage followed by a whole
/// record is refused, naming the file and offset, rather than drop what follows.
fn read_records(path: &Path) -> Result<Vec<OldEntry>, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let record_at = |at: usize| -> Option<(OldEntry, usize)> {
        let header = bytes.get(at..at.checked_add(8)?)?;
        let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
        let payload = bytes.get(at + 8..(at + 8).checked_add(len)?)?;
        if crc32fast::hash(payload) != crc {
            return None;
        }
        let entry = serde_json::from_slice::<OldEntry>(payload).ok()?;
        Some((entry, at + 8 + len))
    };
    let mut entries = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        match record_at(at) {
            Some((entry, end)) => {
                entries.push(entry);
                at = end;
            }
            None => {
                if let Some(resumes) = (at + 1..bytes.len()).find(|&o| record_at(o).is_some()) {
                    return Err(format!(
                        "format-1 segment {} is damaged at byte {at} and a whole record follows \
                         at byte {resumes}: restore it, or start this data directory with the \
                         version that wrote it",
                        path.display()
                    ));
                }
                tracing::warn!(segment = %path.display(), at, "a format-1 segment ends in a torn record; ignored");
                break;
            }
        }
    }
    Ok(entries)
}

/// The single-node log's segments (format 2) in `dir`.
fn wal_segments(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let found =
        segments::list::<Entry>(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Brings a data directory written by the single-node log (format 2) forward to a one-member
/// raft group's (see the module's summary). Returns the index raft's storage starts at, or
/// `None` if there was nothing to bring forward.
pub fn migrate_wal(dir: &Path) -> Result<Option<u64>, String> {
    let wal = wal_segments(dir)?;
    if wal.is_empty() {
        return Ok(None);
    }
    // 1. The state, recovered as the single-node log recovered it.
    let image = super::snapshot::load(dir)?;
    let (found, truncated) = segments::recover::<Entry>(dir)
        .map_err(|e| format!("cannot recover the log in {}: {e}", dir.display()))?;
    let state = State::from_image(image)?;
    for entry in found.into_iter().flat_map(|segment| segment.records) {
        if entry.index > state.applied_index() {
            state
                .apply(entry.index, &entry.command)
                .map_err(|e| format!("replaying the log in {}: {e}", dir.display()))?;
        }
    }
    let index = state.applied_index();
    // 2. Its snapshot.
    let image = state
        .image()
        .map_err(|e| format!("the recovered state's image: {e}"))?;
    super::snapshot::save(dir, image)?;
    // 3. Raft's storage, starting at that index.
    if index > 0 {
        init_raft(&dir.join("raft"), index)?;
    }
    // 4. The segments, aside.
    move_to(dir, &wal, LEGACY_WAL_DIR)?;
    tracing::info!(
        index,
        segments = wal.len(),
        truncated_bytes = truncated,
        "a single-node log was brought forward to raft's; its segments are in {LEGACY_WAL_DIR}/"
    );
    Ok(Some(index))
}

/// Raft's storage in `raft_dir` made to start at `index` (see [`DiskStorage::start_at`]): the
/// one-member configuration, durable.
fn init_raft(raft_dir: &Path, index: u64) -> Result<(), String> {
    let conf_state = ConfState::from((vec![SINGLE_ID], vec![]));
    let failed = |e: std::io::Error| {
        format!(
            "bringing the single-node log forward: raft's storage in {}: {e}",
            raft_dir.display()
        )
    };
    DiskStorage::open(raft_dir, conf_state.clone())
        .and_then(|mut storage| storage.start_at(index, conf_state))
        .map_err(failed)
}

/// A cluster member's data directory must not hold the single-node log's segments: their
/// changes would be ignored. (A single node brings them forward: start it without
/// `--cluster` once.)
pub fn refuse_wal(dir: &Path) -> Result<(), String> {
    match wal_segments(dir)?.first() {
        None => Ok(()),
        Some(path) => Err(format!(
            "{} holds the log of a node started without --cluster ({}); start it once without              --cluster, which brings it forward into raft's log, or move the segments aside",
            dir.display(),
            path.display()
        )),
    }
}

fn move_aside(dir: &Path, segments: &[PathBuf]) -> Result<(), String> {
    move_to(dir, segments, LEGACY_DIR)
}

fn move_to(dir: &Path, segments: &[PathBuf], to: &str) -> Result<(), String> {
    let aside = dir.join(to);
    fs::create_dir_all(&aside).map_err(|e| format!("cannot create {}: {e}", aside.display()))?;
    for path in segments {
        let name = path.file_name().expect("a segment has a name");
        fs::rename(path, aside.join(name))
            .map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
    }
    for synced in [dir, aside.as_path()] {
        fs::File::open(synced)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", synced.display()))?;
    }
    Ok(())
}
