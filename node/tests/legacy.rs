//! A data directory written before the log-first core (format 1: JSON snapshot, JSON log
//! records) is brought forward at start: every account and message it held is there, delivered
//! ones stay delivered, new message ids keep increasing, the old segments are kept aside, and a
//! migration interrupted after its snapshot finishes at the next start.
//!
//! So is one written by the single-node log before raft (format 2: `wal-*.log` next to a
//! format-2 snapshot): its state is recovered, raft's log starts where it ends, the segments are
//! kept aside in `legacy-format-2/`, and a migration interrupted at any step finishes.

mod common;

use std::path::Path;

use common::{Node, PASSWORD, data_dir, read_all, send};
use serde_json::json;
use synckit_node::hasher::Hasher;
use synckit_node::log::legacy::{self, LEGACY_WAL_DIR};
use synckit_node::log::segments::{Entry, encode};
use synckit_node::log::snapshot;
use synckit_node::protocol::Protocol;
use synckit_node::state::{Account, Command, Image};

/// A format-1 record: `[length u32 LE][crc32 u32 LE][JSON]`.
fn record(entry: serde_json::Value) -> Vec<u8> {
    let payload = serde_json::to_vec(&entry).unwrap();
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// What a format-1 node left: alice and bob in the snapshot (bob with message 1, delivered),
/// then in the log: message 2 to bob, carol created, message 3 to carol, message 1 deleted...
/// (ids are the old node's own counter, sequence numbers the log's).
fn write_format_1(dir: &Path) {
    let hash = Hasher::start(1).unwrap().hash(PASSWORD.into()).unwrap();
    let account = json!({ "password_hash": hash, "created": 1 });
    let snapshot = json!({
        "format": 1,
        "seq": 3,
        "next_message_id": 2,
        "accounts": { "alice": account, "bob": account },
        "mailboxes": { "bob": [[{"id": 1, "from": "alice", "to": "bob", "timestamp": 5, "text": "old and read"}, true]] },
    });
    std::fs::write(
        dir.join("snapshot.json"),
        serde_json::to_vec(&snapshot).unwrap(),
    )
    .unwrap();
    let mut log = Vec::new();
    for entry in [
        json!({"seq": 4, "record": {"type": "message", "id": 2, "from": "alice", "to": "bob", "timestamp": 6, "text": "old, unread"}}),
        json!({"seq": 5, "record": {"type": "create_account", "username": "carol", "password_hash": hash, "created": 7}}),
        json!({"seq": 6, "record": {"type": "message", "id": 3, "from": "bob", "to": "carol", "timestamp": 8, "text": "for carol"}}),
        json!({"seq": 7, "record": {"type": "message", "id": 4, "from": "bob", "to": "carol", "timestamp": 9, "text": "deleted"}}),
        json!({"seq": 8, "record": {"type": "delete_messages", "user": "carol", "ids": [4]}}),
        json!({"seq": 9, "record": {"type": "delivered", "user": "bob", "ids": [1]}}),
    ] {
        log.extend(record(entry));
    }
    std::fs::write(dir.join("wal-00000000000000000004.log"), log).unwrap();
}

#[test]
fn a_format_1_data_directory_is_brought_forward() {
    let dir = data_dir();
    write_format_1(dir.path());
    let node = Node::start(dir.path(), &[]);
    assert!(
        dir.path()
            .join("legacy-format-1/wal-00000000000000000004.log")
            .exists(),
        "the old segment is kept aside"
    );
    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("snapshot.json")).unwrap()).unwrap();
    assert_eq!(snapshot["format"], 2);

    let mut bob = node.login(Protocol::Binary, "bob");
    let unread: Vec<(u64, String)> = read_all(&mut bob)
        .into_iter()
        .map(|m| (m.id, m.text))
        .collect();
    assert_eq!(unread, vec![(2, "old, unread".to_string())]);
    let mut alice = node.login(Protocol::Binary, "alice");
    let new = send(&mut alice, "carol", "new");
    assert!(new > 9, "new ids follow every old one: {new}");
    let mut carol = node.login(Protocol::Json, "carol");
    let texts: Vec<String> = read_all(&mut carol).into_iter().map(|m| m.text).collect();
    assert_eq!(texts, vec!["for carol", "new"]);
    let digest = node.stats()["state_digest"].clone();
    drop((bob, carol, alice));
    node.kill();

    // Started again: nothing to bring forward, the same state.
    let node = Node::start(dir.path(), &[]);
    assert_eq!(node.stats()["state_digest"], digest);
}

#[test]
fn a_migration_stopped_after_its_snapshot_finishes_at_the_next_start() {
    let dir = data_dir();
    write_format_1(dir.path());
    // What a crash between the new snapshot and moving the old segments leaves.
    let applied = synckit_node::log::legacy::migrate(dir.path()).unwrap();
    assert_eq!(applied, Some(9));
    let aside = dir
        .path()
        .join("legacy-format-1/wal-00000000000000000004.log");
    std::fs::rename(&aside, dir.path().join("wal-00000000000000000004.log")).unwrap();

    let node = Node::start(dir.path(), &[]);
    assert!(aside.exists(), "moved aside at start");
    let mut bob = node.login(Protocol::Binary, "bob");
    assert_eq!(read_all(&mut bob).len(), 1);
}

const WAL_SEGMENT: &str = "wal-00000000000000000001.log";

fn send_command(index: u64, from: &str, to: &str, text: &str) -> Entry {
    Entry {
        index,
        command: Command::SendMessage {
            from: from.into(),
            to: to.into(),
            text: text.into(),
            timestamp: 100 + index,
            key: None,
        },
    }
}

/// What the single-node log left: alice and bob in a snapshot at index 2, then in the log
/// (whose first records the snapshot covers): message 3 to bob, carol created at 4, message 5
/// to carol, message 3 delivered at 6, and a record torn by a crash.
fn write_format_2(dir: &Path) {
    let hash = Hasher::start(1).unwrap().hash(PASSWORD.into()).unwrap();
    let account = Account {
        password_hash: hash.clone(),
        created: 1,
    };
    let image = Image {
        applied: 2,
        accounts: [("alice".into(), account.clone()), ("bob".into(), account)].into(),
        ..Image::default()
    };
    snapshot::save(dir, image).unwrap();
    let create = |index: u64, username: &str| Entry {
        index,
        command: Command::CreateAccount {
            username: username.into(),
            password_hash: hash.clone(),
            created: 1,
        },
    };
    let mut log = Vec::new();
    for entry in [
        create(1, "alice"),
        create(2, "bob"),
        send_command(3, "alice", "bob", "old, read"),
        create(4, "carol"),
        send_command(5, "bob", "carol", "old, for carol"),
        Entry {
            index: 6,
            command: Command::MarkDelivered {
                marks: vec![("bob".into(), vec![3])],
            },
        },
    ] {
        log.extend(encode(&entry));
    }
    let torn = encode(&send_command(7, "alice", "bob", "never acknowledged"));
    log.extend(&torn[..torn.len() / 2]);
    std::fs::write(dir.join(WAL_SEGMENT), log).unwrap();
}

/// The state of a format-2 directory brought forward, on a running node.
fn check_format_2(node: &Node) {
    let mut carol = node.login(Protocol::Binary, "carol");
    let texts: Vec<(u64, String)> = read_all(&mut carol)
        .into_iter()
        .map(|m| (m.id, m.text))
        .collect();
    assert_eq!(texts, vec![(5, "old, for carol".to_string())]);
    let mut alice = node.login(Protocol::Binary, "alice");
    let new = send(&mut alice, "bob", "new");
    assert!(new > 6, "new ids follow every old one: {new}");
    // Message 3 stays delivered; the torn record was never there.
    let mut bob = node.login(Protocol::Json, "bob");
    let ids: Vec<u64> = read_all(&mut bob).into_iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![new]);
    let raft = &node.stats()["raft"];
    assert_eq!(raft["role"], "leader", "{raft}");
}

#[test]
fn a_format_2_data_directory_is_brought_forward_into_raft() {
    let dir = data_dir();
    write_format_2(dir.path());
    let node = Node::start(dir.path(), &[]);
    assert!(
        dir.path().join(LEGACY_WAL_DIR).join(WAL_SEGMENT).exists(),
        "the old segment is kept aside"
    );
    assert!(!dir.path().join(WAL_SEGMENT).exists());
    assert!(dir.path().join("raft").is_dir(), "raft's log");
    check_format_2(&node);
    let digest = node.stats()["state_digest"].clone();
    node.kill();

    // Started again: nothing to bring forward, the same state.
    let node = Node::start(dir.path(), &[]);
    assert_eq!(node.stats()["state_digest"], digest);
}

/// A crash at any step of the migration (after the snapshot, during or after raft's storage is
/// set up, while the segments are moved) leaves what these simulate; the next start finishes.
#[test]
fn an_interrupted_format_2_migration_finishes_at_the_next_start() {
    type Interrupt = fn(&Path);
    let aside = |dir: &Path| dir.join(LEGACY_WAL_DIR).join(WAL_SEGMENT);
    let steps: [(&str, Interrupt); 3] = [
        // Raft's storage set up, the segment not moved yet.
        ("before the move", |dir| {
            let aside = dir.join(LEGACY_WAL_DIR).join(WAL_SEGMENT);
            std::fs::rename(aside, dir.join(WAL_SEGMENT)).unwrap();
        }),
        // The snapshot written, raft's storage not yet.
        ("before raft's storage", |dir| {
            std::fs::remove_dir_all(dir.join("raft")).unwrap();
            let aside = dir.join(LEGACY_WAL_DIR).join(WAL_SEGMENT);
            std::fs::rename(aside, dir.join(WAL_SEGMENT)).unwrap();
        }),
        // Raft's storage created but still empty.
        ("while raft's storage is set up", |dir| {
            std::fs::remove_dir_all(dir.join("raft")).unwrap();
            let conf = raft::prelude::ConfState::from((vec![1], vec![]));
            drop(synckit_node::raft::storage::DiskStorage::open(&dir.join("raft"), conf).unwrap());
            let aside = dir.join(LEGACY_WAL_DIR).join(WAL_SEGMENT);
            std::fs::rename(aside, dir.join(WAL_SEGMENT)).unwrap();
        }),
    ];
    for (step, interrupt) in steps {
        let dir = data_dir();
        write_format_2(dir.path());
        assert_eq!(legacy::migrate_wal(dir.path()).unwrap(), Some(6), "{step}");
        interrupt(dir.path());
        let node = Node::start(dir.path(), &[]);
        assert!(aside(dir.path()).exists(), "{step}: moved aside at start");
        assert!(!dir.path().join(WAL_SEGMENT).exists(), "{step}");
        check_format_2(&node);
        node.kill();
    }
}

/// A cluster member is not started on a single node's log (its changes would be ignored).
#[test]
fn a_cluster_member_refuses_a_single_nodes_log() {
    let dir = data_dir();
    write_format_2(dir.path());
    let error = legacy::refuse_wal(dir.path()).unwrap_err();
    assert!(error.contains(WAL_SEGMENT), "{error}");
    assert!(error.contains("without --cluster"), "{error}");
    assert_eq!(legacy::migrate_wal(dir.path()).unwrap(), Some(6));
    legacy::refuse_wal(dir.path()).unwrap();
}
