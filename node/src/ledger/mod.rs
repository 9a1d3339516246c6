//! The ledger: coins as unspent transaction outputs, a mempool that refuses double spends, and
//! a chain of blocks sealed by proof of work. Part of the replicated state: it changes only in
//! [`State::apply`](crate::state::State::apply), through the `apply_*` functions here.
//!
//! | part | primitive | lock level |
//! |---|---|---|
//! | confirmed outputs | `MvccMap<Outpoint, Utxo>`: validation reads a snapshot, never waits | internal |
//! | per-owner outputs | `MvccMap<String, OrdMap<Outpoint, u64>>`: balances and listings | internal |
//! | `ledger-chain` | `Mutex<Chain>`: the blocks, the transaction index, the supply | 24 |
//! | `mempool` | `Mutex<Mempool>`: pooled transactions, the outpoint index, transfers' idempotency keys | 25 |
//!
//! Invariant: the confirmed outputs are exactly what replaying the chain's blocks from the first
//! gives (grants create coins, transfers move them), so their sum is the supply of the sealed
//! grants; and no output is spent twice, in the chain or in the pool. A transaction is pooled
//! only by `apply_submit` (or a grant by `apply_grant`), after the outpoint index was checked
//! under the same `mempool` lock; a block applies only if it extends the tip, its Merkle root and
//! work check, and every transaction in it is pooled and valid in block order.
//!
//! Requests check a transaction first against a snapshot of the confirmed outputs and the pool
//! ([`Ledger::check`]), so most refusals never reach the log; apply checks again, and its answer
//! is the one that counts.

pub mod block;
pub mod keys;
pub mod pool;
pub mod tx;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use sync_kit::mvcc::MvccMap;
use sync_kit::{LockError, Mutex};

use crate::protocol::{ErrorCode, ErrorReply};
pub use block::{Block, BlockHeader};
use keys::{KeyedTransfer, TransferKeys};
use pool::Mempool;
pub use tx::{Hash32, Outpoint, Output, Transaction, Utxo};

/// Lock level of `ledger-chain`.
pub const CHAIN_LEVEL: sync_kit::Level = sync_kit::Level(24);
/// Lock level of `mempool` (taken after `ledger-chain` when both are).
pub const MEMPOOL_LEVEL: sync_kit::Level = sync_kit::Level(25);
/// Transactions in one block, at most (whatever a leader's `block_max_txs`): 960 ids are
/// 64 KiB less a margin in a JSON `get_block` answer, which must fit one frame.
pub const MAX_BLOCK_TXS: usize = 960;
/// Transactions the pool holds at most; more are refused (`unavailable`) until a block drains it.
pub const MAX_POOL_TXS: usize = 100_000;

/// Why a transaction is refused, as the figures count it.
const REFUSALS: [&str; 8] = [
    "double_spend",
    "no_such_output",
    "not_owner",
    "invalid_transaction",
    "insufficient_funds",
    "mempool_full",
    "no_such_user",
    "other",
];

/// The sealed blocks and what is looked up in them.
#[derive(Clone, Debug, Default)]
struct Chain {
    blocks: imbl::Vector<Arc<Block>>,
    /// Sealed transaction id → (block height, position in the block).
    located: imbl::HashMap<Hash32, (u64, u32)>,
    tip: Hash32,
    /// Coins created by sealed grants: the sum of the confirmed outputs.
    supply: u64,
}

impl Chain {
    fn height(&self) -> u64 {
        self.blocks.len() as u64
    }
}

/// Figures of this member's ledger (node-local counters, not replicated state).
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    /// Per reason, in [`REFUSALS`] order.
    refused: [AtomicU64; REFUSALS.len()],
    blocks_refused: AtomicU64,
}

/// The ledger's part of the state.
pub struct Ledger {
    utxos: MvccMap<Outpoint, Utxo>,
    owned: MvccMap<String, OrdMap<Outpoint, u64>>,
    chain: Mutex<Chain>,
    pool: Mutex<Mempool>,
    counters: Counters,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("utxos", &self.utxos.len())
            .finish_non_exhaustive()
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

/// The ledger in canonical order: what a snapshot stores and the digest hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerImage {
    /// Every sealed block, the first first.
    pub blocks: Vec<Block>,
    /// The pooled transactions, in acceptance order.
    pub pool: Vec<Transaction>,
    /// Each payer's live keyed transfers, by key (absent in snapshots written before them).
    #[serde(default)]
    pub transfer_keys: BTreeMap<String, Vec<KeyedTransfer>>,
}

/// The ledger at one moment ([`Ledger::capture`]).
#[derive(Clone, Debug, Default)]
pub struct LedgerCapture {
    blocks: imbl::Vector<Arc<Block>>,
    pool: Vec<Transaction>,
    transfer_keys: BTreeMap<String, Vec<KeyedTransfer>>,
}

impl LedgerCapture {
    /// Its canonical image.
    pub fn image(self) -> LedgerImage {
        LedgerImage {
            blocks: self.blocks.iter().map(|block| (**block).clone()).collect(),
            pool: self.pool,
            transfer_keys: self.transfer_keys,
        }
    }
}

impl LedgerImage {
    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.pool.is_empty() && self.transfer_keys.is_empty()
    }
}

/// A balance: coins in sealed outputs, and the net effect of pooled transactions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Coins of the outputs it owns in sealed blocks.
    pub confirmed: u64,
    /// What pooled transactions add (or take, when negative).
    pub pending: i64,
}

/// One output an account owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    /// Which output.
    pub outpoint: Outpoint,
    /// Coins.
    pub amount: u64,
    /// Sealed in a block (else an output of a pooled transaction).
    pub confirmed: bool,
}

/// A transaction and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The transaction.
    pub tx: Transaction,
    /// The height of its block; `None` while it is pooled.
    pub block: Option<u64>,
}

/// The chain's head and sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChainInfo {
    /// Blocks sealed.
    pub height: u64,
    /// The last block's hash ([`Hash32::ZERO`] before the first block).
    pub tip: Hash32,
    /// Transactions pooled.
    pub mempool: usize,
    /// Their canonical bytes.
    pub mempool_bytes: usize,
    /// Coins in sealed outputs (the sum of sealed grants).
    pub supply: u64,
    /// Confirmed unspent outputs.
    pub utxos: usize,
}

/// What a leader seals next: the pooled transactions it takes, on top of the tip.
#[derive(Clone, Debug)]
pub struct Template {
    /// Height of the block to seal.
    pub height: u64,
    /// The tip it extends.
    pub prev: Hash32,
    /// The transactions, in pool order.
    pub txs: Vec<Transaction>,
    /// Their ids.
    pub txids: Vec<Hash32>,
}

impl Ledger {
    /// An empty ledger: no block, nothing pooled.
    pub fn new() -> Ledger {
        Ledger {
            utxos: MvccMap::new(),
            owned: MvccMap::new(),
            chain: Mutex::with_level("ledger-chain", CHAIN_LEVEL, Chain::default()),
            pool: Mutex::with_level("mempool", MEMPOOL_LEVEL, Mempool::default()),
            counters: Counters::default(),
        }
    }

    // ----- apply: the only writers, called by `State::apply` in log order -----

    /// Pools the grant of an account created at log `index`.
    pub fn apply_grant(&self, index: u64, to: &str, amount: u64) -> Result<(), LockError> {
        if amount == 0 {
            return Ok(());
        }
        let grant = Transaction::grant(to, amount, index);
        let mut pool = self.pool.lock()?;
        pool.insert(grant.txid(), grant, Vec::new());
        Ok(())
    }

    /// Pools `tx` spending `from`'s outputs, if it is valid against the confirmed outputs and
    /// the pool: the check of the outpoint index and the insertion under one `mempool` lock.
    /// A transaction `from` already made (pooled or sealed) changes nothing and gets its id
    /// again: a client that lost the answer submits the same bytes again safely.
    pub fn apply_submit(
        &self,
        from: &str,
        tx: Transaction,
        account_exists: impl Fn(&str) -> bool,
    ) -> Result<Result<Hash32, ErrorReply>, LockError> {
        let txid = tx.txid();
        // Apply is the only writer (this thread): nothing changes between here and the pool.
        if self.made_by(from, &txid)? {
            return Ok(Ok(txid));
        }
        let mut pool = self.pool.lock()?;
        let outcome = self.pool_checked(&mut pool, from, txid, tx, &account_exists);
        drop(pool);
        self.count(&outcome);
        Ok(outcome)
    }

    /// Pays `amount` from `from` to `to` with inputs the ledger picks (confirmed outputs by
    /// outpoint, then pooled ones, the fewest that cover it, the change back to `from`), then
    /// pools it as [`Ledger::apply_submit`] does. With `keyed` (an idempotency key and the
    /// logged clock), a transfer the payer already made with that key pools nothing and gets
    /// its txid (see [`keys`]); a new one is remembered under the key once pooled. The key's
    /// look-up, the pick, the pooling and the remembering are one `mempool` critical section.
    pub fn apply_transfer(
        &self,
        from: &str,
        to: &str,
        amount: u64,
        keyed: Option<(&str, u64)>,
        account_exists: impl Fn(&str) -> bool,
    ) -> Result<Result<Hash32, ErrorReply>, LockError> {
        let mut pool = self.pool.lock()?;
        if let Some((key, _)) = keyed
            && let Some(earlier) = pool.keys.find(from, key)
        {
            return Ok(earlier.repeat(to, amount));
        }
        let outcome = if account_exists(to) {
            self.pick(from, to, amount, &pool).and_then(|tx| {
                let txid = tx.txid();
                self.pool_checked(&mut pool, from, txid, tx, &account_exists)
            })
        } else {
            Err(no_such_user(to))
        };
        if let (Ok(txid), Some((key, at))) = (&outcome, keyed) {
            let transfer = KeyedTransfer {
                key: key.to_string(),
                to: to.to_string(),
                amount,
                txid: *txid,
                at,
            };
            pool.keys.remember(from, transfer);
        }
        drop(pool);
        self.count(&outcome);
        Ok(outcome)
    }

    /// Pools `tx` if it is valid (inputs, recipients, room in the pool): apply's check and
    /// insertion, under the caller's `mempool` lock.
    fn pool_checked(
        &self,
        pool: &mut Mempool,
        from: &str,
        txid: Hash32,
        tx: Transaction,
        account_exists: &impl Fn(&str) -> bool,
    ) -> Result<Hash32, ErrorReply> {
        let spends = self.validate(from, &tx, pool, |outpoint| self.utxos.get(outpoint))?;
        check_recipients(&tx, account_exists)?;
        if pool.len() >= MAX_POOL_TXS {
            return Err(ErrorReply::new(
                ErrorCode::Unavailable,
                "the mempool is full; retry once a block is sealed",
            ));
        }
        pool.insert(txid, tx, spends);
        Ok(txid)
    }

    /// Whether `from` made the transaction `txid`: it is pooled or sealed, and what it spends
    /// was `from`'s (its first input's owner, as the pool or the chain recorded it).
    fn made_by(&self, from: &str, txid: &Hash32) -> Result<bool, LockError> {
        let chain = self.chain.lock()?;
        let tx_at = |&(height, position): &(u64, u32)| {
            &chain.blocks[(height - 1) as usize].txs[position as usize]
        };
        if let Some(place) = chain.located.get(txid) {
            let payer = tx_at(place).inputs.first().and_then(|input| {
                let spent = tx_at(chain.located.get(&input.tx)?);
                spent.outputs.get(input.index as usize)
            });
            return Ok(payer.is_some_and(|output| output.to == from));
        }
        // As in `transaction`: the pool before the chain is let go.
        let pool = self.pool.lock()?;
        drop(chain);
        Ok(pool.payer(txid) == Some(from))
    }

    /// Applies a sealed block if it extends the tip and every check passes; `Err` says why it
    /// was refused (and nothing changed).
    pub fn apply_block(&self, block: &Block) -> Result<Result<(), String>, LockError> {
        let mut chain = self.chain.lock()?;
        let mut pool = self.pool.lock()?;
        let checked = self.check_block(&chain, &pool, block, Pooling::Required);
        Ok(match checked {
            Ok(effects) => {
                self.commit_block(&mut chain, block, effects);
                for txid in block.txids() {
                    pool.remove_sealed(&txid);
                }
                Ok(())
            }
            Err(why) => {
                self.counters.blocks_refused.fetch_add(1, Ordering::Relaxed);
                Err(why)
            }
        })
    }

    /// `Ok` if `user` may be deleted: it owns no coins, confirmed or pooled.
    pub fn check_empty(&self, user: &str) -> Result<Result<(), ErrorReply>, LockError> {
        let balance = self.balance(user)?;
        let total = i128::from(balance.confirmed) + i128::from(balance.pending);
        Ok(if total == 0 {
            Ok(())
        } else {
            Err(ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!(
                    "the account still owns {total} coins ({} confirmed, {} pending); transfer \
                     them to another account before deleting it",
                    balance.confirmed, balance.pending
                ),
            ))
        })
    }

    // ----- requests: checks and reads, never changing anything -----

    /// Checks `tx` as apply would, against a snapshot of the confirmed outputs and the pool as it
    /// is now: a refusal here is a refusal there, an acceptance is a good guess. `Ok(Some(txid))`:
    /// `from` already made it (apply's answer to a repeat: nothing to log).
    pub fn check(
        &self,
        from: &str,
        tx: &Transaction,
        account_exists: impl Fn(&str) -> bool,
    ) -> Result<Option<Hash32>, ErrorReply> {
        let txid = tx.txid();
        if self.made_by(from, &txid).map_err(lock_error)? {
            return Ok(Some(txid));
        }
        let snapshot = self.utxos.snapshot();
        let outcome = self
            .pool
            .lock()
            .map_err(lock_error)
            .and_then(|pool| self.validate(from, tx, &pool, |outpoint| snapshot.get(outpoint)))
            .and_then(|_| check_recipients(tx, &account_exists))
            .map(|()| None);
        if let Err(error) = &outcome {
            self.count_refusal(error.code);
        }
        outcome
    }

    /// Checks a transfer as apply would (enough spendable coins, a recipient). With a key the
    /// payer already used, the answer is apply's for a repeat: `Ok(Some(txid))` of the earlier
    /// transfer (nothing to log), or the refusal of a different transfer under that key.
    pub fn check_transfer(
        &self,
        from: &str,
        to: &str,
        amount: u64,
        key: Option<&str>,
        account_exists: impl Fn(&str) -> bool,
    ) -> Result<Option<Hash32>, ErrorReply> {
        let outcome = self.pool.lock().map_err(lock_error).and_then(|pool| {
            if let Some(earlier) = key.and_then(|key| pool.keys.find(from, key)) {
                return earlier.repeat(to, amount).map(Some);
            }
            if !account_exists(to) {
                return Err(no_such_user(to));
            }
            self.pick(from, to, amount, &pool).map(|_| None)
        });
        if let Err(error) = &outcome {
            self.count_refusal(error.code);
        }
        outcome
    }

    /// `user`'s balance.
    pub fn balance(&self, user: &str) -> Result<Balance, LockError> {
        // Under the `mempool` lock, which a block's apply holds while it moves outputs from the
        // pool to the confirmed maps: both read at one point, never one before a block and the
        // other after it.
        let pool = self.pool.lock()?;
        let confirmed = self.owned.get(user).map_or(0, |owned| owned.values().sum());
        let pending = pool.pending(user);
        drop(pool);
        Ok(Balance {
            confirmed,
            pending: i64::try_from(pending).unwrap_or(if pending < 0 {
                i64::MIN
            } else {
                i64::MAX
            }),
        })
    }

    /// The outputs `user` owns and can spend: confirmed ones no pooled transaction spends, then
    /// unspent outputs of pooled transactions.
    pub fn owned_by(&self, user: &str) -> Result<Vec<Owned>, LockError> {
        // Both under the `mempool` lock, as in `balance`.
        let pool = self.pool.lock()?;
        let confirmed = self.owned.get(user).unwrap_or_default();
        let mut owned: Vec<Owned> = confirmed
            .iter()
            .filter(|(outpoint, _)| pool.spender(outpoint).is_none())
            .map(|(outpoint, amount)| Owned {
                outpoint: *outpoint,
                amount: *amount,
                confirmed: true,
            })
            .collect();
        owned.extend(
            pool.unspent_of(user)
                .into_iter()
                .map(|(outpoint, amount)| Owned {
                    outpoint,
                    amount,
                    confirmed: false,
                }),
        );
        Ok(owned)
    }

    /// The transaction `txid`, sealed or pooled.
    pub fn transaction(&self, txid: &Hash32) -> Result<Option<Located>, LockError> {
        let chain = self.chain.lock()?;
        if let Some(&(height, position)) = chain.located.get(txid) {
            let block = &chain.blocks[(height - 1) as usize];
            return Ok(Some(Located {
                tx: block.txs[position as usize].clone(),
                block: Some(height),
            }));
        }
        // The pool while the chain is still held: a transaction being sealed is in one or the
        // other (a block's apply holds both), never in neither.
        let pool = self.pool.lock()?;
        drop(chain);
        Ok(pool.get(txid).map(|tx| Located {
            tx: tx.clone(),
            block: None,
        }))
    }

    /// The block at `height` (1 is the first).
    pub fn block(&self, height: u64) -> Result<Option<Arc<Block>>, LockError> {
        let chain = self.chain.lock()?;
        Ok(height
            .checked_sub(1)
            .and_then(|i| chain.blocks.get(i as usize).cloned()))
    }

    /// Transactions pooled (0 if the pool cannot be read).
    pub fn pooled(&self) -> usize {
        self.pool.lock().map_or(0, |pool| pool.len())
    }

    /// The chain's head and sizes.
    pub fn info(&self) -> Result<ChainInfo, LockError> {
        // The chain and the pool at one point (a block's apply holds both).
        let chain = self.chain.lock()?;
        let (height, tip, supply) = (chain.height(), chain.tip, chain.supply);
        let pool = self.pool.lock()?;
        drop(chain);
        Ok(ChainInfo {
            height,
            tip,
            mempool: pool.len(),
            mempool_bytes: pool.bytes(),
            supply,
            utxos: self.utxos.len(),
        })
    }

    /// What to seal next: up to `max_txs` pooled transactions in pool order on top of the tip,
    /// or `None` if nothing is pooled.
    pub fn template(&self, max_txs: usize) -> Result<Option<Template>, LockError> {
        let chain = self.chain.lock()?;
        let pool = self.pool.lock()?;
        if pool.is_empty() {
            return Ok(None);
        }
        let (txids, txs) = pool
            .in_order(max_txs.clamp(1, MAX_BLOCK_TXS))
            .into_iter()
            .unzip();
        Ok(Some(Template {
            height: chain.height() + 1,
            prev: chain.tip,
            txs,
            txids,
        }))
    }

    /// Transactions accepted (pooled by apply), refused by reason (by a request's check or by
    /// apply), and blocks refused.
    pub fn counters(&self) -> (u64, BTreeMap<&'static str, u64>, u64) {
        let refused = REFUSALS
            .iter()
            .zip(&self.counters.refused)
            .map(|(reason, count)| (*reason, count.load(Ordering::Relaxed)))
            .collect();
        (
            self.counters.accepted.load(Ordering::Relaxed),
            refused,
            self.counters.blocks_refused.load(Ordering::Relaxed),
        )
    }

    // ----- images -----

    /// The ledger at this moment, sharing the chain (O(pool) under the locks). Called between
    /// batches (see `State::capture`).
    pub fn capture(&self) -> Result<LedgerCapture, LockError> {
        let blocks = self.chain.lock()?.blocks.clone();
        let (pool, transfer_keys) = {
            let pool = self.pool.lock()?;
            (pool.in_order(usize::MAX), pool.keys.image())
        };
        Ok(LedgerCapture {
            blocks,
            pool: pool.into_iter().map(|(_, tx)| tx).collect(),
            transfer_keys,
        })
    }

    /// Replaces everything with `fresh`'s (a snapshot installed from the leader). Called
    /// between batches, with every mailbox shard held (see `State::install`).
    pub fn install(&self, fresh: Ledger) -> Result<(), LockError> {
        let mut chain = self.chain.lock()?;
        let mut pool = self.pool.lock()?;
        replace_all(&self.utxos, &fresh.utxos);
        replace_all(&self.owned, &fresh.owned);
        *chain = fresh.chain.into_inner();
        *pool = fresh.pool.into_inner();
        Ok(())
    }

    /// Every confirmed output, by outpoint.
    pub fn confirmed_outputs(&self) -> BTreeMap<Outpoint, Utxo> {
        self.utxos
            .snapshot()
            .iter()
            .map(|(outpoint, utxo)| (*outpoint, utxo.clone()))
            .collect()
    }

    /// A ledger holding exactly `image`: its blocks replayed from the first (every check but
    /// pool membership, which a replay cannot know), then its pool accepted again in order.
    /// `Err` names the first block or pooled transaction that does not check.
    pub fn from_image(image: LedgerImage) -> Result<Ledger, String> {
        let ledger = Ledger::new();
        {
            let mut chain = ledger.chain.lock().map_err(|e| e.to_string())?;
            let pool = ledger.pool.lock().map_err(|e| e.to_string())?;
            for block in &image.blocks {
                let effects = ledger.check_block(&chain, &pool, block, Pooling::Replay)?;
                ledger.commit_block(&mut chain, block, effects);
            }
        }
        let mut pool = ledger.pool.lock().map_err(|e| e.to_string())?;
        for tx in image.pool {
            let txid = tx.txid();
            let spends = match tx.grant {
                Some(_) => Vec::new(),
                None => {
                    let owner = tx
                        .inputs
                        .first()
                        .and_then(|input| {
                            ledger
                                .utxos
                                .get(input)
                                .or_else(|| pool.output(input).cloned())
                        })
                        .map(|utxo| utxo.owner)
                        .unwrap_or_default();
                    ledger
                        .validate(&owner, &tx, &pool, |outpoint| ledger.utxos.get(outpoint))
                        .map_err(|e| format!("pooled transaction {txid}: {}", e.message))?
                }
            };
            pool.insert(txid, tx, spends);
        }
        pool.keys = TransferKeys::from_image(image.transfer_keys);
        drop(pool);
        Ok(ledger)
    }

    // ----- the rules -----

    /// The outputs `tx` spends, if `from` may pool it: every input exists (confirmed, or an
    /// output of a pooled transaction), is `from`'s, and is not spent by a pooled transaction;
    /// the sums are equal.
    fn validate(
        &self,
        from: &str,
        tx: &Transaction,
        pool: &Mempool,
        confirmed: impl Fn(&Outpoint) -> Option<Utxo>,
    ) -> Result<Vec<Utxo>, ErrorReply> {
        tx.check_shape()?;
        let mut spends = Vec::with_capacity(tx.inputs.len());
        for input in &tx.inputs {
            let Some(utxo) = confirmed(input).or_else(|| pool.output(input).cloned()) else {
                return Err(ErrorReply::new(
                    ErrorCode::NoSuchOutput,
                    format!("output {input} does not exist or is spent"),
                ));
            };
            if utxo.owner != from {
                return Err(ErrorReply::new(
                    ErrorCode::NotOwner,
                    format!("output {input} is not yours"),
                ));
            }
            if let Some(spender) = pool.spender(input) {
                return Err(ErrorReply::new(
                    ErrorCode::DoubleSpend,
                    format!("output {input} is spent by pooled transaction {spender}"),
                ));
            }
            spends.push(utxo);
        }
        let inputs = spends
            .iter()
            .try_fold(0u64, |sum, utxo| sum.checked_add(utxo.amount));
        if inputs != tx.output_sum() {
            return Err(tx::invalid_transaction(format!(
                "the inputs hold {} coins and the outputs pay {}: they must be equal",
                inputs.map_or("too many".into(), |n| n.to_string()),
                tx.output_sum().unwrap_or(u64::MAX)
            )));
        }
        Ok(spends)
    }

    /// The transaction of a transfer: the fewest spendable outputs of `from` (confirmed by
    /// outpoint, then pooled by outpoint) that cover `amount`, the change back to `from`.
    fn pick(
        &self,
        from: &str,
        to: &str,
        amount: u64,
        pool: &Mempool,
    ) -> Result<Transaction, ErrorReply> {
        if amount == 0 {
            return Err(tx::invalid_transaction("a transfer of zero coins"));
        }
        let confirmed = self.owned.get(from).unwrap_or_default();
        let spendable = confirmed
            .iter()
            .filter(|(outpoint, _)| pool.spender(outpoint).is_none())
            .map(|(outpoint, amount)| (*outpoint, *amount))
            .chain(pool.unspent_of(from));
        let (mut inputs, mut sum) = (Vec::new(), 0u64);
        for (outpoint, coins) in spendable {
            if sum >= amount {
                break;
            }
            inputs.push(outpoint);
            sum = sum.saturating_add(coins);
        }
        if sum < amount {
            return Err(ErrorReply::new(
                ErrorCode::InsufficientFunds,
                format!("{from} can spend {sum} coins, fewer than {amount}"),
            ));
        }
        if inputs.len() > tx::MAX_INPUTS {
            return Err(tx::invalid_transaction(format!(
                "paying {amount} takes {} of your outputs, more than {} inputs: send \
                 yourself a smaller amount first to merge them",
                inputs.len(),
                tx::MAX_INPUTS
            )));
        }
        let mut outputs = vec![Output {
            to: to.to_string(),
            amount,
        }];
        if sum > amount {
            outputs.push(Output {
                to: from.to_string(),
                amount: sum - amount,
            });
        }
        Ok(Transaction {
            inputs,
            outputs,
            grant: None,
        })
    }

    /// What applying `block` on top of `chain` changes, if every check passes.
    fn check_block(
        &self,
        chain: &Chain,
        pool: &Mempool,
        block: &Block,
        pooling: Pooling,
    ) -> Result<BlockEffects, String> {
        let header = &block.header;
        if header.height != chain.height() + 1 || header.prev != chain.tip {
            return Err(format!(
                "block {} on {} does not extend the tip (height {}, hash {})",
                header.height,
                header.prev,
                chain.height(),
                chain.tip
            ));
        }
        if block.txs.len() > MAX_BLOCK_TXS {
            return Err(format!(
                "block {}: {} transactions, more than {MAX_BLOCK_TXS}",
                header.height,
                block.txs.len()
            ));
        }
        let txids = block.txids();
        block.check_alone(&txids)?;
        let mut effects = BlockEffects::default();
        let mut created: HashMap<Outpoint, Utxo> = HashMap::new();
        for (tx, txid) in block.txs.iter().zip(&txids) {
            let bad = |why: String| format!("block {}: transaction {txid}: {why}", header.height);
            if pooling == Pooling::Required && !pool.contains(txid) {
                return Err(bad("not in the mempool".into()));
            }
            if effects.located.contains_key(txid) || chain.located.contains_key(txid) {
                return Err(bad("sealed twice".into()));
            }
            match tx.grant {
                Some(_) => {
                    if !tx.inputs.is_empty() || tx.outputs.len() != 1 || tx.outputs[0].amount == 0 {
                        return Err(bad("a grant has no input and one output".into()));
                    }
                    effects.granted = effects
                        .granted
                        .checked_add(tx.outputs[0].amount)
                        .ok_or_else(|| bad("the supply overflows".into()))?;
                }
                None => {
                    tx.check_shape().map_err(|e| bad(e.message))?;
                    let mut sum = 0u64;
                    for input in &tx.inputs {
                        let utxo = match created.remove(input) {
                            Some(utxo) => utxo,
                            None if effects.spent.contains_key(input) => {
                                return Err(bad(format!("output {input} is spent twice")));
                            }
                            None => self.utxos.get(input).ok_or_else(|| {
                                bad(format!("output {input} does not exist or is spent"))
                            })?,
                        };
                        sum = sum.saturating_add(utxo.amount);
                        effects.spent.insert(*input, utxo);
                    }
                    if Some(sum) != tx.output_sum() {
                        return Err(bad("the inputs' and outputs' sums differ".into()));
                    }
                }
            }
            for (index, output) in tx.outputs.iter().enumerate() {
                created.insert(
                    Transaction::outpoint(*txid, index),
                    Utxo {
                        owner: output.to.clone(),
                        amount: output.amount,
                    },
                );
            }
            effects.located.insert(
                *txid,
                (
                    header.height,
                    u32::try_from(effects.located.len()).expect("at most MAX_BLOCK_TXS"),
                ),
            );
        }
        // Spent within the block: neither created nor spent as far as the chain's outputs go.
        effects
            .spent
            .retain(|outpoint, _| !effects.located.contains_key(&outpoint.tx));
        effects.created = created;
        Ok(effects)
    }

    /// Applies checked effects: the confirmed outputs and owners (one MVCC commit each), then
    /// the chain.
    fn commit_block(&self, chain: &mut Chain, block: &Block, effects: BlockEffects) {
        let mut owners: BTreeMap<String, OrdMap<Outpoint, u64>> = BTreeMap::new();
        let owner = |owners: &mut BTreeMap<String, OrdMap<Outpoint, u64>>, name: &str| {
            if !owners.contains_key(name) {
                let now = self.owned.get(name).unwrap_or_default();
                owners.insert(name.to_string(), now);
            }
        };
        let mut utxos = self.utxos.begin();
        for (outpoint, utxo) in &effects.spent {
            utxos.remove(outpoint);
            owner(&mut owners, &utxo.owner);
            owners.get_mut(&utxo.owner).map(|map| map.remove(outpoint));
        }
        for (outpoint, utxo) in &effects.created {
            utxos.insert(*outpoint, utxo.clone());
            owner(&mut owners, &utxo.owner);
            owners
                .get_mut(&utxo.owner)
                .map(|map| map.insert(*outpoint, utxo.amount));
        }
        let mut owned = self.owned.begin();
        for (name, map) in owners {
            if map.is_empty() {
                owned.remove(&name);
            } else {
                owned.insert(name, map);
            }
        }
        // Apply is the only writer of both maps, one command at a time: no conflict can happen.
        let (utxos, owned) = (utxos.commit(), owned.commit());
        debug_assert!(
            utxos.is_ok() && owned.is_ok(),
            "the ledger changed outside apply"
        );
        chain.supply += effects.granted;
        for (txid, place) in effects.located {
            chain.located.insert(txid, place);
        }
        chain.tip = block.hash();
        chain.blocks.push_back(Arc::new(block.clone()));
    }

    fn count(&self, outcome: &Result<Hash32, ErrorReply>) {
        match outcome {
            Ok(_) => {
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => self.count_refusal(error.code),
        }
    }

    fn count_refusal(&self, code: ErrorCode) {
        let reason = match code {
            ErrorCode::DoubleSpend => "double_spend",
            ErrorCode::NoSuchOutput => "no_such_output",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::InvalidTransaction => "invalid_transaction",
            ErrorCode::InsufficientFunds => "insufficient_funds",
            ErrorCode::Unavailable => "mempool_full",
            ErrorCode::NoSuchUser => "no_such_user",
            _ => "other",
        };
        let at = REFUSALS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REFUSALS.len() - 1);
        self.counters.refused[at].fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether a block's transactions must be in the pool (live apply) or cannot be (a replay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pooling {
    Required,
    Replay,
}

/// What a checked block changes.
#[derive(Default)]
struct BlockEffects {
    spent: HashMap<Outpoint, Utxo>,
    created: HashMap<Outpoint, Utxo>,
    granted: u64,
    located: HashMap<Hash32, (u64, u32)>,
}

/// Makes `map` hold exactly what `wanted` holds, in one commit.
fn replace_all<K, V>(map: &MvccMap<K, V>, wanted: &MvccMap<K, V>)
where
    K: Clone + Ord + std::hash::Hash,
    V: Clone,
{
    let (now, wanted) = (map.snapshot(), wanted.snapshot());
    let mut tx = map.begin();
    for (key, _) in now.iter() {
        if !wanted.contains_key(key) {
            tx.remove(key);
        }
    }
    for (key, value) in wanted.iter() {
        tx.insert(key.clone(), value.clone());
    }
    // Apply, the only other writer, waits for the batch lock the installer holds.
    let _ = tx.commit();
}

fn check_recipients(tx: &Transaction, exists: &impl Fn(&str) -> bool) -> Result<(), ErrorReply> {
    match tx.outputs.iter().find(|output| !exists(&output.to)) {
        Some(output) => Err(tx::invalid_transaction(format!(
            "an output pays {:?}, which is no account",
            output.to
        ))),
        None => Ok(()),
    }
}

fn no_such_user(name: &str) -> ErrorReply {
    ErrorReply::new(ErrorCode::NoSuchUser, format!("no such user {name:?}"))
}

fn lock_error(error: LockError) -> ErrorReply {
    tracing::error!(%error, "lock refused inside the ledger");
    ErrorReply::new(ErrorCode::Internal, format!("internal lock error: {error}"))
}
