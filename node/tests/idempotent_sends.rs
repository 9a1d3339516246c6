//! Idempotent sends against a real node, in both protocols: a send repeated with its key stores
//! nothing and answers with the first message's id and timestamp, across a restart (the keys are
//! in the replicated state: the log, and snapshots); a key of the wrong size is refused.

mod common;

use common::{Node, PROTOCOLS, data_dir, err, ok, read_all};
use synckit_node::protocol::{ErrorCode, Reply, Request};

#[test]
fn a_send_repeated_with_its_key_is_stored_once() {
    for protocol in PROTOCOLS {
        let dir = data_dir();
        let node = Node::start(dir.path(), &["--snapshot-every-records", "3"]);
        node.create("bob");
        let mut alice = node.user(protocol, "alice");
        let (request, first) = alice.send_message("bob", "only once").unwrap();
        let Ok(Reply::Sent { id, timestamp }) = first else {
            panic!("send answered {first:?}");
        };
        assert_eq!(
            ok(alice.call(&request)),
            Reply::Sent { id, timestamp },
            "{protocol:?}: the repeat answers with the first send"
        );
        // Another key is another message.
        let (_, other) = alice.send_message("bob", "only once").unwrap();
        assert!(matches!(other, Ok(Reply::Sent { id: other, .. }) if other > id));
        // After a restart (snapshot and log replay), the key is still known.
        drop(alice);
        node.kill();
        let node = Node::start(dir.path(), &[]);
        let mut alice = node.login(protocol, "alice");
        assert_eq!(ok(alice.call(&request)), Reply::Sent { id, timestamp });
        let mut bob = node.login(protocol, "bob");
        assert_eq!(
            read_all(&mut bob).len(),
            2,
            "{protocol:?}: two messages stored"
        );

        for key in [String::new(), "k".repeat(65)] {
            let request = Request::SendMessage {
                to: "bob".into(),
                text: "x".into(),
                key: Some(key),
            };
            let error = err(alice.call(&request), ErrorCode::InvalidArgument);
            assert!(error.message.contains("1 to 64 bytes"), "{error:?}");
        }
    }
}
