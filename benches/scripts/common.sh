# What the node's benchmark scripts share; sourced by them (cluster-vs-single.sh,
# cluster-cpu.sh, transfers.sh), not run on its own.
#
# Sets: LIMITS (serve flags lifting every rate limit), node_bin (NODE_BIN, or this checkout's
# release build), work (a scratch directory), pids (processes to stop on exit); defines
# wait_for, start_single and cluster_leader.

# Every rate limit lifted: the benchmarks measure the node, not its limits.
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

# Starts a single node with every limit lifted and its data in $1 (its output in $1.out) and
# waits for it to listen; sets single_pid (also the one process in pids, stopped on exit) and
# single_addr (its chat address).
start_single() {
    local out="$1.out"
    "$node_bin" serve --data-dir "$1" --chat-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
        "${LIMITS[@]}" >"$out" 2>"$out.err" &
    single_pid=$!
    pids=("$single_pid")
    wait_for "$out" "listening chat="
    single_addr="$(sed -n 's/.*listening chat=\([^ ]*\).*/\1/p' "$out")"
}

# Waits for the five members `cluster up` reports in file $1 and for one of them to lead (up to
# 30 s); prints its chat address, then (with $2 = follower) a follower's on a second line.
cluster_leader() {
    local out="$1" leader="" follower="" chat http role
    for _ in 1 2 3 4 5; do wait_for "$out" "listening chat="; done
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
    echo "$leader"
    [[ "${2:-}" == follower ]] && echo "$follower"
    return 0
}
