#!/usr/bin/env bash
# What TLS costs on the client port: redis-benchmark SET at -P 16 and -P 1 against msglog
# plain and msglog with --tls-cert/--tls-key, in the same run (Redis plain and with its
# tls-port beside them when its build has TLS). `--fsync never`, so that the disk does not
# hide the cost of encryption.
#
#   benches/tls.sh [runs=3]
#
# Needs a release build, openssl, and Debian's redis-server + redis-tools. Prints one CSV
# line per run: server,tls,pipeline,requests_per_second.
runs=${1:-3}
source "$(dirname "$0")/lib.sh"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=bench CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=n0" \
  -keyout "$work/n0.key" -out "$work/n0.csr" 2>/dev/null
openssl x509 -req -in "$work/n0.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 1 \
  -out "$work/n0.pem" -extfile <(printf 'subjectAltName=DNS:n0,IP:127.0.0.1\n') 2>/dev/null
tls_args=(--tls --cacert "$work/ca.pem")

measure() { # label tls(yes|no) port
  local extra=()
  [ "$2" = yes ] && extra=("${tls_args[@]}")
  for p in 16 1; do
    redis-benchmark -p "$3" "${extra[@]}" -t set -n 200000 -d 100 -c 50 -r 100000 -P "$p" --csv 2>/dev/null |
      tail -n +2 | tr -d '"' | awk -F, -v l="$1" -v t="$2" -v p="$p" '{ printf "%s,%s,%s,%.0f\n", l, t, p, $2 }'
  done
}

start_msglog_tls() { # port
  rm -rf "$work/msglog"
  "$msglog" serve --data-dir "$work/msglog" --listen "127.0.0.1:$1" --grpc-listen "127.0.0.1:$(free_port)" \
    --fsync never --tls-cert "$work/n0.pem" --tls-key "$work/n0.key" 2>"$work/msglog.err" &
  pid=$!; wait_ready "$1"
}

start_redis_tls() { # port
  rm -rf "$work/redis"; mkdir -p "$work/redis"
  redis-server --port 0 --tls-port "$1" --bind 127.0.0.1 --dir "$work/redis" --save '' --appendonly no \
    --tls-cert-file "$work/n0.pem" --tls-key-file "$work/n0.key" --tls-ca-cert-file "$work/ca.pem" \
    --tls-auth-clients no >"$work/redis.log" 2>&1 &
  pid=$!; wait_ready "$1"
}

# A subshell, so that a redis-server without TLS (it exits at once) ends only the probe.
redis_has_tls=no
if (port=$(free_port); start_redis_tls "$port"; stop_server) 2>/dev/null; then redis_has_tls=yes
else echo "redis-server has no TLS: Redis rows skipped" >&2; fi

echo "server,tls,pipeline,requests_per_second"
for run in $(seq "$runs"); do
  port=$(free_port); start_msglog "$port" never; measure msglog no "$port"; stop_server
  port=$(free_port); start_msglog_tls "$port"; measure msglog yes "$port"; stop_server
  if [ "$redis_has_tls" = yes ]; then
    port=$(free_port); start_redis "$port" no; measure redis no "$port"; stop_server
    port=$(free_port); start_redis_tls "$port"; measure redis yes "$port"; stop_server
  fi
done
