#!/usr/bin/env bash
# The issue-#14 suite: RpcClient against the in-run floor in the in-process layout,
# three interleaved rounds, and tonic's client streaming from the peers workspace when
# it is built (`cargo build --release --manifest-path benches/peers/Cargo.toml`).
#
#   crates/morpc-bench/scripts/suite.sh [path/to/morpc-bench]
#
# Prints one line per run: round|workers|workload|ops/s|ratio to the floor|p50 µs|floor p50 µs|MiB/s
set -euo pipefail
bench=${1:-target/release/morpc-bench}
peers=benches/peers/target/release/morpc-peers
for rep in 1 2 3; do
  for w in "1|--inflight 1" "1|--inflight 16" "1|--inflight 256" "1|--conns 1000 --inflight 16" \
           "1|--inflight 4 --payload 1048576" "1|--mode oneway --inflight 16" "2|--inflight 16" "2|--inflight 256"; do
    workers=${w%%|*}; args=${w#*|}
    # shellcheck disable=SC2086
    "$bench" --workers "$workers" --layer client --duration 2 --warmup 0.5 --json $args 2>/dev/null |
      REP=$rep WORKERS=$workers ARGS="$args" python3 -c '
import json, os, sys
d = json.load(sys.stdin); r = {x["name"]: x for x in d["runs"]}
m = r["morpc"]; b = r.get("baseline", {})
ratio = d.get("ratio_to_baseline")
print("|".join([os.environ["REP"], os.environ["WORKERS"], os.environ["ARGS"], "%.0f" % m["ops_per_sec"],
    "%.2f" % ratio if ratio else "-", str(m["latency_us"]["p50"]),
    str(b.get("latency_us", {}).get("p50", "-")), "%.1f" % m.get("mib_per_sec", 0)]))'
  done
  if [ -x "$peers" ]; then
    "$peers" --peer tonic-oneway --duration 2 --warmup 0.5 --inflight 16 --no-baseline --json 2>/dev/null |
      REP=$rep python3 -c '
import json, os, sys
d = json.load(sys.stdin); print("%s|tonic-oneway|16|%.0f" % (os.environ["REP"], d["runs"][0]["ops_per_sec"]))'
  fi
done
