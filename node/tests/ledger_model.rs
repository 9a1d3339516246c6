//! The ledger against a sequential model, through `State::apply` (the only writer), and the
//! rules one by one.
//!
//! What it proves:
//! - random grants, transfers, hand-made transactions (good and bad) and sealed blocks give the
//!   same acceptances, refusal codes and balances as a model that knows only the rules: an
//!   output exists, is the sender's, is spent at most once (in the chain or the pool), sums match;
//! - at every block, the confirmed balances add up to the sealed grants (supply is conserved);
//! - a transaction submitted again by its maker (pooled or sealed) changes nothing and gets its
//!   id;
//! - a keyed transfer sent again pays nothing and gets the first one's txid; another transfer
//!   under a used key is refused;
//! - a snapshot image restores the same ledger (keys included), and a block changed in it is
//!   refused by name;
//! - a block that does not extend the tip, or holds a transaction not in the pool, is refused.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sync_kit::work::RangeCoordinator;
use synckit_node::ledger::block::{self, BlockHeader, Sealed};
use synckit_node::ledger::{Block, Hash32, Outpoint, Output, Transaction};
use synckit_node::protocol::ErrorCode;
use synckit_node::state::{Command, Outcome, State};

const USERS: [&str; 4] = ["ann", "ben", "cat", "dan"];
const GRANT: u64 = 100;

/// What the model knows of one output.
#[derive(Clone, Debug)]
struct Coin {
    owner: String,
    amount: u64,
    confirmed: bool,
    spent_in_pool: bool,
}

#[derive(Default)]
struct Model {
    coins: BTreeMap<Outpoint, Coin>,
    /// Pooled transactions in order, with the outpoints they spend.
    pool: Vec<(Hash32, Transaction)>,
    /// Every transaction accepted from a sender (pooled or sealed since), by id: its sender.
    made: BTreeMap<Hash32, String>,
    sealed_grants: u64,
}

impl Model {
    fn accept(
        &mut self,
        txid: Hash32,
        tx: &Transaction,
        from: Option<&str>,
    ) -> Result<(), ErrorCode> {
        if let Some(from) = from {
            if tx.check_shape().is_err() {
                return Err(ErrorCode::InvalidTransaction);
            }
            let mut sum = 0u64;
            for input in &tx.inputs {
                let coin = self.coins.get(input).ok_or(ErrorCode::NoSuchOutput)?;
                if coin.owner != from {
                    return Err(ErrorCode::NotOwner);
                }
                if coin.spent_in_pool {
                    return Err(ErrorCode::DoubleSpend);
                }
                sum += coin.amount;
            }
            if Some(sum) != tx.output_sum() {
                return Err(ErrorCode::InvalidTransaction);
            }
            if tx.outputs.iter().any(|o| !USERS.contains(&o.to.as_str())) {
                return Err(ErrorCode::InvalidTransaction);
            }
        }
        for input in &tx.inputs {
            self.coins.get_mut(input).unwrap().spent_in_pool = true;
        }
        for (index, output) in tx.outputs.iter().enumerate() {
            self.coins.insert(
                Transaction::outpoint(txid, index),
                Coin {
                    owner: output.to.clone(),
                    amount: output.amount,
                    confirmed: false,
                    spent_in_pool: false,
                },
            );
        }
        self.pool.push((txid, tx.clone()));
        if let Some(from) = from {
            self.made.insert(txid, from.to_string());
        }
        Ok(())
    }

    fn seal(&mut self, count: usize) {
        for (txid, tx) in self
            .pool
            .drain(..count.min(self.pool.len()))
            .collect::<Vec<_>>()
        {
            for input in &tx.inputs {
                self.coins.remove(input);
            }
            if tx.is_grant() {
                self.sealed_grants += tx.outputs[0].amount;
            }
            for index in 0..tx.outputs.len() {
                if let Some(coin) = self.coins.get_mut(&Transaction::outpoint(txid, index)) {
                    coin.confirmed = true;
                }
            }
        }
    }

    fn balance(&self, user: &str) -> (u64, i64) {
        let mut confirmed = 0u64;
        let mut spendable = 0i64;
        for coin in self.coins.values().filter(|c| c.owner == user) {
            if coin.confirmed {
                confirmed += coin.amount;
            }
            if !coin.spent_in_pool {
                spendable += coin.amount as i64;
            }
        }
        (confirmed, spendable - confirmed as i64)
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// A transfer; with `key`, keyed (one of three keys per payer, so repeats happen: the same
    /// transfer again, or another transfer under a used key).
    Transfer {
        from: usize,
        to: usize,
        amount: u64,
        key: Option<usize>,
    },
    /// Spend the `pick`-th outputs of someone (maybe not `from`'s), paying `to`, with the sum off
    /// by `skew`.
    Submit {
        from: usize,
        owner: usize,
        pick: usize,
        to: usize,
        skew: i8,
    },
    Seal {
        count: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..4usize, 0..4usize, 1..150u64, prop::option::of(0..3usize))
            .prop_map(|(from, to, amount, key)| Step::Transfer { from, to, amount, key }),
        3 => (0..4usize, 0..4usize, 0..3usize, 0..4usize, prop_oneof![4 => Just(0i8), 1 => Just(1i8), 1 => Just(-1i8)])
            .prop_map(|(from, owner, pick, to, skew)| Step::Submit { from, owner, pick, to, skew }),
        2 => (1..6usize).prop_map(|count| Step::Seal { count }),
    ]
}

struct Harness {
    state: State,
    index: u64,
    coordinator: RangeCoordinator,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            state: State::new(),
            index: 0,
            coordinator: RangeCoordinator::new(64),
        }
    }

    fn apply(&mut self, command: Command) -> Outcome {
        self.index += 1;
        self.state.apply(self.index, &command).unwrap()
    }

    fn open(&mut self, user: &str) -> Outcome {
        self.apply(Command::OpenAccount {
            username: user.into(),
            password_hash: "$argon2id$x".into(),
            created: 0,
            grant: GRANT,
        })
    }

    /// Seals the first `count` pooled transactions on the tip, with a little work.
    fn seal(&mut self, count: usize) -> Option<Block> {
        let template = self.state.ledger().template(count).unwrap()?;
        let header = BlockHeader {
            height: template.height,
            prev: template.prev,
            merkle_root: block::merkle_root(&template.txids),
            timestamp: self.index,
            difficulty: 4,
            nonce: 0,
        };
        let Sealed::Found(header) = block::seal(&header, &self.coordinator, 1) else {
            panic!("4 bits of work exist");
        };
        let block = Block {
            header,
            txs: template.txs,
        };
        assert_eq!(
            self.apply(Command::SealBlock {
                block: block.clone()
            }),
            Outcome::Done
        );
        Some(block)
    }
}

fn code(outcome: &Outcome) -> Result<(), ErrorCode> {
    match outcome {
        Outcome::Pooled { .. } => Ok(()),
        Outcome::Refused(error) => Err(error.code),
        other => panic!("unexpected {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_decides_as_the_sequential_model(steps in prop::collection::vec(step(), 1..40)) {
        let mut harness = Harness::new();
        let mut model = Model::default();
        // (payer, key) → (payee, amount, txid) of the keyed transfers pooled.
        let mut keyed = BTreeMap::new();
        for user in USERS {
            prop_assert_eq!(harness.open(user), Outcome::Done);
            let grant = Transaction::grant(user, GRANT, harness.index);
            model.accept(grant.txid(), &grant, None).unwrap();
        }
        for step in steps {
            match step {
                Step::Transfer { from, to, amount, key } => {
                    let command = match key {
                        None => Command::Transfer {
                            from: USERS[from].into(),
                            to: USERS[to].into(),
                            amount,
                        },
                        Some(key) => Command::KeyedTransfer {
                            from: USERS[from].into(),
                            to: USERS[to].into(),
                            amount,
                            key: format!("k{key}"),
                            timestamp: 1_000,
                        },
                    };
                    let outcome = harness.apply(command);
                    // A key used before: the same transfer gets its txid, nothing changes; another
                    // is refused. Either way, nothing is pooled.
                    if let Some(&(earlier_to, earlier_amount, earlier_txid)) =
                        key.and_then(|key| keyed.get(&(from, key)))
                    {
                        if (earlier_to, earlier_amount) == (to, amount) {
                            prop_assert_eq!(outcome, Outcome::Pooled { txid: earlier_txid });
                        } else {
                            prop_assert!(
                                matches!(&outcome, Outcome::Refused(e) if e.code == ErrorCode::InvalidArgument),
                                "{:?}", outcome
                            );
                        }
                    } else {
                    match &outcome {
                        Outcome::Pooled { txid } => {
                            if let Some(key) = key {
                                keyed.insert((from, key), (to, amount, *txid));
                            }
                            let tx = harness.state.ledger().transaction(txid).unwrap().unwrap().tx;
                            prop_assert_eq!(model.accept(*txid, &tx, Some(USERS[from])), Ok(()));
                        }
                        Outcome::Refused(error) => {
                            prop_assert_eq!(error.code, ErrorCode::InsufficientFunds);
                            let (confirmed, pending) = model.balance(USERS[from]);
                            prop_assert!(((confirmed as i64 + pending) as u64) < amount);
                        }
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                    }
                }
                Step::Submit { from, owner, pick, to, skew } => {
                    let owned: Vec<(Outpoint, u64)> = model
                        .coins
                        .iter()
                        .filter(|(_, c)| c.owner == USERS[owner])
                        .map(|(o, c)| (*o, c.amount))
                        .collect();
                    let (inputs, sum): (Vec<Outpoint>, u64) = match owned.get(pick) {
                        Some(&(outpoint, amount)) => (vec![outpoint], amount),
                        // Nothing owned: an output that does not exist.
                        None => (vec![Outpoint { tx: Hash32([9; 32]), index: 0 }], 10),
                    };
                    let amount = sum.saturating_add_signed(skew.into()).max(1);
                    let tx = Transaction {
                        inputs,
                        outputs: vec![Output { to: USERS[to].into(), amount }],
                        grant: None,
                    };
                    let outcome = harness.apply(Command::SubmitTransaction {
                        from: USERS[from].into(),
                        tx: tx.clone(),
                    });
                    // A refusal changes neither (the model's accept returns before it changes). The
                    // same transaction submitted again by its maker changes nothing and is
                    // answered with its id.
                    let txid = tx.txid();
                    let expected = if model.made.get(&txid).is_some_and(|maker| maker == USERS[from]) {
                        prop_assert_eq!(&outcome, &Outcome::Pooled { txid });
                        Ok(())
                    } else {
                        model.accept(txid, &tx, Some(USERS[from]))
                    };
                    prop_assert_eq!(code(&outcome), expected);
                }
                Step::Seal { count } => {
                    if harness.seal(count).is_some() {
                        model.seal(count);
                    }
                    let info = harness.state.ledger().info().unwrap();
                    let confirmed: u64 = USERS
                        .iter()
                        .map(|u| harness.state.ledger().balance(u).unwrap().confirmed)
                        .sum();
                    prop_assert_eq!(confirmed, info.supply);
                    prop_assert_eq!(info.supply, model.sealed_grants);
                }
            }
            for user in USERS {
                let balance = harness.state.ledger().balance(user).unwrap();
                prop_assert_eq!((balance.confirmed, balance.pending), model.balance(user), "{}", user);
            }
        }
        // The image restores the same ledger.
        let image = harness.state.image().unwrap();
        let restored = State::from_image(image.clone()).unwrap();
        prop_assert_eq!(restored.digest().unwrap().1, harness.state.digest().unwrap().1);
        prop_assert_eq!(
            restored.ledger().confirmed_outputs(),
            harness.state.ledger().confirmed_outputs()
        );
    }
}

#[test]
fn refusals_name_what_is_wrong() {
    let mut h = Harness::new();
    h.open("ann");
    h.open("ben");
    let grant = Transaction::grant("ann", GRANT, 1);
    let coin = Transaction::outpoint(grant.txid(), 0);
    let pay = |to: &str, amount: u64| Transaction {
        inputs: vec![coin],
        outputs: vec![Output {
            to: to.into(),
            amount,
        }],
        grant: None,
    };
    let submit = |h: &mut Harness, from: &str, tx: Transaction| {
        h.apply(Command::SubmitTransaction {
            from: from.into(),
            tx,
        })
    };
    let first = submit(&mut h, "ann", pay("ben", 100));
    let Outcome::Pooled { txid } = first else {
        panic!("{first:?}")
    };
    // The same output again: a double spend naming the output and the pooled spender.
    let Outcome::Refused(error) = submit(&mut h, "ann", pay("ann", 100)) else {
        panic!()
    };
    assert_eq!(error.code, ErrorCode::DoubleSpend);
    assert!(
        error.message.contains(&coin.to_string()) && error.message.contains(&txid.to_hex()),
        "{}",
        error.message
    );
    let Outcome::Refused(error) = submit(&mut h, "ben", pay("ben", 100)) else {
        panic!()
    };
    assert_eq!(error.code, ErrorCode::NotOwner);
    let mut missing = pay("ben", 100);
    missing.inputs[0].index = 7;
    let Outcome::Refused(error) = submit(&mut h, "ann", missing) else {
        panic!()
    };
    assert_eq!(error.code, ErrorCode::NoSuchOutput);
    let ben_coin = Transaction::outpoint(Transaction::grant("ben", GRANT, 2).txid(), 0);
    let uneven = Transaction {
        inputs: vec![ben_coin],
        outputs: vec![Output {
            to: "ann".into(),
            amount: 99,
        }],
        grant: None,
    };
    let Outcome::Refused(error) = submit(&mut h, "ben", uneven) else {
        panic!()
    };
    assert_eq!(error.code, ErrorCode::InvalidTransaction);
    assert!(error.message.contains("must be equal"), "{}", error.message);
    let to_nobody = Transaction {
        inputs: vec![ben_coin],
        outputs: vec![Output {
            to: "zed".into(),
            amount: 100,
        }],
        grant: None,
    };
    let Outcome::Refused(error) = submit(&mut h, "ben", to_nobody) else {
        panic!()
    };
    assert!(error.message.contains("no account"), "{}", error.message);
    let Outcome::Refused(error) = h.apply(Command::Transfer {
        from: "ann".into(),
        to: "ben".into(),
        amount: 1,
    }) else {
        panic!()
    };
    assert_eq!(error.code, ErrorCode::InsufficientFunds);
    let Outcome::Refused(error) = h.apply(Command::Transfer {
        from: "ben".into(),
        to: "zed".into(),
        amount: 1,
    }) else {
        panic!()
    };
    assert_eq!(error.code, ErrorCode::NoSuchUser);
    // An account with coins cannot be deleted.
    let Outcome::Refused(error) = h.apply(Command::DeleteAccount {
        username: "ben".into(),
        password_hash: "$argon2id$x".into(),
    }) else {
        panic!()
    };
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert!(error.message.contains("200 coins"), "{}", error.message);
    // Ann's coins are all leaving in a pooled transaction: she may go.
    assert_eq!(
        h.apply(Command::DeleteAccount {
            username: "ann".into(),
            password_hash: "$argon2id$x".into()
        }),
        Outcome::Done
    );
}

#[test]
fn blocks_that_do_not_extend_the_tip_or_hold_unpooled_transactions_are_refused() {
    let mut h = Harness::new();
    h.open("ann");
    let first = h.seal(10).expect("the grant is pooled");
    assert_eq!(first.header.height, 1);
    // The same block again: it no longer extends the tip.
    let Outcome::Refused(error) = h.apply(Command::SealBlock {
        block: first.clone(),
    }) else {
        panic!()
    };
    assert!(
        error.message.contains("does not extend the tip"),
        "{}",
        error.message
    );
    // A block that grants coins out of nowhere (a transaction not in the pool).
    let forged_tx = Transaction::grant("ann", 1_000_000, 999);
    let ids = [forged_tx.txid()];
    let header = BlockHeader {
        height: 2,
        prev: first.hash(),
        merkle_root: block::merkle_root(&ids),
        timestamp: 0,
        difficulty: 0,
        nonce: 0,
    };
    let forged = Block {
        header,
        txs: vec![forged_tx],
    };
    let Outcome::Refused(error) = h.apply(Command::SealBlock { block: forged }) else {
        panic!()
    };
    assert!(
        error.message.contains("not in the mempool"),
        "{}",
        error.message
    );
    assert_eq!(h.state.ledger().info().unwrap().height, 1);
    assert_eq!(h.state.ledger().info().unwrap().supply, GRANT);

    // A block changed in a snapshot image is refused by name when it is loaded.
    h.apply(Command::Transfer {
        from: "ann".into(),
        to: "ann".into(),
        amount: 10,
    });
    h.seal(10).unwrap();
    let mut image = h.state.image().unwrap();
    image.ledger.blocks[1].txs[0].outputs[0].amount += 1;
    let error = State::from_image(image).unwrap_err();
    assert!(error.contains("block 2"), "{error}");
}

#[test]
fn a_transaction_submitted_again_by_its_maker_changes_nothing_and_gets_its_id() {
    let mut h = Harness::new();
    h.open("ann");
    h.open("ben");
    h.seal(10).expect("the grants are pooled");
    let grant = Transaction::grant("ann", GRANT, 1);
    let pay = Transaction {
        inputs: vec![Transaction::outpoint(grant.txid(), 0)],
        outputs: vec![
            Output {
                to: "ben".into(),
                amount: 30,
            },
            Output {
                to: "ann".into(),
                amount: GRANT - 30,
            },
        ],
        grant: None,
    };
    let txid = pay.txid();
    let submit = |from: &str| Command::SubmitTransaction {
        from: from.into(),
        tx: pay.clone(),
    };
    assert_eq!(h.apply(submit("ann")), Outcome::Pooled { txid });
    let balances = |h: &Harness| ["ann", "ben"].map(|user| h.state.ledger().balance(user).unwrap());
    let before = balances(&h);
    // Pooled: again, the same id, nothing pooled twice (the request path answers it too).
    assert_eq!(h.apply(submit("ann")), Outcome::Pooled { txid });
    assert_eq!(
        h.state.ledger().check("ann", &pay, |_| true),
        Ok(Some(txid))
    );
    assert_eq!(h.state.ledger().info().unwrap().mempool, 1);
    assert_eq!(balances(&h), before);
    // Someone else submitting it is refused as before: the outputs are not theirs.
    let Outcome::Refused(error) = h.apply(submit("ben")) else {
        panic!("ben cannot spend ann's output");
    };
    assert_eq!(error.code, ErrorCode::NotOwner);
    // Sealed: still its maker's, still the same id, nothing changes.
    h.seal(10).expect("pooled");
    assert_eq!(h.apply(submit("ann")), Outcome::Pooled { txid });
    let info = h.state.ledger().info().unwrap();
    assert_eq!((info.mempool, info.supply), (0, 2 * GRANT));
    assert_eq!(
        h.state.ledger().balance("ben").unwrap().confirmed,
        GRANT + 30
    );
    let Outcome::Refused(error) = h.apply(submit("ben")) else {
        panic!("ben cannot spend ann's spent output");
    };
    assert_eq!(error.code, ErrorCode::NoSuchOutput);
}
