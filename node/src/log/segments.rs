//! The log on disk: segments of checksummed binary records, torn-tail repair, compaction.
//!
//! - The single-node log of earlier versions wrote segments `wal-<first index, 20 digits>.log`
//!   (read now only to bring such a directory forward: `super::legacy`); each is a sequence of records
//!   `[payload length: u32 LE][crc32 of payload: u32 LE][payload]`, where the payload is a format
//!   byte ([`RECORD_FORMAT`]) followed by the postcard encoding of an [`Entry`].
//! - Indexes increase strictly through the log (they may skip: a batch that failed to be written
//!   burns the indexes it was given).
//! - Recovery reads every segment in order. Damage (a record cut short, failing its checksum or
//!   not decoding) at the end of the last segment, with no whole record anywhere after it, is a
//!   torn write from a crash: the file is cut back to the last whole record. Damage followed by a
//!   whole record, or in any segment but the last, is real corruption: cutting it would drop
//!   records that were acknowledged, so recovery refuses and names the file and the offset.
//! - One exception, in the last segment: damage that is a write which never reached the disk
//!   (the record's header is zeros, or a whole 512-byte sector of it is) is cut with everything
//!   after it. A machine that loses power during an `fdatasync` can leave a later page of the
//!   batch on the disk and not an earlier one; what follows the gap was written after it and
//!   synced no earlier (an `fdatasync` makes every earlier write durable too), so none of it was
//!   acknowledged. Only a disk that loses a write it said was durable breaks this.
//! - A batch whose write or `fsync` fails is cut off again (so the segment still ends with a
//!   whole record); if even that fails, the log refuses every later batch.
//! - Space written ahead: the segment being appended to keeps [`WRITE_AHEAD`] bytes of zeros
//!   after its last record, written in one piece whenever less than [`WRITE_AHEAD_LOW`] is
//!   left. A record then lands inside the file instead of growing it, so the `fdatasync` after
//!   it writes the data alone: one I/O where a growing file costs two (the data and the inode).
//!   Zeros never form a record (a zero length has no format byte), so recovery reads a tail of
//!   zeros after the last whole record, in any segment, as that space: kept, not a torn write.
//! - The framing, scan, repair and refusal are generic over the payload ([`Record`]: file prefix,
//!   format byte, size limit): raft's log (`crate::raft::storage`) uses them with its own records
//!   and `raft-*.log` files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::state::Command;

/// A command at its place in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 1.
    pub index: u64,
    /// The change.
    pub command: Command,
}

/// The first byte of every record's payload: the encoding of what follows.
pub const RECORD_FORMAT: u8 = 2;
/// Bytes before each record's payload: its length and its checksum.
pub const HEADER: usize = 8;
/// A record larger than this cannot have been written by this node: corruption.
const MAX_RECORD: usize = 1 << 20;
/// Zeros kept written after the last record of the segment being appended to.
pub const WRITE_AHEAD: u64 = 1 << 20;
/// Below this much written-ahead space, the next batch writes [`WRITE_AHEAD`] bytes of zeros
/// after itself.
pub const WRITE_AHEAD_LOW: u64 = 256 << 10;
/// A source of zeros for the space written ahead.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// What one kind of segmented log stores: the type of its records, how its files are named, the
/// format byte that starts every payload, and the largest record it can have written. The
/// framing, the scan, torn-tail repair and the refusal of damage are the same for every kind.
pub trait Record: Serialize + DeserializeOwned {
    /// Segment files are named `<PREFIX><20 digits>.log`.
    const PREFIX: &'static str;
    /// The first byte of every record's payload.
    const FORMAT: u8;
    /// A record longer than this (payload bytes) cannot have been written: corruption.
    const MAX_LEN: usize;
}

impl Record for Entry {
    const PREFIX: &'static str = "wal-";
    const FORMAT: u8 = RECORD_FORMAT;
    const MAX_LEN: usize = MAX_RECORD;
}

fn segment_name(first_index: u64) -> String {
    segment_file_name::<Entry>(first_index)
}

/// The file name of the segment of kind `R` numbered `number`.
pub fn segment_file_name<R: Record>(number: u64) -> String {
    format!("{}{number:020}.log", R::PREFIX)
}

/// The segments in `dir`, by first index.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    list::<Entry>(dir)
}

/// The segments of kind `R` in `dir`, by the number in their names.
pub fn list<R: Record>(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for item in fs::read_dir(dir)? {
        let path = item?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(index) = name
            .strip_prefix(R::PREFIX)
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|digits| digits.parse::<u64>().ok())
        {
            found.push((index, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Appends one entry's record to `out`.
pub fn encode_into(entry: &Entry, out: &mut Vec<u8>) {
    encode_record_into(entry, out);
}

/// Appends one record to `out`, framed: header, format byte, postcard encoding. Returns the
/// length of its payload (compare with [`Record::MAX_LEN`]).
pub fn encode_record_into<R: Record>(record: &R, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.push(R::FORMAT);
    *out = postcard::to_extend(record, std::mem::take(out)).expect("records encode");
    let payload = &out[start + HEADER..];
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(payload).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + HEADER].copy_from_slice(&crc);
    out.len() - start - HEADER
}

/// One entry's record.
pub fn encode(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(entry, &mut out);
    out
}

/// The record whose frame starts at `at` and the offset just past it; `None` unless a whole
/// record with a matching checksum and a decodable payload starts there.
fn record_at<R: Record>(bytes: &[u8], at: usize) -> Option<(R, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > R::MAX_LEN {
        return None;
    }
    let end = at + HEADER + len;
    let payload = bytes.get(at + HEADER..end)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let (&format, body) = payload.split_first()?;
    if format != R::FORMAT {
        return None;
    }
    let record = postcard::from_bytes::<R>(body).ok()?;
    Some((record, end))
}

/// What reading one segment found.
struct Scan<R> {
    /// The whole records from the start of the file, up to the first damage.
    entries: Vec<R>,
    /// Where those records end: the offset of the damage, or the file's length.
    valid: u64,
    /// The file's length.
    total: u64,
    /// The first offset after the damage where a whole record starts, if any: proof that the
    /// damage is not a torn tail.
    resumes_at: Option<u64>,
    /// Bytes from `valid` to the last byte that is not zero: 0 when everything after the whole
    /// records is zeros (space written ahead, not damage).
    damaged_len: u64,
    /// The damage is a write that never reached the disk ([`unwritten_at`]).
    unwritten: bool,
    /// The file starts with a whole record of the JSON format of earlier nodes.
    legacy: bool,
}

/// Whether a whole record with a JSON payload (format 1, before binary records) starts at 0.
fn legacy_record_at_start(bytes: &[u8]) -> bool {
    let Some(header) = bytes.get(..HEADER) else {
        return false;
    };
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    bytes
        .get(HEADER..HEADER.saturating_add(len))
        .is_some_and(|payload| payload.first() == Some(&b'{') && crc32fast::hash(payload) == crc)
}

fn scan<R: Record>(path: &Path) -> io::Result<Scan<R>> {
    let mut bytes = Vec::new();
    BufReader::new(File::open(path)?).read_to_end(&mut bytes)?;
    let mut entries = Vec::new();
    let mut at = 0usize;
    while let Some((entry, end)) = record_at::<R>(&bytes, at) {
        entries.push(entry);
        at = end;
    }
    let damaged_len = bytes[at..]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    // A damaged header says nothing reliable about where the next record starts: try every
    // offset. Only damaged files pay for this, and the checksum rejects almost every offset
    // before any decoding.
    let resumes_at = match damaged_len {
        0 => None,
        _ => (at + 1..bytes.len())
            .find(|&offset| record_at::<R>(&bytes, offset).is_some())
            .map(|offset| offset as u64),
    };
    Ok(Scan {
        unwritten: damaged_len > 0 && unwritten_at::<R>(&bytes, at, at + damaged_len),
        damaged_len: damaged_len as u64,
        legacy: entries.is_empty() && legacy_record_at_start(&bytes),
        entries,
        valid: at as u64,
        total: bytes.len() as u64,
        resumes_at,
    })
}

/// A disk sector: the unit a write reaches the disk in, or does not.
const SECTOR: usize = 512;

/// Whether the damage at `at` is a write that never reached the disk: the header there is
/// zeros (no record is ever written with a zero length), or a whole sector of the record it
/// claims (a length a record of kind `R` can have, ending before `data_end`, the end of the
/// bytes that are not zeros) is. Damage from anything else (a flipped bit, garbage) leaves
/// neither.
fn unwritten_at<R: Record>(bytes: &[u8], at: usize, data_end: usize) -> bool {
    let Some(header) = bytes.get(at..at + HEADER) else {
        return false;
    };
    if header.iter().all(|&b| b == 0) {
        return true;
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let end = at + HEADER + len;
    if len > R::MAX_LEN || end > data_end {
        return false;
    }
    let first_sector = at.div_ceil(SECTOR) * SECTOR;
    (first_sector..end)
        .step_by(SECTOR)
        .filter(|start| start + SECTOR <= end)
        .any(|start| bytes[start..start + SECTOR].iter().all(|&b| b == 0))
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every entry, in log order (all segments).
    pub entries: Vec<Entry>,
    /// Bytes cut off a torn tail, if any.
    pub truncated_bytes: u64,
    /// Every index up to this one is in `entries` or carries no command (raft's empty and
    /// membership entries); 0 when the entries say it all.
    pub through: u64,
}

/// The segment being appended to, and the directory's other segments.
///
/// Invariant: the file holds whole records up to `len`, then zeros up to `zeroed_to` (its
/// length, never below `len`).
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    file: File,
    /// The current segment's length: where its last whole, durable batch ends.
    len: u64,
    /// The end of the file: zeros from `len` to here (the space written ahead).
    zeroed_to: u64,
    /// No space is written ahead before `len` reaches this (after a failure to write it: a full
    /// disk is not asked again for every batch).
    write_ahead_from: u64,
    /// Set when a failed batch could not be cut off again: from then on nothing is appended
    /// (records after the torn batch could not be recovered), and every batch fails with this.
    broken: Option<String>,
}

/// The whole records of one segment, as recovery found them.
#[derive(Debug)]
pub struct SegmentRecords<R> {
    /// The number in the file's name.
    pub number: u64,
    /// The file.
    pub path: PathBuf,
    /// Where its whole records end (zeros may follow: space written ahead).
    pub len: u64,
    /// Its records, in order.
    pub records: Vec<R>,
}

/// Reads every segment of kind `R` in `dir`, in order, cutting a torn tail off the last one and
/// refusing real damage (naming the file and the byte offset). Returns each segment's records
/// and the bytes cut off a torn tail.
pub fn recover<R: Record>(dir: &Path) -> io::Result<(Vec<SegmentRecords<R>>, u64)> {
    let found = list::<R>(dir)?;
    let mut recovered = Vec::with_capacity(found.len());
    let mut truncated_bytes = 0;
    for (i, (number, path)) in found.iter().enumerate() {
        let scan = scan::<R>(path)?;
        if scan.legacy {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds JSON records written before the log-first core (record format \
                     1); this node reads format {} only: start that data \
                     directory with the version that wrote it, or move it aside",
                    path.display(),
                    R::FORMAT
                ),
            ));
        }
        if scan.damaged_len > 0 {
            let damaged = |why: String| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is damaged at byte {} (of {}), {why}: refusing to start rather \
                         than lose the records after it. Restore the file from a backup, or \
                         accept losing every record from that byte on with `truncate -s {} {}`",
                        path.display(),
                        scan.valid,
                        scan.total,
                        scan.valid,
                        path.display()
                    ),
                )
            };
            if i + 1 < found.len() {
                return Err(damaged("and it is not the last segment".into()));
            }
            match scan.resumes_at {
                Some(resumes_at) if !scan.unwritten => {
                    return Err(damaged(format!(
                        "and a whole record follows at byte {resumes_at}, so this is not a \
                         write torn by a crash"
                    )));
                }
                Some(resumes_at) => tracing::warn!(
                    segment = %path.display(),
                    at = scan.valid,
                    cut = scan.damaged_len,
                    resumes_at,
                    "cutting a write that never reached the disk off the end of the log, with \
                     the records written after it (power lost during a sync: none of them was \
                     acknowledged)"
                ),
                None => tracing::warn!(
                    segment = %path.display(),
                    at = scan.valid,
                    cut = scan.damaged_len,
                    "cutting a torn record off the end of the log (crash during a write)"
                ),
            }
            OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(scan.valid)?;
            truncated_bytes = scan.damaged_len;
        }
        recovered.push(SegmentRecords {
            number: *number,
            path: path.clone(),
            len: scan.valid,
            records: scan.entries,
        });
    }
    Ok((recovered, truncated_bytes))
}

impl Segments {
    /// Recovers the log in `dir` (cutting a torn tail) and opens its last segment for appending
    /// (or a new one whose first index is `next_index`).
    pub fn open(dir: &Path, next_index: u64) -> io::Result<(Segments, Recovered)> {
        let (found, truncated_bytes) = recover::<Entry>(dir)?;
        let (current, len) = match found.last() {
            Some(segment) => (segment.path.clone(), segment.len),
            None => (dir.join(segment_name(next_index)), 0),
        };
        let recovered = Recovered {
            entries: found.into_iter().flat_map(|s| s.records).collect(),
            truncated_bytes,
            through: 0,
        };
        if let Some(pair) = recovered
            .entries
            .windows(2)
            .find(|w| w[0].index >= w[1].index)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the log in {} goes back from index {} to {}: refusing to start",
                    dir.display(),
                    pair[0].index,
                    pair[1].index
                ),
            ));
        }
        Ok((Segments::append_to(dir, &current, len)?, recovered))
    }

    /// Opens (or creates) the segment `path` in `dir` for appending after its first `len` bytes
    /// (its whole records, as recovery found them: zeros follow, if anything), and makes its
    /// directory entry durable.
    pub fn append_to(dir: &Path, path: &Path, len: u64) -> io::Result<Segments> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        sync_dir(dir)?;
        Ok(Segments {
            dir: dir.to_path_buf(),
            zeroed_to: file.metadata()?.len().max(len),
            len,
            write_ahead_from: 0,
            file,
            broken: None,
        })
    }

    /// The current segment's length: where its last whole, durable batch ends.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the current segment holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes and syncs one batch of encoded records. A batch that fails (disk full, I/O error)
    /// is cut off again, so the segment still ends with a whole record and the batches after it,
    /// once space is back, remain recoverable; a torn batch left in the middle would make
    /// recovery refuse the log.
    pub fn append(&mut self, batch: &[u8]) -> io::Result<()> {
        self.put(batch, true)
    }

    /// Writes one batch of encoded records without syncing it (the raft loop's pipelined
    /// writes: another thread syncs a [`Segments::sync_handle`] later). A batch that fails is cut
    /// off again, as in [`Segments::append`], so the segment still ends with a whole record.
    pub fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        self.put(batch, false)
    }

    /// Writes `batch` (and with `sync`, fsyncs it); on failure cuts it off again (durably with
    /// `sync`), or, if even that fails, stops the log.
    fn put(&mut self, batch: &[u8], sync: bool) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(why) = &self.broken {
            return Err(io::Error::other(why.clone()));
        }
        let end = self.len + batch.len() as u64;
        let mut result = self.file.write_all_at(batch, self.len);
        if result.is_ok() {
            self.zeroed_to = self.zeroed_to.max(end);
            self.write_ahead(end);
        }
        if sync {
            result = result.and_then(|()| self.file.sync_data());
        }
        let Err(error) = result else {
            self.len = end;
            return Ok(());
        };
        self.zeroed_to = self.len;
        let mut undo = self.file.set_len(self.len);
        if sync {
            undo = undo.and_then(|()| self.file.sync_data());
        }
        if let Err(undo) = undo {
            let why = format!(
                "the log stopped accepting records: a failed write ({error}) could not be cut \
                 off again ({undo}); restart the node, which cuts it as a torn tail"
            );
            tracing::error!("{why}");
            self.broken = Some(why);
        }
        Err(error)
    }

    /// Writes [`WRITE_AHEAD`] bytes of zeros after `end` (the end of the batch just written)
    /// when less than [`WRITE_AHEAD_LOW`] is left, so the next batches land inside the file. A
    /// failure (a full disk) costs only the speed: the batches grow the file, and the space is
    /// asked for again once another [`WRITE_AHEAD_LOW`] bytes are written.
    fn write_ahead(&mut self, end: u64) {
        if self.zeroed_to - end >= WRITE_AHEAD_LOW || end < self.write_ahead_from {
            return;
        }
        let target = end + WRITE_AHEAD;
        while self.zeroed_to < target {
            let piece = (target - self.zeroed_to).min(ZEROS.len() as u64) as usize;
            if let Err(error) = self.file.write_all_at(&ZEROS[..piece], self.zeroed_to) {
                tracing::debug!(%error, "could not write space ahead of the log");
                self.write_ahead_from = end + WRITE_AHEAD_LOW;
                // What a partial write left is zeros as well.
                if let Ok(meta) = self.file.metadata() {
                    self.zeroed_to = self.zeroed_to.max(meta.len());
                }
                return;
            }
            self.zeroed_to += piece as u64;
        }
    }

    /// Gives back the space written ahead (the segment is left for a new one). Nothing needs
    /// it to be durable: zeros after the records read as that space anyway.
    pub fn trim(&mut self) {
        if self.zeroed_to > self.len && self.file.set_len(self.len).is_ok() {
            self.zeroed_to = self.len;
        }
    }

    /// Syncs what [`Segments::write`] wrote.
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Another handle on the current segment, for a thread that syncs what [`Segments::write`]
    /// wrote.
    pub fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Cuts the current segment back to `len` bytes, durably: what was written after it never
    /// became durable (its sync failed), and must not be read back as if it had.
    pub fn cut_to(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.zeroed_to = len;
        self.file.sync_data()?;
        self.len = len;
        Ok(())
    }

    /// Compaction after a durable snapshot covering every index up to `covered`: starts a new
    /// segment (whose first index is `next_index`) unless the current one is still empty, then
    /// deletes every segment whose records all lie at or below `covered`.
    pub fn compact(&mut self, covered: u64, next_index: u64) -> io::Result<()> {
        if self.len > 0 {
            let path = self.dir.join(segment_name(next_index));
            let next = Segments::append_to(&self.dir, &path, 0)?;
            self.trim();
            let broken = self.broken.take();
            *self = Segments { broken, ..next };
        }
        let found = segments(&self.dir)?;
        for pair in found.windows(2) {
            let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
            if *next_first <= covered + 1 {
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
    use std::io::Write;

    fn entry(index: u64) -> Entry {
        Entry {
            index,
            command: Command::SendMessage {
                from: "a".into(),
                to: "b".into(),
                text: format!("m{index}"),
                timestamp: index,
                key: None,
            },
        }
    }

    /// A log of `records` durable records in one segment; its path and where each record starts.
    fn log_of(dir: &Path, records: u64) -> (PathBuf, Vec<usize>) {
        let (mut log, _) = Segments::open(dir, 1).unwrap();
        for index in 1..=records {
            log.append(&encode(&entry(index))).unwrap();
        }
        let (_, path) = segments(dir).unwrap().pop().unwrap();
        let starts = record_starts(&path);
        assert_eq!(starts.len() as u64, records);
        (path, starts)
    }

    /// Where each record of the segment `path` starts, and (last) where its records end.
    fn record_starts(path: &Path) -> Vec<usize> {
        let bytes = fs::read(path).unwrap();
        let mut starts = Vec::new();
        let mut at = 0;
        while at + HEADER <= bytes.len() && bytes[at..at + HEADER] != [0; HEADER] {
            starts.push(at);
            at += HEADER + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        }
        starts
    }

    /// Where the records of the segment `path` end (zeros written ahead may follow).
    fn records_end(path: &Path) -> usize {
        let bytes = fs::read(path).unwrap();
        let last = *record_starts(path).last().unwrap();
        last + HEADER + u32::from_le_bytes(bytes[last..last + 4].try_into().unwrap()) as usize
    }

    /// Appends `bytes` to the file `path` as they are (past any space written ahead).
    fn append_raw(path: &Path, bytes: &[u8]) {
        let mut file = OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(bytes).unwrap();
    }

    fn write_at(path: &Path, at: usize, bytes: &[u8]) {
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .write_all_at(bytes, at as u64)
            .unwrap();
    }

    fn flip(path: &Path, at: usize) -> Vec<u8> {
        let mut bytes = fs::read(path).unwrap();
        bytes[at] ^= 0xff;
        fs::write(path, &bytes).unwrap();
        bytes
    }

    #[test]
    fn appends_are_recovered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        log_of(dir.path(), 50);
        let (_, recovered) = Segments::open(dir.path(), 1).unwrap();
        let indexes: Vec<u64> = recovered.entries.iter().map(|e| e.index).collect();
        assert_eq!(indexes, (1..=50).collect::<Vec<_>>());
        assert_eq!(recovered.entries[7], entry(8));
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = log_of(dir.path(), 2);
        let whole = records_end(&path);
        let mut torn = encode(&entry(3));
        torn.truncate(torn.len() / 2);
        write_at(&path, whole, &torn);
        let (_, recovered) = Segments::open(dir.path(), 1).unwrap();
        assert_eq!(recovered.entries.len(), 2);
        assert_eq!(recovered.truncated_bytes, torn.len() as u64);
        assert_eq!(fs::metadata(&path).unwrap().len(), whole as u64);
    }

    #[test]
    fn a_torn_tail_after_the_space_written_ahead_is_cut() {
        // A file grown past the space written ahead (a burst larger than it) and torn there.
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = log_of(dir.path(), 2);
        let whole = records_end(&path);
        append_raw(&path, &encode(&entry(3))[..10]);
        let (_, recovered) = Segments::open(dir.path(), 1).unwrap();
        assert_eq!(recovered.entries.len(), 2);
        assert_eq!(fs::metadata(&path).unwrap().len(), whole as u64);
    }

    #[test]
    fn a_damaged_last_record_is_a_torn_tail_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (path, starts) = log_of(dir.path(), 3);
        let end = records_end(&path);
        flip(&path, end - 2); // inside the last record's payload: its checksum fails
        let (_, recovered) = Segments::open(dir.path(), 1).unwrap();
        assert_eq!(recovered.entries.len(), 2);
        // Counted up to the last byte that is not zero.
        let cut = recovered.truncated_bytes as usize;
        assert!((1..=end - starts[2]).contains(&cut), "{cut}");
        assert_eq!(fs::metadata(&path).unwrap().len(), starts[2] as u64);
    }

    #[test]
    fn appends_land_inside_space_written_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Segments::open(dir.path(), 1).unwrap();
        log.append(&encode(&entry(1))).unwrap();
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let first_end = records_end(&path) as u64;
        let size = fs::metadata(&path).unwrap().len();
        assert_eq!(
            size,
            first_end + WRITE_AHEAD,
            "zeros written after the first record"
        );
        // Records land inside the file while at least WRITE_AHEAD_LOW is left after them, then
        // the space is written ahead again, after the batch that crossed that line.
        let mut index = 2;
        loop {
            log.append(&encode(&entry(index))).unwrap();
            index += 1;
            let left = size - log.len();
            if fs::metadata(&path).unwrap().len() != size {
                assert!(left < WRITE_AHEAD_LOW, "written ahead with {left} left");
                break;
            }
            assert!(
                left >= WRITE_AHEAD_LOW,
                "not written ahead with {left} left"
            );
        }
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            log.len() + WRITE_AHEAD,
            "written ahead again"
        );
        let bytes = fs::read(&path).unwrap();
        assert!(bytes[log.len() as usize..].iter().all(|&b| b == 0));
        drop(log);
        let (log, recovered) = Segments::open(dir.path(), 1).unwrap();
        let indexes: Vec<u64> = recovered.entries.iter().map(|e| e.index).collect();
        assert_eq!(indexes, (1..index).collect::<Vec<_>>());
        assert_eq!(recovered.truncated_bytes, 0, "zeros are not a torn tail");
        assert_eq!(
            log.len(),
            records_end(&path) as u64,
            "appends resume after the records"
        );
    }

    #[test]
    fn zeros_after_the_last_record_are_kept_and_written_over() {
        // Space written ahead, or what a file system can leave when the size reached the disk
        // before the data did: either way no record is there.
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = log_of(dir.path(), 2);
        let whole = fs::metadata(&path).unwrap().len();
        append_raw(&path, &[0; 4096]);
        let (mut log, recovered) = Segments::open(dir.path(), 1).unwrap();
        assert_eq!(recovered.entries.len(), 2);
        assert_eq!(recovered.truncated_bytes, 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), whole + 4096, "not cut");
        log.append(&encode(&entry(3))).unwrap();
        drop(log);
        let (_, recovered) = Segments::open(dir.path(), 1).unwrap();
        assert_eq!(recovered.entries, vec![entry(1), entry(2), entry(3)]);
    }

    #[test]
    fn zeros_after_the_records_of_an_earlier_segment_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = log_of(dir.path(), 2);
        {
            let (mut log, _) = Segments::open(dir.path(), 1).unwrap();
            log.compact(0, 3).unwrap(); // a new segment, nothing covered
            log.append(&encode(&entry(3))).unwrap();
        }
        let end = records_end(&path) as u64;
        assert_eq!(fs::metadata(&path).unwrap().len(), end, "space given back");
        // A crash before the trim reached the disk leaves the zeros.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(end + WRITE_AHEAD)
            .unwrap();
        let (_, recovered) = Segments::open(dir.path(), 1).unwrap();
        assert_eq!(recovered.entries, vec![entry(1), entry(2), entry(3)]);
    }

    /// Damage with a whole record after it must stop recovery, name the file and the offset,
    /// and leave the file as it was.
    #[track_caller]
    fn assert_refused(dir: &Path, path: &Path, damaged_at: usize, before: &[u8]) {
        let error = Segments::open(dir, 1).expect_err("damage before a whole record is refused");
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
        let text = Segments::open(dir.path(), 1).unwrap_err().to_string();
        assert!(
            text.contains(&format!("follows at byte {}", starts[2])),
            "{text}"
        );
    }

    #[test]
    fn a_write_that_never_reached_the_disk_is_cut_with_what_followed_it() {
        // Power lost during a sync: the third record's page stayed zeros (space written
        // ahead), the fourth's reached the disk.
        let dir = tempfile::tempdir().unwrap();
        let (path, starts) = log_of(dir.path(), 4);
        write_at(&path, starts[2], &vec![0; starts[3] - starts[2]]);
        let (_, recovered) = Segments::open(dir.path(), 1).unwrap();
        assert_eq!(recovered.entries, vec![entry(1), entry(2)]);
        assert!(recovered.truncated_bytes > 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), starts[2] as u64);
    }

    #[test]
    fn a_record_with_a_zeroed_sector_is_a_write_that_never_reached_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Segments::open(dir.path(), 1).unwrap();
        let big = |index: u64| Entry {
            index,
            command: Command::SendMessage {
                from: "a".into(),
                to: "b".into(),
                text: "x".repeat(3000),
                timestamp: index,
                key: None,
            },
        };
        for index in 1..=3 {
            log.append(&encode(&big(index))).unwrap();
        }
        drop(log);
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let starts = record_starts(&path);
        // The second record's header reached the disk, one of its sectors did not.
        let sector = (starts[1] + HEADER).div_ceil(SECTOR) * SECTOR;
        write_at(&path, sector, &[0; SECTOR]);
        let (_, recovered) = Segments::open(dir.path(), 1).unwrap();
        assert_eq!(recovered.entries, vec![big(1)]);
        assert_eq!(fs::metadata(&path).unwrap().len(), starts[1] as u64);
    }

    #[test]
    fn zeros_before_whole_records_of_an_earlier_segment_refuse_to_start() {
        // Every segment but the last was synced whole before the next began: a gap there is
        // a lost write, not one that never reached the disk.
        let dir = tempfile::tempdir().unwrap();
        let (path, starts) = log_of(dir.path(), 3);
        {
            let (mut log, _) = Segments::open(dir.path(), 1).unwrap();
            log.compact(0, 4).unwrap();
            log.append(&encode(&entry(4))).unwrap();
        }
        write_at(&path, starts[1], &vec![0; starts[2] - starts[1]]);
        let error = Segments::open(dir.path(), 1).unwrap_err().to_string();
        assert!(error.contains("not the last segment"), "{error}");
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
            let (mut log, _) = Segments::open(dir.path(), 1).unwrap();
            log.compact(0, 3).unwrap(); // a new segment, nothing covered
            log.append(&encode(&entry(3))).unwrap();
        }
        assert_eq!(segments(dir.path()).unwrap().len(), 2);
        // Damage at the very end of the older segment's records: a torn tail anywhere but the
        // last segment still means lost records.
        let before = flip(&path, records_end(&path) - 1);
        let error = Segments::open(dir.path(), 1).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(
            error.contains(&format!("at byte {} ", starts[1])),
            "{error}"
        );
        assert!(error.contains("not the last segment"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn compaction_keeps_only_what_the_snapshot_does_not_cover() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Segments::open(dir.path(), 1).unwrap();
        log.append(&encode(&entry(1))).unwrap();
        log.append(&encode(&entry(2))).unwrap();
        // A snapshot at 1 while 2 is already written: the segment holding 2 must stay.
        log.compact(1, 3).unwrap();
        log.append(&encode(&entry(3))).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 2);
        log.compact(2, 4).unwrap();
        let left: Vec<u64> = segments(dir.path()).unwrap().iter().map(|s| s.0).collect();
        assert_eq!(left, vec![3, 4]);
        drop(log);
        let (_, recovered) = Segments::open(dir.path(), 1).unwrap();
        assert_eq!(recovered.entries, vec![entry(3)]);
    }

    #[test]
    fn a_log_of_the_earlier_json_format_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let payload = br#"{"seq":1,"record":{"type":"delete_account","username":"a"}}"#;
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        bytes.extend_from_slice(payload);
        let path = dir.path().join(segment_name(1));
        fs::write(&path, &bytes).unwrap();
        let error = Segments::open(dir.path(), 1).unwrap_err().to_string();
        assert!(error.contains("JSON records written before"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "nothing is cut");
    }

    #[test]
    fn indexes_going_back_refuse_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Segments::open(dir.path(), 1).unwrap();
        log.append(&encode(&entry(5))).unwrap();
        log.append(&encode(&entry(4))).unwrap();
        drop(log);
        let error = Segments::open(dir.path(), 1).unwrap_err().to_string();
        assert!(error.contains("goes back from index 5 to 4"), "{error}");
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
        let mut log = Segments {
            dir: PathBuf::from("/dev"),
            file,
            len: 0,
            zeroed_to: 0,
            write_ahead_from: 0,
            broken: None,
        };
        let first = log.append(&encode(&entry(1))).unwrap_err();
        assert!(
            first.to_string().to_lowercase().contains("space"),
            "{first}"
        );
        let why = log
            .broken
            .clone()
            .expect("the undo failed, so the log is stopped");
        assert!(why.contains("restart the node"), "{why}");
        let second = log.append(&encode(&entry(2))).unwrap_err();
        assert_eq!(second.to_string(), why);
        // An empty batch (nothing to make durable) still succeeds.
        assert!(log.append(&[]).is_ok());
    }
}
