//! Durability against a real process: state survives kill + restart (with and without snapshots
//! and log truncation), every acknowledged message and account survives `kill -9` in the middle
//! of a stream of sends and account creations exactly once, damage inside the log stops the node,
//! and a second node on the same data directory is refused.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{
    Node, PASSWORD, PROMPT, data_dir, delete, err, list_all, ok, read, read_all, send,
    unread_at_login, wait_until,
};
use synckit_node::client::Client;
use synckit_node::protocol::Protocol;
use synckit_node::protocol::{ErrorCode, Reply, Request};

/// The first segment of raft's log (a single node is a one-member raft group), in `raft/`.
const FIRST_SEGMENT: &str = "raft-00000000000000000001.log";

/// The segments of raft's log in the data directory `dir`.
fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("raft"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("raft-") && n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

/// What phase one leaves behind, to be checked after the restart.
struct Expected {
    /// bob's undelivered messages, oldest first: (id, text).
    bob_unread: Vec<(u64, String)>,
    /// The largest message id given out.
    max_id: u64,
}

/// Builds state with every kind of change: accounts created and deleted, messages queued,
/// read (delivered), pushed live (delivered), deleted.
fn phase_one(node: &Node, snapshots: bool) -> Expected {
    let mut alice = node.user(Protocol::Binary, "alice");
    for name in ["bob", "carol", "dave", "erin"] {
        node.create(name);
    }
    let m1 = send(&mut alice, "bob", "m1 will be read");
    let m2 = send(&mut alice, "bob", "m2 will be deleted");
    let m3 = send(&mut alice, "bob", "m3 stays unread");
    let mut bob = node.login(Protocol::Json, "bob");
    assert_eq!(read(&mut bob, 1)[0].id, m1);
    assert_eq!(delete(&mut bob, &[m2]), 1);
    ok(bob.call(&Request::Logout));
    send(&mut alice, "carol", "dies with carol");
    let mut carol = node.login(Protocol::Binary, "carol");
    ok(carol.call(&Request::DeleteAccount {
        password: PASSWORD.into(),
    }));
    // A live push: delivered without a read. Its "delivered" mark is not waited for, but it is
    // queued before the push's sender is answered, so the next acknowledged change (m4) makes
    // it durable too.
    let mut dave = node.login(Protocol::Binary, "dave");
    let pushed = send(&mut alice, "dave", "pushed to dave");
    assert_eq!(dave.next_push(Some(PROMPT)).unwrap().unwrap().id, pushed);
    let m4 = send(&mut alice, "bob", "m4 stays unread");
    let mut unread = vec![
        (m3, "m3 stays unread".to_string()),
        (m4, "m4 stays unread".into()),
    ];

    if snapshots {
        // A snapshot has been taken and the first log segment deleted behind it.
        let dir = &node.data_dir;
        assert!(
            wait_until(PROMPT * 2, || dir.join("snapshot.json").exists()
                && !segments(dir).iter().any(|s| s == FIRST_SEGMENT)),
            "a snapshot and log truncation; files: {:?}",
            std::fs::read_dir(dir.join("raft"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
        // Changes after the snapshot, some to state the snapshot holds.
        let mut erin = node.login(Protocol::Json, "erin");
        let e1 = send(&mut alice, "erin", "e1 read after the snapshot");
        assert_eq!(erin.next_push(Some(PROMPT)).unwrap().unwrap().id, e1);
        ok(erin.call(&Request::Logout));
        let m5 = send(&mut alice, "bob", "m5 after the snapshot");
        let mut bob = node.login(Protocol::Binary, "bob");
        assert_eq!(delete(&mut bob, &[m3]), 1, "m3 is in the snapshot");
        ok(bob.call(&Request::Logout));
        unread.remove(0);
        unread.push((m5, "m5 after the snapshot".into()));
        let mut erin = node.login(Protocol::Binary, "erin");
        ok(erin.call(&Request::DeleteAccount {
            password: PASSWORD.into(),
        }));
    }
    let max_id = unread.iter().map(|(id, _)| *id).max().unwrap();
    Expected {
        bob_unread: unread,
        max_id,
    }
}

fn check_after_restart(node: &Node, expected: &Expected, snapshots: bool) {
    let mut alice = node.login(Protocol::Binary, "alice");
    let accounts = if snapshots {
        vec!["alice", "bob", "dave"]
    } else {
        vec!["alice", "bob", "dave", "erin"]
    };
    assert_eq!(list_all(&mut alice, "*", 2), accounts);
    // Deleted accounts stay deleted: no login, no mail, the name is free with an empty mailbox.
    err(
        node.connect(Protocol::Json).login("carol", PASSWORD),
        ErrorCode::AuthFailed,
    );
    err(
        alice.call(&Request::SendMessage {
            to: "carol".into(),
            text: "x".into(),
            key: None,
        }),
        ErrorCode::NoSuchUser,
    );
    let mut carol = node.connect(Protocol::Json);
    ok(carol.create_account("carol", PASSWORD));
    assert_eq!(unread_at_login(&mut carol, "carol"), 0);
    assert!(read(&mut carol, 100).is_empty());

    // bob: exactly the undelivered messages, nothing read or deleted comes back.
    let mut bob = node.connect(Protocol::Json);
    assert_eq!(
        unread_at_login(&mut bob, "bob") as usize,
        expected.bob_unread.len()
    );
    let got: Vec<(u64, String)> = read(&mut bob, 100)
        .into_iter()
        .map(|m| {
            assert_eq!(m.from, "alice");
            (m.id, m.text)
        })
        .collect();
    assert_eq!(got, expected.bob_unread);
    ok(bob.call(&Request::Logout));
    // dave's pushed message was delivered before the crash.
    let mut dave = node.connect(Protocol::Binary);
    assert_eq!(unread_at_login(&mut dave, "dave"), 0);
    assert!(read(&mut dave, 100).is_empty());
    ok(dave.call(&Request::Logout));
    // New ids continue after the old ones.
    let id = send(&mut alice, "bob", "after the restart");
    assert!(
        id > expected.max_id,
        "id {id} reused (max was {})",
        expected.max_id
    );
}

#[test]
fn state_survives_a_restart() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let expected = phase_one(&node, false);
    node.kill();
    assert!(!dir.path().join("snapshot.json").exists());
    let node = Node::start(dir.path(), &[]);
    check_after_restart(&node, &expected, false);
    // And once more: what the second run changed survives as well.
    node.kill();
    let node = Node::start(dir.path(), &[]);
    let mut bob = node.login(Protocol::Binary, "bob");
    let rest = read_all(&mut bob);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].text, "after the restart");
}

#[test]
fn state_survives_a_restart_with_snapshots_and_log_truncation() {
    let dir = data_dir();
    let args = ["--snapshot-every-records", "5"];
    let node = Node::start(dir.path(), &args);
    let expected = phase_one(&node, true);
    node.kill();
    let node = Node::start(dir.path(), &args);
    check_after_restart(&node, &expected, true);
    // The restarted node keeps snapshotting and truncating.
    let before = std::fs::read(dir.path().join("snapshot.json")).unwrap();
    let mut alice = node.login(Protocol::Binary, "alice");
    for i in 0..6 {
        send(&mut alice, "dave", &format!("more {i}"));
    }
    assert!(wait_until(PROMPT * 2, || std::fs::read(
        dir.path().join("snapshot.json")
    )
    .unwrap()
        != before));
    node.kill();
    let node = Node::start(dir.path(), &args);
    let mut dave = node.login(Protocol::Binary, "dave");
    let texts: Vec<String> = read_all(&mut dave).into_iter().map(|m| m.text).collect();
    assert_eq!(
        texts,
        (0..6).map(|i| format!("more {i}")).collect::<Vec<_>>()
    );
}

/// One message a sender attempted, and whether the node acknowledged it.
#[derive(Clone, Debug)]
struct Attempt {
    to: String,
    from: String,
    text: String,
    acked_id: Option<u64>,
}

fn kill_nine_while_sending(args: &[&str], snapshots: bool) {
    const SENDERS: usize = 4;
    const RECIPIENTS: [&str; 2] = ["r0", "r1"];
    const ACKED_BEFORE_KILL: usize = 400;
    // Accounts are created meanwhile, by two connections racing each other and the senders.
    const CREATORS: usize = 2;
    const ACCOUNTS_BEFORE_KILL: usize = 10;
    let dir = data_dir();
    let node = Node::start(dir.path(), args);
    for r in RECIPIENTS {
        node.create(r);
    }
    let senders: Vec<Client> = (0..SENDERS)
        .map(|i| node.user(Protocol::Binary, &format!("s{i}")))
        .collect();

    let acked = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let threads: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let (acked, attempts) = (Arc::clone(&acked), Arc::clone(&attempts));
            thread::spawn(move || {
                let from = format!("s{i}");
                for n in 0.. {
                    let to = RECIPIENTS[n % RECIPIENTS.len()].to_string();
                    let text = format!("{from} #{n} {}", "x".repeat(n % 50));
                    let index = {
                        let mut all = attempts.lock().unwrap();
                        all.push(Attempt {
                            to: to.clone(),
                            from: from.clone(),
                            text: text.clone(),
                            acked_id: None,
                        });
                        all.len() - 1
                    };
                    match client.call(&Request::SendMessage {
                        to,
                        text,
                        key: None,
                    }) {
                        Ok(Ok(Reply::Sent { id, .. })) => {
                            attempts.lock().unwrap()[index].acked_id = Some(id);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(other) => panic!("send refused: {other:?}"),
                        Err(_) => break, // the node is gone
                    }
                }
            })
        })
        .collect();
    let created = Arc::new(AtomicUsize::new(0));
    // Every account name tried, and whether the node acknowledged it.
    let accounts = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
    let creators: Vec<_> = (0..CREATORS)
        .map(|c| {
            let mut client = node.connect(Protocol::Json);
            let (created, accounts) = (Arc::clone(&created), Arc::clone(&accounts));
            thread::spawn(move || {
                for n in 0.. {
                    let name = format!("c{c}-{n}");
                    let index = {
                        let mut all = accounts.lock().unwrap();
                        all.push((name.clone(), false));
                        all.len() - 1
                    };
                    match client.create_account(&name, PASSWORD) {
                        Ok(Ok(Reply::Done {})) => {
                            accounts.lock().unwrap()[index].1 = true;
                            created.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(other) => panic!("create_account {name} refused: {other:?}"),
                        Err(_) => break, // the node is gone
                    }
                }
            })
        })
        .collect();
    let snapshot = dir.path().join("snapshot.json");
    assert!(
        wait_until(Duration::from_secs(120), || acked.load(Ordering::Relaxed)
            >= ACKED_BEFORE_KILL
            && created.load(Ordering::Relaxed) >= ACCOUNTS_BEFORE_KILL
            && (!snapshots || snapshot.exists())),
        "the senders got {} acknowledgements, the creators {}; snapshot: {}",
        acked.load(Ordering::Relaxed),
        created.load(Ordering::Relaxed),
        snapshot.exists()
    );
    node.kill(); // SIGKILL, mid-stream
    for t in threads.into_iter().chain(creators) {
        t.join().expect("a sender or creator thread panicked");
    }
    let attempts = Arc::try_unwrap(attempts).unwrap().into_inner().unwrap();
    let acked: Vec<&Attempt> = attempts.iter().filter(|a| a.acked_id.is_some()).collect();
    assert!(acked.len() >= ACKED_BEFORE_KILL);

    let node = Node::start(dir.path(), args);
    let mut by_id: BTreeMap<u64, (String, String, String)> = BTreeMap::new();
    for r in RECIPIENTS {
        let mut client = node.login(Protocol::Binary, r);
        for m in read_all(&mut client) {
            let previous = by_id.insert(m.id, (r.to_string(), m.from, m.text));
            assert!(previous.is_none(), "message {} read twice", m.id);
        }
    }
    for a in &acked {
        let id = a.acked_id.unwrap();
        let found = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("acknowledged message {id} ({a:?}) is lost"));
        assert_eq!(
            found,
            &(a.to.clone(), a.from.clone(), a.text.clone()),
            "message {id}"
        );
    }
    // Whatever else survived was really sent (an attempt that was not answered in time).
    let attempted: HashMap<&str, &Attempt> =
        attempts.iter().map(|a| (a.text.as_str(), a)).collect();
    for (id, (to, from, text)) in &by_id {
        let a = attempted
            .get(text.as_str())
            .unwrap_or_else(|| panic!("message {id} {text:?} was never sent"));
        assert_eq!((&a.to, &a.from), (to, from));
        assert!(a.acked_id.is_none_or(|acked| acked == *id));
    }
    let unacked_kept = by_id.len() - acked.len();
    eprintln!(
        "{} attempts, {} acknowledged, {} unacknowledged kept",
        attempts.len(),
        acked.len(),
        unacked_kept
    );
    assert!(
        unacked_kept <= SENDERS,
        "{unacked_kept} unanswered messages kept"
    );

    // Every acknowledged account exists once and logs in; any other was at least attempted.
    let accounts = Arc::try_unwrap(accounts).unwrap().into_inner().unwrap();
    let mut s0 = node.login(Protocol::Binary, "s0");
    let listed = list_all(&mut s0, "c*", 100);
    assert!(
        listed.windows(2).all(|pair| pair[0] < pair[1]),
        "each account is listed once: {listed:?}"
    );
    let acked_accounts: Vec<&String> = accounts
        .iter()
        .filter(|(_, acked)| *acked)
        .map(|(name, _)| name)
        .collect();
    assert!(acked_accounts.len() >= ACCOUNTS_BEFORE_KILL);
    for name in &acked_accounts {
        assert!(listed.contains(name), "acknowledged account {name} is lost");
        node.login(Protocol::Binary, name);
    }
    for name in &listed {
        assert!(
            accounts.iter().any(|(tried, _)| tried == name),
            "account {name} was never created"
        );
    }
    let unacked_accounts = listed.len() - acked_accounts.len();
    eprintln!(
        "{} account creations, {} acknowledged, {unacked_accounts} unacknowledged kept",
        accounts.len(),
        acked_accounts.len()
    );
    assert!(
        unacked_accounts <= CREATORS,
        "{unacked_accounts} unanswered creations kept"
    );

    // And the node works on: new ids above every old one.
    let id = send(&mut s0, "r0", "after the crash");
    assert!(id > *by_id.keys().last().unwrap());
}

#[test]
fn acknowledged_messages_survive_kill_9_exactly_once() {
    kill_nine_while_sending(&[], false);
}

#[test]
fn acknowledged_messages_survive_kill_9_during_snapshots() {
    kill_nine_while_sending(&["--snapshot-every-records", "20"], true);
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let dir = data_dir();
    let first = Node::start(dir.path(), &[]);
    let mut alice = first.user(Protocol::Binary, "alice");
    let failure = match Node::try_start(dir.path(), &[]) {
        Ok(second) => panic!("a second node started on {}", second.data_dir.display()),
        Err(failure) => failure,
    };
    let status = failure.status.expect("the second node exits by itself");
    assert!(!status.success(), "{status}");
    assert!(
        failure.stderr.contains(&dir.path().display().to_string()),
        "stderr names the data dir: {}",
        failure.stderr
    );
    assert!(
        failure.stderr.contains(&first.pid().to_string()),
        "stderr names the holder's pid {}: {}",
        first.pid(),
        failure.stderr
    );
    assert!(!failure.stdout.contains("listening"), "{}", failure.stdout);
    // The first node is unaffected.
    first.assert_running();
    assert_eq!(list_all(&mut alice, "*", 10), ["alice"]);
    // Once the first is gone, a node starts on the directory and has its state.
    first.kill();
    let second = Node::start(dir.path(), &[]);
    let mut alice = second.login(Protocol::Json, "alice");
    assert_eq!(list_all(&mut alice, "*", 10), ["alice"]);
}

#[test]
fn damage_inside_the_log_stops_the_node_instead_of_dropping_what_follows() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut alice = node.user(Protocol::Binary, "alice");
    for i in 0..3 {
        send(&mut alice, "alice", &format!("note {i}"));
    }
    node.kill();
    // Damage the second record's payload (the hard state in the head); whole records follow
    // it (the rest of the head, the entries).
    let segment = dir.path().join("raft").join(FIRST_SEGMENT);
    let mut bytes = std::fs::read(&segment).unwrap();
    let second = 8 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    bytes[second + 8 + 2] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    let failure = match Node::try_start(dir.path(), &[]) {
        Ok(node) => panic!(
            "a node started on a damaged log: {}",
            node.data_dir.display()
        ),
        Err(failure) => failure,
    };
    assert!(
        !failure.status.expect("it exits by itself").success(),
        "{failure:?}"
    );
    for needle in [
        segment.display().to_string(),
        format!("damaged at byte {second} "),
    ] {
        assert!(
            failure.stderr.contains(&needle),
            "stderr names {needle:?}: {}",
            failure.stderr
        );
    }
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "nothing is cut from a log the node refused"
    );
}

/// SIGTERM (or Ctrl-C) stops the node in order: the "delivered" marks of live pushes, which
/// nobody waits for, are made durable before it exits, so after a restart nothing already pushed
/// is offered again (after `kill -9` it may be: delivery is at least once).
#[test]
fn sigterm_syncs_the_log_so_pushed_messages_stay_delivered() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    node.create("alice");
    node.create("bob");
    let mut bob = node.login(Protocol::Binary, "bob");
    let mut alice = node.login(Protocol::Binary, "alice");
    let sent: Vec<u64> = (0..5)
        .map(|i| send(&mut alice, "bob", &format!("live {i}")))
        .collect();
    let pushed: Vec<u64> = (0..5)
        .map(|_| {
            bob.next_push(Some(PROMPT))
                .unwrap()
                .expect("a live push")
                .id
        })
        .collect();
    assert_eq!(pushed, sent);

    let term = std::process::Command::new("kill")
        .args(["-TERM", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(
        wait_until(PROMPT, || node.try_wait().is_some()),
        "the node stops on SIGTERM"
    );
    let status = node.try_wait().unwrap();
    assert!(status.success(), "an orderly stop exits 0: {status}");
    assert!(node.stderr().contains("node stopped"), "{}", node.stderr());
    drop((alice, bob));
    node.kill();

    let node = Node::start(dir.path(), &[]);
    let mut bob = node.connect(Protocol::Binary);
    assert_eq!(
        unread_at_login(&mut bob, "bob"),
        0,
        "pushed messages stay delivered"
    );
}

/// A single node is a one-member raft group that campaigns as it starts (it is its only voter):
/// its first write after a start waits for no election timeout (1 to 2 s).
#[test]
fn a_single_node_takes_writes_as_soon_as_it_starts() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    node.create("bob");
    let mut alice = node.user(Protocol::Binary, "alice");
    send(&mut alice, "bob", "before");
    drop(alice);
    node.kill();

    let started = std::time::Instant::now();
    let node = Node::start(dir.path(), &[]);
    let mut alice = node.login(Protocol::Binary, "alice");
    send(&mut alice, "bob", "after the restart");
    let first_write = started.elapsed();
    eprintln!("first write {first_write:?} after the start");
    assert!(
        first_write < Duration::from_millis(900),
        "the first write took {first_write:?}: an election timeout is at least 1 s"
    );
    assert_eq!(node.stats()["raft"]["role"], "leader");
}
