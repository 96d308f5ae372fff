#!/usr/bin/env python3
"""Offers simulated load to `tracegate run` and checks what it made of it.

usage: overload-load.py BINARY READERS PALLET READ_RATE SECONDS [INTERVAL_MS]
                        [--mqtt] [--store KEY=VALUE]... [--taskset CPUS]
                        [--env NAME=VALUE]... [--keep]

READERS simulated portals, each introducing PALLET tags every INTERVAL_MS
(default 1) that stay 100 ms in the field, read READ_RATE times a second in
all. The departure timeout (300 ms) is longer than a tag's stay, so by the
reads' own time every tag read gets exactly one arrival and one departure:
`bad_tags` counts those that did not. Prints one JSON line: offered and
committed events/s, tags, bad tags, peak RSS (sampled every 200 ms) with
its anonymous/file/shared parts at the peak, how long SIGTERM took, and the
RSS timeline (MiB, every second).

--mqtt        also start a mosquitto on a free loopback port and publish to
              it (the publisher's live lane and backlog under load)
--store K=V   a `[store]` setting, e.g. commit_interval_ms=100 (repeatable)
--taskset C   run the gateway pinned to these CPUs (e.g. 0): a slower
              gateway, so the simulators can offer many times what it commits
--env N=V     an environment variable for the gateway (repeatable), e.g.
              MIMALLOC_SHOW_STATS=1
--keep        keep the data directory and print it (the gateway's log is
              `log` in it)
--cpu-quota P run the gateway in its own cgroup (v1 cpu controller, root)
              limited to P % of one CPU: a slower gateway with a stable
              sustainable rate on a shared machine
--metrics     serve /metrics on a free loopback port and report the most
              tags dedup tracked (sampled with RSS)
"""
import collections, json, os, shutil, signal, socket, subprocess, sys, tempfile, time

from benchutil import free_port

args = [a for a in sys.argv[1:]]
opts = dict(mqtt=False, store=[], taskset=None, env={}, keep=False, metrics=False, quota=None)
pos = []
i = 0
while i < len(args):
    a = args[i]
    if a == "--mqtt":
        opts["mqtt"] = True
    elif a == "--keep":
        opts["keep"] = True
    elif a == "--metrics":
        opts["metrics"] = True
    elif a in ("--store", "--taskset", "--env", "--cpu-quota"):
        i += 1
        if a == "--cpu-quota":
            opts["quota"] = int(args[i])
        elif a == "--store":
            opts["store"].append(args[i])
        elif a == "--taskset":
            opts["taskset"] = args[i]
        else:
            k, v = args[i].split("=", 1)
            opts["env"][k] = v
    else:
        pos.append(a)
    i += 1
BIN = pos[0]
readers, pallet, rate = int(pos[1]), int(pos[2]), int(pos[3])
dur = float(pos[4])
interval = int(pos[5]) if len(pos) > 5 else 1
d = tempfile.mkdtemp(prefix="tracegate-overload-")
cfg = f'[gateway]\nid="gw-load"\nsite="s"\ndata_dir="{d}/data"\n\n'
for i in range(readers):
    cfg += (f'[[readers]]\nname="sim{i}"\nkind="sim"\nantennas=[1,2]\nread_rate={rate}\n'
            f'arrival_interval_ms={interval}\npallet_size={pallet}\ndwell_ms=100\nseed={i+1}\n\n'
            f'[[read_points]]\nname="door{i}"\nreader="sim{i}"\n\n')


mport = free_port() if opts["metrics"] else None
cfg += '[dedup]\nmin_reads=1\ndeparture_timeout_ms=300\n\n[ops]\n'
cfg += f'metrics_addr="127.0.0.1:{mport}"\n' if mport else 'metrics_addr="off"\n'
if opts["store"]:
    cfg += "\n[store]\n" + "".join(f"{kv.split('=', 1)[0]}={kv.split('=', 1)[1]}\n"
                                   for kv in opts["store"])
broker = None
if opts["mqtt"]:
    port = free_port()
    with open(f"{d}/mosquitto.conf", "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                + ("user root\n" if os.getuid() == 0 else ""))
    broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", f"{d}/mosquitto.conf"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.1)
    cfg += f'\n[mqtt]\nurl="mqtt://127.0.0.1:{port}"\n'
with open(f"{d}/t.toml", "w") as f:
    f.write(cfg)
log = open(f"{d}/log", "w")
cmd = [BIN, "run", "--config", f"{d}/t.toml"]
if opts["taskset"]:
    cmd = ["taskset", "-c", opts["taskset"]] + cmd
cg = None
if opts["quota"]:
    cg = f"/sys/fs/cgroup/cpu/tracegate-load-{os.getpid()}"
    os.mkdir(cg)
    with open(f"{cg}/cpu.cfs_period_us", "w") as f:
        f.write("100000")
    with open(f"{cg}/cpu.cfs_quota_us", "w") as f:
        f.write(str(opts["quota"] * 1000))


def enter_cgroup():
    # In the child before exec: the gateway and all its threads run in it.
    with open(f"{cg}/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))


p = subprocess.Popen(cmd, stdout=log, stderr=log, preexec_fn=enter_cgroup if cg else None,
                     env=dict(os.environ, RUST_LOG="info", **opts["env"]))


def status():
    out = {}
    with open(f"/proc/{p.pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
                out[k] = int(v.split()[0])
    return out


def tracked():
    import urllib.request
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=1).read()
    except OSError:
        return 0
    for line in body.decode().splitlines():
        if line.startswith("tracegate_dedup_tracked_tags"):
            return int(float(line.split()[-1]))
    return 0


t0, peak, at_peak, timeline, most_tracked = time.time(), 0, {}, [], 0
while time.time() - t0 < dur:
    time.sleep(0.2)
    try:
        st = status()
    except (FileNotFoundError, ProcessLookupError):
        break
    kb = st.get("VmRSS", 0)
    if kb > peak:
        peak, at_peak = kb, st
    timeline.append(kb // 1024)
    if mport:
        most_tracked = max(most_tracked, tracked())
p.send_signal(signal.SIGTERM)
ts = time.time()
p.wait()
took = time.time() - ts
if cg:
    os.rmdir(cg)
if broker:
    broker.kill()
    broker.wait()
out = subprocess.run([BIN, "events", "--json", "--config", f"{d}/t.toml"],
                     capture_output=True, text=True).stdout
per = collections.defaultdict(lambda: [0, 0])
kinds = collections.Counter()
published = None
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
    peak_rss_mib=round(peak / 1024, 1),
    at_peak_mib={k: round(v / 1024, 1) for k, v in at_peak.items() if k != "Threads"},
    threads=at_peak.get("Threads"), most_tracked_tags=most_tracked if mport else None,
    sigterm_s=round(took, 2), rc=p.returncode, cpu_quota_pct=opts["quota"],
    load=os.getloadavg()[0], dir=d if opts["keep"] else None,
    rss_timeline_mib=timeline[::5])))
if not opts["keep"]:
    shutil.rmtree(d, ignore_errors=True)
