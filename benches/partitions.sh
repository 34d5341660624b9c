#!/usr/bin/env bash
# Partitioned cluster against a single node, everything on this machine, `--fsync always`
# on every node, 50 clients, 100-byte values (msglog bench):
#  - a single node (standalone);
#  - 3 nodes, 1 partition, tolerance 1 (every node holds everything): through the leader,
#    then through all three at once (one client process per node, 2 requests in 3
#    forwarded; the figure is their sum);
#  - 3 nodes, 6 partitions, 3 copies (every node still holds everything, each leads 2
#    partitions): through all three at once. Against the row above it, what spreading the
#    leaderships gains and what a log (and an fsync) per partition costs;
#  - 3 nodes, 3 partitions, --replication-factor 2 --tolerance 1 (each node holds 2 in 3
#    IDs): through all three at once.
# For each, the CPU every msglog process spent (utime + stime from /proc) per
# acknowledged SET, the figure that says how a cluster scales when each node has its own
# cores (docs/BENCHMARKS.md, "Partitions").
#
#   benches/partitions.sh [runs=3] [requests=100000]
#
# Needs: a release build (cargo build --release). Loopback ports chosen free at run time;
# data in a temp dir removed on exit.
runs=${1:-3}
requests=${2:-100000}
# MSGLOG_FSYNC=never separates the cost of fsyncs from the rest of the per-partition work.
fsync=${MSGLOG_FSYNC:-always}
source "$(dirname "$0")/lib.sh"

# CPU seconds (user + system) spent so far by every process in $pids.
cpu_seconds() {
  local ticks=0 p
  for p in "${pids[@]}"; do
    [ -r "/proc/$p/stat" ] || { echo "msglog process $p is gone (see $work/*.err)" >&2; exit 1; }
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  python3 -c "print($ticks / $(getconf CLK_TCK))"
}

bench() { # port requests -> JSON on stdout
  "$msglog" bench --addr "127.0.0.1:$1" --workload set --clients "${3:-50}" --value-size 100 --keys 100000 \
    --requests "$2" --json 2>/dev/null
}

# Runs one bench per port given, all at once, and prints the summed throughput, the
# slowest p50/p99, errors, and the servers' CPU per acknowledged SET.
load() { # ports...
  local n=$# i=0 port before after clients=$((50 / $#)) benches=()
  before=$(cpu_seconds)
  for port in "$@"; do
    bench "$port" $((requests / n)) "$clients" >"$work/bench.$i.json" &
    benches+=($!); i=$((i + 1))
  done
  for p in "${benches[@]}"; do wait "$p" || { echo "a bench run failed" >&2; exit 1; }; done
  after=$(cpu_seconds)
  python3 - "$work" "$n" "$before" "$after" <<'EOF'
import json, sys
work, n, before, after = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
runs = [json.load(open(f"{work}/bench.{i}.json")) for i in range(n)]
throughput = sum(r["throughput"] for r in runs)
acked = sum(r["requests"] - r["errors"] for r in runs)
errors = sum(r["errors"] for r in runs)
p50 = max(r["latency_us"]["p50"] for r in runs)
p99 = max(r["latency_us"]["p99"] for r in runs)
cpu_us = (after - before) * 1e6 / max(acked, 1)
print("%.0f req/s p50=%.0fus p99=%.0fus errors=%d cpu=%.1fus/SET" % (throughput, p50, p99, errors, cpu_us))
EOF
}

# Starts 3 cluster nodes with the given extra flags; sets ports[] (client ports).
cluster() { # args...
  local i voters grpc=()
  ports=()
  for i in 0 1 2; do ports+=("$(free_port)"); grpc+=("$(free_port)"); done
  voters="c1=127.0.0.1:${grpc[0]},c2=127.0.0.1:${grpc[1]},c3=127.0.0.1:${grpc[2]}"
  for i in 0 1 2; do
    rm -rf "$work/c$((i + 1))"
    node "c$((i + 1))" "${ports[$i]}" "${grpc[$i]}" --fsync "$fsync" --node-id "c$((i + 1))" --cluster "$voters" "$@"
  done
}

# Waits until every one of `partitions` partitions has a leader, its preferred one, and
# an ISR of `isr-size` copies, as `msglog cluster status --json` lists them.
settled() { # partitions isr-size
  for _ in $(seq 600); do
    if "$msglog" cluster status --addr "127.0.0.1:${ports[0]}" --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
want, copies = int(sys.argv[1]), int(sys.argv[2])
# One partition: the header is its status. Several: each led by its preferred replica
# (the first listed), so leaderships are spread as placement says.
parts = s.get("partitions") or [dict(s, replicas=[s.get("leader")])]
ok = len(parts) == want and all(
    p.get("leader") and p["leader"] == p["replicas"][0] and len(p.get("isr", [])) == copies for p in parts)
sys.exit(0 if ok else 1)' "$1" "$2"; then return 0; fi
    sleep 0.05
  done
  echo "the cluster did not settle ($1 partitions, ISR of $2)" >&2; exit 1
}

leader_port() {
  local port
  for port in "${ports[@]}"; do [ "$(stats_field "$port" leader)" = self ] && { echo "$port"; return; }; done
  echo "no node says it leads" >&2; exit 1
}

for run in $(seq "$runs"); do
  rm -rf "$work/single"
  p=$(free_port); node single "$p" "$(free_port)" --fsync "$fsync"
  echo "run $run single node: $(load "$p")"
  stop_all

  cluster --tolerance 1
  settled 1 3
  lp=$(leader_port)
  echo "run $run 3 nodes, P=1, R=3, via the leader: $(load "$lp")"
  echo "run $run 3 nodes, P=1, R=3, via all three: $(load "${ports[@]}")"
  stop_all

  cluster --partitions 6 --replication-factor 3 --tolerance 1
  settled 6 3
  echo "run $run 3 nodes, P=6, R=3, via all three: $(load "${ports[@]}")"
  stop_all

  cluster --partitions 3 --replication-factor 2 --tolerance 1
  settled 3 2
  echo "run $run 3 nodes, P=3, R=2, via all three: $(load "${ports[@]}")"
  stop_all
done
