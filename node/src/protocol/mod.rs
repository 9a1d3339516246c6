//! What clients and the node say to each other, independent of the wire format.
//!
//! Both wire formats ([`binary`] and [`json`]) decode into [`Request`] and encode [`Response`]
//! and [`Push`]; the service only ever sees these types. One TCP port serves both: the first
//! byte of a connection tells them apart ([`Protocol::detect`]: [`binary::MAGIC_VERSION`] for
//! binary, anything else is read as JSON lines).
//!
//! Code outside this module speaks through [`Protocol`]: [`Protocol::parse_request`] and
//! [`Protocol::parse_server_frame`] find and decode the first frame in a byte buffer (for
//! event-driven code that reads whatever the socket has), [`Protocol::read_request`] and
//! [`Protocol::read_server_frame`] block on a reader until a frame is whole. The blocking
//! readers are built on the buffer parsers, so both see the same frames and the same errors.

pub mod binary;
pub mod json;

use std::fmt;
use std::io::{self, BufRead};

use serde::{Deserialize, Serialize};

pub use crate::ledger::{Hash32, Outpoint, Output};

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
    /// Idempotency keys of sends: 1 to 64 bytes.
    pub const MAX_KEY: usize = 64;
    /// Wildcard patterns: at most 64 bytes.
    pub const MAX_PATTERN: usize = 64;
    /// Accounts per page, messages per read.
    pub const MAX_PAGE: u32 = 100;
    /// Message ids per delete.
    pub const MAX_IDS: usize = 1000;
    /// A whole frame (binary payload or JSON line).
    pub const MAX_FRAME: usize = 64 * 1024;
    /// Outputs one `list_utxos` answer lists at most (so that it fits a frame).
    pub const MAX_LISTED_UTXOS: usize = 500;
    /// Inputs or outputs of one transaction, at most.
    pub const MAX_TX_IO: usize = 100;
}

/// Declares [`Op`] and its table [`Op::ALL`] from one list of rows, so that an operation's
/// code, JSON name and direction are written once: a new row is known to both codecs at once.
macro_rules! operations {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident = $code:literal, $name:literal, $direction:ident;
    )*) => {
        /// Operation codes, shared by both protocols (JSON uses the names).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Op {
            $($(#[doc = $doc])* $variant = $code,)*
        }

        impl Op {
            /// Every operation, in code order: the single table both codecs look codes and names
            /// up in.
            pub const ALL: &'static [Op] = &[$(Op::$variant),*];

            /// The JSON name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Op::$variant => $name,)*
                }
            }

            /// Who sends it: a client ([`Direction::Request`]) or the node unasked
            /// ([`Direction::Push`]).
            pub fn direction(self) -> Direction {
                match self {
                    $(Op::$variant => Direction::$direction,)*
                }
            }
        }
    };
}

operations! {
    /// Create an account.
    CreateAccount = 1, "create_account", Request;
    /// Log in on this connection.
    Login = 2, "login", Request;
    /// Log out of this connection.
    Logout = 3, "logout", Request;
    /// List accounts matching a wildcard pattern, a page at a time.
    ListAccounts = 4, "list_accounts", Request;
    /// Send a message.
    SendMessage = 5, "send_message", Request;
    /// Read (and mark delivered) undelivered messages.
    ReadMessages = 6, "read_messages", Request;
    /// Delete own messages by id.
    DeleteMessages = 7, "delete_messages", Request;
    /// Delete own account.
    DeleteAccount = 8, "delete_account", Request;
    /// Own coins: confirmed and pending.
    GetBalance = 9, "get_balance", Request;
    /// Own spendable outputs.
    ListUtxos = 10, "list_utxos", Request;
    /// Submit a transaction spending own outputs.
    SubmitTransaction = 11, "submit_transaction", Request;
    /// Pay an account; the node picks the inputs.
    Transfer = 12, "transfer", Request;
    /// A transaction by id.
    GetTransaction = 13, "get_transaction", Request;
    /// A block by height.
    GetBlock = 14, "get_block", Request;
    /// The chain's head and sizes.
    ChainInfo = 15, "chain_info", Request;
    /// The cluster's members and its leader, as this member knows them.
    ClusterInfo = 16, "cluster_info", Request;
    /// Server push: a message delivered live.
    Deliver = 32, "deliver", Push;
}

/// Which side starts an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A client asks, the node answers with a response carrying the same id.
    Request,
    /// The node sends it unasked.
    Push,
}

impl Op {
    /// The binary code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The operation for a binary code, if any.
    pub fn from_code(code: u8) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| op.code() == code)
    }

    /// The operation for a JSON name, if any.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.iter().copied().find(|op| op.name() == name)
    }

    /// The operation a client may send under this code (pushes are not requests).
    pub fn request_from_code(code: u8) -> Option<Op> {
        Op::from_code(code).filter(|op| op.direction() == Direction::Request)
    }

    /// The operation a client may send under this JSON name (pushes are not requests).
    pub fn request_from_name(name: &str) -> Option<Op> {
        Op::from_name(name).filter(|op| op.direction() == Direction::Request)
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
        /// Idempotency key (1 to 64 bytes): a send whose sender and key match a send stored in
        /// the last ten minutes or more is answered with that message's id and timestamp and
        /// stores nothing, so a client that lost an answer can send again safely.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
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
    /// The logged-in account's balance.
    GetBalance {},
    /// The logged-in account's spendable outputs (at most [`limits::MAX_LISTED_UTXOS`]).
    ListUtxos {},
    /// Pool a transaction spending the logged-in account's outputs.
    SubmitTransaction {
        /// The outputs it spends.
        inputs: Vec<Outpoint>,
        /// The outputs it creates.
        outputs: Vec<Output>,
    },
    /// Pay `amount` coins to `to`; the node picks the inputs and pays the change back.
    Transfer {
        /// Payee.
        to: String,
        /// Coins.
        amount: u64,
        /// Idempotency key (1 to 64 bytes): a transfer whose payer and key match one pooled in
        /// the last ten minutes or more pays nothing and is answered with that transfer's txid
        /// (refused if it paid another payee or amount), so a client that lost an answer can
        /// send it again safely.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// A transaction, pooled or sealed.
    GetTransaction {
        /// Its id.
        txid: Hash32,
    },
    /// A sealed block.
    GetBlock {
        /// Its height (1 is the first block).
        height: u64,
    },
    /// The chain's height, tip, mempool size, difficulty and supply.
    ChainInfo {},
    /// The cluster's voters and its leader (no login needed).
    ClusterInfo {},
}

impl Request {
    /// A `create_account` request.
    pub fn create_account(username: &str, password: &str) -> Request {
        Request::CreateAccount {
            username: username.into(),
            password: password.into(),
        }
    }

    /// A `login` request.
    pub fn login(username: &str, password: &str) -> Request {
        Request::Login {
            username: username.into(),
            password: password.into(),
        }
    }

    /// A `send_message` request with a fresh idempotency key: sent again (after a lost answer,
    /// a reconnection), it stores nothing new and answers with the first message's id.
    pub fn keyed_send(to: &str, text: &str) -> Request {
        Request::SendMessage {
            to: to.into(),
            text: text.into(),
            key: Some(crate::client::idempotency_key()),
        }
    }

    /// A `transfer` request with a fresh idempotency key: sent again (after a lost answer, a
    /// reconnection), it pays nothing more and answers with the first transfer's txid.
    pub fn keyed_transfer(to: &str, amount: u64) -> Request {
        Request::Transfer {
            to: to.into(),
            amount,
            key: Some(crate::client::idempotency_key()),
        }
    }

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
            Request::GetBalance {} => Op::GetBalance,
            Request::ListUtxos {} => Op::ListUtxos,
            Request::SubmitTransaction { .. } => Op::SubmitTransaction,
            Request::Transfer { .. } => Op::Transfer,
            Request::GetTransaction { .. } => Op::GetTransaction,
            Request::GetBlock { .. } => Op::GetBlock,
            Request::ChainInfo {} => Op::ChainInfo,
            Request::ClusterInfo {} => Op::ClusterInfo,
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

impl Message {
    /// The most bytes this message can take in a response of either protocol (JSON escapes
    /// included): what a reply must budget for it to stay within [`limits::MAX_FRAME`].
    pub fn encoded_bound(&self) -> usize {
        // Keys, punctuation, and two u64 in decimal: well under this.
        const FIXED: usize = 96;
        json_string_bound(&self.from) + json_string_bound(&self.text) + FIXED
    }
}

/// The most bytes `text` takes as a JSON string (quotes and escapes included).
fn json_string_bound(text: &str) -> usize {
    2 + text
        .chars()
        .map(|c| match c {
            '"' | '\\' => 2,
            '\u{0}'..='\u{1f}' => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
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
    /// A sealed block.
    Block(BlockInfo),
    /// The chain's head and sizes.
    Chain {
        /// Blocks sealed.
        height: u64,
        /// The last block's hash (64 zeros before the first block).
        tip: Hash32,
        /// Transactions pooled.
        mempool: u64,
        /// The leading zero bits this member seals blocks with.
        difficulty_bits: u32,
        /// Coins in sealed outputs (the sealed grants).
        supply: u64,
    },
    /// A transaction.
    Transaction {
        /// Its id.
        txid: Hash32,
        /// The outputs it spends.
        inputs: Vec<Outpoint>,
        /// The outputs it creates.
        outputs: Vec<Output>,
        /// The height of its block; `null` while it is pooled.
        block: Option<u64>,
        /// A grant: the log index of the account creation that made it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<u64>,
    },
    /// A transaction was pooled.
    Pooled {
        /// Its id.
        txid: Hash32,
    },
    /// A balance.
    Balance {
        /// Coins of owned outputs in sealed blocks.
        confirmed: u64,
        /// The net effect of pooled transactions (negative when they spend confirmed coins).
        pending: i64,
    },
    /// Spendable outputs.
    Utxos {
        /// Confirmed first, each by outpoint.
        utxos: Vec<UtxoEntry>,
    },
    /// The cluster as the member asked knows it.
    Cluster {
        /// The leader's chat address; `null` while none is known (an election).
        leader: Option<String>,
        /// Every voter's chat address, by member id (one, for a node on its own).
        members: Vec<String>,
    },
    /// Nothing to return (create account, logout, delete account).
    Done {},
}

/// A block as `get_block` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// 1 for the first block.
    pub height: u64,
    /// Its hash.
    pub hash: Hash32,
    /// The previous block's hash.
    pub prev: Hash32,
    /// The Merkle root of its transactions' ids.
    pub merkle_root: Hash32,
    /// Milliseconds since the Unix epoch, when it was sealed.
    pub timestamp: u64,
    /// Leading zero bits of its hash, at least.
    pub difficulty: u32,
    /// The proof of work.
    pub nonce: u64,
    /// Its transactions' ids, in block order.
    pub txids: Vec<Hash32>,
}

/// One spendable output, as `list_utxos` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UtxoEntry {
    /// The transaction that created it.
    pub tx: Hash32,
    /// Its position among that transaction's outputs.
    pub index: u32,
    /// Coins.
    pub amount: u64,
    /// In a sealed block (else created by a pooled transaction).
    pub confirmed: bool,
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
    /// This cluster member cannot order the write (it is a follower, or an election is under
    /// way); [`ErrorReply::leader`] names the leader's chat address when it is known. Nothing
    /// was changed: the client may send the request again, to the leader.
    NotLeader = 13,
    /// The cluster cannot order the write now (no majority reachable within a bounded wait);
    /// nothing was acknowledged. The client may retry later, or on another member.
    Unavailable = 14,
    /// The transaction spends an output that a transaction in the mempool spends already (the
    /// message names the output and that transaction's id).
    DoubleSpend = 15,
    /// The transaction spends an output that does not exist (never did, or is spent in a block).
    NoSuchOutput = 16,
    /// The transaction spends an output that another account owns.
    NotOwner = 17,
    /// The transaction breaks a rule (sums differ, no inputs, too many inputs or outputs, an
    /// amount zero, an output to no account, ...); the message says which.
    InvalidTransaction = 18,
    /// A transfer of more coins than the sender can spend.
    InsufficientFunds = 19,
    /// No such transaction or block.
    NotFound = 20,
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
            NotLeader,
            Unavailable,
            DoubleSpend,
            NoSuchOutput,
            NotOwner,
            InvalidTransaction,
            InsufficientFunds,
            NotFound,
        ]
        .into_iter()
        .find(|c| *c as u8 == code)
    }
}

/// A failed request: a code for programs, a message for people, and for
/// [`ErrorCode::NotLeader`] the leader's chat address when it is known.
///
/// The leader is private so that it can only be set by [`ErrorReply::not_leader`]: an error of
/// any other code never carries one, and its JSON keeps the shape it always had (no `leader`
/// key), while a `not_leader` error always has the key (`null` when unknown).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "WireErrorReply")]
pub struct ErrorReply {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
    /// The leader's chat address ("host:port"); only ever `Some` with [`ErrorCode::NotLeader`].
    leader: Option<String>,
}

/// [`ErrorReply`] as JSON spells it, for decoding: an absent and a `null` `leader` both mean
/// unknown, and a `leader` on an error of another code is ignored.
#[derive(Deserialize)]
struct WireErrorReply {
    code: ErrorCode,
    message: String,
    #[serde(default)]
    leader: Option<String>,
}

impl From<WireErrorReply> for ErrorReply {
    fn from(wire: WireErrorReply) -> Self {
        ErrorReply {
            leader: wire.leader.filter(|_| wire.code == ErrorCode::NotLeader),
            code: wire.code,
            message: wire.message,
        }
    }
}

impl Serialize for ErrorReply {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        // `leader` is written for `not_leader` only (as `null` when unknown), so the JSON of
        // every other code is byte for byte what it was before clusters existed.
        let not_leader = self.code == ErrorCode::NotLeader;
        let mut out = serializer.serialize_struct("ErrorReply", 2 + usize::from(not_leader))?;
        out.serialize_field("code", &self.code)?;
        out.serialize_field("message", &self.message)?;
        if not_leader {
            out.serialize_field("leader", &self.leader)?;
        }
        out.end()
    }
}

impl ErrorReply {
    /// An error reply (without a leader: see [`ErrorReply::not_leader`] for that).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            leader: None,
        }
    }

    /// A [`ErrorCode::NotLeader`] reply naming the leader's chat address ("host:port"), or
    /// `None` while no leader is known (during an election).
    ///
    /// The message is derived from `leader` alone: the binary protocol carries only the address
    /// (its message field holds the address or nothing), and decoding rebuilds the reply with this
    /// function, so a reply made here comes back equal from either protocol.
    pub fn not_leader(leader: Option<String>) -> Self {
        let message = match &leader {
            Some(addr) => format!("this member is not the leader; the leader is {addr}"),
            None => "this member is not the leader and no leader is known yet".to_string(),
        };
        Self {
            code: ErrorCode::NotLeader,
            message,
            leader,
        }
    }

    /// The leader's chat address, when this is a `not_leader` reply that knows it.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
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

/// Why no frame could be read off a stream; the stream cannot be trusted after it.
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

/// What the start of a byte buffer holds, for a reader that accumulates whatever the socket
/// delivers and parses as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parse<T> {
    /// Not a whole frame yet: read more bytes (nothing consumed).
    Incomplete,
    /// Bytes to drop without a frame (blank JSON lines).
    Skip(usize),
    /// A whole frame of `consumed` bytes: decoded, or a recoverable error to answer before going
    /// on with the bytes after it.
    Frame {
        /// The frame's length in the buffer, delimiter included.
        consumed: usize,
        /// What it says, or why it could not be understood.
        decoded: Result<T, DecodeError>,
    },
    /// The stream cannot be resynchronised (bad magic, oversized frame or line, bad varint):
    /// answer with this, then close.
    Fatal(DecodeError),
}

impl<T> Parse<T> {
    /// Interprets a whole frame with `decode`; the other outcomes pass through.
    pub fn and_then<U>(self, decode: impl FnOnce(T) -> Result<U, DecodeError>) -> Parse<U> {
        match self {
            Parse::Incomplete => Parse::Incomplete,
            Parse::Skip(n) => Parse::Skip(n),
            Parse::Frame { consumed, decoded } => Parse::Frame {
                consumed,
                decoded: decoded.and_then(decode),
            },
            Parse::Fatal(error) => Parse::Fatal(error),
        }
    }
}

/// Reads one frame off `reader` with `parse`, taking exactly the frame's bytes (and any blank
/// lines before it) off the reader: what follows stays buffered for the next call.
///
/// Bytes of an unfinished frame are held here until it is whole, so `parse` sees the frame
/// from its first byte whatever the reader's buffer size.
fn read_with<T>(
    reader: &mut impl BufRead,
    parse: impl Fn(&[u8]) -> Parse<T>,
) -> Result<Result<T, DecodeError>, FrameError> {
    // Bytes of the current frame already taken off the reader.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        };
        if available.is_empty() {
            return Err(if pending.is_empty() {
                FrameError::Closed
            } else {
                FrameError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of a frame",
                ))
            });
        }
        let held = pending.len();
        let fresh = available.len();
        let parsed = if held == 0 {
            parse(available)
        } else {
            pending.extend_from_slice(available);
            parse(&pending)
        };
        // `Incomplete` on the bytes held means the frame ends among the fresh ones: the bytes
        // to take off the reader are those past `held`.
        match parsed {
            Parse::Incomplete => {
                if held == 0 {
                    pending.extend_from_slice(available);
                }
                reader.consume(fresh);
            }
            Parse::Skip(n) => {
                reader.consume(n.saturating_sub(held).min(fresh));
                pending.clear();
            }
            Parse::Frame { consumed, decoded } => {
                reader.consume(consumed.saturating_sub(held).min(fresh));
                return Ok(decoded);
            }
            Parse::Fatal(error) => return Err(FrameError::Invalid(error)),
        }
    }
}

/// The two wire formats, and every way code outside this module encodes or decodes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// [`binary`].
    Binary,
    /// [`json`].
    Json,
}

impl Protocol {
    /// The protocol of a connection whose first byte is `first_byte`.
    pub fn detect(first_byte: u8) -> Protocol {
        if first_byte == binary::MAGIC_VERSION {
            Protocol::Binary
        } else {
            Protocol::Json
        }
    }

    /// Where the first frame in `buf` ends, without decoding it: [`Parse::Frame`] (always with
    /// `Ok(())`), [`Parse::Skip`], [`Parse::Incomplete`] or [`Parse::Fatal`] exactly when
    /// [`Protocol::parse_request`] and [`Protocol::parse_server_frame`] would say so, for
    /// code that only needs to know whether a whole frame is there.
    pub fn find_frame(self, buf: &[u8]) -> Parse<()> {
        match self {
            Protocol::Binary => binary::parse_frame(buf).and_then(|_| Ok(())),
            Protocol::Json => json::parse_line(buf).and_then(|_| Ok(())),
        }
    }

    /// The first request in `buf` (server side).
    pub fn parse_request(self, buf: &[u8]) -> Parse<(u32, Request)> {
        match self {
            Protocol::Binary => binary::parse_frame(buf).and_then(binary::decode_request_view),
            Protocol::Json => json::parse_line(buf).and_then(json::decode_request),
        }
    }

    /// The first frame from the node in `buf` (client side).
    pub fn parse_server_frame(self, buf: &[u8]) -> Parse<ServerFrame> {
        match self {
            Protocol::Binary => binary::parse_frame(buf).and_then(|frame| {
                binary::decode_server_frame_view(frame).map_err(|error| DecodeError {
                    id: Some(frame.id),
                    op: Op::from_code(frame.op),
                    error,
                    recoverable: true,
                })
            }),
            Protocol::Json => json::parse_line(buf).and_then(json::decode_server_line),
        }
    }

    /// Blocks until a whole request has been read (server side). `Ok(Err(_))` is a frame that
    /// could not be understood but whose extent was known: answer it and go on.
    pub fn read_request(
        self,
        reader: &mut impl BufRead,
    ) -> Result<Result<(u32, Request), DecodeError>, FrameError> {
        read_with(reader, |buf| self.parse_request(buf))
    }

    /// Blocks until a whole frame from the node has been read (client side).
    pub fn read_server_frame(
        self,
        reader: &mut impl BufRead,
    ) -> Result<Result<ServerFrame, DecodeError>, FrameError> {
        read_with(reader, |buf| self.parse_server_frame(buf))
    }

    /// A request, encoded.
    pub fn encode_request(self, id: u32, request: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_request_into(id, request, &mut out);
        out
    }

    /// Appends an encoded request to `out` (no allocation once `out` is large enough).
    pub fn encode_request_into(self, id: u32, request: &Request, out: &mut Vec<u8>) {
        match self {
            Protocol::Binary => binary::encode_request_into(id, request, out),
            Protocol::Json => json::encode_request_into(id, request, out),
        }
    }

    /// A frame from the node, encoded.
    pub fn encode_server_frame(self, frame: &ServerFrame) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_server_frame_into(frame, &mut out);
        out
    }

    /// Appends an encoded frame from the node to `out`.
    pub fn encode_server_frame_into(self, frame: &ServerFrame, out: &mut Vec<u8>) {
        match self {
            Protocol::Binary => binary::encode_server_frame_into(frame, out),
            Protocol::Json => json::encode_server_frame_into(frame, out),
        }
    }
}

/// [`Protocol`]'s parsers for one connection, remembering how far an unfinished JSON line has
/// been searched for its newline: a line trickling in a byte at a time then costs linear time
/// (the stateless parsers search it from its start on each call, quadratic in its length).
///
/// Each call must see the same stream as the previous one: the bytes it was given, less exactly
/// those it said to drop ([`Parse::Skip`], [`Parse::Frame`]'s `consumed`), plus new ones after
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameParser {
    protocol: Protocol,
    /// Bytes at the start of the buffer known to hold no newline (JSON only).
    searched: usize,
}

impl FrameParser {
    /// A parser for a new connection speaking `protocol`.
    pub fn new(protocol: Protocol) -> FrameParser {
        FrameParser {
            protocol,
            searched: 0,
        }
    }

    /// The protocol it parses.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Like [`Protocol::parse_request`].
    pub fn parse_request(&mut self, buf: &[u8]) -> Parse<(u32, Request)> {
        match self.protocol {
            Protocol::Binary => self.protocol.parse_request(buf),
            Protocol::Json => {
                let parsed = json::parse_line_after(buf, self.searched);
                self.remember(buf, &parsed);
                parsed.and_then(json::decode_request)
            }
        }
    }

    /// Like [`Protocol::parse_server_frame`].
    pub fn parse_server_frame(&mut self, buf: &[u8]) -> Parse<ServerFrame> {
        match self.protocol {
            Protocol::Binary => self.protocol.parse_server_frame(buf),
            Protocol::Json => {
                let parsed = json::parse_line_after(buf, self.searched);
                self.remember(buf, &parsed);
                parsed.and_then(json::decode_server_line)
            }
        }
    }

    fn remember<T>(&mut self, buf: &[u8], parsed: &Parse<T>) {
        self.searched = match parsed {
            Parse::Incomplete => buf.len(),
            _ => 0,
        };
    }
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
                key: None,
            },
            Request::ReadMessages { limit: 10 },
            Request::DeleteMessages {
                ids: vec![1, 300, u64::MAX],
            },
            Request::DeleteAccount {
                password: "correct horse".into(),
            },
            Request::GetBalance {},
            Request::ListUtxos {},
            Request::SubmitTransaction {
                inputs: vec![Outpoint {
                    tx: Hash32([0xab; 32]),
                    index: 3,
                }],
                outputs: vec![
                    Output {
                        to: "bob".into(),
                        amount: 300,
                    },
                    Output {
                        to: "alice".into(),
                        amount: u64::MAX,
                    },
                ],
            },
            Request::Transfer {
                to: "bob".into(),
                amount: 300,
                key: None,
            },
            Request::Transfer {
                to: "bob".into(),
                amount: 1,
                key: Some("k-1".into()),
            },
            Request::GetTransaction {
                txid: Hash32([1; 32]),
            },
            Request::GetBlock { height: 12 },
            Request::ChainInfo {},
            Request::ClusterInfo {},
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
                Op::GetBalance,
                Ok(Reply::Balance {
                    confirmed: 1000,
                    pending: -300,
                }),
            ),
            (
                Op::ListUtxos,
                Ok(Reply::Utxos {
                    utxos: vec![UtxoEntry {
                        tx: Hash32([2; 32]),
                        index: 0,
                        amount: 1000,
                        confirmed: true,
                    }],
                }),
            ),
            (
                Op::Transfer,
                Ok(Reply::Pooled {
                    txid: Hash32([3; 32]),
                }),
            ),
            (
                Op::GetTransaction,
                Ok(Reply::Transaction {
                    txid: Hash32([4; 32]),
                    inputs: vec![],
                    outputs: vec![Output {
                        to: "alice".into(),
                        amount: 1000,
                    }],
                    block: Some(1),
                    grant: Some(5),
                }),
            ),
            (
                Op::GetTransaction,
                Ok(Reply::Transaction {
                    txid: Hash32([4; 32]),
                    inputs: vec![Outpoint {
                        tx: Hash32([5; 32]),
                        index: 1,
                    }],
                    outputs: vec![],
                    block: None,
                    grant: None,
                }),
            ),
            (
                Op::GetBlock,
                Ok(Reply::Block(BlockInfo {
                    height: 1,
                    hash: Hash32([6; 32]),
                    prev: Hash32::ZERO,
                    merkle_root: Hash32([7; 32]),
                    timestamp: 1_764_048_000_000,
                    difficulty: 16,
                    nonce: 99_999,
                    txids: vec![Hash32([4; 32])],
                })),
            ),
            (
                Op::ChainInfo,
                Ok(Reply::Chain {
                    height: 1,
                    tip: Hash32([6; 32]),
                    mempool: 2,
                    difficulty_bits: 16,
                    supply: 2000,
                }),
            ),
            (
                Op::ClusterInfo,
                Ok(Reply::Cluster {
                    leader: Some("127.0.0.1:7003".into()),
                    members: vec!["127.0.0.1:7001".into(), "127.0.0.1:7003".into()],
                }),
            ),
            (
                Op::ClusterInfo,
                Ok(Reply::Cluster {
                    leader: None,
                    members: vec!["127.0.0.1:7001".into()],
                }),
            ),
            (
                Op::Transfer,
                Err(ErrorReply::new(
                    ErrorCode::InsufficientFunds,
                    "ann can spend 10 coins, fewer than 300",
                )),
            ),
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
    fn ledger_requests_read_as_documented_and_take_no_data_or_an_empty_object() {
        for line in [
            r#"{"id":1,"op":"get_balance"}"#,
            r#"{"id":1,"op":"get_balance","data":{}}"#,
        ] {
            assert_eq!(
                json::decode_request(line.as_bytes()).unwrap(),
                (1, Request::GetBalance {})
            );
        }
        let tx = "ab".repeat(32);
        let line = format!(
            r#"{{"id":2,"op":"submit_transaction","data":{{"inputs":[{{"tx":"{tx}","index":0}}],"outputs":[{{"to":"bob","amount":300}}]}}}}"#
        );
        assert_eq!(
            json::decode_request(line.as_bytes()).unwrap().1,
            Request::SubmitTransaction {
                inputs: vec![Outpoint {
                    tx: Hash32([0xab; 32]),
                    index: 0
                }],
                outputs: vec![Output {
                    to: "bob".into(),
                    amount: 300
                }],
            }
        );
        // A txid that is not 64 hex digits is an invalid argument, saying so.
        let error =
            json::decode_request(br#"{"id":3,"op":"get_transaction","data":{"txid":"xyz"}}"#)
                .unwrap_err();
        assert_eq!(error.error.code, ErrorCode::InvalidArgument);
        assert!(
            error.error.message.contains("64 hex digits"),
            "{}",
            error.error.message
        );
        // The answers' JSON shapes.
        let reply = serde_json::to_value(Reply::Balance {
            confirmed: 1000,
            pending: -300,
        })
        .unwrap();
        assert_eq!(
            reply,
            serde_json::json!({"confirmed": 1000, "pending": -300})
        );
        let reply = serde_json::to_value(Reply::Pooled {
            txid: Hash32([0xab; 32]),
        })
        .unwrap();
        assert_eq!(reply, serde_json::json!({ "txid": tx }));
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

    /// A request of every request operation, built by an exhaustive match: a new operation
    /// must be given one here before this compiles.
    fn sample(op: Op) -> Option<Request> {
        Some(match op {
            Op::CreateAccount => Request::CreateAccount {
                username: "a".into(),
                password: "p".into(),
            },
            Op::Login => Request::Login {
                username: "a".into(),
                password: "p".into(),
            },
            Op::Logout => Request::Logout,
            Op::ListAccounts => Request::ListAccounts {
                pattern: "*".into(),
                page_size: 1,
                cursor: None,
            },
            Op::SendMessage => Request::SendMessage {
                to: "b".into(),
                text: "t".into(),
                key: None,
            },
            Op::ReadMessages => Request::ReadMessages { limit: 1 },
            Op::DeleteMessages => Request::DeleteMessages { ids: vec![1] },
            Op::DeleteAccount => Request::DeleteAccount {
                password: "p".into(),
            },
            Op::GetBalance => Request::GetBalance {},
            Op::ListUtxos => Request::ListUtxos {},
            Op::SubmitTransaction => Request::SubmitTransaction {
                inputs: vec![],
                outputs: vec![],
            },
            Op::Transfer => Request::Transfer {
                to: "b".into(),
                amount: 1,
                key: None,
            },
            Op::GetTransaction => Request::GetTransaction { txid: Hash32::ZERO },
            Op::GetBlock => Request::GetBlock { height: 1 },
            Op::ChainInfo => Request::ChainInfo {},
            Op::ClusterInfo => Request::ClusterInfo {},
            Op::Deliver => return None,
        })
    }

    #[test]
    fn every_operation_in_the_table_is_known_to_both_codecs() {
        let mut codes = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for &op in Op::ALL {
            assert!(codes.insert(op.code()), "{op:?}: code used twice");
            assert!(names.insert(op.name()), "{op:?}: name used twice");
            assert_eq!(Op::from_code(op.code()), Some(op));
            assert_eq!(Op::from_name(op.name()), Some(op));
            match (op.direction(), sample(op)) {
                (Direction::Request, Some(request)) => {
                    assert_eq!(request.op(), op);
                    for protocol in [Protocol::Binary, Protocol::Json] {
                        let bytes = protocol.encode_request(7, &request);
                        match protocol.parse_request(&bytes) {
                            Parse::Frame { consumed, decoded } => {
                                assert_eq!(consumed, bytes.len());
                                assert_eq!(decoded, Ok((7, request.clone())), "{protocol:?}");
                            }
                            other => panic!("{protocol:?} {op:?}: {other:?}"),
                        }
                    }
                }
                (Direction::Push, None) => {
                    // A push is never accepted as a request, in either protocol.
                    let binary = binary::frame(op.code(), 0, 7, &[]);
                    let json = format!("{{\"id\":7,\"op\":\"{}\"}}\n", op.name());
                    for (protocol, bytes) in [
                        (Protocol::Binary, binary),
                        (Protocol::Json, json.into_bytes()),
                    ] {
                        let Parse::Frame {
                            decoded: Err(bad), ..
                        } = protocol.parse_request(&bytes)
                        else {
                            panic!("{protocol:?} accepted the push {op:?} as a request");
                        };
                        assert_eq!(bad.error.code, ErrorCode::UnknownOperation);
                    }
                }
                (direction, sample) => panic!("{op:?} is a {direction:?} with sample {sample:?}"),
            }
        }
        // Codes outside the table are unknown in binary, as names outside it are in JSON.
        for code in (0..=u8::MAX).filter(|code| !codes.contains(code)) {
            assert_eq!(Op::from_code(code), None);
            let Parse::Frame {
                decoded: Err(bad), ..
            } = Protocol::Binary.parse_request(&binary::frame(code, 0, 1, &[]))
            else {
                panic!("code {code} decoded");
            };
            assert_eq!(bad.error.code, ErrorCode::UnknownOperation);
        }
    }

    /// Every error code, its number and its JSON name: the table of `docs/protocol.md`.
    const ERROR_CODES: &[(u8, &str)] = &[
        (1, "malformed"),
        (2, "unknown_operation"),
        (3, "invalid_argument"),
        (4, "invalid_utf8"),
        (5, "too_large"),
        (6, "not_logged_in"),
        (7, "auth_failed"),
        (8, "user_exists"),
        (9, "no_such_user"),
        (10, "rate_limited"),
        (11, "invalid_cursor"),
        (12, "internal"),
        (13, "not_leader"),
        (14, "unavailable"),
        (15, "double_spend"),
        (16, "no_such_output"),
        (17, "not_owner"),
        (18, "invalid_transaction"),
        (19, "insufficient_funds"),
        (20, "not_found"),
    ];

    #[test]
    fn every_error_code_has_its_number_and_name() {
        for &(number, name) in ERROR_CODES {
            let code = ErrorCode::from_code(number).unwrap_or_else(|| panic!("code {number}"));
            assert_eq!(code as u8, number);
            assert_eq!(serde_json::to_value(code).unwrap(), name, "{code:?}");
        }
        for number in (0..=u8::MAX).filter(|n| !ERROR_CODES.iter().any(|(c, _)| c == n)) {
            assert_eq!(ErrorCode::from_code(number), None, "{number}");
        }
        // The docs list the same table.
        let docs = include_str!("../../../docs/protocol.md");
        for &(number, name) in ERROR_CODES {
            assert!(
                docs.contains(&format!("| {number} | {name} |")),
                "docs/protocol.md lacks error code {number} {name}"
            );
        }
    }

    fn error_frame(error: ErrorReply) -> ServerFrame {
        ServerFrame::Response(Response {
            id: 4,
            op: Some(Op::SendMessage),
            result: Err(error),
        })
    }

    #[test]
    fn not_leader_round_trips_in_both_protocols_with_and_without_a_leader() {
        for leader in [Some("127.0.0.1:7003".to_string()), None] {
            let error = ErrorReply::not_leader(leader.clone());
            assert_eq!(error.code, ErrorCode::NotLeader);
            assert_eq!(error.leader(), leader.as_deref());
            let frame = error_frame(error);
            for protocol in [Protocol::Binary, Protocol::Json] {
                let bytes = protocol.encode_server_frame(&frame);
                let Parse::Frame { consumed, decoded } = protocol.parse_server_frame(&bytes) else {
                    panic!("{protocol:?}: no frame");
                };
                assert_eq!(consumed, bytes.len());
                let decoded = decoded.unwrap();
                assert_eq!(decoded, frame, "{protocol:?}");
                let ServerFrame::Response(Response { result: Err(e), .. }) = decoded else {
                    unreachable!()
                };
                assert_eq!(e.leader(), leader.as_deref(), "{protocol:?}");
            }
        }
        let unavailable = error_frame(ErrorReply::new(ErrorCode::Unavailable, "no majority"));
        for protocol in [Protocol::Binary, Protocol::Json] {
            let bytes = protocol.encode_server_frame(&unavailable);
            assert!(matches!(
                protocol.parse_server_frame(&bytes),
                Parse::Frame { decoded: Ok(ref f), .. } if *f == unavailable
            ));
        }
    }

    #[test]
    fn a_transfer_keeps_its_bytes_without_a_key_and_carries_one_trailing() {
        let plain = binary::request_payload(&Request::Transfer {
            to: "bob".into(),
            amount: 300,
            key: None,
        });
        // to: varint length + bytes; amount: varint (300 = 0xac 0x02). Nothing after.
        assert_eq!(plain, [3, b'b', b'o', b'b', 0xac, 0x02]);
        let keyed = binary::request_payload(&Request::Transfer {
            to: "bob".into(),
            amount: 300,
            key: Some("k-1".into()),
        });
        // The key as an option<string> after them: 1, then the string.
        assert_eq!(keyed[..plain.len()], plain[..]);
        assert_eq!(keyed[plain.len()..], [1, 3, b'k', b'-', b'1']);
        // In JSON, an absent key is no field at all.
        let request = Request::Transfer {
            to: "bob".into(),
            amount: 300,
            key: None,
        };
        let value = serde_json::to_value(&request).unwrap();
        assert!(value.get("key").is_none(), "{value}");
    }

    #[test]
    fn not_leader_wire_bytes_are_as_documented() {
        let json_of = |error: ErrorReply| {
            let line = json::encode_server_frame(&error_frame(error));
            let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
            value["error"].clone()
        };
        let named = json_of(ErrorReply::not_leader(Some("127.0.0.1:7003".into())));
        assert_eq!(named["code"], "not_leader");
        assert_eq!(named["leader"], "127.0.0.1:7003");
        assert!(named["message"].is_string());
        let unknown = json_of(ErrorReply::not_leader(None));
        assert_eq!(
            unknown.as_object().unwrap().get("leader"),
            Some(&serde_json::Value::Null),
            "an unknown leader is an explicit null"
        );
        // Other codes keep their shape: no leader key.
        let line = json::encode_server_frame(&error_frame(ErrorReply::new(
            ErrorCode::Unavailable,
            "no majority",
        )));
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"error\":{\"code\":\"unavailable\",\"message\":\"no majority\"},\"id\":4,\
             \"ok\":false,\"op\":\"send_message\"}\n"
        );
        // A leader on another code's JSON is ignored when decoding.
        let decoded = json::decode_server_frame(
            br#"{"id":1,"op":"login","ok":false,"error":{"code":"internal","message":"x","leader":"a:1"}}"#,
        )
        .unwrap();
        assert_eq!(
            decoded,
            ServerFrame::Response(Response {
                id: 1,
                op: Some(Op::Login),
                result: Err(ErrorReply::new(ErrorCode::Internal, "x")),
            })
        );
        // Binary: code 13, message = the address, or empty.
        let bytes = binary::encode_server_frame(&error_frame(ErrorReply::not_leader(Some(
            "10.0.0.1:7".into(),
        ))));
        let mut payload = vec![13, 10];
        payload.extend_from_slice(b"10.0.0.1:7");
        assert_eq!(
            bytes,
            binary::frame(
                Op::SendMessage.code(),
                binary::FLAG_RESPONSE | binary::FLAG_ERROR,
                4,
                &payload
            )
        );
        let bytes = binary::encode_server_frame(&error_frame(ErrorReply::not_leader(None)));
        assert_eq!(
            bytes,
            binary::frame(
                Op::SendMessage.code(),
                binary::FLAG_RESPONSE | binary::FLAG_ERROR,
                4,
                &[13, 0]
            )
        );
    }

    #[test]
    fn json_line_limit_is_fatal_only_past_max_frame_bytes() {
        let mut line = vec![b' '; limits::MAX_FRAME];
        line[0] = b'{';
        assert_eq!(json::parse_line(&line), Parse::Incomplete);
        let mut whole = line.clone();
        whole.push(b'\n');
        assert!(matches!(
            json::parse_line(&whole),
            Parse::Frame { consumed, .. } if consumed == limits::MAX_FRAME + 1
        ));
        line.push(b' ');
        let Parse::Fatal(bad) = json::parse_line(&line) else {
            panic!("MAX_FRAME + 1 bytes without a newline must be fatal");
        };
        assert_eq!(
            (bad.error.code, bad.recoverable),
            (ErrorCode::TooLarge, false)
        );
        assert_eq!(json::parse_line(b" \r\t\n{}"), Parse::Skip(4));
    }

    #[test]
    fn binary_oversized_header_is_fatal_before_the_payload() {
        let mut header = vec![binary::MAGIC_VERSION, Op::SendMessage.code(), 0, 9];
        prost::encoding::encode_varint(limits::MAX_FRAME as u64, &mut header);
        assert_eq!(Protocol::Binary.parse_request(&header), Parse::Incomplete);
        let mut header = vec![binary::MAGIC_VERSION, Op::SendMessage.code(), 0, 9];
        prost::encoding::encode_varint(limits::MAX_FRAME as u64 + 1, &mut header);
        let Parse::Fatal(bad) = Protocol::Binary.parse_request(&header) else {
            panic!("an oversized header must be fatal at once");
        };
        assert_eq!(
            (bad.id, bad.op, bad.error.code),
            (Some(9), Some(Op::SendMessage), ErrorCode::TooLarge)
        );
        // Every prefix of a frame is incomplete, whatever cuts it.
        let frame = Protocol::Binary.encode_request(300, &sample(Op::Login).unwrap());
        for end in 0..frame.len() {
            assert_eq!(
                Protocol::Binary.parse_request(&frame[..end]),
                Parse::Incomplete
            );
        }
    }

    #[test]
    fn appending_encoders_write_the_same_bytes() {
        for protocol in [Protocol::Binary, Protocol::Json] {
            let mut out = b"before".to_vec();
            for (i, request) in requests().into_iter().enumerate() {
                let start = out.len();
                protocol.encode_request_into(i as u32, &request, &mut out);
                let expected = match protocol {
                    Protocol::Binary => binary::encode_request(i as u32, &request),
                    Protocol::Json => json::encode_request(i as u32, &request),
                };
                assert_eq!(&out[start..], &expected[..]);
            }
            assert!(out.starts_with(b"before"));
        }
    }
}
