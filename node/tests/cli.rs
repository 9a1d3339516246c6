//! The real `synckit-node` binary's `client` and `bench` subcommands against a real node, and
//! `serve --config`: what a person or a script sees (exit codes, one JSON line per response on
//! stdout, a readable reason on stderr).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    FakeAnswer, FakeMember, Finished, Node, PASSWORD, PROMPT, Raw, RawRead, Running, both,
    data_dir, run_bounded, send, wait_until,
};
use serde_json::{Value, json};
use synckit_node::protocol::Protocol;
use synckit_node::protocol::{Reply, Request, ServerFrame};

/// How long one CLI run may take (it hashes a password or two, and starts a process).
const RUN: Duration = Duration::from_secs(60);

/// `synckit-node client --addr NODE [--json] ARGS`, as `user` (with `password`) if given.
fn client_command(
    node: &Node,
    protocol: Protocol,
    login: Option<(&str, &str)>,
    args: &[&str],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_synckit-node"));
    command
        .arg("client")
        .args(["--addr", &node.chat.to_string()])
        .args((protocol == Protocol::Json).then_some("--json"))
        .env_remove("SYNCKIT_USER")
        .env_remove("SYNCKIT_PASSWORD")
        .args(args);
    if let Some((user, password)) = login {
        command
            .env("SYNCKIT_USER", user)
            .env("SYNCKIT_PASSWORD", password);
    }
    command
}

fn client(node: &Node, protocol: Protocol, login: Option<(&str, &str)>, args: &[&str]) -> Finished {
    run_bounded(&mut client_command(node, protocol, login, args), RUN)
}

/// Every stdout line, as JSON.
#[track_caller]
fn lines(run: &Finished) -> Vec<Value> {
    run.stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect()
}

/// The `data` of the one line a successful run prints for `op`.
#[track_caller]
fn succeeded(run: &Finished, op: &str) -> Value {
    assert!(run.status.success(), "{run:#?}");
    assert_eq!(run.stderr, "", "nothing on stderr when all is well");
    let lines = lines(run);
    assert_eq!(lines.len(), 1, "{run:#?}");
    assert_eq!(
        (&lines[0]["ok"], &lines[0]["op"]),
        (&json!(true), &json!(op))
    );
    lines[0]["data"].clone()
}

/// A run that got an error response for `op` with `code`: exit code 1, the error as JSON on
/// stdout, and a readable line naming the operation and the reason on stderr.
#[track_caller]
fn refused(run: &Finished, op: &str, code: &str) -> String {
    assert_eq!(run.status.code(), Some(1), "{run:#?}");
    let lines = lines(run);
    assert_eq!(lines.len(), 1, "{run:#?}");
    assert_eq!(
        (&lines[0]["ok"], &lines[0]["op"], &lines[0]["error"]["code"]),
        (&json!(false), &json!(op), &json!(code)),
        "{run:#?}"
    );
    let message = lines[0]["error"]["message"].as_str().unwrap().to_string();
    assert_eq!(
        run.stderr.trim(),
        format!("synckit-node client: {op} failed: {message} ({code})")
    );
    message
}

/// A run the client itself gave up on (no request answered): exit code 2, the reason on stderr.
#[track_caller]
fn failed(run: &Finished, reason: &str) {
    assert_eq!(run.status.code(), Some(2), "{run:#?}");
    assert_eq!(run.stdout, "", "{run:#?}");
    assert!(
        run.stderr.contains(reason),
        "stderr has {reason:?}: {run:#?}"
    );
}

both!(every_client_command_against_a_real_node);
fn every_client_command_against_a_real_node(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let alice = Some(("alice", PASSWORD));
    const BOB_PASSWORD: &str = "bob's own password";
    let bob = Some(("bob", BOB_PASSWORD));

    let created = client(
        &node,
        protocol,
        None,
        &["create-account", "alice", PASSWORD],
    );
    assert_eq!(succeeded(&created, "create_account"), json!({}));
    let created = client(
        &node,
        protocol,
        None,
        &["create-account", "bob", BOB_PASSWORD],
    );
    succeeded(&created, "create_account");
    let again = client(
        &node,
        protocol,
        None,
        &["create-account", "alice", "another one"],
    );
    assert!(refused(&again, "create_account", "user_exists").contains("taken"));

    // Logging in: a wrong password is refused, with the reason on stderr.
    let wrong = client(
        &node,
        protocol,
        Some(("alice", "not the password")),
        &["login"],
    );
    assert_eq!(
        refused(&wrong, "login", "auth_failed"),
        "wrong username or password"
    );
    // ... and a command needing a login does not run after a failed one.
    let wrong = client(
        &node,
        protocol,
        Some(("alice", "nope nope")),
        &["send", "bob", "x"],
    );
    refused(&wrong, "login", "auth_failed");
    let login = client(&node, protocol, alice, &["login"]);
    assert_eq!(succeeded(&login, "login"), json!({"unread": 0}));

    // Send, then read as the recipient.
    let sent = client(
        &node,
        protocol,
        alice,
        &["send", "bob", "hello from the shell"],
    );
    let id = succeeded(&sent, "send_message")["id"]
        .as_u64()
        .expect("an id");
    let login = client(&node, protocol, bob, &["login"]);
    assert_eq!(succeeded(&login, "login"), json!({"unread": 1}));
    let read = client(&node, protocol, bob, &["read", "--limit", "5"]);
    let messages = succeeded(&read, "read_messages")["messages"].clone();
    assert_eq!(messages.as_array().map(Vec::len), Some(1), "{messages}");
    assert_eq!(messages[0]["id"], id);
    assert_eq!(messages[0]["from"], "alice");
    assert_eq!(messages[0]["text"], "hello from the shell");
    let read = client(&node, protocol, bob, &["read"]);
    assert_eq!(succeeded(&read, "read_messages"), json!({"messages": []}));
    let unknown = client(&node, protocol, alice, &["send", "nobody", "x"]);
    refused(&unknown, "send_message", "no_such_user");

    // Listing: a pattern, and every page of a listing.
    let listed = client(&node, protocol, bob, &["list", "b*"]);
    assert_eq!(
        succeeded(&listed, "list_accounts"),
        json!({"accounts": ["bob"], "next_cursor": null})
    );
    let listed = client(
        &node,
        protocol,
        bob,
        &["list", "*", "--page-size", "1", "--all"],
    );
    assert!(listed.status.success(), "{listed:#?}");
    let pages: Vec<Value> = lines(&listed)
        .into_iter()
        .map(|line| line["data"]["accounts"].clone())
        .collect();
    assert_eq!(pages, [json!(["alice"]), json!(["bob"])]);

    // Deleting messages: only what is there.
    let deleted = client(&node, protocol, bob, &["delete-messages", &id.to_string()]);
    assert_eq!(
        succeeded(&deleted, "delete_messages"),
        json!({"deleted": 1})
    );
    let deleted = client(
        &node,
        protocol,
        bob,
        &["delete-messages", &id.to_string(), "999"],
    );
    assert_eq!(
        succeeded(&deleted, "delete_messages"),
        json!({"deleted": 0})
    );

    // Deleting the account: the password is checked again, then the account is gone.
    let deleted = client(&node, protocol, bob, &["delete-account"]);
    assert_eq!(succeeded(&deleted, "delete_account"), json!({}));
    let gone = client(&node, protocol, bob, &["login"]);
    refused(&gone, "login", "auth_failed");
    let listed = client(&node, protocol, alice, &["list"]);
    assert_eq!(
        succeeded(&listed, "list_accounts"),
        json!({"accounts": ["alice"], "next_cursor": null})
    );

    // Mistakes the client catches itself, and a node that is not there.
    failed(
        &client(&node, protocol, None, &["send", "bob", "x"]),
        "needs --user and --password",
    );
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut nowhere = Command::new(env!("CARGO_BIN_EXE_synckit-node"));
    nowhere
        .args(["client", "--addr", &closed.to_string(), "login"])
        .env("SYNCKIT_USER", "alice")
        .env("SYNCKIT_PASSWORD", PASSWORD);
    failed(&run_bounded(&mut nowhere, RUN), "cannot connect");
}

both!(a_list_of_members_skips_the_dead_and_follows_the_leader);
fn a_list_of_members_skips_the_dead_and_follows_the_leader(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    node.create("alice");
    node.create("bob");
    let run = |addr: String, (user, password): (&str, &str), args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_synckit-node"));
        command
            .args(["client", "--addr", &addr])
            .args((protocol == Protocol::Json).then_some("--json"))
            .env("SYNCKIT_USER", user)
            .env("SYNCKIT_PASSWORD", password)
            .args(args);
        run_bounded(&mut command, RUN)
    };
    let dead_then_live = format!("{},{}", common::dead_addr(), node.chat);
    let sent = succeeded(
        &run(
            dead_then_live.clone(),
            ("alice", PASSWORD),
            &["send", "bob", "hi"],
        ),
        "send_message",
    );
    // A follower that names the node as the leader: the send is retried there.
    let follower = FakeMember::start(FakeAnswer::NotLeader(Some(node.chat.to_string())));
    let sent_again = succeeded(
        &run(
            follower.addr.to_string(),
            ("alice", PASSWORD),
            &["send", "bob", "via the follower"],
        ),
        "send_message",
    );
    assert!(sent_again["id"].as_u64() > sent["id"].as_u64());
    assert!(matches!(
        &follower.requests()[..],
        [Request::Login { .. }, Request::SendMessage { .. }]
    ));
    let read = succeeded(
        &run(dead_then_live, ("bob", PASSWORD), &["read"]),
        "read_messages",
    );
    let texts: Vec<&str> = read["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hi", "via the follower"]);
}

both!(watch_prints_live_deliveries);
fn watch_prints_live_deliveries(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut alice = node.user(Protocol::Binary, "alice");
    node.create("bob");
    let mut watch = Running::spawn(&mut client_command(
        &node,
        protocol,
        Some(("bob", PASSWORD)),
        &["watch"],
    ));
    // Its first line says it is logged in: from then on, deliveries are pushed to it.
    let login: Value = serde_json::from_str(&watch.next_line(RUN)).unwrap();
    assert_eq!(
        login,
        json!({"ok": true, "op": "login", "data": {"unread": 0}})
    );
    let id = send(&mut alice, "bob", "live to the watcher");
    let pushed: Value = serde_json::from_str(&watch.next_line(PROMPT)).unwrap();
    assert_eq!(pushed["push"], "deliver", "{pushed}");
    assert_eq!(pushed["data"]["id"], id, "{pushed}");
    assert_eq!(pushed["data"]["from"], "alice", "{pushed}");
    assert_eq!(pushed["data"]["text"], "live to the watcher", "{pushed}");
    watch.kill();
    // Pushed to the watcher is delivered: bob has nothing left to read.
    let mut bob = node.login(Protocol::Binary, "bob");
    assert!(common::read(&mut bob, 10).is_empty());
}

both!(bench_runs_and_reports_throughput);
fn bench_runs_and_reports_throughput(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut bench = Command::new(env!("CARGO_BIN_EXE_synckit-node"));
    bench
        .args(["bench", "--addr", &node.chat.to_string()])
        .args((protocol == Protocol::Json).then_some("--json"))
        .args(["-c", "2", "-m", "5", "--size", "8"]);
    let run = run_bounded(&mut bench, RUN);
    assert!(run.status.success(), "{run:#?}");
    let report: Value = serde_json::from_str(run.stdout.trim()).expect("one JSON report");
    let name = if protocol == Protocol::Json {
        "json"
    } else {
        "binary"
    };
    assert_eq!(report["protocol"], name, "{report}");
    assert_eq!(report["connections"], 2, "{report}");
    assert_eq!(report["messages"], 10, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    for figure in [
        "messages_per_sec",
        "seconds",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
    ] {
        let value = report[figure].as_f64().unwrap_or(-1.0);
        assert!(value > 0.0, "{figure} is positive: {report}");
    }
    assert_eq!(
        node.stats()["messages"]["stored"],
        10,
        "every message reached the node"
    );
}

#[test]
fn a_config_file_is_applied_and_flags_override_it() {
    let dir = data_dir();
    let elsewhere = dir.path().join("not-this-one");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "# The harness passes --chat-addr, --http-addr, --data-dir and generous login\n\
             # limits as flags: those keys must lose to them.\n\
             chat_addr = \"127.0.0.1:1\"\n\
             data_dir = {:?}\n\
             logins_per_minute = 1\n\
             login_burst = 1\n\
             # Keys no flag sets apply.\n\
             max_connections = 2\n\
             snapshot_every_records = 2\n",
            elsewhere.display().to_string()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let node = Node::start(&data, &["--config", config.to_str().unwrap()]);
    assert_ne!(node.chat.port(), 1, "--chat-addr wins over the file");
    assert!(!elsewhere.exists(), "--data-dir wins over the file");

    // max_connections = 2 from the file: a third connection is refused.
    let mut open = common::registered_connections(node.chat, 2);
    let mut third = Raw::connect(node.chat, Protocol::Binary);
    third.request(1, &Request::ReadMessages { limit: 1 });
    match third.next() {
        RawRead::Frame(ServerFrame::Response(response)) => {
            let error = response.result.unwrap_err();
            assert!(error.message.contains("connection limit"), "{error}");
        }
        other => panic!("the third connection is refused, got {other:?}"),
    }
    open.clear();
    drop(third);
    assert!(
        wait_until(PROMPT, || node.stats()["connections"] == 0),
        "closed connections are forgotten"
    );

    // Three logins in a row: the file's burst of 1 would refuse the second; the flag's is used.
    let mut alice = node.user(Protocol::Binary, "alice");
    for _ in 0..2 {
        assert!(matches!(
            common::ok(alice.login("alice", PASSWORD)),
            Reply::LoggedIn { .. }
        ));
    }
    // snapshot_every_records = 2 from the file (the default is 50,000): a snapshot appears.
    send(&mut alice, "alice", "a second record");
    assert!(
        wait_until(PROMPT, || data.join("snapshot.json").exists()),
        "a snapshot after two records"
    );
}

#[test]
fn a_bad_config_file_stops_the_node_with_a_clear_error() {
    let dir = data_dir();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "max_conections = 5\n").unwrap();
    let failure = match Node::try_start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    ) {
        Ok(_) => panic!("a node started with a misspelt key"),
        Err(failure) => failure,
    };
    assert!(
        !failure.status.expect("it exits by itself").success(),
        "{failure:?}"
    );
    for needle in ["max_conections", config.to_str().unwrap()] {
        assert!(failure.stderr.contains(needle), "{needle}: {failure:?}");
    }
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn passwords_reach_neither_the_data_dir_nor_the_logs() {
    // Distinctive, and free of characters JSON would escape: a leak would show verbatim.
    const ALICE: &str = "alice plaintext 7f3a91";
    const BOB: &str = "bob plaintext c0ffee42";
    const CAROL: &str = "carol plaintext 5eed1e55";
    const WRONG: &str = "a wrong guess 0b5e55ed";
    let dir = data_dir();
    let node = Node::start(
        dir.path(),
        &["--log", "debug", "--snapshot-every-records", "6"],
    );
    let env_only = |password: &str, args: &[&str]| {
        let mut command = client_command(&node, Protocol::Binary, None, args);
        command.env("SYNCKIT_PASSWORD", password);
        run_bounded(&mut command, RUN)
    };

    // create-account takes the password from SYNCKIT_PASSWORD when no argument gives it...
    succeeded(
        &env_only(ALICE, &["create-account", "alice"]),
        "create_account",
    );
    succeeded(&env_only(BOB, &["create-account", "bob"]), "create_account");
    // ... and says so when neither does.
    failed(
        &client(&node, Protocol::Binary, None, &["create-account", "dave"]),
        "needs a password: set SYNCKIT_PASSWORD",
    );
    let mut carol = node.connect(Protocol::Json);
    common::ok(carol.create_account("carol", CAROL));
    common::ok(carol.login("carol", CAROL));
    for i in 0..3 {
        let sent = client(
            &node,
            Protocol::Json,
            Some(("alice", ALICE)),
            &["send", "bob", &format!("message {i}")],
        );
        succeeded(&sent, "send_message");
    }
    refused(
        &client(&node, Protocol::Binary, Some(("bob", WRONG)), &["login"]),
        "login",
        "auth_failed",
    );
    succeeded(
        &client(&node, Protocol::Binary, Some(("bob", BOB)), &["read"]),
        "read_messages",
    );
    common::ok(carol.call(&Request::DeleteAccount {
        password: CAROL.into(),
    }));
    // A snapshot holds the accounts; one more account lands in the log after it.
    assert!(
        wait_until(PROMPT, || dir.path().join("snapshot.json").exists()),
        "a snapshot is written"
    );
    succeeded(
        &env_only(CAROL, &["create-account", "carol"]),
        "create_account",
    );

    let (stdout, stderr) = node.kill_and_collect();
    assert!(
        stderr.contains("account created user=carol"),
        "the log was captured: {stderr}"
    );
    let mut hashes = 0;
    for path in files(dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for password in [ALICE, BOB, CAROL, WRONG] {
            assert!(
                !text.contains(password),
                "{} holds the password {password:?}",
                path.display()
            );
        }
        // Every stored hash, in the snapshot (JSON) and in the log (binary records), is an
        // Argon2id PHC string.
        for (at, _) in text.match_indices("$argon2") {
            let value = &text[at..];
            assert!(
                value.starts_with("$argon2id$"),
                "{}: {}",
                path.display(),
                &value[..value.len().min(40)]
            );
            hashes += 1;
        }
    }
    // alice and bob in the snapshot; the second carol (at least) in the log.
    assert!(hashes >= 3, "{hashes} stored hashes found");
    let snapshot: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("snapshot.json")).unwrap()).unwrap();
    for user in ["alice", "bob"] {
        let hash = snapshot["accounts"][user]["password_hash"]
            .as_str()
            .unwrap_or_else(|| panic!("{user} in the snapshot: {snapshot}"));
        assert!(hash.starts_with("$argon2id$"), "{user}: {hash}");
    }
    for password in [ALICE, BOB, CAROL, WRONG] {
        assert!(!stdout.contains(password), "stdout: {stdout}");
        assert!(!stderr.contains(password), "stderr: {stderr}");
    }
}

/// Polls `chain` (as `login`) until `done` holds of its data, for at most a minute; returns it.
#[track_caller]
fn chain_until(
    node: &Node,
    protocol: Protocol,
    login: Option<(&str, &str)>,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let reached = wait_until(Duration::from_secs(60), || {
        last = succeeded(&client(node, protocol, login, &["chain"]), "chain_info");
        done(&last)
    });
    assert!(reached, "the chain never got there; last: {last}");
    last
}

both!(ledger_commands_against_a_real_node);
fn ledger_commands_against_a_real_node(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), common::LEDGER);
    let alice = Some(("alice", PASSWORD));
    let bob = Some(("bob", PASSWORD));
    for name in ["alice", "bob"] {
        let created = client(&node, protocol, None, &["create-account", name, PASSWORD]);
        succeeded(&created, "create_account");
    }

    // The grant is pooled at creation and sealed by the next block: which one `balance` sees
    // depends on whether a block (every 100 ms) came first, but the coins are 1000 either way.
    let first = succeeded(&client(&node, protocol, alice, &["balance"]), "get_balance");
    assert!(
        first == json!({"confirmed": 0, "pending": 1000})
            || first == json!({"confirmed": 1000, "pending": 0}),
        "{first}"
    );
    // Both grants sealed: a block at least, nothing pooled, 2000 coins in sealed outputs.
    let chain = chain_until(&node, protocol, alice, |chain| {
        chain["height"].as_u64() >= Some(1) && chain["mempool"] == 0
    });
    assert_eq!(
        (&chain["supply"], &chain["difficulty_bits"]),
        (&json!(2000), &json!(4)),
        "{chain}"
    );
    assert_eq!(chain["tip"].as_str().map(str::len), Some(64), "{chain}");
    let balance = succeeded(&client(&node, protocol, alice, &["balance"]), "get_balance");
    assert_eq!(balance, json!({"confirmed": 1000, "pending": 0}));

    // Block 1 holds a grant: a transaction with no inputs, 1000 coins to its account.
    let block = succeeded(
        &client(&node, protocol, alice, &["block", "1"]),
        "get_block",
    );
    assert_eq!(
        (&block["height"], &block["difficulty"]),
        (&json!(1), &json!(4))
    );
    let granted = block["txids"][0].as_str().expect("a txid").to_string();
    let grant = succeeded(
        &client(&node, protocol, alice, &["tx", &granted]),
        "get_transaction",
    );
    assert_eq!(
        (&grant["txid"], &grant["inputs"], &grant["block"]),
        (&json!(granted), &json!([]), &json!(1)),
        "{grant}"
    );
    assert_eq!(grant["outputs"][0]["amount"], 1000, "{grant}");
    assert!(grant["grant"].is_u64(), "{grant}");

    // A transfer answers with its txid, which `tx` shows (pooled or already sealed).
    let pooled = succeeded(
        &client(&node, protocol, alice, &["transfer", "bob", "10"]),
        "transfer",
    );
    let txid = pooled["txid"].as_str().expect("a txid").to_string();
    assert_eq!(txid.len(), 64, "{pooled}");
    let tx = succeeded(
        &client(&node, protocol, alice, &["tx", &txid]),
        "get_transaction",
    );
    assert_eq!(tx["txid"], json!(txid), "{tx}");
    assert_eq!(
        tx["inputs"][0]["tx"],
        json!(granted),
        "it spends the grant: {tx}"
    );
    let outputs = tx["outputs"].as_array().expect("outputs");
    let amounts: Vec<_> = outputs.iter().map(|o| o["amount"].clone()).collect();
    assert_eq!(
        amounts,
        [json!(10), json!(990)],
        "payment, then change: {tx}"
    );
    // Both sides see it at once, pooled or sealed.
    let coins = |login| {
        let balance = succeeded(&client(&node, protocol, login, &["balance"]), "get_balance");
        balance["confirmed"].as_i64().unwrap() + balance["pending"].as_i64().unwrap()
    };
    assert_eq!((coins(alice), coins(bob)), (990, 1010));
    let utxos = succeeded(&client(&node, protocol, bob, &["utxos"]), "list_utxos");
    let mut held: Vec<_> = utxos["utxos"]
        .as_array()
        .expect("utxos")
        .iter()
        .map(|u| u["amount"].as_u64().unwrap())
        .collect();
    held.sort_unstable();
    assert_eq!(held, [10, 1000], "{utxos}");

    // More than alice has: refused by name, exit code 1, nothing spent.
    let message = refused(
        &client(&node, protocol, alice, &["transfer", "bob", "100000"]),
        "transfer",
        "insufficient_funds",
    );
    assert!(message.contains("990"), "{message}");
    assert_eq!(coins(alice), 990);

    // Unknown things are refused by the node; a TXID that is not one never reaches it.
    refused(
        &client(&node, protocol, alice, &["block", "1000"]),
        "get_block",
        "not_found",
    );
    refused(
        &client(&node, protocol, alice, &["tx", &"0".repeat(64)]),
        "get_transaction",
        "not_found",
    );
    for bad in ["zz", "1234", &"g".repeat(64)] {
        let run = client(&node, protocol, alice, &["tx", bad]);
        assert_eq!(run.status.code(), Some(2), "{run:#?}");
        assert_eq!(run.stdout, "", "{run:#?}");
        assert!(
            run.stderr.contains("64 hex digits") && !run.stderr.contains("panicked"),
            "{run:#?}"
        );
    }
}

/// A transfer is sealed by a later block: `tx` shows its height, and `chain` an empty pool.
#[test]
fn a_transfer_is_sealed_into_a_block() {
    let protocol = Protocol::Binary;
    let dir = data_dir();
    let node = Node::start(dir.path(), common::LEDGER);
    for name in ["alice", "bob"] {
        let created = client(&node, protocol, None, &["create-account", name, PASSWORD]);
        succeeded(&created, "create_account");
    }
    let alice = Some(("alice", PASSWORD));
    let pooled = succeeded(
        &client(&node, protocol, alice, &["transfer", "bob", "10"]),
        "transfer",
    );
    let txid = pooled["txid"].as_str().expect("a txid").to_string();
    let mut tx = Value::Null;
    let sealed = wait_until(Duration::from_secs(30), || {
        tx = succeeded(
            &client(&node, protocol, alice, &["tx", &txid]),
            "get_transaction",
        );
        tx["block"].is_u64()
    });
    assert!(sealed, "never sealed: {tx}; node stderr: {}", node.stderr());
    chain_until(&node, protocol, alice, |chain| chain["mempool"] == 0);
    let balance = succeeded(&client(&node, protocol, alice, &["balance"]), "get_balance");
    assert_eq!(balance, json!({"confirmed": 990, "pending": 0}));
}
