"""The SMTP server's own ceiling, for scripts/bench: COUNT mails from
CONNECTIONS connections at once, each mail preceded by a NOOP as lettre's
connection pool does (notify's client), through Python's smtplib.

    python3 scripts/smtp-ceiling.py HOST PORT [COUNT] [CONNECTIONS]

Prints "rate N mails/s". The client shares the cores with the server, so
the figure is a lower bound of what the server can take.
"""
import smtplib
import sys
import threading
import time

host, port = sys.argv[1], int(sys.argv[2])
count = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
connections = int(sys.argv[4]) if len(sys.argv) > 4 else 16
failures = []


def send(worker: int, n: int) -> None:
    try:
        with smtplib.SMTP(host, port) as s:
            for i in range(n):
                s.noop()
                s.sendmail(
                    "orderflow@shop.test",
                    [f"c-{worker}@customers.test"],
                    f"Subject: ceiling {worker}/{i}\r\n\r\nThank you! Order {i} is confirmed.\r\n",
                )
    except Exception as e:  # reported below; the figure would be wrong
        failures.append(repr(e))


per = count // connections
started = time.monotonic()
threads = [threading.Thread(target=send, args=(w, per)) for w in range(connections)]
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.monotonic() - started
if failures:
    sys.exit(f"the SMTP ceiling failed: {failures[0]}")
print(f"rate {int(per * connections / elapsed)} mails/s ({per * connections} mails, {elapsed:.1f} s)")
