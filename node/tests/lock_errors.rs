//! A sync-kit refusal inside the node becomes an error reply, never a panic or a hang, and the
//! node keeps serving afterwards. The refusal is provoked the way a lock-order bug would cause
//! it: the calling thread already holds a leveled lock above every lock of the service, and
//! makes a request that takes one of them on that thread (a read hands messages out under the
//! reader's mailbox shard; proposing a change takes no lock of the node since raft orders the
//! log, so a send is no longer refused there).

use std::net::{IpAddr, Ipv4Addr};

use sync_kit::{Level, Mutex};
use synckit_node::config::Config;
use synckit_node::protocol::{ErrorCode, Reply, Request};
use synckit_node::service::Service;

#[test]
fn a_lock_order_violation_inside_the_service_is_an_error_reply() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let service = Service::open(&config).expect("open the service");
    let (outbox, _inbox) = crossbeam_channel::unbounded();
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut alice = service.connect(peer, outbox).expect("a connection slot");
    let request = |username: &str| Request::CreateAccount {
        username: username.into(),
        password: "correct horse battery".into(),
    };
    service
        .execute(&mut alice, request("bob"))
        .expect("create bob");
    service
        .execute(&mut alice, request("alice"))
        .expect("create alice");
    let login = Request::Login {
        username: "alice".into(),
        password: "correct horse battery".into(),
    };
    service.execute(&mut alice, login).expect("log in");
    let send = || Request::SendMessage {
        to: "bob".into(),
        text: "hello".into(),
        key: None,
    };

    let first = match service.execute(&mut alice, send()).expect("send") {
        Reply::Sent { id, .. } => id,
        other => panic!("unexpected reply {other:?}"),
    };
    let (outbox, _inbox) = crossbeam_channel::unbounded();
    let mut bob = service.connect(peer, outbox).expect("a connection slot");
    let login = Request::Login {
        username: "bob".into(),
        password: "correct horse battery".into(),
    };
    service.execute(&mut bob, login).expect("bob logs in");
    let read = || Request::ReadMessages { limit: 10 };

    let violations_before = sync_kit::deadlock::stats().level_violations;
    let outer = Mutex::with_level("test-outer", Level(u32::MAX), ());
    let held = outer.lock().unwrap();
    let refused = service.execute(&mut bob, read());
    drop(held);

    let error = refused.expect_err("the service's locks sit below the held one");
    assert_eq!(error.code, ErrorCode::Internal, "{error:?}");
    assert!(
        error.message.contains("internal lock error") && error.message.contains("test-outer"),
        "the reply names the refusal: {}",
        error.message
    );
    assert!(sync_kit::deadlock::stats().level_violations > violations_before);

    // The refused read handed nothing out, and the service goes on serving (bob is logged in
    // now: the second send is pushed to him, not left for a read).
    let sent = service
        .execute(&mut alice, send())
        .expect("send once the lock is released");
    assert!(matches!(sent, Reply::Sent { .. }), "{sent:?}");
    match service.execute(&mut bob, read()).expect("bob reads") {
        Reply::Messages { messages } => {
            let ids: Vec<u64> = messages.iter().map(|m| m.id).collect();
            assert_eq!(
                ids,
                vec![first],
                "the message the refused read left: {messages:?}"
            );
        }
        other => panic!("unexpected reply {other:?}"),
    }
}
