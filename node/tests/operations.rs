//! Every operation, over real TCP against a real node, in both protocols: accounts, listing with
//! wildcards and cursors (including snapshot-consistent paging while accounts are created),
//! messages, deletions, and request ids on pipelined requests.

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::thread;

use common::{
    Node, PASSWORD, PROMPT, both, data_dir, delete, err, list, list_all, ok, read, send,
    unread_at_login,
};
use synckit_node::protocol::Protocol;
use synckit_node::protocol::{ErrorCode, Op, Reply, Request, ServerFrame};

both!(accounts_login_logout_and_listing);
fn accounts_login_logout_and_listing(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut c = node.connect(protocol);

    // create_account: success, duplicate, no implicit login.
    for name in [
        "alice", "bob", "carol", "user01", "user02", "user03", "user10",
    ] {
        assert_eq!(ok(c.create_account(name, PASSWORD)), Reply::Done {});
    }
    err(
        c.create_account("alice", "another password"),
        ErrorCode::UserExists,
    );
    err(
        c.call(&Request::ReadMessages { limit: 1 }),
        ErrorCode::NotLoggedIn,
    );

    // login: wrong password and unknown user look alike; then success.
    err(c.login("alice", "wrong password"), ErrorCode::AuthFailed);
    err(c.login("nobody", PASSWORD), ErrorCode::AuthFailed);
    assert_eq!(
        ok(c.login("alice", PASSWORD)),
        Reply::LoggedIn { unread: 0 }
    );

    // list_accounts: `*`, `?`, literal prefixes, sorted.
    let everyone = [
        "alice", "bob", "carol", "user01", "user02", "user03", "user10",
    ];
    assert_eq!(list(&mut c, "*", 100, None), (strings(&everyone), None));
    assert_eq!(
        list(&mut c, "user0?", 100, None).0,
        strings(&["user01", "user02", "user03"])
    );
    assert_eq!(list(&mut c, "user?0", 100, None).0, strings(&["user10"]));
    assert_eq!(list(&mut c, "*o*", 100, None).0, strings(&["bob", "carol"]));
    assert_eq!(list(&mut c, "?o?", 100, None).0, strings(&["bob"]));
    assert_eq!(list(&mut c, "bob", 100, None).0, strings(&["bob"]));
    assert_eq!(list(&mut c, "zed*", 100, None), (vec![], None));

    // Paging with cursors: every page full but the last, no cursor on the last.
    let (page1, cursor1) = list(&mut c, "*", 3, None);
    assert_eq!(page1, strings(&["alice", "bob", "carol"]));
    let (page2, cursor2) = list(&mut c, "*", 3, Some(cursor1.clone().expect("more")));
    assert_eq!(page2, strings(&["user01", "user02", "user03"]));
    let (page3, cursor3) = list(&mut c, "*", 3, Some(cursor2.expect("more")));
    assert_eq!((page3, cursor3), (strings(&["user10"]), None));
    // A page that ends exactly at the last account: no cursor either.
    let (_, c1) = list(&mut c, "user*", 2, None);
    let (last, none) = list(&mut c, "user*", 2, c1);
    assert_eq!((last, none), (strings(&["user03", "user10"]), None));
    assert_eq!(list_all(&mut c, "*", 1), strings(&everyone));

    // A used cursor is gone; unknown cursors, other patterns, other connections refused.
    err(
        c.call(&list_request("*", 3, cursor1)),
        ErrorCode::InvalidCursor,
    );
    err(
        c.call(&list_request("*", 3, Some("c999".into()))),
        ErrorCode::InvalidCursor,
    );
    err(
        c.call(&list_request("*", 3, Some("garbage".into()))),
        ErrorCode::InvalidCursor,
    );
    let (_, other_pattern) = list(&mut c, "user*", 1, None);
    err(
        c.call(&list_request("*", 1, other_pattern)),
        ErrorCode::InvalidArgument,
    );
    let (_, foreign) = list(&mut c, "*", 1, None);
    let mut other = node.login(protocol, "bob");
    err(
        other.call(&list_request("*", 1, foreign)),
        ErrorCode::InvalidCursor,
    );
    // At most 8 open cursors per connection: the oldest expires.
    let cursors: Vec<String> = (0..9)
        .map(|_| list(&mut c, "*", 1, None).1.expect("more"))
        .collect();
    err(
        c.call(&list_request("*", 1, Some(cursors[0].clone()))),
        ErrorCode::InvalidCursor,
    );
    assert_eq!(
        list(&mut c, "*", 1, Some(cursors[8].clone())).0,
        strings(&["bob"])
    );
    // Page sizes and patterns out of their limits.
    for (pattern, size) in [("*", 0), ("*", 101), ("", 10), (&*"x".repeat(65), 10)] {
        err(
            c.call(&list_request(pattern, size, None)),
            ErrorCode::InvalidArgument,
        );
    }

    // logout ends the session (and is harmless twice); login again works.
    assert_eq!(ok(c.call(&Request::Logout)), Reply::Done {});
    err(c.call(&list_request("*", 10, None)), ErrorCode::NotLoggedIn);
    assert_eq!(ok(c.call(&Request::Logout)), Reply::Done {});
    assert_eq!(
        ok(c.login("alice", PASSWORD)),
        Reply::LoggedIn { unread: 0 }
    );
    // Logging in as someone else on the same connection switches user.
    assert_eq!(
        ok(c.login("carol", PASSWORD)),
        Reply::LoggedIn { unread: 0 }
    );
    send(&mut c, "bob", "from carol");
    let pushed = other
        .next_push(Some(PROMPT))
        .unwrap()
        .expect("bob is online");
    assert_eq!(
        (pushed.from.as_str(), pushed.text.as_str()),
        ("carol", "from carol")
    );
}

both!(messages_send_read_and_delete);
fn messages_send_read_and_delete(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut alice = node.user(protocol, "alice");
    node.create("bob");
    node.create("carol");

    // Sent while bob is offline: queued, ids increasing.
    let texts = ["one", "two ✓", "three", &"x".repeat(4096)];
    let mut ids = Vec::new();
    let mut stamps = Vec::new();
    for text in texts {
        match ok(alice.call(&Request::SendMessage {
            to: "bob".into(),
            text: text.into(),
            key: None,
        })) {
            Reply::Sent { id, timestamp } => {
                ids.push(id);
                stamps.push(timestamp);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    err(
        alice.call(&Request::SendMessage {
            to: "nobody".into(),
            text: "hi".into(),
            key: None,
        }),
        ErrorCode::NoSuchUser,
    );
    let for_carol = send(&mut alice, "carol", "for carol only");

    // bob: login reports the unread count; reads are oldest first, at most `limit`,
    // and mark what they return delivered.
    let mut bob = node.connect(protocol);
    assert_eq!(unread_at_login(&mut bob, "bob"), 4);
    let first = read(&mut bob, 2);
    assert_eq!(
        first.iter().map(|m| m.id).collect::<Vec<_>>(),
        &ids[..2],
        "oldest first"
    );
    for (i, m) in first.iter().enumerate() {
        assert_eq!(m.from, "alice");
        assert_eq!(m.text, texts[i]);
        assert_eq!(m.timestamp, stamps[i]);
    }
    let rest = read(&mut bob, 100);
    assert_eq!(rest.iter().map(|m| m.id).collect::<Vec<_>>(), &ids[2..]);
    assert_eq!(rest[1].text.len(), 4096);
    assert!(
        read(&mut bob, 100).is_empty(),
        "a second read returns nothing"
    );
    // A fresh login sees nothing unread.
    assert_eq!(unread_at_login(&mut node.connect(protocol), "bob"), 0);
    // Limits of `limit`.
    err(
        bob.call(&Request::ReadMessages { limit: 0 }),
        ErrorCode::InvalidArgument,
    );
    err(
        bob.call(&Request::ReadMessages { limit: 101 }),
        ErrorCode::InvalidArgument,
    );

    // delete_messages: only ids in one's own mailbox count.
    assert_eq!(delete(&mut bob, &[for_carol]), 0, "carol's message");
    assert_eq!(
        delete(&mut alice, &[for_carol, ids[0]]),
        0,
        "the sender cannot delete"
    );
    assert_eq!(delete(&mut bob, &[ids[0], ids[1], 999_999]), 2);
    assert_eq!(delete(&mut bob, &[ids[0]]), 0, "already deleted");
    assert_eq!(delete(&mut bob, &[]), 0);
    // An undelivered message deleted before it is read is never offered.
    let unread = send(&mut alice, "bob", "deleted unread");
    assert_eq!(delete(&mut bob, &[unread]), 1);
    assert!(read(&mut bob, 100).is_empty());
    // carol's message survived every attempt on it.
    let mut carol = node.login(protocol, "carol");
    let got = read(&mut carol, 10);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].id, got[0].text.as_str()),
        (for_carol, "for carol only")
    );
    // Too many ids at once.
    err(
        bob.call(&Request::DeleteMessages {
            ids: (0..1001).collect(),
        }),
        ErrorCode::InvalidArgument,
    );
}

both!(delete_account);
fn delete_account(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut alice = node.user(protocol, "alice");
    node.create("carol");
    // Queued while carol is offline.
    send(&mut alice, "carol", "queued 1");
    send(&mut alice, "carol", "queued 2");
    let mut carol = node.connect(protocol);
    assert_eq!(unread_at_login(&mut carol, "carol"), 2);
    let mut carol_elsewhere = node.login(protocol, "carol");

    // Wrong password: refused, nothing changes.
    err(
        carol.call(&Request::DeleteAccount {
            password: "not the password".into(),
        }),
        ErrorCode::AuthFailed,
    );
    assert_eq!(list(&mut alice, "carol", 10, None).0, strings(&["carol"]));
    assert_eq!(unread_at_login(&mut node.connect(protocol), "carol"), 2);
    // Right password: the account and its queue are gone, this session is over.
    assert_eq!(
        ok(carol.call(&Request::DeleteAccount {
            password: PASSWORD.into()
        })),
        Reply::Done {}
    );
    err(
        carol.call(&Request::ReadMessages { limit: 10 }),
        ErrorCode::NotLoggedIn,
    );
    // carol's other session is over too.
    err(
        carol_elsewhere.call(&Request::ReadMessages { limit: 10 }),
        ErrorCode::NotLoggedIn,
    );
    err(
        alice.call(&Request::SendMessage {
            to: "carol".into(),
            text: "anyone there?".into(),
            key: None,
        }),
        ErrorCode::NoSuchUser,
    );
    assert_eq!(list(&mut alice, "*", 10, None).0, strings(&["alice"]));
    err(
        node.connect(protocol).login("carol", PASSWORD),
        ErrorCode::AuthFailed,
    );
    // Re-creating the name gives an empty mailbox.
    ok(carol.create_account("carol", "a new password"));
    assert_eq!(
        ok(carol.login("carol", "a new password")),
        Reply::LoggedIn { unread: 0 }
    );
    assert!(read(&mut carol, 100).is_empty());
    send(&mut alice, "carol", "welcome back");
    assert_eq!(
        carol.next_push(Some(PROMPT)).unwrap().unwrap().text,
        "welcome back"
    );
}

both!(a_session_of_a_deleted_account_does_not_survive_its_recreation);
/// A session of a deleted account must not become a session of a new account that happens to
/// get the same name.
fn a_session_of_a_deleted_account_does_not_survive_its_recreation(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut alice = node.user(protocol, "alice");
    let mut old = node.user(protocol, "carol");
    let mut deleter = node.login(protocol, "carol");
    ok(deleter.call(&Request::DeleteAccount {
        password: PASSWORD.into(),
    }));
    // Someone else creates "carol" and gets mail.
    let mut new = node.connect(protocol);
    ok(new.create_account("carol", "the new owner's password"));
    send(&mut alice, "carol", "private to the new carol");
    // The old session (which made no request since the deletion) reads nothing.
    err(
        old.call(&Request::ReadMessages { limit: 10 }),
        ErrorCode::NotLoggedIn,
    );
    assert_eq!(
        ok(new.login("carol", "the new owner's password")),
        Reply::LoggedIn { unread: 1 }
    );
    assert_eq!(read(&mut new, 10)[0].text, "private to the new carol");
}

both!(pipelined_responses_carry_their_request_ids_in_order);
fn pipelined_responses_carry_their_request_ids_in_order(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut alice = node.user(protocol, "alice");
    node.create("bob");
    let requests = [
        list_request("*", 10, None),
        Request::SendMessage {
            to: "bob".into(),
            text: "p1".into(),
            key: None,
        },
        Request::SendMessage {
            to: "nobody".into(),
            text: "p2".into(),
            key: None,
        },
        Request::ReadMessages { limit: 5 },
        Request::DeleteMessages { ids: vec![12345] },
        Request::SendMessage {
            to: "bob".into(),
            text: "p3".into(),
            key: None,
        },
        Request::Logout,
        Request::ReadMessages { limit: 5 },
    ];
    let ids: Vec<u32> = requests
        .iter()
        .map(|r| alice.send(r).expect("send"))
        .collect();
    let mut responses = Vec::new();
    for _ in &requests {
        match alice.receive().expect("a response") {
            ServerFrame::Response(response) => responses.push(response),
            ServerFrame::Push(push) => panic!("unexpected push {push:?}"),
        }
    }
    assert_eq!(
        responses.iter().map(|r| r.id).collect::<Vec<_>>(),
        ids,
        "responses in request order with the request ids"
    );
    let ops: Vec<_> = responses.iter().map(|r| r.op).collect();
    assert_eq!(
        ops,
        requests.iter().map(|r| Some(r.op())).collect::<Vec<_>>()
    );
    assert!(matches!(responses[0].result, Ok(Reply::Accounts { .. })));
    assert!(matches!(responses[1].result, Ok(Reply::Sent { .. })));
    assert_eq!(
        responses[2].result.as_ref().unwrap_err().code,
        ErrorCode::NoSuchUser
    );
    assert_eq!(
        responses[3].result,
        Ok(Reply::Messages { messages: vec![] })
    );
    assert_eq!(responses[4].result, Ok(Reply::Deleted { deleted: 0 }));
    let (Ok(Reply::Sent { id: a, .. }), Ok(Reply::Sent { id: b, .. })) =
        (&responses[1].result, &responses[5].result)
    else {
        panic!("{responses:?}")
    };
    assert!(a < b);
    assert_eq!(responses[6].result, Ok(Reply::Done {}));
    assert_eq!(responses[7].op, Some(Op::ReadMessages));
    assert_eq!(
        responses[7].result.as_ref().unwrap_err().code,
        ErrorCode::NotLoggedIn
    );
    // The explicit ids the client chose are echoed, whatever they are.
    let mut raw = common::Raw::connect(node.chat, protocol);
    for id in [0, 7, u32::MAX, 42] {
        raw.request(id, &Request::ReadMessages { limit: 1 });
    }
    for id in [0, 7, u32::MAX, 42] {
        raw.expect_error(id, ErrorCode::NotLoggedIn);
    }
}

both!(paging_is_consistent_while_accounts_are_created_concurrently);
/// Pages after the first come from the first page's snapshot: accounts created (or deleted)
/// meanwhile, by other connections on other threads, change nothing in them; a fresh listing
/// shows the changes.
fn paging_is_consistent_while_accounts_are_created_concurrently(protocol: Protocol) {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let original: Vec<String> = (1..=10).map(|i| format!("p{:02}", i * 2)).collect();
    for name in &original {
        node.create(name);
    }
    node.create("q-other");
    let mut lister = node.user(protocol, "a-lister");

    // Another thread creates one account per page turn (into the pages still to come, and
    // before the cursor), and deletes an account of a later page once.
    let (turns, turn) = mpsc::channel::<usize>();
    let (done, created) = mpsc::channel::<String>();
    let chat = node.chat;
    let writer = thread::spawn(move || {
        let mut client = synckit_node::client::Client::connect(chat, protocol).unwrap();
        for n in turn {
            let name = format!("p{:02}", n * 2 + 1);
            ok(client.create_account(&name, PASSWORD));
            if n == 3 {
                // Delete p16 (on a later page) from yet another connection.
                let mut p16 = synckit_node::client::Client::connect(chat, protocol).unwrap();
                ok(p16.login("p16", PASSWORD));
                ok(p16.call(&Request::DeleteAccount {
                    password: PASSWORD.into(),
                }));
            }
            done.send(name).unwrap();
        }
    });

    let page_size = 2;
    let (first, mut cursor) = list(&mut lister, "p*", page_size, None);
    let mut walked = first.clone();
    let mut new_names = Vec::new();
    let mut n = 0;
    // p00 and p01 sort before the cursor; then p03.. sort into later pages.
    turns.send(0).unwrap();
    new_names.push(created.recv_timeout(PROMPT * 3).unwrap());
    while let Some(next) = cursor {
        n += 1;
        turns.send(n).unwrap();
        new_names.push(created.recv_timeout(PROMPT * 3).unwrap());
        let (page, after) = list(&mut lister, "p*", page_size, Some(next));
        walked.extend(page);
        cursor = after;
    }
    drop(turns);
    writer.join().unwrap();

    assert_eq!(walked, original, "the walk shows the first page's snapshot");
    let unique: BTreeSet<&String> = walked.iter().collect();
    assert_eq!(unique.len(), walked.len(), "no duplicates");

    let mut now: BTreeSet<String> = original.iter().cloned().collect();
    now.remove("p16");
    now.extend(new_names);
    let fresh = common::list_all(&mut lister, "p*", page_size);
    assert_eq!(
        fresh,
        now.into_iter().collect::<Vec<_>>(),
        "a fresh listing shows the changes"
    );
}

fn list_request(pattern: &str, page_size: u32, cursor: Option<String>) -> Request {
    Request::ListAccounts {
        pattern: pattern.into(),
        page_size,
        cursor,
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn protocols_share_one_port_and_one_state() {
    let dir = data_dir();
    let node = Node::start(dir.path(), &[]);
    let mut binary = node.user(Protocol::Binary, "bin");
    let mut json = node.user(Protocol::Json, "json");
    send(&mut binary, "json", "from binary");
    send(&mut json, "bin", "from json");
    assert_eq!(
        json.next_push(Some(PROMPT)).unwrap().unwrap().text,
        "from binary"
    );
    assert_eq!(
        binary.next_push(Some(PROMPT)).unwrap().unwrap().text,
        "from json"
    );
    assert_eq!(list(&mut json, "*", 10, None).0, strings(&["bin", "json"]));
}
