//! Replication, tested on real member processes on loopback: what a cluster survives and what it
//! guarantees.
//!
//! - any two of five killed (`kill -9`) while eight clients send, ten rounds with different
//!   pairs: writes go on through the survivors; the two restart and catch up; every
//!   acknowledged message is stored exactly once, and every member reports the same digest at
//!   the same applied index;
//! - three of five killed: nothing is acknowledged (a clear error), nothing is lost, and one
//!   restart brings the service back;
//! - a member that was down while the others compacted their logs catches up from a snapshot;
//! - a member whose raft log is damaged refuses to start, naming the file and the offset;
//! - a member (follower, then leader) whose fsyncs fail cuts its log back to what is durable,
//!   restarts raft from it and catches up: nothing acknowledged is lost or stored twice.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Node, PASSWORD, wait_until};
use synckit_node::client::{FailoverClient, FailoverOptions, idempotency_key};
use synckit_node::protocol::{ErrorCode, Protocol, Reply, Request};

/// Long enough for an election (1 to 2 s) plus a write's own timeout (5 s), with room.
const SETTLE: Duration = Duration::from_secs(30);

/// A cluster of member processes described by one cluster file.
struct TestCluster {
    _dir: tempfile::TempDir,
    file: PathBuf,
    chat: Vec<SocketAddr>,
    data: Vec<PathBuf>,
    members: Vec<Option<Node>>,
    /// Per member: what its command runs through (empty: nothing).
    wrappers: Vec<Vec<String>>,
    extra: Vec<String>,
}

impl TestCluster {
    /// Writes a cluster file of `size` members on free loopback ports and starts them all.
    fn start(size: usize, extra: &[&str]) -> TestCluster {
        TestCluster::start_on(
            common::free_member_addrs(size),
            vec![Vec::new(); size],
            extra,
        )
    }

    /// Writes a cluster file of members at `addrs` (chat, HTTP, raft) and starts each, its
    /// command run through its `wrappers` entry (e.g. `ip netns exec NS`).
    fn start_on(
        addrs: Vec<[SocketAddr; 3]>,
        wrappers: Vec<Vec<String>>,
        extra: &[&str],
    ) -> TestCluster {
        let dir = common::data_dir();
        let data: Vec<PathBuf> = (1..=addrs.len())
            .map(|id| dir.path().join(format!("node-{id}")))
            .collect();
        let file = common::write_cluster_file_at(dir.path(), &addrs, &data);
        let chat = addrs.iter().map(|[chat, _, _]| *chat).collect();
        let mut cluster = TestCluster {
            _dir: dir,
            file,
            chat,
            data,
            members: (0..addrs.len()).map(|_| None).collect(),
            wrappers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for id in 1..=addrs.len() as u64 {
            cluster.restart(id);
        }
        cluster
    }

    fn restart(&mut self, id: u64) {
        let node = self.try_restart(id).unwrap_or_else(|failure| {
            panic!("member {id} did not start: {failure:#?}");
        });
        self.members[id as usize - 1] = Some(node);
    }

    fn try_restart(&mut self, id: u64) -> Result<Node, common::StartFailure> {
        let file = self.file.display().to_string();
        let id_text = id.to_string();
        let mut args = vec!["--cluster", &file, "--id", &id_text];
        args.extend(self.extra.iter().map(String::as_str));
        let wrapper: Vec<&str> = self.wrappers[id as usize - 1]
            .iter()
            .map(String::as_str)
            .collect();
        Node::try_start_wrapped(&self.data[id as usize - 1], &args, &wrapper, |_| {})
    }

    fn kill(&mut self, id: u64) {
        if let Some(node) = self.members[id as usize - 1].take() {
            node.kill();
        }
    }

    fn live(&self) -> impl Iterator<Item = (u64, &Node)> {
        self.members
            .iter()
            .enumerate()
            .filter_map(|(i, node)| node.as_ref().map(|node| (i as u64 + 1, node)))
    }

    /// The leader, once a live member says it is one.
    fn wait_for_leader(&self) -> u64 {
        let mut leader = None;
        assert!(
            wait_until(SETTLE, || {
                leader = self
                    .live()
                    .find(|(_, node)| node.stats()["raft"]["role"] == "leader")
                    .map(|(id, _)| id);
                leader.is_some()
            }),
            "no leader among the live members within {SETTLE:?}"
        );
        leader.unwrap()
    }

    /// Waits until every live member reports the same applied index and digest; returns them.
    fn wait_converged(&self) -> (u64, String) {
        let mut seen = Vec::new();
        let converged = wait_until(SETTLE, || {
            seen = self
                .live()
                .map(|(_, node)| {
                    let stats = node.stats();
                    (
                        stats["applied_index"].as_u64().unwrap(),
                        stats["state_digest"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            seen.windows(2).all(|w| w[0] == w[1])
        });
        assert!(converged, "members did not converge: {seen:?}");
        seen[0].clone()
    }
}

/// A logged-in user of the cluster, through the client library's [`FailoverClient`] (which
/// follows `not_leader`, skips dead members, logs in again and retries sends with their key).
struct Writer {
    addrs: Vec<String>,
    user: String,
    client: Option<FailoverClient>,
}

impl Writer {
    fn new(addrs: &[SocketAddr], user: &str, start: usize) -> Writer {
        // Each writer starts at a different member.
        let mut addrs: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
        let first = start % addrs.len();
        addrs.rotate_left(first);
        Writer {
            addrs,
            user: user.to_string(),
            client: None,
        }
    }

    fn connected(&mut self) -> Option<&mut FailoverClient> {
        if self.client.is_none() {
            let options = FailoverOptions {
                deadline: SETTLE,
                ..FailoverOptions::default()
            };
            let mut client =
                FailoverClient::connect_with(&self.addrs, Protocol::Binary, options).ok()?;
            match client.login(&self.user, PASSWORD) {
                Ok(Ok(_)) => self.client = Some(client),
                _ => return None,
            }
        }
        self.client.as_mut()
    }

    /// Sends until acknowledged or `deadline`; the message id.
    fn send(&mut self, to: &str, text: &str, deadline: Instant) -> Option<u64> {
        let request = Request::SendMessage {
            to: to.into(),
            text: text.into(),
            key: Some(idempotency_key()),
        };
        while Instant::now() < deadline {
            let Some(client) = self.connected() else {
                thread::sleep(Duration::from_millis(50));
                continue;
            };
            match client.call(&request) {
                Ok(Ok(Reply::Sent { id, .. })) => return Some(id),
                Ok(Ok(other)) => panic!("unexpected answer to a send: {other:?}"),
                Ok(Err(error)) => {
                    assert!(
                        matches!(error.code, ErrorCode::NotLeader | ErrorCode::Unavailable),
                        "a send failed with {error:?}"
                    );
                }
                Err(_) => self.client = None,
            }
        }
        None
    }
}

/// Every acknowledged message (id → text), from every writer.
type Acknowledged = Arc<std::sync::Mutex<HashMap<u64, String>>>;

/// Eight writers sending to `sink` until `stop`; what each acknowledged goes to `acked`.
fn writers(
    round: usize,
    addrs: &[SocketAddr],
    stop: &Arc<AtomicBool>,
    acked: &Acknowledged,
) -> Vec<thread::JoinHandle<usize>> {
    (0..8)
        .map(|w| {
            let (addrs, stop, acked) = (addrs.to_vec(), Arc::clone(stop), Arc::clone(acked));
            thread::spawn(move || {
                let mut writer = Writer::new(&addrs, &format!("writer{w}"), w);
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    let text = format!("r{round}-w{w}-{sent}");
                    let deadline = Instant::now() + SETTLE;
                    let id = writer
                        .send("sink", &text, deadline)
                        .unwrap_or_else(|| panic!("writer {w}: {text} not acknowledged"));
                    assert!(
                        acked.lock().unwrap().insert(id, text).is_none(),
                        "one id acknowledged twice"
                    );
                    sent += 1;
                }
                sent
            })
        })
        .collect()
}

fn create_accounts(cluster: &TestCluster, names: &[&str]) {
    let addrs: Vec<String> = cluster.chat.iter().map(SocketAddr::to_string).collect();
    let options = FailoverOptions {
        deadline: SETTLE,
        ..FailoverOptions::default()
    };
    let mut client = FailoverClient::connect_with(&addrs, Protocol::Binary, options).unwrap();
    for name in names {
        match client.create_account(name, PASSWORD).unwrap() {
            Ok(_) => {}
            // A retry of a creation whose answer was lost.
            Err(error) if error.code == ErrorCode::UserExists => {}
            Err(error) => panic!("creating {name}: {error:?}"),
        }
    }
}

/// Reads every message of `sink` through the cluster, checking each acknowledged one is there
/// exactly once; returns everything read.
fn assert_stored_once(cluster: &TestCluster, acked: &HashMap<u64, String>) -> HashMap<u64, String> {
    let mut reader = Writer::new(&cluster.chat, "sink", 0);
    let mut seen: HashMap<u64, String> = HashMap::new();
    let deadline = Instant::now() + SETTLE;
    loop {
        assert!(Instant::now() < deadline, "could not read sink's messages");
        let Some(client) = reader.connected() else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        match client.call(&Request::ReadMessages { limit: 100 }) {
            Ok(Ok(Reply::Messages { messages })) if messages.is_empty() => break,
            Ok(Ok(Reply::Messages { messages })) => {
                for message in messages {
                    assert!(
                        seen.insert(message.id, message.text).is_none(),
                        "message {} read twice",
                        message.id
                    );
                }
            }
            other => {
                eprintln!("reading sink's messages: {other:?}; connecting again");
                reader.client = None;
            }
        }
    }
    let texts: HashSet<&String> = seen.values().collect();
    assert_eq!(texts.len(), seen.len(), "a text is stored twice");
    for (id, text) in acked {
        assert_eq!(
            seen.get(id),
            Some(text),
            "acknowledged message {id} is missing"
        );
    }
    seen
}

#[test]
fn any_two_of_five_may_fail_and_nothing_acknowledged_is_lost() {
    let mut cluster = TestCluster::start(5, &[]);
    cluster.wait_for_leader();
    let mut names: Vec<String> = (0..8).map(|w| format!("writer{w}")).collect();
    names.push("sink".into());
    create_accounts(
        &cluster,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let acked: Acknowledged = Default::default();
    // Ten rounds, ten different pairs; the leader is among the victims in some of them.
    let pairs = [
        (1, 2),
        (3, 4),
        (5, 1),
        (2, 3),
        (4, 5),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 1),
        (5, 2),
    ];
    for (round, (a, b)) in pairs.into_iter().enumerate() {
        let leader = cluster.wait_for_leader();
        // Every third round, kill the leader and one more.
        let (a, b) = if round % 3 == 0 && leader != b {
            (leader, b)
        } else {
            (a, b)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let threads = writers(round, &cluster.chat, &stop, &acked);
        let before = acked.lock().unwrap().len();
        assert!(wait_until(SETTLE, || acked.lock().unwrap().len() >= before + 40));
        cluster.kill(a);
        cluster.kill(b);
        // Writes go on through the three survivors.
        let at_kill = acked.lock().unwrap().len();
        assert!(
            wait_until(SETTLE, || acked.lock().unwrap().len() >= at_kill + 80),
            "round {round}: writes did not resume after killing {a} and {b}"
        );
        cluster.restart(a);
        cluster.restart(b);
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().expect("a writer failed");
        }
        cluster.wait_converged();
    }
    let acked = acked.lock().unwrap().clone();
    assert_stored_once(&cluster, &acked);
    let (applied, _) = cluster.wait_converged();
    assert!(applied > acked.len() as u64);
}

#[test]
fn without_a_majority_nothing_is_acknowledged_and_nothing_is_lost() {
    let mut cluster = TestCluster::start(5, &[]);
    cluster.wait_for_leader();
    create_accounts(&cluster, &["writer0", "sink"]);
    let mut writer = Writer::new(&cluster.chat, "writer0", 0);
    let mut acked = HashMap::new();
    for n in 0..20 {
        let text = format!("before-{n}");
        let id = writer.send("sink", &text, Instant::now() + SETTLE).unwrap();
        acked.insert(id, text);
    }
    let mut client = cluster.members[3]
        .as_ref()
        .unwrap()
        .login(Protocol::Json, "writer0");
    cluster.kill(1);
    cluster.kill(2);
    cluster.kill(3);
    // The two left cannot make a majority: a send is refused with a clear error...
    let answer = client
        .call(&Request::SendMessage {
            to: "sink".into(),
            text: "during the outage".into(),
            key: Some(idempotency_key()),
        })
        .unwrap();
    let error = answer.expect_err("a send acknowledged without a majority");
    assert!(
        matches!(error.code, ErrorCode::Unavailable | ErrorCode::NotLeader),
        "{error:?}"
    );
    // ...and so is a read (it cannot learn what a majority acknowledged).
    let read = client
        .call(&Request::ReadMessages { limit: 10 })
        .unwrap()
        .expect_err("a read answered without a majority");
    assert_eq!(read.code, ErrorCode::Unavailable, "{read:?}");
    // One back: three of five, the service resumes.
    cluster.restart(1);
    let id = writer
        .send("sink", "after", Instant::now() + SETTLE)
        .expect("a send after the restart");
    acked.insert(id, "after".into());
    cluster.wait_converged();
    // Whatever was acknowledged is there; the refused send may or may not have been kept
    // (it was never acknowledged), so the check is on the acknowledged ones.
    assert_stored_once(&cluster, &acked);
}

#[test]
fn a_member_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let mut cluster = TestCluster::start(3, &["--snapshot-every-records", "20", "--test-hooks"]);
    cluster.wait_for_leader();
    create_accounts(&cluster, &["writer0", "sink"]);
    cluster.wait_converged();
    let leader = cluster.wait_for_leader();
    let behind = if leader == 3 { 2 } else { 3 };
    // The others drop what they would send the stopped member instead of queueing it: appends
    // queued while it is down would otherwise reach it on reconnection, and it would catch up
    // from them (correctly, but without the snapshot this test is about).
    let cut_off = |cluster: &TestCluster, peers: &str| {
        for (id, node) in cluster.members.iter().enumerate() {
            if let Some(node) = node.as_ref().filter(|_| id as u64 + 1 != behind) {
                let path = format!("/test/isolate?peers={peers}");
                let response = common::http_request(node.http, "POST", &path);
                assert_eq!(response.status, 200, "{response:?}");
            }
        }
    };
    cut_off(&cluster, &behind.to_string());
    cluster.kill(behind);
    let mut writer = Writer::new(&cluster.chat, "writer0", leader as usize - 1);
    let mut acked = HashMap::new();
    for n in 0..150 {
        let text = format!("m{n}");
        let id = writer.send("sink", &text, Instant::now() + SETTLE).unwrap();
        acked.insert(id, text);
    }
    // The leader's log no longer holds what the stopped member misses.
    let leader_node = cluster.members[leader as usize - 1].as_ref().unwrap();
    assert!(wait_until(SETTLE, || leader_node
        .stderr()
        .contains("snapshot written")));
    cluster.restart(behind);
    cut_off(&cluster, "");
    cluster.wait_converged();
    let restarted = cluster.members[behind as usize - 1].as_ref().unwrap();
    assert!(
        restarted
            .stderr()
            .contains("snapshot received from the leader"),
        "the member caught up without a snapshot:\n{}",
        restarted.stderr()
    );
    assert_stored_once(&cluster, &acked);
    cluster.wait_converged();
}

/// The syncer's fsyncs fail (a test hook stands for a failing disk) on a follower, then on the
/// leader, while a client sends: each restarts raft from its durable log ("raft restarted")
/// instead of counting the failed writes as durable, stays in the cluster, and catches up. Every
/// acknowledged message is on every member once, and all agree.
#[test]
fn a_failed_fsync_restarts_raft_from_what_is_durable_and_loses_nothing_acknowledged() {
    let cluster = TestCluster::start(3, &["--test-hooks"]);
    cluster.wait_for_leader();
    create_accounts(&cluster, &["writer0", "sink"]);
    cluster.wait_converged();
    let mut acked = HashMap::new();
    let mut writer = Writer::new(&cluster.chat, "writer0", 0);
    let mut n = 0;
    // Sends each message until acknowledged, with one key: a member whose fsync failed answers
    // its waiting sends `internal` (not acknowledged; they may still commit through the
    // others), and the retry with the same key is stored at most once.
    let mut send_some = |writer: &mut Writer, count: usize| {
        for _ in 0..count {
            n += 1;
            let text = format!("m{n}");
            let request = Request::SendMessage {
                to: "sink".into(),
                text: text.clone(),
                key: Some(idempotency_key()),
            };
            let deadline = Instant::now() + SETTLE;
            let id = loop {
                assert!(Instant::now() < deadline, "{text} not acknowledged in time");
                let Some(client) = writer.connected() else {
                    thread::sleep(Duration::from_millis(50));
                    continue;
                };
                match client.call(&request) {
                    Ok(Ok(Reply::Sent { id, .. })) => break id,
                    Ok(Ok(other)) => panic!("unexpected answer to a send: {other:?}"),
                    Ok(Err(error)) => assert!(
                        matches!(
                            error.code,
                            ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::Internal
                        ),
                        "a send failed with {error:?}"
                    ),
                    Err(_) => writer.client = None,
                }
            };
            acked.insert(id, text);
        }
    };
    send_some(&mut writer, 5);
    let leader = cluster.wait_for_leader();
    let follower = if leader == 1 { 2 } else { 1 };
    for target in [follower, leader] {
        let node = cluster.members[target as usize - 1].as_ref().unwrap();
        let response = common::http_request(node.http, "POST", "/test/fail-syncs?count=3");
        assert_eq!(response.status, 200, "{response:?}");
        send_some(&mut writer, 20);
        assert!(
            wait_until(SETTLE, || node
                .stderr()
                .contains("raft restarted from its durable log")),
            "member {target} did not restart raft:\n{}",
            node.stderr()
        );
        node.assert_running();
        assert!(!node.stderr().contains("raft stopped on this member"));
    }
    send_some(&mut writer, 5);
    cluster.wait_converged();
    assert_stored_once(&cluster, &acked);
}

#[test]
fn a_damaged_raft_log_is_refused_with_file_and_offset() {
    let mut cluster = TestCluster::start(3, &[]);
    cluster.wait_for_leader();
    create_accounts(&cluster, &["writer0", "sink"]);
    let mut writer = Writer::new(&cluster.chat, "writer0", 0);
    for n in 0..30 {
        writer
            .send("sink", &format!("m{n}"), Instant::now() + SETTLE)
            .unwrap();
    }
    cluster.wait_converged();
    cluster.kill(3);
    let segment = raft_segments(&cluster.data[2].join("raft"))
        .into_iter()
        .max_by_key(|(_, len)| *len)
        .expect("member 3 has a raft segment");
    let mut bytes = std::fs::read(&segment.0).unwrap();
    // A third of the way into its records (zeros written ahead follow them).
    let records_end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let at = records_end / 3;
    bytes[at] ^= 0xff;
    std::fs::write(&segment.0, bytes).unwrap();
    let failure = cluster
        .try_restart(3)
        .err()
        .expect("a member with a damaged raft log started");
    let name = segment.0.file_name().unwrap().to_str().unwrap();
    assert!(failure.stderr.contains(name), "{}", failure.stderr);
    assert!(failure.stderr.contains("byte"), "{}", failure.stderr);
}

fn raft_segments(dir: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .map(|path| {
            let len = std::fs::metadata(&path).unwrap().len();
            (path, len)
        })
        .collect()
}

/// The partition story, whatever cuts the network: with `cut(minority, majority, true)` the leader
/// and one follower lose the other three (`false` heals). Nothing is acknowledged on the minority
/// side and its leader steps down; the majority elects a leader and goes on; after healing, every
/// member agrees and the minority's unacknowledged write is gone.
fn partition_story(cluster: &TestCluster, cut: impl Fn(&[u64], &[u64], bool)) {
    create_accounts(cluster, &["writer0", "sink"]);
    let leader = cluster.wait_for_leader();
    let follower = if leader == 1 { 2 } else { 1 };
    let minority = [leader, follower];
    let majority: Vec<u64> = (1..=5).filter(|id| !minority.contains(id)).collect();
    let mut writer = Writer::new(&cluster.chat, "writer0", 0);
    let mut acked = HashMap::new();
    for n in 0..10 {
        let text = format!("before-{n}");
        acked.insert(
            writer.send("sink", &text, Instant::now() + SETTLE).unwrap(),
            text,
        );
    }
    cluster.wait_converged();
    let old_leader = cluster.members[leader as usize - 1].as_ref().unwrap();
    let mut client = old_leader.login(Protocol::Binary, "writer0");
    cut(&minority, &majority, true);

    // On the minority side nothing is acknowledged...
    let answer = client
        .call(&Request::SendMessage {
            to: "sink".into(),
            text: "minority".into(),
            key: Some(idempotency_key()),
        })
        .unwrap();
    let error = answer.expect_err("the minority acknowledged a write");
    assert!(
        matches!(error.code, ErrorCode::Unavailable | ErrorCode::NotLeader),
        "{error:?}"
    );
    // ...and its leader steps down (it cannot hear a majority).
    assert!(wait_until(SETTLE, || old_leader.stats()["raft"]["role"] != "leader"));
    // The majority elects a leader and goes on.
    let majority_chat: Vec<SocketAddr> = majority
        .iter()
        .map(|id| cluster.chat[*id as usize - 1])
        .collect();
    let mut writer = Writer::new(&majority_chat, "writer0", 0);
    for n in 0..10 {
        let text = format!("during-{n}");
        acked.insert(
            writer.send("sink", &text, Instant::now() + SETTLE).unwrap(),
            text,
        );
    }
    assert!(
        majority.iter().any(|id| {
            let node = cluster.members[*id as usize - 1].as_ref().unwrap();
            node.stats()["raft"]["role"] == "leader"
        }),
        "no leader in the majority"
    );

    // Healed: everyone agrees, and the minority's unacknowledged write is gone.
    cut(&minority, &majority, false);
    cluster.wait_converged();
    let stored = assert_stored_once(cluster, &acked);
    assert!(
        !stored.values().any(|text| text == "minority"),
        "the minority's unacknowledged write survived the partition"
    );
    cluster.wait_converged();
}

#[test]
fn a_minority_partition_acknowledges_nothing_and_its_leader_steps_down() {
    let cluster = TestCluster::start(5, &["--test-hooks"]);
    // The cut made at each member's transport (the test hook), both ways.
    let isolate = |ids: &[u64], from: &[u64]| {
        let list: Vec<String> = from.iter().map(u64::to_string).collect();
        for id in ids {
            let node = cluster.members[*id as usize - 1].as_ref().unwrap();
            let response = common::http_request(
                node.http,
                "POST",
                &format!("/test/isolate?peers={}", list.join(",")),
            );
            assert_eq!(response.status, 200, "{response:?}");
        }
    };
    partition_story(&cluster, |minority, majority, cut| {
        let (to_minority, to_majority): (&[u64], &[u64]) = if cut {
            (majority, minority)
        } else {
            (&[], &[])
        };
        isolate(minority, to_minority);
        isolate(majority, to_majority);
    });
}

#[test]
fn reads_on_a_follower_see_every_change_acknowledged_before_them() {
    let cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_for_leader();
    let follower = if leader == 1 { 2 } else { 1 };
    let on_leader = cluster.members[leader as usize - 1].as_ref().unwrap();
    let on_follower = cluster.members[follower as usize - 1].as_ref().unwrap();
    let mut sender = on_leader.user(Protocol::Binary, "sender");
    for n in 0..20 {
        let name = format!("reader{n}");
        // Created and sent to through the leader; a login on the follower right after finds
        // the account, and its read finds the message (stored before the session began, so
        // it is not pushed).
        on_leader.create(&name);
        let id = common::send(&mut sender, &name, &format!("hello {n}"));
        let mut reader = on_follower.login(Protocol::Binary, &name);
        let messages = common::read(&mut reader, 10);
        assert!(
            messages.iter().any(|m| m.id == id),
            "the follower's read missed message {id}: {messages:?}"
        );
    }
}

/// Network namespaces, one per member, on one bridge: a real network between members, which
/// routes can cut. Needs root and iproute2 (CI has both).
struct Namespaces {
    prefix: String,
    subnet: u8,
    size: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Namespaces {
    fn create(size: usize) -> Result<Namespaces, String> {
        let pid = std::process::id();
        let net = Namespaces {
            prefix: format!("sk{}", pid % 100_000),
            subnet: 20 + (pid % 200) as u8,
            size,
        };
        let bridge = format!("{}br", net.prefix);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.213.{}.254/24", net.subnet),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 1..=size {
            let (ns, outside, inside) = (
                net.ns(i),
                format!("{}v{i}", net.prefix),
                format!("{}p{i}", net.prefix),
            );
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["link", "set", &outside, "master", &bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                &inside,
            ])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn addr(&self, i: usize) -> String {
        format!("10.213.{}.{i}", self.subnet)
    }

    /// Cuts (or, with `add` false, heals) every path between `a` and `b`, both ways.
    fn route(&self, a: &[u64], b: &[u64], add: bool) {
        for (from, to) in a.iter().flat_map(|x| b.iter().map(move |y| (*x, *y))) {
            for (here, there) in [(from, to), (to, from)] {
                let target = format!("{}/32", self.addr(there as usize));
                let verb = if add { "add" } else { "del" };
                ip(&[
                    "-n",
                    &self.ns(here as usize),
                    "route",
                    verb,
                    "blackhole",
                    &target,
                ])
                .unwrap();
            }
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for i in 1..=self.size {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &format!("{}br", self.prefix)]);
    }
}

#[test]
fn a_partition_of_the_network_itself() {
    // The same story as the test above, with the cut made by the network, not the transport.
    let net = match Namespaces::create(5) {
        Ok(net) => net,
        Err(why) => {
            eprintln!(
                "network namespaces unavailable here ({why}); the partition is covered by \
                 a_minority_partition_acknowledges_nothing_and_its_leader_steps_down"
            );
            return;
        }
    };
    let addrs = (1..=5)
        .map(|i| {
            let at = |port: u16| format!("{}:{port}", net.addr(i)).parse().unwrap();
            [at(7001), at(7101), at(7201)]
        })
        .collect();
    let wrappers = (1..=5)
        .map(|i| vec!["ip".into(), "netns".into(), "exec".into(), net.ns(i)])
        .collect();
    let cluster = TestCluster::start_on(addrs, wrappers, &[]);
    partition_story(&cluster, |minority, majority, cut| {
        net.route(minority, majority, cut)
    });
}
