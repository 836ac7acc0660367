#!/usr/bin/env bash
# dev.sh: installs what Sluice needs on Debian 12, builds it, and runs it or its tests.
#   bash scripts/dev.sh run [sluice options]   build, then serve examples/hello.lua on 127.0.0.1:8080
#   bash scripts/dev.sh test                   build four ways (ASan+UBSan, fuzzing, TSan, normal) and run every test
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake pkg-config libluajit2-5.1-dev luajit2 libuv1-dev node-llhttp
      lua-busted lua-socket lua-cjson lua-posix valgrind iproute2 curl procps python3 chromium
      clang libclang-rt-14-dev redis-server libhiredis-dev prometheus libssl-dev openssl libcurl4-openssl-dev)

install_deps() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  # Node.js for the browser specs: the machine's own if it has one (playwright-core wants 20+).
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "dev.sh: installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# playwright-core for the browser specs, at the version package-lock.json pins.
install_browser_deps() {
  [ -d spec/browser/node_modules/playwright-core ] && return 0
  (cd spec/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
}

build() {
  local dir=$1
  shift
  cmake -S . -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j"$(nproc)" ${TARGETS:+--target $TARGETS}
}

case "${1:-}" in
  run)
    shift
    install_deps
    build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
    echo "Sluice serves examples/hello.lua on http://127.0.0.1:8080 (Ctrl-C stops it)."
    echo "Try: curl -N http://127.0.0.1:8080/hello"
    exec ./build/sluice "$@" examples/hello.lua
    ;;
  test)
    install_deps
    install_browser_deps
    build build-asan -DCMAKE_BUILD_TYPE=Debug -DSLUICE_SANITIZE=ON
    (cd build-asan && ctest --output-on-failure)
    # libFuzzer targets (clang), 20 s each: the HTTP request path, the SSE encoder, the topic
    # matchers, and the Lua parsers of client bytes (query and form, cookies, JSON)
    CC=clang TARGETS="fuzz_http fuzz_sse fuzz_match fuzz_form fuzz_cookies fuzz_json" build build-fuzz -DCMAKE_BUILD_TYPE=Debug -DSLUICE_FUZZ=ON
    (cd build-fuzz && ctest --output-on-failure -R '^fuzz_')
    # ThreadSanitizer over the threaded paths (--workers 2: connections on an I/O thread)
    CC=clang TARGETS="sluice sse_load" build build-tsan -DCMAKE_BUILD_TYPE=Debug -DSLUICE_TSAN=ON
    (cd build-tsan && ctest --output-on-failure -R '^tsan_')
    build build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_VALGRIND_TESTS=ON
    cd build && ctest --output-on-failure
    ;;
  *)
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
