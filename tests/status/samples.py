"""Shared test data: real Ethernet frames and the device/peer descriptions a daemon fills."""

from __future__ import annotations

import dataclasses
import io
import random
import struct
import threading

from bridger.dataplane.accounting import Counters
from bridger.guard import Guard, GuardConfig, LoopDetector
from bridger.status.document import DeviceInfo, PeerInfo

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


def arp_request() -> bytes:
    # who-has 192.0.2.2 tell 192.0.2.1 (RFC 826 layout), broadcast
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, LOCAL, bytes([192, 0, 2, 1]),
                       b"\x00" * 6, bytes([192, 0, 2, 2]))
    return eth(BROADCAST, LOCAL, 0x0806, body + b"\x00" * 18)


def ipv4_udp(dst: bytes = REMOTE) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, bytes([192, 0, 2, 1]),
                     bytes([192, 0, 2, 2]))
    return eth(dst, LOCAL, 0x0800, ip + struct.pack("!HHHH", 1234, 53, 8, 0) + b"\x00" * 18)


def ipv6_ns() -> bytes:
    # neighbour solicitation to the solicited-node multicast group 33:33:ff:00:00:02
    ip6 = struct.pack("!IHBB16s16s", 0x60000000, 32, 58, 255, b"\xfe\x80" + b"\x00" * 13 + b"\x01",
                      b"\xff\x02" + b"\x00" * 9 + b"\x01\xff\x00\x00\x02")
    return eth(bytes.fromhex("3333ff000002"), LOCAL, 0x86DD, ip6 + b"\x87" + b"\x00" * 31)


def vlan(inner: bytes, vid: int = 5, tpid: int = 0x8100) -> bytes:
    return inner[:12] + struct.pack("!HH", tpid, vid) + inner[12:]


#: Real frames and the kinds accounting must count each as: (name, frame, kinds
#: expected to be 1; all others 0).
CASES = [
    ("arp broadcast", arp_request(), {"broadcast", "arp"}),
    ("ipv4 unicast", ipv4_udp(), {"unicast", "ipv4"}),
    ("ipv6 multicast", ipv6_ns(), {"multicast", "ipv6"}),
    ("ipv4 multicast", ipv4_udp(bytes.fromhex("01005e000001")), {"multicast", "ipv4"}),
    ("802.1Q ipv4", vlan(ipv4_udp()), {"unicast", "vlan", "ipv4"}),
    ("802.1Q arp", vlan(arp_request()), {"broadcast", "vlan", "arp"}),
    ("QinQ ipv6", vlan(vlan(ipv6_ns(), 7), 100, 0x88A8), {"multicast", "vlan", "ipv6"}),
    ("LLC/802.3 length", eth(REMOTE, LOCAL, 46, b"\x42\x42\x03" + b"\x00" * 43),
     {"unicast", "other"}),
    ("truncated tag", BROADCAST + LOCAL + b"\x81\x00\x00", {"broadcast", "vlan", "other"}),
    ("runt", b"\x00" * 10, {"runt"}),
]

DEVICE = DeviceInfo(mode="mesh", data_path="python",
                    interface={"lan": "eth1", "bridge": "br0", "listen": "[::]:55555"},
                    drops={"malformed": 2, "handshake_mac1": 1})

BERLIN = PeerInfo(
    name="berlin", public_key=KEY_B, host="berlin.example", tap="berlin", state="up",
    endpoint="203.0.113.5:55555", session_age=3725.0, last_handshake_age=70.0, handshakes=3,
    rekeys=2, rtt_ms=14.2, path_mtu=1420, path_mtu_source="probe",
    drops={"auth_failed": 12, "replay": 3},
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


# -- real guards (bridger/guard), for the guard fields of the status document --------------------

SITE_ID = bytes.fromhex("a1a2a3a4a5a6a7a8")
#: A MAC that flaps: a LAN host whose frames also come back through a peer.
FLAPPER = bytes.fromhex("02aaaaaa0001")


class GuardedSite:
    """One daemon's guards as the shell builds them: a LoopDetector for the device,
    one Guard per peer fed with that peer's live MAC table; drops counted per peer
    exactly as the data path does (``counters.peer(name).drop(reason)``)."""

    def __init__(self, counters: Counters, names: tuple[str, ...] = ("berlin", "paris"),
                 config: GuardConfig | None = None) -> None:
        self.counters = counters
        self.detector = LoopDetector(site_id=SITE_ID, rng=random.Random(1))
        self.guards = {
            name: Guard(config or GuardConfig(), name, loop=self.detector,
                        known=counters.peer(name).remote_macs, flaps=self.detector.flaps)
            for name in names
        }

    def outbound(self, name: str, frame: bytes, now: float, count: int = 1) -> str | None:
        """A frame read from ``name``'s tap: counted as sent, or as a drop."""
        reason = self.guards[name].outbound(frame, now, count)
        if reason is None:
            self.counters.peer(name).lan_to_wan(frame, now, count)
        else:
            self.counters.peer(name).drop(reason, count)
        return reason

    def inbound(self, name: str, frame: bytes, now: float) -> str | None:
        """A frame received from ``name``: counted as written to its tap, or as a drop."""
        reason = self.guards[name].inbound(frame, now)
        if reason is None:
            self.counters.peer(name).wan_to_lan(frame, now)
        else:
            self.counters.peer(name).drop(reason)
        return reason

    def loop_via_lan(self, name: str, now: float) -> None:
        """A probe round; the probe sent to ``name`` comes back from our own LAN (read
        from ``name``'s tap): loop protection blocks ``name``."""
        for target, probe in self.detector.tick(now):
            if target == name:
                assert self.outbound(name, probe, now + 0.05) == "loop_probe"

    def flap(self, via: str, times: int, start: float, step: float = 0.05) -> None:
        """FLAPPER sends from the LAN and comes back through ``via``, ``times`` times."""
        for i in range(times):
            t = start + i * step
            self.guards[via].outbound(ipv4(REMOTE, FLAPPER, 60), t)
            self.guards[via].inbound(ipv4(LOCAL, FLAPPER, 60), t + step / 2)

    def device(self, now: float, base: DeviceInfo = DEVICE) -> DeviceInfo:
        return dataclasses.replace(base, guard=self.detector.snapshot(now))

    def peer(self, info: PeerInfo, now: float) -> PeerInfo:
        return dataclasses.replace(info, guard=self.guards[info.name].snapshot(now))
