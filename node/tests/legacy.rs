//! A data directory written before the log-first core (format 1: JSON snapshot, JSON log
//! records) is brought forward at start: every account and message it held is there, delivered
//! ones stay delivered, new message ids keep increasing, the old segments are kept aside, and a
//! migration interrupted after its snapshot finishes at the next start.

mod common;

use std::path::Path;

use common::{Node, PASSWORD, data_dir, read_all, send};
use serde_json::json;
use synckit_node::hasher::Hasher;
use synckit_node::protocol::Protocol;

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
