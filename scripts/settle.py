"""Waits, for scripts/bench, until each stage has handled ORDERS more
messages than BASE (its count at the phase's start), and prints when:

    STAGE first TIME COUNT   the first poll that found it past BASE
    STAGE done TIME          the first poll that found it through

TIME in seconds since the epoch. Polls every 50 ms over one kept-alive
connection per stage. (A curl and an awk per stage every 0.1 s, as the
bench did before, took about a fifth of a core from the stages it timed.)
A stage that does not answer (not started yet, or restarting) is asked
again at the next round. Exits 1, naming the stages left, after TIMEOUT
seconds.

    python3 scripts/settle.py ORDERS TIMEOUT STAGE=PORT:BASE...
"""
import http.client
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from prom import Stages  # noqa: E402

orders, timeout = int(sys.argv[1]), float(sys.argv[2])
ports, base = {}, {}
for arg in sys.argv[3:]:
    stage, rest = arg.split("=", 1)
    port, b = rest.split(":", 1)
    ports[stage], base[stage] = int(port), int(b)

stages = Stages(ports)
left, moved = set(ports), set()
deadline = time.time() + timeout
while left:
    for stage in sorted(left):
        try:
            n = stages.done(stage)
        except (OSError, http.client.HTTPException):
            continue  # not up (yet, or again): no count this round
        now = time.time()
        if stage not in moved and n > base[stage]:
            moved.add(stage)
            print(f"{stage} first {now:.3f} {n}", flush=True)
        if n >= base[stage] + orders:
            left.discard(stage)
            print(f"{stage} done {now:.3f}", flush=True)
    if not left:
        break
    if time.time() > deadline:
        sys.exit(f"not through with {orders} orders in {timeout:.0f} s: {' '.join(sorted(left))}")
    time.sleep(0.05)
