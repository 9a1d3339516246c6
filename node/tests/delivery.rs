//! Live push versus queue: an online recipient gets a push frame at once (on every live
//! session, whatever its protocol); an offline recipient's messages wait for `read_messages`.

mod common;

use std::time::{Duration, Instant};

use common::{Node, PROMPT, both, data_dir, read, send, unread_at_login};
use synckit_node::protocol::Request;
use synckit_node::server::Protocol;

/// How long to wait before concluding that no push is coming.
const QUIET: Duration = Duration::from_millis(300);

fn other(protocol: Protocol) -> Protocol {
    match protocol {
        Protocol::Binary => Protocol::Json,
        Protocol::Json => Protocol::Binary,
    }
}

both!(online_recipient_gets_a_push_on_every_session);
fn online_recipient_gets_a_push_on_every_session(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut alice = node.user(protocol, "alice");
    let mut bob = node.user(protocol, "bob");
    // A second live session of bob's, in the other protocol.
    let mut bob_too = node.login(other(protocol), "bob");

    let sent_at = Instant::now();
    let id = send(&mut alice, "bob", "hello, live bob");
    for session in [&mut bob, &mut bob_too] {
        let pushed = session
            .next_push(Some(PROMPT))
            .expect("read a push")
            .expect("a push within the timeout");
        assert_eq!(pushed.id, id);
        assert_eq!(pushed.from, "alice");
        assert_eq!(pushed.text, "hello, live bob");
        assert!(pushed.timestamp > 0);
    }
    assert!(
        sent_at.elapsed() < PROMPT,
        "pushes arrive at once, not after a poll interval"
    );
    // Pushed is delivered: nothing waits for a read.
    assert!(read(&mut bob, 100).is_empty());
    assert_eq!(unread_at_login(&mut node.connect(protocol), "bob"), 0);

    // Several messages arrive in order; the sender gets no push of its own message.
    let ids: Vec<u64> = (0..5)
        .map(|i| send(&mut alice, "bob", &format!("burst {i}")))
        .collect();
    for session in [&mut bob, &mut bob_too] {
        let got: Vec<u64> = (0..5)
            .map(|_| session.next_push(Some(PROMPT)).unwrap().expect("push").id)
            .collect();
        assert_eq!(got, ids);
    }
    assert_eq!(alice.next_push(Some(QUIET)).unwrap(), None);

    // A push that arrives while a request is in flight is kept for next_push, and the
    // response still comes.
    send(&mut bob, "alice", "to alice, who is online");
    assert_eq!(
        alice.next_push(Some(PROMPT)).unwrap().unwrap().text,
        "to alice, who is online"
    );

    // After logging out, a session gets no more pushes; the other still does.
    common::ok(bob_too.call(&Request::Logout));
    let id = send(&mut alice, "bob", "only one session left");
    assert_eq!(bob.next_push(Some(PROMPT)).unwrap().unwrap().id, id);
    assert_eq!(bob_too.next_push(Some(QUIET)).unwrap(), None);

    // With every session gone (connection closed), messages queue. The node notices the
    // close asynchronously: wait until it counts only alice's and bob_too's connections.
    drop(bob);
    assert!(
        common::wait_until(PROMPT, || node.stats()["connections"] == 2),
        "closed connections are forgotten: {}",
        node.stats()["connections"]
    );
    let queued: Vec<u64> = (0..3)
        .map(|i| send(&mut alice, "bob", &format!("queued {i}")))
        .collect();
    assert_eq!(bob_too.next_push(Some(QUIET)).unwrap(), None);
    let mut bob = node.connect(protocol);
    assert_eq!(unread_at_login(&mut bob, "bob"), 3);
    let got: Vec<u64> = read(&mut bob, 100).iter().map(|m| m.id).collect();
    assert_eq!(got, queued);
}

both!(offline_recipient_gets_the_message_queued);
fn offline_recipient_gets_the_message_queued(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut alice = node.user(protocol, "alice");
    node.create("carol");
    // carol is connected but not logged in: that is offline too.
    let mut carol = node.connect(protocol);
    let ids: Vec<u64> = (0..3)
        .map(|i| send(&mut alice, "carol", &format!("while you were out {i}")))
        .collect();
    assert_eq!(unread_at_login(&mut carol, "carol"), 3);
    assert_eq!(
        carol.next_push(Some(QUIET)).unwrap(),
        None,
        "queued messages are not pushed at login"
    );
    let got = read(&mut carol, 100);
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    assert_eq!(got[2].text, "while you were out 2");
    assert!(read(&mut carol, 100).is_empty());
    // Now online: the next one is pushed, not queued.
    let id = send(&mut alice, "carol", "now you are in");
    assert_eq!(carol.next_push(Some(PROMPT)).unwrap().unwrap().id, id);
    assert!(read(&mut carol, 100).is_empty());
}
