#!/usr/bin/env bash
# Client instructions per request, counted by callgrind (repeatable on a noisy machine):
# `morpc-bench serve` runs natively, the load generator under callgrind against it.
#
#   crates/morpc-bench/scripts/callgrind-client.sh path/to/morpc-bench "--layer client" [inflight]
#
# Prints the requests completed and the client's instructions per request (setup and
# teardown included: a few hundred thousand instructions, small against the run).
set -euo pipefail
bench=$1; extra=${2:-}; inflight=${3:-256}
port=$((20000 + RANDOM % 10000))
out=$(mktemp -d)
"$bench" serve --threads 1 --framing v07 --addr "127.0.0.1:$port" >"$out/server.log" 2>&1 &
server=$!
for _ in $(seq 1 50); do grep -q LISTENING "$out/server.log" && break; sleep 0.1; done
# shellcheck disable=SC2086
report=$(valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" "$bench" --addr "127.0.0.1:$port" \
  --duration 4 --warmup 0 --no-baseline --json --inflight "$inflight" $extra 2>/dev/null | tail -1)
kill "$server"; wait "$server" 2>/dev/null || true
ops=$(echo "$report" | python3 -c "import json,sys; print(json.load(sys.stdin)['runs'][0]['ops'])")
ir=$(awk '/^summary:/ {print $2}' "$out/cg.out")
echo "$bench $extra | inflight $inflight | requests $ops | client instructions $ir | per request $((ir / ops))"
rm -rf "$out"
