#!/usr/bin/env bash
# Server instructions per request, counted by callgrind (repeatable on a noisy machine):
# `morpc-bench serve` runs under callgrind, the load generator natively against it.
#
#   crates/morpc-bench/scripts/callgrind-server.sh path/to/morpc-bench [more builds ...]
#   LOADS="--mode oneway --inflight 16" crates/morpc-bench/scripts/callgrind-server.sh BENCH
#
# LOADS is a `|`-separated list of load arguments (default: 16 and 256 in flight).
# Prints, per build and load, the requests answered and the server's instructions per
# request (the counters are zeroed once the server listens, dumped after the load).
set -euo pipefail
port=19500
for bench in "$@"; do
  IFS='|' read -r -a loads <<<"${LOADS:---inflight 16|--inflight 256}"
  for load in "${loads[@]}"; do
    port=$((port + 1))
    out=$(mktemp -d)
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" \
      "$bench" serve --threads 1 --framing v07 --addr "127.0.0.1:$port" >"$out/log" 2>&1 &
    server=$!
    for _ in $(seq 1 100); do grep -q LISTENING "$out/log" && break; sleep 0.2; done
    callgrind_control -z "$server" >/dev/null 2>&1
    # shellcheck disable=SC2086
    report=$("$bench" --addr "127.0.0.1:$port" --duration 6 --warmup 0 --no-baseline --json $load | tail -1)
    callgrind_control -d "$server" >/dev/null 2>&1
    sleep 1
    kill "$server"
    wait "$server" 2>/dev/null || true
    ops=$(echo "$report" | python3 -c "import json,sys; print(json.load(sys.stdin)['runs'][0]['ops'])")
    ir=$(cat "$out"/cg.* | awk '/^summary:/ {s += $2} END {print s}')
    echo "$bench | $load | requests $ops | server instructions $ir | per request $((ir / ops))"
    rm -rf "$out"
  done
done
