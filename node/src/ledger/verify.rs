//! `synckit-node verify-chain --data-dir DIR`: the whole chain checked offline.
//!
//! 1. The data directory is locked (a running node holds it: stop it first).
//! 2. The state is recovered as a start recovers it: the snapshot (whose blocks are replayed and
//!    checked: hash links, Merkle roots, work, every transaction), then every committed command
//!    of the raft log after it, through `State::apply` (which checks every new block).
//! 3. The resulting chain is replayed again from its first block into an empty ledger, and the
//!    confirmed outputs it gives must be exactly the recovered state's.
//!
//! A damaged log record, a block that does not check, or outputs that differ end it with an
//! error naming the file, the log entry or the block.

use std::path::Path;

use super::{Hash32, Ledger, LedgerImage};
use crate::log::snapshot;
use crate::state::State;

/// A chain that checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Blocks.
    pub height: u64,
    /// The last block's hash.
    pub tip: Hash32,
    /// Confirmed outputs.
    pub utxos: usize,
    /// Coins in them (the sealed grants).
    pub supply: u64,
}

/// Verifies the chain in `dir` (see the module's steps).
pub fn verify_data_dir(dir: &Path) -> Result<Verified, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a data directory", dir.display()));
    }
    let _lock = sync_kit::fs::FileLock::try_exclusive(dir.join("node")).map_err(|e| {
        format!(
            "cannot lock {} (is a node running on it? stop it first): {e}",
            dir.display()
        )
    })?;
    let image = snapshot::load(dir)?;
    let state = State::from_image(image).map_err(|e| format!("snapshot: {e}"))?;
    for entry in crate::raft::member::read_committed(dir, state.applied_index())? {
        state
            .apply(entry.index, &entry.command)
            .map_err(|e| format!("log entry {}: {e}", entry.index))?;
    }
    let recovered = state.ledger();
    let blocks = recovered
        .capture()
        .map_err(|e| e.to_string())?
        .image()
        .blocks;
    let replayed = Ledger::from_image(LedgerImage {
        blocks,
        ..LedgerImage::default()
    })?;
    let (want, got) = (recovered.confirmed_outputs(), replayed.confirmed_outputs());
    if want != got {
        let differs = want
            .iter()
            .find(|(outpoint, utxo)| got.get(outpoint) != Some(utxo))
            .map(|(outpoint, _)| *outpoint)
            .or_else(|| {
                got.keys()
                    .find(|outpoint| !want.contains_key(outpoint))
                    .copied()
            });
        return Err(format!(
            "replaying the chain gives other confirmed outputs than the node's state (first \
             difference: {})",
            differs.map_or("none found".into(), |o| o.to_string())
        ));
    }
    let info = recovered.info().map_err(|e| e.to_string())?;
    Ok(Verified {
        height: info.height,
        tip: info.tip,
        utxos: info.utxos,
        supply: info.supply,
    })
}
