//! 1,000 concurrent connections to one real node: all open at once, all answered, the node
//! stays healthy and serves newcomers, and it forgets them all once they close.

mod common;

use std::time::Duration;

use common::{Node, PROMPT, data_dir, list, send, wait_until};
use synckit_node::client::Client;
use synckit_node::protocol::{ErrorCode, Reply, Request};
use synckit_node::server::Protocol;

const CONNECTIONS: usize = 1000;

/// The soft limit on open files of this process (which the node inherits).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

#[test]
fn a_thousand_concurrent_connections_are_all_served() {
    // This process holds one end of each connection and the node the other: ~1,000 files
    // each, plus pipes and the like.
    match open_files_limit() {
        Some(limit) if limit < 2100 => {
            eprintln!(
                "SKIPPED: the open-files limit is {limit}, below the ~2,100 this test needs \
                 (raise it with `ulimit -n 4096`)"
            );
            return;
        }
        None => eprintln!("cannot read /proc/self/limits; trying anyway"),
        Some(_) => {}
    }
    let dir = data_dir();
    let node = Node::start(
        dir.path(),
        &[
            "--max-connections",
            "2000",
            "--requests-per-sec",
            "1000000",
            "--request-burst",
            "1000000",
        ],
    );
    // One shared account, for a few logged-in connections among the thousand.
    let mut shared = node.user(Protocol::Binary, "shared");

    let mut clients: Vec<Client> = (0..CONNECTIONS)
        .map(|i| {
            Client::connect(node.chat, Protocol::Binary)
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    // Every connection asks at once (pipelined across connections), then all answers are read
    // while every connection is still open.
    let ids: Vec<u32> = clients
        .iter_mut()
        .map(|c| c.send(&Request::ReadMessages { limit: 1 }).unwrap())
        .collect();
    for (i, (client, id)) in clients.iter_mut().zip(&ids).enumerate() {
        match client.wait_for(*id) {
            Ok(Err(e)) if e.code == ErrorCode::NotLoggedIn => {}
            other => panic!("connection {i}: {other:?}"),
        }
    }
    // The node counts them all, and answers HTTP and newcomers meanwhile.
    let stats = node.stats();
    assert_eq!(
        stats["connections"].as_u64().unwrap(),
        CONNECTIONS as u64 + 1,
        "every connection is registered"
    );
    assert_eq!(node.get("/health").status, 200);
    for c in clients.iter_mut().step_by(250) {
        assert_eq!(
            common::ok(c.login("shared", common::PASSWORD)),
            Reply::LoggedIn { unread: 0 }
        );
        assert_eq!(list(c, "*", 10, None).0, ["shared"]);
    }
    let mut newcomer = node.user(Protocol::Json, "newcomer");
    send(&mut newcomer, "shared", "through the crowd");
    // The shared account is live on five connections: each gets the push.
    assert_eq!(
        shared.next_push(Some(PROMPT)).unwrap().unwrap().text,
        "through the crowd"
    );
    for c in clients.iter_mut().step_by(250) {
        assert_eq!(
            c.next_push(Some(PROMPT)).unwrap().unwrap().text,
            "through the crowd"
        );
    }
    // A second round on every connection: all still usable.
    let ids: Vec<u32> = clients
        .iter_mut()
        .map(|c| c.send(&Request::Logout).unwrap())
        .collect();
    for (i, (client, id)) in clients.iter_mut().zip(&ids).enumerate() {
        match client.wait_for(*id) {
            Ok(Ok(Reply::Done {})) => {}
            other => panic!("connection {i}, second round: {other:?}"),
        }
    }
    node.assert_running();

    // All close: the node forgets them.
    drop(clients);
    assert!(
        wait_until(Duration::from_secs(30), || node.stats()["connections"] == 2),
        "connections after closing: {}",
        node.stats()["connections"]
    );
    send(&mut newcomer, "shared", "after the crowd");
    assert_eq!(
        shared.next_push(Some(PROMPT)).unwrap().unwrap().text,
        "after the crowd"
    );
    assert_eq!(node.get("/health").status, 200);
    node.assert_running();
}
