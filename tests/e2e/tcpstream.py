"""A TCP stream whose receiver says when data arrives, run inside lab namespaces.

    python3 tcpstream.py recv PORT          -> "listening", then "<epoch> <bytes>" lines
                                               (at most one per 50 ms, only when data
                                               came), then "done <bytes> <sha256>"
    python3 tcpstream.py send HOST PORT S   -> sends seeded bytes for S seconds, then
                                               prints "<bytes> <sha256>"

The receiver's lines show where the stream stalled (the gap between two of
them) and the digests that it arrived byte-exact.
"""

from __future__ import annotations

import hashlib
import random
import socket
import sys
import time

CHUNK = 1 << 16
REPORT = 0.05


def recv(port: int) -> None:
    srv = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    print("listening", flush=True)
    conn, _ = srv.accept()
    digest = hashlib.sha256()
    total = 0
    last = 0.0
    while data := conn.recv(CHUNK):
        digest.update(data)
        total += len(data)
        now = time.time()
        if now - last >= REPORT:
            print(f"{now:.3f} {total}", flush=True)
            last = now
    conn.sendall(b"k")
    print("done", total, digest.hexdigest(), flush=True)


def send(host: str, port: int, seconds: float) -> None:
    rng = random.Random(port)
    digest = hashlib.sha256()
    conn = socket.create_connection((host, port), timeout=10)
    conn.settimeout(None)
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        block = rng.randbytes(CHUNK)
        conn.sendall(block)
        digest.update(block)
        sent += len(block)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    print(sent, digest.hexdigest(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(int(sys.argv[2]))
    else:
        send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
