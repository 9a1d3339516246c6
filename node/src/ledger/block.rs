//! Blocks: a header chained to the previous block's hash, the Merkle root of its transactions'
//! ids, and a nonce that makes the header's hash start with `difficulty` zero bits.
//!
//! | item | what |
//! |---|---|
//! | [`BlockHeader`] | height, prev, merkle_root, timestamp, difficulty, nonce |
//! | [`BlockHeader::bytes`] | the 92 bytes hashed (layout in `docs/ledger.md`; the nonce last) |
//! | [`merkle_root`] | pairwise SHA-256 up the tree, an odd last id paired with itself |
//! | [`Block::check_alone`] | what a block must satisfy whatever the chain: root and work |
//! | [`seal`] | the nonce search, on several threads through a [`RangeCoordinator`] |
//!
//! Invariant: a block's hash is SHA-256 of its header's bytes and nothing else, so the nonce
//! search hashes 92 bytes per try, the first 64 of them absorbed once per template.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sync_kit::work::{JobOutcome, RangeCoordinator};

use super::tx::{Hash32, Transaction};

/// Bytes of a header as hashed.
pub const HEADER_BYTES: usize = 92;
/// Nonces a sealing worker tries between two looks at whether another worker won.
pub const SEAL_BATCH: u64 = 256;

/// A block's header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    /// 1 for the first block.
    pub height: u64,
    /// The previous block's hash ([`Hash32::ZERO`] for the first block).
    pub prev: Hash32,
    /// [`merkle_root`] of the transactions' ids, in block order.
    pub merkle_root: Hash32,
    /// Milliseconds since the Unix epoch, read by the leader that sealed it.
    pub timestamp: u64,
    /// Leading zero bits its hash has (the proof of work it claims).
    pub difficulty: u32,
    /// The nonce that gives the hash those zero bits.
    pub nonce: u64,
}

impl BlockHeader {
    /// Height, prev, merkle root, timestamp (big-endian u64s, raw hashes), difficulty (u32
    /// big-endian), nonce (u64 big-endian): 92 bytes.
    pub fn bytes(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..8].copy_from_slice(&self.height.to_be_bytes());
        out[8..40].copy_from_slice(&self.prev.0);
        out[40..72].copy_from_slice(&self.merkle_root.0);
        out[72..80].copy_from_slice(&self.timestamp.to_be_bytes());
        out[80..84].copy_from_slice(&self.difficulty.to_be_bytes());
        out[84..92].copy_from_slice(&self.nonce.to_be_bytes());
        out
    }

    /// SHA-256 of [`BlockHeader::bytes`].
    pub fn hash(&self) -> Hash32 {
        Hash32::of(&self.bytes())
    }

    /// Whether the hash has the zero bits the header claims.
    pub fn has_work(&self) -> bool {
        self.hash().leading_zero_bits() >= self.difficulty
    }
}

/// A sealed block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Its header.
    pub header: BlockHeader,
    /// Its transactions, in the order they were accepted (a transaction spending another's
    /// output comes after it).
    pub txs: Vec<Transaction>,
}

impl Block {
    /// The header's hash.
    pub fn hash(&self) -> Hash32 {
        self.header.hash()
    }

    /// The transactions' ids, in block order.
    pub fn txids(&self) -> Vec<Hash32> {
        self.txs.iter().map(Transaction::txid).collect()
    }

    /// What a block must satisfy whatever the chain it extends: its Merkle root is its
    /// transactions' and its hash has the work it claims. `Err` says which, naming the block.
    pub fn check_alone(&self, txids: &[Hash32]) -> Result<(), String> {
        let height = self.header.height;
        if merkle_root(txids) != self.header.merkle_root {
            return Err(format!(
                "block {height}: the Merkle root {} is not its transactions' ({})",
                self.header.merkle_root,
                merkle_root(txids)
            ));
        }
        if !self.header.has_work() {
            return Err(format!(
                "block {height}: hash {} has fewer than the {} leading zero bits its header claims",
                self.hash(),
                self.header.difficulty
            ));
        }
        Ok(())
    }
}

/// The Merkle root of `txids`: each level pairs neighbours (the last with itself when a level
/// has an odd count) and hashes the 64 bytes of each pair; [`Hash32::ZERO`] for no ids.
pub fn merkle_root(txids: &[Hash32]) -> Hash32 {
    if txids.is_empty() {
        return Hash32::ZERO;
    }
    let mut level: Vec<Hash32> = txids.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| {
                let (left, right) = (pair[0], *pair.get(1).unwrap_or(&pair[0]));
                let mut hasher = Sha256::new();
                hasher.update(left.0);
                hasher.update(right.0);
                Hash32(hasher.finalize().into())
            })
            .collect();
    }
    level[0]
}

/// What sealing gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Sealed {
    /// The header with a nonce that has the work.
    Found(BlockHeader),
    /// Stopped (the coordinator was re-armed or cancelled: a newer template, or shutdown).
    Stopped,
    /// No nonce in the whole space has the work (only a difficulty near 256 bits does that).
    Exhausted,
}

/// Searches the nonce space for `header` (its nonce is ignored) on `workers` threads, each
/// taking disjoint chunks from `coordinator` and stopping as soon as one finds a nonce.
pub fn seal(header: &BlockHeader, coordinator: &RangeCoordinator, workers: usize) -> Sealed {
    if header.difficulty == 0 {
        return Sealed::Found(BlockHeader {
            nonce: 0,
            ..header.clone()
        });
    }
    let bytes = header.bytes();
    // The first 64 bytes are one SHA-256 block: absorbed once, cloned per try.
    let mut prefix = Sha256::new();
    prefix.update(&bytes[..64]);
    let tail: [u8; 20] = bytes[64..84].try_into().expect("20 bytes");
    let difficulty = header.difficulty;
    let check = |nonce: u64| {
        let mut hasher = prefix.clone();
        hasher.update(tail);
        hasher.update(nonce.to_be_bytes());
        Hash32(hasher.finalize().into()).leading_zero_bits() >= difficulty
    };
    match coordinator.search(0..u64::MAX, workers.max(1), SEAL_BATCH, check) {
        JobOutcome::Found(nonce) => Sealed::Found(BlockHeader {
            nonce,
            ..header.clone()
        }),
        JobOutcome::Cancelled => Sealed::Stopped,
        JobOutcome::Exhausted => Sealed::Exhausted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(difficulty: u32) -> BlockHeader {
        BlockHeader {
            height: 1,
            prev: Hash32::ZERO,
            merkle_root: merkle_root(&[Hash32::of(b"a")]),
            timestamp: 1_764_000_000_000,
            difficulty,
            nonce: 0,
        }
    }

    #[test]
    fn merkle_roots_pair_neighbours_and_repeat_an_odd_last() {
        let (a, b, c) = (Hash32::of(b"a"), Hash32::of(b"b"), Hash32::of(b"c"));
        let pair = |x: Hash32, y: Hash32| Hash32::of(&[x.0, y.0].concat());
        assert_eq!(merkle_root(&[]), Hash32::ZERO);
        assert_eq!(merkle_root(&[a]), a);
        assert_eq!(merkle_root(&[a, b]), pair(a, b));
        assert_eq!(merkle_root(&[a, b, c]), pair(pair(a, b), pair(c, c)));
        assert_ne!(merkle_root(&[b, a]), merkle_root(&[a, b]));
    }

    #[test]
    fn header_bytes_put_the_nonce_last() {
        let mut h = header(0);
        h.nonce = 0x0102030405060708;
        let bytes = h.bytes();
        assert_eq!(&bytes[..8], &1u64.to_be_bytes());
        assert_eq!(&bytes[80..84], &0u32.to_be_bytes());
        assert_eq!(&bytes[84..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(h.hash(), Hash32::of(&bytes));
    }

    #[test]
    fn sealing_finds_a_nonce_with_the_work_and_checks_refuse_a_changed_block() {
        let coordinator = RangeCoordinator::new(1024);
        for workers in [1, 2] {
            let Sealed::Found(sealed) = seal(&header(10), &coordinator, workers) else {
                panic!("a 10-bit nonce exists");
            };
            assert!(sealed.has_work());
            assert!(sealed.hash().leading_zero_bits() >= 10);
            let block = Block {
                header: sealed,
                txs: vec![],
            };
            let ids = [Hash32::of(b"a")];
            assert!(block.check_alone(&ids).is_ok());
            assert!(block.check_alone(&[]).unwrap_err().contains("Merkle root"));
            let mut tampered = block.clone();
            tampered.header.timestamp += 1;
            // A changed header keeps its work only by chance (1 in 1024): try nonces until it
            // does not, so the test is exact.
            while tampered.header.has_work() {
                tampered.header.nonce += 1;
            }
            assert!(
                tampered
                    .check_alone(&ids)
                    .unwrap_err()
                    .contains("zero bits")
            );
        }
    }
}
