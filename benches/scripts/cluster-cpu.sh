#!/usr/bin/env bash
# CPU time a five-member cluster spends per message, by thread, on this machine.
#
#   bash benches/scripts/cluster-cpu.sh                 # this checkout's build, 50 connections
#   NODE_BIN=/tmp/old/synckit-node bash benches/scripts/cluster-cpu.sh   # another build
#   ROUNDS=3 MESSAGES=3000 bash benches/scripts/cluster-cpu.sh
#
# Throughput on a shared 2-vCPU machine moves with whatever else runs; the CPU time the members
# spend per message moves much less, so two builds compare better by it (alternate them). Each
# round starts a fresh cluster (`cluster up`), warms it up, reads every member thread's user and
# system time from /proc, runs `synckit-node bench` against the leader, and reads them again.
#
# Output per round: the bench's JSON line; CPU by member role and thread name, in % of one CPU
# over the bench; and the members' CPU milliseconds per 1,000 messages, password hashing
# (`argon2-*` threads: the bench's logins) left out.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS="${ROUNDS:-1}"
CONNECTIONS="${CONNECTIONS:-50}"
MESSAGES="${MESSAGES:-3000}"
# shellcheck source=benches/scripts/common.sh
source benches/scripts/common.sh
ticks="$(getconf CLK_TCK)"

# One line per thread of the given processes: "pid comm utime stime" (clock ticks).
threads() {
    local p t stat rest comm
    for p in "$@"; do
        for t in /proc/"$p"/task/*; do
            stat="$(cat "$t/stat" 2>/dev/null)" || continue
            comm="${stat#*(}"; comm="${comm%)*}"
            rest="${stat##*) }"
            # Fields after the name: state is the 1st, utime the 12th, stime the 13th.
            read -r -a fields <<<"$rest"
            echo "$p ${comm// /_} ${fields[11]} ${fields[12]} ${t##*/}"
        done
    done
}

for round in $(seq "$ROUNDS"); do
    out="$work/cluster-$round.out"
    "$node_bin" cluster up --nodes 5 --dir "$work/cluster-$round" -- "${LIMITS[@]}" \
        >"$out" 2>"$out.err" &
    pid=$!
    pids=("$pid")
    leader="$(cluster_leader "$out")"
    members=$(pgrep -P "$pid" | tr '\n' ' ')
    # The member listening on the leader's chat port.
    leader_pid="$(ss -Hltnp "sport = :${leader##*:}" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)"
    "$node_bin" bench --addr "$leader" -c "$CONNECTIONS" -m 300 >/dev/null 2>&1
    # shellcheck disable=SC2086
    threads $members >"$work/before"
    started="$(date +%s.%N)"
    report="$("$node_bin" bench --addr "$leader" -c "$CONNECTIONS" -m "$MESSAGES" 2>&1)"
    ended="$(date +%s.%N)"
    # shellcheck disable=SC2086
    threads $members >"$work/after"
    echo "round $round: $report"
    awk -v secs="$(echo "$ended - $started" | bc -l)" -v ticks="$ticks" -v leader="$leader_pid" \
        -v messages="$((CONNECTIONS * MESSAGES))" '
        NR == FNR { u[$1 " " $5] = $3; s[$1 " " $5] = $4; next }
        {
            key = $1 " " $5; du = $3 - u[key]; ds = $4 - s[key]
            role = ($1 == leader) ? "leader" : "follower"
            name = $2; sub(/-[0-9]+$/, "-N", name)
            user[role " " name] += du; sys[role " " name] += ds
            if ($2 !~ /^argon2/) total += du + ds
        }
        END {
            for (k in user) if (user[k] + sys[k] > 0) {
                split(k, part, " ")
                n = (part[1] == "follower") ? 4 : 1
                printf "  %-8s %-14s user %5.1f%%  sys %5.1f%%  (each)\n", part[1], part[2],
                    100 * user[k] / ticks / secs / n, 100 * sys[k] / ticks / secs / n
            }
            printf "  members: %.1f%% of one CPU; %.1f CPU ms per 1,000 messages (logins left out)\n",
                100 * total / ticks / secs, 1000 * total / ticks * 1000 / messages
        }' "$work/before" "$work/after" | sort
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    pids=()
done
