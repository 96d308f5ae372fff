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
        [--bin base=/path/to/old/tracegate] [--rate 1500] [--duration 30] [--rounds 2] \
        [--set NAME:store.KEY=VALUE ...] [--set NAME:readers.KEY=VALUE ...] [--concurrent]

`--concurrent` runs a round's binaries at the same time, each against its
own broker: they then share whatever the host does during the round, which
on a VM moves the CPU per event of one binary by a third from one round to
the next; ratios within a round are then the figure to quote.

`--set new:store.commit_age_ms=0` sets a `[store]` key for the binary named
`new` only, `--set new:readers.read_rate=1500` a key of each of its
simulated readers (one binary may be listed twice under two names, to
compare settings in one run). Each round also reports the store's commits/s (from
`tracegate_store_commits_total`, when the binary has it).

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


def config(work, mqtt_port, http_port, rate, data_dir, sets=None):
    sets = sets or {}
    store = [f"{k} = {v}" for k, v in sets.get("store", {}).items()]
    reader_keys = {"read_rate": 3000, **sets.get("readers", {})}
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
{chr(10).join(f"{k} = {v}" for k, v in reader_keys.items())}
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

[store]
{chr(10).join(store)}

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
    """utime + stime of the process, in clock ticks. The sum is exact (the
    kernel scales both to the process's runtime); the split between them is
    sampled at ticks and is not, so only the sum is used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime are fields 14 and 15 of the whole line: 12 and 13 after ")".
    return int(fields[11]) + int(fields[12])


def commits(http_port):
    """The store's commits so far, or None if the binary does not count them."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("tracegate_store_commits_total"):
            return float(line.split()[-1])
    return None


def parse_time(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def one_round(name, binary, rate, duration, sets=None):
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
        conf_path, offered = config(work, mport, hport, rate, os.path.join(work, "data"), sets)
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
        k0 = commits(hport)
        t0, c0 = time.time(), cpu_ticks(gw.pid)
        time.sleep(duration)
        t1, c1 = time.time(), cpu_ticks(gw.pid)
        k1 = commits(hport)
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
            "commits_per_s": (k1 - k0) / (t1 - t0) if k0 is not None and k1 is not None else float("nan"),
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
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        help="NAME:SECTION.KEY=VALUE, a [store] or [[readers]] key for one binary",
    )
    ap.add_argument(
        "--concurrent",
        action="store_true",
        help="run the binaries of a round at the same time (each with its own broker) instead of one after another",
    )
    args = ap.parse_args()
    bins = [b.split("=", 1) for b in args.bin]
    sets = {}
    for spec in args.set:
        name, _, kv = spec.partition(":")
        key, _, value = kv.partition("=")
        section, _, key = key.strip().partition(".")
        if section not in ("store", "readers") or not key or not value or name not in dict(bins):
            sys.exit(f"--set {spec!r}: expected NAME:store.KEY=VALUE or NAME:readers.KEY=VALUE, NAME one of the --bin names")
        sets.setdefault(name, {}).setdefault(section, {})[key] = value.strip()
    results = []
    for r in range(args.rounds):
        if args.concurrent:
            done = {}

            def run(name, path):
                done[name] = one_round(name, path, args.rate, args.duration, sets.get(name))

            threads = [threading.Thread(target=run, args=b) for b in bins]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if len(done) != len(bins):
                sys.exit("a concurrent round failed (see above)")
            round_results = [done[name] for name, _ in bins]
        else:
            round_results = [one_round(name, path, args.rate, args.duration, sets.get(name)) for name, path in bins]
        for res in round_results:
            name = res["name"]
            results.append(res)
            print(
                f"round {r + 1} {name}: {res['events_per_s']:.0f} events/s (offered {res['offered']:.0f}), "
                f"latency p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms max {res['max_ms']:.1f} ms, "
                f"CPU {res['cpu_pct']:.1f} % = {res['cpu_us_per_event']:.1f} us/event, "
                f"{res['commits_per_s']:.1f} commits/s",
                flush=True,
            )
    print("\n| binary | events/s | p50 ms | p99 ms | max ms | CPU µs/event | commits/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for res in results:
        print(
            f"| {res['name']} | {res['events_per_s']:.0f} | {res['p50_ms']:.1f} | {res['p99_ms']:.1f} "
            f"| {res['max_ms']:.1f} | {res['cpu_us_per_event']:.1f} | {res['commits_per_s']:.1f} |"
        )
    if args.rounds > 1:
        print("\n| binary | rounds | mean CPU µs/event (min to max) | mean p99 ms (worst) | mean commits/s |")
        print("| --- | --- | --- | --- | --- |")
        for name, _ in bins:
            rs = [r for r in results if r["name"] == name]
            cpu = [r["cpu_us_per_event"] for r in rs]
            p99 = [r["p99_ms"] for r in rs]
            k = [r["commits_per_s"] for r in rs]
            print(
                f"| {name} | {len(rs)} | {sum(cpu) / len(cpu):.1f} ({min(cpu):.1f} to {max(cpu):.1f}) "
                f"| {sum(p99) / len(p99):.1f} ({max(p99):.1f}) | {sum(k) / len(k):.1f} |"
            )


if __name__ == "__main__":
    main()
