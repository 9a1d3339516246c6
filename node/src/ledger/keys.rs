//! Idempotency keys of transfers: each payer's recent keyed transfers, so that a transfer sent
//! again with its key (its answer was lost) pays once.
//!
//! | situation when a keyed transfer applies | outcome |
//! |---|---|
//! | the payer has no live transfer with this key | applied as any transfer; if pooled, the key is remembered with its txid |
//! | the payer's transfer with this key paid the same payee the same amount | nothing pooled; answered with that transfer's txid |
//! | the key names a transfer of another payee or amount | refused (`invalid_argument`), naming that transfer |
//!
//! Invariant: a key is remembered only for a transfer that was pooled, and for at least
//! [`KEYS_KEPT_MS`] of the transfers' clock (the leader's reading logged in each command): each
//! keyed transfer applied forgets every payer's keys older than that before its own time, so
//! every member forgets the same keys at the same command, and the keys held are those of the
//! last ten minutes or so, however many payers stopped paying. A refused transfer
//! leaves no key: sent again, it is judged again. The keys are part of the replicated state and
//! of the snapshot; they live in the [`Mempool`](super::pool::Mempool), under the `mempool`
//! lock, so that finding a key, picking the inputs, pooling and remembering are one step.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::tx::Hash32;
use crate::protocol::{ErrorCode, ErrorReply};
pub use crate::state::KEYS_KEPT_MS;

/// A pooled keyed transfer, remembered under its payer and key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedTransfer {
    /// The key.
    pub key: String,
    /// Payee.
    pub to: String,
    /// Coins.
    pub amount: u64,
    /// The transaction it pooled.
    pub txid: Hash32,
    /// Milliseconds since the Unix epoch, as logged with the transfer.
    pub at: u64,
}

impl KeyedTransfer {
    /// The answer to a transfer of `amount` to `to` sent again with this one's key: its txid if
    /// it is the same transfer, a refusal naming it otherwise.
    pub fn repeat(&self, to: &str, amount: u64) -> Result<Hash32, ErrorReply> {
        if self.to == to && self.amount == amount {
            Ok(self.txid)
        } else {
            Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!(
                    "the idempotency key {:?} names your transfer of {} to {} (transaction {}); \
                     a new transfer needs a new key",
                    self.key, self.amount, self.to, self.txid
                ),
            ))
        }
    }
}

/// Every payer's live keyed transfers.
#[derive(Clone, Debug, Default)]
pub struct TransferKeys {
    by_payer: HashMap<String, HashMap<String, KeyedTransfer>>,
    /// The same keys by age: (logged time, payer, key), the oldest first.
    by_age: BTreeSet<(u64, String, String)>,
}

impl TransferKeys {
    /// `payer`'s transfer with `key`, if it is remembered.
    pub fn find(&self, payer: &str, key: &str) -> Option<&KeyedTransfer> {
        self.by_payer.get(payer)?.get(key)
    }

    /// Remembers `transfer` for `payer`, forgetting every key older than [`KEYS_KEPT_MS`]
    /// before it (by the logged clock, so alike on every member).
    pub fn remember(&mut self, payer: &str, transfer: KeyedTransfer) {
        self.forget_older_than(transfer.at.saturating_sub(KEYS_KEPT_MS));
        self.insert(payer.to_string(), transfer);
    }

    fn insert(&mut self, payer: String, transfer: KeyedTransfer) {
        let entry = (transfer.at, payer.clone(), transfer.key.clone());
        let keys = self.by_payer.entry(payer).or_default();
        if let Some(replaced) = keys.insert(transfer.key.clone(), transfer) {
            self.by_age
                .remove(&(replaced.at, entry.1.clone(), replaced.key));
        }
        self.by_age.insert(entry);
    }

    /// Forgets the keys logged before `oldest_kept`.
    fn forget_older_than(&mut self, oldest_kept: u64) {
        while let Some((at, _, _)) = self.by_age.first()
            && *at < oldest_kept
        {
            let (_, payer, key) = self.by_age.pop_first().expect("just seen");
            if let Some(keys) = self.by_payer.get_mut(&payer) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.by_payer.remove(&payer);
                }
            }
        }
    }

    /// Keys remembered, all payers together.
    pub fn len(&self) -> usize {
        self.by_age.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_age.is_empty()
    }

    /// In canonical order: payers by name, each payer's transfers by key.
    pub fn image(&self) -> BTreeMap<String, Vec<KeyedTransfer>> {
        self.by_payer
            .iter()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(payer, keys)| {
                let mut transfers: Vec<KeyedTransfer> = keys.values().cloned().collect();
                transfers.sort_by(|a, b| a.key.cmp(&b.key));
                (payer.clone(), transfers)
            })
            .collect()
    }

    /// The keys of an image.
    pub fn from_image(image: BTreeMap<String, Vec<KeyedTransfer>>) -> TransferKeys {
        let mut keys = TransferKeys::default();
        for (payer, transfers) in image {
            for transfer in transfers {
                keys.insert(payer.clone(), transfer);
            }
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(key: &str, to: &str, amount: u64, at: u64) -> KeyedTransfer {
        KeyedTransfer {
            key: key.into(),
            to: to.into(),
            amount,
            txid: Hash32([at as u8; 32]),
            at,
        }
    }

    #[test]
    fn a_repeat_gets_the_txid_and_a_different_transfer_under_the_key_is_refused() {
        let mut keys = TransferKeys::default();
        keys.remember("ann", transfer("k1", "ben", 5, 1_000));
        let found = keys.find("ann", "k1").unwrap();
        assert_eq!(found.repeat("ben", 5), Ok(Hash32([232; 32])));
        let refused = found.repeat("ben", 6).unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidArgument);
        assert!(refused.message.contains("k1") && refused.message.contains("5 to ben"));
        assert!(found.repeat("cat", 5).is_err());
        // Keys belong to their payer.
        assert!(keys.find("ben", "k1").is_none());
    }

    #[test]
    fn keys_are_kept_for_the_stated_time_then_forgotten_by_any_later_transfer() {
        let mut keys = TransferKeys::default();
        keys.remember("ann", transfer("old", "ben", 1, 1_000));
        keys.remember("bob", transfer("other", "ben", 1, 1_000));
        keys.remember("bob", transfer("later", "ben", 1, 2_000));
        // Exactly KEYS_KEPT_MS later: still kept.
        keys.remember("ann", transfer("mid", "ben", 1, 1_000 + KEYS_KEPT_MS));
        assert!(keys.find("ann", "old").is_some());
        assert_eq!(keys.len(), 4);
        // One millisecond past it: forgotten, ann's and bob's, though bob does not pay again.
        keys.remember("cat", transfer("new", "ben", 1, 1_001 + KEYS_KEPT_MS));
        assert!(keys.find("ann", "old").is_none());
        assert!(keys.find("bob", "other").is_none());
        assert!(keys.find("bob", "later").is_some());
        assert!(keys.find("ann", "mid").is_some());
        assert_eq!(keys.len(), 3);
        // Everything older goes once the clock has moved on far enough; the image agrees.
        keys.remember("cat", transfer("last", "ben", 1, 10 * KEYS_KEPT_MS));
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.image().keys().collect::<Vec<_>>(), ["cat"]);
    }

    #[test]
    fn the_image_is_canonical_and_gives_the_same_keys_back() {
        let mut keys = TransferKeys::default();
        for key in ["k3", "k1", "k2"] {
            keys.remember("ann", transfer(key, "ben", 2, 50));
        }
        keys.remember("ben", transfer("k9", "ann", 1, 60));
        let image = keys.image();
        assert_eq!(
            image["ann"]
                .iter()
                .map(|t| t.key.as_str())
                .collect::<Vec<_>>(),
            ["k1", "k2", "k3"]
        );
        let back = TransferKeys::from_image(image.clone());
        assert_eq!(back.image(), image);
        assert_eq!(back.find("ben", "k9"), keys.find("ben", "k9"));
        assert!(TransferKeys::default().is_empty() && !back.is_empty());
    }
}
