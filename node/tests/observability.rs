//! The HTTP endpoint of a real node: `/stats` (JSON) and `/metrics` (Prometheus text) list the
//! node's named locks with their counters and the node-wide figures; `/health` says ok.

mod common;

use common::{Node, PROMPT, data_dir, http_request, read, send};
use serde_json::Value;
use synckit_node::protocol::Protocol;
use synckit_node::protocol::Request;

fn lock_names() -> Vec<String> {
    let mut names = vec!["sessions".to_string(), "apply-batch".to_string()];
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
    for name in ["sessions", "apply-batch"] {
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
    assert!(levels.contains(&("apply-batch".into(), Value::from(5))));

    // A node started without --cluster is a one-member raft group: its own leader, no peers.
    let raft = &stats["raft"];
    assert_eq!(raft["role"], "leader", "{raft}");
    assert_eq!(raft["id"], 1, "{raft}");
    assert_eq!(raft["voters"], serde_json::json!([1]), "{raft}");
    assert_eq!(raft["peers"], serde_json::json!([]), "{raft}");
    assert_eq!(raft["commit_index"], raft["applied_index"], "{raft}");

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
    assert!(value("synckit_lock_acquisitions_total{lock=\"apply-batch\"") > 0.0);
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

    // Everything /stats has beyond the locks is in /metrics too, with the same value (nothing
    // runs between the two reads: HTTP requests are not charged to the limiters).
    let stats = node.stats();
    let figure = |path: &[&str]| -> f64 {
        let value = path.iter().fold(&stats, |v, key| &v[key]);
        value
            .as_f64()
            .unwrap_or_else(|| panic!("/stats has no {path:?}: {stats}"))
    };
    let mut same: Vec<(String, Vec<&str>)> = [
        ("threads_waiting", ["deadlock_detector", "threads_waiting"]),
        ("mvcc_version", ["accounts_mvcc", "version"]),
        ("mvcc_live_versions", ["accounts_mvcc", "live_versions"]),
        ("mvcc_live_snapshots", ["accounts_mvcc", "live_snapshots"]),
        ("mvcc_tombstones", ["accounts_mvcc", "tombstones"]),
        (
            "log_records_since_snapshot",
            ["log", "records_since_snapshot"],
        ),
    ]
    .into_iter()
    .map(|(metric, path)| (format!("synckit_{metric} "), path.to_vec()))
    .collect();
    for limiter in ["requests_per_address", "logins_per_user"] {
        for (metric, field) in [
            ("rate_limit_allowed_total", "allowed"),
            ("rate_limit_keys", "keys"),
            ("rate_limit_evicted_total", "evicted"),
        ] {
            same.push((
                format!("synckit_{metric}{{limiter=\"{limiter}\"}} "),
                vec!["rate_limits", limiter, field],
            ));
        }
    }
    same.push((
        "synckit_rate_limited_requests_total ".into(),
        vec!["rate_limits", "requests_per_address", "limited"],
    ));
    same.push((
        "synckit_rate_limited_logins_total ".into(),
        vec!["rate_limits", "logins_per_user", "limited"],
    ));
    for (metric, path) in &same {
        assert_eq!(value(metric), figure(path), "{metric}");
    }
    // And they say something: bob's listing cursor holds a snapshot; traffic was let through.
    assert!(value("synckit_mvcc_live_snapshots ") >= 1.0);
    assert!(value("synckit_mvcc_live_versions ") >= 1.0);
    assert_eq!(value("synckit_threads_waiting "), 0.0);
    assert!(value("synckit_rate_limit_allowed_total{limiter=\"requests_per_address\"} ") > 40.0);
    assert!(value("synckit_rate_limit_keys{limiter=\"logins_per_user\"} ") >= 2.0);
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
