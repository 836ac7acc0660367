# Shared by the bench scripts: build, start a gateway, sample its CPU and memory.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
BUILD=${BUILD:-$ROOT/build}

bench_build() {
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD" -j"$(nproc)" --target sluice sse_load >/dev/null
  ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
}

# The processor and the cores: figures from different machines of one kind differ by a third.
machine() { echo "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(nproc) cores"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_gateway APP -> sets GW_PID, GW_PORT
start_gateway() {
  GW_PORT=$(free_port)
  # SLUICE_ARGS: more options for the gateway, e.g. SLUICE_ARGS="--workers 2"
  # shellcheck disable=SC2086
  "$BUILD/sluice" --log-level warn --listen "127.0.0.1:$GW_PORT" ${SLUICE_ARGS:-} "$1" 2>"${GW_LOG:-/dev/null}" &
  GW_PID=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$GW_PORT/health" >/dev/null && return 0
    sleep 0.1
  done
  echo "gateway did not start" >&2
  return 1
}

stop_gateway() { kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; }

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# CPU seconds (user+system) used so far by a pid
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$1/stat"; }
# write(2)/writev(2) calls the process has made (syscw of /proc/PID/io).
writes() { awk '/^syscw/ {print $2}' "/proc/$1/io"; }
