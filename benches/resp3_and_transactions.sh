#!/usr/bin/env bash
# RESP3 against RESP2, and MULTI/EXEC against plain pipelining, msglog next to Redis, both
# fsyncing every write (msglog --fsync always, Redis appendfsync always), same session.
#
#   benches/resp3_and_transactions.sh [runs=3]
#
# Prints CSV lines:
#   resp,<server>,<protocol>,<test>,requests_per_second   (redis-benchmark -c 50 -P 1)
#   tx,<server>,<mode>,sets_per_second,round_trips_per_second   (benches/multi_exec.py)
runs=${1:-3}
source "$(dirname "$0")/lib.sh"

resp() { # label port
  for protocol in 2 3; do
    flag=""; [ "$protocol" = 3 ] && flag="-3"
    redis-benchmark -p "$2" $flag -t set,get -n 100000 -d 100 -c 50 -r 100000 --csv 2>/dev/null |
      tail -n +2 | tr -d '"' | awk -F, -v l="$1" -v p="RESP$protocol" '{ printf "resp,%s,%s,%s,%.0f\n", l, p, $1, $2 }'
  done
}

tx() { # label port
  for mode in multi pipeline; do
    echo "tx,$1,$(python3 benches/multi_exec.py "$2" "$mode" 50 5 10)"
  done
}

for run in $(seq "$runs"); do
  port=$(free_port); start_msglog "$port" always; resp msglog "$port"; tx msglog "$port"; stop_server
  port=$(free_port); start_redis "$port" always; resp redis "$port"; tx redis "$port"; stop_server
done
