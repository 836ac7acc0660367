#!/usr/bin/env bash
# Stream mode against pub/sub at the same event rate, in one run: N (10,000)
# stream generators each ticking once a second (sluice.sleep(1) between
# yields), then N subscribers getting one publish a second. For each: the
# gateway's CPU (user and kernel apart) per event sent, and memory per stream.
# Usage: bash bench/generators.sh [CONNS] [SECONDS]
source "$(dirname "$0")/lib.sh"
N=${1:-10000}
SECS=${2:-20}
bench_build
TICKS=$(getconf CLK_TCK)
utime() { awk '{print $14}' "/proc/$1/stat"; }
stime() { awk '{print $15}' "/proc/$1/stat"; }

# measure NAME LOAD-PID: CPU over SECS seconds and the events the load counted
report() {
  local name=$1 u0=$2 s0=$3 u1=$4 s1=$5 events=$6 extra=${7:-}
  awk -v n="$name" -v u0="$u0" -v s0="$s0" -v u1="$u1" -v s1="$s1" -v e="$events" -v hz="$TICKS" -v x="$extra" 'BEGIN {
    u = (u1 - u0) / hz * 1e6; s = (s1 - s0) / hz * 1e6;
    printf "%s: events=%d cpu_per_event_us=%.2f user_us=%.2f kernel_us=%.2f %s\n", n, e, (u + s) / e, u / e, s / e, x }'
}

echo "generators against pub/sub: connections=$N seconds=$SECS ($(date +%F), $(machine))"

# 1. generators
start_gateway "$BENCH_DIR/apps/tick.lua"
trap stop_gateway EXIT
rss0=$(rss_kb "$GW_PID")
"$BUILD/sse_load" -p "$GW_PORT" -P /tick -n "$N" -d $((SECS + 12)) >/tmp/sluice-gen.out 2>/tmp/sluice-gen.err &
LOAD=$!
for _ in $(seq 1 300); do grep -q ready /tmp/sluice-gen.err 2>/dev/null && break; sleep 0.1; done
sleep 2
u0=$(utime "$GW_PID"); s0=$(stime "$GW_PID"); e0=$(curl -s "http://127.0.0.1:$GW_PORT/sent")
sleep "$SECS"
u1=$(utime "$GW_PID"); s1=$(stime "$GW_PID"); e1=$(curl -s "http://127.0.0.1:$GW_PORT/sent")
rss1=$(rss_kb "$GW_PID")
gen_line=$(report stream "$u0" "$s0" "$u1" "$s1" $((e1 - e0)) \
  "$(awk -v r0="$rss0" -v r1="$rss1" -v n="$N" 'BEGIN { printf "per_stream_bytes=%.0f", (r1 - r0) * 1024 / n }')")
echo "$gen_line"
kill -INT "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
stop_gateway

# 2. pub/sub: the same connections subscribed, one publish a second
start_gateway "$BENCH_DIR/apps/pubsub.lua"
"$BUILD/sse_load" -p "$GW_PORT" -P /sub/bench -n "$N" -d $((SECS + 40)) >/tmp/sluice-gen-sub.out 2>/dev/null &
LOAD=$!
for _ in $(seq 1 300); do [ "$(curl -s "http://127.0.0.1:$GW_PORT/count")" = "$N" ] && break; sleep 0.1; done
sleep 1
curl -s -X POST "http://127.0.0.1:$GW_PORT/run?hz=1&secs=$((SECS + 30))" >/dev/null
sleep 1.5
u0=$(utime "$GW_PID"); s0=$(stime "$GW_PID"); p0=$(curl -s "http://127.0.0.1:$GW_PORT/published")
sleep "$SECS"
u1=$(utime "$GW_PID"); s1=$(stime "$GW_PID"); p1=$(curl -s "http://127.0.0.1:$GW_PORT/published")
sub_line=$(report pubsub "$u0" "$s0" "$u1" "$s1" $(((p1 - p0) * N)))
echo "$sub_line"
kill -INT "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
g=$(echo "$gen_line" | sed -n 's/.*cpu_per_event_us=\([0-9.]*\).*/\1/p')
p=$(echo "$sub_line" | sed -n 's/.*cpu_per_event_us=\([0-9.]*\).*/\1/p')
awk -v g="$g" -v p="$p" 'BEGIN { printf "stream_over_pubsub=%.2f\n", g / p }'
