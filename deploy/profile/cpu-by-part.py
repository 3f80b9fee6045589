#!/usr/bin/env python3
"""Where the cores go during a benchmark: CPU time per part of the pipeline, sampled
every INTERVAL seconds (default 1) until SIGINT/SIGTERM, one line per sample (percent
of one core) and the means at the end.

Run from the checkout whose services the benchmark uses (or set HERALD_ROOT):
    python3 deploy/profile/cpu-by-part.py 1 > cpu.txt & ... ; kill -INT $!
Parts: herald (`<root>/target/... serve` processes), bench (its herald-bench), rabbit (the
node of `make services`, `<root>/.local/rabbitmq`), cluster (the nodes of `make
cluster`), pg (the postmaster of `<root>/.local/postgres` and its backends), other
(everything else on the machine: other sessions' work), idle (from /proc/stat, percent
of one core, so at most 100 x cores)."""
import os, sys, time, signal

INTERVAL = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
HZ = os.sysconf("SC_CLK_TCK")
WT = os.environ.get("HERALD_ROOT", os.getcwd())

def pg_master():
    try:
        with open(f"{WT}/.local/postgres/data/postmaster.pid") as f:
            return int(f.readline())
    except Exception:
        return None

def procs():
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
            rest = s[s.rindex(")") + 2:].split()
            ppid = int(rest[1]); ticks = int(rest[11]) + int(rest[12]); start = rest[19]
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            out[int(p)] = (ppid, ticks, cmd, start)
        except Exception:
            pass
    return out

def group(pid, info, master):
    ppid, _, cmd, _ = info
    if WT + "/target" in cmd and "herald-bench" in cmd:
        return "bench"
    if WT + "/target" in cmd and " serve" in cmd:
        return "herald"
    if "beam.smp" in cmd or "erl_child" in cmd or "inet_gethost" in cmd:
        if WT + "/.local/rabbitmq" in cmd:
            return "rabbit"
        if WT + "/.local/cluster" in cmd:
            return "cluster"
        return "other"
    if master and (pid == master or ppid == master):
        return "pg"
    return "other"

def idle():
    with open("/proc/stat") as f:
        v = f.readline().split()[1:]
    v = list(map(int, v))
    return v[3] + v[4], sum(v)

totals = {}
n = 0
def summary(*_):
    keys = ["herald", "rabbit", "cluster", "pg", "bench", "other", "idle"]
    print("MEAN over %d samples: " % n + " ".join(
        f"{k} {totals.get(k, 0) / max(n, 1):.0f}" for k in keys), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, summary)
signal.signal(signal.SIGINT, summary)

master = pg_master()
prev = procs(); pi, pt = idle(); t0 = time.time()
while True:
    time.sleep(INTERVAL)
    cur = procs(); ci, ct = idle(); t1 = time.time()
    groups = {}
    for pid, info in cur.items():
        before = prev.get(pid)
        # The same process (pid and start time): PostgreSQL's backends retitle themselves.
        same = before is not None and before[3] == info[3]
        d = info[1] - before[1] if same else info[1]
        if d <= 0:
            continue
        g = group(pid, info, master)
        groups[g] = groups.get(g, 0) + d
    dt = t1 - t0
    line = {g: 100.0 * v / HZ / dt for g, v in groups.items()}
    line["idle"] = 100.0 * os.cpu_count() * (ci - pi) / max(ct - pt, 1)
    n += 1
    for k, v in line.items():
        totals[k] = totals.get(k, 0) + v
    print(time.strftime("%H:%M:%S") + " " + " ".join(f"{k} {v:.0f}" for k, v in sorted(line.items())), flush=True)
    prev, pi, pt, t0 = cur, ci, ct, t1
