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
//! - Recovery: read the snapshot, then every segment in order. A record that is cut short or
//!   fails its checksum at the end of the last segment is a torn write from a crash: the file is
//!   cut back to the last whole record. The same damage anywhere else is real corruption and the
//!   node refuses to start rather than silently lose data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::thread;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
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

/// Tells a writer its record is durable (or why it is not).
pub type Durable = Receiver<Result<(), String>>;

enum Job {
    Append {
        entry: Entry,
        done: Option<Sender<Result<(), String>>>,
    },
    /// Start a new segment after `after_seq` (a snapshot covers everything up to it).
    Rotate { after_seq: u64 },
    /// Delete the segments whose records all have `seq <= up_to`.
    Prune { up_to: u64 },
}

/// The handle writers use; the log thread stops when every handle is dropped.
#[derive(Clone, Debug)]
pub struct Wal {
    jobs: Sender<Job>,
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

/// Reads a segment: its whole records, and the offset where the valid prefix ends.
fn read_segment(path: &Path) -> io::Result<(Vec<Entry>, u64, u64)> {
    let mut bytes = Vec::new();
    BufReader::new(File::open(path)?).read_to_end(&mut bytes)?;
    let mut entries = Vec::new();
    let mut at = 0usize;
    while at + HEADER <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let end = at + HEADER + len;
        if len > MAX_RECORD || end > bytes.len() {
            break;
        }
        let payload = &bytes[at + HEADER..end];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match serde_json::from_slice::<Entry>(payload) {
            Ok(entry) => entries.push(entry),
            Err(_) => break,
        }
        at = end;
    }
    Ok((entries, at as u64, bytes.len() as u64))
}

impl Wal {
    /// Recovers the log in `dir` (cutting a torn tail) and starts the log thread, appending to
    /// the last segment (or a new one starting after `snapshot_seq`).
    pub fn open(dir: &Path, snapshot_seq: u64) -> io::Result<(Wal, Recovered)> {
        let found = segments(dir)?;
        let mut recovered = Recovered::default();
        for (i, (_, path)) in found.iter().enumerate() {
            let (entries, valid, total) = read_segment(path)?;
            if valid < total {
                if i + 1 < found.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} is damaged at byte {valid} but is not the last segment: refusing \
                             to start rather than lose the records after it",
                            path.display()
                        ),
                    ));
                }
                tracing::warn!(
                    segment = %path.display(),
                    cut = total - valid,
                    "cutting a torn record off the end of the log (crash during a write)"
                );
                OpenOptions::new().write(true).open(path)?.set_len(valid)?;
                recovered.truncated_bytes = total - valid;
            }
            recovered.entries.extend(entries);
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
            file,
        };
        thread::Builder::new()
            .name("wal".into())
            .spawn(move || writer.run(queue))?;
        Ok((Wal { jobs }, recovered))
    }

    /// Queues `entry`; the returned receiver answers once it is durable. Call in sequence order.
    pub fn append(&self, entry: Entry) -> Durable {
        let (done, durable) = bounded(1);
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

    fn flush(&mut self, buffer: &mut Vec<u8>) -> io::Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        let result = self
            .file
            .write_all(buffer)
            .and_then(|()| self.file.sync_data());
        buffer.clear();
        result
    }

    fn rotate(&mut self, after_seq: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(after_seq + 1));
        self.file = OpenOptions::new().create(true).append(true).open(path)?;
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

    #[test]
    fn a_bad_checksum_is_detected() {
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
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff; // flip a byte inside the second record's payload
        fs::write(&path, &bytes).unwrap();
        let (_wal, recovered) = Wal::open(dir.path(), 0).unwrap();
        assert_eq!(recovered.entries.len(), 1);
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
}
