//! The load generator's event loop, in process, against a real node: it finishes, every message
//! is answered and stored, connections may share accounts, and a node that goes away mid-run is
//! an error, not a panic or a hang; with several members, its connections go to the leader.

mod common;

use std::thread;
use std::time::Duration;

use common::{FakeAnswer, FakeMember, Node, data_dir, dead_addr, ok, wait_until};
use synckit_node::client::bench::{self, BenchArgs, BenchOp};
use synckit_node::client::{AddrList, LedgerCalls};
use synckit_node::protocol::{Protocol, Reply, Request};

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

/// `--op transfer`: every measured request is a one-coin transfer to the next account, all are
/// pooled (the accounts' grants cover them, and transfers chain on pooled change), and the
/// ledger holds exactly the grants and those transfers, with every account's coins intact (a
/// ring: each account pays 20 and is paid 20) and the received coins where they belong.
#[test]
fn transfers_move_coins_around_the_ring() {
    let dir = data_dir();
    let node = Node::start(dir.path(), common::LEDGER);
    let (connections, transfers) = (4, 20);
    let report = bench::run(&BenchArgs {
        op: BenchOp::Transfer,
        ..args(&node, Protocol::Binary, connections, transfers)
    })
    .expect("the run completes");
    assert_eq!(report.op, BenchOp::Transfer);
    assert_eq!(
        (report.messages, report.failed),
        (connections * transfers, 0),
        "{report:?}"
    );
    assert_eq!(report.pushes, 0, "transfers push nothing");
    assert_eq!(report.to_json()["op"], "transfer");
    assert!(report.to_json()["messages_per_sec"].as_f64() > Some(0.0));
    assert_eq!(report.accounts.len(), connections);

    for account in &report.accounts {
        let mut client = client_logged_in(&node, account);
        let Reply::Balance { confirmed, pending } = ok(client.get_balance()) else {
            panic!("not a balance");
        };
        assert_eq!(
            confirmed as i64 + pending,
            1000,
            "{account}: paid 20, was paid 20"
        );
        let Reply::Utxos { utxos } = ok(client.list_utxos()) else {
            panic!("not utxos");
        };
        assert_eq!(
            utxos.iter().map(|u| u.amount).sum::<u64>(),
            1000,
            "{account}"
        );
    }

    // The ledger holds the 4 grants and the 80 transfers, sealed or pooled (read again if a
    // block was sealed while the blocks were read).
    let mut client = client_logged_in(&node, &report.accounts[0]);
    let chain = |client: &mut synckit_node::client::Client| match ok(client.chain_info()) {
        Reply::Chain {
            height, mempool, ..
        } => (height, mempool),
        other => panic!("not chain info: {other:?}"),
    };
    let mut seen = (0, 0, 0);
    let stable = wait_until(Duration::from_secs(30), || {
        let (height, mempool) = chain(&mut client);
        let mut sealed = 0;
        for block in 1..=height {
            let Reply::Block(block) = ok(client.get_block(block)) else {
                panic!("not a block");
            };
            sealed += block.txids.len() as u64;
        }
        seen = (height, sealed, mempool);
        chain(&mut client).0 == height
    });
    assert!(stable, "the chain kept growing: {seen:?}");
    let (height, sealed, mempool) = seen;
    assert_eq!(
        sealed + mempool,
        (connections + connections * transfers) as u64,
        "{height} blocks holding {sealed} transactions, {mempool} pooled"
    );
}

fn client_logged_in(node: &Node, account: &str) -> synckit_node::client::Client {
    let mut client = node.connect(Protocol::Binary);
    ok(client.login(account, bench::PASSWORD));
    client
}
