#!/usr/bin/env bash
# --workers: fan-out to SUBSCRIBERS subscribers at each rate in RATES (events a
# second, published by a timer of the app) with --workers 1, 2 and auto:
# delivered/s, delivery %, p50/p99 publish-to-delivery, the server's CPU per
# delivery (user and kernel apart) and how busy its loop thread was against
# its I/O threads (per-thread CPU from /proc). The load tool runs on the same
# machine, so on a small one the scaling shows in the loop thread's share
# falling while the deliveries hold, more than in deliveries/s.
# Usage: bash bench/workers.sh [SUBSCRIBERS (10000)] [SECONDS (10)] [RATES ("20 50 100")]
source "$(dirname "$0")/lib.sh"
N=${1:-10000}
SECS=${2:-10}
RATES=${3:-"20 50 100"}
bench_build
TMP=$(mktemp -d /tmp/sluice-workers.XXXXXX)
LOAD=""
cleanup() { [ -n "$LOAD" ] && kill "$LOAD" 2>/dev/null; stop_gateway 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

# user and kernel CPU seconds: the loop thread's, then the other threads' together
threads_cpu() {
  local hz; hz=$(getconf CLK_TCK)
  for t in /proc/"$GW_PID"/task/*; do echo "$(basename "$t") $(cut -d' ' -f14,15 "$t/stat")"; done |
    awk -v hz="$hz" -v main="$GW_PID" '{ if ($1 == main) { lu += $2; ls += $3 } else { ou += $2; os += $3 } }
      END { printf "%.3f %.3f %.3f %.3f", lu/hz, ls/hz, ou/hz, os/hz }'
}

printf "%-8s %6s %10s %8s %9s %9s %10s %10s %9s %9s\n" workers ev/s delivered/s delivery p50_ms p99_ms user_us/d kern_us/d loop_cpu io_cpu
for w in ${WORKERS_LIST:-1 2 auto}; do
  for hz in $RATES; do
    SLUICE_ARGS="--workers $w" start_gateway "$BENCH_DIR/apps/pubsub.lua"
    "$BUILD/sse_load" -p "$GW_PORT" -P /sub/bench -n "$N" -L -d 3600 >"$TMP/out" 2>"$TMP/err" &
    LOAD=$!
    for _ in $(seq 1 600); do grep -q "^ready" "$TMP/err" && break; sleep 0.1; done
    sleep 1
    c0=$(threads_cpu); t0=$(date +%s.%N)
    curl -s -X POST "http://127.0.0.1:$GW_PORT/run?hz=$hz&secs=$SECS" >/dev/null
    sleep "$SECS"; sleep 2
    c1=$(threads_cpu); t1=$(date +%s.%N)
    pub=$(curl -s "http://127.0.0.1:$GW_PORT/published")
    kill -INT "$LOAD"; wait "$LOAD" 2>/dev/null || true; LOAD=""
    stop_gateway
    got=$(sed -n 's/.* samples=\([0-9]*\).*/\1/p' "$TMP/out"); got=${got:-0}
    p50=$(sed -n 's/.* p50_us=\([0-9]*\).*/\1/p' "$TMP/out"); p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' "$TMP/out")
    awk -v w="$w" -v hz="$hz" -v n="$N" -v secs="$SECS" -v pub="$pub" -v got="$got" -v p50="${p50:-0}" -v p99="${p99:-0}" \
        -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" 'BEGIN {
      split(c0, a, " "); split(c1, b, " "); d = got > 0 ? got : 1; el = t1 - t0
      printf "%-8s %6d %10.0f %7.2f%% %9.1f %9.1f %10.2f %10.2f %8.0f%% %8.0f%%\n", w, hz, got / secs,
        (pub * n > 0 ? 100 * got / (pub * n) : 0), p50 / 1000, p99 / 1000,
        (b[1] - a[1] + b[3] - a[3]) * 1e6 / d, (b[2] - a[2] + b[4] - a[4]) * 1e6 / d,
        100 * (b[1] - a[1] + b[2] - a[2]) / el, 100 * (b[3] - a[3] + b[4] - a[4]) / el }'
  done
done
