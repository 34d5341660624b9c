#!/usr/bin/env bash
# Side-by-side server benchmark: msglog (text protocol) under each fsync policy, and,
# when redis-server is installed, Redis with the matching AOF setting driven by the same
# load generator over RESP. Prints one line per run; docs/BENCHMARKS.md reports medians.
#
#   benches/server.sh [runs=3] [requests=200000]
#
# Needs: a release build (cargo build --release). Redis: apt-get install redis-server.
# Everything listens on 127.0.0.1 ports chosen free at run time; data goes to a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
requests=${2:-200000}
msglog=./target/release/msglog
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # port
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on $1 did not come up" >&2; exit 1
}
load() { # port protocol workload
  local preload=""; [ "$3" = get ] && preload=--preload
  "$msglog" bench --addr "127.0.0.1:$1" --protocol "$2" --workload "$3" --clients 50 \
    --value-size 100 --keys 100000 --requests "$requests" $preload --json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_us"]; print("%.0f req/s p50=%.0fus p99=%.0fus errors=%d" % (r["throughput"], l["p50"], l["p99"], r["errors"]))'
}

for pair in "always:always" "interval=1000:everysec" "never:no"; do
  policy=${pair%%:*}; aof=${pair##*:}
  for run in $(seq "$runs"); do
    port=$(free_port); rm -rf "$work/msglog"
    "$msglog" serve --data-dir "$work/msglog" --listen "127.0.0.1:$port" --fsync "$policy" 2>"$work/msglog.err" &
    pid=$!; wait_ready "$port"
    echo "msglog --fsync $policy run $run SET $(load "$port" text set)"
    echo "msglog --fsync $policy run $run GET $(load "$port" text get)"
    echo "msglog --fsync $policy run $run $("$msglog" client --addr "127.0.0.1:$port" STATS | grep -o 'records=[0-9]* .*fsyncs=[0-9]*')"
    kill "$pid"; wait "$pid"; pid=""
    if command -v redis-server >/dev/null; then
      port=$(free_port); rm -rf "$work/redis"; mkdir -p "$work/redis"
      if [ "$aof" = no ]; then appendonly=no; else appendonly=yes; fi
      redis-server --port "$port" --bind 127.0.0.1 --dir "$work/redis" --save '' \
        --appendonly "$appendonly" --appendfsync "${aof/no/always}" >"$work/redis.log" 2>&1 &
      pid=$!; wait_ready "$port"
      echo "redis appendfsync=$aof run $run SET $(load "$port" resp set)"
      echo "redis appendfsync=$aof run $run GET $(load "$port" resp get)"
      kill "$pid"; wait "$pid" || true; pid=""
    fi
  done
done
