//! The load generator's event loop, in process, against a real node: it finishes, every message
//! is answered and stored, connections may share accounts, and a node that goes away mid-run is
//! an error, not a panic or a hang; with several members, its connections go to the leader.

mod common;

use std::thread;
use std::time::Duration;

use common::{FakeAnswer, FakeMember, Node, data_dir, dead_addr};
use synckit_node::client::AddrList;
use synckit_node::client::bench::{self, BenchArgs, BenchOp};
use synckit_node::protocol::{Protocol, Request};

fn args(node: &Node, protocol: Protocol, connections: usize, messages: usize) -> BenchArgs {
    BenchArgs {
        addr: node.chat.into(),
        json: protocol == Protocol::Json,
        connections,
        messages,
        size: 16,
        users: None,
        op: BenchOp::Send,
    }
}

#[test]
fn two_hundred_connections_sharing_twenty_accounts() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let (connections, messages) = (200, 10);
    for protocol in [Protocol::Binary, Protocol::Json] {
        let report = bench::run(&BenchArgs {
            users: Some(20),
            ..args(&node, protocol, connections, messages)
        })
        .expect("the run completes");
        assert_eq!(report.protocol, protocol);
        assert_eq!((report.connections, report.users), (connections, 20));
        assert_eq!(report.messages, connections * messages);
        assert_eq!(report.failed, 0);
        assert_eq!(report.latencies.len(), report.messages);
        // Each account has 10 connections, each of which is pushed every message to it; those
        // still on their way when the last response arrives are not counted.
        assert!(report.pushes > 0, "{report:?}");
        assert!(report.pushes <= report.messages * 10, "{report:?}");
        assert!(report.latencies.is_sorted());
        assert!(report.elapsed > Duration::ZERO);
        let json = report.to_json();
        for figure in ["p50_us", "p99_us", "p999_us", "max_us", "messages_per_sec"] {
            assert!(
                json[figure].as_f64().unwrap_or(-1.0) > 0.0,
                "{figure}: {json}"
            );
        }
        assert!(json["p50_us"].as_f64() <= json["p999_us"].as_f64());
        assert!(json["p999_us"].as_f64() <= json["max_us"].as_f64());
    }
    assert_eq!(
        node.stats()["messages"]["stored"],
        2 * connections * messages,
        "every message reached the node"
    );
}

#[test]
fn a_node_that_goes_away_mid_run_is_reported() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    // Far more messages than can be sent before the node is killed.
    let run = {
        let args = args(&node, Protocol::Binary, 4, 10_000_000);
        thread::spawn(move || bench::run(&args))
    };
    thread::sleep(Duration::from_secs(2));
    node.kill();
    let error = run
        .join()
        .expect("the load generator does not panic")
        .expect_err("a node that went away is an error");
    assert!(error.starts_with("connection "), "{error}");
}

#[test]
fn nothing_listening_is_an_error() {
    // A port that was free a moment ago: nothing listens on it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let error = bench::run(&BenchArgs {
        addr: addr.into(),
        json: false,
        connections: 3,
        messages: 1,
        size: 1,
        users: None,
        op: BenchOp::Send,
    })
    .expect_err("no node");
    assert!(error.contains("cannot connect"), "{error}");
}

#[test]
fn with_several_members_every_connection_goes_to_the_leader() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    // A dead member and a follower naming the node as the leader, before the node itself.
    let follower = FakeMember::start(FakeAnswer::NotLeader(Some(node.chat.to_string())));
    let addr = AddrList(vec![dead_addr(), follower.addr, node.chat]);
    let (connections, messages) = (3, 4);
    let report = bench::run(&BenchArgs {
        addr,
        ..args(&node, Protocol::Binary, connections, messages)
    })
    .expect("the run completes");
    assert_eq!(
        (report.messages, report.failed),
        (connections * messages, 0)
    );
    // The follower saw the one request that found the leader, and nothing else.
    let asked = follower.requests();
    assert!(
        matches!(&asked[..], [Request::CreateAccount { .. }]),
        "{asked:?}"
    );
    let stats = node.stats();
    assert_eq!(stats["messages"]["stored"], connections * messages);
}
