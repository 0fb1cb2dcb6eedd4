"""Microseconds per 64 KB TCP superframe: segmentation and checksum, Python vs C.

    python3 benchmarks/bench_segment.py [rounds]

Times bridger.fastpath.segment.segment_tcp against the native lane's
segment_tcp (binding included: it builds bytes objects), and
bridger.protocol.checksum.ones_sum against the native ones_sum, on one IPv4
TCP superframe of 65000 bytes cut for a 1514-byte frame.  Prints figures,
asserts nothing (moved here from tests/native/test_segment.py, where a speed
could not fail).
"""

from __future__ import annotations

import os
import struct
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridger.fastpath import segment as seg
from bridger.fastpath.vnet import VNET_HDR, GsoType, VnetFlag, decode_vnet_hdr_untrusted
from bridger.native import lane, unavailable
from bridger.protocol import checksum

MSS = 1448
#: Ethernet (14) + IPv4 (20) + TCP with the timestamp option (32).
HEADERS = 66


def superframe(size: int) -> bytes:
    """An IPv4 TCP superframe of ``size`` bytes as a sender's kernel hands it to tap."""
    payload = os.urandom(size - HEADERS)
    options = b"\x01\x01\x08\x0a" + bytes(8)
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, 1, 77, 8 << 4, 0x10, 502, 0, 0)
    tcp += options + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, (20 + len(tcp)) & 0xFFFF, 1, 0x4000, 64, 6, 0,
                     bytes([192, 168, 1, 11]), bytes([192, 168, 1, 21]))
    eth = bytes.fromhex("02000000000b02000000000a0800")
    return eth + ip + tcp


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    frame = superframe(65000)
    hdr = VNET_HDR.pack(int(VnetFlag.NEEDS_CSUM), int(GsoType.TCPV4), 34 + 32, MSS, 34, 16)
    parsed = decode_vnet_hdr_untrusted(hdr)
    figures = [
        ("segment_tcp python", lambda: seg.segment_tcp(frame, parsed, 1514)),
        ("ones_sum python", lambda: checksum.ones_sum(frame)),
    ]
    if lane is not None:
        native = lane
        figures += [
            ("segment_tcp native", lambda: native.segment_tcp(frame, hdr, 1514)),
            ("ones_sum native", lambda: native.ones_sum(frame)),
        ]
    else:
        print(f"# native lane not built: {unavailable}")
    for name, call in figures:
        per_call = timeit.timeit(call, number=rounds) / rounds
        print(f"{name} {per_call * 1e6:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
