#!/usr/bin/env bash
# Instructions and cache misses per event, counted by valgrind (callgrind with
# its cache simulation: a 32 KiB first level and a 1 MiB last level), not
# timed: the same binary gives the same counts whatever else the machine does,
# so two commits can be compared where CPU time moves by a fifth between runs.
# Two paths, each with N (2,000) connections, their memory well past the
# simulated cache as 10,000 are past a real one:
#   pubsub: N subscribers get HZ (2) publishes a second for SECS (5) seconds;
#           counted in the hub's dispatch and the end-of-turn writes.
#   stream: N generators (bench/apps/tick.lua) tick once a second for SECS
#           seconds; counted from the sleepers' wake-up to the writes.
# The counts start (callgrind_control -z) once every connection is there.
# Usage: bash bench/misses.sh [N] [SECS]   (KEEP=DIR keeps callgrind's files there)
source "$(dirname "$0")/lib.sh"
N=${1:-2000}
SECS=${2:-5}
HZ=2
bench_build
command -v valgrind >/dev/null || { echo "misses.sh needs valgrind" >&2; exit 1; }
OUTD=$(mktemp -d)
# KEEP=DIR keeps callgrind's files (callgrind_annotate --sort=DLmr DIR/stream.out: misses by function)
trap 'stop_gateway; if [ -n "${KEEP:-}" ]; then cp "$OUTD"/*.out "$KEEP"/; fi; rm -rf "$OUTD"' EXIT
GW_PID=""

# run_counted APP OUT FUNCTION...: the gateway under callgrind, counting only inside those functions
run_counted() {
  local app=$1 out=$2
  shift 2
  local toggles=()
  for f in "$@"; do toggles+=(--toggle-collect="$f"); done
  GW_PORT=$(free_port)
  valgrind --tool=callgrind --cache-sim=yes --D1=32768,8,64 --LL=1048576,16,64 --collect-atstart=no \
    "${toggles[@]}" --callgrind-out-file="$out" \
    "$BUILD/sluice" --log-level warn --listen "127.0.0.1:$GW_PORT" "$app" 2>"$OUTD/valgrind.log" &
  GW_PID=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$GW_PORT/health" >/dev/null && return 0; sleep 0.2; done
  echo "gateway did not start under valgrind" >&2
  return 1
}

# totals OUT EVENTS NAME: per event, from callgrind's totals (Ir ... DLmr DLmw)
totals() {
  callgrind_annotate "$1" 2>/dev/null | awk -v e="$2" -v n="$3" '/PROGRAM TOTALS/ {
    for (i = 1; i <= NF; i++) gsub(",", "", $i)
    # columns: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw, each followed by its share
    printf "%s: events=%d instructions=%.0f d1_misses=%.2f ll_read_misses=%.2f ll_write_misses=%.2f (per event)\n",
      n, e, $1 / e, ($9 + $11) / e, $15 / e, $17 / e }'
}

echo "cache misses per event: connections=$N seconds=$SECS ($(date +%F), $(machine))"

# 1. pub/sub: every publish reaches all N, so events = N x publishes
run_counted "$BENCH_DIR/apps/pubsub.lua" "$OUTD/pubsub.out" sl_hub_dispatch flush_home
"$BUILD/sse_load" -p "$GW_PORT" -P /sub/bench -n "$N" -d 600 >/dev/null 2>&1 &
LOAD=$!
for _ in $(seq 1 600); do [ "$(curl -s "http://127.0.0.1:$GW_PORT/count")" = "$N" ] && break; sleep 0.2; done
callgrind_control -z "$GW_PID" >/dev/null 2>&1
count=$((HZ * SECS))
curl -s -X POST "http://127.0.0.1:$GW_PORT/run?hz=$HZ&secs=$((SECS + 60))&count=$count" >/dev/null
for _ in $(seq 1 900); do [ "$(curl -s "http://127.0.0.1:$GW_PORT/published")" = "$count" ] && break; sleep 0.2; done
sleep 2 # the last fan-out's writes
kill -INT "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
stop_gateway
totals "$OUTD/pubsub.out" $((N * count)) pubsub

# 2. stream: events counted by the app, from when all are connected to the end
run_counted "$BENCH_DIR/apps/tick.lua" "$OUTD/stream.out" on_sleepers flush_home
: >"$OUTD/load.err"
"$BUILD/sse_load" -p "$GW_PORT" -P /tick -n "$N" -d 600 >/dev/null 2>"$OUTD/load.err" &
LOAD=$!
for _ in $(seq 1 900); do grep -q ready "$OUTD/load.err" && break; sleep 0.2; done
callgrind_control -z "$GW_PID" >/dev/null 2>&1
e0=$(curl -s "http://127.0.0.1:$GW_PORT/sent")
sleep "$SECS"
kill -INT "$LOAD" 2>/dev/null || true
wait "$LOAD" 2>/dev/null || true
e1=$(curl -s "http://127.0.0.1:$GW_PORT/sent")
stop_gateway
totals "$OUTD/stream.out" $((e1 - e0)) stream
