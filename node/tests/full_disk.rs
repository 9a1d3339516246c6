//! A full disk, for real: the node's data directory on a small tmpfs that the test fills up.
//! Requests whose log records cannot be written get a clear `internal` error and are not
//! acknowledged; the node keeps serving; once space is back it accepts writes again; and after a
//! `kill -9` and a restart every acknowledged message is there exactly once, and no refused one.
//!
//! A cluster member whose disk fills stays in the cluster: the others go on, and it catches up
//! once space is back.
//!
//! Mounting needs root (as CI runs); elsewhere the tests say so and do nothing.

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
    // The log may still hold up to 1 MiB of zeros written ahead of its last record (when no
    // snapshot rolled it to a new segment since the disk filled): sent until a few are refused,
    // at most a little more than that space.
    let big = "x".repeat(4000);
    let mut refused = 0;
    for i in 0..320 {
        if refused == 3 {
            break;
        }
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

/// Three members, the third on a small tmpfs that fills: its raft loop keeps its unwritten Ready
/// and retries instead of leaving; the other two elect a leader between them and go on; once
/// space is back the third writes what it held, catches up, and every member shows the same
/// state at the same index.
#[test]
fn a_member_whose_disk_fills_stays_and_catches_up() {
    let dir = data_dir();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "8m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let three = ThreeMembers::write(dir.path(), &disk.at, &[]);
    let (members, leader) = three.start_with_follower_3();
    let mut leader = Some(leader);
    let before_fill = &members[leader.unwrap() - 1];
    before_fill.create("bob");
    drop(before_fill.user(Protocol::Binary, "alice"));

    let filler_path = disk.at.join("filler");
    let filler = fill(&filler_path);
    // Members 1 and 2 are a majority: they have (or elect) a leader between them and go on.
    assert!(
        wait_until(PROMPT * 3, || {
            leader = leader_among(&members, &[1, 2]);
            leader.is_some()
        }),
        "no leader among the members with space"
    );
    let leader = &members[leader.unwrap() - 1];
    let mut alice = leader.login(Protocol::Binary, "alice");
    let big = "x".repeat(4000);
    let mut acknowledged = Vec::new();
    // The third member's log goes on inside the space it wrote ahead (1 MiB of zeros after its
    // last record) until that is used up: send until its writes fail, 2 MiB at most.
    for i in 0..512 {
        acknowledged.push(send(
            &mut alice,
            "bob",
            &format!("while 3 is full {i} {big}"),
        ));
        if i >= 10
            && members[2]
                .stderr()
                .contains("raft's log could not be written")
        {
            break;
        }
    }
    // The third member is still running, serving its HTTP endpoint, and has not left.
    assert_eq!(members[2].get("/health").status, 200);
    stays_after_logging(&members[2], "raft's log could not be written");

    drop(filler);
    fs::remove_file(&filler_path).unwrap();
    acknowledged.push(send(&mut alice, "bob", "after space came back"));
    drop(alice);
    converge_and_read_on_3(members, &acknowledged);
}

/// Three members, the third cut off while the others write enough for the leader to compact
/// its log behind a snapshot, then given back with too little space for that snapshot: it logs
/// that the leader's snapshot could not be installed and stays (raft restarts from its durable
/// log and waits for the snapshot again); once space is back it installs it and catches up.
#[test]
fn a_member_that_cannot_write_the_leaders_snapshot_stays_and_installs_it_later() {
    let dir = data_dir();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "8m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let args = ["--test-hooks", "--snapshot-every-records", "10"];
    let three = ThreeMembers::write(dir.path(), &disk.at, &args);
    let (members, leader) = three.start_with_follower_3();
    let leader = &members[leader - 1];
    leader.create("bob");
    let mut alice = leader.user(Protocol::Binary, "alice");
    let cut = |peers: &str| {
        let path = format!("/test/isolate?peers={peers}");
        let response = common::http_request(members[2].http, "POST", &path);
        assert_eq!(response.status, 200, "{response:?}");
    };
    cut("1,2");
    // Enough for a snapshot of some 200 KB that the leader's log is compacted behind.
    let big = "x".repeat(4000);
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        acknowledged.push(send(
            &mut alice,
            "bob",
            &format!("while 3 is cut {i} {big}"),
        ));
    }
    // Room for small writes, not for the snapshot.
    let filler_path = disk.at.join("filler");
    let filler = fill(&filler_path);
    let full = filler.metadata().unwrap().len();
    filler.set_len(full - 64 * 1024).unwrap();
    cut("");
    stays_after_logging(&members[2], "the leader's snapshot could not be installed");
    drop(filler);
    fs::remove_file(&filler_path).unwrap();
    acknowledged.push(send(&mut alice, "bob", "after space came back"));
    drop(alice);
    converge_and_read_on_3(members, &acknowledged);
}

/// Waits until `member` logs `line`, then checks it is still running and still in the cluster.
fn stays_after_logging(member: &Node, line: &str) {
    assert!(
        wait_until(PROMPT * 3, || member.stderr().contains(line)),
        "the member did not log {line:?}:\n{}",
        member.stderr()
    );
    member.assert_running();
    assert!(
        !member.stderr().contains("raft stopped on this member"),
        "{}",
        member.stderr()
    );
}

/// Waits until the three members show the same state at the same index, then reads bob's
/// mailbox on member 3: every acknowledged message, once, in order. Kills the members.
fn converge_and_read_on_3(members: Vec<Node>, acknowledged: &[u64]) {
    let mut seen = Vec::new();
    let converged = wait_until(PROMPT * 3, || {
        seen = members
            .iter()
            .map(|node| {
                let stats = node.stats();
                (
                    stats["applied_index"].clone(),
                    stats["state_digest"].clone(),
                )
            })
            .collect();
        seen.windows(2).all(|w| w[0] == w[1])
    });
    assert!(converged, "the members did not converge: {seen:?}");
    let mut bob = members[2].login(Protocol::Binary, "bob");
    let ids: Vec<u64> = read_all(&mut bob).into_iter().map(|m| m.id).collect();
    assert_eq!(ids, acknowledged);
    for node in members {
        node.kill();
    }
}

/// Three members in one cluster file, the third's data directory on `disk`.
struct ThreeMembers {
    data: Vec<PathBuf>,
    file: String,
    args: Vec<String>,
}

impl ThreeMembers {
    fn write(dir: &Path, disk: &Path, args: &[&str]) -> ThreeMembers {
        let data: Vec<PathBuf> = vec![dir.join("node-1"), dir.join("node-2"), disk.join("node-3")];
        let (file, _) = common::write_cluster_file(dir, &data);
        ThreeMembers {
            data,
            file: file.display().to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn start(&self, id: usize) -> Node {
        let id_text = id.to_string();
        let mut args = vec!["--cluster", &self.file, "--id", &id_text];
        args.extend(self.args.iter().map(String::as_str));
        Node::start(&self.data[id - 1], &args)
    }

    /// All three running, and a leader among members 1 and 2 (member 3, the one on the small
    /// disk, restarted as a follower if it led): the members and the leader's id.
    fn start_with_follower_3(&self) -> (Vec<Node>, usize) {
        let mut members: Vec<Node> = (1..=3).map(|id| self.start(id)).collect();
        let mut leader = None;
        assert!(wait_until(PROMPT * 3, || {
            leader = leader_among(&members, &[1, 2, 3]);
            leader.is_some()
        }));
        if leader == Some(3) {
            // Restarted, it rejoins as a follower (pre-vote).
            members.pop().unwrap().kill();
            assert!(wait_until(PROMPT * 3, || {
                leader = leader_among(&members, &[1, 2]);
                leader.is_some()
            }));
            members.push(self.start(3));
        }
        (members, leader.unwrap())
    }
}

/// The first of `ids` whose member says it is the leader.
fn leader_among(members: &[Node], ids: &[usize]) -> Option<usize> {
    ids.iter()
        .copied()
        .find(|&id| members[id - 1].stats()["raft"]["role"] == "leader")
}
