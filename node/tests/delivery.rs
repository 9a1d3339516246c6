//! Live push versus queue: an online recipient gets a push frame at once (on every live
//! session, whatever its protocol); an offline recipient's messages wait for `read_messages`.

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{Node, PROMPT, both, data_dir, read, read_all, send, unread_at_login};
use synckit_node::protocol::Protocol;
use synckit_node::protocol::Request;

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

/// Senders racing to one recipient: whatever order their requests interleave in, the recipient
/// sees ids only increase, both in what is pushed to a listening session and in what another
/// session's reads return; every message reaches it once, by push or by read.
#[test]
fn concurrent_sends_to_one_recipient_arrive_in_id_order() {
    const SENDERS: usize = 4;
    const EACH: usize = 150;
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut listener = node.user(Protocol::Binary, "bob");
    let reader = node.login(Protocol::Json, "bob");
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| node.user(Protocol::Binary, &format!("s{i}")))
        .collect();

    let (stop, stopped) = mpsc::channel::<()>();
    let reading = thread::spawn(move || {
        let mut reader = reader;
        let mut ids = Vec::new();
        while stopped.try_recv().is_err() {
            ids.extend(read(&mut reader, 100).iter().map(|m| m.id));
        }
        // Everything was acknowledged, and so stored, before the stop: one last sweep.
        ids.extend(read_all(&mut reader).iter().map(|m| m.id));
        ids
    });
    let start = Arc::new(Barrier::new(SENDERS));
    let sending: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                (0..EACH)
                    .map(|n| send(&mut client, "bob", &format!("s{i} #{n}")))
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut sent = BTreeSet::new();
    for handle in sending {
        sent.extend(handle.join().expect("a sender panicked"));
    }
    stop.send(()).unwrap();
    let read_ids = reading.join().expect("the reader panicked");
    assert_eq!(sent.len(), SENDERS * EACH, "ids are unique");
    assert!(
        read_ids.windows(2).all(|w| w[0] < w[1]),
        "reads return ids in increasing order: {read_ids:?}"
    );
    // A message is pushed before its sender is answered, so every push is queued by now.
    let read_set: BTreeSet<u64> = read_ids.iter().copied().collect();
    let pushed: Vec<u64> = (0..sent.len() - read_set.len())
        .map(|_| {
            listener
                .next_push(Some(PROMPT))
                .expect("read a push")
                .expect("a push within the timeout")
                .id
        })
        .collect();
    assert!(
        pushed.windows(2).all(|w| w[0] < w[1]),
        "pushes arrive in increasing id order: {pushed:?}"
    );
    let pushed_set: BTreeSet<u64> = pushed.iter().copied().collect();
    assert!(
        pushed_set.is_disjoint(&read_set),
        "a message read is not also pushed"
    );
    let delivered: BTreeSet<u64> = pushed_set.union(&read_set).copied().collect();
    assert_eq!(delivered, sent, "every message reaches bob once");
}
