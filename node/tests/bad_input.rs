//! Bad input of every kind, in both protocols, over real sockets: each gets an error response or
//! a clean close, the node keeps serving everyone else, and nothing stored is lost.

mod common;

use common::{Node, PASSWORD, PROMPT, Raw, data_dir, err, ok, read, send};
use synckit_node::client::Client;
use synckit_node::protocol::Protocol;
use synckit_node::protocol::binary::{FLAG_PUSH, MAGIC_VERSION, frame};
use synckit_node::protocol::{ErrorCode, Op, Reply, Request};

/// A binary string field: varint length (short strings only) and the bytes.
fn field(bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 128);
    let mut out = vec![bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// LEB128.
fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A node with a message stored for bob (offline) and alice logged in on a connection that
/// must keep working through everything.
struct Fixture {
    node: Node,
    _dir: tempfile::TempDir,
    alice: Client,
    stored: u64,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = data_dir();
        let node = Node::start(dir.path(), &[]);
        let mut alice = node.user(Protocol::Binary, "alice");
        node.create("bob");
        let stored = send(&mut alice, "bob", "keep me");
        Fixture {
            node,
            _dir: dir,
            alice,
            stored,
        }
    }

    /// Nothing was lost, and everyone is still served.
    fn check_survived(mut self) {
        self.node.assert_running();
        assert_eq!(self.node.get("/health").status, 200);
        // The connection that was there all along still works.
        let (accounts, _) = common::list(&mut self.alice, "*", 10, None);
        assert!(accounts.contains(&"bob".to_string()), "{accounts:?}");
        // The stored message is still there, once.
        let mut bob = self.node.login(Protocol::Json, "bob");
        let messages = read(&mut bob, 100);
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(
            (messages[0].id, messages[0].text.as_str()),
            (self.stored, "keep me")
        );
        // A new client works, in both protocols.
        let mut newcomer = self.node.user(Protocol::Binary, "newcomer");
        send(&mut newcomer, "bob", "hello from a new client");
        assert_eq!(
            bob.next_push(Some(PROMPT)).unwrap().unwrap().text,
            "hello from a new client"
        );
        let mut json = self.node.login(Protocol::Json, "newcomer");
        send(&mut json, "alice", "json still works");
        assert_eq!(
            self.alice.next_push(Some(PROMPT)).unwrap().unwrap().text,
            "json still works"
        );
    }
}

#[test]
fn bad_binary_input() {
    let f = Fixture::new();
    let chat = f.node.chat;
    let logout = || frame(Op::Logout as u8, 0, 99, &[]);

    // Wrong magic byte mid-stream: an error frame, then the connection is closed.
    let mut raw = Raw::connect(chat, Protocol::Binary);
    raw.request(1, &Request::ReadMessages { limit: 1 });
    raw.expect_error(1, ErrorCode::NotLoggedIn);
    raw.send(&[0xB2]);
    let error = raw.expect_error(0, ErrorCode::Malformed);
    assert!(error.message.contains("magic"), "{error}");
    raw.expect_closed();

    // Unknown operation codes (including the push-only one): error, connection usable.
    let mut raw = Raw::connect(chat, Protocol::Binary);
    raw.send(&frame(99, 0, 5, b"some payload"));
    raw.expect_error(5, ErrorCode::UnknownOperation);
    raw.send(&frame(0, 0, 6, &[]));
    raw.expect_error(6, ErrorCode::UnknownOperation);
    raw.send(&frame(Op::Deliver as u8, 0, 7, &[]));
    raw.expect_error(7, ErrorCode::UnknownOperation);
    raw.send(&logout());
    assert_eq!(raw.expect_ok(99), Reply::Done {});

    // Flags on a request, invalid UTF-8, trailing bytes, short payloads, lying lengths and
    // counts, oversized varints in fields: an error each, and the connection stays usable.
    let bad_payloads: Vec<(Op, u8, Vec<u8>, ErrorCode)> = vec![
        (Op::Logout, FLAG_PUSH, vec![], ErrorCode::Malformed),
        (
            Op::CreateAccount,
            0,
            concat(&[&field(&[0xff, 0xfe, b'x']), &field(b"password123")]),
            ErrorCode::InvalidUtf8,
        ),
        (
            Op::Login,
            0,
            concat(&[&field(b"alice"), &field(b"pass\xc3word")]),
            ErrorCode::InvalidUtf8,
        ),
        (
            Op::ReadMessages,
            0,
            vec![1, 0],
            ErrorCode::Malformed, // trailing garbage
        ),
        (
            Op::Logout,
            0,
            b"garbage".to_vec(),
            ErrorCode::Malformed, // trailing garbage
        ),
        (
            Op::SendMessage,
            0,
            field(b"bob"),
            ErrorCode::Malformed, // text missing
        ),
        (
            Op::SendMessage,
            0,
            vec![3, b'b', b'o', b'b', 50, b'x'],
            ErrorCode::Malformed, // text length runs past the end
        ),
        (
            Op::DeleteMessages,
            0,
            concat(&[&varint(1000), &[1]]),
            ErrorCode::InvalidArgument, // count larger than the payload
        ),
        (
            Op::DeleteMessages,
            0,
            concat(&[&varint(5000), &[1; 10]]),
            ErrorCode::InvalidArgument, // count over the limit
        ),
        (
            Op::ReadMessages,
            0,
            varint(1 << 40),
            ErrorCode::InvalidArgument, // limit beyond 32 bits
        ),
        (
            Op::ReadMessages,
            0,
            vec![0x80],
            ErrorCode::Malformed, // varint cut short
        ),
        (
            Op::ListAccounts,
            0,
            concat(&[&field(b"*"), &[10], &[2]]),
            ErrorCode::Malformed, // cursor presence byte neither 0 nor 1
        ),
    ];
    let mut raw = Raw::connect(chat, Protocol::Binary);
    for (i, (op, flags, payload, code)) in bad_payloads.iter().enumerate() {
        let id = 100 + i as u32;
        raw.send(&frame(*op as u8, *flags, id, payload));
        raw.expect_error(id, *code);
    }
    raw.send(&logout());
    assert_eq!(raw.expect_ok(99), Reply::Done {});
    // A payload of exactly 64 KiB is read (and refused only for its text length).
    ok_login(&mut raw);
    let text = vec![b'x'; 65_536 - 4 - 3];
    let mut payload = concat(&[&field(b"bob"), &varint(text.len() as u64), &text]);
    assert_eq!(payload.len(), 65_536);
    raw.send(&frame(Op::SendMessage as u8, 0, 200, &payload));
    raw.expect_error(200, ErrorCode::InvalidArgument);
    payload.clear();
    raw.send(&logout());
    assert_eq!(raw.expect_ok(99), Reply::Done {});

    // A length over 64 KiB: too_large, then close, without reading the payload.
    let mut raw = Raw::connect(chat, Protocol::Binary);
    let mut header = vec![MAGIC_VERSION, Op::SendMessage as u8, 0];
    header.extend(varint(8));
    header.extend(varint(65_537));
    raw.send(&header);
    raw.expect_error(8, ErrorCode::TooLarge);
    raw.expect_closed();
    let mut raw = Raw::connect(chat, Protocol::Binary);
    let mut header = vec![MAGIC_VERSION, Op::SendMessage as u8, 0];
    header.extend(varint(9));
    header.extend(varint(u64::from(u32::MAX)));
    raw.send(&header);
    raw.expect_error(9, ErrorCode::TooLarge);
    raw.expect_closed();
    // A request id varint longer than 5 bytes: malformed, close.
    let mut raw = Raw::connect(chat, Protocol::Binary);
    raw.send(&[
        MAGIC_VERSION,
        Op::Logout as u8,
        0,
        0x80,
        0x80,
        0x80,
        0x80,
        0x80,
        0x01,
    ]);
    raw.expect_error(0, ErrorCode::Malformed);
    raw.expect_closed();

    // Truncated frames, then close: nothing is executed, the connection just ends.
    let whole = frame(
        Op::SendMessage as u8,
        0,
        10,
        &concat(&[&field(b"bob"), &field(b"never sent")]),
    );
    for cut in [1, 2, 4, whole.len() - 1] {
        let mut raw = Raw::connect(chat, Protocol::Binary);
        ok_login(&mut raw);
        raw.send(&whole[..cut]);
        raw.shutdown_write();
        raw.expect_closed();
    }
    // Requests whose answers nobody reads: the client is gone before the node writes.
    for _ in 0..20 {
        let mut raw = Raw::connect(chat, Protocol::Binary);
        raw.request(1, &Request::ReadMessages { limit: 1 });
        raw.send(&logout());
        drop(raw);
    }
    f.check_survived();
}

/// Logs a raw binary connection in as alice (so a truncated send would be executable).
fn ok_login(raw: &mut Raw) {
    raw.request(
        50,
        &Request::Login {
            username: "alice".into(),
            password: PASSWORD.into(),
        },
    );
    assert!(matches!(raw.expect_ok(50), Reply::LoggedIn { .. }));
}

#[test]
fn bad_json_input() {
    let f = Fixture::new();
    let chat = f.node.chat;
    let logout = br#"{"id":99,"op":"logout"}"#;

    let cases: Vec<(&[u8], u32, ErrorCode)> = vec![
        (b"hello", 0, ErrorCode::Malformed),
        (b"{\"id\":1,", 0, ErrorCode::Malformed),
        (b"[1,2,3]", 0, ErrorCode::Malformed),
        (b"\"a string\"", 0, ErrorCode::Malformed),
        (br#"{"op":"logout"}"#, 0, ErrorCode::InvalidArgument), // missing id
        (br#"{"id":-1,"op":"logout"}"#, 0, ErrorCode::InvalidArgument),
        (
            br#"{"id":4294967296,"op":"logout"}"#,
            0,
            ErrorCode::InvalidArgument,
        ),
        (br#"{"id":"3","op":"logout"}"#, 0, ErrorCode::InvalidArgument),
        (br#"{"id":3}"#, 3, ErrorCode::InvalidArgument), // missing op
        (br#"{"id":4,"op":7}"#, 4, ErrorCode::InvalidArgument),
        (br#"{"id":5,"op":"fly"}"#, 5, ErrorCode::UnknownOperation),
        (
            br#"{"id":6,"op":"deliver","data":{}}"#,
            6,
            ErrorCode::UnknownOperation,
        ),
        (
            br#"{"id":7,"op":"read_messages","data":{"limit":"10"}}"#,
            7,
            ErrorCode::InvalidArgument,
        ),
        (
            br#"{"id":8,"op":"read_messages","data":{"limit":-1}}"#,
            8,
            ErrorCode::InvalidArgument,
        ),
        (
            br#"{"id":9,"op":"login","data":{"username":"alice"}}"#,
            9,
            ErrorCode::InvalidArgument,
        ),
        (br#"{"id":10,"op":"login"}"#, 10, ErrorCode::InvalidArgument),
        (
            br#"{"id":11,"op":"read_messages","data":{"limit":1,"extra":true}}"#,
            11,
            ErrorCode::InvalidArgument,
        ),
        (
            br#"{"id":12,"op":"delete_messages","data":{"ids":[1,"two"]}}"#,
            12,
            ErrorCode::InvalidArgument,
        ),
        (
            b"{\"id\":13,\"op\":\"login\",\"data\":{\"username\":\"al\xffice\",\"password\":\"x\"}}",
            0,
            ErrorCode::InvalidUtf8,
        ),
        (b"\xc3\x28", 0, ErrorCode::InvalidUtf8),
    ];
    // The first byte selects JSON even when it is not `{`: start with garbage.
    let mut raw = Raw::connect(chat, Protocol::Json);
    for (line, id, code) in &cases {
        raw.send(line);
        raw.send(b"\n");
        let error = raw.expect_error(*id, *code);
        assert!(!error.message.is_empty());
    }
    // Blank lines are skipped; the connection is still usable.
    raw.send(b"\n   \n\t\n");
    raw.send(logout);
    raw.send(b"\n");
    assert_eq!(raw.expect_ok(99), Reply::Done {});
    // A line of exactly 64 KiB is accepted.
    let mut line = logout.to_vec();
    line.resize(65_536, b' ');
    line.push(b'\n');
    raw.send(&line);
    assert_eq!(raw.expect_ok(99), Reply::Done {});

    // A line longer than 64 KiB: too_large, then close.
    let mut raw = Raw::connect(chat, Protocol::Json);
    raw.send(&vec![b'{'; 65_537]);
    raw.expect_error(0, ErrorCode::TooLarge);
    raw.expect_closed();
    // A line cut off by the close: nothing executed, the connection ends.
    let mut raw = Raw::connect(chat, Protocol::Json);
    raw.send(br#"{"id":1,"op":"send_message","data":{"to":"bob","text":"never"#);
    raw.shutdown_write();
    raw.expect_closed();
    f.check_survived();
}

/// Argument rules, the same in both protocols.
#[test]
fn invalid_arguments_and_missing_login() {
    let f = Fixture::new();
    for protocol in [Protocol::Binary, Protocol::Json] {
        let mut c = f.node.connect(protocol);
        // Everything but account creation, login and logout needs a login.
        let needs_login = [
            Request::ReadMessages { limit: 1 },
            Request::SendMessage {
                to: "bob".into(),
                text: "hi".into(),
                key: None,
            },
            Request::ListAccounts {
                pattern: "*".into(),
                page_size: 1,
                cursor: None,
            },
            Request::DeleteMessages {
                ids: vec![f.stored],
            },
            Request::DeleteAccount {
                password: PASSWORD.into(),
            },
        ];
        for request in &needs_login {
            err(c.call(request), ErrorCode::NotLoggedIn);
        }
        assert_eq!(ok(c.call(&Request::Logout)), Reply::Done {});

        // Usernames: 1 to 32 of [A-Za-z0-9_.-]; passwords: 8 to 128 bytes.
        let too_long = "a".repeat(33);
        for name in [
            too_long.as_str(),
            "",
            "bad name",
            "a/b",
            "ünïcode",
            "tab\t",
            "semi;colon",
            "star*",
        ] {
            err(c.create_account(name, PASSWORD), ErrorCode::InvalidArgument);
            err(c.login(name, PASSWORD), ErrorCode::InvalidArgument);
        }
        for password in ["7 bytes", &"p".repeat(129)] {
            err(
                c.create_account("fine-name", password),
                ErrorCode::InvalidArgument,
            );
        }
        err(c.login("alice", &"p".repeat(129)), ErrorCode::AuthFailed);
        err(c.login("alice", "wrong password"), ErrorCode::AuthFailed);
        err(c.login("no-such-user", PASSWORD), ErrorCode::AuthFailed);

        assert!(matches!(
            ok(c.login("alice", PASSWORD)),
            Reply::LoggedIn { .. }
        ));
        err(
            c.call(&Request::SendMessage {
                to: "bob".into(),
                text: "y".repeat(4097),
                key: None,
            }),
            ErrorCode::InvalidArgument,
        );
        // Multi-byte characters count in bytes: 1366 × 3 bytes = 4098 > 4096.
        err(
            c.call(&Request::SendMessage {
                to: "bob".into(),
                text: "✓".repeat(1366),
                key: None,
            }),
            ErrorCode::InvalidArgument,
        );
        err(
            c.call(&Request::SendMessage {
                to: "bad name".into(),
                text: "hi".into(),
                key: None,
            }),
            ErrorCode::InvalidArgument,
        );
        err(
            c.call(&Request::DeleteAccount {
                password: "wrong password".into(),
            }),
            ErrorCode::AuthFailed,
        );
    }
    // The limits are inclusive.
    let mut c = f.node.connect(Protocol::Json);
    let longest = "L".repeat(32);
    ok(c.create_account(&longest, "8 bytes!"));
    ok(c.create_account("max-password", &"p".repeat(128)));
    assert!(matches!(
        ok(c.login(&longest, "8 bytes!")),
        Reply::LoggedIn { .. }
    ));
    assert!(matches!(
        ok(c.login("max-password", &"p".repeat(128))),
        Reply::LoggedIn { .. }
    ));
    f.check_survived();
}
