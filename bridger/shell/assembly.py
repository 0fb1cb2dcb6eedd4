"""The parts a running bridge is assembled from, built from a validated config.

`bridger up` (``bridger.daemon``) builds them at start; the live service
(``bridger.service.live``) builds the same ones again when a reload adds, re-keys
or re-creates a peer. Both import this module; it imports neither.

1. ``read_keys``: this site's private key and each peer's PSK.
2. ``build_core``: the ``Device`` and one ``Peer`` per configured peer
   (``peer_config`` each); also run once before the host is touched, as a check.
3. ``build_forwarder``: the data plane's state around the core (counters, the
   loop detector).
4. ``PortMaker``: a peer's ``Port`` on its tap (its guard, its counters).
5. ``setup_fast_path`` / ``prepare_port``: the offloads the kernel grants the
   socket and the taps; ``native_module`` / ``data_path``: which per-packet
   implementation runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bridger import native
from bridger.config import PeerSettings, UpConfig, is_ip_literal
from bridger.dataplane.accounting import Counters
from bridger.errors import ConfigError
from bridger.guard.loop import LoopDetector
from bridger.guard.policy import Guard, GuardConfig
from bridger.host.tap import IFF_VNET_HDR, enable_offloads, takes_udp_superframes, tap_flags
from bridger.keys import read_private_key_file
from bridger.native.contract import MAX_PORTS
from bridger.protocol import Device, DeviceConfig, Peer, PeerConfig
from bridger.shell.forward import Forwarder
from bridger.shell.port import Port
from bridger.shell.udp import UdpEndpoint

log = logging.getLogger("bridger")

#: The per-packet implementations (shown in status and the start-up line).
NATIVE, PYTHON = "native", "python"

#: Each peer's PSK, by peer name.
Psks = dict[str, bytes | None]


def native_module(config: UpConfig) -> Any:
    """The native extension when the config's data path uses it, else None
    (the config's validation refused "native" where it is not built).  With
    more peers than the lane has ports, "auto" runs the Python path (one log
    line) and "native" is a one-line error."""
    if config.data_path == PYTHON:
        return None
    if len(config.peers) > MAX_PORTS:
        if config.data_path == NATIVE:
            lane_room(config)
        log.warning("%d peers: more than the native data path's %d ports; the Python "
                    "data path runs", len(config.peers), MAX_PORTS)
        return None
    return native.lane


def lane_room(config: UpConfig) -> None:
    """Refuse (one line) a configuration with more peers than the lane has ports."""
    if len(config.peers) > MAX_PORTS:
        raise ConfigError(f"{len(config.peers)} peers: the native data path serves at most "
                          f"{MAX_PORTS}; use data_path = \"python\" (or \"auto\")")


def data_path(fwd: Forwarder) -> str:
    return PYTHON if fwd.lane is None else NATIVE


def read_keys(config: UpConfig) -> tuple[bytes, Psks]:
    """This site's private key and each peer's PSK (one-line errors)."""
    psks = {p.name: None if p.psk_file is None else read_private_key_file(p.psk_file)
            for p in config.peers}
    return read_private_key_file(config.key_file), psks


def peer_config(settings: PeerSettings, psk: bytes | None) -> PeerConfig:
    """The core's view of one configured peer."""
    endpoint = None
    if settings.host is not None and is_ip_literal(settings.host):
        endpoint = (settings.host, settings.port)
    return PeerConfig(public_key=settings.public_key, psk=psk, endpoint=endpoint,
                      persistent_keepalive=settings.persistent_keepalive, name=settings.name)


def build_core(
    config: UpConfig, private: bytes, psks: Psks, now: float, wall_clock: float,
    session_factory: Any = None,
) -> tuple[Device, list[Peer]]:
    """The device and its peers, from a validated config (``session_factory``:
    the native lane's Session type, so that the lane shares every keypair)."""
    try:
        device = Device(DeviceConfig(private_key=private, wan_mtu=config.wan_mtu),
                        now=now, wall_clock=wall_clock, session_factory=session_factory)
        peers = [device.add_peer(peer_config(s, psks[s.name]), now) for s in config.peers]
    except ValueError as exc:
        raise ConfigError(f"tunnel settings: {exc}") from None
    return device, peers


def build_forwarder(config: UpConfig, device: Device, udp: UdpEndpoint,
                    tap_cut: bool = False) -> Forwarder:
    """The forwarder around ``device``, with no ports yet (``PortMaker`` makes them).
    ``tap_cut``: the bridge never hands a loop probe from one tap to another
    (the kernel's storm table, or isolated taps; bridger.guard.loop 5.)."""
    guard = config.guard
    detector = (LoopDetector(vlans=guard.vlans, untagged=guard.untagged,
                             hub=config.mode == "hub", tap_cut=tap_cut)
                if guard.loop_protection else None)
    return Forwarder(device=device, udp=udp, counters=Counters(), detector=detector)


@dataclass(frozen=True)
class PortMaker:
    """Makes a peer's port: at start, and when a reload adds or re-creates one.

    The counters are found by peer name, so a peer re-created on its tap keeps
    counting; the guard settings and mode are those the daemon started with."""

    guard: GuardConfig
    #: Mode "mesh": the guards count frames from the LAN side.
    lan_side: bool
    offload: bool
    counters: Counters
    detector: LoopDetector | None

    @classmethod
    def of(cls, config: UpConfig, fwd: Forwarder) -> PortMaker:
        return cls(guard=config.guard, lan_side=config.mode == "mesh", offload=config.offload,
                   counters=fwd.counters, detector=fwd.detector)

    def make(self, peer: Peer, tap: str, fd: int) -> Port:
        """A port whose fast-path flags are still to be set (``setup_fast_path``)."""
        peer_counters = self.counters.peer(peer.name)
        detector = self.detector
        return Port(
            peer=peer, counters=peer_counters, tap=tap, fd=fd,
            guard=Guard(
                self.guard, peer.name, detector, known=peer_counters.remote_macs,
                flaps=None if detector is None else detector.flaps,
                lan_side=self.lan_side,
            ),
        )

    def make_prepared(self, peer: Peer, tap: str, fd: int) -> Port:
        """A port with its fast-path flags set: one added while the daemon runs."""
        port = self.make(peer, tap, fd)
        prepare_port(port, self.offload)
        return port


def prepare_port(port: Port, offload: bool) -> int:
    """The fast-path flags of one tap; returns the offloads granted."""
    if not offload:
        return 0
    try:
        port.vnet = bool(tap_flags(port.fd) & IFF_VNET_HDR)
    except OSError:
        port.vnet = False
    granted = enable_offloads(port.fd) if port.vnet else 0
    port.udp_join = takes_udp_superframes(port.fd, granted)
    return granted


def setup_fast_path(fwd: Forwarder, offload: bool, path: str = PYTHON) -> None:
    """Turn on the offloads this kernel has (none if ``offload`` is off); one log
    line, naming the data path (``path``) too."""
    if not offload:
        log.info("data path: %s; fast path off (offload = false)", path)
        return
    fwd.udp.enable_offloads()
    granted = 0
    vnet = udp_join = False
    for port in fwd.ports.values():
        offloads = prepare_port(port, offload)
        if port.vnet:
            vnet = True
            granted = offloads
            udp_join = port.udp_join
    names = [name for bit, name in ((1, "csum"), (2, "tso4"), (4, "tso6"), (8, "tso-ecn"))
             if granted & bit] + (["udp-joins"] if udp_join else [])
    log.info(
        "data path: %s; fast path: tap %s, UDP GSO %s, UDP GRO %s", path,
        ("offloads " + ",".join(names)) if names else
        ("virtio-net header without offloads" if vnet else "without virtio-net header"),
        "on" if fwd.udp.gso else "unavailable", "on" if fwd.udp.gro else "unavailable",
    )
