//! Snapshots: the state's canonical [`Image`] in `snapshot.json`, written with `atomic_write`
//! (a crash leaves the old file or the new one, never a mix), after which the log drops the
//! entries it covers.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::state::Image;

/// The snapshot's file name in the data directory.
pub const SNAPSHOT_FILE: &str = "snapshot.json";
/// The format this node writes. Format 1 (before the log-first core) is not read: see
/// [`load`].
const FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    format: u32,
    #[serde(flatten)]
    image: Image,
}

/// Just the format field, read before the rest.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// The snapshot in `dir`, or an empty image if there is none.
pub fn load(dir: &Path) -> Result<Image, String> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Image::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let unreadable =
        |e: serde_json::Error| format!("snapshot {} is unreadable: {e}", path.display());
    let format = serde_json::from_slice::<FormatOnly>(&bytes)
        .map_err(unreadable)?
        .format;
    if format != FORMAT {
        return Err(format!(
            "snapshot {} has format {format}; this node reads format {FORMAT} only{}",
            path.display(),
            if format < FORMAT {
                " (data written before the log-first core: start it with the version that \
                 wrote it, or move the data directory aside)"
            } else {
                " (written by a newer node)"
            }
        ));
    }
    let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(unreadable)?;
    Ok(file.image)
}

/// Writes `image` as the snapshot in `dir`, durably.
pub fn save(dir: &Path, image: Image) -> Result<(), String> {
    let file = SnapshotFile {
        format: FORMAT,
        image,
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| e.to_string())?;
    sync_kit::fs::atomic_write(dir.join(SNAPSHOT_FILE), bytes)
        .map_err(|e| format!("writing the snapshot failed: {e}"))
}

/// The image encoded as `snapshot.json` holds it: what a raft leader sends a member too far
/// behind.
pub fn encode(image: Image) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&SnapshotFile {
        format: FORMAT,
        image,
    })
    .map_err(|e| e.to_string())
}

/// The image in bytes from [`encode`] (or read from a `snapshot.json`), checked.
pub fn decode(bytes: &[u8]) -> Result<Image, String> {
    let format = serde_json::from_slice::<FormatOnly>(bytes)
        .map_err(|e| format!("snapshot unreadable: {e}"))?
        .format;
    if format != FORMAT {
        return Err(format!(
            "snapshot has format {format}; this node reads format {FORMAT}"
        ));
    }
    let file: SnapshotFile =
        serde_json::from_slice(bytes).map_err(|e| format!("snapshot unreadable: {e}"))?;
    Ok(file.image)
}

/// The one writer of a data directory's snapshot: never replaces a snapshot with an older one
/// (the snapshot thread may still hold a capture older than a snapshot just installed from a
/// raft leader).
#[derive(Debug)]
pub struct SnapshotStore {
    dir: std::path::PathBuf,
    /// The applied index of the snapshot on disk; held while one is written.
    newest: sync_kit::Mutex<u64>,
}

impl SnapshotStore {
    /// The store of `dir`, whose snapshot on disk (if any) covers `newest`.
    pub fn new(dir: &Path, newest: u64) -> SnapshotStore {
        SnapshotStore {
            dir: dir.to_path_buf(),
            newest: sync_kit::Mutex::named("snapshot-file", newest),
        }
    }

    /// Writes `image` unless the snapshot on disk is newer; `Ok(false)` when skipped.
    pub fn save(&self, image: Image) -> Result<bool, String> {
        let applied = image.applied;
        let bytes = encode(image)?;
        self.save_encoded(applied, &bytes)
    }

    /// [`SnapshotStore::save`] for an image already encoded (received from a leader).
    pub fn save_encoded(&self, applied: u64, bytes: &[u8]) -> Result<bool, String> {
        let mut newest = self
            .newest
            .lock()
            .map_err(|e| format!("snapshot lock: {e}"))?;
        if applied < *newest {
            return Ok(false);
        }
        sync_kit::fs::atomic_write(self.dir.join(SNAPSHOT_FILE), bytes)
            .map_err(|e| format!("writing the snapshot failed: {e}"))?;
        *newest = applied;
        Ok(true)
    }

    /// The snapshot on disk, encoded, with the index it covers (`None`: there is none).
    pub fn read_encoded(&self) -> Result<Option<(u64, Vec<u8>)>, String> {
        let newest = self
            .newest
            .lock()
            .map_err(|e| format!("snapshot lock: {e}"))?;
        let path = self.dir.join(SNAPSHOT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some((*newest, bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}
