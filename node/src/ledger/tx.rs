//! Transactions: what they hold, their canonical bytes, their id, and the checks that need no
//! state.
//!
//! | item | what |
//! |---|---|
//! | [`Hash32`] | a SHA-256 digest (txids, block hashes, Merkle roots); hex on the wire and in JSON |
//! | [`Outpoint`] | `(txid, index)`: one output of one transaction |
//! | [`Output`] | `(to, amount)` |
//! | [`Transaction`] | inputs, outputs, and for a grant the log index of the account creation |
//!
//! A transaction's id is SHA-256 of its canonical bytes ([`Transaction::canonical_bytes`], laid
//! out in `docs/ledger.md`), so every member and every client computes the same id.

use std::fmt;

use prost::encoding::encode_varint;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::protocol::{ErrorCode, ErrorReply};

/// Inputs of one transaction, at most.
pub const MAX_INPUTS: usize = 100;
/// Outputs of one transaction, at most.
pub const MAX_OUTPUTS: usize = 100;

/// The first bytes of a transaction's canonical encoding: a tag and its version.
const TX_TAG: &[u8; 5] = b"SKTX\x01";

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// All zero bits: the `prev` of the first block.
    pub const ZERO: Hash32 = Hash32([0; 32]);

    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash32 {
        Hash32(Sha256::digest(bytes).into())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// From 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Hash32, ErrorReply> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| {
            ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!("{text:?} is not a hash: 64 hex digits expected"),
            )
        })?;
        Ok(Hash32(bytes))
    }

    /// Leading zero bits (256 for the zero hash).
    pub fn leading_zero_bits(&self) -> u32 {
        let mut bits = 0;
        for byte in self.0 {
            bits += byte.leading_zeros();
            if byte != 0 {
                break;
            }
        }
        bits
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Hex in JSON (snapshots, the JSON protocol); the 32 raw bytes in the log's postcard.
impl Serialize for Hash32 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            Hash32::from_hex(&text).map_err(|e| serde::de::Error::custom(e.message))
        } else {
            <[u8; 32]>::deserialize(deserializer).map(Hash32)
        }
    }
}

/// One output of one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Outpoint {
    /// The transaction.
    pub tx: Hash32,
    /// The output's position in it.
    pub index: u32,
}

impl fmt::Display for Outpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.tx, self.index)
    }
}

/// Coins paid to an account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// The account paid.
    pub to: String,
    /// Coins.
    pub amount: u64,
}

/// An unspent output: who owns it and how much.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Utxo {
    /// Owner.
    pub owner: String,
    /// Coins.
    pub amount: u64,
}

/// A transfer of coins (inputs to outputs, sums equal) or a grant (no inputs, one output, coins
/// created when an account is created).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transaction {
    /// The outputs it spends.
    pub inputs: Vec<Outpoint>,
    /// The outputs it creates.
    pub outputs: Vec<Output>,
    /// Grants only: the log index of the account creation that made it (which also makes every
    /// grant's id unique). Always written (`null` for a transfer): the log's encoding, postcard,
    /// has no field names and cannot skip one.
    #[serde(default)]
    pub grant: Option<u64>,
}

impl Transaction {
    /// The grant made to `to` by the account creation at log `index`.
    pub fn grant(to: &str, amount: u64, index: u64) -> Transaction {
        Transaction {
            inputs: Vec::new(),
            outputs: vec![Output {
                to: to.to_string(),
                amount,
            }],
            grant: Some(index),
        }
    }

    /// Whether it is a grant.
    pub fn is_grant(&self) -> bool {
        self.grant.is_some()
    }

    /// The canonical bytes: `SKTX` 0x01, the input count (varint), each input's txid (32
    /// bytes) and index (varint), the output count, each output's `to` (varint length, UTF-8)
    /// and amount (varint), then 0 (a transfer) or 1 and the grant's log index (varint).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.inputs.len() * 34 + self.outputs.len() * 24);
        out.extend_from_slice(TX_TAG);
        encode_varint(self.inputs.len() as u64, &mut out);
        for input in &self.inputs {
            out.extend_from_slice(&input.tx.0);
            encode_varint(u64::from(input.index), &mut out);
        }
        encode_varint(self.outputs.len() as u64, &mut out);
        for output in &self.outputs {
            encode_varint(output.to.len() as u64, &mut out);
            out.extend_from_slice(output.to.as_bytes());
            encode_varint(output.amount, &mut out);
        }
        match self.grant {
            None => out.push(0),
            Some(index) => {
                out.push(1);
                encode_varint(index, &mut out);
            }
        }
        out
    }

    /// SHA-256 of the canonical bytes.
    pub fn txid(&self) -> Hash32 {
        Hash32::of(&self.canonical_bytes())
    }

    /// The outpoint of output `index`.
    pub fn outpoint(txid: Hash32, index: usize) -> Outpoint {
        Outpoint {
            tx: txid,
            index: u32::try_from(index).expect("at most MAX_OUTPUTS outputs"),
        }
    }

    /// The sum of the outputs (`None` on overflow).
    pub fn output_sum(&self) -> Option<u64> {
        self.outputs
            .iter()
            .try_fold(0u64, |sum, output| sum.checked_add(output.amount))
    }

    /// The checks a transfer passes before any state is looked at: at least one input and one
    /// output, at most [`MAX_INPUTS`] and [`MAX_OUTPUTS`], no input twice, no amount zero, no
    /// overflow, not a grant.
    pub fn check_shape(&self) -> Result<(), ErrorReply> {
        let invalid = |why: String| Err(invalid_transaction(why));
        if self.grant.is_some() {
            return invalid("grants are made by account creation only".into());
        }
        if self.inputs.is_empty() || self.inputs.len() > MAX_INPUTS {
            return invalid(format!("a transaction has 1 to {MAX_INPUTS} inputs"));
        }
        if self.outputs.is_empty() || self.outputs.len() > MAX_OUTPUTS {
            return invalid(format!("a transaction has 1 to {MAX_OUTPUTS} outputs"));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.inputs.len());
        if let Some(twice) = self.inputs.iter().find(|input| !seen.insert(**input)) {
            return invalid(format!("input {twice} is named twice"));
        }
        if self.outputs.iter().any(|output| output.amount == 0) {
            return invalid("an output of amount zero".into());
        }
        if self.output_sum().is_none() {
            return invalid("the outputs' sum overflows".into());
        }
        Ok(())
    }
}

/// `invalid_transaction` with `why`.
pub fn invalid_transaction(why: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidTransaction, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer() -> Transaction {
        Transaction {
            inputs: vec![Outpoint {
                tx: Hash32([7; 32]),
                index: 1,
            }],
            outputs: vec![Output {
                to: "bob".into(),
                amount: 300,
            }],
            grant: None,
        }
    }

    #[test]
    fn canonical_bytes_are_as_documented() {
        let mut expected = b"SKTX\x01\x01".to_vec();
        expected.extend_from_slice(&[7; 32]);
        expected.extend_from_slice(&[1, 1, 3, b'b', b'o', b'b', 0xac, 0x02, 0]);
        assert_eq!(transfer().canonical_bytes(), expected);
        assert_eq!(transfer().txid(), Hash32::of(&expected));
        let grant = Transaction::grant("ann", 1000, 300);
        assert_eq!(
            grant.canonical_bytes(),
            [
                &b"SKTX\x01\x00\x01\x03ann"[..],
                &[0xe8, 0x07, 1, 0xac, 0x02][..]
            ]
            .concat()
        );
        // The same grant made by another account creation is another transaction.
        assert_ne!(grant.txid(), Transaction::grant("ann", 1000, 301).txid());
    }

    #[test]
    fn shape_refuses_what_no_state_could_make_valid() {
        assert!(transfer().check_shape().is_ok());
        type Spoil = Box<dyn Fn(&mut Transaction)>;
        let cases: Vec<(Spoil, &str)> = vec![
            (Box::new(|t| t.inputs.clear()), "1 to 100 inputs"),
            (Box::new(|t| t.outputs.clear()), "1 to 100 outputs"),
            (Box::new(|t| t.inputs.push(t.inputs[0])), "is named twice"),
            (Box::new(|t| t.outputs[0].amount = 0), "amount zero"),
            (
                Box::new(|t| {
                    t.outputs.push(Output {
                        to: "x".into(),
                        amount: u64::MAX,
                    })
                }),
                "overflows",
            ),
            (Box::new(|t| t.grant = Some(1)), "account creation only"),
            (
                Box::new(|t| t.outputs = vec![t.outputs[0].clone(); MAX_OUTPUTS + 1]),
                "1 to 100 outputs",
            ),
        ];
        for (spoil, why) in cases {
            let mut tx = transfer();
            spoil(&mut tx);
            let error = tx.check_shape().unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidTransaction);
            assert!(error.message.contains(why), "{} vs {why}", error.message);
        }
    }

    #[test]
    fn transactions_survive_the_logs_encoding_and_json() {
        for tx in [transfer(), Transaction::grant("ann", 5, 9)] {
            let bytes = postcard::to_stdvec(&tx).unwrap();
            assert_eq!(postcard::from_bytes::<Transaction>(&bytes).unwrap(), tx);
            let json = serde_json::to_string(&tx).unwrap();
            assert_eq!(serde_json::from_str::<Transaction>(&json).unwrap(), tx);
        }
    }

    #[test]
    fn hashes_read_and_write_hex_and_count_leading_zero_bits() {
        let hash = Hash32::of(b"abc");
        assert_eq!(Hash32::from_hex(&hash.to_hex()).unwrap(), hash);
        assert!(Hash32::from_hex("xyz").is_err());
        assert_eq!(Hash32::ZERO.leading_zero_bits(), 256);
        let mut bytes = [0xff; 32];
        bytes[0] = 0;
        bytes[1] = 0x1f;
        assert_eq!(Hash32(bytes).leading_zero_bits(), 11);
        let json = serde_json::to_string(&hash).unwrap();
        assert_eq!(json, format!("\"{}\"", hash.to_hex()));
        let raw = postcard::to_stdvec(&hash).unwrap();
        assert_eq!(raw, hash.0);
        assert_eq!(postcard::from_bytes::<Hash32>(&raw).unwrap(), hash);
    }
}
