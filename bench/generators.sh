#!/usr/bin/env bash
# 10,000 concurrent stream generators, each ticking once a second: the gateway's
# CPU share and memory while they run. Usage: bash bench/generators.sh [CONNS] [SECONDS]
source "$(dirname "$0")/lib.sh"
N=${1:-10000}
SECS=${2:-20}
bench_build
start_gateway "$BENCH_DIR/apps/tick.lua"
trap stop_gateway EXIT
rss0=$(rss_kb "$GW_PID")
"$BUILD/sse_load" -p "$GW_PORT" -P /tick -n "$N" -d $((SECS + 10)) >/tmp/sluice-gen.out 2>/tmp/sluice-gen.err &
LOAD=$!
for _ in $(seq 1 300); do grep -q ready /tmp/sluice-gen.err 2>/dev/null && break; sleep 0.1; done
sleep 2
cpu0=$(cpu_s "$GW_PID"); t0=$(date +%s.%N)
sleep "$SECS"
cpu1=$(cpu_s "$GW_PID"); t1=$(date +%s.%N)
rss1=$(rss_kb "$GW_PID")
wait "$LOAD" || true
echo "generators=$N seconds=$SECS"
awk -v c0="$cpu0" -v c1="$cpu1" -v t0="$t0" -v t1="$t1" -v r0="$rss0" -v r1="$rss1" -v n="$N" 'BEGIN {
  printf "gateway_cpu=%.1f%% of one core\n", 100*(c1-c0)/(t1-t0);
  printf "gateway_rss_idle_kb=%d gateway_rss_loaded_kb=%d per_stream_bytes=%.0f\n", r0, r1, (r1-r0)*1024/n }'
echo "client: $(cat /tmp/sluice-gen.out)"
