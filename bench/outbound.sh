#!/usr/bin/env bash
# Outbound I/O from scripts (sluice.http), side by side in one run.
#   bash bench/outbound.sh proxy [CONNS] [SECS]   CONNS (1,000) clients at once, each request answered with a
#       local upstream's (nginx, "hello"), through Sluice (a script calling sluice.http.get) and then through
#       nginx's proxy_pass, each warmed up for 3 s, then ROUNDS (4) times alternately (each round in the
#       other order than the last):
#       requests/s, p50/p99, the gateway's CPU per request and
#       the ratio of the two each round, memory per request in flight (the same CONNS held on an upstream that
#       waits 2 s)
#   bash bench/outbound.sh relay [N] [HZ] [SECS]  one upstream event stream (HZ, 20, events/s) relayed to N
#       (10,000) subscribers (sluice.http.events, then sluice.publish), against the same events published
#       directly: deliveries/s, p50/p99, the gateway's CPU per delivery
# Installs wrk and nginx-light if missing. Prints one line per measurement.
source "$(dirname "$0")/lib.sh"
MODE=${1:-proxy}
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  systemctl stop nginx 2>/dev/null || service nginx stop 2>/dev/null || true
fi
bench_build
NG_DIR=$(mktemp -d /tmp/sluice-outbound.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$NG_DIR"; }
trap cleanup EXIT

wait_up() { for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }
# user+system CPU seconds of a process and its children (nginx's master and workers)
cpu_tree() { local t=0 p; for p in $1 $(pgrep -P "$1" | tr '\n' ' '); do t=$(awk -v t="$t" -v hz="$(getconf CLK_TCK)" '{print t + ($14+$15)/hz}' "/proc/$p/stat"); done; echo "$t"; }
rss_tree() { local t=0 p; for p in $1 $(pgrep -P "$1" | tr '\n' ' '); do t=$((t + $(rss_kb "$p"))); done; echo "$t"; }

# nginx NAME PORT BODY-of-server-block -> starts it (one worker), sets NG_PID
nginx_on() {
  mkdir -p "$NG_DIR/$1"
  cat >"$NG_DIR/$1/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $NG_DIR/$1/nginx.pid;
error_log $NG_DIR/$1/error.log warn;
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:${UP_PORT:-1}; keepalive 256; }
  server {
    listen 127.0.0.1:$2;
    location = /health { return 200 "ok"; }
    $3
  }
}
CONF
  nginx -c "$NG_DIR/$1/nginx.conf" -p "$NG_DIR/$1/" -g "daemon off;" 2>>"$NG_DIR/$1/error.log" &
  NG_PID=$!
  PIDS+=("$NG_PID")
  wait_up "$2"
}

# load NAME PORT PID: wrk through one gateway; prints its line
load() {
  local c0 c1 out
  c0=$(cpu_tree "$3")
  out=$(wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:$2/p" 2>&1)
  c1=$(cpu_tree "$3")
  local reqs p50 p99 errors
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  awk -v n="$1" -v r="$reqs" -v s="$SECS" -v c0="$c0" -v c1="$c1" -v p50="$p50" -v p99="$p99" -v e="$errors" \
    'BEGIN { printf "%s: requests_per_sec=%.0f p50=%s p99=%s gateway_cpu_per_request_us=%.1f %s\n", n, r / s, p50, p99, (c1 - c0) * 1e6 / r, e }'
}

# held NAME PORT PID: CONNS requests held on the slow upstream; memory per request in flight
held() {
  local r0 r1
  r0=$(rss_tree "$3")
  python3 - "$2" "$CONNS" <<'PY' &
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
time.sleep(3)
PY
  local py=$!
  sleep 1.5
  r1=$(rss_tree "$3")
  wait "$py" 2>/dev/null || true
  awk -v n="$1" -v a="$r0" -v b="$r1" -v c="$CONNS" 'BEGIN { printf "%s: held=%d memory_per_request_in_flight_bytes=%.0f\n", n, c, (b - a) * 1024 / c }'
}

if [ "$MODE" = proxy ]; then
  CONNS=${2:-1000}
  SECS=${3:-10}
  echo "outbound proxy: clients=$CONNS seconds=$SECS ($(date +%F))"
  UP_PORT=$(free_port)
  nginx_on upstream "$UP_PORT" 'location = / { return 200 "hello\n"; } location = /slow { echo_sleep 2; echo "slow"; }'
  SL_PORT=$(free_port)
  UPSTREAM="http://127.0.0.1:$UP_PORT" "$BUILD/sluice" --log-level warn --listen "127.0.0.1:$SL_PORT" ${SLUICE_ARGS:-} \
    "$BENCH_DIR/apps/proxy.lua" 2>/dev/null &
  SL_PID=$!
  PIDS+=("$SL_PID")
  wait_up "$SL_PORT"
  NP_PORT=$(free_port)
  nginx_on proxy "$NP_PORT" 'location = /p { proxy_pass http://origin/; proxy_http_version 1.1; proxy_set_header Connection ""; }'
  NP_PID=$NG_PID
  # ROUNDS (4) of each, alternately: this machine's speed drifts over minutes,
  # so one of each in a row can compare two different machines. Each round
  # runs them in the other order than the last (Sluice first, then nginx
  # first, ...), so a steady drift does not favour the one that runs second.
  # Each warmed up first, unmeasured (3 s): both open their first client and
  # upstream connections and grow their memory to the load before a round counts.
  for port in "$SL_PORT" "$NP_PORT"; do wrk -t2 -c"$CONNS" -d3s "http://127.0.0.1:$port/p" >/dev/null 2>&1; done
  ratios=()
  for round in $(seq 1 "${ROUNDS:-4}"); do
    if [ $((round % 2)) = 1 ]; then
      sl=$(load sluice "$SL_PORT" "$SL_PID")
      ng=$(load nginx "$NP_PORT" "$NP_PID")
    else
      ng=$(load nginx "$NP_PORT" "$NP_PID")
      sl=$(load sluice "$SL_PORT" "$SL_PID")
    fi
    echo "$sl"
    echo "$ng"
    us() { echo "$1" | sed -n 's/.*gateway_cpu_per_request_us=\([0-9.]*\).*/\1/p'; }
    ratios+=("$(awk -v a="$(us "$sl")" -v b="$(us "$ng")" 'BEGIN { printf "%.2f", a / b }')")
  done
  echo "cpu_per_request_ratios=${ratios[*]} median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
  # memory per request in flight: the same gateways in front of the upstream's /slow
  kill "$SL_PID"
  SL_PORT=$(free_port)
  UPSTREAM="http://127.0.0.1:$UP_PORT" UPSTREAM_PATH=/slow "$BUILD/sluice" --log-level warn --listen "127.0.0.1:$SL_PORT" ${SLUICE_ARGS:-} \
    "$BENCH_DIR/apps/proxy.lua" 2>/dev/null &
  SL_PID=$!
  PIDS+=("$SL_PID")
  wait_up "$SL_PORT"
  NS_PORT=$(free_port)
  nginx_on proxyslow "$NS_PORT" 'location = /p { proxy_pass http://origin/slow; proxy_http_version 1.1; proxy_set_header Connection ""; }'
  held sluice "$SL_PORT" "$SL_PID"
  held nginx "$NS_PORT" "$NG_PID"
else
  N=${2:-10000}
  HZ=${3:-20}
  SECS=${4:-10}
  echo "outbound relay: subscribers=$N hz=$HZ seconds=$SECS ($(date +%F))"
  SRC_PORT=$(free_port)
  "$BUILD/sluice" --log-level warn --listen "127.0.0.1:$SRC_PORT" "$BENCH_DIR/apps/source.lua" 2>/dev/null &
  PIDS+=("$!")
  wait_up "$SRC_PORT"
  run() { # NAME APP START-URL
    local port pid c0 c1 t0 t1 load_pid
    port=$(free_port)
    UPSTREAM="http://127.0.0.1:$SRC_PORT" "$BUILD/sluice" --log-level warn --listen "127.0.0.1:$port" ${SLUICE_ARGS:-} "$2" 2>/dev/null &
    pid=$!
    PIDS+=("$pid")
    wait_up "$port"
    "$BUILD/sse_load" -p "$port" -P /sub/bench -n "$N" -L -d $((SECS + 30)) >"$NG_DIR/$1.out" 2>/dev/null &
    load_pid=$!
    for _ in $(seq 1 300); do [ "$(curl -s "http://127.0.0.1:$port/count")" = "$N" ] && break; sleep 0.1; done
    sleep 1
    c0=$(cpu_s "$pid"); t0=$(date +%s.%N)
    curl -s -X POST "http://127.0.0.1:$port$3?hz=$HZ&secs=$SECS" >/dev/null
    sleep "$SECS"; sleep 1
    c1=$(cpu_s "$pid"); t1=$(date +%s.%N)
    kill -INT "$load_pid" 2>/dev/null || true
    wait "$load_pid" 2>/dev/null || true
    local events p50 p99
    events=$(sed -n 's/.* events=\([0-9]*\).*/\1/p' "$NG_DIR/$1.out")
    p50=$(sed -n 's/.* p50_us=\([0-9]*\).*/\1/p' "$NG_DIR/$1.out")
    p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' "$NG_DIR/$1.out")
    awk -v n="$1" -v e="${events:-0}" -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v p50="$p50" -v p99="$p99" -v s="$SECS" \
      'BEGIN { printf "%s: deliveries=%d deliveries_per_sec=%.0f p50_us=%s p99_us=%s gateway_cpu=%.1f%% cpu_per_delivery_us=%.2f\n",
        n, e, e / s, p50, p99, 100 * (c1 - c0) / (t1 - t0), e ? (c1 - c0) * 1e6 / e : 0 }'
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  }
  # RELAY_FIRST=1 runs them the other way round (to see what order does)
  if [ "${RELAY_FIRST:-0}" = 1 ]; then
    run relay "$BENCH_DIR/apps/proxy.lua" /relay
    run direct "$BENCH_DIR/apps/pubsub.lua" /run
  else
    run direct "$BENCH_DIR/apps/pubsub.lua" /run
    run relay "$BENCH_DIR/apps/proxy.lua" /relay
  fi
fi
