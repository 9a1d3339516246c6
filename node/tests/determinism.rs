//! `State::apply` is deterministic: random command sequences applied twice give the same
//! outcomes and the same state digest; applied up to a point, written as a snapshot, loaded back
//! and applied to the end, they give that digest too; and through a real node's log (kill and
//! restart) the digest after recovery is the one the node showed before (the restart adds one
//! entry without a command, raft's empty entry of the new term, which moves the applied index
//! and not the state).

mod common;

use proptest::prelude::*;
use synckit_node::log::snapshot;
use synckit_node::state::{Command, State};

const USERS: [&str; 4] = ["ann", "ben", "cai", "dee"];

fn user() -> impl Strategy<Value = String> {
    prop::sample::select(&USERS[..]).prop_map(str::to_string)
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        3 => (user(), 0..3u8, any::<u64>()).prop_map(|(username, salt, created)| {
            Command::CreateAccount {
                username,
                password_hash: format!("$argon2id$v=19$salt{salt}"),
                created,
            }
        }),
        1 => (user(), 0..3u8).prop_map(|(username, salt)| Command::DeleteAccount {
            username,
            password_hash: format!("$argon2id$v=19$salt{salt}"),
        }),
        6 => (user(), user(), "[a-z ✓]{0,12}", 0..2_000_000u64, prop::option::of("[ab]"))
            .prop_map(|(from, to, text, timestamp, key)| {
                Command::SendMessage { from, to, text, timestamp, key }
            }),
        2 => prop::collection::vec((user(), prop::collection::vec(1..40u64, 0..4)), 0..3)
            .prop_map(|marks| Command::MarkDelivered { marks }),
        2 => (user(), prop::collection::vec(1..40u64, 0..4))
            .prop_map(|(user, ids)| Command::DeleteMessages { user, ids }),
    ]
}

/// Applies `commands` at indexes `first..`, returning the outcomes.
fn apply_all(state: &State, first: u64, commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .zip(first..)
        .map(|(command, index)| {
            format!("{:?}", state.apply(index, command).expect("no lock error"))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_same_commands_give_the_same_digest(commands in prop::collection::vec(command(), 0..40)) {
        let (a, b) = (State::new(), State::new());
        let outcomes_a = apply_all(&a, 1, &commands);
        let outcomes_b = apply_all(&b, 1, &commands);
        prop_assert_eq!(outcomes_a, outcomes_b);
        prop_assert_eq!(a.image().unwrap(), b.image().unwrap());
        prop_assert_eq!(a.digest().unwrap(), b.digest().unwrap());
        prop_assert_eq!(a.applied_index(), commands.len() as u64);
    }

    #[test]
    fn a_snapshot_and_the_rest_of_the_log_give_the_same_digest(
        commands in prop::collection::vec(command(), 1..40),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(commands.len() + 1);
        let whole = State::new();
        apply_all(&whole, 1, &commands);

        let first = State::new();
        apply_all(&first, 1, &commands[..cut]);
        let dir = tempfile::tempdir().unwrap();
        snapshot::save(dir.path(), first.image().unwrap()).unwrap();
        let restarted = State::from_image(snapshot::load(dir.path()).unwrap()).unwrap();
        prop_assert_eq!(restarted.digest().unwrap(), first.digest().unwrap());
        // Replaying from the start of the log skips what the snapshot covers.
        apply_all(&restarted, 1, &commands);
        prop_assert_eq!(restarted.digest().unwrap(), whole.digest().unwrap());
    }
}

#[test]
fn the_digest_tells_states_apart() {
    let state = State::new();
    let empty = state.digest().unwrap();
    let create = Command::CreateAccount {
        username: "ann".into(),
        password_hash: "$argon2id$x".into(),
        created: 1,
    };
    state.apply(1, &create).unwrap();
    let one = state.digest().unwrap();
    assert_ne!(empty.1, one.1);
    assert_eq!(one.0, 1);
    let other = State::new();
    other
        .apply(
            1,
            &Command::CreateAccount {
                username: "ann".into(),
                password_hash: "$argon2id$x".into(),
                created: 2,
            },
        )
        .unwrap();
    assert_ne!(other.digest().unwrap().1, one.1, "the creation time counts");
}

/// A real node: the digest and applied index `/stats` shows survive a restart (snapshot and log
/// replay), and traffic moves them.
#[test]
fn a_node_shows_the_same_digest_after_recovery() {
    use common::{Node, data_dir, send};
    use synckit_node::protocol::Protocol;

    let dir = data_dir();
    let node = Node::start(dir.path(), &["--snapshot-every-records", "4"]);
    let empty = node.stats();
    let mut alice = node.user(Protocol::Binary, "alice");
    node.create("bob");
    for i in 0..7 {
        send(&mut alice, "bob", &format!("m{i}"));
    }
    let before = node.stats();
    let digest = before["state_digest"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 64, "SHA-256 in hex: {digest}");
    assert_ne!(empty["state_digest"], before["state_digest"]);
    assert!(before["applied_index"].as_u64().unwrap() >= 9, "{before}");
    drop(alice);
    node.kill();

    let node = Node::start(dir.path(), &[]);
    let after = settled(&node, &before);
    assert_eq!(after["state_digest"], before["state_digest"]);
}

/// The restarted node's figures once it has applied the empty entry its raft leader appends for
/// its new term: the one entry a restart adds (it carries no command: the state, and so the
/// digest, stay as they were).
fn settled(node: &common::Node, before: &serde_json::Value) -> serde_json::Value {
    let next = before["applied_index"].as_u64().unwrap() + 1;
    assert!(
        common::wait_until(common::PROMPT, || node.stats()["applied_index"] == next),
        "the restarted node applies its term's empty entry, and nothing else: {} then {}",
        before,
        node.stats()
    );
    node.stats()
}

/// Many clients at once: batches big enough to apply on several threads (the node counts them),
/// and the state they leave is the one a restart rebuilds by applying the log on one thread.
#[test]
fn parallel_apply_leaves_the_state_a_sequential_replay_rebuilds() {
    use common::{Node, data_dir, send};
    use synckit_node::protocol::{Protocol, Request};

    let dir = data_dir();
    let node = Node::start(dir.path(), &["--apply-threads", "2"]);
    let names: Vec<String> = (0..24).map(|i| format!("user{i}")).collect();
    let mut clients: Vec<_> = names
        .iter()
        .map(|name| node.user(Protocol::Binary, name))
        .collect();
    std::thread::scope(|scope| {
        for (i, client) in clients.iter_mut().enumerate() {
            let names = &names;
            scope.spawn(move || {
                for round in 0..25 {
                    let to = &names[(i + round) % names.len()];
                    send(client, to, &format!("{i}/{round}"));
                    if round % 10 == 9 {
                        common::ok(client.call(&Request::ReadMessages { limit: 5 }));
                    }
                }
            });
        }
    });
    // One more acknowledged command: the marks of every push made so far were queued before the
    // answers that let the senders finish, so they are in the log before it, applied.
    common::ok(clients[0].call(&Request::DeleteMessages {
        ids: vec![u64::MAX],
    }));
    let before = node.stats();
    assert!(
        before["apply"]["parallel_batches"].as_u64().unwrap() > 0,
        "24 concurrent senders never filled a parallel batch: {}",
        before["apply"]
    );
    drop(clients);
    node.kill();
    let node = Node::start(dir.path(), &["--apply-threads", "1"]);
    let after = settled(&node, &before);
    assert_eq!(after["state_digest"], before["state_digest"]);
}
