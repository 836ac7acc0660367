#!/usr/bin/env bash
# The Debian package: cpack builds it in the build folder; extracted with
# dpkg-deb -x into a temporary root, its binary serves its own copy of
# examples/hello.lua, and its testing kit finds its binary.
set -euo pipefail
build=$1
root=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$root"; }
trap cleanup EXIT
(cd "$build" && cpack -G DEB >/dev/null)
deb=$(ls -t "$build"/sluice_*_*.deb | head -n 1)
# Each output is read whole before it is matched: with pipefail, a grep -q that
# stops at its match can fail the pipe when the writer is still writing.
info=$(dpkg-deb -I "$deb")
grep -q "Depends: .*libuv1" <<<"$info" || { echo "no Depends in $deb:" >&2; echo "$info" >&2; exit 1; }
dpkg-deb -x "$deb" "$root"
for f in usr/bin/sluice usr/share/sluice/lua/sluice/init.lua usr/share/sluice/lua/sluice/testing.lua \
         usr/share/sluice/examples/hello.lua usr/share/man/man1/sluice.1 usr/lib/systemd/system/sluice.service; do
  test -e "$root/$f" || { echo "the package has no $f" >&2; exit 1; }
done
grep -q "ExecStart=/usr/bin/sluice" "$root/usr/lib/systemd/system/sluice.service"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -i PATH=/usr/bin:/bin "$root/usr/bin/sluice" --listen "127.0.0.1:$port" "$root/usr/share/sluice/examples/hello.lua" 2>"$root/log" &
pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
test "$(curl -sf "http://127.0.0.1:$port/health")" = "ok"
# /hello sends one event and ends its stream
hello=$(curl -s -N --max-time 5 "http://127.0.0.1:$port/hello" || true)
grep -q "^data: Hello, world!" <<<"$hello" || { echo "no event: $hello" >&2; cat "$root/log" >&2; exit 1; }
kit=$(env -i PATH=/usr/bin:/bin LUA_PATH="$root/usr/share/sluice/lua/?.lua;;" luajit -e 'io.write(require("sluice.testing").binary())')
test "$(readlink -f "$kit")" = "$(readlink -f "$root/usr/bin/sluice")" || { echo "the kit found $kit" >&2; exit 1; }
echo "$(basename "$deb"): serves examples/hello.lua from $root"
