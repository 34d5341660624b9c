#!/usr/bin/env bash
# Log compaction under churn: N IDs with 100-byte values overwritten by M SETs (`msglog
# bench`), then the same data dir served with the cleaner on. Prints the log's size on
# disk before and after cleaning and the cleaner's throughput from its `cleaned the log`
# line (bytes read over seconds).
#
#   benches/compaction.sh [ids=100000] [sets=1000000] [segment-bytes=16M]
#
# Prints CSV: ids,sets,bytes_before,bytes_after,segments_in,segments_out,cleaner_mb_per_sec
ids=${1:-100000}
sets=${2:-1000000}
segment_bytes=${3:-16M}
source "$(dirname "$0")/lib.sh"

data="$work/data"
serve() { # port cleanup
  "$msglog" serve --data-dir "$data" --listen "127.0.0.1:$1" --grpc-listen "127.0.0.1:$(free_port)" \
    --fsync never --segment-bytes "$segment_bytes" --cleanup "$2" --min-cleanable-ratio 0.01 \
    --stats-interval 0s --log-level info 2>>"$work/msglog.err" &
  pid=$!; wait_ready_within "$1" 600
}
log_bytes() { du -sb "$data/log" | cut -f1; }

port=$(free_port); serve "$port" none
"$msglog" bench --addr "127.0.0.1:$port" --clients 20 --pipeline 16 --keys "$ids" --value-size 100 \
  --requests "$sets" --workload set >/dev/null
stop_server
before=$(log_bytes)

port=$(free_port); serve "$port" compact
for _ in $(seq 1200); do
  grep -q "cleaned the log" "$work/msglog.err" && break
  sleep 0.5
done
line=$(grep "cleaned the log" "$work/msglog.err" | head -n 1)
[ -n "$line" ] || { echo "no cleaning pass within 10 minutes" >&2; cat "$work/msglog.err" >&2; exit 1; }
stop_server
after=$(log_bytes)

field() { sed -E "s/.*$1=([0-9.]+).*/\1/" <<<"$line"; }
echo "ids,sets,bytes_before,bytes_after,segments_in,segments_out,cleaner_mb_per_sec"
awk -v i="$ids" -v s="$sets" -v b="$before" -v a="$after" -v si="$(field segments_in)" \
  -v so="$(field segments_out)" -v bi="$(field bytes_in)" -v t="$(field seconds)" \
  'BEGIN { printf "%d,%d,%d,%d,%d,%d,%.1f\n", i, s, b, a, si, so, (t > 0 ? bi / t / 1048576 : 0) }'
