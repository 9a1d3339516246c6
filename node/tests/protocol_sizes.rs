//! Bytes on the wire for the reference payloads, in the binary protocol, the JSON protocol and
//! protobuf (the gRPC front end's own messages, generated from `proto/synckit.proto`), and a
//! check that `docs/protocol.md` shows exactly these figures.
//!
//! Protobuf is compared payload to payload (a protobuf message carries no operation, request id
//! or length of its own), frame to frame with protobuf inside the same 5-byte header, and as the
//! gRPC front end sends it: one HTTP/2 DATA frame (a 9-byte frame header) holding gRPC's 5-byte
//! prefix (a compression flag and a 4-byte length) and the payload. The call's HEADERS frame
//! (method path, token, ...) comes on top, HPACK-compressed.

use prost::Message as _;
use synckit_node::net::grpc::pb;
use synckit_node::protocol::{Request, binary, json};

/// An HTTP/2 DATA frame's header, then gRPC's prefix before each message.
const GRPC_DATA_OVERHEAD: usize = 9 + 5;

struct Row {
    name: &'static str,
    request: Request,
    protobuf: usize,
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "LOGIN",
            request: Request::Login {
                username: "username".into(),
                password: "password".into(),
            },
            protobuf: pb::LoginRequest {
                username: "username".into(),
                password: "password".into(),
            }
            .encoded_len(),
        },
        Row {
            name: "SEND_MESSAGE",
            request: Request::SendMessage {
                to: "bob".into(),
                text: "Hello, Bob!".into(),
                key: None,
            },
            protobuf: pb::SendMessageRequest {
                to: "bob".into(),
                text: "Hello, Bob!".into(),
                key: None,
            }
            .encoded_len(),
        },
        Row {
            name: "LIST_ACCOUNTS",
            request: Request::ListAccounts {
                pattern: "user*".into(),
                page_size: 10,
                cursor: None,
            },
            protobuf: pb::ListAccountsRequest {
                pattern: "user*".into(),
                page_size: 10,
                cursor: None,
            }
            .encoded_len(),
        },
        Row {
            name: "READ_MESSAGES",
            request: Request::ReadMessages { limit: 10 },
            protobuf: pb::ReadMessagesRequest { limit: 10 }.encoded_len(),
        },
        Row {
            name: "DELETE_ACCOUNT",
            request: Request::DeleteAccount {
                password: "alice".into(),
            },
            protobuf: pb::DeleteAccountRequest {
                password: "alice".into(),
            }
            .encoded_len(),
        },
    ]
}

fn table() -> String {
    let mut out = String::from(
        "| operation | binary frame | binary payload | protobuf payload | protobuf in the same header | gRPC DATA frame | JSON line |\n|---|---|---|---|---|---|---|\n",
    );
    for row in rows() {
        // Request id 1, as a client's first request.
        let frame = binary::encode_request(1, &row.request).len();
        let payload = binary::request_payload(&row.request).len();
        let header = frame - payload;
        let json = json::encode_request(1, &row.request).len();
        out.push_str(&format!(
            "| {} | {frame} | {payload} | {} | {} | {} | {json} |\n",
            row.name,
            row.protobuf,
            header + row.protobuf,
            GRPC_DATA_OVERHEAD + row.protobuf
        ));
    }
    out
}

#[test]
fn binary_is_smaller_than_json_and_no_larger_than_protobuf() {
    for row in rows() {
        let frame = binary::encode_request(1, &row.request).len();
        let payload = binary::request_payload(&row.request).len();
        let json = json::encode_request(1, &row.request).len();
        assert!(
            frame < json,
            "{}: binary frame {frame} vs JSON {json}",
            row.name
        );
        assert!(
            payload <= row.protobuf,
            "{}: binary payload {payload} vs protobuf {}",
            row.name,
            row.protobuf
        );
    }
}

#[test]
fn docs_show_the_measured_sizes() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .expect("docs/protocol.md exists");
    let table = table();
    assert!(
        doc.contains(&table),
        "docs/protocol.md must contain the measured table:\n{table}"
    );
}
