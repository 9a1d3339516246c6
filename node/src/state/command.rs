//! Commands: every change of the node's state, with everything non-deterministic (clock
//! readings, password hashes with their random salts) decided before it is logged, and the
//! outcome [`State::apply`](super::State::apply) gives each.
//!
//! | command | touches | outcome |
//! |---|---|---|
//! | `CreateAccount` | the account map, the user's shard | `Done` or `user_exists` |
//! | `DeleteAccount` | the account map, the user's shard | `Done` or `not_logged_in` |
//! | `SendMessage` | the recipient's shard (and the sender's, with a key) | `Sent { id, timestamp }`, `AlreadySent` or `no_such_user` |
//! | `MarkDelivered` | one shard per user named | `Done` |
//! | `DeleteMessages` | the owner's shard | `Deleted(count)` |
//! | `OpenAccount` | the account map, the user's shard, the mempool (its grant) | `Done` or `user_exists` |
//! | `SubmitTransaction` | the mempool | `Pooled { txid }` or a ledger refusal |
//! | `Transfer` | the mempool | `Pooled { txid }` or a ledger refusal |
//! | `SealBlock` | the chain, the confirmed outputs, the mempool | `Done` or refused (logged as an error) |
//! | `KeyedTransfer` | the mempool (and its keys) | `Pooled { txid }` (the earlier one's for a repeat) or a ledger refusal |
//!
//! Commands that read or write the account map or the ledger (the accounts, the mempool, the
//! chain) are *ledger-ordered* ([`Command::ledger_ordered`]): the applier keeps them in log
//! order among themselves, since a transfer's recipient must exist and an account with coins
//! cannot be deleted.
//!
//! Commands are stored in the log as they are encoded here (postcard, behind a format version
//! byte), so a variant's fields never change meaning once released: a new field is a new variant.

use serde::{Deserialize, Serialize};

use crate::ledger::{Block, Hash32, Transaction};
use crate::protocol::ErrorReply;

/// One change of the node's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create an account (refused if the name is taken).
    CreateAccount {
        /// Name.
        username: String,
        /// Argon2id PHC string, hashed (with a random salt) before the command was logged.
        password_hash: String,
        /// Creation time, milliseconds since the Unix epoch, read before logging.
        created: u64,
    },
    /// Delete an account and its mailbox, if it is still the account that was verified: the
    /// hash's random salt tells it apart from a later account created under the same name.
    DeleteAccount {
        /// Name.
        username: String,
        /// The hash the password was verified against.
        password_hash: String,
    },
    /// Store a message in the recipient's mailbox. Its id is the command's log index.
    SendMessage {
        /// Sender.
        from: String,
        /// Recipient (refused if no such account).
        to: String,
        /// Text.
        text: String,
        /// Milliseconds since the Unix epoch, read before logging.
        timestamp: u64,
        /// Idempotency key: if the sender stored a send with this key (kept at least
        /// [`super::KEYS_KEPT_MS`]), this one stores nothing and answers with that one.
        key: Option<String>,
    },
    /// Messages handed to their recipients (read, or pushed live): one command per batch of
    /// pushes, however many messages and users it covers.
    MarkDelivered {
        /// Per user, the ids delivered.
        marks: Vec<(String, Vec<u64>)>,
    },
    /// Delete messages from their owner's mailbox; ids not in it are ignored.
    DeleteMessages {
        /// The mailbox's owner.
        user: String,
        /// Message ids.
        ids: Vec<u64>,
    },
    /// Create an account (refused if the name is taken) and grant it `grant` coins (a grant
    /// transaction in the mempool, sealed with the next block). Replaces `CreateAccount`, which
    /// logs written before the ledger still hold.
    OpenAccount {
        /// Name.
        username: String,
        /// Argon2id PHC string, hashed before the command was logged.
        password_hash: String,
        /// Creation time, milliseconds since the Unix epoch, read before logging.
        created: u64,
        /// Coins granted (the proposing member's `initial_balance`; 0 grants nothing).
        grant: u64,
    },
    /// Pool a transaction spending `from`'s outputs, if it is valid when applied.
    SubmitTransaction {
        /// The logged-in account that submits it (it must own every input).
        from: String,
        /// The transaction.
        tx: Transaction,
    },
    /// Pay `amount` from `from` to `to`, with inputs the ledger picks when it applies this.
    Transfer {
        /// Payer.
        from: String,
        /// Payee.
        to: String,
        /// Coins.
        amount: u64,
    },
    /// Append a block sealed by the leader, if it extends the tip and every check passes.
    SealBlock {
        /// The block.
        block: Block,
    },
    /// A `Transfer` with an idempotency key: if `from` made a transfer with this key (kept at
    /// least [`super::KEYS_KEPT_MS`]), nothing is pooled and the answer is that transfer's
    /// txid (or a refusal if it paid someone else or another amount).
    KeyedTransfer {
        /// Payer.
        from: String,
        /// Payee.
        to: String,
        /// Coins.
        amount: u64,
        /// Idempotency key (1 to 64 bytes).
        key: String,
        /// Milliseconds since the Unix epoch, read before logging: keys expire by it.
        timestamp: u64,
    },
}

impl Command {
    /// The users whose mailbox shards this command touches (the first is the one that decides
    /// its shard when it touches one).
    pub fn users(&self) -> Vec<&str> {
        match self {
            Command::CreateAccount { username, .. } | Command::DeleteAccount { username, .. } => {
                vec![username]
            }
            Command::SendMessage { to, key: None, .. } => vec![to],
            Command::SendMessage {
                to,
                from,
                key: Some(_),
                ..
            } => vec![to, from],
            Command::MarkDelivered { marks } => {
                marks.iter().map(|(user, _)| user.as_str()).collect()
            }
            Command::DeleteMessages { user, .. } => vec![user],
            Command::OpenAccount { username, .. } => vec![username],
            Command::SubmitTransaction { .. }
            | Command::Transfer { .. }
            | Command::KeyedTransfer { .. }
            | Command::SealBlock { .. } => Vec::new(),
        }
    }

    /// Whether it reads or writes the account map or the ledger: such commands apply in log
    /// order among themselves.
    pub fn ledger_ordered(&self) -> bool {
        matches!(
            self,
            Command::CreateAccount { .. }
                | Command::DeleteAccount { .. }
                | Command::OpenAccount { .. }
                | Command::SubmitTransaction { .. }
                | Command::Transfer { .. }
                | Command::KeyedTransfer { .. }
                | Command::SealBlock { .. }
        )
    }
}

/// What applying a command gave. A refusal changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; nothing to report.
    Done,
    /// A message was stored.
    Sent {
        /// Its id (the command's log index).
        id: u64,
        /// Its timestamp.
        timestamp: u64,
    },
    /// A send with a key its sender used before: nothing stored, this is the earlier message.
    AlreadySent {
        /// The earlier message's id.
        id: u64,
        /// Its timestamp.
        timestamp: u64,
    },
    /// Messages were deleted.
    Deleted(u32),
    /// A transaction was pooled.
    Pooled {
        /// Its id.
        txid: Hash32,
    },
    /// Refused by validation at apply time; the state is unchanged.
    Refused(ErrorReply),
}
