#!/usr/bin/env bash
# cmake --install puts the binary and the Lua library in standard places, and the
# installed binary finds its library with no environment variables.
set -euo pipefail
build=$1
src=$(cd "$(dirname "$0")/.." && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
test -x "$prefix/bin/sluice"
test -f "$prefix/share/sluice/lua/sluice/init.lua"
# A script that reports where `require "sluice"` came from, by failing on purpose.
cat > "$prefix/where.lua" <<'LUA'
local sluice = require "sluice"
error("LIB " .. debug.getinfo(sluice.get, "S").source, 0)
LUA
out=$(env -i PATH=/usr/bin:/bin "$prefix/bin/sluice" "$prefix/where.lua" 2>&1 || true)
case "$out" in
  *"LIB @$prefix/bin/../share/sluice/lua/sluice/init.lua"*) echo "installed binary uses $prefix/share/sluice/lua" ;;
  *) echo "installed binary did not load the installed library: $out" >&2; exit 1 ;;
esac
"$prefix/bin/sluice" --version
# The testing kit is installed beside the library and finds the installed binary.
test -f "$prefix/share/sluice/lua/sluice/testing.lua"
kit_bin=$(cd "$prefix" && env -i PATH=/usr/bin:/bin LUA_PATH="$prefix/share/sluice/lua/?.lua;;" \
  luajit -e 'io.write(require("sluice.testing").binary())')
case "$kit_bin" in
  "$prefix/share/sluice/lua/sluice/../../../../bin/sluice") echo "the testing kit uses $prefix/bin/sluice" ;;
  *) echo "the testing kit found $kit_bin instead of the installed binary" >&2; exit 1 ;;
esac
