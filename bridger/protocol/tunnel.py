"""A device with exactly one peer, behind the API of the two-site tunnel.

``Tunnel`` is what the simulations, property tests, fuzzers and benchmarks
drive: one :class:`~bridger.protocol.device.Device` and its one
:class:`~bridger.protocol.peer.Peer`, with every call forwarded to the device's
single receive path or the peer's single send path. It holds no protocol logic
of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nacl.utils

from .constants import (
    DEFAULT_MAX_FRAME,
    DEFAULT_PERSISTENT_KEEPALIVE,
    IPV6_UDP_OVERHEAD,
    TRANSPORT_OVERHEAD,
)
from .device import Device, DeviceConfig
from .events import Address, DropReason, Output
from .peer import Peer
from .peerstate import PeerConfig, PeerStats, ip_overhead_for

TunnelStats = PeerStats

__all__ = [
    "Tunnel",
    "TunnelConfig",
    "TunnelStats",
    "frame_overhead",
    "ip_overhead_for",
    "max_unfragmented_frame",
]


def max_unfragmented_frame(wan_mtu: int, ip_overhead: int = IPV6_UDP_OVERHEAD) -> int:
    """Largest Ethernet frame sent in one datagram on a path of ``wan_mtu``."""
    return wan_mtu - ip_overhead - TRANSPORT_OVERHEAD - 1


def frame_overhead(ip_overhead: int = IPV6_UDP_OVERHEAD) -> int:
    """Bytes added around an unfragmented frame, outer IP/UDP headers included."""
    return ip_overhead + TRANSPORT_OVERHEAD + 1


@dataclass(frozen=True)
class TunnelConfig:
    private_key: bytes
    peer_public_key: bytes
    psk: bytes | None = None
    #: None: wait for the peer to connect (and learn its address).
    endpoint: Address | None = None
    #: Seconds; 0 disables.
    persistent_keepalive: float = DEFAULT_PERSISTENT_KEEPALIVE
    #: Upper bound on the path MTU (with probing off: the path MTU, None: 1500).
    wan_mtu: int | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    #: Outer IP+UDP header bytes; None: 28 for an IPv4 endpoint, 48 otherwise.
    ip_overhead: int | None = None
    #: Discover and track the path MTU with probes (pmtu.py).
    pmtu_probing: bool = True

    def __post_init__(self) -> None:
        self.device_config()
        self.peer_config()

    def device_config(self) -> DeviceConfig:
        return DeviceConfig(
            private_key=self.private_key, wan_mtu=self.wan_mtu, max_frame=self.max_frame,
            ip_overhead=self.ip_overhead, pmtu_probing=self.pmtu_probing,
        )

    def peer_config(self) -> PeerConfig:
        return PeerConfig(
            public_key=self.peer_public_key, psk=self.psk, endpoint=self.endpoint,
            persistent_keepalive=self.persistent_keepalive,
        )


class Tunnel:
    """Sans-I/O secure tunnel to one peer (see docs/protocol.md)."""

    def __init__(
        self,
        config: TunnelConfig,
        *,
        now: float,
        wall_clock: float,
        random_bytes: Callable[[int], bytes] = nacl.utils.random,
    ) -> None:
        self.config = config
        self.device = Device(
            config.device_config(), now=now, wall_clock=wall_clock, random_bytes=random_bytes
        )
        self.peer: Peer = self.device.add_peer(config.peer_config(), now)

    # The peer's state, read by tests and tools.
    def __getattr__(self, name: str) -> Any:
        if name in ("device", "peer"):
            raise AttributeError(name)
        for owner in (self.peer, self.device):
            try:
                return getattr(owner, name)
            except AttributeError:
                pass
        raise AttributeError(name)

    @property
    def public_key(self) -> bytes:
        """This side's static public key (the peer's is ``config.peer_public_key``)."""
        return self.device.public_key

    @property
    def drops(self) -> dict[DropReason, int]:
        """Device and peer drops together (a copy)."""
        return {r: self.device.drops[r] + self.peer.drops[r] for r in DropReason}

    def set_endpoint(self, addr: Address | None, now: float) -> Output:
        out = Output()
        self.peer.set_endpoint(addr, now, out)
        return out

    def send_frame(
        self,
        frame: bytes,
        now: float,
        out: Output | None = None,
        csum: tuple[int, int] | None = None,
    ) -> Output:
        return self.peer.send_frames([frame], now, Output() if out is None else out, csum)

    def send_frames(
        self,
        frames: list[bytes],
        now: float,
        out: Output,
        csum: tuple[int, int] | None = None,
    ) -> Output:
        return self.peer.send_frames(frames, now, out, csum)

    def receive_datagram(self, data: bytes, addr: Address, now: float, wall_clock: float) -> Output:
        return self.device.receive_datagrams((data,), addr, now, wall_clock)

    def receive_datagrams(
        self, datagrams: list[bytes], addr: Address, now: float, wall_clock: float,
        out: Output | None = None,
    ) -> Output:
        return self.device.receive_datagrams(datagrams, addr, now, wall_clock, out)

    def tick(self, now: float, wall_clock: float) -> Output:
        return self.device.tick(now, wall_clock)

    def next_deadline(self) -> float | None:
        return self.device.next_deadline()

    def stats(self, now: float | None = None) -> TunnelStats:
        """The peer's stats with the device's unattributed traffic and drops added."""
        s = self.peer.stats(now)
        d = self.device
        return dataclasses.replace(
            s,
            rx_datagrams=d.rx_datagrams,
            rx_bytes=d.rx_bytes,
            tx_datagrams=s.tx_datagrams + d.tx_datagrams,
            tx_bytes=s.tx_bytes + d.tx_bytes,
            cookies_sent=d.cookies_sent,
            drops={reason.value: count for reason, count in self.drops.items()},
        )
