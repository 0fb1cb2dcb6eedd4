"""The status document: what every status view shows (``docs/status.md``).

Views (dashboard, ``bridger status``, Prometheus) never touch the data plane's
counters: the daemon builds this document from a snapshot of them
(:meth:`bridger.dataplane.accounting.Counters.snapshot`) and what it knows of
the device and each peer (:class:`DeviceInfo`, :class:`PeerInfo`, filled from
the core), with :func:`status_document`.  The document is plain JSON-able data
whose layout is stable (``SCHEMA_VERSION``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bridger.dataplane.accounting import CountsSnapshot, PeerCountsSnapshot

#: Version of the snapshot document; bumped only on incompatible changes
#: (2: one ``peers`` element per peer instead of one ``link``).
SCHEMA_VERSION = 2

#: Peer states the daemon may report (``PeerInfo.state``).
PEER_STATES = ("down", "handshaking", "up", "stale")

#: Forwarding modes (``DeviceInfo.mode``).
MODES = ("mesh", "hub")


@dataclass
class DeviceInfo:
    """What the daemon knows about the whole device at snapshot time."""

    mode: str = "mesh"  # one of MODES
    data_path: str = "python"  # which forwarding implementation runs, e.g. "python"
    interface: dict[str, str] = field(default_factory=dict)  # lan / bridge / listen
    drops: dict[str, int] = field(default_factory=dict)  # core drops not tied to a peer
    #: ``LoopDetector.snapshot(now)`` (loops, blocked peers, MAC flaps); None: no guards.
    guard: dict[str, Any] | None = None


@dataclass
class PeerInfo:
    """What the daemon knows about one peer at snapshot time (filled from the core)."""

    name: str
    public_key: str  # base64, as in the config
    state: str = "down"  # one of PEER_STATES
    host: str | None = None  # configured host name or address; None: waits to be contacted
    tap: str = ""  # this peer's tap interface
    endpoint: str | None = None  # "203.0.113.5:55555"
    session_age: float | None = None  # seconds since the current session started
    last_handshake_age: float | None = None
    handshakes: int = 0
    rekeys: int = 0
    rtt_ms: float | None = None
    path_mtu: int = 0
    #: How path_mtu was learnt: "base", "probe", "icmp", "configured" ("": unknown).
    path_mtu_source: str = ""
    #: How frames reach the peer (issue 23): "direct", "relayed" or "none".
    path: str = "none"
    #: The relay's peer name when relayed, else None.
    via: str | None = None
    #: How the endpoint was learnt: "configured", "learnt", "introduced", "relay".
    endpoint_source: str = ""
    drops: dict[str, int] = field(default_factory=dict)  # from the core, every reason
    fragments: dict[str, int] = field(default_factory=dict)  # e.g. sent/received/reassembled
    #: ``Guard.snapshot(now)`` of this peer's guard (loop state, settings); None: no guard.
    guard: dict[str, Any] | None = None


def _merge(into: dict[str, int], drops: dict[str, int]) -> None:
    for reason, value in drops.items():
        into[reason] = into.get(reason, 0) + int(value)


def status_document(
    counts: CountsSnapshot, device: DeviceInfo, peers: Iterable[PeerInfo]
) -> dict[str, Any]:
    """The stable status document (``docs/status.md``), version 2.

    ``peers`` lists the peers in display (config) order; a peer without
    counters yet shows zeros.  Core and daemon drops with the same reason
    are summed; the top level sums the device and every peer (removed
    peers included), ``device_drops`` holds the device's own.
    """
    device_drops = dict(counts.device_drops)
    _merge(device_drops, device.drops)
    drops = dict(counts.drops)
    _merge(drops, device.drops)
    elements = []
    for info in peers:
        mine = counts.peers.get(info.name, counts.idle_peer)
        peer_drops = dict(mine.drops)
        _merge(peer_drops, info.drops)
        _merge(drops, info.drops)
        elements.append(_peer_element(info, mine, peer_drops))
    return {
        "version": SCHEMA_VERSION,
        "mode": device.mode,
        "data_path": device.data_path,
        "interface": {str(k): str(v) for k, v in device.interface.items()},
        "frames": dict(counts.frames),
        "bytes": dict(counts.bytes),
        "kinds": {d: dict(k) for d, k in counts.kinds.items()},
        "drops": dict(sorted(drops.items())),
        "device_drops": dict(sorted(device_drops.items())),
        "macs": {"local": counts.local_macs},
        "guard": None if device.guard is None else dict(device.guard),
        "peers": elements,
    }


def _peer_element(
    info: PeerInfo, counts: PeerCountsSnapshot, drops: dict[str, int]
) -> dict[str, Any]:
    return {
        "name": info.name,
        "public_key": info.public_key,
        "host": info.host,
        "tap": info.tap,
        "state": info.state,
        "endpoint": info.endpoint,
        "session_age": info.session_age,
        "last_handshake_age": info.last_handshake_age,
        "handshakes": int(info.handshakes),
        "rekeys": int(info.rekeys),
        "rtt_ms": info.rtt_ms,
        "path_mtu": int(info.path_mtu),
        "path_mtu_source": info.path_mtu_source,
        "path": info.path,
        "via": info.via,
        "endpoint_source": info.endpoint_source,
        "frames": dict(counts.frames),
        "bytes": dict(counts.bytes),
        "kinds": {d: dict(k) for d, k in counts.kinds.items()},
        "drops": dict(sorted(drops.items())),
        "fragments": {str(k): int(v) for k, v in sorted(info.fragments.items())},
        "macs": {"remote": counts.remote_macs},
        "guard": None if info.guard is None else dict(info.guard),
    }
