//! `synckit-node cluster up` as the README has a newcomer use it: five members from one
//! command, the chat (the CLI client with every member's address) going on after two members
//! are killed with `kill -9` (the leader among them), Ctrl-C (SIGTERM) stopping the rest and
//! `cluster up` itself, the same cluster started again on its directory with its data, and no
//! member outliving a `cluster up` that is itself killed.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{PASSWORD, Running, data_dir, http_request, run_bounded, wait_until};

/// Bound on elections, restarts and process exits.
const SETTLE: Duration = Duration::from_secs(60);

/// One member as the banner lists it.
#[derive(Debug, Clone, PartialEq)]
struct Listed {
    id: u64,
    pid: u32,
    chat: SocketAddr,
    http: SocketAddr,
}

/// `cluster up` on `dir` with generous limits; its banner's members, once it printed them and
/// every member printed its listening line.
fn cluster_up(dir: &Path) -> (Running, Vec<Listed>) {
    let mut up = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_synckit-node"))
            .args(["cluster", "up", "--nodes", "5", "--dir"])
            .arg(dir)
            .args(["--", "--log", "warn", "--requests-per-sec", "100000"])
            .args(["--logins-per-minute", "100000", "--login-burst", "100000"]),
    );
    let mut listed = Vec::new();
    let (mut banner_done, mut listening) = (false, 0);
    // The members print their listening lines to the same stdout, before or after the banner.
    while !banner_done || listening < 5 {
        let line = up.next_line(SETTLE);
        if line.contains("Ctrl-C stops every member") {
            banner_done = true;
        } else if line.contains("listening chat=") {
            listening += 1;
        } else if let Some(member) = line.trim_start().strip_prefix("member ") {
            listed.push(parse_member(member));
        }
    }
    assert_eq!(
        listed.iter().map(|m| m.id).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    (up, listed)
}

/// `1: pid 1234, chat 127.0.0.1:7001, stats http://127.0.0.1:7101/stats`.
fn parse_member(text: &str) -> Listed {
    let (id, rest) = text.split_once(": pid ").expect("id and pid");
    let (pid, rest) = rest.split_once(", chat ").expect("pid and chat");
    let (chat, rest) = rest.split_once(", stats http://").expect("chat and stats");
    let http = rest.strip_suffix("/stats").expect("a stats URL");
    Listed {
        id: id.parse().expect("a member id"),
        pid: pid.parse().expect("a pid"),
        chat: chat.parse().expect("a chat address"),
        http: http.parse().expect("an HTTP address"),
    }
}

/// The member that says it leads, once one does among `members`.
fn leader(members: &[&Listed]) -> u64 {
    let mut leader = None;
    assert!(
        wait_until(SETTLE, || {
            leader = members
                .iter()
                .find(|m| {
                    let response = http_request(m.http, "GET", "/stats");
                    serde_json::from_str::<serde_json::Value>(&response.body)
                        .is_ok_and(|stats| stats["raft"]["role"] == "leader")
                })
                .map(|m| m.id);
            leader.is_some()
        }),
        "no leader among {members:?}"
    );
    leader.unwrap()
}

/// The CLI client, as the README runs it: every member's chat address, the password from the
/// environment. The `data` of its JSON answer.
fn client(members: &[Listed], user: Option<&str>, args: &[&str]) -> serde_json::Value {
    let addrs: Vec<String> = members.iter().map(|m| m.chat.to_string()).collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_synckit-node"));
    command
        .args(["client", "--addr", &addrs.join(",")])
        .args(args)
        .env("SYNCKIT_PASSWORD", PASSWORD)
        .env_remove("SYNCKIT_USER");
    if let Some(user) = user {
        command.env("SYNCKIT_USER", user);
    }
    let finished = run_bounded(&mut command, SETTLE);
    assert!(finished.status.success(), "{args:?}: {finished:#?}");
    let answer: serde_json::Value =
        serde_json::from_str(finished.stdout.trim()).expect("the client prints JSON");
    assert_eq!(answer["ok"], true, "{args:?}: {answer}");
    answer["data"].clone()
}

/// Whether process `pid` is gone: no such process, or only its exit status waits (a zombie of
/// a parent that has not reaped it yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn kill(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is a member this test's
    // `cluster up` started and still holds (it reaps members only when they exit).
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
}

#[test]
fn cluster_up_runs_five_members_that_survive_two_kills_and_stop_with_it() {
    let dir = data_dir();
    let (mut up, members) = cluster_up(dir.path());
    let everyone: Vec<&Listed> = members.iter().collect();
    let first_leader = leader(&everyone);

    client(&members, None, &["create-account", "carol"]);
    client(&members, None, &["create-account", "dave"]);
    let sent = client(
        &members,
        Some("carol"),
        &["send", "dave", "before the kills"],
    );
    assert!(sent["id"].is_u64(), "{sent}");

    // kill -9 the leader and one more, as the banner invites; the client finds the survivors.
    let victims = [first_leader, first_leader % 5 + 1];
    for id in victims {
        kill(members[id as usize - 1].pid, libc::SIGKILL);
    }
    let survivors: Vec<&Listed> = members
        .iter()
        .filter(|m| !victims.contains(&m.id))
        .collect();
    assert!(!victims.contains(&leader(&survivors)));
    client(
        &members,
        Some("carol"),
        &["send", "dave", "after the kills"],
    );
    let read = client(&members, Some("dave"), &["read"]);
    let texts: Vec<&str> = read["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["before the kills", "after the kills"], "{read}");

    // Ctrl-C: the three left stop, and so does `cluster up`, cleanly; it said who exited and
    // how to start them again.
    let status = up.terminate(SETTLE);
    assert!(status.success(), "cluster up: {status:?}");
    for member in &members {
        assert!(gone(member.pid), "member {} outlived cluster up", member.id);
    }
    let stderr = up.stderr();
    for id in victims {
        assert!(
            stderr.contains(&format!("member {id} exited"))
                && stderr.contains(&format!("--id {id}")),
            "member {id}'s exit not reported: {stderr}"
        );
    }

    // Started again on its directory: the same members, with what they stored.
    let (up, again) = cluster_up(dir.path());
    let addresses = |list: &[Listed]| -> Vec<(SocketAddr, SocketAddr)> {
        list.iter().map(|m| (m.chat, m.http)).collect()
    };
    assert_eq!(addresses(&again), addresses(&members));
    leader(&again.iter().collect::<Vec<_>>());
    client(
        &again,
        Some("carol"),
        &["send", "dave", "after the restart"],
    );
    let read = client(&again, Some("dave"), &["read"]);
    assert_eq!(read["messages"][0]["text"], "after the restart", "{read}");
    let login = client(&again, Some("dave"), &["login"]);
    assert_eq!(login["unread"], 0, "{login}");

    // `cluster up` killed outright: the kernel stops its members (PR_SET_PDEATHSIG).
    let pids: Vec<u32> = again.iter().map(|m| m.pid).collect();
    up.kill();
    assert!(
        wait_until(SETTLE, || pids.iter().all(|&pid| gone(pid))),
        "members outlived a killed cluster up"
    );
}
