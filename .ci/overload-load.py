#!/usr/bin/env python3
"""Offers simulated load to `tracegate run` and checks what it made of it.

usage: overload-load.py BINARY READERS PALLET READ_RATE SECONDS [INTERVAL_MS]

READERS simulated portals, each introducing PALLET tags every INTERVAL_MS
(default 1) that stay 100 ms in the field, read READ_RATE times a second in
all. The departure timeout (300 ms) is longer than a tag's stay, so by the
reads' own time every tag read gets exactly one arrival and one departure:
`bad_tags` counts those that did not. Prints one JSON line: offered and
committed events/s, tags, bad tags, peak RSS (sampled every 200 ms), how
long SIGTERM took, and the RSS timeline (MiB, every second).
"""
import collections, json, os, signal, subprocess, sys, tempfile, time

BIN = sys.argv[1]
readers, pallet, rate = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dur = float(sys.argv[5])
interval = int(sys.argv[6]) if len(sys.argv) > 6 else 1
d = tempfile.mkdtemp(prefix="tracegate-overload-")
cfg = f'[gateway]\nid="gw-load"\nsite="s"\ndata_dir="{d}/data"\n\n'
for i in range(readers):
    cfg += (f'[[readers]]\nname="sim{i}"\nkind="sim"\nantennas=[1,2]\nread_rate={rate}\n'
            f'arrival_interval_ms={interval}\npallet_size={pallet}\ndwell_ms=100\nseed={i+1}\n\n'
            f'[[read_points]]\nname="door{i}"\nreader="sim{i}"\n\n')
cfg += '[dedup]\nmin_reads=1\ndeparture_timeout_ms=300\n\n[ops]\nmetrics_addr="off"\n'
with open(f"{d}/t.toml", "w") as f:
    f.write(cfg)
log = open(f"{d}/log", "w")
p = subprocess.Popen([BIN, "run", "--config", f"{d}/t.toml"], stdout=log, stderr=log,
                     env=dict(os.environ, RUST_LOG="info"))
t0, peak, timeline = time.time(), 0, []
while time.time() - t0 < dur:
    time.sleep(0.2)
    try:
        with open(f"/proc/{p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    kb = int(line.split()[1])
                    peak = max(peak, kb)
                    timeline.append(kb // 1024)
    except FileNotFoundError:
        break
p.send_signal(signal.SIGTERM)
ts = time.time()
p.wait()
took = time.time() - ts
out = subprocess.run([BIN, "events", "--json", "--config", f"{d}/t.toml"],
                     capture_output=True, text=True).stdout
per = collections.defaultdict(lambda: [0, 0])
kinds = collections.Counter()
for line in out.splitlines():
    e = json.loads(line)
    kinds[e["type"]] += 1
    if e["type"] in ("arrived", "departed"):
        per[e["identity"]["epc"]][0 if e["type"] == "arrived" else 1] += 1
print(json.dumps(dict(
    offered_events_s=2 * readers * pallet * 1000 / interval, offered_reads_s=readers * rate,
    seconds=dur, kinds=kinds, tags=len(per),
    bad_tags=sum(1 for v in per.values() if v[0] > 1 or v[1] > 1 or v[1] > v[0]),
    events_per_s=round((kinds["arrived"] + kinds["departed"]) / dur),
    peak_rss_mib=round(peak / 1024, 1), sigterm_s=round(took, 2), rc=p.returncode,
    rss_timeline_mib=timeline[::5])))
