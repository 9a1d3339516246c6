#!/usr/bin/env bash
# A five-member cluster next to a single node, on this machine, in one run.
#
#   bash benches/scripts/cluster-vs-single.sh        # ROUNDS=3, CONNECTIONS=50, MESSAGES=1000
#   NODE_BIN=/tmp/old/synckit-node bash benches/scripts/cluster-vs-single.sh   # another build
#
# Each round starts a fresh single node and runs `synckit-node bench` against it. It then starts a
# fresh five-member cluster (`synckit-node cluster up`, all five on this machine, every change
# fsynced by a majority before its answer) and runs the same bench twice: once against the
# leader, once against a follower, which forwards each change to the leader inside raft.
#
# Output: one JSON line per run, then the medians of the rounds and the ratios against the
# single node (messages/s; p50 and p99 in µs).
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-50}"
MESSAGES="${MESSAGES:-1000}"
# shellcheck source=benches/scripts/common.sh
source benches/scripts/common.sh

declare -A results
median() { tr -s ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
field() { sed -n "s/.*\"$1\":\([0-9.e+]*\).*/\1/p"; }

# Runs the bench against $1 and records its figures under $2.
run_bench() {
    local addr="$1" name="$2" report
    if report="$("$node_bin" bench --addr "$addr" -c "$CONNECTIONS" -m "$MESSAGES" 2>&1)"; then
        echo "$name: $report"
        results[$name-rate]+="$(field messages_per_sec <<<"$report") "
        results[$name-p50]+="$(field p50_us <<<"$report") "
        results[$name-p99]+="$(field p99_us <<<"$report") "
    else
        echo "$name: FAILED: $report"
    fi
}

for round in $(seq "$ROUNDS"); do
    # The single node.
    start_single "$work/single-$round"
    run_bench "$single_addr" single
    kill -INT "$single_pid"; wait "$single_pid" 2>/dev/null || true
    pids=()

    # The cluster.
    out="$work/cluster-$round.out"
    "$node_bin" cluster up --nodes 5 --dir "$work/cluster-$round" -- "${LIMITS[@]}" \
        >"$out" 2>"$out.err" &
    pid=$!
    pids=("$pid")
    wait_for "$out" "Ctrl-C stops every member"
    { read -r leader; read -r follower; } < <(cluster_leader "$out" follower)
    [[ -n "$leader" ]] || exit 1
    run_bench "$leader" cluster-leader
    run_bench "$follower" cluster-follower
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    pids=()
done

echo
echo "medians of $ROUNDS rounds, $CONNECTIONS connections, $MESSAGES messages each:"
single="$(median <<<"${results[single-rate]:-}")"
for name in single cluster-leader cluster-follower; do
    rate="$(median <<<"${results[$name-rate]:-}")"
    p50="$(median <<<"${results[$name-p50]:-}")"
    p99="$(median <<<"${results[$name-p99]:-}")"
    ratio="$(awk -v a="$rate" -v b="$single" 'BEGIN { if (b > 0) printf "%.2f", a / b }')"
    echo "$name: ${rate} msg/s (${ratio}x the single node), p50 ${p50} us, p99 ${p99} us"
done
