#!/usr/bin/env bash
# Compaction under churn: <ids> IDs with 100-byte values overwritten by <sets> SETs
# (`msglog bench`, 20 clients, pipeline 16), run twice on a fresh data dir: once with
# `--cleanup none`, once with the cleaner on (its defaults). Prints, for each: SET
# throughput, the log's size at the end and its high-water mark during the run (sampled
# every 0.2 s), and the time a restart takes until the port accepts. The compact run also
# waits for the cleaner to settle (no pass for 5 s) before measuring "after cleaning".
#
#   benches/churn.sh [ids=100000] [sets=20000000] [segment-bytes=16M] [fsync=never]
#
# Live data is ids × the mean framed record size (the none run's bytes / records). Needs
# a release build and about sets × 140 bytes of free disk under $TMPDIR for the none run.
ids=${1:-100000}
sets=${2:-20000000}
segment_bytes=${3:-16M}
fsync=${4:-never}
source "$(dirname "$0")/lib.sh"

data="$work/data"
port=
serve() { # cleanup
  port=$(free_port)
  "$msglog" serve --data-dir "$data" --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$(free_port)" \
    --fsync "$fsync" --segment-bytes "$segment_bytes" --cleanup "$1" --stats-interval 0s \
    --log-level info 2>>"$work/msglog.err" &
  pid=$!; wait_ready_within "$port" 600
}
# du fails when a file goes while it walks (a swap, a manifest rewrite), yet its total of
# the rest is still a sample: without it, samples taken during a swap were dropped.
log_bytes() { { du -sb "$data/log" 2>/dev/null || true; } | cut -f1; }
load() {
  "$msglog" bench --addr "127.0.0.1:$port" --clients 20 --pipeline 16 --keys "$ids" --value-size 100 \
    --requests "$sets" --workload set --json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f" % r["throughput"]); sys.exit(r["errors"] > 0)'
}
# Samples the log's size until the server stops; the largest sample is printed on exit.
sample() {
  local high=0 now
  while kill -0 "$pid" 2>/dev/null; do
    now=$(log_bytes || echo 0); [ -n "$now" ] && [ "$now" -gt "$high" ] && high=$now
    echo "$high" >"$work/high"; sleep 0.2
  done
}
# Sets $restart; not run in $(...), whose pipe the restarted server would hold open.
timed_restart() { # cleanup
  stop_server
  local start end
  start=$(date +%s.%N); serve "$1"; end=$(date +%s.%N)
  restart=$(python3 -c "print('%.2f' % ($end - $start))")
}

# --cleanup none
serve none
sample & sampler=$!
none_rate=$(load)
none_records=$(stats_field "$port" records); none_bytes=$(log_bytes)
timed_restart none; none_restart=$restart
stop_server; wait "$sampler" || true; none_high=$(cat "$work/high")
record_bytes=$((none_bytes / none_records))
live=$((ids * record_bytes))

# --cleanup compact
rm -rf "$data"
serve compact
sample & sampler=$!
compact_rate=$(load)
runs=-1; quiet=0
for _ in $(seq 600); do # at most 5 minutes
  now=$(stats_field "$port" cleaner_runs)
  if [ "$now" = "$runs" ]; then quiet=$((quiet + 1)); else quiet=0; runs=$now; fi
  [ "$quiet" -ge 10 ] && break
  sleep 0.5
done
compact_bytes=$(log_bytes)
timed_restart compact; compact_restart=$restart
stop_server; wait "$sampler" || true; compact_high=$(cat "$work/high")
rates=$(grep "cleaned the log" "$work/msglog.err" |
  sed -E 's/.*bytes_in=([0-9]+).*seconds=([0-9.]+).*/\1 \2/' |
  awk '{ b += $1; t += $2 } END { if (t > 0) printf "%.0f", b / t / 1048576; else print "n/a" }')

# The pass length and the wait before the next check set how much dirty log piles up
# under load, so the high-water mark's cause is in these figures.
passes=$(grep "cleaned the log" "$work/msglog.err" | sed -E 's/.*bytes_in=([0-9]+).*seconds=([0-9.]+).*/\2 \1/' | sort -n |
  awk '{ s[NR] = $1; b[NR] = $2 } END { if (NR) printf "median %.2f s (%.0f MB in), longest %.2f s (%.0f MB in)", s[int((NR + 1) / 2)], b[int((NR + 1) / 2)] / 1e6, s[NR], b[NR] / 1e6 }')

seg=$(python3 -c "
s='$segment_bytes'.upper(); m={'K':1<<10,'M':1<<20,'G':1<<30}
print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))")
mb() { python3 -c "print('%.1f MB' % ($1 / 1e6))"; }
echo "ids=$ids sets=$sets segment=$segment_bytes fsync=$fsync record≈${record_bytes}B live≈$(mb "$live")"
echo "run,set_per_sec,log_at_end,log_high_water,restart_s"
echo "none,$none_rate,$(mb "$none_bytes"),$(mb "$none_high"),$none_restart"
echo "compact,$compact_rate,$(mb "$compact_bytes"),$(mb "$compact_high"),$compact_restart"
echo "cleaner passes=$runs input MiB/s (all passes)=$rates throughput ratio compact/none=$(python3 -c "print('%.2f' % ($compact_rate / $none_rate))")"
echo "pass length: $passes"
echo "targets: after cleaning <= 2*live + 1 segment = $(mb $((2 * live + seg))); high water <= 4*live + 2 segments = $(mb $((4 * live + 2 * seg)))"
