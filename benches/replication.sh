#!/usr/bin/env bash
# Replication benchmark, everything on this machine, `--fsync always` on every node:
#  1. SET throughput and latency (50 clients, 100-byte values, msglog bench) against a
#     single node, then against a leader with two followers at tolerance 0, 1 and 2;
#     and a 3-node cluster (`--cluster`, tolerance 1: every write on the whole ISR, at least
#     2 nodes), loaded through its leader and through a follower that forwards;
#  2. catch-up: a follower starting empty against a leader holding a log of about
#     <catchup-mib> MiB; prints MiB/s from start until its last offset equals the leader's.
#
#   benches/replication.sh [runs=3] [requests=200000] [catchup-mib=1024]
#
# Needs: a release build (cargo build --release). Loopback ports chosen free at run time;
# data in a temp dir removed on exit.
runs=${1:-3}
requests=${2:-200000}
catchup_mib=${3:-1024}
source "$(dirname "$0")/lib.sh"

wait_followers() { # leader-port count
  for _ in $(seq 200); do [ "$(stats_field "$1" followers)" = "$2" ] && return 0; sleep 0.05; done
  echo "followers did not connect" >&2; exit 1
}

load() { # port
  "$msglog" bench --addr "127.0.0.1:$1" --workload set --clients 50 --value-size 100 --keys 100000 \
    --requests "$requests" --json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_us"]; print("%.0f req/s p50=%.0fus p99=%.0fus errors=%d" % (r["throughput"], l["p50"], l["p99"], r["errors"]))'
}

for run in $(seq "$runs"); do
  rm -rf "$work"/{single,leader,f1,f2}
  p=$(free_port); node single "$p" "$(free_port)" --fsync always
  echo "run $run single-node SET $(load "$p")"
  stop_all
  for tolerance in 0 1 2; do
    rm -rf "$work"/{leader,f1,f2}
    lp=$(free_port); lg=$(free_port)
    node leader "$lp" "$lg" --fsync always --tolerance "$tolerance"
    node f1 "$(free_port)" "$(free_port)" --fsync always --follow "127.0.0.1:$lg"
    node f2 "$(free_port)" "$(free_port)" --fsync always --follow "127.0.0.1:$lg"
    wait_followers "$lp" 2
    echo "run $run leader+2 tolerance=$tolerance SET $(load "$lp")"
    stop_all
  done
  rm -rf "$work"/{c1,c2,c3}
  cp=(); cg=()
  for i in 1 2 3; do cp+=("$(free_port)"); cg+=("$(free_port)"); done
  voters="c1=127.0.0.1:${cg[0]},c2=127.0.0.1:${cg[1]},c3=127.0.0.1:${cg[2]}"
  for i in 0 1 2; do
    node "c$((i + 1))" "${cp[$i]}" "${cg[$i]}" --fsync always --node-id "c$((i + 1))" --cluster "$voters" --tolerance 1
  done
  leader_port=; follower_port=
  for _ in $(seq 400); do
    for port in "${cp[@]}"; do
      if [ "$(stats_field "$port" leader)" = self ] && [ "$(stats_field "$port" isr | tr ',' '\n' | grep -c .)" = 3 ]; then
        leader_port=$port
      fi
    done
    [ -n "$leader_port" ] && break; sleep 0.05
  done
  [ -n "$leader_port" ] || { echo "the cluster elected no leader with all 3 in sync" >&2; exit 1; }
  for port in "${cp[@]}"; do [ "$port" != "$leader_port" ] && follower_port=$port; done
  echo "run $run cluster(3) tolerance=1 SET via the leader $(load "$leader_port")"
  echo "run $run cluster(3) tolerance=1 SET via a follower (forwarded) $(load "$follower_port")"
  stop_all
done

# Catch-up: fill a leader with ~catchup_mib MiB (4 KiB values, fsync never to fill fast),
# then time an empty follower until it holds the same last offset.
rm -rf "$work"/{leader,f1,f2}
lp=$(free_port); lg=$(free_port)
node leader "$lp" "$lg" --fsync never
records=$((catchup_mib * 1024 / 4))
"$msglog" bench --addr "127.0.0.1:$lp" --workload set --clients 16 --value-size 4065 --keys "$records" \
  --requests "$records" --pipeline 16 >/dev/null 2>&1
last=$(stats_field "$lp" last_offset); bytes=$(stats_field "$lp" bytes)
fp=$(free_port)
start=$(date +%s.%N)
node f1 "$fp" "$(free_port)" --fsync always --follow "127.0.0.1:$lg"
until [ "$(stats_field "$fp" last_offset)" = "$last" ]; do sleep 0.02; done
end=$(date +%s.%N)
python3 -c "b=$bytes; s=$end-$start; print('catch-up: %d records, %.0f MiB in %.2f s = %.0f MiB/s (follower --fsync always)' % ($last+1, b/2**20, s, b/2**20/s))"
stop_all
