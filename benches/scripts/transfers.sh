#!/usr/bin/env bash
# Ledger transfers next to chat sends, on this machine, in one run.
#
#   bash benches/scripts/transfers.sh        # ROUNDS=3, CONNECTIONS=50, MESSAGES=1000, CLUSTER=1
#   NODE_BIN=/tmp/old/synckit-node bash benches/scripts/transfers.sh   # another build
#
# Each round starts a fresh single node per operation and runs `synckit-node bench` against it:
# `--op send` (messages of 32 bytes) and `--op transfer` (one coin to the next account; each
# account starts with the default --initial-balance of 1000, and an account's transfers chain
# on its pooled change, so none waits for a block). With CLUSTER=1 it then does the same against
# the leader of a fresh five-member cluster (`synckit-node cluster up`) per operation.
#
# Both operations are one change through the log, fsynced before the answer; a transfer also
# picks its inputs and checks them against the pool, twice (before the log and when applied),
# and the leader seals pooled transactions into blocks every --block-interval-ms (default 1000,
# proof of work at --difficulty-bits, default 16) meanwhile.
#
# Output: one JSON line per run, then the medians of the rounds and, per setup, transfers/s,
# p50 and p99 as a ratio to the sends'.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-50}"
MESSAGES="${MESSAGES:-1000}"
CLUSTER="${CLUSTER:-1}"
# shellcheck source=benches/scripts/common.sh
source benches/scripts/common.sh

declare -A results
median() { tr -s ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
field() { sed -n "s/.*\"$1\":\([0-9.e+]*\).*/\1/p"; }

# Runs the bench with --op $3 against $1 and records its figures under $2-$3.
run_bench() {
    local addr="$1" name="$2-$3" report
    if report="$("$node_bin" bench --addr "$addr" --op "$3" -c "$CONNECTIONS" -m "$MESSAGES" 2>&1)"; then
        echo "$name: $report"
        results[$name-rate]+="$(field messages_per_sec <<<"$report") "
        results[$name-p50]+="$(field p50_us <<<"$report") "
        results[$name-p99]+="$(field p99_us <<<"$report") "
        results[$name-failed]+="$(field failed <<<"$report") "
    else
        echo "$name: FAILED: $report"
    fi
}

# A fresh single node; runs the bench with --op $2 against it (round $1).
single() {
    start_single "$work/single-$1-$2"
    run_bench "$single_addr" single "$2"
    kill -INT "$single_pid"; wait "$single_pid" 2>/dev/null || true
    pids=()
}

# A fresh five-member cluster; runs the bench with --op $2 against its leader (round $1).
cluster() {
    local out="$work/cluster-$1-$2.out" pid leader
    "$node_bin" cluster up --nodes 5 --dir "$work/cluster-$1-$2" -- "${LIMITS[@]}" \
        >"$out" 2>"$out.err" &
    pid=$!
    pids=("$pid")
    wait_for "$out" "Ctrl-C stops every member"
    leader="$(cluster_leader "$out")"
    run_bench "$leader" cluster "$2"
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    pids=()
}

setups=(single)
[[ "$CLUSTER" == 1 ]] && setups+=(cluster)
for round in $(seq "$ROUNDS"); do
    for setup in "${setups[@]}"; do
        for op in send transfer; do "$setup" "$round" "$op"; done
    done
done

echo
echo "medians of $ROUNDS rounds, $CONNECTIONS connections, $MESSAGES requests each:"
for setup in "${setups[@]}"; do
    for op in send transfer; do
        name="$setup-$op"
        echo "$name: $(median <<<"${results[$name-rate]:-}") req/s," \
            "p50 $(median <<<"${results[$name-p50]:-}") us," \
            "p99 $(median <<<"${results[$name-p99]:-}") us, failed ${results[$name-failed]:-?}"
    done
    ratio() {
        awk -v a="$(median <<<"${results[$setup-transfer-$1]:-}")" \
            -v b="$(median <<<"${results[$setup-send-$1]:-}")" \
            'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "?" }'
    }
    echo "$setup: transfers/sends: rate $(ratio rate)x, p50 $(ratio p50)x, p99 $(ratio p99)x"
done
