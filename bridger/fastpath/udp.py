"""UDP GSO (UDP_SEGMENT) sends and GRO (UDP_GRO) receives for the tunnel socket.

Send: consecutive datagrams to one address with one size (the last may be
shorter) leave in a single ``sendmsg`` whose UDP_SEGMENT control message
tells the kernel where to cut; every datagram still fits the path MTU on its
own, so no outer packet relies on IP fragmentation.
Receive: with UDP_GRO the kernel may hand several datagrams of one flow in one
buffer plus their size in a control message; :func:`split_gro` cuts them.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Sequence
from typing import TypeVar

SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
#: The kernel's UDP_MAX_SEGMENTS.
MAX_GSO_SEGMENTS = 64
#: Bytes one GSO send may carry (IP total length minus headers, with margin).
MAX_GSO_BYTES = 65000
A = TypeVar("A")
_U16 = struct.Struct("=H")
_INT = struct.Struct("=i")
#: recvmsg ancillary space for one UDP_GRO int.
GRO_CMSG_SPACE = socket.CMSG_SPACE(_INT.size)


def enable_gro(sock: socket.socket) -> bool:
    """Ask for coalesced receives; False where the kernel lacks UDP_GRO."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel knows UDP_SEGMENT (a socket-level default of 0 is harmless)."""
    try:
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
    except OSError:
        return False
    return True


def gso_cmsg(size: int) -> list[tuple[int, int, bytes]]:
    return [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))]


def gso_batches(
    datagrams: Sequence[tuple[bytes, A]],
) -> Iterator[tuple[list[bytes], A, int]]:
    """Group (datagram, address) pairs into (datagrams, address, segment size) sends.

    A group is consecutive datagrams to one address, all of one size except a
    shorter last one, at most MAX_GSO_SEGMENTS and MAX_GSO_BYTES.
    """
    group: list[bytes] = []
    addr = datagrams[0][1] if datagrams else None
    size = 0
    total = 0
    for data, to in datagrams:
        n = len(data)
        if group and (
            to != addr or n > size or len(group) >= MAX_GSO_SEGMENTS
            or total + n > MAX_GSO_BYTES or len(group[-1]) != size
        ):
            yield group, addr, size  # type: ignore[misc]
            group = []
        if not group:
            addr, size, total = to, n, 0
        group.append(data)
        total += n
    if group:
        yield group, addr, size  # type: ignore[misc]


def split_gro(data: bytes, ancdata: list[tuple[int, int, bytes]]) -> list[bytes]:
    """The datagrams in one receive: cut at the UDP_GRO size if the kernel joined several."""
    for level, kind, payload in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(payload) >= _INT.size:
            (size,) = _INT.unpack_from(payload, 0)
            if 0 < size < len(data):
                return [data[i:i + size] for i in range(0, len(data), size)]
    return [data]
