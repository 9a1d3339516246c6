//! Membership changes on real member processes on loopback, through `synckit-node admin`:
//!
//! - a member whose disk was replaced is removed, a fresh member is added in its place and
//!   started with `--join`: it catches up (by snapshot), becomes a voter, and with one of the
//!   original members killed the cluster still commits;
//! - refusals: an unknown id, an existing id, a bad argument; the CLI asked a follower first
//!   goes on to the leader;
//! - a node that ran alone (no `--cluster`) grows into a cluster in place: restarted as member 1
//!   of a cluster file on its own directory it keeps its log and its one voter, and a member
//!   added with `admin add-node` joins and holds everything written before.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, PASSWORD, run_bounded, wait_until};
use synckit_node::client::{FailoverClient, FailoverOptions, idempotency_key};
use synckit_node::protocol::{ErrorCode, Protocol, Reply, Request};

/// Long enough for an election (1 to 2 s) plus a write's own timeout (5 s), with room.
const SETTLE: Duration = Duration::from_secs(30);
/// The longest one `synckit-node admin` run may take.
const ADMIN: Duration = Duration::from_secs(40);

/// One member's addresses and directory.
#[derive(Clone)]
struct Spec {
    chat: SocketAddr,
    http: SocketAddr,
    raft: SocketAddr,
    data: PathBuf,
}

/// Member processes, each started from a cluster file naming the members it should know.
struct Members {
    dir: tempfile::TempDir,
    specs: BTreeMap<u64, Spec>,
    nodes: BTreeMap<u64, Node>,
}

/// A port below the ephemeral range: no outgoing connection (members dial each other) takes
/// it before its member binds it.
fn free_addr() -> SocketAddr {
    synckit_node::net::reserve_loopback_ports(1).unwrap()[0]
        .local_addr()
        .unwrap()
}

impl Members {
    fn new() -> Members {
        Members {
            dir: common::data_dir(),
            specs: BTreeMap::new(),
            nodes: BTreeMap::new(),
        }
    }

    /// Fresh addresses and a fresh directory for member `id`.
    fn spec(&mut self, id: u64) -> Spec {
        let data = self.dir.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&data).unwrap();
        let spec = Spec {
            chat: free_addr(),
            http: free_addr(),
            raft: free_addr(),
            data,
        };
        self.specs.insert(id, spec.clone());
        spec
    }

    /// A cluster file listing `ids`.
    fn file(&self, ids: &[u64]) -> PathBuf {
        let mut text = String::new();
        for id in ids {
            let spec = &self.specs[id];
            text.push_str(&format!(
                "[[node]]\nid = {id}\nchat_addr = \"{}\"\nhttp_addr = \"{}\"\nraft_addr = \"{}\"\ndata_dir = \"{}\"\n\n",
                spec.chat,
                spec.http,
                spec.raft,
                spec.data.display()
            ));
        }
        let name: Vec<String> = ids.iter().map(u64::to_string).collect();
        let path = self
            .dir
            .path()
            .join(format!("cluster-{}.toml", name.join("-")));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn start(&mut self, id: u64, file: &Path, join: bool) {
        let file = file.display().to_string();
        let id_text = id.to_string();
        // Default snapshot settings (every 500,000 commands or 300 s): the snapshot a joining
        // member needs is the one written when its add-node applies.
        let mut args = vec!["--cluster", &file, "--id", &id_text];
        if join {
            args.push("--join");
        }
        let node = Node::start(&self.specs[&id].data, &args);
        self.nodes.insert(id, node);
    }

    fn kill(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.kill();
        }
    }

    fn chat(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.chat.to_string()).collect()
    }

    fn http_list(&self, ids: &[u64]) -> String {
        let addrs: Vec<String> = ids
            .iter()
            .map(|id| self.specs[id].http.to_string())
            .collect();
        addrs.join(",")
    }

    /// The leader, once a live member says it is one.
    fn wait_for_leader(&self) -> u64 {
        let mut leader = None;
        assert!(
            wait_until(SETTLE, || {
                leader = self
                    .nodes
                    .iter()
                    .find(|(_, node)| node.stats()["raft"]["role"] == "leader")
                    .map(|(id, _)| *id);
                leader.is_some()
            }),
            "no leader among the live members within {SETTLE:?}"
        );
        leader.unwrap()
    }

    /// Waits until every live member reports the same applied index and digest.
    fn wait_converged(&self) -> (u64, String) {
        let mut seen = Vec::new();
        let converged = wait_until(SETTLE, || {
            seen = self
                .nodes
                .values()
                .map(|node| {
                    let stats = node.stats();
                    (
                        stats["applied_index"].as_u64().unwrap(),
                        stats["state_digest"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            seen.windows(2).all(|w| w[0] == w[1])
        });
        assert!(converged, "members did not converge: {seen:?}");
        seen[0].clone()
    }

    /// Waits until every live member's configuration has exactly `voters`.
    fn wait_voters(&self, voters: &[u64]) {
        let mut seen = Vec::new();
        let agreed = wait_until(SETTLE, || {
            seen = self
                .nodes
                .values()
                .map(|node| node.stats()["raft"]["voters"].clone())
                .collect();
            seen.iter().all(|v| *v == serde_json::json!(voters))
        });
        assert!(agreed, "voters are not {voters:?} everywhere: {seen:?}");
    }
}

/// A client of the whole cluster (following `not_leader`, skipping dead members).
fn client(members: &Members) -> FailoverClient {
    let options = FailoverOptions {
        deadline: SETTLE,
        ..FailoverOptions::default()
    };
    FailoverClient::connect_with(&members.chat(), Protocol::Binary, options).unwrap()
}

/// Creates `sink` (if needed) and sends it `count` messages as `writer`, each acknowledged.
fn write(members: &Members, label: &str, count: usize) {
    let mut client = client(members);
    for name in ["writer", "sink"] {
        match client.create_account(name, PASSWORD).unwrap() {
            Ok(_) => {}
            Err(error) if error.code == ErrorCode::UserExists => {}
            Err(error) => panic!("creating {name}: {error:?}"),
        }
    }
    client.login("writer", PASSWORD).unwrap().unwrap();
    for n in 0..count {
        let request = Request::SendMessage {
            to: "sink".into(),
            text: format!("{label}-{n}"),
            key: Some(idempotency_key()),
        };
        match client.call(&request) {
            Ok(Ok(Reply::Sent { .. })) => {}
            other => panic!("{label}-{n} not acknowledged: {other:?}"),
        }
    }
}

/// Runs `synckit-node admin --http LIST ARGS...`: exit code and the JSON line it printed.
fn admin(http: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
    let finished = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_synckit-node"))
            .args(["admin", "--http", http])
            .args(args),
        ADMIN,
    );
    let line = finished.stdout.lines().next().unwrap_or("").to_string();
    let answer = serde_json::from_str(&line).unwrap_or_else(|error| {
        panic!("admin printed no JSON line ({error}): {finished:#?}");
    });
    (
        finished.status.code().unwrap_or(-1),
        answer,
        finished.stderr,
    )
}

/// `admin add-node id` for `spec` is refused (exit 1) with a message containing `why`.
fn assert_add_refused(http: &str, id: u64, spec: &Spec, why: &str) {
    let args = add_args(id, spec);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, answer, _) = admin(http, &args);
    assert_eq!(code, 1, "{answer}");
    assert!(
        answer["error"]["message"].as_str().unwrap().contains(why),
        "{answer}"
    );
}

fn add_args(id: u64, spec: &Spec) -> Vec<String> {
    vec![
        "add-node".into(),
        id.to_string(),
        "--chat-addr".into(),
        spec.chat.to_string(),
        "--http-addr".into(),
        spec.http.to_string(),
        "--raft-addr".into(),
        spec.raft.to_string(),
        "--data-dir".into(),
        spec.data.display().to_string(),
    ]
}

#[test]
fn a_single_node_grows_into_a_cluster_in_place() {
    let mut members = Members::new();
    let one = members.spec(1);
    members.spec(2);
    // Alone first, on member 1's directory.
    let single = Node::start(&one.data, &[]);
    single.create("writer");
    single.create("sink");
    let mut writer = single.login(Protocol::Binary, "writer");
    for n in 0..2 {
        common::send(&mut writer, "sink", &format!("alone-{n}"));
    }
    drop(writer);
    single.kill();

    // Member 1 of a two-member file: its log's configuration (itself alone) stands until the
    // second member is added.
    let file = members.file(&[1, 2]);
    members.start(1, &file, false);
    members.wait_voters(&[1]);
    assert_eq!(members.wait_for_leader(), 1);
    write(&members, "grown", 3);
    let args = add_args(2, &members.specs[&2]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, answer, stderr) = admin(&members.http_list(&[1]), &args);
    assert_eq!(code, 0, "{answer} {stderr}");
    members.start(2, &file, true);
    members.wait_voters(&[1, 2]);
    members.wait_converged();
    let stored = members.nodes[&2].stats()["messages"]["stored"].clone();
    assert_eq!(
        stored, 5,
        "what was written alone and after, on the new member"
    );
}

#[test]
fn a_member_with_a_replaced_disk_is_removed_and_a_fresh_one_joins() {
    let started = Instant::now();
    let mut members = Members::new();
    for id in 1..=3 {
        members.spec(id);
    }
    let file = members.file(&[1, 2, 3]);
    for id in 1..=3 {
        members.start(id, &file, false);
    }
    members.wait_for_leader();
    write(&members, "before", 30);
    members.wait_converged();

    // Member 3's disk is gone: stop it, wipe its directory.
    members.kill(3);
    std::fs::remove_dir_all(&members.specs[&3].data).unwrap();
    let (code, answer, stderr) = admin(&members.http_list(&[1, 2]), &["remove-node", "3"]);
    assert_eq!(
        (code, &answer),
        (0, &serde_json::json!({"ok": true})),
        "{stderr}"
    );
    members.wait_voters(&[1, 2]);

    // Its replacement: a new id, fresh ports and directory, added, then started with --join.
    let spec = members.spec(4);
    let args = add_args(4, &spec);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, answer, stderr) = admin(&members.http_list(&[1, 2]), &args);
    assert_eq!(
        (code, &answer),
        (0, &serde_json::json!({"ok": true})),
        "{stderr}"
    );
    write(&members, "between", 15);
    let file = members.file(&[1, 2, 4]);
    members.start(4, &file, true);
    members.wait_voters(&[1, 2, 4]);
    let (applied, _) = members.wait_converged();
    assert!(applied > 45, "applied index {applied}");

    // Writes go on, with the new member applying them too.
    write(&members, "after", 10);
    members.wait_converged();

    // Member 4 is a voter: with one of the original two gone, 4 makes the majority.
    let leader = members.wait_for_leader();
    let victim = if leader == 4 { 1 } else { leader };
    members.kill(victim);
    members.wait_for_leader();
    write(&members, "without", 10);
    let (applied_after, _) = members.wait_converged();
    assert!(applied_after > applied);
    eprintln!("replacement done in {:?}", started.elapsed());
}

#[test]
fn refusals_are_clear_and_a_follower_sends_the_cli_on() {
    let mut members = Members::new();
    for id in 1..=3 {
        members.spec(id);
    }
    let file = members.file(&[1, 2, 3]);
    for id in 1..=3 {
        members.start(id, &file, false);
    }
    let leader = members.wait_for_leader();
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    // A follower answers not_leader, with the leader's chat address, over HTTP.
    let response = common::http_request(
        members.specs[&follower].http,
        "POST",
        "/admin/remove-node?id=9",
    );
    assert_eq!(response.status, 409, "{response:?}");
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body["ok"], false);
    assert_eq!(body["error"]["code"], "not_leader");
    assert_eq!(
        body["error"]["leader"],
        members.specs[&leader].chat.to_string()
    );

    // Bad arguments: 400 without asking raft.
    for target in [
        "/admin/remove-node",
        "/admin/remove-node?id=zero",
        "/admin/add-node?id=5&chat_addr=nowhere",
    ] {
        let response = common::http_request(members.specs[&leader].http, "POST", target);
        assert_eq!(response.status, 400, "{target}: {response:?}");
        let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_argument", "{target}");
    }

    // Through the CLI, the follower listed first: an unknown id is refused by the leader.
    let http = format!(
        "{},{}",
        members.specs[&follower].http, members.specs[&leader].http
    );
    let (code, answer, _) = admin(&http, &["remove-node", "9"]);
    assert_eq!(code, 1, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_argument");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a voter"),
        "{answer}"
    );

    // An existing id.
    let spec = members.spec(7);
    assert_add_refused(&http, 2, &spec, "already a voter");

    // An address a voter already uses.
    let mut clash = spec.clone();
    clash.raft = members.specs[&leader].raft;
    assert_add_refused(&http, 7, &clash, "both use");

    // Nothing reachable: exit 2.
    let dead = common::dead_addr().to_string();
    let finished = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_synckit-node")).args([
            "admin",
            "--http",
            &dead,
            "--timeout-secs",
            "1",
            "remove-node",
            "3",
        ]),
        ADMIN,
    );
    assert_eq!(finished.status.code(), Some(2), "{finished:#?}");

    // The leader removes itself: the change is applied, and another member leads.
    let (code, answer, stderr) = admin(&http, &["remove-node", &leader.to_string()]);
    assert_eq!(
        (code, &answer),
        (0, &serde_json::json!({"ok": true})),
        "{stderr}"
    );
    members.kill(leader);
    let new_leader = members.wait_for_leader();
    assert_ne!(new_leader, leader);
    members.wait_voters(&(1..=3).filter(|id| *id != leader).collect::<Vec<_>>());
    write(&members, "after-leader-removed", 5);
    members.wait_converged();
}
