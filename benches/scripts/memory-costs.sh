#!/usr/bin/env bash
# What an operation of benches/benches/instructions.rs costs besides its instructions: cache
# misses (valgrind's cachegrind, the last level set to this VM's per-core L2: 2 MiB, 16-way,
# 64-byte lines) and atomic read-modify-writes (lock-prefixed instructions and xchg with memory,
# counted from callgrind's per-instruction counts against objdump's disassembly of every object
# run, libc included). On this VM an uncontended atomic read-modify-write costs 5 to 8 ns, an L2
# miss tens of ns: a commit's time follows these more than its instruction count.
#
# Per operation, as instructions.sh does: two runs at two iteration counts, the difference
# divided by the difference of the counts (start-up, setup and teardown cancel out).
# Deterministic: the same build gives the same counts.
#
#   bash benches/scripts/memory-costs.sh sync_kit_mvcc_commit rwlock_hashmap_commit
#   BIN=path/to/another/instructions/binary bash benches/scripts/memory-costs.sh <ops>
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
command -v objdump >/dev/null || { echo "needs objdump (binutils)" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench}"
bin="${BIN:-}"
if [ -z "$bin" ]; then
  bin=$(cargo bench -p sync-kit-benches --bench instructions --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*instructions[^"]*"' | tail -1 | cut -d'"' -f4)
fi
[ -x "$bin" ] || { echo "could not build the instructions bench" >&2; exit 1; }
[ $# -gt 0 ] || { echo "usage: $0 <op>... (the ops of benches/benches/instructions.rs)" >&2; exit 2; }

LOW=10000
HIGH=60000
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

misses() { # op iterations -> "instructions d1-misses ll-misses" of the whole run
  valgrind --tool=cachegrind --cache-sim=yes --LL=2097152,16,64 --cachegrind-out-file=/dev/null \
    "$bin" "$1" "$2" 2>&1 >/dev/null \
    | awk '{ gsub(",", "") } /I +refs/ { i = $4 } /D1 +misses/ { d = $4 } /LLd +misses/ { l = $4 }
           END { print i, d, l }'
}

atomics() { # op iterations -> lock-prefixed instructions executed by the whole run
  valgrind --tool=callgrind --dump-instr=yes --compress-pos=no --compress-strings=no \
    --callgrind-out-file="$out/cg" "$bin" "$1" "$2" >/dev/null 2>&1
  # The addresses of the atomic read-modify-writes in every object the run executed.
  grep '^ob=' "$out/cg" | sort -u | cut -d= -f2- | while read -r object; do
    [ -f "$object" ] || continue
    objdump -d --no-show-raw-insn "$object" 2>/dev/null \
      | awk -v ob="$object" '/^ *[0-9a-f]+:/ && (/\tlock / || /\txchg .*\(/) { sub(":", "", $1); print ob, $1 }'
  done > "$out/locks"
  # Self cost per instruction address (a line after calls= is the call's inclusive cost).
  awk 'NR == FNR { lock[$1 " " $2] = 1; next }
       /^ob=/ { ob = substr($0, 4); next }
       /^calls=/ { skip = 1; next }
       /^0x/ { if (skip) { skip = 0; next }
               a = $1; sub(/^0x0*/, "", a); if ((ob " " a) in lock) n += $3 }
       END { print n + 0 }' "$out/locks" "$out/cg"
}

printf '%-28s %14s %10s %10s %10s\n' operation instructions L1d-misses L2-misses atomics
for op in "$@"; do
  read -r i1 d1 l1 < <(misses "$op" "$LOW")
  read -r i2 d2 l2 < <(misses "$op" "$HIGH")
  a1=$(atomics "$op" "$LOW")
  a2=$(atomics "$op" "$HIGH")
  awk -v op="$op" -v n=$((HIGH - LOW)) -v i="$i1 $i2" -v d="$d1 $d2" -v l="$l1 $l2" -v a="$a1 $a2" '
    function per(pair,  x) { split(pair, x, " "); return (x[2] - x[1]) / n }
    BEGIN { printf "%-28s %14.1f %10.2f %10.2f %10.2f\n", op, per(i), per(d), per(l), per(a) }'
done
