#!/usr/bin/env bash
# Side-by-side server benchmark: msglog (text protocol) under each fsync policy, and,
# when redis-server is installed, Redis with the matching AOF setting driven by the same
# load generator over RESP. Prints one line per run; docs/BENCHMARKS.md reports medians.
#
#   benches/server.sh [runs=3] [requests=200000]
#
# Needs: a release build (cargo build --release). Redis: apt-get install redis-server.
# Everything listens on 127.0.0.1 ports chosen free at run time; data goes to a temp dir.
runs=${1:-3}
requests=${2:-200000}
source "$(dirname "$0")/lib.sh"

load() { # port protocol workload
  local preload=""; [ "$3" = get ] && preload=--preload
  "$msglog" bench --addr "127.0.0.1:$1" --protocol "$2" --workload "$3" --clients 50 \
    --value-size 100 --keys 100000 --requests "$requests" $preload --json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_us"]; print("%.0f req/s p50=%.0fus p99=%.0fus errors=%d" % (r["throughput"], l["p50"], l["p99"], r["errors"]))'
}

for pair in "${durability_pairs[@]}"; do
  policy=${pair%%:*}; aof=${pair##*:}
  for run in $(seq "$runs"); do
    port=$(free_port); start_msglog "$port" "$policy"
    echo "msglog --fsync $policy run $run SET $(load "$port" text set)"
    echo "msglog --fsync $policy run $run GET $(load "$port" text get)"
    echo "msglog --fsync $policy run $run $("$msglog" client --addr "127.0.0.1:$port" STATS | grep -o 'records=[0-9]* .*fsyncs=[0-9]*')"
    stop_server
    if command -v redis-server >/dev/null; then
      port=$(free_port); start_redis "$port" "$aof"
      echo "redis appendfsync=$aof run $run SET $(load "$port" resp set)"
      echo "redis appendfsync=$aof run $run GET $(load "$port" resp get)"
      stop_server
    fi
  done
done
