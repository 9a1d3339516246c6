//! The load generator against a real three-member cluster whose leader is killed (`kill -9`)
//! in the middle of the measured phase: its connections follow the new leader (or move past the
//! dead member), log in again and send the messages in flight again with their idempotency
//! keys, so the run completes with no failure and every acknowledged message is stored exactly
//! once on the survivors.
//!
//! Two placements: every connection on the leader (the kill cuts them all: closed or reset
//! connections), and every connection on a follower (it forwards writes inside raft; those in
//! flight at the kill are answered `unavailable` after the write timeout, or wait for the new
//! leader, and may still commit: sending them again must store nothing twice).
//!
//! And the same kill with `--op transfer`: transfers carry keys too, so every one is paid
//! exactly once (each survivor accepted exactly one transaction per request).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{Cluster, LEDGER, wait_until};
use synckit_node::client::AddrList;
use synckit_node::client::bench::{self, BenchArgs, BenchOp, Report};

/// An election (1 to 2 s) plus a write's timeout (5 s), with room; every wait is bounded by it.
const SETTLE: Duration = Duration::from_secs(20);
const CONNECTIONS: usize = 8;
const MESSAGES: usize = 200;

/// How many requests of the measured phase a member has applied: messages stored, or
/// transactions pooled by transfers.
fn done(node: &common::Node, op: BenchOp) -> u64 {
    let stats = node.stats();
    match op {
        BenchOp::Send => stats["messages"]["stored"].as_u64().unwrap(),
        BenchOp::Transfer => stats["ledger"]["transactions_accepted"].as_u64().unwrap(),
    }
}

/// Starts a cluster, runs the generator (`op`) with `first` (0: the leader, 1: a follower)
/// first in its list of members, kills the leader once the measured phase is under way, and
/// checks what every placement must give; returns the report.
fn kill_the_leader_mid_run(first: usize, op: BenchOp) -> Report {
    let started = Instant::now();
    let flags: &[&str] = if op == BenchOp::Transfer { LEDGER } else { &[] };
    let mut cluster = Cluster::start(3, flags);
    let leader = cluster.wait_for_leader(SETTLE);
    // The generator aims its connections at the first member that accepts a write (a follower
    // does, forwarding it to the leader).
    let mut addrs = cluster.chat.clone();
    addrs.rotate_left(leader as usize - 1 + first);
    let args = BenchArgs {
        addr: AddrList(addrs),
        json: false,
        connections: CONNECTIONS,
        messages: MESSAGES,
        size: 16,
        users: None,
        op,
    };
    let run = thread::spawn(move || bench::run(&args));

    // Kill the leader once the measured phase is under way: its first requests are applied.
    let under_way = wait_until(SETTLE, || {
        run.is_finished() || done(cluster.member(leader), op) >= 50
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
    let at_kill = done(cluster.member(leader), op);
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
    let total = CONNECTIONS * MESSAGES;
    assert!((at_kill as usize) < total, "the leader was killed too late");
    assert_eq!((report.messages, report.failed), (total, 0), "{report:?}");
    assert_eq!(report.latencies.len(), total);
    let json = report.to_json();
    assert_eq!(json["reconnects"], report.reconnects);
    assert_eq!(json["retried"], report.retried);
    assert!(report.retried <= report.messages);

    // Both survivors hold the same state, with each acknowledged request applied once: one
    // sent again after its answer was lost was not stored (or paid) a second time.
    let new_leader = cluster.wait_for_leader(SETTLE);
    assert_ne!(new_leader, leader);
    cluster.wait_converged(SETTLE);
    for (id, node) in cluster.live() {
        assert_eq!(done(node, op), total as u64, "member {id}: {op:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    report
}

#[test]
fn connections_on_the_leader_follow_the_new_one_when_it_is_killed() {
    let report = kill_the_leader_mid_run(0, BenchOp::Send);
    // Every connection was cut and made again; each had a message in flight, sent again.
    assert!(report.reconnects >= CONNECTIONS, "{}", report.to_json());
    assert!(report.retried >= 1, "{}", report.to_json());
}

#[test]
fn connections_on_a_follower_survive_the_leaders_death() {
    // Whether a message in flight is answered `unavailable` (and moved and sent again) or waits
    // on the follower for the new leader depends on timing; either way nothing fails and
    // nothing is stored twice.
    kill_the_leader_mid_run(1, BenchOp::Send);
}

#[test]
fn transfers_on_the_leader_are_paid_once_when_it_is_killed() {
    let report = kill_the_leader_mid_run(0, BenchOp::Transfer);
    assert!(report.reconnects >= CONNECTIONS, "{}", report.to_json());
}
