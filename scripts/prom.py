"""The samples of a saved Prometheus /metrics text, for the bench's
scripts (hist-quantiles.py, kafka-windows.py)."""
import re

LINE = re.compile(r'^(\w+)\{([^}]*)\} ([0-9.eE+-]+|\+Inf)$')


def samples(path):
    """Each labelled sample of the file: (name, {label: value}, value)."""
    for line in open(path):
        m = LINE.match(line.strip())
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            yield m.group(1), labels, float(m.group(3))
