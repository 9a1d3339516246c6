//! 1,000 concurrent connections to one real node: all open at once, all answered, the node
//! stays healthy and serves newcomers, and it forgets them all once they close. The node raises
//! its own soft open-files limit so that such a crowd does not depend on the shell's.

mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::{Node, PROMPT, data_dir, list, send, wait_until};
use synckit_node::client::Client;
use synckit_node::protocol::Protocol;
use synckit_node::protocol::{ErrorCode, Reply, Request};

const CONNECTIONS: usize = 1000;

/// Open-file descriptors per connection: three in the node (the socket, a clone for its reader,
/// one for its writer thread), two in this process (a client's reader and writer).
const NODE_FILES: u64 = 3;
/// Pipes, listeners, log files and the like, on either side.
const SPARE_FILES: u64 = 200;

/// The (soft, hard) limits on open files of process `pid` ("self" for this one).
fn open_files_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-files line in {limits}"));
    let number = |text: &str| match text {
        "unlimited" => u64::MAX,
        text => text.parse().unwrap_or_else(|_| panic!("{line:?}")),
    };
    let mut fields = line.split_whitespace().skip(3);
    let soft = number(fields.next().expect("soft limit"));
    let hard = number(fields.next().expect("hard limit"));
    (soft, hard)
}

#[test]
fn a_thousand_concurrent_connections_are_all_served() {
    // This process holds one end of each connection and the node the other. Both raise their
    // soft limit to the hard one (the node does it itself at start), so only a hard limit too
    // low for the node stops the test.
    let needed = NODE_FILES * CONNECTIONS as u64 + SPARE_FILES;
    synckit_node::cli::raise_open_files_limit();
    let (soft, hard) = open_files_limits("self");
    if soft < needed {
        eprintln!(
            "SKIPPED: the hard open-files limit is {hard} (soft {soft}), below the {needed} \
             this test needs; raise it (as root: `ulimit -n 65536`)"
        );
        return;
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

#[test]
fn the_node_raises_its_soft_open_files_limit_to_the_hard_limit() {
    const LOW: u64 = 256;
    let (_, hard) = rlimit::Resource::NOFILE
        .get()
        .expect("read the open-files limit");
    if hard <= LOW {
        eprintln!("SKIPPED: the hard open-files limit is {hard}: nothing to raise a soft {LOW} to");
        return;
    }
    let dir = data_dir();
    let node = Node::start_with(dir.path(), &[], |command| {
        // SAFETY: runs in the forked child before exec, where only async-signal-safe calls are
        // allowed: `set` makes the setrlimit system call and allocates nothing, not even on
        // failure (an OS error code).
        unsafe {
            command.pre_exec(move || rlimit::Resource::NOFILE.set(LOW, hard));
        }
    });
    assert_eq!(
        open_files_limits(&node.pid().to_string()),
        (hard, hard),
        "started with a soft limit of {LOW}, the node raised it to the hard limit"
    );
    // Logged before the listening line, but read from another pipe: wait for it.
    let said = format!("open-files limit raised from={LOW} to={hard}");
    assert!(
        wait_until(PROMPT, || node.stderr().contains(&said)),
        "and says so: {}",
        node.stderr()
    );
}
