//! The live lock dashboard (sync-kit's `observe` page) on the node's HTTP port: `GET /` is the
//! page, `GET /dashboard.json` its data with the node's panels; and the page itself in a real
//! browser (headless system Chromium driven by playwright-core, `tests/browser/dashboard.mjs`),
//! on the node and on `deadlock_demo`, which draws a refused cycle.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{LEDGER, Node, Running, data_dir, ok, send};
use synckit_node::client::{Client, LedgerCalls};
use synckit_node::protocol::Protocol;

/// Locks the traffic below takes, which the page must list with acquisitions.
const BUSY_LOCKS: [&str; 4] = ["sessions", "mailboxes-00", "mempool", "ledger-chain"];

/// Accounts, logins, messages and transfers: every shard, the sessions, the mempool and a block.
/// Returns the two logged-in connections, kept open while the page is read.
fn traffic(node: &Node) -> [Client; 2] {
    let mut alice = node.user(Protocol::Binary, "alice");
    node.create("bob");
    // Names spread over the sixteen mailbox shards.
    for i in 0..24 {
        let name = format!("user{i:02}");
        node.create(&name);
        send(&mut alice, &name, "hello");
    }
    send(&mut alice, "bob", "hi bob");
    ok(alice.transfer("bob", 10));
    let mut bob = node.login(Protocol::Json, "bob");
    ok(bob.transfer("alice", 3));
    // A block seals the transfers (every 100 ms).
    assert!(
        common::wait_until(Duration::from_secs(30), || {
            node.stats()["ledger"]["height"].as_u64() >= Some(1)
        }),
        "a block was sealed"
    );
    [alice, bob]
}

#[test]
fn the_node_serves_the_page_and_its_data_with_panels() {
    let dir = data_dir();
    let node = Node::start(dir.path(), LEDGER);
    let _open = traffic(&node);

    let page = node.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.starts_with("<!doctype html>"), "{}", page.body);
    assert_eq!(page.body, sync_kit::observe::page());

    let response = node.get("/dashboard.json");
    assert_eq!(response.status, 200, "{response:?}");
    let dashboard: serde_json::Value = serde_json::from_str(&response.body).expect("JSON");
    let locks = dashboard["locks"].as_array().expect("locks");
    for name in BUSY_LOCKS.iter().chain(&["grpc-tokens", "apply-batch"]) {
        let lock = locks
            .iter()
            .find(|l| l["name"] == *name)
            .unwrap_or_else(|| panic!("{name} listed: {locks:?}"));
        if BUSY_LOCKS.contains(name) {
            assert!(lock["acquisitions"].as_u64() > Some(0), "{lock}");
        }
    }
    assert!(dashboard["detector"]["waits_registered"].is_u64());
    assert!(dashboard["refusals"].is_array());

    let panels = dashboard["panels"].as_array().expect("panels");
    let panel = |title: &str| -> std::collections::BTreeMap<String, serde_json::Value> {
        let panel = panels
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("panel {title}: {panels:?}"));
        panel["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|row| (row[0].as_str().expect("a key").to_string(), row[1].clone()))
            .collect()
    };
    let stats = node.stats();
    let raft = panel("Raft");
    assert_eq!(raft["role"], "leader");
    assert_eq!(raft["voters"], serde_json::json!([1]));
    assert_eq!(raft["term"], stats["raft"]["term"]);
    let ledger = panel("Ledger");
    assert!(ledger["height"].as_u64() >= Some(1), "{ledger:?}");
    assert_eq!(ledger["tip"].as_str().map(str::len), Some(64), "{ledger:?}");
    assert!(ledger.contains_key("mempool") && ledger.contains_key("mempool_bytes"));
    assert!(panel("Sealing")["blocks_sealed"].as_u64() >= Some(1));
    let node_panel = panel("Node");
    assert!(
        node_panel["connections"].as_u64() >= Some(1),
        "{node_panel:?}"
    );
    assert!(node_panel.contains_key("state_digest"));
    assert!(panel("Accounts (MVCC)")["keys"].as_u64() >= Some(26));
    assert!(panel("Rate limits").contains_key("requests_per_address.allowed"));

    // /stats and /metrics are as they were.
    assert!(stats["locks"].is_array());
    let metrics = node.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("synckit_lock_acquisitions_total"));
}

/// Where the browser test can run: the `node` binary, playwright-core installed beside the
/// script (`npm install` in `tests/browser`) and a Chromium. `Err` names what is missing.
fn browser_tools(browser_dir: &Path) -> Result<(), String> {
    let mut missing = Vec::new();
    let runs = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if !runs("node", &["--version"]) {
        missing.push("node (apt-get install nodejs npm)".to_string());
    }
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        missing.push(format!(
            "playwright-core (npm install in {})",
            browser_dir.display()
        ));
    }
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_string());
    if !runs(&chromium, &["--version"]) {
        missing.push("chromium (apt-get install chromium)".to_string());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join(", "))
    }
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// Runs `tests/browser/dashboard.mjs` with `args`; panics with its report unless it passed.
fn run_script(root: &Path, args: &[&str]) -> serde_json::Value {
    let finished = common::run_bounded(
        Command::new("node")
            .arg(root.join("tests/browser/dashboard.mjs"))
            .args(args),
        Duration::from_secs(120),
    );
    let report: serde_json::Value = finished
        .stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no report from the script: {finished:#?}"));
    assert!(
        finished.status.success() && report["ok"] == true,
        "the browser test failed: {report:#}\n{}",
        finished.stderr
    );
    report
}

/// The page in headless Chromium: on the node after traffic (no console error; the lock table
/// lists the node's locks with acquisitions; the panels show), then on `deadlock_demo
/// --features observe` (a refused cycle drawn as an SVG naming `left` and `right`). Screenshots
/// go to `target/dashboard.png` and `target/dashboard-demo.png`. Skipped, saying so, where
/// Chromium, node or playwright-core is missing, unless `CI` is set (CI installs them).
#[test]
fn the_page_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace");
    if let Err(missing) = browser_tools(&root.join("tests/browser")) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the browser test cannot run: missing {missing} (.ci/run installs them)"
        );
        eprintln!("skipped: the browser test needs {missing}");
        return;
    }
    let target = target_dir(root);

    // The node, after traffic.
    let dir = data_dir();
    let node = Node::start(dir.path(), LEDGER);
    let _open = traffic(&node);
    let screenshot = target.join("dashboard.png");
    let report = run_script(
        root,
        &[
            "--url",
            &format!("http://{}/", node.http),
            "--locks",
            &BUSY_LOCKS.join(","),
            "--panels",
            "Node,Raft,Ledger,Accounts (MVCC)",
            "--screenshot",
            screenshot.to_str().expect("a UTF-8 path"),
        ],
    );
    assert!(report["locks"].as_u64() >= Some(20), "{report}");
    assert!(screenshot.is_file());
    node.kill();

    // The demo: built here with the feature (cargo releases the target directory's lock once
    // the test binaries are built), run for a bounded time, killed at the end.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let built = common::run_bounded(
        Command::new(cargo)
            .current_dir(root)
            .args(["build", "-p", "sync-kit", "--example", "deadlock_demo"])
            .args(["--features", "observe"]),
        Duration::from_secs(600),
    );
    assert!(built.status.success(), "{}", built.stderr);
    let mut demo = Running::spawn(
        Command::new(target.join("debug/examples/deadlock_demo")).args([
            "--addr",
            "127.0.0.1:0",
            "--for-secs",
            "120",
        ]),
    );
    let url = loop {
        let line = demo.next_line(Duration::from_secs(60));
        if let Some(url) = line.strip_prefix("dashboard: ") {
            break url.to_string();
        }
    };
    let screenshot = target.join("dashboard-demo.png");
    let report = run_script(
        root,
        &[
            "--url",
            &url,
            "--cycle",
            "left,right",
            "--locks",
            "balances,journal",
            "--panels",
            "deadlock_demo",
            "--screenshot",
            screenshot.to_str().expect("a UTF-8 path"),
        ],
    );
    let drawn = report["cycle"]["svg"].as_str().expect("the drawn cycle");
    assert!(
        drawn.contains("transfer-1") && drawn.contains("transfer-2"),
        "{report}"
    );
    demo.kill();
}
