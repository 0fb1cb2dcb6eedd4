"""A broadcast flood from a lab host: one frame sent as fast as AF_PACKET takes it.

    python3 flood.py IFNAME SECONDS HEXFRAME   -> prints "sent N dropped M"

The loop is bounded: it stops by itself after SECONDS.  A full transmit queue
(ENOBUFS) is counted and retried, as a real flooding host would.  Importable
too: :func:`udp_broadcast` builds the frame the guard-lab tests send.
"""

from __future__ import annotations

import socket
import struct
import sys
import time

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
#: Frames sent between two looks at the clock.
BATCH = 256


def _checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_broadcast(src_mac: str, src_ip: str, payload: bytes, port: int = 9) -> bytes:
    """An Ethernet broadcast carrying an IPv4 UDP datagram to 255.255.255.255:``port``."""
    udp = _UDP.pack(port, port, _UDP.size + len(payload), 0) + payload  # checksum 0: none
    fields = [0x45, 0, _IPV4.size + len(udp), 0, 0, 64, 17, 0,
              socket.inet_aton(src_ip), b"\xff" * 4]
    fields[7] = _checksum(_IPV4.pack(*fields))
    mac = bytes.fromhex(src_mac.replace(":", ""))
    return b"\xff" * 6 + mac + b"\x08\x00" + _IPV4.pack(*fields) + udp


def flood(ifname: str, seconds: float, frame: bytes) -> tuple[int, int]:
    """Send ``frame`` on ``ifname`` for ``seconds``; return (sent, refused by a full queue)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname, 0))
    sent = refused = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(BATCH):
            try:
                sock.send(frame)
            except OSError:  # ENOBUFS: the queue is full; a flooding host keeps trying
                refused += 1
            else:
                sent += 1
    return sent, refused


if __name__ == "__main__":
    sent, refused = flood(sys.argv[1], float(sys.argv[2]), bytes.fromhex(sys.argv[3]))
    print(f"sent {sent} dropped {refused}", flush=True)
