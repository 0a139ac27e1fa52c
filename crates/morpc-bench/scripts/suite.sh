#!/usr/bin/env bash
# The issue-#14 suite: RpcClient against the in-run floor in the in-process layout,
# three interleaved rounds, and tonic's client streaming from the peers workspace when
# it is built (`cargo build --release --manifest-path benches/peers/Cargo.toml`).
#
#   crates/morpc-bench/scripts/suite.sh [path/to/morpc-bench [another/morpc-bench ...]]
#
# With several builds, each workload runs once per build in turn (an A/B interleaved
# workload by workload, so a change of the machine's state hits both alike).
#
# Prints one line per run: round|build|workers|workload|ops/s|ratio to the floor|p50 µs|
# floor p50 µs|MiB/s|process peak RSS bytes
set -euo pipefail
if [ $# -eq 0 ]; then set -- target/release/morpc-bench; fi
peers=benches/peers/target/release/morpc-peers
for rep in 1 2 3; do
  for w in "1|--inflight 1" "1|--inflight 16" "1|--inflight 256" "1|--conns 1000 --inflight 16" \
           "1|--inflight 4 --payload 1048576" "1|--mode oneway --inflight 16" "2|--inflight 16" "2|--inflight 256"; do
    workers=${w%%|*}; args=${w#*|}
    for bench in "$@"; do
      # shellcheck disable=SC2086
      "$bench" --workers "$workers" --layer client --duration 2 --warmup 0.5 --json $args 2>/dev/null |
        REP=$rep BUILD="$bench" WORKERS=$workers ARGS="$args" python3 -c '
import json, os, sys
d = json.load(sys.stdin); r = {x["name"]: x for x in d["runs"]}
m = r["morpc"]; b = r.get("baseline", {})
ratio = d.get("ratio_to_baseline")
print("|".join([os.environ["REP"], os.environ["BUILD"], os.environ["WORKERS"], os.environ["ARGS"],
    "%.0f" % m["ops_per_sec"], "%.2f" % ratio if ratio else "-", str(m["latency_us"]["p50"]),
    str(b.get("latency_us", {}).get("p50", "-")), "%.1f" % m.get("mib_per_sec", 0),
    str(m["peak_rss_bytes"]["client"])]))'
    done
  done
  if [ -x "$peers" ]; then
    "$peers" --peer tonic-oneway --duration 2 --warmup 0.5 --inflight 16 --no-baseline --json 2>/dev/null |
      REP=$rep python3 -c '
import json, os, sys
d = json.load(sys.stdin); print("%s|tonic-oneway|16|%.0f" % (os.environ["REP"], d["runs"][0]["ops_per_sec"]))'
  fi
done
