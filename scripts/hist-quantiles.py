#!/usr/bin/env python3
"""Quantiles of a Prometheus histogram between two scrapes of /metrics.

    hist-quantiles.py BEFORE AFTER METRIC [LABEL=VALUE ...]

BEFORE and AFTER are saved /metrics texts; METRIC the histogram's name
without `_bucket`. Prints the observations in between and their p50, p90
and p99, interpolated linearly within the bucket they fall in (the buckets
are what bounds the precision: a factor of 2 for orderflow's latencies).
"""
import sys

from prom import samples


def buckets(path, metric, wanted):
    out = {}
    for name, labels, value in samples(path):
        if name != metric + "_bucket":
            continue
        if any(labels.get(k) != v for k, v in wanted.items()):
            continue
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        out[le] = out.get(le, 0) + value
    return out


def main():
    before, after, metric, *filters = sys.argv[1:]
    wanted = dict(f.split("=", 1) for f in filters)
    b, a = buckets(before, metric, wanted), buckets(after, metric, wanted)
    les = sorted(a)
    cum = [a[le] - b.get(le, 0) for le in les]
    total = cum[-1] if cum else 0
    if total <= 0:
        print(f"{metric}: no observations")
        return
    figures = []
    for q in (0.5, 0.9, 0.99):
        rank = q * total
        lower_le, lower_n = 0.0, 0.0
        for le, n in zip(les, cum):
            if n >= rank:
                if le == float("inf"):
                    figures.append(f"p{round(q * 100)} > {lower_le * 1000:.1f} ms")
                else:
                    share = (rank - lower_n) / (n - lower_n) if n > lower_n else 1.0
                    v = lower_le + share * (le - lower_le)
                    figures.append(f"p{round(q * 100)} {v * 1000:.1f} ms")
                break
            lower_le, lower_n = le, n
    print(f"{metric}: {int(total)} observations, " + ", ".join(figures))


if __name__ == "__main__":
    main()
