#!/usr/bin/env bash
# Hot reload under load: N subscribers (10,000), a publish every 50 ms, and
# RELOADS (10) SIGHUP reloads in a row. Reports dropped connections and id gaps
# (one channel, one publisher: consecutive ids on every connection mean no event
# was lost). Usage: bash bench/reload.sh [N] [RELOADS]
source "$(dirname "$0")/lib.sh"
N=${1:-10000}
RELOADS=${2:-10}
bench_build
start_gateway "$BENCH_DIR/apps/reload.lua"
trap stop_gateway EXIT
"$BUILD/sse_load" -p "$GW_PORT" -P /sub -n "$N" -G -d 600 >/tmp/sluice-reload.out 2>/tmp/sluice-reload.err &
LOAD=$!
stat() { curl -s "http://127.0.0.1:$GW_PORT/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
for _ in $(seq 1 600); do [ "$(stat connections)" -ge "$((N + 1))" ] && break; sleep 0.1; done
echo "subscribers=$(( $(stat connections) - 1 ))"
t0=$(date +%s.%N)
for r in $(seq 1 "$RELOADS"); do
  kill -HUP "$GW_PID"
  for _ in $(seq 1 100); do [ "$(stat reloads)" -ge "$r" ] && break; sleep 0.05; done
  sleep 0.5
done
t1=$(date +%s.%N)
sleep 1
echo "reloads=$(stat reloads) in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s; lua_states_alive=$(stat states) published=$(stat published) dropped_slow=$(stat dropped_slow)"
echo "subscribers_after=$(( $(stat connections) - 1 ))"
kill -INT "$LOAD"; wait "$LOAD" 2>/dev/null || true
echo "client: $(cat /tmp/sluice-reload.out)"
