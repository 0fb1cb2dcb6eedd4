"""Shared test data: real Ethernet frames and the device/peer descriptions a daemon fills."""

from __future__ import annotations

import io
import struct
import threading

from bridger.status.counters import DeviceInfo, PeerInfo

LOCAL = bytes.fromhex("020000000001")
REMOTE = bytes.fromhex("020000000002")
BROADCAST = b"\xff" * 6
KEY_B = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
KEY_P = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(dst: bytes, src: bytes, size: int = 100) -> bytes:
    """An IPv4 frame of ``size`` bytes in all."""
    return dst + src + struct.pack("!H", 0x0800) + b"\x45" + b"\x00" * (size - 15)


def arp_broadcast(src: bytes = REMOTE) -> bytes:
    return BROADCAST + src + b"\x08\x06" + b"\x00" * 28


DEVICE = DeviceInfo(mode="mesh", data_path="python",
                    interface={"lan": "eth1", "bridge": "br0", "listen": "[::]:55555"},
                    drops={"malformed": 2, "handshake_mac1": 1})

BERLIN = PeerInfo(
    name="berlin", public_key=KEY_B, host="berlin.example", tap="berlin", state="up",
    endpoint="203.0.113.5:55555", session_age=3725.0, last_handshake_age=70.0, handshakes=3,
    rekeys=2, rtt_ms=14.2, path_mtu=1420, drops={"auth_failed": 12, "replay": 3},
    fragments={"sent": 4, "received": 2, "reassembled": 1},
)
PARIS = PeerInfo(name="paris", public_key=KEY_P, host=None, tap="paris", state="down")


def peer(name: str, state: str = "up", **fields: object) -> PeerInfo:
    """A peer with a made-up key and endpoint."""
    values: dict[str, object] = {
        "public_key": (name * 44)[:43] + "=", "tap": name, "state": state,
        "endpoint": None if state == "down" else f"198.51.100.{len(name)}:51820",
        "rtt_ms": None if state == "down" else 1.5,
    }
    values.update(fields)
    return PeerInfo(name=name, **values)  # type: ignore[arg-type]


class StuckTerminal(io.TextIOBase):
    """A stream whose writes block until released, like a terminal nobody drains."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait()
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        return "".join(self.parts)
