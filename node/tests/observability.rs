//! The HTTP endpoint of a real node: `/stats` (JSON) and `/metrics` (Prometheus text) list the
//! node's named locks with their counters and the node-wide figures; `/health` says ok.

mod common;

use common::{Node, PROMPT, data_dir, http_request, read, send};
use serde_json::Value;
use synckit_node::protocol::Request;
use synckit_node::server::Protocol;

fn lock_names() -> Vec<String> {
    let mut names = vec!["sessions".to_string(), "wal-sequence".to_string()];
    names.extend((0..16).map(|i| format!("mailboxes-{i:02}")));
    names
}

/// Acquisitions of the named lock in a `/stats` document.
fn acquisitions(stats: &Value, name: &str) -> u64 {
    let locks = stats["locks"].as_array().expect("locks is a list");
    let lock = locks
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("lock {name} is not listed: {locks:?}"));
    lock["stats"]["acquisitions"]
        .as_u64()
        .unwrap_or_else(|| panic!("{lock}"))
}

/// Some traffic touching every kind of state.
fn traffic(node: &Node) -> (synckit_node::client::Client, synckit_node::client::Client) {
    let mut alice = node.user(Protocol::Binary, "alice");
    let mut bob = node.user(Protocol::Json, "bob");
    for i in 0..20 {
        // Many recipients, so that many mailbox shards see traffic.
        let name = format!("user{i}");
        node.create(&name);
        send(&mut alice, &name, "hello");
    }
    send(&mut alice, "bob", "live");
    bob.next_push(Some(PROMPT)).unwrap().unwrap();
    assert!(read(&mut bob, 10).is_empty());
    common::list(&mut bob, "*", 5, None);
    common::ok(bob.call(&Request::DeleteMessages { ids: vec![1, 2] }));
    (alice, bob)
}

#[test]
fn stats_lists_the_named_locks_and_the_node_figures() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let before = node.stats();
    let _clients = traffic(&node);
    let stats = node.stats();

    for name in lock_names() {
        assert!(
            acquisitions(&stats, &name) > 0,
            "{name} has acquisitions after traffic"
        );
    }
    for name in ["sessions", "wal-sequence"] {
        assert!(
            acquisitions(&stats, name) > acquisitions(&before, name),
            "{name}: traffic adds acquisitions"
        );
    }
    let shard_total = |s: &Value| -> u64 {
        (0..16)
            .map(|i| acquisitions(s, &format!("mailboxes-{i:02}")))
            .sum()
    };
    // Beyond the one acquisition per shard that computing /stats itself makes.
    assert!(shard_total(&stats) > shard_total(&before) + 16 + 20);
    let levels: Vec<(String, Value)> = stats["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap_or("").to_string(),
                l["level"].clone(),
            )
        })
        .collect();
    assert!(
        levels.contains(&("sessions".into(), Value::from(10))),
        "{levels:?}"
    );
    assert!(levels.contains(&("mailboxes-07".into(), Value::from(20))));
    assert!(levels.contains(&("wal-sequence".into(), Value::from(90))));

    // The node-wide sections.
    for key in [
        "deadlock_detector",
        "rate_limits",
        "accounts_mvcc",
        "connections",
        "uptime_secs",
        "messages",
        "log",
    ] {
        assert!(stats.get(key).is_some(), "/stats has {key}: {stats}");
    }
    assert_eq!(stats["deadlock_detector"]["cycles_detected"], 0, "{stats}");
    assert_eq!(stats["deadlock_detector"]["level_violations"], 0, "{stats}");
    assert!(stats["rate_limits"]["requests_per_address"].is_object());
    assert!(stats["rate_limits"]["logins_per_user"].is_object());
    assert_eq!(
        stats["accounts_mvcc"]["keys"], 22,
        "{}",
        stats["accounts_mvcc"]
    );
    assert!(stats["accounts_mvcc"]["commits"].as_u64().unwrap() >= 22);
    assert!(
        stats["connections"].as_u64().unwrap() >= 2,
        "alice and bob are connected"
    );
    assert!(stats["uptime_secs"].is_u64());
    assert_eq!(stats["messages"]["stored"], 21, "{}", stats["messages"]);
    assert_eq!(
        stats["messages"]["undelivered"], 20,
        "{}",
        stats["messages"]
    );
}

#[test]
fn metrics_are_prometheus_text_with_lock_counters() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let _clients = traffic(&node);
    let response = node.get("/metrics");
    assert_eq!(response.status, 200);
    let text = response.body;
    let value = |prefix: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{text}"));
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no value in {line:?}"))
    };
    assert!(value("synckit_lock_acquisitions_total{lock=\"sessions\"") > 0.0);
    assert!(value("synckit_lock_acquisitions_total{lock=\"wal-sequence\"") > 0.0);
    for i in 0..16 {
        assert!(
            text.contains(&format!(
                "synckit_lock_acquisitions_total{{lock=\"mailboxes-{i:02}\""
            )),
            "mailboxes-{i:02} in /metrics"
        );
    }
    assert_eq!(value("synckit_accounts "), 22.0);
    assert!(value("synckit_connections ") >= 2.0);
    assert_eq!(value("synckit_messages_undelivered "), 20.0);
    for family in [
        "synckit_lock_contentions_total",
        "synckit_lock_wait_seconds_total",
        "synckit_lock_max_wait_seconds",
        "synckit_deadlocks_refused_total",
        "synckit_level_violations_total",
        "synckit_rate_limited_requests_total",
        "synckit_rate_limited_logins_total",
        "synckit_mvcc_commits_total",
        "synckit_uptime_seconds",
    ] {
        assert!(text.contains(family), "{family} in /metrics");
    }
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
}

#[test]
fn health_and_unknown_paths() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let health = node.get("/health");
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    assert_eq!(node.get("/nope").status, 404);
    assert_eq!(http_request(node.http, "POST", "/stats").status, 405);
    // Query strings are ignored.
    assert_eq!(node.get("/health?verbose=1").status, 200);
}
