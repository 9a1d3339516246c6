//! The mempool: accepted transactions not yet in a block, and the outpoint index that refuses a
//! second spend of one output.
//!
//! | part | what |
//! |---|---|
//! | `txs`, `order` | pooled transactions by id, and their ids in acceptance order |
//! | `spent_by` | the outpoint index: every output a pooled transaction spends → that transaction |
//! | `outputs` | outputs of pooled transactions (spendable by later transactions before a block) |
//! | `unspent` | per owner, the pooled outputs no pooled transaction spends |
//! | `pending` | per account, the net effect of pooled transactions on its coins |
//! | `keys` | each payer's recent keyed transfers (`super::keys`): under this lock so that a key's look-up, the pooling and its remembering are one step |
//!
//! Invariant: an outpoint is in `spent_by` at most once, so two pooled transactions never spend
//! one output. The pool is part of the replicated state: it changes only in
//! [`Ledger`](super::Ledger)'s apply functions, under the `mempool` lock, so the check of the
//! outpoint index and the insertion are one atomic step, in log order on every member.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::keys::TransferKeys;
use super::tx::{Hash32, Outpoint, Transaction, Utxo};

/// A transaction in the pool.
#[derive(Clone, Debug)]
pub struct Pooled {
    /// The transaction.
    pub tx: Transaction,
    /// Its acceptance number (increasing).
    seq: u64,
    /// The outputs it spends, as they were when it was accepted.
    spends: Vec<Utxo>,
    /// Its canonical size in bytes.
    bytes: usize,
}

/// Pooled transactions and their bookkeeping.
#[derive(Debug, Default)]
pub struct Mempool {
    txs: HashMap<Hash32, Pooled>,
    order: BTreeMap<u64, Hash32>,
    next_seq: u64,
    spent_by: HashMap<Outpoint, Hash32>,
    outputs: HashMap<Outpoint, Utxo>,
    unspent: HashMap<String, BTreeSet<Outpoint>>,
    pending: HashMap<String, i128>,
    bytes: usize,
    /// Idempotency keys of pooled transfers (they outlive the transactions' stay in the pool).
    pub keys: TransferKeys,
}

impl Mempool {
    /// Pooled transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether nothing is pooled.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// The canonical bytes of every pooled transaction.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `txid` is pooled.
    pub fn contains(&self, txid: &Hash32) -> bool {
        self.txs.contains_key(txid)
    }

    /// The pooled transaction `txid`.
    pub fn get(&self, txid: &Hash32) -> Option<&Transaction> {
        self.txs.get(txid).map(|pooled| &pooled.tx)
    }

    /// Who pooled `txid`: the owner of what it spends (`None`: not pooled, or a grant).
    pub fn payer(&self, txid: &Hash32) -> Option<&str> {
        let spent = self.txs.get(txid)?.spends.first()?;
        Some(&spent.owner)
    }

    /// The pooled transaction spending `outpoint`, if any.
    pub fn spender(&self, outpoint: &Outpoint) -> Option<Hash32> {
        self.spent_by.get(outpoint).copied()
    }

    /// The output `outpoint` of a pooled transaction (spent in the pool or not).
    pub fn output(&self, outpoint: &Outpoint) -> Option<&Utxo> {
        self.outputs.get(outpoint)
    }

    /// `user`'s pooled outputs that no pooled transaction spends, by outpoint.
    pub fn unspent_of(&self, user: &str) -> Vec<(Outpoint, u64)> {
        self.unspent.get(user).map_or_else(Vec::new, |outpoints| {
            outpoints
                .iter()
                .map(|outpoint| (*outpoint, self.outputs[outpoint].amount))
                .collect()
        })
    }

    /// The net effect of pooled transactions on `user`'s coins (negative when they spend more
    /// of its confirmed coins than they pay it).
    pub fn pending(&self, user: &str) -> i128 {
        self.pending.get(user).copied().unwrap_or(0)
    }

    /// The pooled transactions in acceptance order (parents before the transactions spending
    /// their outputs), at most `limit`.
    pub fn in_order(&self, limit: usize) -> Vec<(Hash32, Transaction)> {
        self.order
            .values()
            .take(limit)
            .map(|txid| (*txid, self.txs[txid].tx.clone()))
            .collect()
    }

    /// Pools `tx`, whose inputs (already checked: existing, unspent in the pool) are `spends`.
    pub fn insert(&mut self, txid: Hash32, tx: Transaction, spends: Vec<Utxo>) {
        debug_assert_eq!(tx.inputs.len(), spends.len());
        for (input, spent) in tx.inputs.iter().zip(&spends) {
            let previous = self.spent_by.insert(*input, txid);
            debug_assert!(previous.is_none(), "{input} spent twice in the pool");
            if let Some(owned) = self.unspent.get_mut(&spent.owner) {
                owned.remove(input);
            }
            *self.pending.entry(spent.owner.clone()).or_default() -= i128::from(spent.amount);
        }
        for (index, output) in tx.outputs.iter().enumerate() {
            let outpoint = Transaction::outpoint(txid, index);
            self.outputs.insert(
                outpoint,
                Utxo {
                    owner: output.to.clone(),
                    amount: output.amount,
                },
            );
            self.unspent
                .entry(output.to.clone())
                .or_default()
                .insert(outpoint);
            *self.pending.entry(output.to.clone()).or_default() += i128::from(output.amount);
        }
        let bytes = tx.canonical_bytes().len();
        self.bytes += bytes;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, txid);
        self.txs.insert(
            txid,
            Pooled {
                tx,
                seq,
                spends,
                bytes,
            },
        );
    }

    /// Takes `txid` out of the pool because a block sealed it: what it spent is spent in the
    /// chain now, and its outputs are chain outputs (a pooled transaction spending one keeps its
    /// entry in the outpoint index).
    pub fn remove_sealed(&mut self, txid: &Hash32) -> Option<Transaction> {
        let pooled = self.txs.remove(txid)?;
        self.order.remove(&pooled.seq);
        self.bytes -= pooled.bytes;
        for (input, spent) in pooled.tx.inputs.iter().zip(&pooled.spends) {
            self.spent_by.remove(input);
            self.add_pending(&spent.owner, i128::from(spent.amount));
        }
        for (index, output) in pooled.tx.outputs.iter().enumerate() {
            let outpoint = Transaction::outpoint(*txid, index);
            self.outputs.remove(&outpoint);
            if let Some(owned) = self.unspent.get_mut(&output.to) {
                owned.remove(&outpoint);
                if owned.is_empty() {
                    self.unspent.remove(&output.to);
                }
            }
            self.add_pending(&output.to, -i128::from(output.amount));
        }
        Some(pooled.tx)
    }

    fn add_pending(&mut self, user: &str, delta: i128) {
        let entry = self.pending.entry(user.to_string()).or_default();
        *entry += delta;
        if *entry == 0 {
            self.pending.remove(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::tx::Output;

    fn utxo(owner: &str, amount: u64) -> Utxo {
        Utxo {
            owner: owner.into(),
            amount,
        }
    }

    #[test]
    fn a_pooled_spend_is_indexed_its_outputs_spendable_and_sealing_undoes_the_bookkeeping() {
        let mut pool = Mempool::default();
        let grant = Transaction::grant("ann", 100, 1);
        let grant_id = grant.txid();
        pool.insert(grant_id, grant, vec![]);
        assert_eq!(pool.pending("ann"), 100);
        let coin = Transaction::outpoint(grant_id, 0);
        assert_eq!(pool.unspent_of("ann"), vec![(coin, 100)]);

        let pay = Transaction {
            inputs: vec![coin],
            outputs: vec![
                Output {
                    to: "ben".into(),
                    amount: 30,
                },
                Output {
                    to: "ann".into(),
                    amount: 70,
                },
            ],
            grant: None,
        };
        let pay_id = pay.txid();
        pool.insert(pay_id, pay, vec![utxo("ann", 100)]);
        assert_eq!(pool.spender(&coin), Some(pay_id));
        assert_eq!((pool.pending("ann"), pool.pending("ben")), (70, 30));
        assert_eq!(pool.unspent_of("ann").len(), 1);
        assert_eq!(
            pool.in_order(10)
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>(),
            vec![grant_id, pay_id]
        );

        // The grant is sealed: ann's 100 are confirmed, and still spent by the pooled payment.
        pool.remove_sealed(&grant_id).unwrap();
        assert_eq!(pool.spender(&coin), Some(pay_id));
        assert_eq!((pool.pending("ann"), pool.pending("ben")), (-30, 30));
        pool.remove_sealed(&pay_id).unwrap();
        assert!(pool.is_empty());
        assert_eq!((pool.pending("ann"), pool.pending("ben")), (0, 0));
        assert_eq!(pool.bytes(), 0);
        assert!(pool.unspent_of("ann").is_empty());
        assert!(pool.spender(&coin).is_none());
    }
}
