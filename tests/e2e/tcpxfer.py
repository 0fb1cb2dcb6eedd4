"""Byte-exact TCP transfer over IPv4 or IPv6, run inside lab namespaces.

    python3 tcpxfer.py recv PORT              -> prints "<bytes> <sha256>" after EOF
    python3 tcpxfer.py send HOST PORT N       -> sends N seeded bytes, prints the same
"""

from __future__ import annotations

import hashlib
import random
import socket
import sys
import time

CHUNK = 1 << 16


def recv(port: int) -> None:
    srv = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    print("listening", flush=True)
    conn, _ = srv.accept()
    digest = hashlib.sha256()
    total = 0
    while data := conn.recv(CHUNK):
        digest.update(data)
        total += len(data)
    print(total, digest.hexdigest(), flush=True)


def send(host: str, port: int, nbytes: int) -> None:
    rng = random.Random(nbytes)
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
    while sent < nbytes:
        block = rng.randbytes(min(CHUNK, nbytes - sent))
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
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
