#!/usr/bin/env bash
# The issue-5 table: redis-benchmark against Redis and against msglog (RESP on its one
# port), same machine, same session, for three durability pairs and -P 1 / -P 16.
#
#   benches/redis_benchmark.sh [runs=3]
#
# Needs a release build and Debian's redis-server + redis-tools. Prints one CSV line per
# run: server,durability,pipeline,test,requests_per_second. Loopback ports chosen free.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
msglog=./target/release/msglog
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {
  for _ in $(seq 100); do redis-cli -p "$1" PING >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "server on $1 did not come up" >&2; exit 1
}
measure() { # label port
  for p in 1 16; do
    redis-benchmark -p "$2" -t set,get -n 200000 -d 100 -c 50 -r 100000 -P "$p" --csv 2>/dev/null |
      tail -n +2 | tr -d '"' | awk -F, -v l="$1" -v p="$p" '{ printf "%s,%s,%s,%.0f\n", l, p, $1, $2 }'
  done
}

echo "server,durability,pipeline,test,requests_per_second"
for run in $(seq "$runs"); do
  for pair in "always:always" "interval=1000:everysec" "never:no"; do
    policy=${pair%%:*}; aof=${pair##*:}
    port=$(free_port); rm -rf "$work/m"
    "$msglog" serve --data-dir "$work/m" --listen "127.0.0.1:$port" --fsync "$policy" 2>/dev/null &
    pid=$!; wait_ready "$port"; measure "msglog,$policy" "$port"; kill "$pid"; wait "$pid"; pid=""
    port=$(free_port); rm -rf "$work/r"; mkdir -p "$work/r"
    if [ "$aof" = no ]; then appendonly=no; else appendonly=yes; fi
    redis-server --port "$port" --bind 127.0.0.1 --dir "$work/r" --save '' --appendonly "$appendonly" \
      --appendfsync "${aof/no/always}" >/dev/null 2>&1 &
    pid=$!; wait_ready "$port"; measure "redis,$aof" "$port"; kill "$pid"; wait "$pid" || true; pid=""
  done
done
