#!/usr/bin/env bash
# Filtered pub/sub: N (10,000) subscribers on one channel across SHAPES (1,000)
# distinct topic selectors (a tenth of them globs), HZ publishes a second, each
# to one random topic: deliveries/s, publish-to-delivery p50/p99, and the
# gateway's CPU per publish (the hub finds subscribers by topic and by the
# literal start of their patterns).
# Usage: bash bench/filtered.sh [N] [HZ] [SECS]
source "$(dirname "$0")/lib.sh"
N=${1:-10000}
HZ=${2:-200}
SECS=${3:-10}
SHAPES=1000
bench_build
start_gateway "$BENCH_DIR/apps/filtered.lua"
trap stop_gateway EXIT
"$BUILD/sse_load" -p "$GW_PORT" -P "/sub/%d" -K "$SHAPES" -n "$N" -L -d $((SECS + 40)) >/tmp/sluice-filtered.out 2>/tmp/sluice-filtered.err &
LOAD=$!
for _ in $(seq 1 300); do [ "$(curl -s "http://127.0.0.1:$GW_PORT/count")" = "$N" ] && break; sleep 0.1; done
sleep 1
cpu0=$(cpu_s "$GW_PID"); t0=$(date +%s.%N)
curl -s -X POST "http://127.0.0.1:$GW_PORT/run?hz=$HZ&secs=$SECS" >/dev/null
sleep "$SECS"; sleep 1
cpu1=$(cpu_s "$GW_PID"); t1=$(date +%s.%N)
kill -INT "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
echo "subscribers=$N shapes=$SHAPES publish_hz=$HZ seconds=$SECS"
echo "client: $(cat /tmp/sluice-filtered.out)"
events=$(sed -n 's/.* events=\([0-9]*\).*/\1/p' /tmp/sluice-filtered.out)
awk -v c0="$cpu0" -v c1="$cpu1" -v t0="$t0" -v t1="$t1" -v hz="$HZ" -v secs="$SECS" -v ev="${events:-0}" 'BEGIN {
  printf "deliveries_per_sec=%.0f gateway_cpu=%.1f%% of one core cpu_per_publish_us=%.1f\n", ev / secs, 100 * (c1 - c0) / (t1 - t0), (c1 - c0) * 1e6 / (hz * secs) }'
