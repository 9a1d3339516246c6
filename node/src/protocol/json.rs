//! The JSON protocol: one object per line.
//!
//! ```text
//! → {"id":1,"op":"send_message","data":{"to":"bob","text":"Hello, Bob!"}}
//! ← {"id":1,"op":"send_message","ok":true,"data":{"id":7,"timestamp":1764048000000}}
//! ← {"id":2,"op":"login","ok":false,"error":{"code":"auth_failed","message":"..."}}
//! ← {"push":"deliver","data":{"id":8,"from":"alice","timestamp":1764048000001,"text":"hi"}}
//! ```

use std::io::{BufRead, Read};

use serde_json::{Value, json};

use super::binary::FrameError;
use super::{
    DecodeError, ErrorCode, ErrorReply, Message, Op, Push, Reply, Request, Response, ServerFrame,
    limits,
};

/// Reads one line (without its `\n`), refusing lines longer than [`limits::MAX_FRAME`]. Blank
/// lines are skipped.
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
            // End of stream without a newline: a truncated request.
            return Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a line",
            )));
        }
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            return Ok(line);
        }
    }
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
    let op = (1..=8)
        .filter_map(Op::from_code)
        .find(|op| op.name() == op_name)
        .ok_or_else(|| {
            fail(
                Some(id),
                None,
                ErrorCode::UnknownOperation,
                format!("unknown operation {op_name:?}"),
            )
        })?;
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

fn line(value: Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(&value).expect("a Value always serializes");
    out.push(b'\n');
    out
}

/// A request line.
pub fn encode_request(id: u32, request: &Request) -> Vec<u8> {
    let mut value = serde_json::to_value(request).expect("requests serialize");
    value["id"] = json!(id);
    line(value)
}

/// A response line.
pub fn encode_response(response: &Response) -> Vec<u8> {
    let op = response.op.map(Op::name);
    line(match &response.result {
        Ok(reply) => json!({"id": response.id, "op": op, "ok": true, "data": reply}),
        Err(error) => json!({"id": response.id, "op": op, "ok": false, "error": error}),
    })
}

/// A push line.
pub fn encode_push(push: &Push) -> Vec<u8> {
    match push {
        Push::Deliver(message) => line(json!({"push": "deliver", "data": message})),
    }
}

/// Any server line.
pub fn encode_server_frame(frame: &ServerFrame) -> Vec<u8> {
    match frame {
        ServerFrame::Response(r) => encode_response(r),
        ServerFrame::Push(p) => encode_push(p),
    }
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
    let op = value["op"].as_str().and_then(|name| {
        (1..=32)
            .filter_map(Op::from_code)
            .find(|op| op.name() == name)
    });
    let result = if value["ok"].as_bool() == Some(true) {
        Ok(serde_json::from_value::<Reply>(value["data"].take()).map_err(bad)?)
    } else {
        Err(serde_json::from_value::<ErrorReply>(value["error"].take()).map_err(bad)?)
    };
    Ok(ServerFrame::Response(Response { id, op, result }))
}
