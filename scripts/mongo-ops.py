"""What the database was asked during a phase of scripts/bench: its
serverStatus counters (commands by name, requests, bytes, transactions)
before and after, per order.

    python3 scripts/mongo-ops.py URL snapshot FILE
    python3 scripts/mongo-ops.py URL diff FILE ORDERS

`snapshot` stores the counters in FILE; `diff` prints each that moved
since, with its count per order (ORDERS 0: totals only). A server without
these counters prints nothing.
"""
import json
import sys

import pymongo


def counters(url):
    status = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000).admin.command("serverStatus")
    out = {}
    for name, value in status.get("metrics", {}).get("commands", {}).items():
        total = value.get("total") if isinstance(value, dict) else value
        if isinstance(total, int):
            out[f"command {name}"] = total
    network = status.get("network", {})
    for key in ("numRequests", "bytesIn", "bytesOut"):
        if isinstance(network.get(key), int):
            out[f"network {key}"] = network[key]
    for key in ("totalStarted", "totalCommitted", "totalAborted"):
        value = status.get("transactions", {}).get(key)
        if isinstance(value, int):
            out[f"transactions {key}"] = value
    return out


url, action, path = sys.argv[1], sys.argv[2], sys.argv[3]
if action == "snapshot":
    with open(path, "w") as f:
        json.dump(counters(url), f)
elif action == "diff":
    orders = int(sys.argv[4])
    with open(path) as f:
        before = json.load(f)
    after = counters(url)
    # What the snapshot and the diff asked for themselves.
    own = {"command serverStatus", "command hello", "command isMaster", "command endSessions"}
    for key in sorted(after):
        moved = after[key] - before.get(key, 0)
        if moved and key not in own:
            per = f"{moved / orders:10.2f}" if orders else f"{'-':>10}"
            print(f"{key:34} {moved:12} {per}")
else:
    sys.exit(f"unknown action {action} (snapshot or diff)")
