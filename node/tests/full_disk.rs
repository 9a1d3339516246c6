//! A full disk, for real: the node's data directory on a small tmpfs that the test fills up.
//! Requests whose log records cannot be written get a clear `internal` error and are not
//! acknowledged; the node keeps serving; once space is back it accepts writes again; and after a
//! `kill -9` and a restart every acknowledged message is there exactly once, and no refused one.
//!
//! Mounting needs root (as CI runs); elsewhere the test says so and does nothing.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Node, PASSWORD, PROMPT, data_dir, read_all, send, wait_until};
use synckit_node::protocol::Protocol;
use synckit_node::protocol::{ErrorCode, Reply, Request};

/// A tmpfs of `size` mounted at `at` for the life of the value.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then(|| SmallDisk {
            at: at.to_path_buf(),
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a node still being torn down must not keep the mount (and the test) alive.
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// Fills the file system holding `path` completely; returns the filler file.
fn fill(path: &Path) -> File {
    let mut filler = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut small = false;
    loop {
        let piece: &[u8] = if small { &chunk[..512] } else { &chunk };
        match filler.write_all(piece) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::StorageFull && !small => small = true,
            Err(e) if e.kind() == ErrorKind::StorageFull => return filler,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
}

/// Snapshots (a new log segment, `atomic_write` of the whole state, old segments deleted) every
/// few records: one is attempted while the disk is full, and recovery after the restart goes
/// through a snapshot and the log after it.
const ARGS: [&str; 2] = ["--snapshot-every-records", "3"];

#[test]
fn a_full_disk_refuses_writes_cleanly_and_loses_nothing_acknowledged() {
    let dir = data_dir();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = disk.at.join("data");
    let node = Node::start(&data, &ARGS);
    node.create("bob");
    let mut alice = node.user(Protocol::Binary, "alice");
    let mut acknowledged = vec![send(&mut alice, "bob", "before the disk filled")];
    assert!(
        wait_until(PROMPT, || data.join("snapshot.json").exists()),
        "a first snapshot"
    );

    let filler_path = disk.at.join("filler");
    let filler = fill(&filler_path);
    // Records larger than a page: the first failing batch is written in part, then cut off.
    let big = "x".repeat(4000);
    let mut refused = 0;
    for i in 0..8 {
        let text = format!("while full {i} {big}");
        match ok_or_err(alice.call(&Request::SendMessage {
            to: "bob".into(),
            text,
            key: None,
        })) {
            Ok(Reply::Sent { id, .. }) => acknowledged.push(id),
            Ok(other) => panic!("send answered {other:?}"),
            Err(error) => {
                assert_eq!(error.code, ErrorCode::Internal, "{error:?}");
                assert!(error.message.contains("storage"), "{error:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "a full disk refused nothing");
    // Use up what is left of the log's last page with small messages until one is refused too.
    let mut tiny_refused = false;
    for i in 0..200 {
        match ok_or_err(alice.call(&Request::SendMessage {
            to: "bob".into(),
            text: format!("tiny {i}"),
            key: None,
        })) {
            Ok(Reply::Sent { id, .. }) => acknowledged.push(id),
            Ok(other) => panic!("send answered {other:?}"),
            Err(error) => {
                assert_eq!(error.code, ErrorCode::Internal, "{error:?}");
                tiny_refused = true;
                break;
            }
        }
    }
    assert!(tiny_refused, "the last page never filled");
    // An account whose creation could not be logged does not exist, in memory either.
    let mut carol = node.connect(Protocol::Binary);
    let refused_account = ok_or_err(carol.create_account("carol", PASSWORD)).unwrap_err();
    assert_eq!(
        refused_account.code,
        ErrorCode::Internal,
        "{refused_account:?}"
    );
    let login = ok_or_err(carol.login("carol", PASSWORD)).unwrap_err();
    assert_eq!(login.code, ErrorCode::AuthFailed, "{login:?}");
    assert!(
        wait_until(PROMPT, || node.stderr().contains("snapshot failed")),
        "a snapshot was attempted on the full disk (and failed):\n{}",
        node.stderr()
    );
    // Still serving: statistics, and a new connection that only reads.
    assert_eq!(node.get("/health").status, 200);
    node.assert_running();

    // Space is back: writes are accepted again, after the refused ones.
    drop(filler);
    fs::remove_file(&filler_path).unwrap();
    for i in 0..3 {
        acknowledged.push(send(
            &mut alice,
            "bob",
            &format!("after space came back {i}"),
        ));
    }
    // The refused account can be created now (its name was not left taken).
    ok_or_err(carol.create_account("carol", PASSWORD)).expect("carol, once there is space");
    drop(alice);
    drop(carol);
    let (_, log) = node.kill_and_collect();
    assert!(
        log.contains("No space left on device") || log.contains("os error 28"),
        "the node logged why the writes failed:\n{log}"
    );

    // Every acknowledged message, once; nothing that was refused.
    let node = Node::start(&data, &ARGS);
    drop(node.login(Protocol::Binary, "carol"));
    let mut bob = node.login(Protocol::Binary, "bob");
    let ids: Vec<u64> = read_all(&mut bob).into_iter().map(|m| m.id).collect();
    assert_eq!(
        ids, acknowledged,
        "after a restart: exactly the acknowledged messages"
    );
    drop(bob);
    node.kill();
}

fn ok_or_err(
    result: std::io::Result<Result<Reply, synckit_node::protocol::ErrorReply>>,
) -> Result<Reply, synckit_node::protocol::ErrorReply> {
    result.expect("the node answers")
}
