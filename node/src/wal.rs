//! The write-ahead log: every state change is appended and made durable before it is
//! acknowledged.
//!
//! - On disk: segments `wal-<first seq>.log`, each a sequence of records
//!   `[length: u32 LE][crc32 of payload: u32 LE][payload: JSON of an Entry]`.
//! - Writers hand records to one log thread through a channel, in sequence order (the node's
//!   `wal-sequence` lock makes channel order = sequence order = the order state changed). The log
//!   thread takes every record already queued, writes them all, calls `fsync` once, and only then
//!   answers each writer: group commit, so N concurrent writers cost one `fsync`, not N.
//! - Snapshots: the node writes its whole state with `atomic_write`, then the log starts a new
//!   segment and deletes the segments the snapshot covers.
//! - Recovery: read the snapshot, then every segment in order. Damage (a record cut short,
//!   failing its checksum or not decoding) at the end of the last segment, with no whole record
//!   anywhere after it, is a torn write from a crash: the file is cut back to the last whole
//!   record. Damage followed by a whole record, or in any segment but the last, is real
//!   corruption: cutting it would drop records that were acknowledged, so the node refuses to
//!   start and names the file and the offset.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::thread;

use crossbeam_channel::{Receiver, Sender, unbounded};
use serde::{Deserialize, Serialize};

/// A stored message, as the log and the snapshot keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Unique id.
    pub id: u64,
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Text.
    pub text: String,
}

/// One state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// An account was created.
    CreateAccount {
        /// Name.
        username: String,
        /// Argon2id PHC string (never the password).
        password_hash: String,
        /// Milliseconds since the Unix epoch.
        created: u64,
    },
    /// An account and its mailbox were deleted.
    DeleteAccount {
        /// Name.
        username: String,
    },
    /// A message was accepted.
    Message(StoredMessage),
    /// Messages were delivered (read, or pushed live).
    Delivered {
        /// Whose mailbox.
        user: String,
        /// Which messages.
        ids: Vec<u64>,
    },
    /// Messages were deleted by their owner.
    DeleteMessages {
        /// Whose mailbox.
        user: String,
        /// Which messages.
        ids: Vec<u64>,
    },
}

/// A record with its sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// The change.
    pub record: Record,
}

/// Tells a writer its record is durable (or why it is not). A oneshot channel: its receiver
/// parks at once, where a crossbeam channel would first spin and yield, which on a node with
/// dozens of connection threads per core cost a third of its throughput (docs/performance.md).
pub type Durable = oneshot::Receiver<Result<(), String>>;

enum Job {
    Append {
        entry: Entry,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// Start a new segment after `after_seq` (a snapshot covers everything up to it).
    Rotate { after_seq: u64 },
    /// Delete the segments whose records all have `seq <= up_to`.
    Prune { up_to: u64 },
    /// Answer once everything queued before it is durable.
    Sync {
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// The handle writers use. When the last handle is dropped, the log thread writes and syncs what
/// is still queued (such as the "delivered" marks that nobody waits for), and the drop waits for
/// it: a service dropped in an orderly way leaves a complete log.
#[derive(Clone, Debug)]
pub struct Wal {
    // Declared (so dropped) before `_writer`: the queue closes, then the drain is awaited.
    jobs: Sender<Job>,
    _writer: std::sync::Arc<WriterThread>,
}

/// The log thread, joined when the last [`Wal`] handle goes.
#[derive(Debug)]
struct WriterThread(Option<thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take()
            && thread.join().is_err()
        {
            tracing::error!("the log thread panicked");
        }
    }
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Records in log order (all segments).
    pub entries: Vec<Entry>,
    /// Bytes cut off a torn tail, if any.
    pub truncated_bytes: u64,
}

const HEADER: usize = 8;
/// A record larger than this cannot have been written by this node: corruption.
const MAX_RECORD: usize = 1 << 20;

fn segment_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.log")
}

fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for item in fs::read_dir(dir)? {
        let path = item?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(seq) = name
            .strip_prefix("wal-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|digits| digits.parse::<u64>().ok())
        {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Encodes one entry as it is written.
pub fn encode(entry: &Entry) -> Vec<u8> {
    let payload = serde_json::to_vec(entry).expect("entries serialize");
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// What reading one segment found.
struct Segment {
    /// The whole records from the start of the file, up to the first damage.
    entries: Vec<Entry>,
    /// Where those records end: the offset of the damage, or the file's length.
    valid: u64,
    /// The file's length.
    total: u64,
    /// The first offset after the damage where a whole record starts, if any: proof that the
    /// damage is not a torn tail.
    resumes_at: Option<u64>,
}

/// The entry whose record starts at `at` and the offset just past it; `None` unless a whole
/// record with a matching checksum and a decodable payload starts there.
fn record_at(bytes: &[u8], at: usize) -> Option<(Entry, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let end = at + HEADER + len;
    let payload = bytes.get(at + HEADER..end)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let entry = serde_json::from_slice::<Entry>(payload).ok()?;
    Some((entry, end))
}

fn read_segment(path: &Path) -> io::Result<Segment> {
    let mut bytes = Vec::new();
    BufReader::new(File::open(path)?).read_to_end(&mut bytes)?;
    let mut entries = Vec::new();
    let mut at = 0usize;
    while let Some((entry, end)) = record_at(&bytes, at) {
        entries.push(entry);
        at = end;
    }
    // A damaged header says nothing reliable about where the next record starts: try every
    // offset. Only damaged files pay for this, and the checksum rejects almost every offset
    // before any decoding.
    let resumes_at = (at + 1..bytes.len())
        .find(|&offset| record_at(&bytes, offset).is_some())
        .map(|offset| offset as u64);
    Ok(Segment {
        entries,
        valid: at as u64,
        total: bytes.len() as u64,
        resumes_at,
    })
}

impl Wal {
    /// Recovers the log in `dir` (cutting a torn tail) and starts the log thread, appending to
    /// the last segment (or a new one starting after `snapshot_seq`).
    pub fn open(dir: &Path, snapshot_seq: u64) -> io::Result<(Wal, Recovered)> {
        let found = segments(dir)?;
        let mut recovered = Recovered::default();
        for (i, (_, path)) in found.iter().enumerate() {
            let segment = read_segment(path)?;
            if segment.valid < segment.total {
                let damaged = |why: String| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} is damaged at byte {} (of {}), {why}: refusing to start rather \
                             than lose the records after it. Restore the file from a backup, or \
                             accept losing every record from that byte on with `truncate -s {} {}`",
                            path.display(),
                            segment.valid,
                            segment.total,
                            segment.valid,
                            path.display()
                        ),
                    )
                };
                if i + 1 < found.len() {
                    return Err(damaged("and it is not the last segment".into()));
                }
                if let Some(resumes_at) = segment.resumes_at {
                    return Err(damaged(format!(
                        "and a whole record follows at byte {resumes_at}, so this is not a write \
                         torn by a crash"
                    )));
                }
                tracing::warn!(
                    segment = %path.display(),
                    at = segment.valid,
                    cut = segment.total - segment.valid,
                    "cutting a torn record off the end of the log (crash during a write)"
                );
                OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .set_len(segment.valid)?;
                recovered.truncated_bytes = segment.total - segment.valid;
            }
            recovered.entries.extend(segment.entries);
        }
        let current = match found.last() {
            Some((_, path)) => path.clone(),
            None => dir.join(segment_name(snapshot_seq + 1)),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current)?;
        sync_dir(dir)?;
        let (jobs, queue) = unbounded();
        let writer = LogWriter {
            dir: dir.to_path_buf(),
            len: file.metadata()?.len(),
            file,
            broken: None,
        };
        let writer = thread::Builder::new()
            .name("wal".into())
            .spawn(move || writer.run(queue))?;
        let writer = std::sync::Arc::new(WriterThread(Some(writer)));
        Ok((
            Wal {
                jobs,
                _writer: writer,
            },
            recovered,
        ))
    }

    /// Queues `entry`; the returned receiver answers once it is durable. Call in sequence order.
    pub fn append(&self, entry: Entry) -> Durable {
        let (done, durable) = oneshot::channel();
        let job = Job::Append {
            entry,
            done: Some(done),
        };
        if let Err(crossbeam_channel::SendError(Job::Append {
            done: Some(done), ..
        })) = self.jobs.send(job)
        {
            let _ = done.send(Err("the log thread has stopped".into()));
        }
        durable
    }

    /// Waits until every record queued so far, including those nobody waits for, is durable.
    pub fn sync(&self) -> Result<(), String> {
        let (done, durable) = oneshot::channel();
        self.jobs
            .send(Job::Sync { done })
            .map_err(|_| "the log thread has stopped".to_string())?;
        durable
            .recv()
            .map_err(|_| "the log thread has stopped".to_string())?
    }

    /// Queues `entry` without waiting for it (it is made durable with the next batch).
    pub fn append_quietly(&self, entry: Entry) {
        let _ = self.jobs.send(Job::Append { entry, done: None });
    }

    /// Starts a new segment after `after_seq`. Call in sequence order (under the sequence lock).
    pub fn rotate(&self, after_seq: u64) {
        let _ = self.jobs.send(Job::Rotate { after_seq });
    }

    /// Deletes the segments a durable snapshot at `up_to` covers.
    pub fn prune(&self, up_to: u64) {
        let _ = self.jobs.send(Job::Prune { up_to });
    }
}

struct LogWriter {
    dir: PathBuf,
    file: File,
    /// The current segment's length: where its last whole, durable batch ends.
    len: u64,
    /// Set when a failed batch could not be cut off again: from then on nothing is appended
    /// (records after the torn batch could not be recovered), and every batch fails with this.
    broken: Option<String>,
}

impl LogWriter {
    fn run(mut self, queue: Receiver<Job>) {
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            batch.extend(queue.try_iter().take(4095));
            let mut buffer = Vec::new();
            let mut waiters = Vec::new();
            let mut failure: Option<String> = None;
            for job in batch {
                match job {
                    Job::Append { entry, done } => {
                        buffer.extend_from_slice(&encode(&entry));
                        waiters.extend(done);
                    }
                    Job::Rotate { after_seq } => {
                        if let Err(e) = self
                            .flush(&mut buffer)
                            .and_then(|()| self.rotate(after_seq))
                        {
                            failure.get_or_insert(e.to_string());
                        }
                    }
                    Job::Prune { up_to } => {
                        if let Err(e) = self.prune(up_to) {
                            tracing::warn!(error = %e, "could not delete old log segments");
                        }
                    }
                    Job::Sync { done } => waiters.push(done),
                }
            }
            if let Err(e) = self.flush(&mut buffer) {
                failure.get_or_insert(e.to_string());
            }
            if let Some(error) = &failure {
                tracing::error!(%error, "write-ahead log failure: the requests in this batch are not durable");
            }
            let outcome = match failure {
                None => Ok(()),
                Some(error) => Err(format!("storage failure: {error}")),
            };
            for done in waiters {
                let _ = done.send(outcome.clone());
            }
        }
    }

    /// Writes and syncs one batch. A batch that fails (disk full, I/O error) is cut off again,
    /// so the segment still ends with a whole record and the batches after it, once space is
    /// back, remain recoverable; a torn batch left in the middle would make recovery refuse the
    /// log.
    fn flush(&mut self, buffer: &mut Vec<u8>) -> io::Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(buffer);
        if let Some(why) = &self.broken {
            return Err(io::Error::other(why.clone()));
        }
        let result = self
            .file
            .write_all(&batch)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.len += batch.len() as u64;
                Ok(())
            }
            Err(error) => {
                let undo = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data());
                if let Err(undo) = undo {
                    let why = format!(
                        "the log stopped accepting records: a failed write ({error}) could not                          be cut off again ({undo}); restart the node, which cuts it as a torn tail"
                    );
                    tracing::error!("{why}");
                    self.broken = Some(why);
                }
                Err(error)
            }
        }
    }

    fn rotate(&mut self, after_seq: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(after_seq + 1));
        self.file = OpenOptions::new().create(true).append(true).open(path)?;
        self.len = self.file.metadata()?.len();
        sync_dir(&self.dir)
    }

    fn prune(&self, up_to: u64) -> io::Result<()> {
        let found = segments(&self.dir)?;
        for pair in found.windows(2) {
            let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
            if *next_first <= up_to + 1 {
                fs::remove_file(path)?;
            }
        }
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64) -> Record {
        Record::Message(StoredMessage {
            id,
            from: "a".into(),
            to: "b".into(),
            timestamp: id,
            text: format!("m{id}"),
        })
    }

    #[test]
    fn appends_are_durable_and_recovered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, recovered) = Wal::open(dir.path(), 0).unwrap();
            assert!(recovered.entries.is_empty());
            let waits: Vec<_> = (1..=50)
                .map(|seq| {
                    wal.append(Entry {
                        seq,
                        record: message(seq),
                    })
                })
                .collect();
            for w in waits {
                w.recv().unwrap().unwrap();
            }
        }
        let (_wal, recovered) = Wal::open(dir.path(), 0).unwrap();
        let seqs: Vec<u64> = recovered.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(dir.path(), 0).unwrap();
            wal.append(Entry {
                seq: 1,
                record: message(1),
            })
            .recv()
            .unwrap()
            .unwrap();
            wal.append(Entry {
                seq: 2,
                record: message(2),
            })
            .recv()
            .unwrap()
            .unwrap();
        }
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let whole = fs::metadata(&path).unwrap().len();
        let mut torn = encode(&Entry {
            seq: 3,
            record: message(3),
        });
        torn.truncate(torn.len() / 2);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn)
            .unwrap();
        let (_wal, recovered) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(recovered.entries.len(), 2);
        assert_eq!(recovered.truncated_bytes, torn.len() as u64);
        assert_eq!(fs::metadata(&path).unwrap().len(), whole);
    }

    /// A log of `records` durable records in one segment; its path and where each record starts.
    fn log_of(dir: &Path, records: u64) -> (PathBuf, Vec<usize>) {
        let (wal, _) = Wal::open(dir, 0).unwrap();
        for seq in 1..=records {
            wal.append(Entry {
                seq,
                record: message(seq),
            })
            .recv()
            .unwrap()
            .unwrap();
        }
        let (_, path) = segments(dir).unwrap().pop().unwrap();
        let bytes = fs::read(&path).unwrap();
        let mut starts = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            starts.push(at);
            at += HEADER + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        }
        assert_eq!(starts.len() as u64, records);
        (path, starts)
    }

    fn flip(path: &Path, at: usize) -> Vec<u8> {
        let mut bytes = fs::read(path).unwrap();
        bytes[at] ^= 0xff;
        fs::write(path, &bytes).unwrap();
        bytes
    }

    #[test]
    fn a_damaged_last_record_is_a_torn_tail_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (path, starts) = log_of(dir.path(), 3);
        let len = fs::metadata(&path).unwrap().len() as usize;
        flip(&path, len - 2); // inside the last record's payload: its checksum fails
        let (_wal, recovered) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(recovered.entries.len(), 2);
        assert_eq!(recovered.truncated_bytes, (len - starts[2]) as u64);
        assert_eq!(fs::metadata(&path).unwrap().len(), starts[2] as u64);
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        // What a file system can leave when the size reached the disk before the data did.
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = log_of(dir.path(), 2);
        let whole = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[0; 4096])
            .unwrap();
        let (_wal, recovered) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(recovered.entries.len(), 2);
        assert_eq!(recovered.truncated_bytes, 4096);
        assert_eq!(fs::metadata(&path).unwrap().len(), whole);
    }

    /// Damage with a whole record after it must stop recovery, name the file and the offset,
    /// and leave the file as it was.
    #[track_caller]
    fn assert_refused(dir: &Path, path: &Path, damaged_at: usize, before: &[u8]) {
        let error = Wal::open(dir, 0).expect_err("damage before a whole record is refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let text = error.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(&format!("at byte {damaged_at} ")), "{text}");
        assert_eq!(fs::read(path).unwrap(), before, "the file is not cut");
    }

    #[test]
    fn damage_followed_by_whole_records_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let (path, starts) = log_of(dir.path(), 4);
        let before = flip(&path, starts[1] + HEADER + 3); // the second record's payload
        assert_refused(dir.path(), &path, starts[1], &before);
        let text = Wal::open(dir.path(), 0).unwrap_err().to_string();
        assert!(
            text.contains(&format!("follows at byte {}", starts[2])),
            "{text}"
        );
    }

    #[test]
    fn a_damaged_length_before_whole_records_refuses_to_start() {
        // A length pointing past the end of the file looks like a record cut short: only the
        // records after it tell it apart from a torn tail.
        let dir = tempfile::tempdir().unwrap();
        let (path, starts) = log_of(dir.path(), 3);
        let before = flip(&path, starts[1] + 2);
        assert_refused(dir.path(), &path, starts[1], &before);
    }

    #[test]
    fn damage_in_a_segment_before_the_last_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let (path, starts) = log_of(dir.path(), 2);
        {
            let (wal, _) = Wal::open(dir.path(), 0).unwrap();
            wal.rotate(2);
            wal.append(Entry {
                seq: 3,
                record: message(3),
            })
            .recv()
            .unwrap()
            .unwrap();
        }
        assert_eq!(segments(dir.path()).unwrap().len(), 2);
        // Damage at the very end of the older segment: a torn tail anywhere but the last
        // segment still means lost records.
        let len = fs::metadata(&path).unwrap().len() as usize;
        let before = flip(&path, len - 1);
        let error = Wal::open(dir.path(), 0).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(
            error.contains(&format!("at byte {} ", starts[1])),
            "{error}"
        );
        assert!(error.contains("not the last segment"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn rotation_and_pruning_keep_only_what_the_snapshot_does_not_cover() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), 0).unwrap();
        wal.append(Entry {
            seq: 1,
            record: message(1),
        })
        .recv()
        .unwrap()
        .unwrap();
        wal.rotate(1);
        wal.append(Entry {
            seq: 2,
            record: message(2),
        })
        .recv()
        .unwrap()
        .unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 2);
        wal.prune(1);
        wal.append(Entry {
            seq: 3,
            record: message(3),
        })
        .recv()
        .unwrap()
        .unwrap();
        let left = segments(dir.path()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, 2);
    }

    /// A write that fails and cannot be undone (here `/dev/full`: every write fails with
    /// ENOSPC, and it cannot be truncated) stops the log: nothing more is appended after a torn
    /// batch, and every later batch fails with the reason.
    #[test]
    fn a_failed_batch_that_cannot_be_cut_off_stops_the_log() {
        let Ok(file) = OpenOptions::new().append(true).open("/dev/full") else {
            eprintln!("skipped: no /dev/full on this system");
            return;
        };
        let mut writer = LogWriter {
            dir: PathBuf::from("/dev"),
            file,
            len: 0,
            broken: None,
        };
        let mut batch = encode(&Entry {
            seq: 1,
            record: message(1),
        });
        let first = writer.flush(&mut batch).unwrap_err();
        assert!(batch.is_empty(), "the batch is consumed either way");
        assert!(
            first.to_string().to_lowercase().contains("space"),
            "{first}"
        );
        let why = writer
            .broken
            .clone()
            .expect("the undo failed, so the log is stopped");
        assert!(why.contains("restart the node"), "{why}");
        let mut next = encode(&Entry {
            seq: 2,
            record: message(2),
        });
        let second = writer.flush(&mut next).unwrap_err();
        assert_eq!(second.to_string(), why);
        // An empty batch (nothing to make durable) still succeeds.
        assert!(writer.flush(&mut Vec::new()).is_ok());
    }
}
