//! `synckit-node chat` end to end, in real terminals: two clients in tmux sessions on one node,
//! alice logged in from the environment and bob by typing on the login screen; a message typed
//! in one appears in the other, both ways, and Ctrl-Q ends each client. Then a client on a
//! three-member cluster whose member is killed under it: it moves to another member, says so on
//! its status line, and still receives.
//!
//! Every wait polls `tmux capture-pane` until a deadline (no sleep stands for a synchronisation).
//! The tmux server is private to the test (`tmux -L <unique name>`) and killed by a guard,
//! whether the test passes or fails. Without `tmux` the test skips, saying so, unless `CI` is
//! set: CI installs tmux (`.ci/run`) and must not pass without running this.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Cluster, Node, PASSWORD, data_dir};
use synckit_node::client::FailoverClient;
use synckit_node::protocol::{Protocol, Reply};

/// How long a screen may take to show what the test waits for.
const SCREEN_DEADLINE: Duration = Duration::from_secs(30);

/// A private tmux server, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Starts `command` (a shell command line) in a detached 120x40 session `name`.
    fn session(&self, name: &str, command: &str) {
        let out = self.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "120",
            "-y",
            "40",
            command,
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
    }

    /// Types `text` literally into `session`.
    fn type_text(&self, session: &str, text: &str) {
        let out = self.run(&["send-keys", "-t", session, "-l", text]);
        assert!(out.status.success(), "tmux send-keys: {out:?}");
    }

    /// Presses the keys named (tmux names: `Enter`, `F2`, `C-q`).
    fn press(&self, session: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", session];
        args.extend_from_slice(keys);
        let out = self.run(&args);
        assert!(out.status.success(), "tmux send-keys: {out:?}");
    }

    /// What `session`'s pane shows now.
    fn screen(&self, session: &str) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", session]).stdout)
            .into_owned()
    }

    /// Waits until `session`'s screen contains every one of `texts`; panics with the screen
    /// after [`SCREEN_DEADLINE`].
    fn wait_for(&self, session: &str, texts: &[&str]) {
        let deadline = Instant::now() + SCREEN_DEADLINE;
        loop {
            let screen = self.screen(session);
            if texts.iter().all(|text| screen.contains(text)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{session}'s screen never showed {texts:?} within {SCREEN_DEADLINE:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `session` has ended (its program exited).
    fn wait_ended(&self, session: &str) {
        let deadline = Instant::now() + SCREEN_DEADLINE;
        while self.run(&["has-session", "-t", session]).status.success() {
            assert!(
                Instant::now() < deadline,
                "{session} still runs:\n{}",
                self.screen(session)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// Whether tmux runs here; without it, skip (saying so) unless `CI` is set.
fn tmux_or_skip() -> bool {
    let present = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|out| out.status.success());
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but tmux is missing (.ci/run installs it)"
        );
        eprintln!("chat_tmux: skipped: tmux is not installed");
    }
    present
}

/// `'text'` for a POSIX shell.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[test]
fn a_message_typed_in_one_chat_client_appears_in_the_other() {
    if !tmux_or_skip() {
        return;
    }
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    node.create("alice");
    node.create("bob");
    let binary = env!("CARGO_BIN_EXE_synckit-node");
    let addr = node.chat.to_string();
    let tmux = Tmux {
        socket: format!("synckit-chat-test-{}", std::process::id()),
    };

    // alice: credentials from the environment, logged in at start.
    tmux.session(
        "alice",
        &format!(
            "env SYNCKIT_USER=alice SYNCKIT_PASSWORD={} {} chat --addr {addr}",
            quoted(PASSWORD),
            quoted(binary)
        ),
    );
    // bob: no credentials anywhere; typed on the login screen.
    tmux.session(
        "bob",
        &format!(
            "env -u SYNCKIT_USER -u SYNCKIT_PASSWORD {} chat --addr {addr}",
            quoted(binary)
        ),
    );
    tmux.wait_for("bob", &["sync-kit chat: log in", &format!("● {addr}")]);
    tmux.type_text("bob", "bob");
    tmux.press("bob", &["Enter"]);
    tmux.type_text("bob", PASSWORD);
    tmux.press("bob", &["Enter"]);
    tmux.wait_for("bob", &[&format!("bob @ {addr}"), "logged in"]);
    tmux.wait_for("alice", &[&format!("alice @ {addr}"), "logged in"]);

    // alice opens a conversation with bob from the account browser and writes.
    tmux.press("alice", &["F2"]);
    tmux.type_text("alice", "bo");
    tmux.wait_for("alice", &["pattern *bo*", "> bob"]);
    tmux.press("alice", &["Enter"]);
    tmux.wait_for("alice", &["Message to bob"]);
    tmux.type_text("alice", "Hello Bob, ça va? 日本");
    tmux.press("alice", &["Enter"]);

    // bob sees it live, in a conversation that opened on its own, and answers.
    tmux.wait_for(
        "bob",
        &["alice: Hello Bob, ça va? 日本", "Message to alice"],
    );
    tmux.type_text("bob", "Fine, thanks!");
    tmux.press("bob", &["Enter"]);
    tmux.wait_for("alice", &["bob: Fine, thanks!"]);

    // Ctrl-Q ends both clients (their sessions close with them).
    tmux.press("alice", &["C-q"]);
    tmux.press("bob", &["C-q"]);
    tmux.wait_ended("alice");
    tmux.wait_ended("bob");
    node.assert_running();
}

#[test]
fn the_chat_client_moves_on_when_its_member_is_killed() {
    if !tmux_or_skip() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_for_leader(Duration::from_secs(60));
    let addrs: Vec<String> = cluster.chat.iter().map(ToString::to_string).collect();
    let mut bob = FailoverClient::connect(&addrs, Protocol::Binary).unwrap();
    for user in ["alice", "bob"] {
        assert_eq!(
            bob.create_account(user, PASSWORD).unwrap(),
            Ok(Reply::Done {})
        );
    }
    assert!(bob.login("bob", PASSWORD).unwrap().is_ok());
    let binary = env!("CARGO_BIN_EXE_synckit-node");
    let tmux = Tmux {
        socket: format!("synckit-chat-failover-{}", std::process::id()),
    };
    tmux.session(
        "alice",
        &format!(
            "env SYNCKIT_USER=alice SYNCKIT_PASSWORD={} {} chat --addr {}",
            quoted(PASSWORD),
            quoted(binary),
            addrs.join(",")
        ),
    );
    tmux.wait_for("alice", &["alice @ 127.0.0.1:", "logged in"]);
    let screen = tmux.screen("alice");
    let (killed, member) = addrs
        .iter()
        .enumerate()
        .find(|(_, addr)| screen.contains(&format!("alice @ {addr}")))
        .expect("the status line names one of the members");
    cluster.kill(killed as u64 + 1);

    // The status line names another member, and says the client reconnected.
    tmux.wait_for("alice", &["(reconnected"]);
    let screen = tmux.screen("alice");
    assert!(
        !screen.contains(&format!("alice @ {member}")),
        "still on the killed member {member}:\n{screen}"
    );
    // Logged in again: a message sent now is pushed to it.
    let (_, sent) = bob.send_message("alice", "after the failover").unwrap();
    assert!(sent.is_ok(), "{sent:?}");
    tmux.wait_for("alice", &["bob: after the failover"]);
    tmux.press("alice", &["C-q"]);
    tmux.wait_ended("alice");
}
