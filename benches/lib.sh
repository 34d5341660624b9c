# Shared by the benchmark scripts (source it): a temp work dir cleaned up on exit, free
# loopback ports, and msglog / Redis servers started with matching durability and
# stopped by PID. One server runs at a time; its PID is in $pid.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
msglog=./target/release/msglog
work=$(mktemp -d)
pid=""
# Scripts that run several nodes at once (`node`) keep their PIDs here.
pids=()
stop_all() { for p in ${pids[@]+"${pids[@]}"}; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
cleanup() { stop_all; [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# The durability pairs compared: msglog --fsync policy : Redis appendfsync (no = no AOF).
durability_pairs=("always:always" "interval=1000:everysec" "never:no")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ready() { # port
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on $1 did not come up" >&2; exit 1
}

start_msglog() { # port fsync-policy
  rm -rf "$work/msglog"
  "$msglog" serve --data-dir "$work/msglog" --listen "127.0.0.1:$1" --grpc-listen "127.0.0.1:$(free_port)" \
    --fsync "$2" 2>"$work/msglog.err" &
  pid=$!; wait_ready "$1"
}

start_redis() { # port appendfsync (no = AOF off)
  local appendonly=yes
  [ "$2" = no ] && appendonly=no
  rm -rf "$work/redis"; mkdir -p "$work/redis"
  redis-server --port "$1" --bind 127.0.0.1 --dir "$work/redis" --save '' \
    --appendonly "$appendonly" --appendfsync "${2/no/always}" >"$work/redis.log" 2>&1 &
  pid=$!; wait_ready "$1"
}

# One of several nodes: `msglog serve` with data in $work/<name>, stderr in $work/<name>.err.
node() { # name client-port grpc-port args...
  local name=$1 port=$2 grpc=$3; shift 3
  "$msglog" serve --data-dir "$work/$name" --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$grpc" \
    --stats-interval 0s "$@" 2>"$work/$name.err" &
  pids+=($!); wait_ready "$port"
}

# One field of a node's STATS line.
stats_field() { # port key
  "$msglog" client --addr "127.0.0.1:$1" STATS | tr ' ' '\n' | sed -n "s/^$2=//p"
}

stop_server() { kill "$pid"; wait "$pid" || true; pid=""; }

# wait_ready's 5 s is too short for a server recovering gigabytes of log on restart;
# gives up early if the server died.
wait_ready_within() { # port seconds
  local deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && break
    sleep 0.02
  done
  echo "server on $1 did not come up within $2 s" >&2; exit 1
}

# MSGLOG_BIN runs another build (a before/after comparison in one session).
msglog=${MSGLOG_BIN:-$msglog}
