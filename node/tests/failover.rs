//! The failover client against a real node and fake members that cannot order writes (no
//! cluster exists in these tests): it follows `not_leader` to the named leader and logs in
//! again, skips dead members, moves on after `not_leader` without a leader or `unavailable`,
//! gives up at its deadline, and retries a send with its key so that it is stored once.

mod common;

use std::time::{Duration, Instant};

use common::{
    FakeAnswer, FakeMember, Node, PASSWORD, both, data_dir, dead_addr, ok, read, read_all,
};
use synckit_node::client::{Client, FailoverClient, FailoverOptions, LedgerCalls};
use synckit_node::protocol::{Protocol, Reply, Request};

/// Sends alice's message to bob through `client` and returns its id.
#[track_caller]
fn send_through(client: &mut FailoverClient, text: &str) -> u64 {
    let (request, answer) = client.send_message("bob", text).expect("an answer");
    assert!(matches!(request, Request::SendMessage { key: Some(_), .. }));
    match answer {
        Ok(Reply::Sent { id, .. }) => id,
        other => panic!("send answered {other:?}"),
    }
}

/// Bob's undelivered messages, as (sender, text).
fn bobs_messages(node: &Node, protocol: Protocol) -> Vec<(String, String)> {
    let mut bob = node.login(protocol, "bob");
    read_all(&mut bob)
        .into_iter()
        .map(|m| (m.from, m.text))
        .collect()
}

both!(follows_not_leader_to_the_named_leader_and_logs_in_again);
fn follows_not_leader_to_the_named_leader_and_logs_in_again(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    node.create("alice");
    node.create("bob");
    let follower = FakeMember::start(FakeAnswer::NotLeader(Some(node.chat.to_string())));
    // The leader is not in the list: the client learns it from the follower's answer.
    let mut client = FailoverClient::connect(&[follower.addr.to_string()], protocol).unwrap();
    assert_eq!(
        ok(client.login("alice", PASSWORD)),
        Reply::LoggedIn { unread: 0 },
        "a follower accepts logins"
    );
    assert_eq!(
        client.connected_to(),
        Some(follower.addr.to_string().as_str())
    );
    let id = send_through(&mut client, "through the leader");
    assert_eq!(client.connected_to(), Some(node.chat.to_string().as_str()));
    let on_follower = follower.requests();
    assert!(
        matches!(&on_follower[..], [
        Request::Login { username, .. },
        Request::SendMessage { .. },
    ] if username == "alice"),
        "{on_follower:?}"
    );
    // The send was stored as alice's: the client logged in on the leader before retrying it.
    let mut bob = node.login(protocol, "bob");
    let messages = read(&mut bob, 10);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!((messages[0].id, messages[0].from.as_str()), (id, "alice"));
    // Later requests stay on the leader.
    send_through(&mut client, "again");
    assert_eq!(follower.requests().len(), 2);
}

both!(skips_dead_members_and_dead_connections);
fn skips_dead_members_and_dead_connections(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    node.create("alice");
    node.create("bob");
    // Nothing listens on the first address: the first connection goes to the second.
    let members = [dead_addr().to_string(), node.chat.to_string()];
    let mut client = FailoverClient::connect(&members, protocol).unwrap();
    assert_eq!(client.connected_to(), Some(members[1].as_str()));
    ok(client.login("alice", PASSWORD));
    send_through(&mut client, "past a dead member");

    // A member that accepts the login, then closes the connection on the send.
    let closing = FakeMember::start(FakeAnswer::Close);
    let members = [closing.addr.to_string(), node.chat.to_string()];
    let mut client = FailoverClient::connect(&members, protocol).unwrap();
    ok(client.login("alice", PASSWORD));
    assert_eq!(client.connected_to(), Some(members[0].as_str()));
    send_through(&mut client, "past a dead connection");
    assert_eq!(client.connected_to(), Some(members[1].as_str()));
    assert_eq!(
        bobs_messages(&node, protocol),
        [
            ("alice".to_string(), "past a dead member".to_string()),
            ("alice".to_string(), "past a dead connection".to_string()),
        ]
    );
}

both!(not_leader_without_a_leader_or_unavailable_moves_to_another_member);
fn not_leader_without_a_leader_or_unavailable_moves_to_another_member(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    node.create("alice");
    node.create("bob");
    for answer in [FakeAnswer::NotLeader(None), FakeAnswer::Unavailable] {
        let fake = FakeMember::start(answer.clone());
        let members = [fake.addr.to_string(), node.chat.to_string()];
        let mut client = FailoverClient::connect(&members, protocol).unwrap();
        ok(client.login("alice", PASSWORD));
        assert_eq!(client.connected_to(), Some(members[0].as_str()));
        send_through(&mut client, &format!("after {answer:?}"));
        assert_eq!(
            client.connected_to(),
            Some(members[1].as_str()),
            "{answer:?}"
        );
        assert_eq!(
            fake.requests().len(),
            2,
            "{answer:?}: {:?}",
            fake.requests()
        );
    }
    assert_eq!(
        bobs_messages(&node, protocol),
        [
            ("alice".to_string(), "after NotLeader(None)".to_string()),
            ("alice".to_string(), "after Unavailable".to_string()),
        ]
    );
}

both!(gives_up_at_the_deadline_with_a_clear_error);
fn gives_up_at_the_deadline_with_a_clear_error(protocol: Protocol) {
    // Two members that can never order a write: one has no leader, the other is gone after the
    // first connection.
    let no_leader = FakeMember::start(FakeAnswer::NotLeader(None));
    let gone = FakeMember::start(FakeAnswer::Close);
    let members = [no_leader.addr.to_string(), gone.addr.to_string()];
    let deadline = Duration::from_millis(600);
    let mut client = FailoverClient::connect_with(
        &members,
        protocol,
        FailoverOptions {
            deadline,
            ..FailoverOptions::default()
        },
    )
    .unwrap();
    ok(client.login("alice", PASSWORD));
    let started = Instant::now();
    let error = client
        .call(&Request::CreateAccount {
            username: "carol".into(),
            password: PASSWORD.into(),
        })
        .expect_err("no member can order it");
    let took = started.elapsed();
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
    let text = error.to_string();
    assert!(text.contains("gave up after 600ms"), "{text}");
    assert!(text.contains(&members.join(",")), "{text}");
    assert!(took >= deadline, "gave up early, after {took:?}");
    assert!(took < deadline + Duration::from_secs(5), "took {took:?}");
    // It went back and forth between the two members, logging in again each time.
    let tries = no_leader.requests().len() + gone.requests().len();
    assert!(tries >= 4, "{tries} requests");
}

both!(a_retried_send_with_its_key_is_stored_once);
fn a_retried_send_with_its_key_is_stored_once(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    node.create("alice");
    node.create("bob");
    let request = Request::SendMessage {
        to: "bob".into(),
        text: "sent once".into(),
        key: Some(synckit_node::client::idempotency_key()),
    };
    // The first try: sent, then the connection is lost before the answer is read.
    let mut first = node.login(protocol, "alice");
    first.send(&request).unwrap();
    drop(first);
    // The retry, through the failover client, with the same key.
    let members = [dead_addr().to_string(), node.chat.to_string()];
    let mut client = FailoverClient::connect(&members, protocol).unwrap();
    ok(client.login("alice", PASSWORD));
    let Reply::Sent { id, .. } = ok(client.call(&request)) else {
        panic!("not a send answer");
    };
    // And once more: the same id again, nothing new stored.
    assert!(matches!(ok(client.call(&request)), Reply::Sent { id: again, .. } if again == id));
    let mut bob = node.login(protocol, "bob");
    let messages = read_all(&mut bob);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(
        (messages[0].id, messages[0].text.as_str()),
        (id, "sent once")
    );
}

both!(pushes_continue_on_the_new_connection);
fn pushes_continue_on_the_new_connection(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    node.create("alice");
    node.create("bob");
    // Bob's watcher starts on a member that drops him at his first request, then lands on the
    // node, logged in again, where alice's messages are pushed to him.
    let closing = FakeMember::start(FakeAnswer::Close);
    let members = [closing.addr.to_string(), node.chat.to_string()];
    let mut bob = FailoverClient::connect(&members, protocol).unwrap();
    ok(bob.login("bob", PASSWORD));
    ok(bob.call(&Request::ReadMessages { limit: 1 }));
    assert_eq!(bob.connected_to(), Some(members[1].as_str()));
    let mut alice = node.login(protocol, "alice");
    let id = common::send(&mut alice, "bob", "pushed after the move");
    let pushed = bob
        .next_push(Some(common::PROMPT))
        .unwrap()
        .expect("a push within PROMPT");
    assert_eq!((pushed.id, pushed.from.as_str()), (id, "alice"));
}

#[test]
fn connecting_to_no_member_fails_at_once_naming_them() {
    let members = [dead_addr().to_string(), dead_addr().to_string()];
    let started = Instant::now();
    let error = FailoverClient::connect(&members, Protocol::Binary).expect_err("nobody there");
    let text = error.to_string();
    assert!(text.starts_with("cannot connect to any of"), "{text}");
    for member in &members {
        assert!(text.contains(member.as_str()), "{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let error = Client::connect_any(&members, Protocol::Binary).expect_err("nobody there");
    assert!(error.to_string().contains(&members[1]), "{error}");
    assert_eq!(
        Client::connect_any(&[], Protocol::Binary)
            .expect_err("no address")
            .to_string(),
        "cannot connect to any of no address given"
    );
}

both!(a_transfer_whose_answer_is_lost_is_sent_again_and_pays_once);
fn a_transfer_whose_answer_is_lost_is_sent_again_and_pays_once(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &["--initial-balance", "1000"]);
    node.create("alice");
    node.create("bob");
    // A member that accepts the login, then closes the connection on the transfer: the client
    // cannot know whether it was executed, so it sends it again, with its key, to the node.
    let closing = FakeMember::start(FakeAnswer::Close);
    let members = [closing.addr.to_string(), node.chat.to_string()];
    let mut client = FailoverClient::connect(&members, protocol).unwrap();
    ok(client.login("alice", PASSWORD));
    let Reply::Pooled { txid } = ok(client.transfer("bob", 7)) else {
        panic!("not a transfer answer");
    };
    assert_eq!(client.connected_to(), Some(members[1].as_str()));
    let sent: Vec<Request> = closing
        .requests()
        .into_iter()
        .filter(|r| matches!(r, Request::Transfer { .. }))
        .collect();
    assert!(
        matches!(&sent[..], [Request::Transfer { key: Some(_), .. }]),
        "sent once to the closing member, with a key: {sent:?}"
    );

    // The first try reached the node and its answer was lost: the retry, with the same key,
    // gets the same transaction and pays nothing more.
    let request = Request::keyed_transfer("bob", 5);
    let mut first = node.login(protocol, "alice");
    first.send(&request).unwrap();
    drop(first);
    let mut client =
        FailoverClient::connect(&[dead_addr().to_string(), node.chat.to_string()], protocol)
            .unwrap();
    ok(client.login("alice", PASSWORD));
    let Reply::Pooled { txid: retried } = ok(client.call(&request)) else {
        panic!("not a transfer answer");
    };
    assert_ne!(retried, txid);
    assert_eq!(ok(client.call(&request)), Reply::Pooled { txid: retried });
    let Reply::Balance { confirmed, pending } = ok(client.get_balance()) else {
        panic!("not a balance");
    };
    assert_eq!(
        confirmed as i64 + pending,
        1000 - 7 - 5,
        "each transfer paid once"
    );

    // `not_leader` means nothing was done: a transfer follows it like any request.
    let follower = FakeMember::start(FakeAnswer::NotLeader(Some(node.chat.to_string())));
    let mut client = FailoverClient::connect(&[follower.addr.to_string()], protocol).unwrap();
    ok(client.login("alice", PASSWORD));
    assert!(matches!(
        ok(client.transfer("bob", 3)),
        Reply::Pooled { .. }
    ));
    let Reply::Balance { confirmed, pending } = ok(client.get_balance()) else {
        panic!("not a balance");
    };
    assert_eq!(confirmed as i64 + pending, 1000 - 7 - 5 - 3);
}
