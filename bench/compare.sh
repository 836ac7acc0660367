#!/usr/bin/env bash
# Sluice and nginx+nchan side by side, one after the other, under the same load
# tool (sse_load) and the same publisher (publish.py: HTTP POSTs whose data is
# the publish time), on loopback, with equivalent settings (100 events of
# history, no heartbeats, no access log): memory per idle subscriber at 10,000
# and 19,000 subscribers; fan-out to 10,000 subscribers at 5 and 20 events/s
# and to 1,000 at 200 events/s, and to 10,000 at 50 events/s, past what one
# core can write, and to 5,000 at 20 events/s for user CPU per delivery
# (delivered/s, delivery %, p50/p99
# publish-to-delivery, server CPU per delivery, user and kernel apart). With
# one worker each, then two (Sluice only once it has --workers). Delivered/s is
# over the run's SECONDS, or over the time the publisher took when the server
# answered it late (at saturation).
#
# Installs nginx with Debian's nchan module and gnuplot if missing. Prints a
# table, writes bench/results/compare.csv and draws bench/results/compare.png.
# Usage: bash bench/compare.sh [SECONDS per fan-out run (10)]
#        bash bench/compare.sh --chart   (only draws the chart again from the CSV)
source "$(dirname "$0")/lib.sh"
CHART_ONLY=0
[ "${1:-}" = "--chart" ] && CHART_ONLY=1 && shift
SECS=${1:-10}
OUT="$BENCH_DIR/results"
CSV="$OUT/compare.csv"
mkdir -p "$OUT"

need=()
command -v nginx >/dev/null || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || need+=(libnginx-mod-nchan)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  # Debian starts the packaged nginx on port 80: this benchmark runs its own.
  systemctl stop nginx 2>/dev/null || service nginx stop 2>/dev/null || true
fi
if [ "$CHART_ONLY" = 0 ]; then
bench_build

NG_DIR=$(mktemp -d /tmp/sluice-nchan.XXXXXX)
SRV_PIDS=""
LOAD=""
cleanup() {
  [ -n "$LOAD" ] && kill "$LOAD" 2>/dev/null
  stop_server
  rm -rf "$NG_DIR"
}
trap cleanup EXIT

# ---- servers: start_server sluice|nchan WORKERS -> SRV_PORT, SRV_PIDS

start_server() {
  local kind=$1 workers=$2
  SRV_PORT=$(free_port)
  if [ "$kind" = sluice ]; then
    local extra=()
    [ "$workers" -gt 1 ] && extra=(--workers "$workers")
    "$BUILD/sluice" --log-level warn --listen "127.0.0.1:$SRV_PORT" "${extra[@]}" "$BENCH_DIR/apps/pubsub.lua" 2>/dev/null &
    SRV_PIDS=$!
  else
    cat >"$NG_DIR/nginx.conf" <<EOF
worker_processes $workers;
worker_rlimit_nofile 20000;
pid $NG_DIR/nginx.pid;
error_log $NG_DIR/error.log warn;
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
events { worker_connections 20000; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$SRV_PORT reuseport;
    location = /health { return 200 "ok"; }
    location ~ ^/sub/(\w+)\$ {
      nchan_subscriber eventsource;
      nchan_channel_id \$1;
      nchan_subscriber_first_message newest;
    }
    location ~ ^/pub/(\w+)\$ {
      nchan_publisher;
      nchan_channel_id \$1;
      nchan_message_buffer_length 100;
      nchan_message_timeout 1h;
    }
  }
}
EOF
    nginx -c "$NG_DIR/nginx.conf" -p "$NG_DIR/" -g "daemon off;" 2>>"$NG_DIR/error.log" &
    SRV_PIDS=$!
  fi
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$SRV_PORT/health" >/dev/null && break
    sleep 0.1
  done
  # nginx: the master and its workers
  [ "$kind" = nchan ] && SRV_PIDS="$SRV_PIDS $(pgrep -P "$SRV_PIDS" | tr '\n' ' ')"
  return 0
}

stop_server() {
  [ -z "$SRV_PIDS" ] && return 0
  local main=${SRV_PIDS%% *}
  kill "$main" 2>/dev/null || true
  wait "$main" 2>/dev/null || true
  SRV_PIDS=""
}

rss_sum() { local t=0; for p in $SRV_PIDS; do t=$((t + $(rss_kb "$p"))); done; echo "$t"; }
# user and kernel CPU seconds of all the server's processes
cpu_split() {
  local hz; hz=$(getconf CLK_TCK)
  for p in $SRV_PIDS; do cat "/proc/$p/stat"; done | awk -v hz="$hz" '{u += $14; s += $15} END {printf "%.3f %.3f", u/hz, s/hz}'
}

# Starts N subscribers on channel CH; waits until all have their head.
subscribe() {
  local n=$1 ch=$2
  : >"$NG_DIR/load.err"
  "$BUILD/sse_load" -p "$SRV_PORT" -P "/sub/$ch" -n "$n" -L -d 3600 >"$NG_DIR/load.out" 2>"$NG_DIR/load.err" &
  LOAD=$!
  for _ in $(seq 1 600); do grep -q "^ready" "$NG_DIR/load.err" && break; sleep 0.1; done
  sleep 1 # the last subscriptions settle
}
unsubscribe() {
  kill -INT "$LOAD" 2>/dev/null || true
  wait "$LOAD" 2>/dev/null || true
  LOAD=""
}

field() { sed -n "s/.*[ ^]$1=\([0-9]*\).*/\1/p" "$NG_DIR/load.out" | head -1; }

echo "server,workers,scenario,subscribers,events_per_s,mem_per_sub_bytes,delivered_per_s,delivery_pct,p50_us,p99_us,user_us_per_delivery,kernel_us_per_delivery" >"$CSV"

memory_run() { # KIND WORKERS N
  local kind=$1 w=$2 n=$3
  start_server "$kind" "$w"
  local r0 r1
  r0=$(rss_sum)
  subscribe "$n" "idle$n"
  r1=$(rss_sum)
  unsubscribe
  stop_server
  local per=$(((r1 - r0) * 1024 / n))
  echo "$kind,$w,memory,$n,0,$per,,,,,," >>"$CSV"
  printf "%-7s workers=%s idle subscribers=%-6s memory per subscriber %6d B\n" "$kind" "$w" "$n" "$per"
}

fanout_run() { # KIND WORKERS N HZ [SCENARIO (fanout)]
  local kind=$1 w=$2 n=$3 hz=$4 scen=${5:-fanout} ch="fan$3x$4"
  start_server "$kind" "$w"
  subscribe "$n" "$ch"
  local c0 c1 published t0 t1
  c0=$(cpu_split)
  t0=$(date +%s.%N)
  published=$(python3 "$BENCH_DIR/publish.py" "$SRV_PORT" "/pub/$ch" "$hz" "$SECS")
  t1=$(date +%s.%N) # past SECS when the server answers the publisher late (saturation)
  sleep 2 # the last events reach everyone
  c1=$(cpu_split)
  unsubscribe
  stop_server
  local samples p50 p99
  samples=$(field samples); p50=$(field p50_us); p99=$(field p99_us)
  awk -v k="$kind" -v w="$w" -v n="$n" -v hz="$hz" -v secs="$SECS" -v pub="$published" -v got="${samples:-0}" \
    -v p50="${p50:-0}" -v p99="${p99:-0}" -v c0="$c0" -v c1="$c1" -v csv="$CSV" -v scen="$scen" -v t0="$t0" -v t1="$t1" 'BEGIN {
    split(c0, a, " "); split(c1, b, " ")
    if (t1 - t0 > secs) secs = t1 - t0
    d = got > 0 ? got : 1
    user = (b[1] - a[1]) * 1e6 / d; kern = (b[2] - a[2]) * 1e6 / d
    pct = pub * n > 0 ? 100 * got / (pub * n) : 0
    printf "%s,%s,%s,%d,%d,,%.0f,%.2f,%d,%d,%.3f,%.3f\n", k, w, scen, n, hz, got / secs, pct, p50, p99, user, kern >> csv
    printf "%-7s workers=%s fan-out %5d subs x %3d ev/s: %8.0f delivered/s  %6.2f%%  p50 %6.1f ms  p99 %6.1f ms  cpu/delivery user %.2f us kernel %.2f us\n",
      k, w, n, hz, got / secs, pct, p50 / 1000, p99 / 1000, user, kern }'
}

sluice_workers=1
"$BUILD/sluice" --help 2>&1 | grep -q -- "--workers" && sluice_workers=2
for w in 1 2; do
  for kind in sluice nchan; do
    if [ "$kind" = sluice ] && [ "$w" -gt "$sluice_workers" ]; then
      echo "sluice  workers=$w: not run (this build has no --workers)"
      continue
    fi
    memory_run "$kind" "$w" 10000
    memory_run "$kind" "$w" 19000
    fanout_run "$kind" "$w" 10000 5
    fanout_run "$kind" "$w" 10000 20
    fanout_run "$kind" "$w" 1000 200
    fanout_run "$kind" "$w" 10000 50 # past what one core can write: saturation
    # user CPU per delivery where it was first compared: 5,000 x 20/s, one worker (not in the chart)
    if [ "$w" = 1 ]; then fanout_run "$kind" "$w" 5000 20 user; fi
  done
done

# The ratios the project tracks, one worker each.
awk -F, '
  $3 == "memory" && $4 == 10000 && $2 == 1 { mem[$1] = $6 }
  $3 == "fanout" && $4 == 10000 && $5 == 20 && $2 == 1 { cpu[$1] = $11 + $12; usr[$1] = $11 }
  END {
    if (mem["nchan"] > 0) printf "ratio sluice/nchan, one worker: memory per subscriber %.2f", mem["sluice"] / mem["nchan"]
    if (cpu["nchan"] > 0) printf ", cpu per delivery %.2f (user %.2f)", cpu["sluice"] / cpu["nchan"], usr["sluice"] / usr["nchan"]
    print ""
  }' "$CSV"
awk -F, '
  $3 == "user" { usr[$1] = $11 }
  END {
    if (usr["nchan"] > 0) printf "user CPU per delivery at 5,000 x 20/s, one worker each: sluice %.2f us nchan %.2f us (%.2f)\n", usr["sluice"], usr["nchan"], usr["sluice"] / usr["nchan"]
  }' "$CSV"
awk -F, '
  $3 == "fanout" && $4 == 10000 && $5 == 50 && $2 == 2 { got[$1] = $7; p99[$1] = $10 }
  END {
    if (got["nchan"] > 0) printf "saturation (10,000 x 50/s), two workers each: delivered/s sluice %.0f nchan %.0f (%.2fx), p99 sluice %.1f ms nchan %.1f ms\n", got["sluice"], got["nchan"], got["sluice"] / got["nchan"], p99["sluice"] / 1000, p99["nchan"] / 1000
  }' "$CSV"
echo "csv: $CSV"
fi

gnuplot <<EOF
set terminal pngcairo size 1500,420 font ",10"
set output "$OUT/compare.png"
set datafile separator ","
set multiplot layout 1,3 title "Sluice and nginx+nchan ($(date +%F))"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set grid ytics
set yrange [0:*]
set title "memory per idle subscriber (bytes), one worker"
set xtics ("10,000" 0, "19,000" 1)
plot "< awk -F, '\$3==\"memory\" && \$2==1 && \$1==\"sluice\"' $CSV" using 6 title "sluice", \
     "< awk -F, '\$3==\"memory\" && \$2==1 && \$1==\"nchan\"' $CSV" using 6 title "nchan"
set title "server CPU per delivery (µs, user + kernel), one worker"
set xtics ("10k x 5/s" 0, "10k x 20/s" 1, "1k x 200/s" 2, "10k x 50/s" 3)
plot "< awk -F, '\$3==\"fanout\" && \$2==1 && \$1==\"sluice\"' $CSV" using (\$11+\$12) title "sluice", \
     "< awk -F, '\$3==\"fanout\" && \$2==1 && \$1==\"nchan\"' $CSV" using (\$11+\$12) title "nchan"
set title "delivered per second (thousands), two workers each"
set key top left
plot "< awk -F, '\$3==\"fanout\" && \$2==2 && \$1==\"sluice\"' $CSV" using (\$7/1000) title "sluice", \
     "< awk -F, '\$3==\"fanout\" && \$2==2 && \$1==\"nchan\"' $CSV" using (\$7/1000) title "nchan"
unset multiplot
EOF
echo "chart: $OUT/compare.png"
