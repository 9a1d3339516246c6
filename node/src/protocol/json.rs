//! The JSON protocol: one object per line.
//!
//! ```text
//! → {"id":1,"op":"send_message","data":{"to":"bob","text":"Hello, Bob!"}}
//! ← {"id":1,"op":"send_message","ok":true,"data":{"id":7,"timestamp":1764048000000}}
//! ← {"id":2,"op":"login","ok":false,"error":{"code":"auth_failed","message":"..."}}
//! ← {"push":"deliver","data":{"id":8,"from":"alice","timestamp":1764048000001,"text":"hi"}}
//! ```

use std::io::BufRead;

use serde_json::{Value, json};

use super::{
    DecodeError, ErrorCode, ErrorReply, FrameError, Message, Op, Parse, Push, Reply, Request,
    Response, ServerFrame, limits,
};

/// The first line in `buf`, without its `\n`. A line of white space only is [`Parse::Skip`];
/// more than [`limits::MAX_FRAME`] bytes without a newline is [`Parse::Fatal`] as soon as the
/// buffer holds one byte more than the limit.
pub fn parse_line(buf: &[u8]) -> Parse<&[u8]> {
    parse_line_after(buf, 0)
}

/// [`parse_line`] for a buffer whose first `searched` bytes are known to hold no newline (an
/// earlier call on the same unfinished line said [`Parse::Incomplete`]): only the bytes after
/// them are searched, so a line that arrives a byte at a time costs linear time, not quadratic.
pub fn parse_line_after(buf: &[u8], searched: usize) -> Parse<&[u8]> {
    // A line of MAX_FRAME bytes is allowed: its newline is byte MAX_FRAME + 1.
    let window = &buf[..buf.len().min(limits::MAX_FRAME + 1)];
    let from = searched.min(window.len());
    match window[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|at| from + at)
    {
        Some(end) => {
            let line = &buf[..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                Parse::Skip(end + 1)
            } else {
                Parse::Frame {
                    consumed: end + 1,
                    decoded: Ok(line),
                }
            }
        }
        None if buf.len() > limits::MAX_FRAME => Parse::Fatal(DecodeError {
            id: None,
            op: None,
            error: ErrorReply::new(
                ErrorCode::TooLarge,
                format!("line exceeds the {} byte limit", limits::MAX_FRAME),
            ),
            recoverable: false,
        }),
        None => Parse::Incomplete,
    }
}

/// Reads one line (without its `\n`), refusing lines longer than [`limits::MAX_FRAME`]. Blank
/// lines are skipped.
pub fn read_line(reader: &mut impl BufRead) -> Result<Vec<u8>, FrameError> {
    super::read_with(reader, |buf| {
        parse_line(buf).and_then(|line| Ok(line.to_vec()))
    })?
    .map_err(FrameError::Invalid)
}

/// Interprets one request line.
pub fn decode_request(line: &[u8]) -> Result<(u32, Request), DecodeError> {
    let fail = |id: Option<u32>, op: Option<Op>, code: ErrorCode, message: String| DecodeError {
        id,
        op,
        error: ErrorReply::new(code, message),
        recoverable: true,
    };
    let text = std::str::from_utf8(line).map_err(|e| {
        fail(
            None,
            None,
            ErrorCode::InvalidUtf8,
            format!("request is not valid UTF-8: {e}"),
        )
    })?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| fail(None, None, ErrorCode::Malformed, format!("not JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(fail(
            None,
            None,
            ErrorCode::Malformed,
            "a request is a JSON object".into(),
        ));
    };
    let id = match object.remove("id") {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    }
    .ok_or_else(|| {
        fail(
            None,
            None,
            ErrorCode::InvalidArgument,
            "\"id\" must be an integer from 0 to 4294967295".into(),
        )
    })?;
    let op_name = match object.get("op") {
        Some(Value::String(name)) => name.clone(),
        _ => {
            return Err(fail(
                Some(id),
                None,
                ErrorCode::InvalidArgument,
                "\"op\" must be a string".into(),
            ));
        }
    };
    let op = Op::request_from_name(&op_name).ok_or_else(|| {
        fail(
            Some(id),
            None,
            ErrorCode::UnknownOperation,
            format!("unknown operation {op_name:?}"),
        )
    })?;
    // Operations without arguments take no `data` or an empty object: the types have an empty
    // object, so an absent one is read as that.
    if matches!(
        op,
        Op::GetBalance | Op::ListUtxos | Op::ChainInfo | Op::ClusterInfo
    ) && !object.contains_key("data")
    {
        object.insert("data".into(), Value::Object(Default::default()));
    }
    let request: Request = serde_json::from_value(Value::Object(object)).map_err(|e| {
        fail(
            Some(id),
            Some(op),
            ErrorCode::InvalidArgument,
            format!("bad {op_name} request: {e}"),
        )
    })?;
    Ok((id, request))
}

/// Appends `value` and a newline to `out`. Objects go through [`Value`], whose keys are sorted:
/// the bytes on the wire are those documented, whatever the field order of the Rust types.
fn put_line(out: &mut Vec<u8>, value: &Value) {
    serde_json::to_writer(&mut *out, value).expect("a Value always serializes into a Vec");
    out.push(b'\n');
}

fn request_value(id: u32, request: &Request) -> Value {
    let mut value = serde_json::to_value(request).expect("requests serialize");
    value["id"] = json!(id);
    value
}

/// A request line.
pub fn encode_request(id: u32, request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request_into(id, request, &mut out);
    out
}

/// Appends a request line to `out`.
pub fn encode_request_into(id: u32, request: &Request, out: &mut Vec<u8>) {
    put_line(out, &request_value(id, request));
}

fn response_value(response: &Response) -> Value {
    let op = response.op.map(Op::name);
    match &response.result {
        Ok(reply) => json!({"id": response.id, "op": op, "ok": true, "data": reply}),
        Err(error) => json!({"id": response.id, "op": op, "ok": false, "error": error}),
    }
}

fn push_value(push: &Push) -> Value {
    match push {
        Push::Deliver(message) => json!({"push": Op::Deliver.name(), "data": message}),
    }
}

/// A response line.
pub fn encode_response(response: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    put_line(&mut out, &response_value(response));
    out
}

/// A push line.
pub fn encode_push(push: &Push) -> Vec<u8> {
    let mut out = Vec::new();
    put_line(&mut out, &push_value(push));
    out
}

/// Any server line.
pub fn encode_server_frame(frame: &ServerFrame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_server_frame_into(frame, &mut out);
    out
}

/// Appends any server line to `out`.
pub fn encode_server_frame_into(frame: &ServerFrame, out: &mut Vec<u8>) {
    let value = match frame {
        ServerFrame::Response(r) => response_value(r),
        ServerFrame::Push(p) => push_value(p),
    };
    put_line(out, &value);
}

/// Interprets a line from the node (client side).
pub fn decode_server_frame(line: &[u8]) -> Result<ServerFrame, ErrorReply> {
    let bad = |e: serde_json::Error| ErrorReply::new(ErrorCode::Malformed, e.to_string());
    let mut value: Value = serde_json::from_slice(line).map_err(bad)?;
    if value.get("push").is_some() {
        let message: Message = serde_json::from_value(value["data"].take()).map_err(bad)?;
        return Ok(ServerFrame::Push(Push::Deliver(message)));
    }
    let id = value["id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| ErrorReply::new(ErrorCode::Malformed, "response without id"))?;
    let op = value["op"].as_str().and_then(Op::from_name);
    let result = if value["ok"].as_bool() == Some(true) {
        Ok(serde_json::from_value::<Reply>(value["data"].take()).map_err(bad)?)
    } else {
        Err(serde_json::from_value::<ErrorReply>(value["error"].take()).map_err(bad)?)
    };
    Ok(ServerFrame::Response(Response { id, op, result }))
}

/// [`decode_server_frame`], failing as a [`DecodeError`] (the line's extent was known: the stream
/// goes on).
pub fn decode_server_line(line: &[u8]) -> Result<ServerFrame, DecodeError> {
    decode_server_frame(line).map_err(|error| DecodeError {
        id: None,
        op: None,
        error,
        recoverable: true,
    })
}
