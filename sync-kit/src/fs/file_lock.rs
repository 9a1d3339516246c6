//! [`FileLock`]: an advisory cross-process lock on a sidecar file.

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::atomic_write::atomic_write;

/// A lock on `<path>.lock`, shared between processes (and between `FileLock`s of one process).
/// Released when dropped, or when the process dies.
///
/// The lock is advisory: it excludes other `FileLock`s (and any program using `flock` on the
/// sidecar), not plain reads and writes. Exclusive holders write their process id into the
/// sidecar, so that a refused attempt can say who holds the lock.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    sidecar: PathBuf,
    exclusive: bool,
}

/// The error payload of a refused or timed-out lock attempt (inside an `io::Error` of kind
/// `WouldBlock` or `TimedOut`): which lock, and which process holds it, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHeld {
    /// The sidecar file that is locked.
    pub sidecar: PathBuf,
    /// The holder's process id, when an exclusive holder recorded it.
    pub holder_pid: Option<u32>,
}

impl fmt::Display for LockHeld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is locked", self.sidecar.display())?;
        match self.holder_pid {
            Some(pid) => write!(f, " by process {pid}"),
            None => write!(f, " by another holder"),
        }
    }
}

impl std::error::Error for LockHeld {}

impl FileLock {
    /// Locks `path` exclusively, waiting as long as needed.
    pub fn exclusive(path: impl AsRef<Path>) -> io::Result<Self> {
        let (file, sidecar) = open_sidecar(path.as_ref())?;
        file.lock()?;
        Self::exclusive_from(file, sidecar)
    }

    /// Locks `path` exclusively if nobody holds it; otherwise fails at once with kind
    /// `WouldBlock` and a [`LockHeld`] naming the holder.
    pub fn try_exclusive(path: impl AsRef<Path>) -> io::Result<Self> {
        let (file, sidecar) = open_sidecar(path.as_ref())?;
        match file.try_lock() {
            Ok(()) => Self::exclusive_from(file, sidecar),
            Err(TryLockError::WouldBlock) => Err(held_error(&sidecar, io::ErrorKind::WouldBlock)),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// Locks `path` exclusively, waiting at most `timeout`; fails with kind `TimedOut` and a
    /// [`LockHeld`] naming the holder.
    pub fn exclusive_timeout(path: impl AsRef<Path>, timeout: Duration) -> io::Result<Self> {
        let (file, sidecar) = open_sidecar(path.as_ref())?;
        // The standard library has no timed lock: poll, backing off from 1 ms to 50 ms.
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => return Self::exclusive_from(file, sidecar),
                Err(TryLockError::Error(e)) => return Err(e),
                Err(TryLockError::WouldBlock) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(held_error(&sidecar, io::ErrorKind::TimedOut));
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Locks `path` shared (several shared holders at once, no exclusive one), waiting as long
    /// as needed.
    pub fn shared(path: impl AsRef<Path>) -> io::Result<Self> {
        let (file, sidecar) = open_sidecar(path.as_ref())?;
        file.lock_shared()?;
        Ok(Self::shared_from(file, sidecar))
    }

    fn shared_from(file: File, sidecar: PathBuf) -> Self {
        // No exclusive holder can exist now: a pid left in the sidecar is that of a holder that
        // died without cleaning up (killed), and must not be blamed for this shared hold.
        let _ = file.set_len(0);
        Self {
            file,
            sidecar,
            exclusive: false,
        }
    }

    /// Locks `path` shared if no exclusive holder has it; otherwise fails at once with kind
    /// `WouldBlock` and a [`LockHeld`].
    pub fn try_shared(path: impl AsRef<Path>) -> io::Result<Self> {
        let (file, sidecar) = open_sidecar(path.as_ref())?;
        match file.try_lock_shared() {
            Ok(()) => Ok(Self::shared_from(file, sidecar)),
            Err(TryLockError::WouldBlock) => Err(held_error(&sidecar, io::ErrorKind::WouldBlock)),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// The sidecar file this lock holds.
    pub fn sidecar(&self) -> &Path {
        &self.sidecar
    }

    /// Whether this is an exclusive lock.
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// The process id recorded in `path`'s sidecar by its exclusive holder, if any. (Meaningful
    /// while the lock is held; a holder clears it when it releases.)
    pub fn holder_pid(path: impl AsRef<Path>) -> Option<u32> {
        read_pid(&sidecar_path(path.as_ref()))
    }

    fn exclusive_from(mut file: File, sidecar: PathBuf) -> io::Result<Self> {
        // Record who holds it. Failing to record is not failing to lock: the pid is a courtesy.
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()));
        Ok(Self {
            file,
            sidecar,
            exclusive: true,
        })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        if self.exclusive {
            // Clear the pid before unlocking, so nobody is told a departed process holds it.
            let _ = self.file.set_len(0);
        }
        let _ = self.file.unlock();
    }
}

/// Reads `path` (or `None` if it does not exist), computes the new content with `update`, and
/// writes it with [`atomic_write`], all while holding `path`'s exclusive [`FileLock`]. If
/// `update` fails, nothing is written.
pub fn update_locked(
    path: impl AsRef<Path>,
    update: impl FnOnce(Option<Vec<u8>>) -> io::Result<Vec<u8>>,
) -> io::Result<()> {
    let path = path.as_ref();
    let _lock = FileLock::exclusive(path)?;
    let current = match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let next = update(current)?;
    atomic_write(path, next)
}

fn sidecar_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

fn open_sidecar(path: &Path) -> io::Result<(File, PathBuf)> {
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a file lock needs a path with a file name",
        ));
    }
    let sidecar = sidecar_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&sidecar)?;
    Ok((file, sidecar))
}

fn read_pid(sidecar: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(sidecar).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn held_error(sidecar: &Path, kind: io::ErrorKind) -> io::Error {
    io::Error::new(
        kind,
        LockHeld {
            sidecar: sidecar.to_path_buf(),
            holder_pid: read_pid(sidecar),
        },
    )
}
