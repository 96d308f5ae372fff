#!/usr/bin/env python3
"""End-to-end benchmark of `tracegate run`: latency from an event's `time`
to its delivery through a real mosquitto, and CPU per event, readers and
dedup included.

Simulated readers produce a steady event rate (each tag crossing the portal
gives one `arrived` and one `departed`); the gateway commits, publishes QoS 1
to mosquitto on a free loopback port, and `mosquitto_sub` stamps every message
on receipt. Latency = receipt time - the event's own `time` (so it includes
dedup's departure timer, the group commit, batching and the broker hop: an
upper bound of time -> PUBACK, since the broker forwards to the subscriber
and acknowledges the publisher in the same step). CPU = utime + stime of the
gateway process over the measurement window / events delivered.

Several binaries can be measured in one run (e.g. the previous build as a
baseline), alternating round by round, because this machine is shared and
noisy: compare ratios within one run, not absolute figures across runs.

    python3 .ci/e2e-bench.py --bin new=target/release/tracegate \
        [--bin base=/path/to/old/tracegate] [--rate 1500] [--duration 30] [--rounds 2]

Needs mosquitto and mosquitto_sub (bash .ci/mqtt-setup.sh or apt-get install
mosquitto mosquitto-clients). Prints one line per round and a summary table.
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchutil import free_port

READERS = 3
WARMUP_S = 5


def find(cmd, extra=()):
    path = shutil.which(cmd)
    if path:
        return path
    for p in extra:
        if os.access(p, os.X_OK):
            return p
    sys.exit(f"{cmd} not found: apt-get install -y mosquitto mosquitto-clients")


def config(work, mqtt_port, http_port, rate, data_dir):
    # Each tag gives two events (arrived, departed): READERS readers, each
    # admitting a tag every `interval` ms, give 2 * READERS * 1000 / interval
    # events/s.
    interval = max(1, round(2 * READERS * 1000 / rate))
    readers = "".join(
        f"""
[[readers]]
name = "sim-{i}"
kind = "sim"
antennas = [1, 2]
read_rate = 3000
arrival_interval_ms = {interval}
dwell_ms = 1000
seed = {i + 1}
company_prefix = {614141 + i}

[[read_points]]
name = "door-{i}"
reader = "sim-{i}"
direction = {{ outside = 1, inside = 2 }}
biz_step = "receiving"
"""
        for i in range(READERS)
    )
    text = f"""
[gateway]
id = "bench"
site = "bench"
data_dir = "{data_dir}"
{readers}
[dedup]
key = "epc"
min_reads = 2
arrival_window_ms = 1000
departure_timeout_ms = 500

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"

[ops]
metrics_addr = "127.0.0.1:{http_port}"
"""
    path = os.path.join(work, "bench.toml")
    with open(path, "w") as f:
        f.write(text)
    return path, 2 * READERS * 1000 / interval


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime are fields 14 and 15 of the whole line: 12 and 13 after ")".
    return int(fields[11]) + int(fields[12])


def parse_time(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def one_round(name, binary, rate, duration):
    work = tempfile.mkdtemp(prefix="tg-e2e-")
    procs = []
    try:
        mport, hport = free_port(), free_port()
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {mport} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        mosq = subprocess.Popen(
            [find("mosquitto", ["/usr/sbin/mosquitto"]), "-c", conf],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(mosq)
        time.sleep(0.3)
        sub = subprocess.Popen(
            [find("mosquitto_sub"), "-p", str(mport), "-q", "1", "-t", "tracegate/+/+/events", "-F", "%U %p"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        procs.append(sub)
        samples = []  # (event time, latency s)
        lock = threading.Lock()

        def reader():
            for line in sub.stdout:
                recv, _, payload = line.partition(" ")
                try:
                    recv_s = float(recv)
                    batch = json.loads(payload)
                except ValueError:
                    continue
                got = []
                for ev in batch.get("events", []):
                    t = ev.get("time")
                    if isinstance(t, str):
                        et = parse_time(t)
                        got.append((et, recv_s - et))
                with lock:
                    samples.extend(got)

        threading.Thread(target=reader, daemon=True).start()
        conf_path, offered = config(work, mport, hport, rate, os.path.join(work, "data"))
        gw = subprocess.Popen(
            [binary, "--log-level", "warn", "run", "--config", conf_path],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(work, "gw.log"), "w"),
        )
        procs.append(gw)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{hport}/healthz", timeout=1)
                break
            except OSError:
                if gw.poll() is not None:
                    sys.exit(f"{name}: tracegate exited: " + open(os.path.join(work, "gw.log")).read())
                time.sleep(0.2)
        time.sleep(WARMUP_S)
        tck = os.sysconf("SC_CLK_TCK")
        t0, c0 = time.time(), cpu_ticks(gw.pid)
        time.sleep(duration)
        t1, c1 = time.time(), cpu_ticks(gw.pid)
        # Events stamped inside the window, delivered up to 2 s after it.
        time.sleep(2)
        with lock:
            window = [lat for (et, lat) in samples if t0 <= et < t1]
        cpu_s = (c1 - c0) / tck
        n = len(window)
        window.sort()

        def pct(p):
            return window[min(n - 1, int(p * n))] * 1000 if n else float("nan")

        res = {
            "name": name,
            "offered": offered,
            "events_per_s": n / (t1 - t0),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": window[-1] * 1000 if n else float("nan"),
            "cpu_pct": 100 * cpu_s / (t1 - t0),
            "cpu_us_per_event": cpu_s * 1e6 / n if n else float("nan"),
        }
        return res
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", required=True, help="name=path of a tracegate binary")
    ap.add_argument("--rate", type=float, default=1500, help="offered events/s (default 1500)")
    ap.add_argument("--duration", type=float, default=30, help="measured seconds per round (default 30)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    bins = [b.split("=", 1) for b in args.bin]
    results = []
    for r in range(args.rounds):
        for name, path in bins:
            res = one_round(name, path, args.rate, args.duration)
            results.append(res)
            print(
                f"round {r + 1} {name}: {res['events_per_s']:.0f} events/s (offered {res['offered']:.0f}), "
                f"latency p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms max {res['max_ms']:.1f} ms, "
                f"CPU {res['cpu_pct']:.1f} % = {res['cpu_us_per_event']:.1f} us/event",
                flush=True,
            )
    print("\n| binary | events/s | p50 ms | p99 ms | max ms | CPU µs/event |")
    print("| --- | --- | --- | --- | --- | --- |")
    for res in results:
        print(
            f"| {res['name']} | {res['events_per_s']:.0f} | {res['p50_ms']:.1f} | {res['p99_ms']:.1f} "
            f"| {res['max_ms']:.1f} | {res['cpu_us_per_event']:.1f} |"
        )


if __name__ == "__main__":
    main()
