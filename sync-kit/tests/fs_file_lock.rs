//! `FileLock` between real processes (this test binary re-executed as the other process):
//! refusal naming the holder's pid, timeouts, a blocked `exclusive` woken by the release, shared
//! locks, release on process death, a lock surviving `atomic_write` of its file, and
//! `update_locked` read-modify-write from threads and processes.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use sync_kit::fs::{FileLock, LockHeld, atomic_write, update_locked};

mod common;
use common::bounded;

const CHILD_PATH_ENV: &str = "SYNC_KIT_TEST_FILE_LOCK_CHILD_PATH";
const CHILD_MODE_ENV: &str = "SYNC_KIT_TEST_FILE_LOCK_CHILD_MODE";
const CHILD_TEST: &str = "file_lock_child";
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The other process. Modes: `exclusive` / `shared` (lock, print "locked", wait for a line on
/// stdin, unlock, print "released"), `increment:N` (N `update_locked` increments, then print
/// "incremented"). Does nothing unless started by one of the tests below.
#[test]
fn file_lock_child() {
    let (Some(path), Some(mode)) = (
        std::env::var_os(CHILD_PATH_ENV),
        std::env::var(CHILD_MODE_ENV).ok(),
    ) else {
        return;
    };
    let path = PathBuf::from(path);
    let mut out = io::stdout().lock();
    // The harness printed "test file_lock_child ... " without a newline: start a fresh line.
    writeln!(out).unwrap();
    match mode.as_str() {
        "exclusive" | "shared" => {
            let lock = if mode == "exclusive" {
                FileLock::exclusive(&path).unwrap()
            } else {
                FileLock::shared(&path).unwrap()
            };
            writeln!(out, "locked").unwrap();
            out.flush().unwrap();
            let mut line = String::new();
            io::stdin().read_line(&mut line).unwrap();
            drop(lock);
            writeln!(out, "released").unwrap();
        }
        other => {
            let n: u32 = other
                .strip_prefix("increment:")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unknown child mode {other:?}"));
            for _ in 0..n {
                update_locked(&path, increment).unwrap();
            }
            writeln!(out, "incremented").unwrap();
        }
    }
    out.flush().unwrap();
}

struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Peer {
    fn spawn(path: &Path, mode: &str) -> Peer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_PATH_ENV, path)
            .env(CHILD_MODE_ENV, mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Peer {
            child,
            stdin,
            lines,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line that is exactly `what`.
    fn expect(&self, what: &str) {
        let deadline = Instant::now() + MESSAGE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.trim() == what => return,
                Ok(_) => {}
                Err(e) => panic!("child {} never printed {what:?} ({e})", self.pid()),
            }
        }
    }

    /// Tells an `exclusive`/`shared` child to release its lock.
    fn release(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(b"release\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for a clean exit (bounded).
    fn finish(mut self) {
        drop(self.stdin.take());
        let pid = self.pid();
        let mut child = self.child;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(MESSAGE_TIMEOUT) {
            Ok(status) => {
                let status = status.unwrap();
                assert!(status.success(), "child {pid} failed: {status:?}");
            }
            Err(e) => panic!("child {pid} did not exit ({e})"),
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn held_payload(err: &io::Error) -> &LockHeld {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<LockHeld>())
        .unwrap_or_else(|| panic!("the error carries a LockHeld: {err:?}"))
}

fn sidecar_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

fn increment(old: Option<Vec<u8>>) -> io::Result<Vec<u8>> {
    let n: u64 = match old {
        None => 0,
        Some(bytes) => String::from_utf8(bytes)
            .map_err(io::Error::other)?
            .trim()
            .parse()
            .map_err(io::Error::other)?,
    };
    Ok((n + 1).to_string().into_bytes())
}

fn read_counter(path: &Path) -> u64 {
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[test]
fn exclusive_lock_across_processes() {
    bounded("exclusive across processes", || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.txt");
        let mut peer = Peer::spawn(&path, "exclusive");
        peer.expect("locked");
        let pid = peer.pid();

        // Refused at once, naming the holder.
        let err = FileLock::try_exclusive(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        let held = held_payload(&err);
        assert_eq!(held.holder_pid, Some(pid));
        assert_eq!(held.sidecar, sidecar_of(&path));
        assert!(err.to_string().contains(&pid.to_string()), "{err}");
        assert!(
            held.to_string().contains(&format!("by process {pid}")),
            "{held}"
        );
        assert_eq!(FileLock::holder_pid(&path), Some(pid));

        let err = FileLock::try_shared(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        assert_eq!(held_payload(&err).holder_pid, Some(pid));

        // Timed out after (at least) the timeout.
        let start = Instant::now();
        let err = FileLock::exclusive_timeout(&path, Duration::from_millis(100)).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert_eq!(held_payload(&err).holder_pid, Some(pid));

        // A blocking `exclusive` in another thread returns only after the release was sent.
        let release_sent = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let (path, release_sent) = (path.clone(), release_sent.clone());
            thread::spawn(move || {
                tx.send("calling").unwrap();
                let lock = FileLock::exclusive(&path).unwrap();
                let after_release = release_sent.load(Ordering::SeqCst);
                tx.send(if after_release {
                    "acquired"
                } else {
                    "acquired early"
                })
                .unwrap();
                lock
            })
        };
        assert_eq!(rx.recv_timeout(MESSAGE_TIMEOUT).unwrap(), "calling");
        // Still blocked while the child holds the lock.
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(300)),
            Err(RecvTimeoutError::Timeout),
            "FileLock::exclusive returned while another process held the lock"
        );
        release_sent.store(true, Ordering::SeqCst);
        peer.release();
        assert_eq!(rx.recv_timeout(MESSAGE_TIMEOUT).unwrap(), "acquired");
        let lock = waiter.join().unwrap();
        peer.expect("released");
        peer.finish();
        assert!(lock.is_exclusive());
        assert_eq!(lock.sidecar(), sidecar_of(&path));
        assert_eq!(FileLock::holder_pid(&path), Some(std::process::id()));
        drop(lock);
        assert_eq!(FileLock::holder_pid(&path), None, "cleared on release");
        FileLock::try_exclusive(&path).expect("free again");
    });
}

#[test]
fn lock_is_released_when_the_holder_process_dies() {
    bounded("release on death", || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let peer = Peer::spawn(&path, "exclusive");
        peer.expect("locked");
        assert!(FileLock::try_exclusive(&path).is_err());
        peer.kill(); // SIGKILL: no destructor runs
        let lock =
            FileLock::try_exclusive(&path).expect("the kernel released the dead holder's lock");
        assert_eq!(FileLock::holder_pid(&path), Some(std::process::id()));
        drop(lock);
    });
}

#[test]
fn a_killed_holders_pid_is_not_reported_while_only_shared_holders_hold_the_lock() {
    bounded("stale pid", || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let peer = Peer::spawn(&path, "exclusive");
        peer.expect("locked");
        let dead = peer.pid();
        peer.kill();
        let _shared = FileLock::shared(&path).unwrap();
        let err = FileLock::try_exclusive(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_ne!(
            held_payload(&err).holder_pid,
            Some(dead),
            "refusal blames dead process {dead}: {err}"
        );
    });
}

#[test]
fn shared_locks_coexist_within_and_across_processes() {
    bounded("shared locks", || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let mut peer = Peer::spawn(&path, "shared");
        peer.expect("locked");
        let mine = FileLock::try_shared(&path).expect("shared with another process");
        let mine_too = FileLock::shared(&path).expect("shared twice in one process");
        assert!(!mine.is_exclusive());

        let err = FileLock::try_exclusive(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(
            held_payload(&err).holder_pid,
            None,
            "shared holders record no pid"
        );
        assert!(err.to_string().contains("another holder"), "{err}");
        let err = FileLock::exclusive_timeout(&path, Duration::from_millis(50)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // The other process lets go; ours still exclude an exclusive locker.
        peer.release();
        peer.expect("released");
        peer.finish();
        assert!(FileLock::try_exclusive(&path).is_err());
        drop(mine);
        assert!(FileLock::try_exclusive(&path).is_err());
        drop(mine_too);
        let exclusive = FileLock::try_exclusive(&path).expect("no holder left");
        let err = FileLock::try_shared(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(held_payload(&err).holder_pid, Some(std::process::id()));
        drop(exclusive);
    });
}

#[test]
fn a_lock_survives_atomic_replacement_of_its_file() {
    bounded("lock across atomic_write", || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        atomic_write(&path, b"v1").unwrap();

        // In one process.
        let lock = FileLock::exclusive(&path).unwrap();
        for i in 0..5 {
            atomic_write(&path, format!("v{}", i + 2)).unwrap();
        }
        let err = FileLock::try_exclusive(&path).unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::WouldBlock,
            "the rename dropped the lock"
        );
        assert_eq!(fs::read(&path).unwrap(), b"v6");
        drop(lock);

        // Across processes.
        let mut peer = Peer::spawn(&path, "exclusive");
        peer.expect("locked");
        atomic_write(&path, b"replaced while locked").unwrap();
        let err = FileLock::try_exclusive(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(held_payload(&err).holder_pid, Some(peer.pid()));
        peer.release();
        peer.expect("released");
        peer.finish();
        FileLock::try_exclusive(&path).expect("free after the release");
    });
}

#[test]
fn locks_in_one_process_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let lock = FileLock::exclusive(&path).unwrap();
    let err = FileLock::try_exclusive(&path).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert_eq!(held_payload(&err).holder_pid, Some(std::process::id()));
    drop(lock);
    assert!(
        sidecar_of(&path).exists(),
        "the sidecar is where the lock lives"
    );
    assert!(!path.exists(), "locking does not create the data file");
    let err = FileLock::exclusive(dir.path().join("..")).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn update_locked_from_many_threads_counts_exactly() {
    bounded("update_locked threads", || {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("counter"));
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..20 {
                        update_locked(&*path, increment).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(read_counter(&path), 160);
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["counter", "counter.lock"], "no temporary file left");
    });
}

#[test]
fn update_locked_from_threads_and_processes_counts_exactly() {
    bounded("update_locked processes", || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter");
        let peers: Vec<Peer> = (0..3).map(|_| Peer::spawn(&path, "increment:25")).collect();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let path = path.clone();
                thread::spawn(move || {
                    for _ in 0..25 {
                        update_locked(&path, increment).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for peer in peers {
            peer.expect("incremented");
            peer.finish();
        }
        assert_eq!(read_counter(&path), 150);
    });
}

#[test]
fn failed_update_writes_nothing_and_releases_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counter");
    update_locked(&path, |old| {
        assert_eq!(old, None, "a missing file reads as None");
        Ok(b"41".to_vec())
    })
    .unwrap();
    let err = update_locked(&path, |old| {
        assert_eq!(old.as_deref(), Some(&b"41"[..]));
        Err(io::Error::other("refused"))
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "refused");
    assert_eq!(fs::read(&path).unwrap(), b"41");
    FileLock::try_exclusive(&path).expect("the lock was released");
    update_locked(&path, increment).unwrap();
    assert_eq!(read_counter(&path), 42);
}
