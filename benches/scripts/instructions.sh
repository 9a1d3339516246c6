#!/usr/bin/env bash
# Instructions per operation on the uncontended paths, counted by valgrind's callgrind: sync-kit
# next to parking_lot (Mutex, RwLock read, RwLock write) and governor (TokenBucket).
#
# Each loop of benches/benches/instructions.rs runs at two iteration counts; the difference of
# the instruction totals divided by the difference of the counts is the cost of one iteration
# (start-up, setup and teardown cancel out). Deterministic: the same build gives the same counts.
#
#   bash benches/scripts/instructions.sh            # every operation
#   bash benches/scripts/instructions.sh sync_kit_mutex parking_lot_mutex
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench}"
bin=$(cargo bench -p sync-kit-benches --bench instructions --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*instructions[^"]*"' | tail -1 | cut -d'"' -f4)
[ -x "$bin" ] || { echo "could not build the instructions bench" >&2; exit 1; }

ops=("$@")
if [ ${#ops[@]} -eq 0 ]; then
  ops=(sync_kit_mutex parking_lot_mutex sync_kit_read parking_lot_read sync_kit_write
       parking_lot_write sync_kit_bucket sync_kit_bucket_fake_clock governor_bucket
       sync_kit_mvcc_get sync_kit_snapshot_get dashmap_get sync_kit_mvcc_commit rwlock_hashmap_commit
       sync_kit_mvcc_insert_remove)
fi

LOW=10000
HIGH=110000
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

total() { # op iterations -> instructions executed by the whole run
  valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" "$1" "$2" >/dev/null 2>"$out/log"
  grep -E '^(summary|totals):' "$out/cg" | head -1 | awk '{print $2}'
}

declare -A per
printf '%-28s %12s\n' operation instructions/op
for op in "${ops[@]}"; do
  low=$(total "$op" "$LOW")
  high=$(total "$op" "$HIGH")
  per[$op]=$(awk -v l="$low" -v h="$high" -v n=$((HIGH - LOW)) 'BEGIN { printf "%.1f", (h - l) / n }')
  printf '%-28s %12s\n' "$op" "${per[$op]}"
done

ratio() { # name ours theirs
  if [ -n "${per[$2]:-}" ] && [ -n "${per[$3]:-}" ]; then
    awk -v a="${per[$2]}" -v b="${per[$3]}" -v n="$1" 'BEGIN { printf "%-28s %11.2fx\n", n, a / b }'
  fi
}
echo
echo "ratios (sync-kit / reference)"
ratio "Mutex lock+unlock" sync_kit_mutex parking_lot_mutex
ratio "RwLock read+unlock" sync_kit_read parking_lot_read
ratio "RwLock write+unlock" sync_kit_write parking_lot_write
ratio "TokenBucket try_acquire" sync_kit_bucket governor_bucket
ratio "MvccMap::get" sync_kit_mvcc_get dashmap_get
ratio "Snapshot::get" sync_kit_snapshot_get dashmap_get
ratio "MVCC commit (1 read, 1 write)" sync_kit_mvcc_commit rwlock_hashmap_commit
