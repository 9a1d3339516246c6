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
//!
//! An error payload is the code (one byte) then a message string; for `not_leader` (13) the
//! message is the leader's chat address, or empty when no leader is known, and decoding rebuilds
//! the reply with [`ErrorReply::not_leader`].

use std::io::BufRead;

use bytes::{Buf, BufMut};
use prost::encoding::{decode_varint, encode_varint};

pub use super::FrameError;
use super::{
    BlockInfo, DecodeError, ErrorCode, ErrorReply, Hash32, Message, Op, Outpoint, Output, Parse,
    Push, Reply, Request, Response, ServerFrame, UtxoEntry, limits,
};

/// First byte of every binary frame: magic `0xB`, version 1.
pub const MAGIC_VERSION: u8 = 0xB1;
/// The frame answers a request.
pub const FLAG_RESPONSE: u8 = 0b001;
/// The answer is an error.
pub const FLAG_ERROR: u8 = 0b010;
/// The frame is a push.
pub const FLAG_PUSH: u8 = 0b100;

/// The longest header: magic, op, flags and two 5-byte varints.
const MAX_HEADER: usize = 13;

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

impl RawFrame {
    /// This frame, borrowed.
    pub fn view(&self) -> FrameView<'_> {
        FrameView {
            op: self.op,
            flags: self.flags,
            id: self.id,
            payload: &self.payload,
        }
    }
}

/// A whole frame found in a buffer, its payload borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameView<'a> {
    /// Operation code (maybe unknown).
    pub op: u8,
    /// Flags.
    pub flags: u8,
    /// Request id.
    pub id: u32,
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl FrameView<'_> {
    /// An owned copy.
    pub fn to_raw(self) -> RawFrame {
        RawFrame {
            op: self.op,
            flags: self.flags,
            id: self.id,
            payload: self.payload.to_vec(),
        }
    }
}

fn malformed(id: Option<u32>, what: String) -> DecodeError {
    DecodeError {
        id,
        op: None,
        error: ErrorReply::new(ErrorCode::Malformed, what),
        recoverable: false,
    }
}

/// A LEB128 varint of at most 5 bytes (a u32) at the start of `buf`: `Ok(None)` if `buf` ends
/// before it does, else its value and length.
fn parse_varint_u32(buf: &[u8], id: Option<u32>) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().take(5).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return match u32::try_from(value) {
                Ok(value) => Ok(Some((value, i + 1))),
                Err(_) => Err(malformed(id, "varint exceeds 32 bits".into())),
            };
        }
    }
    if buf.len() >= 5 {
        return Err(malformed(id, "varint longer than 5 bytes".into()));
    }
    Ok(None)
}

/// The first frame in `buf`. A header announcing more than [`limits::MAX_FRAME`] bytes is
/// [`Parse::Fatal`] as soon as it is whole, before any of the payload arrives.
pub fn parse_frame(buf: &[u8]) -> Parse<FrameView<'_>> {
    let Some(&magic) = buf.first() else {
        return Parse::Incomplete;
    };
    if magic != MAGIC_VERSION {
        return Parse::Fatal(malformed(
            None,
            format!("bad magic/version byte {magic:#04x}, expected {MAGIC_VERSION:#04x}"),
        ));
    }
    let (Some(&op), Some(&flags)) = (buf.get(1), buf.get(2)) else {
        return Parse::Incomplete;
    };
    let (id, id_len) = match parse_varint_u32(&buf[3..], None) {
        Ok(Some(varint)) => varint,
        Ok(None) => return Parse::Incomplete,
        Err(error) => return Parse::Fatal(error),
    };
    let len_at = 3 + id_len;
    let (len, len_len) = match parse_varint_u32(&buf[len_at..], Some(id)) {
        Ok(Some((len, len_len))) => (len as usize, len_len),
        Ok(None) => return Parse::Incomplete,
        Err(error) => return Parse::Fatal(error),
    };
    if len > limits::MAX_FRAME {
        return Parse::Fatal(DecodeError {
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
        });
    }
    let payload_at = len_at + len_len;
    let Some(payload) = buf.get(payload_at..payload_at + len) else {
        return Parse::Incomplete;
    };
    Parse::Frame {
        consumed: payload_at + len,
        decoded: Ok(FrameView {
            op,
            flags,
            id,
            payload,
        }),
    }
}

/// Reads one frame. A frame longer than [`limits::MAX_FRAME`] is refused without reading it.
pub fn read_frame(reader: &mut impl BufRead) -> Result<RawFrame, FrameError> {
    super::read_with(reader, |buf| {
        parse_frame(buf).and_then(|frame| Ok(frame.to_raw()))
    })?
    .map_err(FrameError::Invalid)
}

/// Writes a frame.
pub fn frame(op: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + MAX_HEADER);
    frame_into(op, flags, id, payload, &mut out);
    out
}

/// Appends a frame to `out`.
pub fn frame_into(op: u8, flags: u8, id: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + MAX_HEADER);
    put_header(out, op, flags, id, payload.len());
    out.extend_from_slice(payload);
}

fn put_header(out: &mut Vec<u8>, op: u8, flags: u8, id: u32, payload_len: usize) {
    out.put_u8(MAGIC_VERSION);
    out.put_u8(op);
    out.put_u8(flags);
    encode_varint(u64::from(id), out);
    encode_varint(payload_len as u64, out);
}

/// Appends a frame whose payload `write_payload` appends, without a scratch buffer: the payload
/// is written first, then its header (whose length depends on the payload's) is slid in before
/// it.
fn frame_with(
    out: &mut Vec<u8>,
    op: u8,
    flags: u8,
    id: u32,
    write_payload: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    write_payload(out);
    let payload_len = out.len() - start;
    let mut header = Vec::with_capacity(MAX_HEADER);
    put_header(&mut header, op, flags, id, payload_len);
    out.splice(start..start, header);
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

fn put_hash(out: &mut Vec<u8>, hash: &Hash32) {
    out.extend_from_slice(&hash.0);
}

fn put_outpoints(out: &mut Vec<u8>, outpoints: &[Outpoint]) {
    encode_varint(outpoints.len() as u64, out);
    for outpoint in outpoints {
        put_hash(out, &outpoint.tx);
        encode_varint(u64::from(outpoint.index), out);
    }
}

fn put_outputs(out: &mut Vec<u8>, outputs: &[Output]) {
    encode_varint(outputs.len() as u64, out);
    for output in outputs {
        put_str(out, &output.to);
        encode_varint(output.amount, out);
    }
}

fn put_opt_varint(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        None => out.put_u8(0),
        Some(value) => {
            out.put_u8(1);
            encode_varint(value, out);
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
    put_request_payload(&mut out, request);
    out
}

fn put_request_payload(out: &mut Vec<u8>, request: &Request) {
    match request {
        Request::CreateAccount { username, password } | Request::Login { username, password } => {
            put_str(out, username);
            put_str(out, password);
        }
        Request::Logout => {}
        Request::ListAccounts {
            pattern,
            page_size,
            cursor,
        } => {
            put_str(out, pattern);
            encode_varint(u64::from(*page_size), out);
            put_opt_str(out, cursor.as_deref());
        }
        Request::SendMessage { to, text, key } => {
            put_str(out, to);
            put_str(out, text);
            // A trailing field, written only when present: a send without a key keeps the
            // bytes it always had.
            if key.is_some() {
                put_opt_str(out, key.as_deref());
            }
        }
        Request::ReadMessages { limit } => encode_varint(u64::from(*limit), out),
        Request::DeleteMessages { ids } => {
            encode_varint(ids.len() as u64, out);
            for id in ids {
                encode_varint(*id, out);
            }
        }
        Request::DeleteAccount { password } => put_str(out, password),
        Request::GetBalance {}
        | Request::ListUtxos {}
        | Request::ChainInfo {}
        | Request::ClusterInfo {} => {}
        Request::SubmitTransaction { inputs, outputs } => {
            put_outpoints(out, inputs);
            put_outputs(out, outputs);
        }
        Request::Transfer { to, amount, key } => {
            put_str(out, to);
            encode_varint(*amount, out);
            // Trailing, as a send's key: a transfer without a key keeps its bytes.
            if key.is_some() {
                put_opt_str(out, key.as_deref());
            }
        }
        Request::GetTransaction { txid } => put_hash(out, txid),
        Request::GetBlock { height } => encode_varint(*height, out),
    }
}

/// A whole request frame.
pub fn encode_request(id: u32, request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request_into(id, request, &mut out);
    out
}

/// Appends a whole request frame to `out`.
pub fn encode_request_into(id: u32, request: &Request, out: &mut Vec<u8>) {
    frame_with(out, request.op().code(), 0, id, |out| {
        put_request_payload(out, request)
    });
}

/// The payload of a successful reply.
pub fn reply_payload(reply: &Reply) -> Vec<u8> {
    let mut out = Vec::new();
    put_reply_payload(&mut out, reply);
    out
}

fn put_reply_payload(out: &mut Vec<u8>, reply: &Reply) {
    match reply {
        Reply::LoggedIn { unread } => encode_varint(u64::from(*unread), out),
        Reply::Accounts {
            accounts,
            next_cursor,
        } => {
            encode_varint(accounts.len() as u64, out);
            for account in accounts {
                put_str(out, account);
            }
            put_opt_str(out, next_cursor.as_deref());
        }
        Reply::Sent { id, timestamp } => {
            encode_varint(*id, out);
            encode_varint(*timestamp, out);
        }
        Reply::Messages { messages } => {
            encode_varint(messages.len() as u64, out);
            for m in messages {
                put_message(out, m);
            }
        }
        Reply::Deleted { deleted } => encode_varint(u64::from(*deleted), out),
        Reply::Block(block) => {
            encode_varint(block.height, out);
            put_hash(out, &block.hash);
            put_hash(out, &block.prev);
            put_hash(out, &block.merkle_root);
            encode_varint(block.timestamp, out);
            encode_varint(u64::from(block.difficulty), out);
            encode_varint(block.nonce, out);
            encode_varint(block.txids.len() as u64, out);
            for txid in &block.txids {
                put_hash(out, txid);
            }
        }
        Reply::Chain {
            height,
            tip,
            mempool,
            difficulty_bits,
            supply,
        } => {
            encode_varint(*height, out);
            put_hash(out, tip);
            encode_varint(*mempool, out);
            encode_varint(u64::from(*difficulty_bits), out);
            encode_varint(*supply, out);
        }
        Reply::Transaction {
            txid,
            inputs,
            outputs,
            block,
            grant,
        } => {
            put_hash(out, txid);
            put_outpoints(out, inputs);
            put_outputs(out, outputs);
            put_opt_varint(out, *block);
            put_opt_varint(out, *grant);
        }
        Reply::Pooled { txid } => put_hash(out, txid),
        Reply::Balance { confirmed, pending } => {
            encode_varint(*confirmed, out);
            // Zigzag, as protobuf's sint64: small magnitudes of either sign stay short.
            encode_varint(((*pending << 1) ^ (*pending >> 63)) as u64, out);
        }
        Reply::Cluster { leader, members } => {
            put_opt_str(out, leader.as_deref());
            encode_varint(members.len() as u64, out);
            for member in members {
                put_str(out, member);
            }
        }
        Reply::Utxos { utxos } => {
            encode_varint(utxos.len() as u64, out);
            for utxo in utxos {
                put_hash(out, &utxo.tx);
                encode_varint(u64::from(utxo.index), out);
                encode_varint(utxo.amount, out);
                out.put_u8(u8::from(utxo.confirmed));
            }
        }
        Reply::Done {} => {}
    }
}

/// A whole response frame. A response to an undecodable operation uses op code 0.
pub fn encode_response(response: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    encode_response_into(response, &mut out);
    out
}

fn encode_response_into(response: &Response, out: &mut Vec<u8>) {
    let op = response.op.map_or(0, Op::code);
    match &response.result {
        Ok(reply) => frame_with(out, op, FLAG_RESPONSE, response.id, |out| {
            put_reply_payload(out, reply)
        }),
        Err(error) => frame_with(out, op, FLAG_RESPONSE | FLAG_ERROR, response.id, |out| {
            out.put_u8(error.code as u8);
            // A not_leader's message field is the leader's chat address (empty when unknown):
            // the one thing a binary client needs from it, in the field every error already has.
            let message = match error.code {
                ErrorCode::NotLeader => error.leader().unwrap_or_default(),
                _ => &error.message,
            };
            put_str(out, message);
        }),
    }
}

/// A whole push frame.
pub fn encode_push(push: &Push) -> Vec<u8> {
    let mut out = Vec::new();
    encode_push_into(push, &mut out);
    out
}

fn encode_push_into(push: &Push, out: &mut Vec<u8>) {
    match push {
        Push::Deliver(message) => frame_with(out, Op::Deliver.code(), FLAG_PUSH, 0, |out| {
            put_message(out, message)
        }),
    }
}

/// A whole server frame.
pub fn encode_server_frame(frame: &ServerFrame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_server_frame_into(frame, &mut out);
    out
}

/// Appends a whole server frame to `out`.
pub fn encode_server_frame_into(frame: &ServerFrame, out: &mut Vec<u8>) {
    match frame {
        ServerFrame::Response(r) => encode_response_into(r, out),
        ServerFrame::Push(p) => encode_push_into(p, out),
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

    fn hash(&mut self, what: &str) -> FieldResult<Hash32> {
        if self.buf.len() < 32 {
            return Err(ErrorReply::new(
                ErrorCode::Malformed,
                format!("{what}: 32 bytes expected, {} left", self.buf.len()),
            ));
        }
        let (head, tail) = self.buf.split_at(32);
        self.buf = tail;
        Ok(Hash32(head.try_into().expect("32 bytes")))
    }

    fn flag(&mut self, what: &str) -> FieldResult<bool> {
        if !self.buf.has_remaining() {
            return Err(ErrorReply::new(
                ErrorCode::Malformed,
                format!("{what}: missing"),
            ));
        }
        match self.buf.get_u8() {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(ErrorReply::new(
                ErrorCode::Malformed,
                format!("{what}: byte {other} is neither 0 nor 1"),
            )),
        }
    }

    fn opt_varint(&mut self, what: &str) -> FieldResult<Option<u64>> {
        Ok(match self.flag(what)? {
            true => Some(self.varint(what)?),
            false => None,
        })
    }

    fn outpoints(&mut self) -> FieldResult<Vec<Outpoint>> {
        let n = self.count("inputs", limits::MAX_TX_IO)?;
        (0..n)
            .map(|_| {
                Ok(Outpoint {
                    tx: self.hash("input tx")?,
                    index: self.u32("input index")?,
                })
            })
            .collect()
    }

    fn outputs(&mut self) -> FieldResult<Vec<Output>> {
        let n = self.count("outputs", limits::MAX_TX_IO)?;
        (0..n)
            .map(|_| {
                Ok(Output {
                    to: self.string("output to")?,
                    amount: self.varint("output amount")?,
                })
            })
            .collect()
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
    decode_request_view(frame.view())
}

/// Interprets a request frame found in a buffer.
pub fn decode_request_view(frame: FrameView<'_>) -> Result<(u32, Request), DecodeError> {
    let fail = |op: Option<Op>, error: ErrorReply| DecodeError {
        id: Some(frame.id),
        op,
        error,
        recoverable: true,
    };
    let op = Op::request_from_code(frame.op).ok_or_else(|| {
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
    let mut f = Fields { buf: frame.payload };
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
                key: if f.buf.is_empty() {
                    None
                } else {
                    f.opt_string("key")?
                },
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
            Op::GetBalance => Request::GetBalance {},
            Op::ListUtxos => Request::ListUtxos {},
            Op::ChainInfo => Request::ChainInfo {},
            Op::ClusterInfo => Request::ClusterInfo {},
            Op::SubmitTransaction => Request::SubmitTransaction {
                inputs: f.outpoints()?,
                outputs: f.outputs()?,
            },
            Op::Transfer => Request::Transfer {
                to: f.string("to")?,
                amount: f.varint("amount")?,
                key: if f.buf.is_empty() {
                    None
                } else {
                    f.opt_string("key")?
                },
            },
            Op::GetTransaction => Request::GetTransaction {
                txid: f.hash("txid")?,
            },
            Op::GetBlock => Request::GetBlock {
                height: f.varint("height")?,
            },
            Op::Deliver => unreachable!("request_from_code refuses pushes"),
        };
        f.end()?;
        Ok(request)
    })()
    .map_err(|error| fail(Some(op), error))?;
    Ok((frame.id, request))
}

/// Interprets a frame from the node (client side).
pub fn decode_server_frame(frame: &RawFrame) -> Result<ServerFrame, ErrorReply> {
    decode_server_frame_view(frame.view())
}

/// Interprets a frame from the node found in a buffer (client side).
pub fn decode_server_frame_view(frame: FrameView<'_>) -> Result<ServerFrame, ErrorReply> {
    let mut f = Fields { buf: frame.payload };
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
        let error = match code {
            ErrorCode::NotLeader => ErrorReply::not_leader(Some(message).filter(|m| !m.is_empty())),
            _ => ErrorReply::new(code, message),
        };
        return Ok(ServerFrame::Response(Response {
            id: frame.id,
            op,
            result: Err(error),
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
        Some(Op::GetBlock) => Reply::Block(BlockInfo {
            height: f.varint("height")?,
            hash: f.hash("hash")?,
            prev: f.hash("prev")?,
            merkle_root: f.hash("merkle_root")?,
            timestamp: f.varint("timestamp")?,
            difficulty: f.u32("difficulty")?,
            nonce: f.varint("nonce")?,
            txids: {
                let n = f.count("txids", usize::MAX)?;
                (0..n).map(|_| f.hash("txid")).collect::<FieldResult<_>>()?
            },
        }),
        Some(Op::ChainInfo) => Reply::Chain {
            height: f.varint("height")?,
            tip: f.hash("tip")?,
            mempool: f.varint("mempool")?,
            difficulty_bits: f.u32("difficulty_bits")?,
            supply: f.varint("supply")?,
        },
        Some(Op::GetTransaction) => Reply::Transaction {
            txid: f.hash("txid")?,
            inputs: f.outpoints()?,
            outputs: f.outputs()?,
            block: f.opt_varint("block")?,
            grant: f.opt_varint("grant")?,
        },
        Some(Op::SubmitTransaction | Op::Transfer) => Reply::Pooled {
            txid: f.hash("txid")?,
        },
        Some(Op::GetBalance) => Reply::Balance {
            confirmed: f.varint("confirmed")?,
            pending: {
                let zigzag = f.varint("pending")?;
                ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64)
            },
        },
        Some(Op::ClusterInfo) => Reply::Cluster {
            leader: f.opt_string("leader")?,
            members: {
                let n = f.count("members", usize::MAX)?;
                (0..n)
                    .map(|_| f.string("member"))
                    .collect::<FieldResult<_>>()?
            },
        },
        Some(Op::ListUtxos) => {
            let n = f.count("utxos", usize::MAX)?;
            let utxos = (0..n)
                .map(|_| {
                    Ok(UtxoEntry {
                        tx: f.hash("tx")?,
                        index: f.u32("index")?,
                        amount: f.varint("amount")?,
                        confirmed: f.flag("confirmed")?,
                    })
                })
                .collect::<FieldResult<_>>()?;
            Reply::Utxos { utxos }
        }
        _ => Reply::Done {},
    };
    f.end()?;
    Ok(ServerFrame::Response(Response {
        id: frame.id,
        op,
        result: Ok(reply),
    }))
}
