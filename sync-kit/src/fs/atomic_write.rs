//! [`atomic_write`]: temp file, write, fsync, rename, fsync the directory.

use std::io::{self, Write};
use std::path::Path;

/// Replaces the content of `path` with `bytes`, atomically and durably.
///
/// Steps: create a temporary file in the same directory (so the rename cannot cross file
/// systems), write, `fsync` it, rename it over `path`, `fsync` the directory (so the rename
/// itself is durable). A reader sees the old file or the new one, never a partial one, even if
/// this process is killed at any point. On error the temporary file is removed and `path` is
/// untouched.
///
/// Permissions: a file that already exists keeps its permissions; a new file gets those of any
/// new file (`0666` less the umask on Unix), as with `File::create`.
pub fn atomic_write(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    let path = path.as_ref();
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let existing = match std::fs::metadata(path) {
        Ok(metadata) => Some(metadata.permissions()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut builder = tempfile::Builder::new();
    // The temporary name adds 12 bytes or so to the target's: cap the part taken from the
    // target, so that any name the file system accepts can be replaced.
    let stem: String = name.to_string_lossy().chars().take(64).collect();
    let prefix = format!(".{stem}.");
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Created with mode 0666, which the OS narrows by the umask, like `File::create`
        // (tempfile's own default, 0600, would make every replaced file private).
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut temp = builder.tempfile_in(dir)?;
    if let Some(permissions) = existing {
        temp.as_file().set_permissions(permissions)?;
    }
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
