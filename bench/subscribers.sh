#!/usr/bin/env bash
# Pub/sub at 10,000 subscribers: memory per idle subscriber, then fan-out of
# HZ events a second to all of them (deliveries per second, publish-to-delivery
# latency p50/p99), and the write syscalls that took (writes are coalesced per
# loop turn: with BURST events published in one turn, a subscriber gets them in
# one writev). Usage: bash bench/subscribers.sh [SUBSCRIBERS] [HZ] [SECONDS] [BURST]
source "$(dirname "$0")/lib.sh"
N=${1:-10000}
HZ=${2:-20}
SECS=${3:-10}
BURST=${4:-1}
bench_build
start_gateway "$BENCH_DIR/apps/pubsub.lua"
trap stop_gateway EXIT
rss0=$(rss_kb "$GW_PID")
"$BUILD/sse_load" -p "$GW_PORT" -P /sub/bench -n "$N" -L -d $((SECS + 40)) >/tmp/sluice-sub.out 2>/tmp/sluice-sub.err &
LOAD=$!
for _ in $(seq 1 300); do [ "$(curl -s "http://127.0.0.1:$GW_PORT/count")" = "$N" ] && break; sleep 0.1; done
sleep 1
rss1=$(rss_kb "$GW_PID")
cpu0=$(cpu_s "$GW_PID"); t0=$(date +%s.%N); w0=$(writes "$GW_PID")
curl -s -X POST "http://127.0.0.1:$GW_PORT/run?hz=$HZ&secs=$SECS&burst=$BURST" >/dev/null
sleep "$SECS"; sleep 1
cpu1=$(cpu_s "$GW_PID"); t1=$(date +%s.%N); w1=$(writes "$GW_PID")
kill -INT "$LOAD" 2>/dev/null || true
echo "subscribers=$N publish_hz=$HZ seconds=$SECS burst=$BURST"
awk -v r0="$rss0" -v r1="$rss1" -v n="$N" -v c0="$cpu0" -v c1="$cpu1" -v t0="$t0" -v t1="$t1" 'BEGIN {
  printf "gateway_rss_idle_kb=%d with_subscribers_kb=%d per_idle_subscriber_bytes=%.0f\n", r0, r1, (r1-r0)*1024/n;
  printf "gateway_cpu_during_fanout=%.1f%% of one core\n", 100*(c1-c0)/(t1-t0) }'
wait "$LOAD" 2>/dev/null || true
echo "client: $(cat /tmp/sluice-sub.out)"
events=$(sed -n 's/.* events=\([0-9]*\).*/\1/p' /tmp/sluice-sub.out)
awk -v w="$((w1 - w0))" -v e="${events:-0}" 'BEGIN { printf "gateway_write_syscalls=%d per_delivery=%.3f\n", w, e ? w / e : 0 }'
# Every subscriber has left: memory goes back near where it started.
for _ in $(seq 1 300); do [ "$(curl -s "http://127.0.0.1:$GW_PORT/count")" = "0" ] && break; sleep 0.1; done
sleep 2 # the once-a-second sweep hands memory back
echo "after_all_left: subscribers=$(curl -s "http://127.0.0.1:$GW_PORT/count") gateway_rss_kb=$(rss_kb "$GW_PID") (was $rss0 before they came)"
