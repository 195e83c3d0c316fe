#!/usr/bin/env python3
"""librdkafka's latency windows over a phase, from scrapes of /metrics.

    kafka-windows.py PREFIX SCRAPE...

Each SCRAPE is a saved /metrics text of one producer whose metrics start
with PREFIX (e.g. orderflow_producer). librdkafka reports every
statistics interval, and each report's windows cover that interval only
(crates/platform/src/kafka/stats.rs), so the scrapes are a series of
intervals; a report seen twice counts once. Prints, for the time in the
client's queue, in the request queue and the broker's round trip, the
median and the largest of the intervals' p50 and p99, in milliseconds.
"""
import statistics
import sys

from prom import samples

PARTS = [("queue", "kafka_producer_queue_latency_seconds"),
         ("request queue", "kafka_producer_request_queue_latency_seconds"),
         ("broker rtt", "kafka_producer_rtt_seconds")]


def windows(path, prefix):
    """{(part, quantile): milliseconds} of one scrape. The intake talks to
    one broker; were there more, the first broker's figures are kept."""
    out = {}
    for name, labels, value in samples(path):
        for part, metric in PARTS:
            if name == f"{prefix}_{metric}":
                out.setdefault((part, labels.get("quantile")), value * 1000)
    return out


def main():
    prefix, scrapes = sys.argv[1], sys.argv[2:]
    series, last = [], None
    for path in scrapes:
        w = windows(path, prefix)
        if w and w != last:
            series.append(w)
        last = w
    if not series:
        print("no librdkafka statistics in the scrapes")
        return
    cells = []
    for part, _ in PARTS:
        for q, name in (("0.5", "p50"), ("0.99", "p99")):
            vals = [w[(part, q)] for w in series if (part, q) in w]
            if vals:
                cells.append(f"{part} {name} {statistics.median(vals):.1f} (max {max(vals):.1f})")
    print(f"librdkafka's {len(series)} windows, median (largest) in ms: " + "; ".join(cells))


main()
