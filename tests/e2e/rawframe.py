"""Send or capture raw Ethernet frames in a lab namespace (AF_PACKET).

This kernel has no 802.1Q device support, so tagged frames are built by hand:

    python3 rawframe.py recv IF MARKER N        -> prints hex of N frames containing MARKER
    python3 rawframe.py send IF HEXFRAME...     -> sends each frame as given
"""

from __future__ import annotations

import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata


def with_vlan_tag(frame: bytes, ancdata: list[tuple[int, int, bytes]]) -> bytes:
    """Put back the outer VLAN tag the kernel moved into packet metadata."""
    for level, kind, data in ancdata:
        if level != SOL_PACKET or kind != PACKET_AUXDATA:
            continue
        status, _len, _snap, _mac, _net, tci, tpid = AUXDATA.unpack_from(data)
        if status & TP_STATUS_VLAN_VALID:
            if not status & TP_STATUS_VLAN_TPID_VALID:
                tpid = 0x8100
            return frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
    return frame


def recv(ifname: str, marker: bytes, count: int) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    sock.bind((ifname, 0))
    sock.settimeout(15)
    print("ready", flush=True)
    got = 0
    deadline = time.monotonic() + 15
    while got < count and time.monotonic() < deadline:
        frame, ancdata, _flags, info = sock.recvmsg(65535, socket.CMSG_SPACE(AUXDATA.size))
        if info[2] == socket.PACKET_OUTGOING or marker not in frame:
            continue
        frame = with_vlan_tag(frame, ancdata)
        print(frame.hex(), flush=True)
        got += 1


def send(ifname: str, frames: list[bytes]) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname, 0))
    for frame in frames:
        sock.send(frame)
        time.sleep(0.05)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(sys.argv[2], bytes.fromhex(sys.argv[3]), int(sys.argv[4]))
    else:
        send(sys.argv[2], [bytes.fromhex(h) for h in sys.argv[3:]])
