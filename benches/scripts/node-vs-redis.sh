#!/usr/bin/env bash
# The node's load test next to redis-benchmark LPUSH, on this machine, in one run.
#
#   bash benches/scripts/node-vs-redis.sh            # 3 rounds (ROUNDS=n to change)
#
# Each round starts a fresh node (new data directory, rate limits lifted, ports chosen by the OS)
# and runs `synckit-node bench` with 50 and 10 connections, binary then JSON, 200 messages per
# connection. redis-server and redis-benchmark (Debian: redis-server, redis-tools) are then run
# without persistence and with `appendfsync always` (fsync before every reply batch, the
# durability the node gives), LPUSH, 100,000 requests, 50 and 10 connections. redis is only
# needed here, never by the tests or CI. Output: one JSON line per node run, redis's `-q` lines.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench}"
cargo build --quiet --release -p synckit-node
node_bin="$CARGO_TARGET_DIR/release/synckit-node"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

for round in $(seq "$ROUNDS"); do
    data="$work/node-$round"
    "$node_bin" serve --data-dir "$data" --chat-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
        --requests-per-sec 100000000 --request-burst 100000000 --log warn >"$work/node.out" &
    node_pid=$!
    addr=""
    for _ in $(seq 100); do
        addr="$(sed -n 's/.*listening chat=\([^ ]*\).*/\1/p' "$work/node.out")"
        [[ -n "$addr" ]] && break
        sleep 0.1
    done
    [[ -n "$addr" ]] || { echo "the node did not start" >&2; exit 1; }
    for connections in 50 10; do
        for protocol in "" "--json"; do
            echo "node round $round: $("$node_bin" bench --addr "$addr" -c "$connections" -m 200 $protocol)"
        done
    done
    kill "$node_pid"
    wait "$node_pid" 2>/dev/null || true
done

if ! command -v redis-server >/dev/null; then
    echo "redis-server not installed: skipping the redis half" >&2
    exit 0
fi
port=6399
for persistence in "--appendonly no" "--appendonly yes --appendfsync always"; do
    dir="$(mktemp -d -p "$work")"
    # shellcheck disable=SC2086 # the persistence flags are meant to split
    redis-server --port "$port" --save '' $persistence --dir "$dir" >"$dir/redis.log" &
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
    for connections in 50 10; do
        for run in $(seq "$ROUNDS"); do
            echo "redis ($persistence) -c $connections run $run: $(redis-benchmark -p "$port" \
                -c "$connections" -n 100000 -t lpush -q | tr '\r' '\n' | tail -n 2 | head -n 1)"
        done
    done
    redis-benchmark -p "$port" -c 50 -n 100000 -t lpush --precision 3 | grep -A8 "latency summary" || true
    redis-cli -p "$port" shutdown nosave >/dev/null || true
    wait 2>/dev/null || true
done
