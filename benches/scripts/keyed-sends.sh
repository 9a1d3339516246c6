#!/usr/bin/env bash
# Keyed sends on a single node: the rate as each sender's idempotency keys pile up.
#
#   bash benches/scripts/keyed-sends.sh                              # this checkout's build
#   NODE_BIN=/tmp/old/synckit-node bash benches/scripts/keyed-sends.sh   # another build
#
# One fresh node; `synckit-node bench` is given its address twice, which makes it a cluster
# client: every send carries a fresh key, kept in the node's state for ten minutes. RUNS benches
# of 50 connections run back to back on the same node, so each sender holds about
# 1,000, 4,000, 7,000 ... keys as the runs go on; a send's cost must not grow with them.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS="${RUNS:-3}"
MESSAGES="${MESSAGES:-3000}"
# shellcheck source=benches/scripts/common.sh
source benches/scripts/common.sh

start_single "$work/single"
addr="$single_addr"
"$node_bin" bench --addr "$addr,$addr" -c 50 -m 1000 >/dev/null
for run in $(seq "$RUNS"); do
    echo "run $run: $("$node_bin" bench --addr "$addr,$addr" -c 50 -m "$MESSAGES" 2>&1)"
done
