//! The compact binary protocol.
//!
//! Frame (byte layout in `docs/protocol.md`):
//!
//! ```text
//! +--------+------+-------+----------------+----------------+-----------------+
//! | 0xB1   | op   | flags | request id     | payload length | payload         |
//! | 1 byte | 1 B  | 1 B   | varint (u32)   | varint (≤64KiB)| length bytes    |
//! +--------+------+-------+----------------+----------------+-----------------+
//! ```
//!
//! `0xB1` is magic nibble `0xB` and version `1`; a JSON client's first byte is `{` or white
//! space, so the first byte of a connection selects the protocol. Flags: `RESPONSE` (bit 0),
//! `ERROR` (bit 1, with RESPONSE), `PUSH` (bit 2). Varints are LEB128 (protobuf's). Strings are a
//! varint byte length followed by UTF-8; optional strings are a byte 0/1 then the string; lists
//! are a varint count then the items. Field order per operation is in `docs/protocol.md`.

use std::io::{self, BufRead};

use bytes::{Buf, BufMut};
use prost::encoding::{decode_varint, encode_varint};

use super::{
    DecodeError, ErrorCode, ErrorReply, Message, Op, Push, Reply, Request, Response, ServerFrame,
    limits,
};

/// First byte of every binary frame: magic `0xB`, version 1.
pub const MAGIC_VERSION: u8 = 0xB1;
/// The frame answers a request.
pub const FLAG_RESPONSE: u8 = 0b001;
/// The answer is an error.
pub const FLAG_ERROR: u8 = 0b010;
/// The frame is a push.
pub const FLAG_PUSH: u8 = 0b100;

/// A frame whose header has been read and whose payload has not been interpreted yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// Operation code (maybe unknown).
    pub op: u8,
    /// Flags.
    pub flags: u8,
    /// Request id.
    pub id: u32,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// Why a frame could not be read off the stream; the stream cannot be trusted after it.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed cleanly between frames.
    Closed,
    /// I/O failed, or the peer closed in the middle of a frame.
    Io(io::Error),
    /// The bytes are not a frame of this protocol (the reply to send before closing).
    Invalid(DecodeError),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

fn read_byte(reader: &mut impl BufRead) -> io::Result<Option<u8>> {
    let mut byte = [0u8];
    loop {
        match reader.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte[0])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn truncated() -> FrameError {
    FrameError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed in the middle of a frame",
    ))
}

/// Reads a LEB128 varint of at most 5 bytes (a u32).
fn read_varint_u32(reader: &mut impl BufRead, id: Option<u32>) -> Result<u32, FrameError> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = read_byte(reader)?.ok_or_else(truncated)?;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(value).map_err(|_| invalid(id, None, "varint exceeds 32 bits"));
        }
    }
    Err(invalid(id, None, "varint longer than 5 bytes"))
}

fn invalid(id: Option<u32>, op: Option<Op>, what: &str) -> FrameError {
    FrameError::Invalid(DecodeError {
        id,
        op,
        error: ErrorReply::new(ErrorCode::Malformed, what),
        recoverable: false,
    })
}

/// Reads one frame. A frame longer than [`limits::MAX_FRAME`] is refused without reading it.
pub fn read_frame(reader: &mut impl BufRead) -> Result<RawFrame, FrameError> {
    let magic = read_byte(reader)?.ok_or(FrameError::Closed)?;
    if magic != MAGIC_VERSION {
        return Err(invalid(
            None,
            None,
            &format!("bad magic/version byte {magic:#04x}, expected {MAGIC_VERSION:#04x}"),
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
    reader.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            truncated()
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(RawFrame {
        op,
        flags,
        id,
        payload,
    })
}

/// Writes a frame.
pub fn frame(op: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 13);
    out.put_u8(MAGIC_VERSION);
    out.put_u8(op);
    out.put_u8(flags);
    encode_varint(u64::from(id), &mut out);
    encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

// ----- payload writing -----

fn put_str(out: &mut Vec<u8>, s: &str) {
    encode_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.put_u8(0),
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
    }
}

fn put_message(out: &mut Vec<u8>, m: &Message) {
    encode_varint(m.id, out);
    put_str(out, &m.from);
    encode_varint(m.timestamp, out);
    put_str(out, &m.text);
}

/// The payload of a request.
pub fn request_payload(request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    match request {
        Request::CreateAccount { username, password } | Request::Login { username, password } => {
            put_str(&mut out, username);
            put_str(&mut out, password);
        }
        Request::Logout => {}
        Request::ListAccounts {
            pattern,
            page_size,
            cursor,
        } => {
            put_str(&mut out, pattern);
            encode_varint(u64::from(*page_size), &mut out);
            put_opt_str(&mut out, cursor.as_deref());
        }
        Request::SendMessage { to, text } => {
            put_str(&mut out, to);
            put_str(&mut out, text);
        }
        Request::ReadMessages { limit } => encode_varint(u64::from(*limit), &mut out),
        Request::DeleteMessages { ids } => {
            encode_varint(ids.len() as u64, &mut out);
            for id in ids {
                encode_varint(*id, &mut out);
            }
        }
        Request::DeleteAccount { password } => put_str(&mut out, password),
    }
    out
}

/// A whole request frame.
pub fn encode_request(id: u32, request: &Request) -> Vec<u8> {
    frame(request.op() as u8, 0, id, &request_payload(request))
}

/// The payload of a successful reply.
pub fn reply_payload(reply: &Reply) -> Vec<u8> {
    let mut out = Vec::new();
    match reply {
        Reply::LoggedIn { unread } => encode_varint(u64::from(*unread), &mut out),
        Reply::Accounts {
            accounts,
            next_cursor,
        } => {
            encode_varint(accounts.len() as u64, &mut out);
            for account in accounts {
                put_str(&mut out, account);
            }
            put_opt_str(&mut out, next_cursor.as_deref());
        }
        Reply::Sent { id, timestamp } => {
            encode_varint(*id, &mut out);
            encode_varint(*timestamp, &mut out);
        }
        Reply::Messages { messages } => {
            encode_varint(messages.len() as u64, &mut out);
            for m in messages {
                put_message(&mut out, m);
            }
        }
        Reply::Deleted { deleted } => encode_varint(u64::from(*deleted), &mut out),
        Reply::Done {} => {}
    }
    out
}

/// A whole response frame. A response to an undecodable operation uses op code 0.
pub fn encode_response(response: &Response) -> Vec<u8> {
    let op = response.op.map_or(0, |op| op as u8);
    match &response.result {
        Ok(reply) => frame(op, FLAG_RESPONSE, response.id, &reply_payload(reply)),
        Err(error) => {
            let mut out = Vec::new();
            out.put_u8(error.code as u8);
            put_str(&mut out, &error.message);
            frame(op, FLAG_RESPONSE | FLAG_ERROR, response.id, &out)
        }
    }
}

/// A whole push frame.
pub fn encode_push(push: &Push) -> Vec<u8> {
    match push {
        Push::Deliver(message) => {
            let mut out = Vec::new();
            put_message(&mut out, message);
            frame(Op::Deliver as u8, FLAG_PUSH, 0, &out)
        }
    }
}

/// A whole server frame.
pub fn encode_server_frame(frame: &ServerFrame) -> Vec<u8> {
    match frame {
        ServerFrame::Response(r) => encode_response(r),
        ServerFrame::Push(p) => encode_push(p),
    }
}

// ----- payload reading -----

/// Reads fields off a payload; every failure is a client error, never a panic.
struct Fields<'a> {
    buf: &'a [u8],
}

type FieldResult<T> = Result<T, ErrorReply>;

impl<'a> Fields<'a> {
    fn varint(&mut self, what: &str) -> FieldResult<u64> {
        decode_varint(&mut self.buf).map_err(|_| {
            ErrorReply::new(
                ErrorCode::Malformed,
                format!("{what}: truncated or bad varint"),
            )
        })
    }

    fn u32(&mut self, what: &str) -> FieldResult<u32> {
        u32::try_from(self.varint(what)?).map_err(|_| {
            ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!("{what}: exceeds 32 bits"),
            )
        })
    }

    fn bytes(&mut self, what: &str) -> FieldResult<&'a [u8]> {
        let len = self.varint(what)?;
        if len > self.buf.len() as u64 {
            return Err(ErrorReply::new(
                ErrorCode::Malformed,
                format!("{what}: length {len} runs past the end of the payload"),
            ));
        }
        let (head, tail) = self.buf.split_at(len as usize);
        self.buf = tail;
        Ok(head)
    }

    fn string(&mut self, what: &str) -> FieldResult<String> {
        let bytes = self.bytes(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            ErrorReply::new(ErrorCode::InvalidUtf8, format!("{what}: not valid UTF-8"))
        })
    }

    fn opt_string(&mut self, what: &str) -> FieldResult<Option<String>> {
        if !self.buf.has_remaining() {
            return Err(ErrorReply::new(
                ErrorCode::Malformed,
                format!("{what}: missing"),
            ));
        }
        match self.buf.get_u8() {
            0 => Ok(None),
            1 => self.string(what).map(Some),
            other => Err(ErrorReply::new(
                ErrorCode::Malformed,
                format!("{what}: presence byte {other} is neither 0 nor 1"),
            )),
        }
    }

    fn count(&mut self, what: &str, max: usize) -> FieldResult<usize> {
        let n = self.varint(what)?;
        // Every item takes at least one byte: a count beyond the payload is a lie.
        if n > max as u64 || n > self.buf.len() as u64 {
            return Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!("{what}: count {n} is too large"),
            ));
        }
        Ok(n as usize)
    }

    fn message(&mut self) -> FieldResult<Message> {
        Ok(Message {
            id: self.varint("message id")?,
            from: self.string("from")?,
            timestamp: self.varint("timestamp")?,
            text: self.string("text")?,
        })
    }

    fn end(self) -> FieldResult<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ErrorReply::new(
                ErrorCode::Malformed,
                format!("{} unexpected trailing bytes", self.buf.len()),
            ))
        }
    }
}

/// Interprets a request frame.
pub fn decode_request(frame: &RawFrame) -> Result<(u32, Request), DecodeError> {
    let fail = |op: Option<Op>, error: ErrorReply| DecodeError {
        id: Some(frame.id),
        op,
        error,
        recoverable: true,
    };
    let op = Op::from_code(frame.op)
        .filter(|op| *op != Op::Deliver)
        .ok_or_else(|| {
            fail(
                None,
                ErrorReply::new(
                    ErrorCode::UnknownOperation,
                    format!("unknown operation code {}", frame.op),
                ),
            )
        })?;
    if frame.flags != 0 {
        return Err(fail(
            Some(op),
            ErrorReply::new(ErrorCode::Malformed, "requests carry no flags"),
        ));
    }
    let mut f = Fields {
        buf: &frame.payload,
    };
    let request = (|| {
        let request = match op {
            Op::CreateAccount => Request::CreateAccount {
                username: f.string("username")?,
                password: f.string("password")?,
            },
            Op::Login => Request::Login {
                username: f.string("username")?,
                password: f.string("password")?,
            },
            Op::Logout => Request::Logout,
            Op::ListAccounts => Request::ListAccounts {
                pattern: f.string("pattern")?,
                page_size: f.u32("page_size")?,
                cursor: f.opt_string("cursor")?,
            },
            Op::SendMessage => Request::SendMessage {
                to: f.string("to")?,
                text: f.string("text")?,
            },
            Op::ReadMessages => Request::ReadMessages {
                limit: f.u32("limit")?,
            },
            Op::DeleteMessages => {
                let n = f.count("ids", limits::MAX_IDS)?;
                let ids = (0..n).map(|_| f.varint("id")).collect::<FieldResult<_>>()?;
                Request::DeleteMessages { ids }
            }
            Op::DeleteAccount => Request::DeleteAccount {
                password: f.string("password")?,
            },
            Op::Deliver => unreachable!("filtered above"),
        };
        f.end()?;
        Ok(request)
    })()
    .map_err(|error| fail(Some(op), error))?;
    Ok((frame.id, request))
}

/// Interprets a frame from the node (client side).
pub fn decode_server_frame(frame: &RawFrame) -> Result<ServerFrame, ErrorReply> {
    let mut f = Fields {
        buf: &frame.payload,
    };
    if frame.flags & FLAG_PUSH != 0 {
        let message = f.message()?;
        f.end()?;
        return Ok(ServerFrame::Push(Push::Deliver(message)));
    }
    let op = Op::from_code(frame.op);
    if frame.flags & FLAG_ERROR != 0 {
        let code = f.buf.first().copied().and_then(ErrorCode::from_code);
        f.buf = f.buf.get(1..).unwrap_or_default();
        let message = f.string("error message")?;
        f.end()?;
        let code =
            code.ok_or_else(|| ErrorReply::new(ErrorCode::Malformed, "unknown error code"))?;
        return Ok(ServerFrame::Response(Response {
            id: frame.id,
            op,
            result: Err(ErrorReply { code, message }),
        }));
    }
    let reply = match op {
        Some(Op::Login) => Reply::LoggedIn {
            unread: f.u32("unread")?,
        },
        Some(Op::ListAccounts) => {
            let n = f.count("accounts", usize::MAX)?;
            let accounts = (0..n)
                .map(|_| f.string("account"))
                .collect::<FieldResult<_>>()?;
            Reply::Accounts {
                accounts,
                next_cursor: f.opt_string("next_cursor")?,
            }
        }
        Some(Op::SendMessage) => Reply::Sent {
            id: f.varint("id")?,
            timestamp: f.varint("timestamp")?,
        },
        Some(Op::ReadMessages) => {
            let n = f.count("messages", usize::MAX)?;
            let messages = (0..n).map(|_| f.message()).collect::<FieldResult<_>>()?;
            Reply::Messages { messages }
        }
        Some(Op::DeleteMessages) => Reply::Deleted {
            deleted: f.u32("deleted")?,
        },
        _ => Reply::Done {},
    };
    f.end()?;
    Ok(ServerFrame::Response(Response {
        id: frame.id,
        op,
        result: Ok(reply),
    }))
}
