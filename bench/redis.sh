#!/usr/bin/env bash
# The Redis engine, two runs (each its own redis-server on a free loopback port):
#   bash bench/redis.sh scale [SUBSCRIBERS] [NODES] [SECONDS]
#     SUBSCRIBERS (100,000) across NODES (6) gateway processes on one Redis, one
#     load process per node, an event a second on a shared channel: connected,
#     delivery %, publish-to-delivery p50/p99, memory per subscriber per node, Redis CPU.
#   bash bench/redis.sh fanout [SUBSCRIBERS] [HZ] [SECONDS]
#     SUBSCRIBERS (10,000) on one embedded node, then split over two nodes on
#     Redis, HZ (20) events a second: deliveries/s, p99 and gateway CPU per delivery.
source "$(dirname "$0")/lib.sh"
MODE=${1:-scale}
bench_build
command -v redis-server >/dev/null || { echo "redis-server is not installed (bash scripts/dev.sh test installs it)" >&2; exit 1; }
ulimit -n 20000 2>/dev/null || true
APP="$BENCH_DIR/apps/pubsub.lua"
PIDS=() LOADS=() PORTS=()
REDIS_PID=""
cleanup() {
  for p in "${LOADS[@]}" "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

start_redis() {
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --logfile /dev/null &
  REDIS_PID=$!
  for _ in $(seq 1 100); do [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && return 0; sleep 0.1; done
  echo "redis-server did not start" >&2; exit 1
}

# start_node [extra sluice args...] -> appends to PIDS and PORTS
start_node() {
  local port; port=$(free_port)
  "$BUILD/sluice" --log-level warn --listen "127.0.0.1:$port" "$@" "$APP" 2>>/tmp/sluice-redis-bench.log &
  PIDS+=($!); PORTS+=("$port")
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0; sleep 0.1; done
  echo "gateway did not start" >&2; exit 1
}

total_count() { local t=0 p; for p in "${PORTS[@]}"; do t=$((t + $(curl -s "http://127.0.0.1:$p/count"))); done; echo "$t"; }
wait_count() { for _ in $(seq 1 1200); do [ "$(total_count)" -ge "$1" ] && return 0; sleep 0.25; done; echo "only $(total_count) of $1 subscribed" >&2; }
sum_cpu() { local t=0 p; for p in "$@"; do t=$(awk -v a="$t" -v b="$(cpu_s "$p")" 'BEGIN{print a+b}'); done; echo "$t"; }
sum_rss() { local t=0 p; for p in "$@"; do t=$((t + $(rss_kb "$p"))); done; echo "$t"; }

# load N_PER_NODE SECS: one sse_load per node, outputs in /tmp/sluice-redis-load.N
load() {
  local i=0 p
  LOADS=()
  for p in "${PORTS[@]}"; do
    "$BUILD/sse_load" -p "$p" -P /sub/bench -n "$1" -c 500 -L -d "$2" >"/tmp/sluice-redis-load.$i" 2>/dev/null &
    LOADS+=($!); i=$((i + 1))
  done
}

# summarize SUBSCRIBERS EXPECTED_EACH: merges the load processes' lines
summarize() {
  cat /tmp/sluice-redis-load.* | awk -v subs="$1" -v each="$2" '
    { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] += kv[2]; if (kv[1] ~ /^p(50|99)_us$/ && kv[2] > m[kv[1]]) m[kv[1]] = kv[2] } }
    END { printf "connected=%d failed=%d published=%d events=%d delivery=%.2f%% worst_process_p50_us=%d worst_process_p99_us=%d\n",
          v["connected"], v["failed"], each, v["events"], 100 * v["events"] / (subs * each), m["p50_us"], m["p99_us"] }'
}

case "$MODE" in
  scale)
    SUBS=${2:-100000} NODES=${3:-6} SECS=${4:-20}
    start_redis
    for _ in $(seq 1 "$NODES"); do start_node --redis "redis://127.0.0.1:$REDIS_PORT"; done
    rss0=$(sum_rss "${PIDS[@]}")
    rm -f /tmp/sluice-redis-load.*
    PER=$((SUBS / NODES))
    load "$PER" $((SECS + 240))
    wait_count $((PER * NODES))
    sleep 2
    rss1=$(sum_rss "${PIDS[@]}")
    rcpu0=$(cpu_s "$REDIS_PID"); t0=$(date +%s.%N)
    curl -s -X POST "http://127.0.0.1:${PORTS[0]}/run?hz=1&secs=$SECS" >/dev/null
    sleep "$SECS"; sleep 3
    rcpu1=$(cpu_s "$REDIS_PID"); t1=$(date +%s.%N)
    for p in "${LOADS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    for p in "${LOADS[@]}"; do wait "$p" 2>/dev/null || true; done
    LOADS=()
    echo "subscribers=$((PER * NODES)) nodes=$NODES publish_hz=1 seconds=$SECS"
    summarize $((PER * NODES)) "$(curl -s "http://127.0.0.1:${PORTS[0]}/published")"
    awk -v r0="$rss0" -v r1="$rss1" -v n="$((PER * NODES))" -v c0="$rcpu0" -v c1="$rcpu1" -v t0="$t0" -v t1="$t1" -v k="$NODES" 'BEGIN {
      printf "gateway_rss_kb_per_node=%d per_subscriber_bytes=%.0f\n", r1 / k, (r1 - r0) * 1024 / n;
      printf "redis_cpu=%.2f%% of one core\n", 100 * (c1 - c0) / (t1 - t0) }'
    ;;
  fanout)
    SUBS=${2:-10000} HZ=${3:-20} SECS=${4:-10}
    for engine in embedded redis; do
      PIDS=() PORTS=()
      if [ "$engine" = embedded ]; then
        start_node
      else
        start_redis
        start_node --redis "redis://127.0.0.1:$REDIS_PORT"
        start_node --redis "redis://127.0.0.1:$REDIS_PORT"
      fi
      rm -f /tmp/sluice-redis-load.*
      PER=$((SUBS / ${#PORTS[@]}))
      load "$PER" $((SECS + 60))
      wait_count "$SUBS"
      sleep 1
      c0=$(sum_cpu "${PIDS[@]}")
      curl -s -X POST "http://127.0.0.1:${PORTS[0]}/run?hz=$HZ&secs=$SECS" >/dev/null
      sleep "$SECS"; sleep 2
      c1=$(sum_cpu "${PIDS[@]}")
      for p in "${LOADS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
      for p in "${LOADS[@]}"; do wait "$p" 2>/dev/null || true; done
      LOADS=()
      line=$(summarize "$SUBS" "$(curl -s "http://127.0.0.1:${PORTS[0]}/published")")
      ev=$(echo "$line" | sed 's/.* events=\([0-9]*\).*/\1/')
      echo "$engine nodes=${#PORTS[@]} subscribers=$SUBS publish_hz=$HZ seconds=$SECS"
      echo "  $line"
      awk -v c0="$c0" -v c1="$c1" -v ev="$ev" -v s="$SECS" 'BEGIN {
        printf "  deliveries_per_sec=%.0f gateway_cpu_per_delivery_us=%.2f\n", ev / s, (c1 - c0) * 1e6 / ev }'
      for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
      [ -n "$REDIS_PID" ] && { kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true; REDIS_PID=""; }
    done
    ;;
  *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
