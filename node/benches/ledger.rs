//! The mempool's double-spend check next to what a user would write first: a plain `HashSet`
//! of spent outpoints. Ratios in one run (see docs/performance.md).
//!
//! - `hashset_insert`: the anchor, inserting a fresh outpoint into a `HashSet<Outpoint>`.
//! - `check_refused`: `Ledger::check` of a transaction whose input a pooled transaction spends
//!   (the request path's refusal: an MVCC snapshot, the `mempool` lock, the outpoint index).
//! - `submit_accepted`: `Ledger::apply_submit` of a fresh one-input transaction (apply's path:
//!   the check, the id's SHA-256, and the insertion under the lock).

use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use synckit_node::ledger::{Hash32, Ledger, Outpoint, Output, Transaction};

fn spend(coin: Outpoint, to: &str) -> Transaction {
    Transaction {
        inputs: vec![coin],
        outputs: vec![Output {
            to: to.into(),
            amount: 100,
        }],
        grant: None,
    }
}

fn grants(ledger: &Ledger, count: u64) -> Vec<Outpoint> {
    (1..=count)
        .map(|index| {
            ledger.apply_grant(index, "ann", 100).unwrap();
            Transaction::outpoint(Transaction::grant("ann", 100, index).txid(), 0)
        })
        .collect()
}

fn double_spend(c: &mut Criterion) {
    let mut group = c.benchmark_group("double_spend_check");
    group.bench_function("hashset_insert", |b| {
        b.iter_custom(|iters| {
            let mut spent = HashSet::with_capacity(iters as usize);
            let start = Instant::now();
            for i in 0..iters {
                let outpoint = Outpoint {
                    tx: Hash32([0; 32]),
                    index: i as u32,
                };
                black_box(spent.insert(black_box(outpoint)));
            }
            start.elapsed()
        })
    });

    let ledger = Ledger::new();
    let coin = grants(&ledger, 1)[0];
    let exists = |_: &str| true;
    ledger
        .apply_submit("ann", spend(coin, "ben"), exists)
        .unwrap()
        .unwrap();
    let again = spend(coin, "cat");
    group.bench_function("check_refused", |b| {
        b.iter(|| black_box(ledger.check("ann", black_box(&again), exists)).is_err())
    });

    group.bench_function("submit_accepted", |b| {
        b.iter_custom(|iters| {
            let ledger = Ledger::new();
            let coins = grants(&ledger, iters);
            let txs: Vec<Transaction> = coins.into_iter().map(|c| spend(c, "ben")).collect();
            let start = Instant::now();
            for tx in txs {
                black_box(ledger.apply_submit("ann", tx, exists).unwrap().is_ok());
            }
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = double_spend
}
criterion_main!(benches);
