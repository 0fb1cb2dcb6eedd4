"""Echo requests of every size with "don't fragment", run inside a lab namespace.

    python3 dfsweep.py HOST MAX_PAYLOAD   -> prints JSON {"missing": [...], "sent": N}

Sends one ICMP (IPv4) or ICMPv6 echo request for every payload size from 0
to MAX_PAYLOAD (1472 fills a 1500-byte IPv4 packet, 1452 an IPv6 one) with
fragmentation forbidden (IP_PMTUDISC_DO / IPV6_DONTFRAG), paced, and waits
for the replies; sizes without one are asked twice more before they count
as missing.  Raw sockets: run as root.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import sys
import time

IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = 2
IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
HEADER = struct.Struct("!BBHHH")
PACE = 0.0005
WAIT = 2.0


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def open_socket(family: int) -> socket.socket:
    if family == 4:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    else:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return sock


def request(family: int, ident: int, seq: int, size: int) -> bytes:
    payload = bytes((seq + i) & 0xFF for i in range(size))
    head = HEADER.pack(ECHO_REQUEST[family], 0, 0, ident, seq)
    if family == 6:
        return head + payload  # the kernel fills in the ICMPv6 checksum
    csum = checksum(head + payload)
    return HEADER.pack(ECHO_REQUEST[family], 0, csum, ident, seq) + payload


def replies(sock: socket.socket, family: int, ident: int, until: float) -> set[int]:
    """Sequence numbers (= payload sizes) of the echo replies to us until ``until``."""
    got: set[int] = set()
    while (left := until - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        data = sock.recv(65535)
        if family == 4:
            data = data[(data[0] & 0x0F) * 4:]
        if len(data) < HEADER.size:
            continue
        kind, _, _, rid, seq = HEADER.unpack_from(data)
        if kind == ECHO_REPLY[family] and rid == ident and len(data) - HEADER.size == seq:
            got.add(seq)
    return got


def sweep(host: str, max_payload: int) -> dict[str, object]:
    family = 6 if ":" in host else 4
    sock = open_socket(family)
    ident = os.getpid() & 0xFFFF
    missing = list(range(max_payload + 1))
    sent = 0
    for _ in range(3):
        got: set[int] = set()
        for size in missing:
            # EMSGSIZE: our own interface refused it (it will be missing)
            with contextlib.suppress(OSError):
                sock.sendto(request(family, ident, size, size), (host, 0))
            sent += 1
            time.sleep(PACE)
            got |= replies(sock, family, ident, time.monotonic())
        got |= replies(sock, family, ident, time.monotonic() + WAIT)
        missing = [size for size in missing if size not in got]
        if not missing:
            break
    return {"missing": missing, "sent": sent}


if __name__ == "__main__":
    print(json.dumps(sweep(sys.argv[1], int(sys.argv[2]))), flush=True)
