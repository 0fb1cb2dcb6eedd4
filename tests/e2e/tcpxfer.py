"""Byte-exact TCP transfer over IPv4 or IPv6, run inside lab namespaces.

    python3 tcpxfer.py recv PORT [progress]   -> prints "<bytes> <sha256>" after EOF;
                                                with "progress", first "<epoch> <bytes>"
                                                lines (at most one per 50 ms, only when
                                                data came) and then "done <bytes> <sha256>"
    python3 tcpxfer.py send HOST PORT N       -> sends N seeded bytes, prints the same
    python3 tcpxfer.py send HOST PORT Ns      -> sends seeded bytes for N seconds
    python3 tcpxfer.py send HOST PORT stdin   -> sends seeded bytes until a line (or EOF)
                                                comes on stdin

The progress lines show where a stream stalled (the gap between two of them).
"""

from __future__ import annotations

import hashlib
import random
import select
import socket
import sys
import time

CHUNK = 1 << 16
REPORT = 0.05


def recv(port: int, progress: bool = False) -> None:
    srv = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    print("listening", flush=True)
    conn, _ = srv.accept()
    digest = hashlib.sha256()
    total = 0
    last = 0.0
    while data := conn.recv(CHUNK):
        digest.update(data)
        total += len(data)
        if progress and (now := time.time()) - last >= REPORT:
            print(f"{now:.3f} {total}", flush=True)
            last = now
    conn.sendall(b"k")
    print(*(["done"] if progress else []), total, digest.hexdigest(), flush=True)


def told_to_stop() -> bool:
    return bool(select.select([sys.stdin], [], [], 0)[0])


def send(host: str, port: int, amount: str) -> None:
    """``amount``: a byte count, seconds with an "s" after them, or "stdin": until
    a line (or EOF) comes on stdin."""
    until_told = amount == "stdin"
    seconds = float(amount[:-1]) if amount.endswith("s") else None
    nbytes = int(amount) if seconds is None and not until_told else 0
    rng = random.Random(nbytes or port)
    digest = hashlib.sha256()
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    conn.settimeout(None)
    sent = 0
    end = None if seconds is None else time.monotonic() + seconds
    endless = end is not None or until_told
    while (not told_to_stop() if until_told else
           sent < nbytes if end is None else time.monotonic() < end):
        block = rng.randbytes(CHUNK if endless else min(CHUNK, nbytes - sent))
        conn.sendall(block)
        digest.update(block)
        sent += len(block)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    print(sent, digest.hexdigest(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(int(sys.argv[2]), progress=sys.argv[3:] == ["progress"])
    else:
        send(sys.argv[2], int(sys.argv[3]), sys.argv[4])
