"""The samples of a saved Prometheus /metrics text, for the bench's
scripts (hist-quantiles.py, kafka-windows.py), and the stages' live
counters (settle.py, timeline.py)."""
import http.client
import re

LINE = re.compile(r'^(\w+)\{([^}]*)\} ([0-9.eE+-]+|\+Inf)$')


def samples(path):
    """Each labelled sample of the file: (name, {label: value}, value)."""
    for line in open(path):
        m = LINE.match(line.strip())
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            yield m.group(1), labels, float(m.group(3))


DONE = 'orderflow_%s_messages_total{outcome="done"} '


class Stages:
    """Each stage's `done` counter (the messages it has handled), read from
    its /metrics over one kept-alive connection per stage: the bench polls
    while the stages run, on the same two cores."""

    def __init__(self, ports):
        self.ports = ports
        self.conns = {}

    def done(self, stage):
        for attempt in (0, 1):
            conn = self.conns.get(stage)
            if conn is None:
                conn = self.conns[stage] = http.client.HTTPConnection("127.0.0.1", self.ports[stage], timeout=2)
            try:
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
                break
            except (OSError, http.client.HTTPException):
                # A connection the stage closed: one new one, then give up.
                conn.close()
                del self.conns[stage]
                if attempt:
                    raise
        prefix = DONE % stage
        for line in text.splitlines():
            if line.startswith(prefix):
                return int(float(line[len(prefix):]))
        return 0
