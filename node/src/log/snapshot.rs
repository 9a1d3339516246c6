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
