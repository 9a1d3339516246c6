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
LIMITS=(--requests-per-sec 1000000000 --request-burst 1000000000
    --logins-per-minute 1000000000 --login-burst 1000000000 --log warn)

# NODE_BIN runs a given binary (say, an older build, for a before/after comparison) instead of
# building this checkout's.
if [[ -n "${NODE_BIN:-}" ]]; then
    node_bin="$NODE_BIN"
else
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench}"
    cargo build --quiet --release -p synckit-node
    node_bin="$CARGO_TARGET_DIR/release/synckit-node"
fi
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

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

# Waits for a line matching $2 in file $1 (up to 30 s).
wait_for() {
    for _ in $(seq 300); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1:" >&2
    cat "$1" >&2
    exit 1
}

for round in $(seq "$ROUNDS"); do
    # The single node.
    out="$work/single-$round.out"
    "$node_bin" serve --data-dir "$work/single-$round" --chat-addr 127.0.0.1:0 \
        --http-addr 127.0.0.1:0 "${LIMITS[@]}" >"$out" 2>"$out.err" &
    pid=$!
    pids=("$pid")
    wait_for "$out" "listening chat="
    run_bench "$(sed -n 's/.*listening chat=\([^ ]*\).*/\1/p' "$out")" single
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    pids=()

    # The cluster.
    out="$work/cluster-$round.out"
    "$node_bin" cluster up --nodes 5 --dir "$work/cluster-$round" -- "${LIMITS[@]}" \
        >"$out" 2>"$out.err" &
    pid=$!
    pids=("$pid")
    wait_for "$out" "stats:"
    for _ in 1 2 3 4 5; do wait_for "$out" "listening chat="; done
    leader="" follower=""
    for _ in $(seq 300); do
        while read -r line; do
            chat="$(sed -n 's/.*listening chat=\([^ ]*\) http=\([^ ]*\).*/\1/p' <<<"$line")"
            http="$(sed -n 's/.*listening chat=\([^ ]*\) http=\([^ ]*\).*/\2/p' <<<"$line")"
            [[ -z "$chat" ]] && continue
            role="$(curl -s "http://$http/stats" | sed -n 's/.*"role":"\([a-z_]*\)".*/\1/p')"
            if [[ "$role" == leader ]]; then leader="$chat"; elif [[ -z "$follower" ]]; then follower="$chat"; fi
        done <"$out"
        [[ -n "$leader" ]] && break
        follower=""
        sleep 0.1
    done
    [[ -n "$leader" ]] || { echo "no leader elected" >&2; exit 1; }
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
