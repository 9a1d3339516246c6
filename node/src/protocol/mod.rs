//! What clients and the node say to each other, independent of the wire format.
//!
//! Both wire formats ([`binary`] and [`json`]) decode into [`Request`] and encode [`Response`]
//! and [`Push`]; the service only ever sees these types. One TCP port serves both: the first
//! byte of a connection tells them apart ([`binary::MAGIC_VERSION`] for binary, anything else is
//! read as JSON lines).

pub mod binary;
pub mod json;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Limits enforced on every request, whatever the protocol.
pub mod limits {
    /// Usernames: 1 to 32 bytes of ASCII letters, digits, `_`, `-`, `.`.
    pub const MAX_USERNAME: usize = 32;
    /// Passwords: 8 to 128 bytes of UTF-8.
    pub const MIN_PASSWORD: usize = 8;
    /// Passwords: 8 to 128 bytes of UTF-8.
    pub const MAX_PASSWORD: usize = 128;
    /// Message text: at most 4 KiB of UTF-8.
    pub const MAX_TEXT: usize = 4096;
    /// Wildcard patterns: at most 64 bytes.
    pub const MAX_PATTERN: usize = 64;
    /// Accounts per page, messages per read.
    pub const MAX_PAGE: u32 = 100;
    /// Message ids per delete.
    pub const MAX_IDS: usize = 1000;
    /// A whole frame (binary payload or JSON line).
    pub const MAX_FRAME: usize = 64 * 1024;
}

/// Operation codes, shared by both protocols (JSON uses the names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Create an account.
    CreateAccount = 1,
    /// Log in on this connection.
    Login = 2,
    /// Log out of this connection.
    Logout = 3,
    /// List accounts matching a wildcard pattern, a page at a time.
    ListAccounts = 4,
    /// Send a message.
    SendMessage = 5,
    /// Read (and mark delivered) undelivered messages.
    ReadMessages = 6,
    /// Delete own messages by id.
    DeleteMessages = 7,
    /// Delete own account.
    DeleteAccount = 8,
    /// Server push: a message delivered live.
    Deliver = 32,
}

impl Op {
    /// The operation for a code, if any.
    pub fn from_code(code: u8) -> Option<Op> {
        Some(match code {
            1 => Op::CreateAccount,
            2 => Op::Login,
            3 => Op::Logout,
            4 => Op::ListAccounts,
            5 => Op::SendMessage,
            6 => Op::ReadMessages,
            7 => Op::DeleteMessages,
            8 => Op::DeleteAccount,
            32 => Op::Deliver,
            _ => return None,
        })
    }

    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Op::CreateAccount => "create_account",
            Op::Login => "login",
            Op::Logout => "logout",
            Op::ListAccounts => "list_accounts",
            Op::SendMessage => "send_message",
            Op::ReadMessages => "read_messages",
            Op::DeleteMessages => "delete_messages",
            Op::DeleteAccount => "delete_account",
            Op::Deliver => "deliver",
        }
    }
}

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "op",
    content = "data",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Request {
    /// Create an account (does not log in).
    CreateAccount {
        /// The new account's name.
        username: String,
        /// Its password.
        password: String,
    },
    /// Log this connection in.
    Login {
        /// Account name.
        username: String,
        /// Password.
        password: String,
    },
    /// Log this connection out.
    Logout,
    /// List accounts matching `pattern` (`*` any run, `?` one character). The first page has no
    /// cursor; each page returns the cursor of the next one, served from the same snapshot.
    ListAccounts {
        /// Wildcard pattern.
        pattern: String,
        /// Accounts per page (1 to 100).
        page_size: u32,
        /// Cursor from the previous page.
        #[serde(default)]
        cursor: Option<String>,
    },
    /// Send `text` to `to`.
    SendMessage {
        /// Recipient's account name.
        to: String,
        /// Message text.
        text: String,
    },
    /// Up to `limit` undelivered messages, oldest first; they are marked delivered.
    ReadMessages {
        /// At most this many (1 to 100).
        limit: u32,
    },
    /// Delete own messages.
    DeleteMessages {
        /// Message ids.
        ids: Vec<u64>,
    },
    /// Delete the logged-in account (password again).
    DeleteAccount {
        /// The account's password.
        password: String,
    },
}

impl Request {
    /// This request's operation.
    pub fn op(&self) -> Op {
        match self {
            Request::CreateAccount { .. } => Op::CreateAccount,
            Request::Login { .. } => Op::Login,
            Request::Logout => Op::Logout,
            Request::ListAccounts { .. } => Op::ListAccounts,
            Request::SendMessage { .. } => Op::SendMessage,
            Request::ReadMessages { .. } => Op::ReadMessages,
            Request::DeleteMessages { .. } => Op::DeleteMessages,
            Request::DeleteAccount { .. } => Op::DeleteAccount,
        }
    }
}

/// A stored message as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Unique, increasing id.
    pub id: u64,
    /// Sender.
    pub from: String,
    /// Milliseconds since the Unix epoch, when the node accepted it.
    pub timestamp: u64,
    /// Text.
    pub text: String,
}

/// What a successful request returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// Login: how many messages wait.
    LoggedIn {
        /// Undelivered messages waiting.
        unread: u32,
    },
    /// A page of accounts.
    Accounts {
        /// Names, in order.
        accounts: Vec<String>,
        /// Cursor of the next page; absent on the last page.
        #[serde(default)]
        next_cursor: Option<String>,
    },
    /// A message was accepted.
    Sent {
        /// Its id.
        id: u64,
        /// Its timestamp.
        timestamp: u64,
    },
    /// Messages read.
    Messages {
        /// Oldest first.
        messages: Vec<Message>,
    },
    /// How many messages were deleted.
    Deleted {
        /// Count.
        deleted: u32,
    },
    /// Nothing to return (create account, logout, delete account).
    Done {},
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum ErrorCode {
    /// The frame or line could not be decoded.
    Malformed = 1,
    /// Unknown operation.
    UnknownOperation = 2,
    /// A field is missing, ill-typed, or out of its limits.
    InvalidArgument = 3,
    /// A string is not valid UTF-8.
    InvalidUtf8 = 4,
    /// The frame exceeds the size limit.
    TooLarge = 5,
    /// The operation needs a logged-in connection.
    NotLoggedIn = 6,
    /// Wrong username or password.
    AuthFailed = 7,
    /// The username is taken.
    UserExists = 8,
    /// No such account.
    NoSuchUser = 9,
    /// Too many requests; retry later.
    RateLimited = 10,
    /// A cursor that this connection does not have (expired or foreign).
    InvalidCursor = 11,
    /// The node failed internally (e.g. storage full); nothing was changed.
    Internal = 12,
}

impl ErrorCode {
    /// The code for a number, if any.
    pub fn from_code(code: u8) -> Option<ErrorCode> {
        use ErrorCode::*;
        [
            Malformed,
            UnknownOperation,
            InvalidArgument,
            InvalidUtf8,
            TooLarge,
            NotLoggedIn,
            AuthFailed,
            UserExists,
            NoSuchUser,
            RateLimited,
            InvalidCursor,
            Internal,
        ]
        .into_iter()
        .find(|c| *c as u8 == code)
    }
}

/// A failed request: a code for programs, a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
}

impl ErrorReply {
    /// An error reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// The answer to one request, tagged with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The request's id.
    pub id: u32,
    /// The request's operation (`None` if it could not be decoded).
    pub op: Option<Op>,
    /// The outcome.
    pub result: Result<Reply, ErrorReply>,
}

/// Something the node sends without being asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Push {
    /// A message for the logged-in user, delivered live.
    Deliver(Message),
}

/// Anything the node sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// An answer.
    Response(Response),
    /// A push.
    Push(Push),
}

/// A decoding failure that still knows which request it was, when it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// The request id, if it could be read.
    pub id: Option<u32>,
    /// The operation, if it could be read.
    pub op: Option<Op>,
    /// What was wrong.
    pub error: ErrorReply,
    /// Whether the stream can go on (the frame's extent was known) or must be closed.
    pub recoverable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::CreateAccount {
                username: "alice".into(),
                password: "correct horse".into(),
            },
            Request::Login {
                username: "alice".into(),
                password: "correct horse".into(),
            },
            Request::Logout,
            Request::ListAccounts {
                pattern: "a*".into(),
                page_size: 10,
                cursor: Some("c1".into()),
            },
            Request::ListAccounts {
                pattern: "?".into(),
                page_size: 1,
                cursor: None,
            },
            Request::SendMessage {
                to: "bob".into(),
                text: "Hello, Bob! ✓".into(),
            },
            Request::ReadMessages { limit: 10 },
            Request::DeleteMessages {
                ids: vec![1, 300, u64::MAX],
            },
            Request::DeleteAccount {
                password: "correct horse".into(),
            },
        ]
    }

    fn replies() -> Vec<(Op, Result<Reply, ErrorReply>)> {
        let message = Message {
            id: 7,
            from: "alice".into(),
            timestamp: 1_764_048_000_000,
            text: "hi".into(),
        };
        vec![
            (Op::Login, Ok(Reply::LoggedIn { unread: 3 })),
            (
                Op::ListAccounts,
                Ok(Reply::Accounts {
                    accounts: vec!["alice".into(), "bob".into()],
                    next_cursor: Some("c2".into()),
                }),
            ),
            (
                Op::SendMessage,
                Ok(Reply::Sent {
                    id: 9,
                    timestamp: 5,
                }),
            ),
            (
                Op::ReadMessages,
                Ok(Reply::Messages {
                    messages: vec![message],
                }),
            ),
            (Op::DeleteMessages, Ok(Reply::Deleted { deleted: 2 })),
            (Op::Logout, Ok(Reply::Done {})),
            (
                Op::Login,
                Err(ErrorReply::new(ErrorCode::AuthFailed, "wrong password")),
            ),
        ]
    }

    #[test]
    fn binary_requests_round_trip() {
        for (i, request) in requests().into_iter().enumerate() {
            let bytes = binary::encode_request(i as u32, &request);
            let raw = binary::read_frame(&mut &bytes[..]).unwrap();
            assert_eq!(binary::decode_request(&raw).unwrap(), (i as u32, request));
        }
    }

    #[test]
    fn json_requests_round_trip() {
        for (i, request) in requests().into_iter().enumerate() {
            let bytes = json::encode_request(i as u32, &request);
            let line = json::read_line(&mut &bytes[..]).unwrap();
            assert_eq!(json::decode_request(&line).unwrap(), (i as u32, request));
        }
    }

    #[test]
    fn responses_round_trip_in_both_protocols() {
        for (id, (op, result)) in replies().into_iter().enumerate() {
            let frame = ServerFrame::Response(Response {
                id: id as u32,
                op: Some(op),
                result,
            });
            let bytes = binary::encode_server_frame(&frame);
            let raw = binary::read_frame(&mut &bytes[..]).unwrap();
            assert_eq!(binary::decode_server_frame(&raw).unwrap(), frame);
            let line = json::encode_server_frame(&frame);
            assert_eq!(
                json::decode_server_frame(&line[..line.len() - 1]).unwrap(),
                frame
            );
        }
    }
}
