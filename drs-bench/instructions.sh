#!/bin/bash
# The server's (or, with CLIENT=1, the load generator's) instructions per
# reply under callgrind, for one scenario: a number that, unlike calls/s,
# does not move with the machine's noise. Compare two builds of drs-bench:
#
#   drs-bench/instructions.sh OLD/drs-bench drs-tcp-json lines 1 64
#   drs-bench/instructions.sh NEW/drs-bench drs-tcp-json lines 1 64
#   CLIENT=1 drs-bench/instructions.sh NEW/drs-bench drs-tcp-json drs-rust 1 64
#
# Arguments: the drs-bench binary, the server system, the load mode,
# connections, calls in flight per connection (64 B bodies, 1 s warm-up,
# 6 s measured). Needs valgrind. Loopback only.
set -euo pipefail
bench=$1 sys=$2 mode=$3 conns=$4 inflight=$5
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
profile=(valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p")
if [ -z "${CLIENT:-}" ]; then server=("${profile[@]}" "$bench"); load=("$bench"); else server=("$bench"); load=("${profile[@]}" "$bench"); fi
"${server[@]}" serve "$sys" >"$work/server.out" 2>"$work/server.err" &
pid=$!
for _ in $(seq 1 300); do grep -q '^ready ' "$work/server.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^ready //p' "$work/server.out")
report=$("${load[@]}" load "$mode" "$addr" 1 6 "$conns" "$inflight" 64 2>/dev/null | tail -1)
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
# Replies counted over the whole run where the load mode counts them, else
# the calls of the measured window (the warm-up's then weigh on both builds alike).
replies=$(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(r.get('replies') or r['calls'])" "$report")
ir=$(grep -h '^totals:' "$work"/cg.* | head -1 | awk '{print $2}')
python3 -c "print('$sys $mode ${conns}x${inflight}: %d replies, %d instructions, %.0f per reply' % ($replies, $ir, $ir / $replies))"
