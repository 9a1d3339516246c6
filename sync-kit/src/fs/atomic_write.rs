//! [`atomic_write`]: temp file, write, fsync, rename, fsync the directory.

use std::io::{self, Write};
use std::path::Path;

/// Replaces the content of `path` with `bytes`, atomically and durably.
///
/// Steps: create a temporary file in the same directory (so the rename cannot cross file
/// systems), write, `fsync` it, rename it over `path`, `fsync` the directory (so the rename
/// itself is durable). A reader sees the old file or the new one, never a partial one, even if
/// this process is killed at any point. On error the temporary file is removed and `path` is
/// untouched. The new file gets the default permissions of a new file.
pub fn atomic_write(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    let path = path.as_ref();
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(bytes.as_ref())?;
    temp.as_file().sync_all()?;
    // On failure the returned error owns the temporary file, and dropping it deletes it.
    temp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Makes a directory's entries (a rename, a new file) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened for syncing elsewhere; the rename is as durable as the OS
        // makes it.
        let _ = dir;
        Ok(())
    }
}
