#!/usr/bin/env bash
# Server CPU time and context switches per request, msglog next to Redis, under
# `redis-benchmark -c 50 -P 1` (the cells where msglog trails Redis). Throughput on this
# shared 2-vCPU machine is noisy; CPU per request moves much less from run to run.
#
#   benches/cost_per_request.sh [runs=2] [test=set] [requests=200000]
#
# PAIRS="always:always" limits the durability pairs (lib.sh's list by default);
# PIPELINE=16 measures another -P than 1; VARIANTS="before=/path/a after=/path/b" runs
# several msglog builds (or wrapper scripts that set MSGLOG_* variables) in turn in each
# run, before Redis, each row labelled with its name instead of "msglog".
# Reads utime+stime from /proc/<pid>/stat and voluntary+involuntary context switches of
# every server thread from /proc/<pid>/task/*/status, before and after the measured run
# (a 20,000-request warm-up fills the key space first). Prints CSV:
# server,durability,test,requests_per_second,cpu_us_per_request,switches_per_request
runs=${1:-2}
test=${2:-set}
requests=${3:-200000}
source "$(dirname "$0")/lib.sh"
[ -n "${PAIRS:-}" ] && read -ra durability_pairs <<<"$PAIRS"
pipeline=${PIPELINE:-1}

switches() { cat /proc/"$pid"/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }'; }
cpu_ticks() { awk '{ print $14 + $15 }' /proc/"$pid"/stat; }

measure() { # label
  redis-benchmark -p "$port" -t "$test" -n 20000 -d 100 -c 50 -r 100000 -P "$pipeline" -q >/dev/null
  local s0 c0 s1 c1 rps
  s0=$(switches); c0=$(cpu_ticks)
  rps=$(redis-benchmark -p "$port" -t "$test" -n "$requests" -d 100 -c 50 -r 100000 -P "$pipeline" --csv |
    tail -n 1 | tr -d '"' | cut -d, -f2)
  s1=$(switches); c1=$(cpu_ticks)
  awk -v l="$1" -v t="$test" -v r="$rps" -v n="$requests" -v c=$((c1 - c0)) -v s=$((s1 - s0)) \
    -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%s,%s,%.0f,%.1f,%.2f\n", l, t, r, c * 1e6 / hz / n, s / n }'
}

echo "server,durability,test,requests_per_second,cpu_us_per_request,switches_per_request"
for run in $(seq "$runs"); do
  for pair in "${durability_pairs[@]}"; do
    policy=${pair%%:*}; aof=${pair##*:}
    for variant in ${VARIANTS:-msglog=$msglog}; do
      msglog=${variant#*=}
      port=$(free_port); start_msglog "$port" "$policy"; measure "${variant%%=*},$policy"; stop_server
    done
    port=$(free_port); start_redis "$port" "$aof"; measure "redis,$aof"; stop_server
  done
done
