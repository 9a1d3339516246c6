//! The ledger's requests: reads after a read barrier, changes as commands.
//!
//! ```text
//! transfer / submit_transaction ─► logged in? ─► read barrier (this member has applied every
//!     change acknowledged before) ─► Ledger::check* against a snapshot of the confirmed outputs
//!     and the pool: most refusals end here, and a keyed transfer already made is answered with
//!     its txid ─► Command::Transfer / KeyedTransfer / SubmitTransaction ─► log ─► apply checks
//!     again (the key, the outpoint index and the insertion under one lock) ─► Pooled{txid}
//! get_balance, list_utxos, get_transaction, get_block, chain_info ─► logged in? ─► read barrier
//!     ─► read the state
//! ```

use std::sync::Arc;

use super::{Core, Done, checks, lock_failed};
use crate::ledger::Transaction;
use crate::protocol::{BlockInfo, ErrorCode, ErrorReply, Reply, Request, UtxoEntry, limits};
use crate::state::{Command, Outcome};

impl Core {
    /// Handles a ledger request (see the module's flow).
    pub(super) fn handle_ledger(
        self: &Arc<Self>,
        mut connection: Box<super::Connection>,
        request: Request,
        done: Done,
    ) {
        let user = match self.current_user(&mut connection) {
            Ok(user) => user,
            Err(error) => return done(connection, Err(error)),
        };
        if let Request::Transfer { to, key, .. } = &request
            && let Err(error) =
                checks::username(to).and_then(|()| key.as_deref().map_or(Ok(()), checks::key))
        {
            return done(connection, Err(error));
        }
        let core = Arc::clone(self);
        self.log.read_barrier(Box::new(move |ready| {
            if let Err(error) = ready {
                return done(connection, Err(error));
            }
            match core.ledger_step(&user, request) {
                Step::Propose(command) => {
                    core.commit(connection, command, done, |_, outcome| match outcome {
                        Outcome::Pooled { txid } => Reply::Pooled { txid },
                        _ => Reply::Done {},
                    })
                }
                Step::Answer(answer) => done(connection, answer),
            }
        }));
    }

    /// The command a change request becomes once checked, or the answer (a read's, a refusal).
    fn ledger_step(&self, user: &str, request: Request) -> Step {
        let ledger = self.state.ledger();
        let exists = |name: &str| self.state.has_account(name);
        let answer = Step::Answer;
        match request {
            Request::SubmitTransaction { inputs, outputs } => {
                let tx = Transaction {
                    inputs,
                    outputs,
                    grant: None,
                };
                match ledger.check(user, &tx, exists) {
                    // Submitted again (the answer was lost): already pooled or sealed.
                    Ok(Some(txid)) => Step::Answer(Ok(Reply::Pooled { txid })),
                    Ok(None) => Step::Propose(Command::SubmitTransaction {
                        from: user.to_string(),
                        tx,
                    }),
                    Err(error) => Step::Answer(Err(error)),
                }
            }
            Request::Transfer { to, amount, key } => {
                match ledger.check_transfer(user, &to, amount, key.as_deref(), exists) {
                    // A repeat of a keyed transfer this member has applied: its answer again.
                    Ok(Some(txid)) => Step::Answer(Ok(Reply::Pooled { txid })),
                    Ok(None) => Step::Propose(match key {
                        None => Command::Transfer {
                            from: user.to_string(),
                            to,
                            amount,
                        },
                        Some(key) => Command::KeyedTransfer {
                            from: user.to_string(),
                            to,
                            amount,
                            key,
                            timestamp: super::now_ms(),
                        },
                    }),
                    Err(error) => Step::Answer(Err(error)),
                }
            }
            Request::GetBalance {} => answer(
                ledger
                    .balance(user)
                    .map(|balance| Reply::Balance {
                        confirmed: balance.confirmed,
                        pending: balance.pending,
                    })
                    .map_err(lock_failed),
            ),
            Request::ListUtxos {} => answer(
                ledger
                    .owned_by(user)
                    .map(|owned| Reply::Utxos {
                        utxos: owned
                            .into_iter()
                            .take(limits::MAX_LISTED_UTXOS)
                            .map(|o| UtxoEntry {
                                tx: o.outpoint.tx,
                                index: o.outpoint.index,
                                amount: o.amount,
                                confirmed: o.confirmed,
                            })
                            .collect(),
                    })
                    .map_err(lock_failed),
            ),
            Request::GetTransaction { txid } => {
                answer(match ledger.transaction(&txid).map_err(lock_failed) {
                    Ok(Some(located)) => Ok(Reply::Transaction {
                        txid,
                        inputs: located.tx.inputs,
                        outputs: located.tx.outputs,
                        block: located.block,
                        grant: located.tx.grant,
                    }),
                    Ok(None) => Err(not_found(format!("no transaction {txid}"))),
                    Err(error) => Err(error),
                })
            }
            Request::GetBlock { height } => {
                answer(match ledger.block(height).map_err(lock_failed) {
                    Ok(Some(block)) => Ok(Reply::Block(BlockInfo {
                        height,
                        hash: block.hash(),
                        prev: block.header.prev,
                        merkle_root: block.header.merkle_root,
                        timestamp: block.header.timestamp,
                        difficulty: block.header.difficulty,
                        nonce: block.header.nonce,
                        txids: block.txids(),
                    })),
                    Ok(None) => Err(not_found(format!(
                        "no block at height {height} (the chain has {})",
                        ledger.info().map_or(0, |info| info.height)
                    ))),
                    Err(error) => Err(error),
                })
            }
            Request::ChainInfo {} => answer(
                ledger
                    .info()
                    .map(|info| Reply::Chain {
                        height: info.height,
                        tip: info.tip,
                        mempool: info.mempool as u64,
                        difficulty_bits: self.config.difficulty_bits,
                        supply: info.supply,
                    })
                    .map_err(lock_failed),
            ),
            other => answer(Err(ErrorReply::new(
                ErrorCode::Internal,
                format!("{} is not a ledger operation", other.op().name()),
            ))),
        }
    }
}

/// What a ledger request comes to once checked.
enum Step {
    /// A change: propose it; apply's outcome is the answer.
    Propose(Command),
    /// A read's answer, or a refusal: nothing to log.
    Answer(Result<Reply, ErrorReply>),
}

fn not_found(message: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::NotFound, message)
}
