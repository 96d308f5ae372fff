#!/usr/bin/env bash
# Footprint of `tracegate run`: one simulated reader at 1,000 reads/s,
# events published to a real mosquitto on a free loopback port, sampled
# from /proc for DURATION seconds after a warm-up.
# Targets: RSS <= 32 MiB, CPU <= 5 % of one core. Exits 1 above either.
#
# Usage: bash .ci/footprint.sh [duration_s]          (default 60)
#   TRACEGATE_BIN=path  use an existing binary instead of building one
#   FOOTPRINT_RATE=n    reads/s of the simulated reader (default 1000)
# Takes duration + ~10 s, plus a release build if none exists (~5 min).
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-60}"
rate="${FOOTPRINT_RATE:-1000}"
warmup=5
max_rss_kib=$((32 * 1024))
max_cpu_pct=5

bin="${TRACEGATE_BIN:-}"
if [ -z "$bin" ]; then
    cargo build --release -p tracegate >&2
    bin="$PWD/target/release/tracegate"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mqtt_table=""
mosq="$(command -v mosquitto || true)"
[ -z "$mosq" ] && [ -x /usr/sbin/mosquitto ] && mosq=/usr/sbin/mosquitto
if [ -n "$mosq" ]; then
    mport="$(free_port)"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$mport" >"$work/mosquitto.conf"
    "$mosq" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
    pids+=($!)
    mqtt_table="[mqtt]
url = \"mqtt://127.0.0.1:$mport\""
else
    echo "mosquitto not installed (bash .ci/mqtt-setup.sh): measuring without publishing" >&2
fi

hport="$(free_port)"
cat >"$work/footprint.toml" <<TOML
[gateway]
id = "footprint"
site = "bench"
data_dir = "$work/data"

[[readers]]
name = "sim-1"
kind = "sim"
antennas = [1, 2]
read_rate = $rate
arrival_interval_ms = 250
dwell_ms = 3000
seed = 7

[[read_points]]
name = "door"
reader = "sim-1"
direction = { outside = 1, inside = 2 }

[dedup]
key = "epc"
min_reads = 2
arrival_window_ms = 1000
departure_timeout_ms = 1500

[store]
commit_interval_ms = 100

$mqtt_table

[ops]
metrics_addr = "127.0.0.1:$hport"
TOML

"$bin" --log-level warn run --config "$work/footprint.toml" >"$work/run.log" 2>&1 &
pid=$!
pids+=("$pid")

scrape_reads() {
    curl -fsS "http://127.0.0.1:$hport/metrics" 2>/dev/null |
        awk '/^tracegate_reads_total[{ ]/ { s += $NF } END { printf "%d\n", s }'
}
for _ in $(seq 1 50); do
    curl -fsS "http://127.0.0.1:$hport/healthz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "tracegate run exited:" >&2; cat "$work/run.log" >&2; exit 1; }
    sleep 0.2
done
sleep "$warmup"

tck="$(getconf CLK_TCK)"
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status"; }
wbytes() { awk '/^write_bytes:/ { print $2 }' "/proc/$pid/io" 2>/dev/null || echo 0; }

reads0="$(scrape_reads)"; t0="$(ticks)"; w0="$(wbytes)"; start_ns="$(date +%s%N)"
max_rss=0; sum_rss=0; n=0
for _ in $(seq 1 "$duration"); do
    sleep 1
    kill -0 "$pid" 2>/dev/null || { echo "tracegate run died:" >&2; tail -n 40 "$work/run.log" >&2; exit 1; }
    r="$(rss_kib)"
    sum_rss=$((sum_rss + r)); n=$((n + 1))
    [ "$r" -gt "$max_rss" ] && max_rss="$r"
done
t1="$(ticks)"; w1="$(wbytes)"; end_ns="$(date +%s%N)"; reads1="$(scrape_reads)"
threads="$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")"

elapsed="$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')"
cpu="$(awk -v d="$((t1 - t0))" -v t="$tck" -v e="$elapsed" 'BEGIN { printf "%.2f", 100 * d / t / e }')"
rate_seen="$(awk -v a="$reads0" -v b="$reads1" -v e="$elapsed" 'BEGIN { printf "%.0f", (b - a) / e }')"
wrate="$(awk -v a="$w0" -v b="$w1" -v e="$elapsed" 'BEGIN { printf "%.1f", (b - a) / e / 1024 }')"
avg_rss=$((sum_rss / n))
pending="$(curl -fsS "http://127.0.0.1:$hport/metrics" | awk '/^tracegate_outbox_depth / { print $2 }')"

cat <<REPORT
footprint: tracegate run, 1 sim reader at $rate reads/s, ${duration} s after ${warmup} s warm-up, mqtt: $([ -n "$mqtt_table" ] && echo mosquitto || echo none)
  reads/s seen (tracegate_reads_total): $rate_seen
  RSS: max $((max_rss / 1024)).$(( (max_rss % 1024) * 10 / 1024 )) MiB, mean $((avg_rss / 1024)).$(( (avg_rss % 1024) * 10 / 1024 )) MiB   (target <= 32 MiB)
  CPU: $cpu % of one core                (target <= $max_cpu_pct %)
  disk writes: $wrate KiB/s; threads: $threads; outbox depth at end: ${pending:-?}
REPORT

fail=0
[ "$max_rss" -gt "$max_rss_kib" ] && { echo "FAIL: RSS above 32 MiB" >&2; fail=1; }
awk -v c="$cpu" -v m="$max_cpu_pct" 'BEGIN { exit !(c > m) }' && { echo "FAIL: CPU above $max_cpu_pct %" >&2; fail=1; }
exit "$fail"
