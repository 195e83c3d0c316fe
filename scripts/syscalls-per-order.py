#!/usr/bin/env python3
"""System calls per order from `perf trace -s` output, by thread.

    scripts/syscalls-per-order.py TRACE ORDERS

Threads of the same name (tokio workers, librdkafka's broker threads) are
summed. Prints each thread's calls per order, its busiest system calls,
and the process's total per system call.
"""
import re
import sys
from collections import defaultdict

path, orders = sys.argv[1], int(sys.argv[2])
by_thread = defaultdict(lambda: defaultdict(int))
thread = None
for line in open(path, encoding="utf-8", errors="replace"):
    head = re.match(r"^\s*(.+?) \((\d+)\), \d+ events", line)
    if head:
        thread = re.sub(r"\d+$", "#", head.group(1).strip())
        continue
    row = re.match(r"^\s+([a-z_0-9]+)\s+(\d+)\s+\d+\s+[\d.]+", line)
    if row and thread is not None:
        by_thread[thread][row.group(1)] += int(row.group(2))

if not by_thread or orders <= 0:
    sys.exit(f"no system calls read from {path}")
totals = defaultdict(int)
print(f"{'thread':<22} {'per order':>9}  busiest")
for name, calls in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
    for call, n in calls.items():
        totals[call] += n
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:4]
    print(f"{name:<22} {sum(calls.values()) / orders:9.3f}  "
          + ", ".join(f"{c} {n / orders:.3f}" for c, n in top))
print(f"{'all threads':<22} {sum(totals.values()) / orders:9.3f}  "
      + ", ".join(f"{c} {n / orders:.3f}" for c, n in sorted(totals.items(), key=lambda kv: -kv[1])[:8]))
