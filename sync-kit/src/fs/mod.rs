//! Crash-safe file updates and cross-process file locks.
//!
//! - [`atomic_write`]: replace a file's content so that any reader, at any instant, even if the
//!   writer is killed mid-way, sees either the old content or the new, never a mix or an empty
//!   file; and once it returns, the new content survives a power loss.
//! - [`FileLock`]: an advisory lock shared between processes (the standard library's
//!   `File::lock`), held on a sidecar file `<path>.lock` so that atomically replacing `<path>`
//!   never drops it; a refused lock names the holding process when it is known.
//! - [`update_locked`]: both together, for read-modify-write of a file by several processes.
//!
//! ```
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("config.json");
//! use sync_kit::fs::{atomic_write, update_locked, FileLock};
//!
//! atomic_write(&path, b"{\"n\":1}")?;
//! update_locked(&path, |old| {
//!     assert_eq!(old.as_deref(), Some(&b"{\"n\":1}"[..]));
//!     Ok(b"{\"n\":2}".to_vec())
//! })?;
//! let lock = FileLock::exclusive(&path)?;
//! assert!(FileLock::try_exclusive(&path).is_err()); // even within one process
//! drop(lock);
//! # Ok::<(), std::io::Error>(())
//! ```

mod atomic_write;
mod file_lock;

pub use atomic_write::atomic_write;
pub use file_lock::{FileLock, LockHeld, update_locked};
