#!/usr/bin/env bash
# The node's load test next to redis-benchmark LPUSH, on this machine, in one run.
#
#   bash benches/scripts/node-vs-redis.sh        # ROUNDS=3 by default
#
# Both sides are driven the same way: one event-driven client thread, each connection with one
# request in flight (`synckit-node bench` is built like redis-benchmark).
#
# - The node, ROUNDS rounds, each on a fresh node (new data directory, rate limits lifted, ports
#   chosen by the OS): `synckit-node bench` at 10 and 50 connections, binary then JSON, MESSAGES
#   messages of 32 bytes per connection.
# - The node at BIG_CONNECTIONS (10,000) connections, BIG_MESSAGES messages each, binary, on
#   BIG_USERS accounts (default: one per connection, as in the runs above). Each account creation
#   and each login costs the node an Argon2id hash, so its setup takes minutes. Fewer accounts
#   make it cheaper but change the load: the node pushes a message to every connection logged in
#   as its recipient, BIG_CONNECTIONS / BIG_USERS pushes per message. A node that cannot hold
#   that many connections is reported, not fatal.
# - redis-server with `appendonly yes, appendfsync always` (the node's durability: an fsync
#   before the replies of each event-loop iteration), redis-benchmark LPUSH, REDIS_REQUESTS
#   requests, at 10 and 50 connections ROUNDS times, then once at BIG_CONNECTIONS.
#
# Output: one JSON line per node run, one CSV line per redis run, then the ratios (medians of the
# rounds): node msg/s ÷ redis req/s per connection count. redis (Debian: redis-server,
# redis-tools) is needed by this script only, never by the tests or CI.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-3}"
MESSAGES="${MESSAGES:-200}"
BIG_CONNECTIONS="${BIG_CONNECTIONS:-10000}"
BIG_USERS="${BIG_USERS:-$BIG_CONNECTIONS}"
BIG_MESSAGES="${BIG_MESSAGES:-20}"
REDIS_REQUESTS="${REDIS_REQUESTS:-50000}"
REDIS_PORT="${REDIS_PORT:-6399}"

# Thousands of connections need thousands of descriptors, here and in the processes started.
ulimit -Sn "$(ulimit -Hn)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench}"
cargo build --quiet --release -p synckit-node
node_bin="$CARGO_TARGET_DIR/release/synckit-node"
work="$(mktemp -d)"
node_pid=""
redis_pid=""
cleanup() {
    [[ -n "$node_pid" ]] && kill "$node_pid" 2>/dev/null
    [[ -n "$redis_pid" ]] && kill "$redis_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# Results, by name: "node-binary-10" -> one figure per round.
declare -A results

# The median of the whitespace-separated numbers on stdin ("" if none).
median() { tr -s ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }

# Starts a fresh node with every limit lifted; sets node_pid and node_addr.
start_node() {
    local data="$work/node-$1"
    "$node_bin" serve --data-dir "$data" --chat-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
        --requests-per-sec 1000000000 --request-burst 1000000000 \
        --logins-per-minute 1000000000 --login-burst 1000000000 \
        --max-connections $((BIG_CONNECTIONS + 100)) --log warn >"$data.out" 2>"$data.err" &
    node_pid=$!
    node_addr=""
    for _ in $(seq 100); do
        node_addr="$(sed -n 's/.*listening chat=\([^ ]*\).*/\1/p' "$data.out" 2>/dev/null || true)"
        [[ -n "$node_addr" ]] && return 0
        sleep 0.1
    done
    echo "the node did not start:" >&2
    cat "$data.err" >&2
    exit 1
}

stop_node() {
    kill "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
    node_pid=""
}

# Runs `synckit-node bench` with the given flags; records messages/s under $1.
node_bench() {
    local name="$1"
    shift
    local report
    if report="$("$node_bin" bench --addr "$node_addr" "$@" 2>&1)"; then
        echo "$name: $report"
        results[$name]+="$(sed -n 's/.*"messages_per_sec":\([0-9.e+]*\).*/\1/p' <<<"$report") "
    else
        echo "$name: FAILED: $report"
    fi
}

for round in $(seq "$ROUNDS"); do
    start_node "$round"
    for connections in 10 50; do
        node_bench "node-binary-$connections" -c "$connections" -m "$MESSAGES"
        node_bench "node-json-$connections" -c "$connections" -m "$MESSAGES" --json
    done
    stop_node
done

start_node big
node_bench "node-binary-$BIG_CONNECTIONS" -c "$BIG_CONNECTIONS" --users "$BIG_USERS" \
    -m "$BIG_MESSAGES"
stop_node

if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
    dir="$work/redis"
    mkdir -p "$dir"
    redis-server --port "$REDIS_PORT" --save '' --appendonly yes --appendfsync always \
        --maxclients $((BIG_CONNECTIONS + 100)) --dir "$dir" >"$dir/redis.log" 2>&1 &
    redis_pid=$!
    until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
    # `--csv`: "LPUSH","rps","avg","min","p50","p95","p99","max" (latencies in ms).
    redis_bench() {
        local name="$1" connections="$2" line
        if line="$(redis-benchmark -p "$REDIS_PORT" -c "$connections" -n "$REDIS_REQUESTS" \
            -t lpush --csv 2>&1 | grep '^"LPUSH"')"; then
            echo "$name: $line"
            results[$name]+="$(cut -d, -f2 <<<"$line" | tr -d '"') "
        else
            echo "$name: FAILED"
        fi
    }
    for round in $(seq "$ROUNDS"); do
        for connections in 10 50; do
            redis_bench "redis-fsync-always-$connections" "$connections"
        done
    done
    redis_bench "redis-fsync-always-$BIG_CONNECTIONS" "$BIG_CONNECTIONS"
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
else
    echo "redis-server or redis-benchmark missing (Debian: redis-server redis-tools):" \
        "no ratios" >&2
fi

echo
echo "medians of the rounds (node msg/s, redis LPUSH req/s with appendfsync always):"
for connections in 10 50 "$BIG_CONNECTIONS"; do
    redis="$(median <<<"${results[redis-fsync-always-$connections]:-}")"
    for protocol in binary json; do
        node="$(median <<<"${results[node-$protocol-$connections]:-}")"
        [[ -z "$node" && "$connections" == "$BIG_CONNECTIONS" && "$protocol" == json ]] && continue
        if [[ -n "$node" && -n "$redis" ]]; then
            awk -v c="$connections" -v p="$protocol" -v n="$node" -v r="$redis" \
                'BEGIN { printf "%6d connections, %-6s: node %9.0f msg/s, redis %9.0f req/s, ratio %.2f\n", c, p, n, r, n / r }'
        else
            printf "%6d connections, %-6s: node %s, redis %s, ratio n/a\n" "$connections" \
                "$protocol" "${node:-failed}" "${redis:-failed}"
        fi
    done
done
