//! Property tests of both wire codecs, without a node: every request, response and push survives
//! an encode/decode round trip in each protocol, no byte sequence, however damaged, makes a
//! decoder panic (a server never panics on client input), and parsing a stream from a buffer
//! that grows chunk by chunk finds the same frames and errors as the blocking readers, and as
//! the byte-at-a-time readers they replaced (kept below as the reference).

use std::io::{self, BufRead, BufReader, Read};

use proptest::prelude::*;
use synckit_node::protocol::binary::{self, FrameError};
use synckit_node::protocol::{
    DecodeError, ErrorCode, ErrorReply, FrameParser, Message, Op, Parse, Protocol, Push, Reply,
    Request, Response, ServerFrame, json, limits,
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
        (text(), text(), prop::option::of(text()))
            .prop_map(|(to, text, key)| Request::SendMessage { to, text, key }),
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
    (1u8..=14).prop_map(|code| ErrorCode::from_code(code).expect("codes 1 to 14 exist"))
}

/// An error reply of `code`; a `not_leader` is built the one way the node builds it (its
/// message is derived from the leader's address, the only thing the binary protocol carries).
fn error_reply(code: ErrorCode, message: String, leader: Option<String>) -> ErrorReply {
    match code {
        ErrorCode::NotLeader => ErrorReply::not_leader(leader),
        _ => ErrorReply::new(code, message),
    }
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (any::<u32>(), reply()).prop_map(|(id, (op, reply))| ServerFrame::Response(Response {
            id,
            op: Some(op),
            result: Ok(reply),
        })),
        (
            any::<u32>(),
            request(),
            error_code(),
            text(),
            proptest::option::of("[a-z0-9.]{1,20}:[0-9]{1,5}")
        )
            .prop_map(|(id, request, code, message, leader)| {
                ServerFrame::Response(Response {
                    id,
                    op: Some(request.op()),
                    result: Err(error_reply(code, message, leader)),
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

/// The readers of before the buffer parsers, byte at a time on a `BufRead`: the reference the
/// parsers must agree with.
mod reference {
    use super::*;

    fn read_byte(reader: &mut impl BufRead) -> io::Result<Option<u8>> {
        let mut byte = [0u8];
        match reader.read(&mut byte)? {
            0 => Ok(None),
            _ => Ok(Some(byte[0])),
        }
    }

    fn truncated() -> FrameError {
        FrameError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated"))
    }

    fn invalid(id: Option<u32>, what: &str) -> FrameError {
        FrameError::Invalid(DecodeError {
            id,
            op: None,
            error: ErrorReply::new(ErrorCode::Malformed, what),
            recoverable: false,
        })
    }

    fn read_varint_u32(reader: &mut impl BufRead, id: Option<u32>) -> Result<u32, FrameError> {
        let mut value: u64 = 0;
        for shift in (0..35).step_by(7) {
            let byte = read_byte(reader)?.ok_or_else(truncated)?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return u32::try_from(value).map_err(|_| invalid(id, "varint exceeds 32 bits"));
            }
        }
        Err(invalid(id, "varint longer than 5 bytes"))
    }

    pub fn read_frame(reader: &mut impl BufRead) -> Result<binary::RawFrame, FrameError> {
        let magic = read_byte(reader)?.ok_or(FrameError::Closed)?;
        if magic != binary::MAGIC_VERSION {
            return Err(invalid(
                None,
                &format!("bad magic/version byte {magic:#04x}, expected 0xb1"),
            ));
        }
        let op = read_byte(reader)?.ok_or_else(truncated)?;
        let flags = read_byte(reader)?.ok_or_else(truncated)?;
        let id = read_varint_u32(reader, None)?;
        let len = read_varint_u32(reader, Some(id))? as usize;
        if len > limits::MAX_FRAME {
            return Err(FrameError::Invalid(DecodeError {
                id: Some(id),
                op: Op::from_code(op),
                error: ErrorReply::new(
                    ErrorCode::TooLarge,
                    format!(
                        "payload of {len} bytes exceeds the {} byte limit",
                        limits::MAX_FRAME
                    ),
                ),
                recoverable: false,
            }));
        }
        let mut payload = vec![0; len];
        reader.read_exact(&mut payload).map_err(|_| truncated())?;
        Ok(binary::RawFrame {
            op,
            flags,
            id,
            payload,
        })
    }

    pub fn read_line(reader: &mut impl BufRead) -> Result<Vec<u8>, FrameError> {
        loop {
            let mut line = Vec::new();
            let limit = limits::MAX_FRAME as u64 + 1;
            let n = reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
            if n == 0 {
                return Err(FrameError::Closed);
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            } else if line.len() as u64 >= limit {
                return Err(FrameError::Invalid(DecodeError {
                    id: None,
                    op: None,
                    error: ErrorReply::new(
                        ErrorCode::TooLarge,
                        format!("line exceeds the {} byte limit", limits::MAX_FRAME),
                    ),
                    recoverable: false,
                }));
            } else {
                return Err(truncated());
            }
            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                return Ok(line);
            }
        }
    }

    /// A request as the server read it before.
    pub fn read_request(
        protocol: Protocol,
        reader: &mut impl BufRead,
    ) -> Result<Result<(u32, Request), DecodeError>, FrameError> {
        match protocol {
            Protocol::Binary => read_frame(reader).map(|raw| binary::decode_request(&raw)),
            Protocol::Json => read_line(reader).map(|line| json::decode_request(&line)),
        }
    }
}

/// How a stream ended, for comparing readers.
#[derive(Debug, PartialEq)]
enum End {
    /// Cleanly, between frames.
    Closed,
    /// In the middle of a frame.
    Truncated,
    /// Refused: the answer before closing.
    Fatal(DecodeError),
}

/// A request as a reader returns it: decoded, or why not.
type Decoded = Result<(u32, Request), DecodeError>;

type Outcomes = (Vec<Decoded>, End);

/// Every request a blocking reader finds in `stream`, and how it ended.
fn blocking(
    stream: &[u8],
    mut read: impl FnMut(&mut dyn BufRead) -> Result<Decoded, FrameError>,
    buffer: usize,
) -> Outcomes {
    let mut reader = BufReader::with_capacity(buffer, stream);
    let mut frames = Vec::new();
    loop {
        match read(&mut reader) {
            Ok(decoded) => frames.push(decoded),
            Err(FrameError::Closed) => return (frames, End::Closed),
            Err(FrameError::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
                return (frames, End::Truncated);
            }
            Err(FrameError::Invalid(bad)) => return (frames, End::Fatal(bad)),
        }
    }
}

/// Every request found by feeding `stream` into a buffer in chunks cut at `cuts`, parsing after
/// each chunk as an event-driven server does, and how it ended.
fn chunked(
    stream: &[u8],
    cuts: &[prop::sample::Index],
    mut parse: impl FnMut(&[u8]) -> Parse<(u32, Request)>,
) -> Outcomes {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut buffer = Vec::new();
    let mut fed = 0;
    let mut frames = Vec::new();
    for cut in cuts {
        buffer.extend_from_slice(&stream[fed..cut]);
        fed = cut;
        loop {
            match parse(&buffer) {
                Parse::Incomplete => break,
                Parse::Skip(n) => {
                    assert!(n > 0 && n <= buffer.len());
                    buffer.drain(..n);
                }
                Parse::Frame { consumed, decoded } => {
                    assert!(consumed > 0 && consumed <= buffer.len());
                    if let Err(bad) = &decoded {
                        assert!(bad.recoverable, "an error inside a frame is recoverable");
                    }
                    frames.push(decoded);
                    buffer.drain(..consumed);
                }
                Parse::Fatal(bad) => {
                    assert!(!bad.recoverable);
                    return (frames, End::Fatal(bad));
                }
            }
        }
    }
    let end = if buffer.is_empty() {
        End::Closed
    } else {
        End::Truncated
    };
    (frames, end)
}

/// The three readers agree on `stream`.
fn all_agree(
    protocol: Protocol,
    stream: &[u8],
    cuts: &[prop::sample::Index],
    buffer: usize,
) -> Result<Outcomes, TestCaseError> {
    let parsed = chunked(stream, cuts, |buf| {
        let parsed = protocol.parse_request(buf);
        assert_eq!(
            protocol.find_frame(buf),
            match &parsed {
                Parse::Incomplete => Parse::Incomplete,
                Parse::Skip(n) => Parse::Skip(*n),
                Parse::Frame { consumed, .. } => Parse::Frame {
                    consumed: *consumed,
                    decoded: Ok(()),
                },
                Parse::Fatal(bad) => Parse::Fatal(bad.clone()),
            },
            "find_frame and parse_request find the same extent"
        );
        parsed
    });
    let mut parser = FrameParser::new(protocol);
    let resumed = chunked(stream, cuts, |buf| parser.parse_request(buf));
    prop_assert_eq!(&parsed, &resumed, "stateless and resuming parsers");
    let read = blocking(stream, |r| protocol.read_request(&mut &mut *r), buffer);
    let before = blocking(
        stream,
        |r| reference::read_request(protocol, &mut &mut *r),
        buffer,
    );
    prop_assert_eq!(&parsed, &read, "chunked parsing and the blocking reader");
    prop_assert_eq!(&parsed, &before, "chunked parsing and the reference reader");
    Ok(parsed)
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Binary), Just(Protocol::Json)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Requests (with blank lines between JSON ones) split anywhere: every reader finds each
    /// request, in order, and a clean end.
    #[test]
    fn chunked_parsing_finds_the_frames_the_blocking_readers_find(
        protocol in protocol(),
        requests in prop::collection::vec((any::<u32>(), request(), 0..3usize), 0..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        buffer in 1..64usize,
    ) {
        let mut stream = Vec::new();
        for (id, request, blank_lines) in &requests {
            if protocol == Protocol::Json {
                stream.extend(std::iter::repeat_n(&b" \r\n"[..], *blank_lines).flatten());
            }
            protocol.encode_request_into(*id, request, &mut stream);
        }
        let (frames, end) = all_agree(protocol, &stream, &cuts, buffer)?;
        let expected: Vec<_> = requests.into_iter().map(|(id, r, _)| Ok((id, r))).collect();
        prop_assert_eq!(frames, expected);
        prop_assert_eq!(end, End::Closed);
    }

    /// Damaged and random streams, split anywhere: the same frames, errors and end, and no panic.
    #[test]
    fn chunked_parsing_agrees_with_the_blocking_readers_on_damaged_streams(
        protocol in protocol(),
        requests in prop::collection::vec((any::<u32>(), request()), 0..5),
        noise in prop::collection::vec(any::<u8>(), 0..64),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut_stream in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        buffer in 1..64usize,
    ) {
        let mut stream = Vec::new();
        for (id, request) in &requests {
            protocol.encode_request_into(*id, request, &mut stream);
        }
        stream.extend_from_slice(&noise);
        if !stream.is_empty() {
            for (at, xor) in &flips {
                let at = at.index(stream.len());
                stream[at] ^= xor;
            }
        }
        stream.truncate(cut_stream.index(stream.len() + 1));
        all_agree(protocol, &stream, &cuts, buffer)?;
    }

    /// A frame from the node, split anywhere, is parsed whole on the client side.
    #[test]
    fn chunked_server_frames_parse_whole(
        protocol in protocol(),
        frames in prop::collection::vec(server_frame(), 0..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut stream = Vec::new();
        for frame in &frames {
            protocol.encode_server_frame_into(frame, &mut stream);
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let (mut buffer, mut fed, mut parsed) = (Vec::new(), 0, Vec::new());
        let mut parser = FrameParser::new(protocol);
        for cut in cuts {
            buffer.extend_from_slice(&stream[fed..cut]);
            fed = cut;
            while let Parse::Frame { consumed, decoded } = parser.parse_server_frame(&buffer) {
                parsed.push(decoded.expect("a frame the node encoded decodes"));
                buffer.drain(..consumed);
            }
        }
        prop_assert!(buffer.is_empty());
        prop_assert_eq!(parsed, frames);
    }

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
