//! Raft's durable storage: its log entries, hard state, configuration and snapshot metadata on
//! local disk, behind raft-rs's [`raft::Storage`].
//!
//! On disk (the directory the node passes, `<data_dir>/raft`):
//!
//! - Segments `raft-<sequence number, 20 digits>.log`, replayed in the order of their numbers.
//!   Each is a sequence of records framed as in `crate::log::segments`
//!   (`[len u32 LE][crc32 u32 LE][payload]`), the payload being the format byte
//!   [`RAFT_RECORD_FORMAT`] followed by the postcard encoding of a record: an entry
//!   (`index, term, entry type, data, context`), a hard state, a conf state, a snapshot metadata
//!   (a local compaction) or an installed snapshot (one received from the leader).
//! - Replay: the last hard state, conf state and snapshot metadata win; an entry record at index
//!   `i` drops every entry `>= i` before taking its place (raft's overwrite of a conflicting
//!   suffix); a snapshot metadata at `n` drops every entry `<= n`; an installed snapshot drops
//!   every entry.
//! - Every segment starts with a head restating the snapshot metadata, the hard state and the conf
//!   state durable when it was created. A segment is created whole (written to a temporary file,
//!   fsynced, renamed), when the directory is new, when the current one passes ~64 MiB, at every
//!   compaction and at every installed snapshot.
//! - The segment being appended to keeps zeros written ahead of its last record (see
//!   `crate::log::segments`); a tail of zeros after the last whole record is that space. A torn
//!   tail at the end of the last segment is cut; damage anywhere else is refused, naming the file
//!   and the byte offset (the same scan as the single-node log).
//!
//! The invariant: replaying the segments present, in order, gives exactly the state last made
//! durable. It holds while deleting segments because only a prefix of them is deleted, only
//! when every entry record in it is at or below the newest snapshot metadata (itself in the head
//! of a later segment), and the head of the first segment kept restates the state. After replay
//! the entries left must run without a gap from the snapshot index + 1, or the directory is
//! refused.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use protobuf::ProtobufEnum;
use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};

use crate::log::segments::{self, Record, Segments};

/// The first byte of every raft record's payload.
pub const RAFT_RECORD_FORMAT: u8 = 3;
/// Largest payload of a raft record: entries carry at most ~1 MiB of data, plus their context
/// and the encoding's overhead.
const MAX_RAFT_RECORD: usize = 4 << 20;
/// Past this length the current segment is closed (after the sync that crossed it) and a new
/// one begins.
const SEGMENT_BYTES: u64 = 64 << 20;

/// Where `Storage::snapshot` gets the state machine's bytes: the index they cover, and the bytes.
pub type SnapshotSource = Box<dyn Fn() -> io::Result<(u64, Vec<u8>)> + Send + Sync>;

/// A `ConfState` as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Conf {
    voters: Vec<u64>,
    learners: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners_next: Vec<u64>,
    auto_leave: bool,
}

impl From<&ConfState> for Conf {
    fn from(cs: &ConfState) -> Conf {
        Conf {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
        }
    }
}

impl From<Conf> for ConfState {
    fn from(conf: Conf) -> ConfState {
        ConfState {
            voters: conf.voters,
            learners: conf.learners,
            voters_outgoing: conf.voters_outgoing,
            learners_next: conf.learners_next,
            auto_leave: conf.auto_leave,
            ..ConfState::default()
        }
    }
}

/// One record of raft's log on disk.
#[derive(Debug, Serialize, Deserialize)]
enum RaftRecord {
    /// A log entry; replaces every entry at or after its index.
    Entry {
        index: u64,
        term: u64,
        entry_type: i32,
        data: Vec<u8>,
        context: Vec<u8>,
    },
    HardState {
        term: u64,
        vote: u64,
        commit: u64,
    },
    ConfState(Conf),
    /// A local snapshot covers every index up to `index`: drops those entries.
    SnapshotMeta {
        index: u64,
        term: u64,
        conf_state: Conf,
    },
    /// A snapshot from the leader was installed: drops every entry.
    Installed {
        index: u64,
        term: u64,
        conf_state: Conf,
    },
}

impl Record for RaftRecord {
    const PREFIX: &'static str = "raft-";
    const FORMAT: u8 = RAFT_RECORD_FORMAT;
    const MAX_LEN: usize = MAX_RAFT_RECORD;
}

impl RaftRecord {
    fn entry(entry: &Entry) -> RaftRecord {
        RaftRecord::Entry {
            index: entry.index,
            term: entry.term,
            entry_type: entry.get_entry_type().value(),
            data: entry.data.to_vec(),
            context: entry.context.to_vec(),
        }
    }

    fn hard_state(hs: &HardState) -> RaftRecord {
        RaftRecord::HardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
        }
    }

    fn snapshot(meta: &SnapshotMetadata, installed: bool) -> RaftRecord {
        let (index, term, conf_state) = (meta.index, meta.term, meta.get_conf_state().into());
        if installed {
            RaftRecord::Installed {
                index,
                term,
                conf_state,
            }
        } else {
            RaftRecord::SnapshotMeta {
                index,
                term,
                conf_state,
            }
        }
    }
}

fn snapshot_metadata(index: u64, term: u64, conf_state: ConfState) -> SnapshotMetadata {
    let mut meta = SnapshotMetadata {
        index,
        term,
        ..SnapshotMetadata::default()
    };
    meta.set_conf_state(conf_state);
    meta
}

/// Encodes one record onto `out`; refuses (leaving `out` as it was) a record too large to be
/// read back.
fn encode(record: &RaftRecord, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    let len = segments::encode_record_into(record, out);
    if len > MAX_RAFT_RECORD {
        out.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a raft record of {len} bytes is larger than the limit of {MAX_RAFT_RECORD}"),
        ));
    }
    Ok(())
}

/// One segment file and the highest entry index recorded in it (0: none).
#[derive(Debug)]
struct SegmentFile {
    number: u64,
    path: PathBuf,
    max_entry: u64,
}

/// Raft's log, hard state, conf state and snapshot metadata, durable in a directory of
/// segments (see the module documentation). Entries after the compaction point stay in memory.
pub struct DiskStorage {
    dir: PathBuf,
    /// The last segment, appended to.
    current: Segments,
    /// Every segment, in order; the last one is `current`.
    files: Vec<SegmentFile>,
    /// The entries after `snapshot.index`, contiguous.
    entries: Vec<Entry>,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    /// Entry records not yet written.
    pending: Vec<u8>,
    /// The highest index among the entry records in `pending`.
    pending_max: u64,
    /// The hard state / conf state changed since the last sync.
    hard_state_dirty: bool,
    conf_state_dirty: bool,
    truncated_bytes: u64,
    /// Records written by [`DiskStorage::write`] and not synced here since (another thread may
    /// have): the next [`DiskStorage::sync`] syncs even with nothing buffered.
    unsynced: bool,
    /// Past this length the current segment is rolled after a sync.
    roll_at: u64,
    source: Option<SnapshotSource>,
}

// The raft loop moves its storage to its own thread.
const _: () = {
    const fn send<T: Send>() {}
    send::<DiskStorage>();
};

impl fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskStorage")
            .field("dir", &self.dir)
            .field("segments", &self.files.len())
            .field("first_index", &(self.snapshot.index + 1))
            .field("last_index", &self.last())
            .field("hard_state", &self.hard_state)
            .field("conf_state", &self.conf_state)
            .finish_non_exhaustive()
    }
}

/// The state a replay builds.
struct Replay {
    entries: Vec<Entry>,
    hard_state: HardState,
    conf_state: Option<ConfState>,
    snapshot: SnapshotMetadata,
}

impl Replay {
    fn apply(&mut self, record: RaftRecord, path: &Path) -> io::Result<()> {
        match record {
            RaftRecord::Entry {
                index,
                term,
                entry_type,
                data,
                context,
            } => {
                let entry_type = EntryType::from_i32(entry_type).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} holds entry {index} of unknown type {entry_type}: refusing to start",
                            path.display()
                        ),
                    )
                })?;
                let keep = self.entries.partition_point(|e| e.index < index);
                self.entries.truncate(keep);
                if index > self.snapshot.index {
                    let mut entry = Entry {
                        index,
                        term,
                        data: data.into(),
                        context: context.into(),
                        ..Entry::default()
                    };
                    entry.set_entry_type(entry_type);
                    self.entries.push(entry);
                }
            }
            RaftRecord::HardState { term, vote, commit } => {
                self.hard_state = HardState {
                    term,
                    vote,
                    commit,
                    ..HardState::default()
                };
            }
            RaftRecord::ConfState(conf) => self.conf_state = Some(conf.into()),
            RaftRecord::SnapshotMeta {
                index,
                term,
                conf_state,
            } => {
                self.snapshot = snapshot_metadata(index, term, conf_state.into());
                let covered = self.entries.partition_point(|e| e.index <= index);
                self.entries.drain(..covered);
            }
            RaftRecord::Installed {
                index,
                term,
                conf_state,
            } => {
                self.snapshot = snapshot_metadata(index, term, conf_state.into());
                self.entries.clear();
            }
        }
        Ok(())
    }
}

fn invalid_input(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

impl DiskStorage {
    /// Opens (or creates) raft's log in `dir`. A new/empty directory starts with no entries,
    /// a default HardState, and `initial` as its ConfState (the voters from the cluster file),
    /// made durable at once; once a directory has a ConfState, `initial` is ignored. A torn tail at the end of the last segment is cut (warn); real
    /// damage is refused with an io::Error naming the file and byte offset (same wording as the
    /// single-node log), and so is a log whose entries do not run without a gap from the
    /// snapshot index + 1.
    pub fn open(dir: &Path, initial: ConfState) -> io::Result<DiskStorage> {
        fs::create_dir_all(dir)?;
        let (found, truncated_bytes) = segments::recover::<RaftRecord>(dir)?;
        let mut replay = Replay {
            entries: Vec::new(),
            hard_state: HardState::default(),
            conf_state: None,
            snapshot: SnapshotMetadata::default(),
        };
        let mut files = Vec::with_capacity(found.len());
        let mut last_len = 0;
        for segment in found {
            last_len = segment.len;
            let mut max_entry = 0;
            for record in segment.records {
                if let RaftRecord::Entry { index, .. } = record {
                    max_entry = max_entry.max(index);
                }
                replay.apply(record, &segment.path)?;
            }
            files.push(SegmentFile {
                number: segment.number,
                path: segment.path,
                max_entry,
            });
        }
        // Replay keeps the entries strictly increasing: a gap is the only way to go wrong.
        for (expected, entry) in (replay.snapshot.index + 1..).zip(&replay.entries) {
            if entry.index != expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the raft log in {} is missing entries {expected} to {} (snapshot at {}): \
                         a segment was lost; refusing to start",
                        dir.display(),
                        entry.index - 1,
                        replay.snapshot.index
                    ),
                ));
            }
        }
        let conf_state = replay.conf_state.unwrap_or(initial);
        let current = match files.last() {
            Some(file) => Segments::append_to(dir, &file.path, last_len)?,
            None => {
                let head = head(&replay.snapshot, false, &replay.hard_state, &conf_state)?;
                let (current, file) = create_segment(dir, 1, &head)?;
                files.push(file);
                current
            }
        };
        Ok(DiskStorage {
            dir: dir.to_path_buf(),
            current,
            files,
            entries: replay.entries,
            hard_state: replay.hard_state,
            conf_state,
            snapshot: replay.snapshot,
            pending: Vec::new(),
            pending_max: 0,
            hard_state_dirty: false,
            conf_state_dirty: false,
            truncated_bytes,
            unsynced: false,
            roll_at: SEGMENT_BYTES,
            source: None,
        })
    }

    /// Bytes cut off a torn tail at open.
    pub fn truncated_bytes(&self) -> u64 {
        self.truncated_bytes
    }

    /// Appends entries (buffered until [`DiskStorage::sync`]). `entries[0].index` may be at or
    /// below the last index: the conflicting suffix is replaced (raft's rule), at once in memory,
    /// and on disk by the records themselves (replay drops every entry at or after an entry
    /// record's index). Refused, changing nothing: entries that are not contiguous, that would
    /// leave a gap after the last index, that would replace compacted entries, or an entry too
    /// large for a record.
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        if let Some(pair) = entries.windows(2).find(|w| w[1].index != w[0].index + 1) {
            return Err(invalid_input(format!(
                "raft entries to append are not contiguous: {} then {}",
                pair[0].index, pair[1].index
            )));
        }
        if first.index <= self.snapshot.index {
            return Err(invalid_input(format!(
                "raft entry {} is compacted (the log starts at {})",
                first.index,
                self.snapshot.index + 1
            )));
        }
        if first.index > self.last() + 1 {
            return Err(invalid_input(format!(
                "raft entry {} would leave a gap after the last index {}",
                first.index,
                self.last()
            )));
        }
        let start = self.pending.len();
        for entry in entries {
            if let Err(error) = encode(&RaftRecord::entry(entry), &mut self.pending) {
                self.pending.truncate(start);
                return Err(error);
            }
        }
        self.pending_max = self.pending_max.max(last.index);
        let keep = (first.index - self.snapshot.index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Sets the hard state (buffered until [`DiskStorage::sync`]).
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
        self.hard_state_dirty = true;
    }

    /// Sets the hard state's commit index (buffered until [`DiskStorage::sync`]).
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
        self.hard_state_dirty = true;
    }

    /// Sets the conf state (buffered until [`DiskStorage::sync`]).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
        self.conf_state_dirty = true;
    }

    /// Writes and fsyncs everything buffered since the last sync, as one write (no-op if
    /// nothing): the entry records in order, then the hard state and conf state if they changed.
    /// A failed write is cut off again (as in the single-node log) and stays buffered, so the
    /// next sync retries it. A segment past ~64 MiB is then closed and a new one started.
    pub fn sync(&mut self) -> io::Result<()> {
        if !self.flush(true)? {
            if self.unsynced {
                self.current.sync_data()?;
                self.unsynced = false;
            }
            return Ok(());
        }
        self.unsynced = false;
        self.roll_if_due();
        Ok(())
    }

    /// Writes everything buffered (entries, hard state, conf state) to the current segment
    /// without syncing it: durable only once a handle from [`DiskStorage::sync_handle`] has
    /// been synced after this returns. On failure nothing is written and the records stay
    /// buffered, as with [`DiskStorage::sync`]. Does not roll the segment (a roll syncs).
    pub fn write(&mut self) -> io::Result<()> {
        if self.flush(false)? {
            self.unsynced = true;
        }
        Ok(())
    }

    /// The current segment, to sync on another thread what [`DiskStorage::write`] wrote, and its
    /// length once that is synced.
    pub fn sync_handle(&self) -> io::Result<(std::fs::File, u64)> {
        Ok((self.current.sync_handle()?, self.current.len()))
    }

    /// The current segment's length (written, synced or not).
    pub fn written_len(&self) -> u64 {
        self.current.len()
    }

    /// Cuts the current segment back to `len` bytes (durably), dropping writes whose sync
    /// failed; the caller starts raft again from what is durable.
    pub fn cut_to(&mut self, len: u64) -> io::Result<()> {
        self.current.cut_to(len)?;
        self.unsynced = false;
        Ok(())
    }

    /// Starts a new segment if the current one is past its size (call with everything synced).
    pub fn roll_if_due(&mut self) {
        if self.current.len() > self.roll_at {
            let rolled = head(&self.snapshot, false, &self.hard_state, &self.conf_state)
                .and_then(|head| self.roll(&head));
            if let Err(error) = rolled {
                tracing::warn!(%error, dir = %self.dir.display(), "could not start a new raft log segment; the current one keeps growing");
            }
        }
    }

    /// Whether the current segment is past its size, to be rolled once everything is synced.
    pub fn roll_due(&self) -> bool {
        self.current.len() > self.roll_at
    }

    /// Writes (and with `sync`, fsyncs) what is buffered; whether there was anything.
    fn flush(&mut self, sync: bool) -> io::Result<bool> {
        if self.pending.is_empty() && !self.hard_state_dirty && !self.conf_state_dirty {
            return Ok(false);
        }
        let entries_end = self.pending.len();
        if self.hard_state_dirty {
            encode(&RaftRecord::hard_state(&self.hard_state), &mut self.pending)?;
        }
        if self.conf_state_dirty {
            let record = RaftRecord::ConfState((&self.conf_state).into());
            if let Err(error) = encode(&record, &mut self.pending) {
                self.pending.truncate(entries_end);
                return Err(error);
            }
        }
        let written = match sync {
            true => self.current.append(&self.pending),
            false => self.current.write(&self.pending),
        };
        if let Err(error) = written {
            self.pending.truncate(entries_end);
            return Err(error);
        }
        self.pending.clear();
        self.hard_state_dirty = false;
        self.conf_state_dirty = false;
        if let Some(file) = self.files.last_mut() {
            file.max_entry = file.max_entry.max(self.pending_max);
        }
        self.pending_max = 0;
        Ok(true)
    }

    /// A local snapshot of the state machine covers every index <= `index` (index <= commit and
    /// known to this log): records SnapshotMetadata {index, term(index), conf_state} durably
    /// (syncing whatever was buffered first) in the head of a new segment, drops entries <= index
    /// from memory, and deletes the segments no longer needed. Durable on return. An index at or
    /// below the current snapshot's is a no-op.
    pub fn compact(&mut self, index: u64, conf_state: ConfState) -> io::Result<()> {
        if index <= self.snapshot.index {
            return Ok(());
        }
        if index > self.hard_state.commit {
            return Err(invalid_input(format!(
                "cannot compact the raft log to {index}: only {} is committed",
                self.hard_state.commit
            )));
        }
        if index > self.last() {
            return Err(invalid_input(format!(
                "cannot compact the raft log to {index}: its last index is {}",
                self.last()
            )));
        }
        let term = self
            .entry(index)
            .map(|e| e.term)
            .expect("snapshot index < index <= last");
        self.sync()?;
        let meta = snapshot_metadata(index, term, conf_state);
        let head = head(&meta, false, &self.hard_state, &self.conf_state)?;
        self.roll(&head)?;
        self.snapshot = meta;
        let covered = (index - self.entries[0].index + 1) as usize;
        self.entries.drain(..covered);
        self.delete_segments_up_to(index)
    }

    /// A snapshot received from the leader was installed by the node: every entry is dropped
    /// (buffered ones too), first_index = meta.index + 1, hard state commit raised to at least
    /// meta.index, conf state = meta.conf_state, snapshot metadata = meta. Written in the head of
    /// a new segment, after which every older segment is deleted. Durable on return; on error
    /// nothing changed. A snapshot older than the current one is refused.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> io::Result<()> {
        if meta.index < self.snapshot.index {
            return Err(invalid_input(format!(
                "the snapshot at {} is older than the raft log's, at {}",
                meta.index, self.snapshot.index
            )));
        }
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = hard_state.commit.max(meta.index);
        let conf_state = meta.get_conf_state().clone();
        let head = head(meta, true, &hard_state, &conf_state)?;
        self.roll(&head)?;
        self.entries.clear();
        self.pending.clear();
        self.pending_max = 0;
        self.hard_state = hard_state;
        self.hard_state_dirty = false;
        self.conf_state = conf_state;
        self.conf_state_dirty = false;
        self.snapshot = meta.clone();
        self.delete_segments_up_to(u64::MAX)
    }

    /// Makes a log with no entries and no election yet start at `index`, as a one-member
    /// group's whose state machine already holds everything up to there (a data directory
    /// written before the node ran raft): snapshot metadata at `index` with term 1 and
    /// `conf_state`, hard state term >= 1 and commit >= `index`. Durable on return. Done again,
    /// it changes nothing; a log that holds entries or another snapshot is refused.
    pub fn start_at(&mut self, index: u64, conf_state: ConfState) -> io::Result<()> {
        if self.snapshot.index != index {
            if self.snapshot.index != 0 || !self.entries.is_empty() {
                return Err(invalid_input(format!(
                    "raft's log in {} cannot start at {index}: it holds a snapshot at {} and \
                     entries up to {}",
                    self.dir.display(),
                    self.snapshot.index,
                    self.last()
                )));
            }
            self.apply_snapshot(&snapshot_metadata(index, 1, conf_state))?;
        }
        if self.hard_state.term < 1 || self.hard_state.commit < index {
            let mut hard_state = self.hard_state.clone();
            hard_state.term = hard_state.term.max(1);
            hard_state.commit = hard_state.commit.max(index);
            self.set_hard_state(hard_state);
            self.sync()?;
        }
        Ok(())
    }

    /// Where `Storage::snapshot` gets the state machine's bytes: returns (index covered, data).
    /// `Storage::snapshot` builds the Snapshot with metadata {index, term(index), current conf
    /// state}; if index < request_index, or the term of index is unknown, or the source fails,
    /// it returns SnapshotTemporarilyUnavailable. Without a source: same error.
    pub fn set_snapshot_source(&mut self, source: SnapshotSource) {
        self.source = Some(source);
    }

    /// The hard state (including changes not yet synced).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The conf state (including changes not yet synced).
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The metadata of the latest snapshot: a local compaction or one installed from the leader.
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot
    }

    /// The directory of the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snapshot.index, |e| e.index)
    }

    /// The entry at `index`, if it is in memory.
    fn entry(&self, index: u64) -> Option<&Entry> {
        let offset = index.checked_sub(self.snapshot.index + 1)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Creates the next segment, whole, holding `head`, and appends to it from now on.
    fn roll(&mut self, head: &[u8]) -> io::Result<()> {
        let number = self.files.last().map_or(1, |f| f.number + 1);
        let (current, file) = create_segment(&self.dir, number, head)?;
        self.current.trim();
        self.current = current;
        self.files.push(file);
        Ok(())
    }

    /// Deletes the longest prefix of segments, the current one excepted, whose entry records
    /// all lie at or below `covered` (a snapshot in the current segment's head covers them).
    fn delete_segments_up_to(&mut self, covered: u64) -> io::Result<()> {
        let mut deleted = 0;
        let mut result = Ok(());
        for file in &self.files[..self.files.len() - 1] {
            if file.max_entry > covered {
                break;
            }
            if let Err(error) = fs::remove_file(&file.path) {
                result = Err(error);
                break;
            }
            deleted += 1;
        }
        self.files.drain(..deleted);
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        result
    }
}

/// A segment's head: the snapshot metadata (as an installed snapshot if `installed`), the hard
/// state and the conf state.
fn head(
    snapshot: &SnapshotMetadata,
    installed: bool,
    hard_state: &HardState,
    conf_state: &ConfState,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    encode(&RaftRecord::snapshot(snapshot, installed), &mut out)?;
    encode(&RaftRecord::hard_state(hard_state), &mut out)?;
    encode(&RaftRecord::ConfState(conf_state.into()), &mut out)?;
    Ok(out)
}

/// Creates segment `number` in `dir` holding `head`, atomically (a crash leaves it whole or
/// absent), and opens it for appending.
fn create_segment(dir: &Path, number: u64, head: &[u8]) -> io::Result<(Segments, SegmentFile)> {
    let path = dir.join(segments::segment_file_name::<RaftRecord>(number));
    sync_kit::fs::atomic_write(&path, head)?;
    let current = Segments::append_to(dir, &path, head.len() as u64)?;
    Ok((
        current,
        SegmentFile {
            number,
            path,
            max_entry: 0,
        },
    ))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let offset = self.snapshot.index + 1;
        let mut entries = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if idx < self.snapshot.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entry(idx)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let Some(source) = &self.source else {
            return Err(unavailable());
        };
        let (index, data) = source().map_err(|error| {
            tracing::warn!(%error, to, "the state machine could not give a snapshot");
            unavailable()
        })?;
        if index < request_index {
            return Err(unavailable());
        }
        let term = self.term(index).map_err(|_| unavailable())?;
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Snapshot::default()
        };
        snapshot.set_metadata(snapshot_metadata(index, term, self.conf_state.clone()));
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use protobuf::Message as _;
    use raft::Storage;

    use super::*;

    fn voters(ids: &[u64]) -> ConfState {
        ConfState::from((ids.to_vec(), Vec::<u64>::new()))
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("data {index}/{term}").into_bytes().into(),
            context: vec![index as u8].into(),
            ..Entry::default()
        }
    }

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range.map(|i| entry(i, term)).collect()
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        }
    }

    fn open(dir: &Path) -> DiskStorage {
        DiskStorage::open(dir, voters(&[1, 2, 3])).unwrap()
    }

    fn all(storage: &DiskStorage) -> Vec<Entry> {
        let (low, high) = (
            storage.first_index().unwrap(),
            storage.last_index().unwrap() + 1,
        );
        storage
            .entries(low, high, None, GetEntriesContext::empty(false))
            .unwrap()
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        segments::list::<RaftRecord>(dir)
            .unwrap()
            .into_iter()
            .map(|(_, path)| path)
            .collect()
    }

    /// Where each record of a segment starts; only zeros (space written ahead) follow them.
    fn record_starts(path: &Path) -> Vec<usize> {
        let bytes = fs::read(path).unwrap();
        let mut starts = Vec::new();
        let mut at = 0;
        while at + segments::HEADER <= bytes.len() && bytes[at..at + 4] != [0; 4] {
            starts.push(at);
            at += segments::HEADER
                + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        }
        assert!(bytes[at..].iter().all(|&b| b == 0), "only zeros follow");
        starts
    }

    fn store_error(result: raft::Result<impl fmt::Debug>) -> StorageError {
        match result {
            Err(raft::Error::Store(error)) => error,
            other => panic!("expected a storage error, got {other:?}"),
        }
    }

    #[test]
    fn a_new_directory_starts_empty_with_the_initial_conf_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft");
        let storage = DiskStorage::open(&path, voters(&[1, 2, 3])).unwrap();
        assert_eq!(storage.first_index().unwrap(), 1);
        assert_eq!(storage.last_index().unwrap(), 0);
        assert_eq!(storage.term(0).unwrap(), 0);
        let state = storage.initial_state().unwrap();
        assert_eq!(state.hard_state, HardState::default());
        assert_eq!(state.conf_state, voters(&[1, 2, 3]));
        assert_eq!(storage.dir(), path);
        drop(storage);
        // The first open made the conf state durable: a later cluster file does not change it.
        let storage = DiskStorage::open(&path, voters(&[7])).unwrap();
        assert_eq!(storage.conf_state(), &voters(&[1, 2, 3]));
        assert_eq!(files(&path).len(), 1);
    }

    #[test]
    fn entries_hard_state_and_conf_state_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=3, 1)).unwrap();
        storage.set_hard_state(hard_state(1, 1, 2));
        storage.sync().unwrap();
        storage.append(&entries(4..=5, 2)).unwrap();
        storage.set_commit(4);
        storage.set_conf_state(voters(&[1, 2, 3, 4]));
        // Not synced yet: memory has it, the disk not.
        assert_eq!(storage.hard_state().commit, 4);
        assert_eq!(open(dir.path()).last_index().unwrap(), 3);
        storage.sync().unwrap();
        storage.sync().unwrap(); // nothing buffered: a no-op
        drop(storage);

        let storage = open(dir.path());
        assert_eq!(storage.truncated_bytes(), 0);
        let mut expected = entries(1..=3, 1);
        expected.extend(entries(4..=5, 2));
        assert_eq!(all(&storage), expected);
        assert_eq!(storage.hard_state(), &hard_state(1, 1, 4));
        assert_eq!(storage.conf_state(), &voters(&[1, 2, 3, 4]));
        assert_eq!(storage.term(5).unwrap(), 2);
    }

    #[test]
    fn a_conflicting_suffix_is_replaced_and_stays_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=5, 1)).unwrap();
        storage.sync().unwrap();
        storage.append(&entries(3..=4, 2)).unwrap();
        let mut expected = entries(1..=2, 1);
        expected.extend(entries(3..=4, 2));
        assert_eq!(all(&storage), expected, "in memory at once");
        storage.sync().unwrap();
        drop(storage);
        let mut storage = open(dir.path());
        assert_eq!(all(&storage), expected, "entry 5 of term 1 stays dropped");
        assert_eq!(storage.last_index().unwrap(), 4);
        // And appending on top of the replaced suffix keeps working across a reopen.
        storage.append(&entries(5..=5, 2)).unwrap();
        storage.sync().unwrap();
        drop(storage);
        expected.push(entry(5, 2));
        assert_eq!(all(&open(dir.path())), expected);
    }

    #[test]
    fn appends_that_break_the_log_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=3, 1)).unwrap();
        let gap = storage.append(&entries(5..=6, 1)).unwrap_err();
        assert_eq!(gap.kind(), io::ErrorKind::InvalidInput);
        let holes = storage.append(&[entry(4, 1), entry(6, 1)]).unwrap_err();
        assert!(holes.to_string().contains("not contiguous"), "{holes}");
        let huge = Entry {
            index: 4,
            term: 1,
            data: vec![7; MAX_RAFT_RECORD + 1].into(),
            ..Entry::default()
        };
        assert!(storage.append(&[huge]).is_err());
        // A 1 MiB entry is fine.
        let big = Entry {
            index: 4,
            term: 1,
            data: vec![7; 1 << 20].into(),
            ..Entry::default()
        };
        storage.append(std::slice::from_ref(&big)).unwrap();
        storage.set_hard_state(hard_state(1, 1, 4));
        storage.sync().unwrap();
        storage.compact(2, voters(&[1, 2, 3])).unwrap();
        let compacted = storage.append(&entries(2..=3, 2)).unwrap_err();
        assert!(compacted.to_string().contains("compacted"), "{compacted}");
        drop(storage);
        let storage = open(dir.path());
        assert_eq!(all(&storage), vec![entry(3, 1), big]);
    }

    /// A failed sync keeps what it could not write (memory already has it): the next sync,
    /// once the disk works again, writes it.
    #[test]
    fn a_failed_sync_is_retried_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=2, 1)).unwrap();
        storage.sync().unwrap();
        let Ok(full) = Segments::append_to(Path::new("/dev"), Path::new("/dev/full"), 0) else {
            eprintln!("skipped: no /dev/full to fail writes");
            return;
        };
        let working = std::mem::replace(&mut storage.current, full);
        storage.append(&entries(3..=4, 1)).unwrap();
        storage.set_hard_state(hard_state(1, 1, 3));
        assert!(storage.sync().is_err());
        assert_eq!(storage.last_index().unwrap(), 4, "memory keeps the entries");
        storage.current = working;
        storage.set_commit(4);
        storage.sync().unwrap();
        drop(storage);
        let storage = open(dir.path());
        assert_eq!(all(&storage), entries(1..=4, 1));
        assert_eq!(storage.hard_state(), &hard_state(1, 1, 4));
    }

    #[test]
    fn a_torn_tail_is_cut_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        for index in 1..=3 {
            storage.append(&[entry(index, 1)]).unwrap();
            storage.sync().unwrap();
        }
        drop(storage);
        let path = files(dir.path()).pop().unwrap();
        let starts = record_starts(&path);
        let len = fs::metadata(&path).unwrap().len();
        let last = *starts.last().unwrap() as u64;
        // The crash left 5 bytes of the last record's header and payload.
        let cut_to = last + 5;
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut_to)
            .unwrap();
        let mut storage = open(dir.path());
        assert_eq!(storage.truncated_bytes(), 5);
        assert_eq!(fs::metadata(&path).unwrap().len(), last);
        assert_eq!(all(&storage), entries(1..=2, 1));
        assert!(len > cut_to);
        // The log goes on from the cut.
        storage.append(&[entry(3, 2)]).unwrap();
        storage.sync().unwrap();
        drop(storage);
        let storage = open(dir.path());
        assert_eq!(storage.truncated_bytes(), 0);
        assert_eq!(storage.term(3).unwrap(), 2);
    }

    #[test]
    fn damage_before_whole_records_is_refused_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        for index in 1..=4 {
            storage.append(&[entry(index, 1)]).unwrap();
            storage.sync().unwrap();
        }
        drop(storage);
        let path = files(dir.path()).pop().unwrap();
        let starts = record_starts(&path);
        // The head takes 3 records; damage the second entry's payload.
        let damaged = starts[4];
        let mut bytes = fs::read(&path).unwrap();
        bytes[damaged + segments::HEADER + 2] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let error = DiskStorage::open(dir.path(), voters(&[1])).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let text = error.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(&format!("at byte {damaged} ")), "{text}");
        assert!(
            text.contains(&format!("follows at byte {}", starts[5])),
            "{text}"
        );
        assert_eq!(fs::read(&path).unwrap(), bytes, "nothing is cut");
    }

    #[test]
    fn damage_in_a_segment_before_the_last_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.roll_at = 1;
        for index in 1..=2 {
            storage.append(&[entry(index, 1)]).unwrap();
            storage.sync().unwrap();
        }
        drop(storage);
        let first = files(dir.path()).remove(0);
        let starts = record_starts(&first);
        let mut bytes = fs::read(&first).unwrap();
        let last = *starts.last().unwrap();
        let end = last
            + segments::HEADER
            + u32::from_le_bytes(bytes[last..last + 4].try_into().unwrap()) as usize;
        bytes[end - 1] ^= 0xff; // the end of entry 1's record: a torn tail, were it the last
        fs::write(&first, &bytes).unwrap();
        let error = DiskStorage::open(dir.path(), voters(&[1]))
            .unwrap_err()
            .to_string();
        assert!(error.contains(&first.display().to_string()), "{error}");
        assert!(
            error.contains(&format!("at byte {} ", starts[3])),
            "{error}"
        );
        assert!(error.contains("not the last segment"), "{error}");
        assert_eq!(fs::read(&first).unwrap(), bytes);
    }

    #[test]
    fn compaction_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=4, 1)).unwrap();
        storage.append(&entries(5..=10, 2)).unwrap();
        storage.set_hard_state(hard_state(2, 1, 7));
        storage.sync().unwrap();
        let refused = storage.compact(8, voters(&[1, 2, 3])).unwrap_err();
        assert!(
            refused.to_string().contains("only 7 is committed"),
            "{refused}"
        );
        storage.compact(6, voters(&[1, 2])).unwrap();
        let check = |storage: &DiskStorage| {
            assert_eq!(storage.first_index().unwrap(), 7);
            assert_eq!(storage.last_index().unwrap(), 10);
            assert_eq!(storage.term(6).unwrap(), 2);
            assert_eq!(store_error(storage.term(5)), StorageError::Compacted);
            let meta = storage.snapshot_metadata();
            assert_eq!((meta.index, meta.term), (6, 2));
            assert_eq!(meta.get_conf_state(), &voters(&[1, 2]));
            assert_eq!(storage.conf_state(), &voters(&[1, 2, 3]));
            assert_eq!(storage.hard_state(), &hard_state(2, 1, 7));
            assert_eq!(all(storage), entries(7..=10, 2));
        };
        check(&storage);
        // The segment holding 7..=10 is still needed.
        assert_eq!(files(dir.path()).len(), 2);
        storage.compact(6, voters(&[1])).unwrap(); // already covered: nothing happens
        drop(storage);
        let mut storage = open(dir.path());
        check(&storage);

        // Once everything it holds is covered, the old segment goes.
        storage.set_commit(10);
        storage.compact(10, voters(&[1, 2])).unwrap();
        assert_eq!(files(dir.path()).len(), 1);
        drop(storage);
        let storage = open(dir.path());
        assert_eq!(storage.first_index().unwrap(), 11);
        assert_eq!(storage.last_index().unwrap(), 10);
        assert_eq!(storage.term(10).unwrap(), 2);
        assert_eq!(storage.hard_state().commit, 10);
        assert_eq!(storage.conf_state(), &voters(&[1, 2, 3]));
    }

    #[test]
    fn rolled_segments_restate_the_state_and_compaction_deletes_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.roll_at = 1; // a new segment after every sync
        storage.set_conf_state(voters(&[1, 2]));
        storage.set_hard_state(hard_state(3, 2, 0));
        for index in 1..=9 {
            storage.append(&[entry(index, 3)]).unwrap();
            storage.sync().unwrap();
        }
        assert_eq!(files(dir.path()).len(), 10);
        storage.set_commit(5);
        storage.sync().unwrap();
        storage.compact(5, voters(&[1, 2])).unwrap();
        // Segment k held entry k (then a head-only 10, 11 after the commit, 12 from the
        // compaction): 1..=5 are covered and go, 6..=12 stay.
        let left = files(dir.path());
        assert_eq!(left.len(), 7, "{left:?}");
        assert!(left[0].ends_with(segments::segment_file_name::<RaftRecord>(6)));
        drop(storage);
        let storage = open(dir.path());
        assert_eq!(all(&storage), entries(6..=9, 3));
        assert_eq!(storage.first_index().unwrap(), 6);
        assert_eq!(storage.hard_state(), &hard_state(3, 2, 5));
        assert_eq!(storage.conf_state(), &voters(&[1, 2]));
    }

    #[test]
    fn a_lost_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.roll_at = 1;
        for index in 1..=3 {
            storage.append(&[entry(index, 1)]).unwrap();
            storage.sync().unwrap();
        }
        drop(storage);
        fs::remove_file(&files(dir.path())[1]).unwrap(); // the one holding entry 2
        let error = DiskStorage::open(dir.path(), voters(&[1])).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            error.to_string().contains("missing entries 2 to 2"),
            "{error}"
        );
    }

    #[test]
    fn an_installed_snapshot_drops_every_entry_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.roll_at = 1;
        storage.append(&entries(1..=8, 1)).unwrap();
        storage.set_hard_state(hard_state(2, 3, 3));
        storage.sync().unwrap();
        storage.append(&entries(9..=9, 1)).unwrap(); // buffered: dropped too
        let meta = snapshot_metadata(5, 2, voters(&[1, 2, 3, 4]));
        storage.apply_snapshot(&meta).unwrap();
        let check = |storage: &DiskStorage| {
            assert_eq!(storage.first_index().unwrap(), 6);
            assert_eq!(storage.last_index().unwrap(), 5);
            assert_eq!(storage.term(5).unwrap(), 2);
            assert_eq!(storage.snapshot_metadata(), &meta);
            assert_eq!(storage.hard_state(), &hard_state(2, 3, 5));
            assert_eq!(storage.conf_state(), &voters(&[1, 2, 3, 4]));
        };
        check(&storage);
        assert_eq!(files(dir.path()).len(), 1, "older segments are deleted");
        drop(storage);
        let mut storage = open(dir.path());
        check(&storage);
        assert!(all(&storage).is_empty(), "entries 6..=8 do not come back");
        storage.append(&entries(6..=6, 2)).unwrap();
        storage.sync().unwrap();
        let older = snapshot_metadata(4, 2, voters(&[1]));
        assert!(storage.apply_snapshot(&older).is_err());
        drop(storage);
        assert_eq!(all(&open(dir.path())), entries(6..=6, 2));
    }

    /// A crash after the installed snapshot's segment was created but before the older ones were
    /// deleted: their entries past the snapshot index must not come back.
    #[test]
    fn an_installed_snapshot_wins_over_segments_left_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=8, 1)).unwrap();
        storage.sync().unwrap();
        let old = files(dir.path()).pop().unwrap();
        let kept = fs::read(&old).unwrap();
        storage
            .apply_snapshot(&snapshot_metadata(5, 2, voters(&[1])))
            .unwrap();
        drop(storage);
        fs::write(&old, kept).unwrap();
        assert_eq!(files(dir.path()).len(), 2);
        let storage = open(dir.path());
        assert_eq!(storage.first_index().unwrap(), 6);
        assert_eq!(storage.last_index().unwrap(), 5);
    }

    #[test]
    fn storage_semantics_match_raft() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=10, 1)).unwrap();
        storage.set_commit(10);
        storage.sync().unwrap();
        storage.compact(3, voters(&[1, 2, 3])).unwrap();
        let get = |low, high, max: Option<u64>| {
            storage.entries(low, high, max, GetEntriesContext::empty(false))
        };
        assert_eq!(store_error(get(3, 5, None)), StorageError::Compacted);
        assert_eq!(store_error(get(2, 5, None)), StorageError::Compacted);
        assert_eq!(get(4, 11, None).unwrap(), entries(4..=10, 1));
        assert_eq!(get(4, 4, None).unwrap(), vec![]);
        assert_eq!(store_error(get(4, 12, None)), StorageError::Unavailable);
        // max_size: at least one entry, then as many as fit.
        let size = |i| u64::from(entry(i, 1).compute_size());
        assert_eq!(get(4, 11, Some(0)).unwrap(), entries(4..=4, 1));
        assert_eq!(
            get(4, 11, Some(size(4) + size(5))).unwrap(),
            entries(4..=5, 1)
        );
        assert_eq!(
            get(4, 11, Some(size(4) + size(5) + size(6) - 1)).unwrap(),
            entries(4..=5, 1)
        );
        assert_eq!(get(4, 11, Some(raft::NO_LIMIT)).unwrap().len(), 7);
        // term: the snapshot index is known, below it compacted, after the last unavailable.
        assert_eq!(storage.term(3).unwrap(), 1);
        assert_eq!(store_error(storage.term(2)), StorageError::Compacted);
        assert_eq!(store_error(storage.term(11)), StorageError::Unavailable);
        assert_eq!(storage.first_index().unwrap(), 4);
        assert_eq!(storage.last_index().unwrap(), 10);
    }

    #[test]
    fn snapshots_come_from_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=4, 1)).unwrap();
        storage.append(&entries(5..=8, 2)).unwrap();
        storage.set_commit(8);
        storage.set_conf_state(voters(&[1, 2]));
        storage.sync().unwrap();
        let unavailable = |storage: &DiskStorage, request| {
            assert_eq!(
                store_error(storage.snapshot(request, 2)),
                StorageError::SnapshotTemporarilyUnavailable
            );
        };
        unavailable(&storage, 0); // no source

        storage.set_snapshot_source(Box::new(|| Ok((6, b"state at 6".to_vec()))));
        let snapshot = storage.snapshot(5, 2).unwrap();
        assert_eq!(&snapshot.data[..], b"state at 6");
        let meta = snapshot.get_metadata();
        assert_eq!((meta.index, meta.term), (6, 2));
        assert_eq!(meta.get_conf_state(), &voters(&[1, 2]));
        assert_eq!(storage.snapshot(6, 2).unwrap().get_metadata().index, 6);
        unavailable(&storage, 7); // stale: older than requested

        // The source's index below the compaction point: its term is unknown.
        storage.compact(7, voters(&[1, 2])).unwrap();
        unavailable(&storage, 0);
        storage.set_snapshot_source(Box::new(|| Ok((7, b"state at 7".to_vec()))));
        assert_eq!(storage.snapshot(7, 2).unwrap().get_metadata().term, 2);
        // Past the last index: unknown too.
        storage.set_snapshot_source(Box::new(|| Ok((9, Vec::new()))));
        unavailable(&storage, 0);

        storage.set_snapshot_source(Box::new(|| Err(io::Error::other("disk on fire"))));
        unavailable(&storage, 0);
    }

    /// A real single-voter raft node over DiskStorage: it elects itself, commits its proposals,
    /// and a reopened storage has them.
    #[test]
    fn a_raw_node_runs_on_disk_storage() {
        use raft::{Config, RawNode};

        fn handle_ready(node: &mut RawNode<DiskStorage>, applied: &mut Vec<Entry>) {
            if !node.has_ready() {
                return;
            }
            let mut ready = node.ready();
            assert!(ready.messages().is_empty(), "a single voter sends nothing");
            applied.extend(ready.take_committed_entries());
            let store = node.mut_store();
            store.append(ready.entries()).unwrap();
            if let Some(hs) = ready.hs() {
                store.set_hard_state(hs.clone());
            }
            store.sync().unwrap();
            let mut light = node.advance(ready);
            if let Some(commit) = light.commit_index() {
                node.mut_store().set_commit(commit);
                node.mut_store().sync().unwrap();
            }
            applied.extend(light.take_committed_entries());
            node.advance_apply();
        }

        let dir = tempfile::tempdir().unwrap();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let config = Config {
            id: 1,
            ..Config::default()
        };
        config.validate().unwrap();
        let storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
        let mut node = RawNode::new(&config, storage, &logger).unwrap();
        let mut applied = Vec::new();
        node.campaign().unwrap();
        handle_ready(&mut node, &mut applied);
        assert_eq!(node.raft.state, raft::StateRole::Leader);
        for i in 0..3 {
            node.propose(vec![], format!("command {i}").into_bytes())
                .unwrap();
            handle_ready(&mut node, &mut applied);
        }
        handle_ready(&mut node, &mut applied);
        let data: Vec<&[u8]> = applied.iter().map(|e| &e.data[..]).collect();
        assert_eq!(
            data,
            vec![&b""[..], b"command 0", b"command 1", b"command 2"],
            "the leader's empty entry, then the proposals"
        );
        let term = node.raft.term;
        drop(node);

        let storage = DiskStorage::open(dir.path(), voters(&[1])).unwrap();
        assert_eq!(storage.last_index().unwrap(), 4);
        assert_eq!(all(&storage), applied);
        assert_eq!(storage.hard_state().commit, 4);
        assert_eq!(storage.hard_state().term, term);
        assert_eq!(storage.hard_state().vote, 1);
        // And raft starts again from it.
        let mut node = RawNode::new(&config, storage, &logger).unwrap();
        assert_eq!(node.raft.raft_log.committed, 4);
        node.campaign().unwrap();
        let mut again = Vec::new();
        handle_ready(&mut node, &mut again);
        assert_eq!(node.raft.state, raft::StateRole::Leader);
        assert!(node.raft.term > term);
    }
}
