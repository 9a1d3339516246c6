//! The ledger over real connections and real processes.
//!
//! What it proves:
//! - a double-spend storm (many connections of one owner spending one output at once) pools
//!   exactly one transaction, on a node alone and on a cluster before and after its leader is
//!   killed; the winner is sealed in a block on every member;
//! - random concurrent transfers conserve the supply: once the pool is sealed, the confirmed
//!   balances add up to the grants, and every member holds the same chain;
//! - a transfer sent again with its idempotency key pays once and answers with the first one's
//!   transaction, while pooled, once sealed and after a restart; another transfer under that
//!   key, or a key of the wrong size, is refused;
//! - a balance never shows a block half applied (confirmed before it, pooled after it);
//! - `verify-chain` accepts the chain of a node killed with -9 and restarted, and names the
//!   block when a snapshot's block is changed (which the node then refuses at start) and the
//!   file when the raft log is damaged.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{Cluster, LEDGER, Node, PASSWORD, PROTOCOLS, data_dir, err, ok, wait_until};
use synckit_node::client::Client;
use synckit_node::ledger::{Hash32, Outpoint, Output};
use synckit_node::protocol::{ErrorCode, Protocol, Reply, Request};

const PATIENCE: Duration = Duration::from_secs(30);

fn logged_in(addr: std::net::SocketAddr, user: &str) -> Client {
    let mut client = Client::connect(addr, Protocol::Binary).unwrap();
    ok(client.login(user, PASSWORD));
    client
}

fn utxos(client: &mut Client) -> Vec<(Outpoint, u64, bool)> {
    match ok(client.call(&Request::ListUtxos {})) {
        Reply::Utxos { utxos } => utxos
            .into_iter()
            .map(|u| {
                (
                    Outpoint {
                        tx: u.tx,
                        index: u.index,
                    },
                    u.amount,
                    u.confirmed,
                )
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn balance(client: &mut Client) -> (u64, i64) {
    match ok(client.call(&Request::GetBalance {})) {
        Reply::Balance { confirmed, pending } => (confirmed, pending),
        other => panic!("{other:?}"),
    }
}

fn chain(client: &mut Client) -> (u64, Hash32, u64, u64) {
    match ok(client.call(&Request::ChainInfo {})) {
        Reply::Chain {
            height,
            tip,
            mempool,
            supply,
            ..
        } => (height, tip, mempool, supply),
        other => panic!("{other:?}"),
    }
}

fn block_of(client: &mut Client, txid: Hash32) -> Option<u64> {
    match ok(client.call(&Request::GetTransaction { txid })) {
        Reply::Transaction { block, .. } => block,
        other => panic!("{other:?}"),
    }
}

/// `connections` connections of `owner` (spread over `addrs`) submit at once a transaction
/// spending `coin` (worth `amount`) to `payee`, each a different split: returns the one txid
/// pooled, asserting every other got `double_spend`.
fn storm(
    addrs: &[std::net::SocketAddr],
    owner: &str,
    payee: &str,
    coin: Outpoint,
    amount: u64,
    connections: usize,
) -> Hash32 {
    let start = Arc::new(Barrier::new(connections));
    let attempts: Vec<_> = (0..connections)
        .map(|i| {
            let (addr, owner, payee) =
                (addrs[i % addrs.len()], owner.to_string(), payee.to_string());
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let mut client = logged_in(addr, &owner);
                let split = 1 + i as u64;
                let request = Request::SubmitTransaction {
                    inputs: vec![coin],
                    outputs: vec![
                        Output {
                            to: payee,
                            amount: split,
                        },
                        Output {
                            to: owner,
                            amount: amount - split,
                        },
                    ],
                };
                start.wait();
                client.call(&request).unwrap()
            })
        })
        .collect();
    let mut pooled = Vec::new();
    for attempt in attempts {
        match attempt.join().unwrap() {
            Ok(Reply::Pooled { txid }) => pooled.push(txid),
            Ok(other) => panic!("{other:?}"),
            Err(error) => {
                assert_eq!(error.code, ErrorCode::DoubleSpend, "{error:?}");
                assert!(
                    error.message.contains(&coin.to_string()),
                    "{}",
                    error.message
                );
            }
        }
    }
    assert_eq!(
        pooled.len(),
        1,
        "exactly one of {connections} spends is pooled: {pooled:?}"
    );
    pooled[0]
}

#[test]
fn a_double_spend_storm_pools_exactly_one_transaction() {
    let dir = data_dir();
    let node = Node::start(dir.path(), LEDGER);
    node.create("owner");
    node.create("payee");
    let mut owner = node.login(Protocol::Json, "owner");
    let coins = utxos(&mut owner);
    assert_eq!(coins.len(), 1, "{coins:?}");
    let (coin, amount, _) = coins[0];
    assert_eq!(amount, 1000);
    let winner = storm(&[node.chat], "owner", "payee", coin, amount, 16);
    // Sealed in a block, and the balances follow the winner.
    assert!(wait_until(PATIENCE, || block_of(&mut owner, winner).is_some()));
    let mut payee = node.login(Protocol::Binary, "payee");
    assert!(wait_until(PATIENCE, || chain(&mut payee).2 == 0));
    let (confirmed, pending) = balance(&mut payee);
    let (owner_confirmed, _) = balance(&mut owner);
    assert_eq!(pending, 0);
    assert_eq!(confirmed + owner_confirmed, 2000);
    assert!(confirmed > 1000 && confirmed <= 1016, "{confirmed}");
}

#[test]
fn a_double_spend_storm_across_a_leader_kill_pools_exactly_one_each_time() {
    let mut cluster = Cluster::start(3, LEDGER);
    let leader = cluster.wait_for_leader(PATIENCE);
    let mut at_leader =
        Client::connect(cluster.chat[leader as usize - 1], Protocol::Binary).unwrap();
    for user in ["owner", "payee"] {
        ok(at_leader.create_account(user, PASSWORD));
    }
    ok(at_leader.login("owner", PASSWORD));
    let (coin, amount, _) = utxos(&mut at_leader)[0];
    let first = storm(&cluster.chat, "owner", "payee", coin, amount, 12);
    assert!(wait_until(PATIENCE, || block_of(&mut at_leader, first).is_some()));

    // The leader dies; the owner's change output is spent by a storm on the survivors.
    cluster.kill(leader);
    let leader = cluster.wait_for_leader(PATIENCE);
    let survivors: Vec<_> = cluster
        .live()
        .map(|(id, _)| cluster.chat[id as usize - 1])
        .collect();
    let mut at_leader = logged_in(cluster.chat[leader as usize - 1], "owner");
    let change = utxos(&mut at_leader)
        .into_iter()
        .find(|(outpoint, _, confirmed)| outpoint.tx == first && *confirmed)
        .expect("the first winner's change is confirmed");
    let second = storm(&survivors, "owner", "payee", change.0, change.1, 12);
    assert!(wait_until(PATIENCE, || block_of(&mut at_leader, second).is_some()));

    // The killed member comes back and catches up; then every member holds the same chain, on
    // line and offline.
    let killed = (1..=3)
        .find(|id| cluster.members[*id as usize - 1].is_none())
        .unwrap();
    cluster.restart(killed);
    cluster.wait_converged(PATIENCE);
    let mut hashes = Vec::new();
    for (_, node) in cluster.live() {
        let mut client = logged_in(node.chat, "payee");
        assert!(block_of(&mut client, first).is_some() && block_of(&mut client, second).is_some());
        let (height, tip, _, _) = chain(&mut client);
        let mine: Vec<Hash32> = (1..=height)
            .map(
                |h| match ok(client.call(&Request::GetBlock { height: h })) {
                    Reply::Block(block) => block.hash,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(mine.last(), Some(&tip));
        if hashes.is_empty() {
            hashes = mine;
        } else {
            assert_eq!(mine, hashes, "every member holds the same blocks");
        }
    }
    // Killed with -9, a member's disk holds the log up to the commit index it last wrote: the
    // chain verify-chain checks is a prefix of the one it served, block for block.
    for id in 1..=3 {
        cluster.kill(id);
        let (good, stdout, stderr) = verify_chain(&cluster.data_dir(id));
        assert!(good, "member {id}: {stdout}{stderr}");
        let height: usize = stdout
            .split("height ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|h| h.parse().ok())
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(
            height >= 1 && height <= hashes.len(),
            "member {id}: {stdout}"
        );
        assert!(
            stdout.contains(&format!("tip {}", hashes[height - 1])),
            "member {id}: {stdout} (blocks {hashes:?})"
        );
    }
}

#[test]
fn random_concurrent_transfers_conserve_the_supply() {
    const USERS: usize = 6;
    let dir = data_dir();
    let node = Node::start(dir.path(), LEDGER);
    let names: Vec<String> = (0..USERS).map(|i| format!("user{i}")).collect();
    for name in &names {
        node.create(name);
    }
    let workers: Vec<_> = (0..USERS)
        .map(|i| {
            let (addr, names) = (node.chat, names.clone());
            thread::spawn(move || {
                let mut client = logged_in(addr, &names[i]);
                let mut seed = 0x9e37_79b9_u64.wrapping_mul(i as u64 + 1);
                let mut accepted = 0;
                for _ in 0..30 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let to = names[(seed % USERS as u64) as usize].clone();
                    let amount = 1 + (seed >> 8) % 80;
                    let request = Request::Transfer {
                        to,
                        amount,
                        key: None,
                    };
                    match client.call(&request).unwrap() {
                        Ok(Reply::Pooled { .. }) => accepted += 1,
                        Err(error) => assert_eq!(error.code, ErrorCode::InsufficientFunds),
                        Ok(other) => panic!("{other:?}"),
                    }
                }
                accepted
            })
        })
        .collect();
    let accepted: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(accepted > 0);
    let mut client = logged_in(node.chat, &names[0]);
    assert!(
        wait_until(PATIENCE, || chain(&mut client).2 == 0),
        "the pool is sealed"
    );
    let (height, _, _, supply) = chain(&mut client);
    assert!(height >= 1);
    assert_eq!(supply, 1000 * USERS as u64);
    let total: u64 = names
        .iter()
        .map(|name| {
            let (confirmed, pending) = balance(&mut logged_in(node.chat, name));
            assert_eq!(pending, 0);
            confirmed
        })
        .sum();
    assert_eq!(total, supply);
    // Every block checks, offline too.
    let (_, stderr) = node.kill_and_collect();
    let verified = verify_chain(dir.path());
    assert!(verified.0, "{verified:?}\n{stderr}");
}

#[test]
fn a_transfer_sent_again_with_its_key_pays_once() {
    for protocol in PROTOCOLS {
        let dir = data_dir();
        let mut args = LEDGER.to_vec();
        args.extend(["--snapshot-every-records", "3"]);
        let node = Node::start(dir.path(), &args);
        node.create("ann");
        node.create("ben");
        let mut ann = node.login(protocol, "ann");
        let request = Request::keyed_transfer("ben", 10);
        let Reply::Pooled { txid } = ok(ann.call(&request)) else {
            panic!("not a transfer answer");
        };
        assert_eq!(
            ok(ann.call(&request)),
            Reply::Pooled { txid },
            "{protocol:?}"
        );
        let (confirmed, pending) = balance(&mut ann);
        assert_eq!(confirmed as i64 + pending, 990, "{protocol:?}: paid once");

        // The key names that transfer: another amount under it is refused, saying so.
        let Request::Transfer { key, .. } = &request else {
            unreachable!()
        };
        let other = Request::Transfer {
            to: "ben".into(),
            amount: 11,
            key: key.clone(),
        };
        let error = err(ann.call(&other), ErrorCode::InvalidArgument);
        assert!(error.message.contains("new key"), "{error:?}");

        // Sealed, the transfer keeps its key; so does a restart (snapshot, then the log).
        assert!(wait_until(PATIENCE, || block_of(&mut ann, txid).is_some()));
        assert_eq!(ok(ann.call(&request)), Reply::Pooled { txid });
        drop(ann);
        node.kill();
        let node = Node::start(dir.path(), &args);
        let mut ann = node.login(protocol, "ann");
        assert_eq!(ok(ann.call(&request)), Reply::Pooled { txid });
        let (confirmed, pending) = balance(&mut ann);
        assert_eq!(
            confirmed as i64 + pending,
            990,
            "{protocol:?}: still paid once"
        );

        for key in [String::new(), "k".repeat(65)] {
            let request = Request::Transfer {
                to: "ben".into(),
                amount: 1,
                key: Some(key),
            };
            let error = err(ann.call(&request), ErrorCode::InvalidArgument);
            assert!(error.message.contains("1 to 64 bytes"), "{error:?}");
        }
    }
}

/// A balance is read at one point of the ledger: while blocks move the grants from the pool to
/// the confirmed outputs, every read of an account that only holds its grant adds up to it
/// (a read of the confirmed outputs before a block and of the pool after it would give 0).
#[test]
fn balances_never_show_a_block_half_applied() {
    let dir = data_dir();
    let node = Node::start(dir.path(), LEDGER);
    let names: Vec<String> = (0..8).map(|i| format!("holder{i}")).collect();
    let mut reads = 0;
    for name in &names {
        node.create(name);
        let mut client = node.login(Protocol::Binary, name);
        assert!(wait_until(PATIENCE, || {
            let (confirmed, pending) = balance(&mut client);
            reads += 1;
            assert_eq!(confirmed as i64 + pending, 1000, "{name}: read {reads}");
            confirmed == 1000
        }));
    }
    assert!(reads >= names.len());
}

/// Runs `verify-chain` on `dir`: (success, stdout, stderr).
fn verify_chain(dir: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_synckit-node"))
        .args(["verify-chain", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_chain_accepts_a_killed_node_and_names_damage() {
    let dir = data_dir();
    let mut args = LEDGER.to_vec();
    args.extend(["--snapshot-every-records", "1"]);
    let node = Node::start(dir.path(), &args);
    for name in ["ann", "ben"] {
        node.create(name);
    }
    let mut ann = node.login(Protocol::Binary, "ann");
    for amount in [10, 20, 30] {
        ok(ann.call(&Request::Transfer {
            to: "ben".into(),
            amount,
            key: None,
        }));
    }
    assert!(wait_until(PATIENCE, || chain(&mut ann).2 == 0));
    let (height, tip, _, _) = chain(&mut ann);
    node.kill();

    let (good, stdout, stderr) = verify_chain(dir.path());
    assert!(good, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("height {height} tip {tip}")),
        "{stdout}"
    );
    // Restarted, it holds the same chain.
    let node = Node::start(dir.path(), &args);
    assert_eq!(chain(&mut node.login(Protocol::Json, "ann")).1, tip);
    node.kill();

    // A block changed in the snapshot: named by verify-chain, refused at start.
    let snapshot = dir.path().join("snapshot.json");
    let original = std::fs::read(&snapshot).unwrap();
    let mut image: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let amount = &mut image["ledger"]["blocks"][0]["txs"][0]["outputs"][0]["amount"];
    assert!(
        amount.is_u64(),
        "the snapshot holds the first block: {image}"
    );
    *amount = (amount.as_u64().unwrap() + 1).into();
    std::fs::write(&snapshot, serde_json::to_vec(&image).unwrap()).unwrap();
    let (good, _, stderr) = verify_chain(dir.path());
    assert!(!good && stderr.contains("block 1"), "{stderr}");
    let Err(refused) = Node::try_start(dir.path(), &args) else {
        panic!("a changed block is refused at start");
    };
    assert!(refused.stderr.contains("block 1"), "{}", refused.stderr);
    std::fs::write(&snapshot, &original).unwrap();

    // A damaged raft log: the file is named. Started without a snapshot at every record, the node
    // keeps the entry acknowledged here in its log, after the head of the segment. The damage
    // goes into the first record of the first segment, which is followed by more records, so it
    // cannot pass for a torn tail (that would be cut, not refused).
    let node = Node::start(dir.path(), LEDGER);
    ok(node
        .login(Protocol::Binary, "ann")
        .call(&Request::Transfer {
            to: "ben".into(),
            amount: 1,
            key: None,
        }));
    node.kill();
    let segments = std::fs::read_dir(dir.path().join("raft"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect::<BTreeSet<_>>();
    let segment = segments.first().expect("a raft segment").clone();
    let mut bytes = std::fs::read(&segment).unwrap();
    let first_record_len = 8 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert!(
        segments.len() > 1 || bytes.len() > first_record_len,
        "a record follows the damaged one: {} segments, {} bytes",
        segments.len(),
        bytes.len()
    );
    // Inside the payload (past the length and the checksum), so the checksum fails.
    bytes[8 + 1] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let (good, _, stderr) = verify_chain(dir.path());
    assert!(
        !good && stderr.contains(&segment.file_name().unwrap().to_string_lossy().to_string()),
        "{stderr}"
    );
}
