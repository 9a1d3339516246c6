//! The load generator against a real three-member cluster whose leader is killed (`kill -9`)
//! in the middle of the measured phase: its connections follow the new leader, log in again and
//! send the messages in flight again with their idempotency keys, so the run completes with no
//! failure and every acknowledged message is stored exactly once on the survivors.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{Cluster, wait_until};
use synckit_node::client::AddrList;
use synckit_node::client::bench::{self, BenchArgs};

/// An election (1 to 2 s) and then some; every wait of this test is bounded by it.
const SETTLE: Duration = Duration::from_secs(20);

#[test]
fn the_load_generator_follows_a_new_leader_when_the_leader_is_killed() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(SETTLE);
    let (connections, messages) = (8, 200);
    let args = BenchArgs {
        addr: AddrList(cluster.chat.clone()),
        json: false,
        connections,
        messages,
        size: 16,
        users: None,
    };
    let run = thread::spawn(move || bench::run(&args));

    // Kill the leader once the measured phase is under way: its first messages are stored.
    let stored = |node: &common::Node| node.stats()["messages"]["stored"].as_u64().unwrap();
    let under_way = wait_until(SETTLE, || {
        run.is_finished() || stored(cluster.member(leader)) >= 50
    });
    assert!(
        under_way,
        "the measured phase did not start within {SETTLE:?}"
    );
    assert!(
        !run.is_finished(),
        "the run ended before the leader could be killed: {:?}",
        run.join()
    );
    let at_kill = stored(cluster.member(leader));
    cluster.kill(leader);

    assert!(
        wait_until(SETTLE * 2, || run.is_finished()),
        "the run did not finish within {:?} of the kill",
        SETTLE * 2
    );
    let report = run
        .join()
        .expect("the load generator does not panic")
        .expect("the run completes despite the leader's death");
    eprintln!(
        "killed the leader at {at_kill} stored; {}",
        report.to_json()
    );
    let total = connections * messages;
    assert_eq!((report.messages, report.failed), (total, 0), "{report:?}");
    assert!(report.reconnects >= 1, "{}", report.to_json());
    // Every connection had a message in flight when the leader died.
    assert!(report.retried >= 1, "{}", report.to_json());
    assert!((at_kill as usize) < total, "the leader was killed too late");
    let json = report.to_json();
    assert_eq!(json["reconnects"], report.reconnects);
    assert_eq!(json["retried"], report.retried);

    // Both survivors hold the same state, with each of the messages acknowledged, once: a
    // message sent again after its answer was lost was not stored a second time.
    let new_leader = cluster.wait_for_leader(SETTLE);
    assert_ne!(new_leader, leader);
    cluster.wait_converged(SETTLE);
    for (id, node) in cluster.live() {
        let stats = node.stats();
        assert_eq!(
            stats["messages"]["stored"], total,
            "member {id}: {}",
            stats["messages"]
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
