#!/usr/bin/env bash
# The Mercure hub (examples/mercure.lua) at N subscribers (10,000): memory per
# idle subscriber, each on its own ?match= with the subscription event the hub
# publishes for it, against the gateway with no subscriber.
# Usage: bash bench/mercure.sh [SUBSCRIBERS]
source "$(dirname "$0")/lib.sh"
N=${1:-10000}
bench_build
start_gateway "$ROOT/examples/mercure.lua"
trap stop_gateway EXIT
sleep 1
rss0=$(rss_kb "$GW_PID")
"$BUILD/sse_load" -p "$GW_PORT" -P "/.well-known/mercure?match=https%3A%2F%2Fexample.com%2Fbench" -n "$N" -d 60 \
  >/tmp/sluice-mercure.out 2>/tmp/sluice-mercure.err &
LOAD=$!
# every subscriber connected: the gateway holds N sockets more
fds0=$(ls "/proc/$GW_PID/fd" | wc -l)
for _ in $(seq 1 600); do [ "$(ls "/proc/$GW_PID/fd" | wc -l)" -ge $((fds0 + N)) ] && break; sleep 0.1; done
sleep 2
rss1=$(rss_kb "$GW_PID")
kill -INT "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
echo "mercure subscribers=$N ($(date +%F))"
awk -v r0="$rss0" -v r1="$rss1" -v n="$N" 'BEGIN {
  printf "gateway_rss_idle_kb=%d with_subscribers_kb=%d per_idle_subscriber_bytes=%.0f\n", r0, r1, (r1-r0)*1024/n }'
