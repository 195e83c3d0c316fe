"""The SMTP server's own ceiling, for scripts/bench: COUNT mails from
CONNECTIONS connections at once, sent the way notify's client (the
vendored lettre, ADR 0012) sends them on a pooled connection: no NOOP
before a mail, the envelope (MAIL, RCPT, DATA) in one write when the
server offers PIPELINING and one command at a time when it does not, then
the message and its terminator in one write.

    python3 scripts/smtp-ceiling.py HOST PORT [COUNT] [CONNECTIONS]

Prints "rate N mails/s". The client shares the cores with the server, so
the figure is a lower bound of what the server can take.
"""
import socket
import sys
import threading
import time

host, port = sys.argv[1], int(sys.argv[2])
count = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
connections = int(sys.argv[4]) if len(sys.argv) > 4 else 16
failures = []


def reply(reader) -> tuple[int, list[str]]:
    """One reply, all its lines; fails on anything but 2xx and 3xx."""
    lines = []
    while True:
        line = reader.readline().decode()
        if len(line) < 4:
            raise RuntimeError(f"connection closed after {lines}")
        lines.append(line[4:].strip())
        if line[3] == " ":
            code = int(line[:3])
            if code >= 400:
                raise RuntimeError(f"{code} {lines}")
            return code, lines


def send(worker: int, n: int) -> None:
    try:
        with socket.create_connection((host, port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = s.makefile("rb")
            reply(reader)
            s.sendall(b"EHLO ceiling.test\r\n")
            _, features = reply(reader)
            pipelining = any(f.upper() == "PIPELINING" for f in features)
            envelope = [
                b"MAIL FROM:<orderflow@shop.test>\r\n",
                f"RCPT TO:<c-{worker}@customers.test>\r\n".encode(),
                b"DATA\r\n",
            ]
            for i in range(n):
                if pipelining:
                    s.sendall(b"".join(envelope))
                    for _ in envelope:
                        reply(reader)
                else:
                    for command in envelope:
                        s.sendall(command)
                        reply(reader)
                s.sendall(
                    f"Subject: ceiling {worker}/{i}\r\n\r\n"
                    f"Thank you! Order {i} is confirmed.\r\n.\r\n".encode()
                )
                reply(reader)
            s.sendall(b"QUIT\r\n")
            reply(reader)
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
