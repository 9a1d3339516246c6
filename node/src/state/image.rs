//! The state in canonical order: what a snapshot stores and what the digest hashes.
//!
//! Accounts by name, mailboxes by owner, messages by id: the same state always gives the same
//! image, whatever order it was built in or which shard holds what.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Account;
use crate::ledger::LedgerImage;

/// The whole state at one applied index, in canonical order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The index of the last command the image includes.
    pub applied: u64,
    /// Every account, by name.
    pub accounts: BTreeMap<String, Account>,
    /// Every mailbox that holds or held messages, by owner; each by message id.
    pub mailboxes: BTreeMap<String, Vec<ImageMessage>>,
    /// The idempotency keys of each sender's keyed sends, by sender, each by key.
    #[serde(default)]
    pub sent_keys: BTreeMap<String, Vec<ImageKey>>,
    /// The ledger: every sealed block and the pooled transactions (the confirmed outputs are
    /// what replaying the blocks gives).
    #[serde(default, skip_serializing_if = "LedgerImage::is_empty")]
    pub ledger: LedgerImage,
}

/// A keyed send remembered for its sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageKey {
    /// The key.
    pub key: String,
    /// The message it stored.
    pub id: u64,
    /// That message's timestamp.
    pub timestamp: u64,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMessage {
    /// Id (the log index of its `SendMessage`).
    pub id: u64,
    /// Sender.
    pub from: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Text.
    pub text: String,
    /// Whether it was delivered.
    pub delivered: bool,
}

impl Image {
    /// SHA-256 of the postcard encoding of the image's contents (accounts, mailboxes, keys,
    /// ledger), in hex. The applied index is not hashed (it is shown beside the digest): entries that carry
    /// no command, such as the empty entry a restarted raft leader appends, move it and leave
    /// the state as it was.
    pub fn digest(&self) -> String {
        let contents = (
            &self.accounts,
            &self.mailboxes,
            &self.sent_keys,
            &self.ledger,
        );
        let bytes = postcard::to_stdvec(&contents).expect("an image always encodes");
        hex::encode(Sha256::digest(&bytes))
    }
}
