//! Property tests of both wire codecs, without a node: every request, response and push survives
//! an encode/decode round trip in each protocol, and no byte sequence, however damaged, makes a
//! decoder panic (a server never panics on client input).

use proptest::prelude::*;
use synckit_node::protocol::binary::{self, FrameError};
use synckit_node::protocol::{
    ErrorCode, ErrorReply, Message, Op, Push, Reply, Request, Response, ServerFrame, json, limits,
};

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including what JSON must escape.
    prop_oneof![
        "\\PC{0,24}",
        "[\"\\\\\n\t\u{0}-\u{1f}a-z]{0,12}",
        Just(String::new())
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (text(), text())
            .prop_map(|(username, password)| Request::CreateAccount { username, password }),
        (text(), text()).prop_map(|(username, password)| Request::Login { username, password }),
        Just(Request::Logout),
        (text(), any::<u32>(), proptest::option::of(text())).prop_map(
            |(pattern, page_size, cursor)| Request::ListAccounts {
                pattern,
                page_size,
                cursor
            }
        ),
        (text(), text()).prop_map(|(to, text)| Request::SendMessage { to, text }),
        any::<u32>().prop_map(|limit| Request::ReadMessages { limit }),
        prop::collection::vec(any::<u64>(), 0..40).prop_map(|ids| Request::DeleteMessages { ids }),
        text().prop_map(|password| Request::DeleteAccount { password }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (any::<u64>(), text(), any::<u64>(), text()).prop_map(|(id, from, timestamp, text)| Message {
        id,
        from,
        timestamp,
        text,
    })
}

/// A successful reply together with an operation that returns it.
fn reply() -> impl Strategy<Value = (Op, Reply)> {
    prop_oneof![
        any::<u32>().prop_map(|unread| (Op::Login, Reply::LoggedIn { unread })),
        (
            prop::collection::vec(text(), 0..8),
            proptest::option::of(text())
        )
            .prop_map(|(accounts, next_cursor)| (
                Op::ListAccounts,
                Reply::Accounts {
                    accounts,
                    next_cursor
                }
            )),
        (any::<u64>(), any::<u64>())
            .prop_map(|(id, timestamp)| (Op::SendMessage, Reply::Sent { id, timestamp })),
        prop::collection::vec(message(), 0..6)
            .prop_map(|messages| (Op::ReadMessages, Reply::Messages { messages })),
        any::<u32>().prop_map(|deleted| (Op::DeleteMessages, Reply::Deleted { deleted })),
        prop_oneof![
            Just(Op::CreateAccount),
            Just(Op::Logout),
            Just(Op::DeleteAccount)
        ]
        .prop_map(|op| (op, Reply::Done {})),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    (1u8..=12).prop_map(|code| ErrorCode::from_code(code).expect("codes 1 to 12 exist"))
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (any::<u32>(), reply()).prop_map(|(id, (op, reply))| ServerFrame::Response(Response {
            id,
            op: Some(op),
            result: Ok(reply),
        })),
        (any::<u32>(), request(), error_code(), text()).prop_map(|(id, request, code, message)| {
            ServerFrame::Response(Response {
                id,
                op: Some(request.op()),
                result: Err(ErrorReply::new(code, message)),
            })
        }),
        message().prop_map(|m| ServerFrame::Push(Push::Deliver(m))),
    ]
}

/// Feeds `bytes` to the binary reader and decoders until the stream ends or is refused; returns
/// how many frames decoded as requests. Panics only if a decoder does.
fn drain_binary(bytes: &[u8]) -> usize {
    let mut reader = bytes;
    let mut decoded = 0;
    // Every frame consumes at least one byte, so this ends.
    for _ in 0..=bytes.len() {
        match binary::read_frame(&mut reader) {
            Ok(frame) => {
                let _ = binary::decode_server_frame(&frame);
                decoded += usize::from(binary::decode_request(&frame).is_ok());
            }
            Err(FrameError::Closed | FrameError::Io(_)) => break,
            Err(FrameError::Invalid(e)) => {
                assert!(
                    !e.recoverable,
                    "a frame-level refusal closes the connection"
                );
                break;
            }
        }
    }
    decoded
}

/// The same for JSON lines.
fn drain_json(bytes: &[u8]) -> usize {
    let mut reader = bytes;
    let mut decoded = 0;
    for _ in 0..=bytes.len() {
        match json::read_line(&mut reader) {
            Ok(line) => {
                assert!(line.len() <= limits::MAX_FRAME);
                let _ = json::decode_server_frame(&line);
                decoded += usize::from(json::decode_request(&line).is_ok());
            }
            Err(_) => break,
        }
    }
    decoded
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn binary_requests_round_trip(id in any::<u32>(), request in request()) {
        let bytes = binary::encode_request(id, &request);
        let frame = binary::read_frame(&mut &bytes[..]).expect("a whole frame");
        prop_assert_eq!(binary::decode_request(&frame).expect("decodes"), (id, request));
    }

    #[test]
    fn json_requests_round_trip(id in any::<u32>(), request in request()) {
        let bytes = json::encode_request(id, &request);
        prop_assert_eq!(bytes.last(), Some(&b'\n'));
        prop_assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let line = json::read_line(&mut &bytes[..]).expect("a whole line");
        prop_assert_eq!(json::decode_request(&line).expect("decodes"), (id, request));
    }

    #[test]
    fn server_frames_round_trip_in_both_protocols(frame in server_frame()) {
        let bytes = binary::encode_server_frame(&frame);
        let raw = binary::read_frame(&mut &bytes[..]).expect("a whole frame");
        prop_assert_eq!(&binary::decode_server_frame(&raw).expect("decodes"), &frame);
        let line = json::encode_server_frame(&frame);
        let line = json::read_line(&mut &line[..]).expect("a whole line");
        prop_assert_eq!(&json::decode_server_frame(&line).expect("decodes"), &frame);
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        drain_binary(&bytes);
        drain_json(&bytes);
        let mut with_magic = vec![0xB1];
        with_magic.extend_from_slice(&bytes);
        drain_binary(&with_magic);
    }

    /// Valid streams damaged the way a network or a hostile client would: bytes flipped, the
    /// stream cut anywhere. Frames before the damage still decode.
    #[test]
    fn damaged_streams_never_panic_and_keep_what_came_before(
        requests in prop::collection::vec((any::<u32>(), request()), 1..6),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        for (encode, drain) in [
            (binary::encode_request as fn(u32, &Request) -> Vec<u8>, drain_binary as fn(&[u8]) -> usize),
            (json::encode_request, drain_json),
        ] {
            let frames: Vec<Vec<u8>> = requests.iter().map(|(id, r)| encode(*id, r)).collect();
            let mut stream: Vec<u8> = frames.concat();
            prop_assert_eq!(drain(&stream), frames.len());
            let first_damage = flips
                .iter()
                .map(|(at, _)| at.index(stream.len()))
                .chain(std::iter::once(cut.index(stream.len() + 1)))
                .min()
                .expect("the cut is always there");
            for (at, xor) in &flips {
                let at = at.index(stream.len());
                stream[at] ^= xor;
            }
            stream.truncate(cut.index(stream.len() + 1));
            // Whole frames that end before the first damaged byte are read as before.
            let intact = frames
                .iter()
                .scan(0, |end, f| {
                    *end += f.len();
                    Some(*end)
                })
                .take_while(|&end| end <= first_damage)
                .count();
            prop_assert!(drain(&stream) >= intact);
        }
    }
}
