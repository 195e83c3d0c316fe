"""A timeline of one run for scripts/bench: every half second, the CPU each
process used (% of a core, from /proc), the machine's idle share and the
orders each stage got through (/s, from its `done` counter), until each
stage has handled ORDERS more messages than at the start; then each
process's CPU per order and when each stage was through.

    python3 scripts/timeline.py RUN_DIR ORDERS STAGE=PORT... -- PROCESS...

RUN_DIR holds each process's pid file (NAME.pid).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from prom import Stages  # noqa: E402

run_dir, orders = sys.argv[1], int(sys.argv[2])
split = sys.argv.index("--")
stages = {s: int(p) for s, p in (a.split("=", 1) for a in sys.argv[3:split])}
scraper = Stages(stages)
processes = sys.argv[split + 1:]
pids = {p: open(f"{run_dir}/{p}.pid").read().strip() for p in processes}
ticks = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks


def machine():
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:8]]
    return fields[3], sum(fields)


def sample():
    return time.time(), {p: cpu(pid) for p, pid in pids.items()}, {s: scraper.done(s) for s in stages}, machine()


first = prev = sample()
through = {}
print("    s " + " ".join(f"{p[:9]:>9}" for p in processes) + "   idle % | " + " ".join(f"{s[:9]:>9}" for s in stages))
while True:
    time.sleep(0.5)
    now = sample()
    wall = now[0] - prev[0]
    idle = 100 * (now[3][0] - prev[3][0]) / max(1, now[3][1] - prev[3][1])
    print(f"{now[0] - first[0]:5.1f} "
          + " ".join(f"{100 * (now[1][p] - prev[1][p]) / wall:9.0f}" for p in processes)
          + f"   {idle:6.0f} | "
          + " ".join(f"{(now[2][s] - prev[2][s]) / wall:9.0f}" for s in stages), flush=True)
    for s in stages:
        if s not in through and now[2][s] - first[2][s] >= orders:
            through[s] = now[0] - first[0]
    prev = now
    if len(through) == len(stages) or now[0] - first[0] > 900:
        break
print("CPU per order, µs: " + " ".join(f"{p} {1e6 * (now[1][p] - first[1][p]) / orders:.0f}" for p in processes))
print("through, s from the start: " + " ".join(f"{s} {t:.1f}" for s, t in through.items()))
