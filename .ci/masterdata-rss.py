#!/usr/bin/env python3
"""Memory and apply time of the real daemon with a 10-million-serial dataset.

`tracegate run` (one simulated reader, events published to a real mosquitto
on a free loopback port, `[masterdata]` configured) is sampled from
/proc/PID/status (VmRSS, VmHWM) every 50 ms:

  1. baseline: no master data, after a warm-up;
  2. a commissioned-serials dataset of N entries is built with
     `tracegate masterdata build` and published with `tracegate masterdata
     publish` (retained, QoS 1); the daemon receives, parses, stores and
     switches it: the peak RSS during that apply, and the apply time (from
     the publish to the `masterdata_applied` log line, and the store's
     `apply_ms`);
  3. steady state after the apply (RSS after a settle time), and the CPU the
     daemon spends at the same read rate with and without the dataset (the
     per-event lookup cost);
  4. a restart with the dataset in masterdata.db: RSS and peak at start.

Shapes (--shape):
  runs    N serials listed one by one (`serials` arrays of 1,000),
          consecutive in runs of 100 with gaps of 100, over 4 GTINs
          (what commissioning in sequence gives);
  random  N distinct random serials over 4 GTINs in 1..2^38 (SGTIN-96's
          serial space): no two adjacent, the worst case for the index.

Usage: python3 .ci/masterdata-rss.py [--shape runs|random] [--serials N]
  TRACEGATE_BIN=path   use this binary (default: target/release/tracegate,
                       built with `cargo build --release -p tracegate` if
                       missing)
Prints one report; exit status 1 when the steady RSS grows more than
--max-growth-mib (default 32) over the baseline.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from benchutil import free_port

GTINS = ["09506000134352", "00614141123452", "04012345000009", "08712345678906"]


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rollup_kib(pid, key):
    """A field of /proc/PID/smaps_rollup (e.g. AnonHugePages: RSS in
    transparent huge pages, which a partly used 2 MiB region counts whole)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class Sampler:
    """Samples VmRSS every 50 ms; max over a window on demand."""

    def __init__(self, pid):
        self.pid = pid
        self.max = 0
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                self.max = max(self.max, status_kib(self.pid, "VmRSS"))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.05)

    def reset(self):
        self.max = 0


def write_payload(path, shape, n):
    per = n // len(GTINS)
    rng = random.Random(7)
    with open(path, "w") as out:
        for g in GTINS:
            if shape == "runs":
                serials = (s for start in range(1, 4 * per, 200) for s in range(start, start + 100))
                it = iter(serials)
                left = per
                while left > 0:
                    k = min(1000, left)
                    batch = [next(it) for _ in range(k)]
                    left -= k
                    out.write('{"t":"commissioned","gtin":"%s","serials":[%s]}\n'
                              % (g, ",".join('"%d"' % s for s in batch)))
            else:
                # Distinct and never adjacent: one serial per stride of 2^38/per.
                stride = (1 << 38) // per
                for base in range(0, per, 1000):
                    batch = [(base + i) * stride + 1 + rng.randrange(stride - 1)
                             for i in range(min(1000, per - base))]
                    out.write('{"t":"commissioned","gtin":"%s","serials":[%s]}\n'
                              % (g, ",".join('"%d"' % s for s in batch)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=["runs", "random"], default="runs")
    ap.add_argument("--serials", type=int, default=10_000_000)
    ap.add_argument("--rate", type=int, default=1000, help="simulated reads/s")
    ap.add_argument("--cpu-window", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--max-growth-mib", type=float, default=32.0)
    args = ap.parse_args()

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = os.environ.get("TRACEGATE_BIN") or os.path.join(root, "target/release/tracegate")
    if not os.path.exists(exe):
        subprocess.run(["cargo", "build", "--release", "-p", "tracegate"], cwd=root, check=True)
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    work = tempfile.mkdtemp(prefix="md-rss-")
    procs = []

    def cleanup():
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)

    try:
        mport = free_port()
        with open(f"{work}/mosquitto.conf", "w") as f:
            f.write(f"listener {mport} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "message_size_limit 0\n")
            if os.geteuid() == 0:
                f.write("user root\n")
        procs.append(subprocess.Popen([mosq, "-c", f"{work}/mosquitto.conf"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", mport), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)

        subprocess.run([exe, "masterdata", "keygen", f"{work}/registry"], check=True,
                       stdout=subprocess.DEVNULL)
        t = time.time()
        write_payload(f"{work}/serials.jsonl", args.shape, args.serials)
        payload_mib = os.path.getsize(f"{work}/serials.jsonl") / 2**20
        subprocess.run([exe, "masterdata", "build", "--key", f"{work}/registry.key",
                        "--name", "commissioned", "--version", "1",
                        "--input", f"{work}/serials.jsonl", "--out", f"{work}/ds"],
                       check=True, stdout=subprocess.DEVNULL)
        os.remove(f"{work}/serials.jsonl")
        chunks = len([n for n in os.listdir(f"{work}/ds") if n.startswith("chunk-")])
        prep_s = time.time() - t

        hport = free_port()
        with open(f"{work}/rss.toml", "w") as f:
            f.write(f"""[gateway]
id = "md-rss"
site = "bench"
data_dir = "{work}/data"

[[readers]]
name = "sim-1"
kind = "sim"
antennas = [1, 2]
read_rate = {args.rate}
arrival_interval_ms = 250
dwell_ms = 3000
seed = 7

[[read_points]]
name = "door"
reader = "sim-1"
direction = {{ outside = 1, inside = 2 }}

[dedup]
key = "epc"
min_reads = 2
arrival_window_ms = 1000
departure_timeout_ms = 1500

[mqtt]
url = "mqtt://127.0.0.1:{mport}"

[masterdata]
trusted_keys = ["{work}/registry.pub"]
max_dataset_bytes = 536870912

[ops]
metrics_addr = "127.0.0.1:{hport}"
""")

        def start_daemon(log_name):
            log = open(f"{work}/{log_name}", "w")
            p = subprocess.Popen([exe, "--log-level", "info", "--log-format", "json", "run",
                                  "--config", f"{work}/rss.toml"], stdout=log, stderr=log)
            procs.append(p)
            for _ in range(3000):
                try:
                    socket.create_connection(("127.0.0.1", hport), 0.2).close()
                    break
                except OSError:
                    if p.poll() is not None:
                        sys.exit(open(f"{work}/{log_name}").read())
                    time.sleep(0.1)
            return p

        def cpu_pct(pid, window):
            t0, c0 = time.time(), cpu_ticks(pid)
            time.sleep(window)
            return 100.0 * (cpu_ticks(pid) - c0) / os.sysconf("SC_CLK_TCK") / (time.time() - t0)

        def applied(log_name):
            for line in open(f"{work}/{log_name}"):
                if "masterdata_applied" in line:
                    return line
            return None

        d = start_daemon("run1.log")
        s = Sampler(d.pid)
        time.sleep(5)
        base_rss = status_kib(d.pid, "VmRSS")
        base_cpu = cpu_pct(d.pid, args.cpu_window)
        base_rss = max(base_rss, status_kib(d.pid, "VmRSS"))
        base_hwm = status_kib(d.pid, "VmHWM")

        s.reset()
        t_pub = time.time()
        subprocess.run([exe, "masterdata", "publish", f"{work}/ds", "--broker",
                        f"mqtt://127.0.0.1:{mport}"], check=True, stdout=subprocess.DEVNULL)
        publish_s = time.time() - t_pub
        line = None
        while line is None:
            if d.poll() is not None:
                sys.exit("daemon died:\n" + open(f"{work}/run1.log").read()[-4000:])
            if time.time() - t_pub > 900:
                sys.exit("not applied in 900 s")
            time.sleep(0.05)
            line = applied("run1.log")
        apply_wall_s = time.time() - t_pub
        m = re.search(r'"apply_ms":"?(\d+)', line)
        store_apply_ms = int(m.group(1)) if m else None
        # The index's own heap, as the daemon counts it (newer builds log it).
        m = re.search(r'"index_bytes":"?(\d+)', line)
        index_mib = round(int(m.group(1)) / 2**20, 1) if m else None
        time.sleep(args.settle)
        hwm_apply = status_kib(d.pid, "VmHWM")
        after_rss = status_kib(d.pid, "VmRSS")
        md_cpu = cpu_pct(d.pid, args.cpu_window)
        after_rss = max(after_rss, status_kib(d.pid, "VmRSS"))
        after_thp = rollup_kib(d.pid, "AnonHugePages")
        d.send_signal(signal.SIGTERM)
        d.wait(300)
        s.stop = True
        print(json.dumps({"after_apply_rss_mib": after_rss / 1024, "apply_vmhwm_mib": hwm_apply / 1024,
                          "baseline_rss_mib": base_rss / 1024, "publish_to_applied_s": apply_wall_s,
                          "store_apply_ms": store_apply_ms}), file=sys.stderr)

        # Restart: the dataset is re-verified and indexed from masterdata.db
        # before the gateway runs (the health endpoint answers after it).
        t_start = time.time()
        d = start_daemon("run2.log")
        start_s = time.time() - t_start
        s = Sampler(d.pid)
        time.sleep(args.settle)
        restart_rss = status_kib(d.pid, "VmRSS")
        restart_hwm = status_kib(d.pid, "VmHWM")
        restart_thp = rollup_kib(d.pid, "AnonHugePages")
        loaded = any("masterdata.loaded" in l for l in open(f"{work}/run2.log"))
        d.send_signal(signal.SIGTERM)
        d.wait(300)
        s.stop = True
        db_mib = os.path.getsize(f"{work}/data/masterdata.db") / 2**20

        mib = lambda k: k / 1024.0
        growth = mib(after_rss - base_rss)
        print(json.dumps({
            "shape": args.shape, "serials": args.serials, "payload_mib": round(payload_mib, 1),
            "chunks": chunks, "prepare_s": round(prep_s, 1), "read_rate": args.rate,
            "baseline_rss_mib": round(mib(base_rss), 1),
            "baseline_hwm_mib": round(mib(base_hwm), 1),
            "apply_peak_rss_mib": round(mib(max(s.max, hwm_apply)), 1),
            "apply_vmhwm_mib": round(mib(hwm_apply), 1),
            "after_apply_rss_mib": round(mib(after_rss), 1),
            "steady_growth_mib": round(growth, 1),
            "publish_s": round(publish_s, 1), "publish_to_applied_s": round(apply_wall_s, 1),
            "store_apply_ms": store_apply_ms, "index_heap_mib": index_mib,
            "cpu_pct_without": round(base_cpu, 2), "cpu_pct_with": round(md_cpu, 2),
            "after_apply_anon_huge_mib": round(mib(after_thp), 1),
            "restart_rss_mib": round(mib(restart_rss), 1),
            "restart_anon_huge_mib": round(mib(restart_thp), 1),
            "restart_vmhwm_mib": round(mib(restart_hwm), 1),
            "restart_loaded": loaded, "restart_to_http_s": round(start_s, 1),
            "masterdata_db_mib": round(db_mib, 1),
        }, indent=1))
        return 1 if growth > args.max_growth_mib else 0
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
