#!/usr/bin/env bash
# The RESP comparison table: redis-benchmark against Redis and against msglog (RESP on its one
# port), same machine, same session, for three durability pairs and -P 1 / -P 16.
#
#   benches/redis_benchmark.sh [runs=3]
#
# PAIRS="always:always" limits the durability pairs (lib.sh's list by default),
# PIPELINES="1 16" and TESTS=set,get the cells.
# Needs a release build and Debian's redis-server + redis-tools. Prints one CSV line per
# run: server,durability,pipeline,test,requests_per_second. Loopback ports chosen free.
runs=${1:-3}
source "$(dirname "$0")/lib.sh"
[ -n "${PAIRS:-}" ] && read -ra durability_pairs <<<"$PAIRS"
pipelines=${PIPELINES:-1 16}
tests=${TESTS:-set,get}

measure() { # label port
  for p in $pipelines; do
    redis-benchmark -p "$2" -t "$tests" -n 200000 -d 100 -c 50 -r 100000 -P "$p" --csv 2>/dev/null |
      tail -n +2 | tr -d '"' | awk -F, -v l="$1" -v p="$p" '{ printf "%s,%s,%s,%.0f\n", l, p, $1, $2 }'
  done
}

echo "server,durability,pipeline,test,requests_per_second"
for run in $(seq "$runs"); do
  for pair in "${durability_pairs[@]}"; do
    policy=${pair%%:*}; aof=${pair##*:}
    port=$(free_port); start_msglog "$port" "$policy"; measure "msglog,$policy" "$port"; stop_server
    port=$(free_port); start_redis "$port" "$aof"; measure "redis,$aof" "$port"; stop_server
  done
done
