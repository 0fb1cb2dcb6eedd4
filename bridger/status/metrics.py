"""Prometheus metrics for ``--metrics HOST:PORT``.

A custom :class:`SnapshotCollector` turns one status snapshot into metric
families at scrape time, so the data plane never calls prometheus-client.
prometheus-client serves HTTP from its own thread, while counters belong to
the trio thread: when started from inside trio, each scrape takes the
snapshot on the trio thread via ``trio.from_thread``.

Names follow the Prometheus conventions: base units (seconds, bytes),
``_total`` for counters, one metric per quantity with labels for dimensions.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector, CollectorRegistry

from bridger.dataplane.accounting import KINDS
from bridger.errors import ConfigError, HostError
from bridger.status.document import PEER_STATES

log = logging.getLogger("bridger.status.metrics")

#: Label values of ``direction``: the snapshot's tx is LAN->WAN, rx is WAN->LAN.
DIRECTION_LABELS = (("tx", "lan_to_wan"), ("rx", "wan_to_lan"))

#: What ``:PORT`` binds: every IPv6 address, dual-stack; IPv4 only where IPv6 is off.
ALL_ADDRESSES = "::"
_ALL_IPV4 = "0.0.0.0"


def parse_hostport(hostport: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` -> (host, port).

    ``:PORT`` means all addresses: ``"::"`` (IPv6 and, dual-stack, IPv4;
    :func:`serve_metrics` falls back to ``0.0.0.0`` where IPv6 is off).
    """
    text = hostport.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"--metrics {hostport!r}: expected HOST:PORT, e.g. 127.0.0.1:9470")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"--metrics {hostport!r}: port must be 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ConfigError(f"--metrics {hostport!r}: {host!r} is not an IPv6 address") from exc
    elif ":" in host:
        raise ConfigError(f"--metrics {hostport!r}: write IPv6 addresses as [ADDR]:PORT")
    return host or ALL_ADDRESSES, port


class SnapshotCollector(Collector):
    """Exposes one status snapshot, taken at scrape time, as Prometheus metrics."""

    def __init__(self, get_snapshot: Callable[[], dict[str, Any]]) -> None:
        self._get_snapshot = get_snapshot

    def collect(self) -> Iterator[Metric]:
        yield from snapshot_metrics(self._get_snapshot())


def _mac_table(prefix: str, what: str, labels: list[str]) -> tuple[Metric, Metric, Metric]:
    return (
        GaugeMetricFamily(f"{prefix}_entries", f"{what} in the table", labels=labels),
        GaugeMetricFamily(f"{prefix}_capacity", f"Bound of the table of {what}", labels=labels),
        CounterMetricFamily(f"{prefix}_evictions", f"{what} evicted (table full)", labels=labels),
    )


def _add_mac_table(families: tuple[Metric, ...], labels: list[str], side: dict[str, Any]) -> None:
    for family, key in zip(families, ("count", "capacity", "evicted"), strict=True):
        family.add_metric(labels, side[key])  # type: ignore[attr-defined]


def snapshot_metrics(snap: dict[str, Any]) -> Iterator[Metric]:
    """The metric families for one snapshot (pure, so it is easy to test).

    Every per-peer series carries a ``peer`` label; device-wide series have
    none.  Device totals are not exported: ``sum without (peer)`` gives them.
    """
    peers: list[dict[str, Any]] = snap["peers"]

    # -- device ---------------------------------------------------------------------------
    info = InfoMetricFamily("bridger", "Forwarding mode, data path and local interfaces")
    labels = {"mode": snap["mode"], "data_path": snap["data_path"]}
    labels.update({f"interface_{k}": v for k, v in snap["interface"].items()})
    info.add_metric([], labels)
    yield info
    ha = snap.get("ha")
    if ha is not None:  # two gateways per site
        role = GaugeMetricFamily("bridger_ha_role", "This gateway's role in its site's group "
                                 "(1 for the current one)", labels=["role"])
        for name in ("active", "standby", "listening"):
            role.add_metric([name], 1.0 if ha["role"] == name else 0.0)
        yield role
        changes = CounterMetricFamily("bridger_ha_role_changes", "Role changes since start")
        changes.add_metric([], ha["changes"])
        yield changes
    by_state = GaugeMetricFamily("bridger_peers", "Configured peers by state", labels=["state"])
    for name in PEER_STATES:
        by_state.add_metric([name], sum(1 for p in peers if p["state"] == name))
    yield by_state
    drops = CounterMetricFamily("bridger_drops", "Packets or frames dropped that belong to "
                                "no peer, by reason", labels=["reason"])
    for reason, value in snap["device_drops"].items():
        drops.add_metric([reason], value)
    yield drops
    local = _mac_table("bridger_local_mac_table", "Local MACs (read from the taps)", [])
    _add_mac_table(local, [], snap["macs"]["local"])
    yield from local
    guard = snap.get("guard")
    if guard is not None:  # absent when the daemon runs without guards
        loops = CounterMetricFamily("bridger_loops_detected", "Loops detected by loop "
                                    "protection (all peers)")
        loops.add_metric([], guard["loops_detected"])
        flaps = CounterMetricFamily("bridger_mac_flaps", "Source MACs seen changing sides "
                                    "(LAN and a peer, or two peers)")
        flaps.add_metric([], guard["mac_flaps"]["total"])
        yield from (loops, flaps)

    # -- per peer -------------------------------------------------------------------------
    up = GaugeMetricFamily("bridger_peer_up", "1 if the link to the peer is up (keys valid, "
                           "traffic flowing or recently confirmed), else 0", labels=["peer"])
    state = GaugeMetricFamily("bridger_peer_state", "Current peer state (1 for the current one)",
                              labels=["peer", "state"])
    peer_info = InfoMetricFamily("bridger_peer", "The peer's key, configured host, endpoint, "
                                 "tap and path (direct or relayed via whom)", labels=["peer"])
    frames = CounterMetricFamily("bridger_frames", "Ethernet frames forwarded",
                                 labels=["peer", "direction"])
    nbytes = CounterMetricFamily("bridger_bytes", "Ethernet frame bytes forwarded",
                                 labels=["peer", "direction"])
    kinds = CounterMetricFamily("bridger_frames_by_kind", "Forwarded frames by destination "
                                "class, (inner) ethertype and VLAN tagging",
                                labels=["peer", "direction", "kind"])
    peer_drops = CounterMetricFamily("bridger_peer_drops", "Packets or frames of one peer "
                                     "dropped, by reason", labels=["peer", "reason"])
    fragments = CounterMetricFamily("bridger_fragments", "Fragmentation and reassembly events",
                                    labels=["peer", "event"])
    handshakes = CounterMetricFamily("bridger_handshakes", "Completed handshakes",
                                     labels=["peer"])
    rekeys = CounterMetricFamily("bridger_rekeys", "Session rekeys", labels=["peer"])
    path_mtu = GaugeMetricFamily("bridger_path_mtu_bytes", "Path MTU to the peer (0 if unknown)",
                                 labels=["peer"])
    gauges = [
        (GaugeMetricFamily("bridger_rtt_seconds", "Round-trip time estimate to the peer",
                           labels=["peer"]), "rtt_ms", 1e-3),
        (GaugeMetricFamily("bridger_session_age_seconds", "Age of the current session",
                           labels=["peer"]), "session_age", 1.0),
        (GaugeMetricFamily("bridger_last_handshake_age_seconds",
                           "Time since the last completed handshake", labels=["peer"]),
         "last_handshake_age", 1.0),
    ]
    remote = _mac_table("bridger_remote_mac_table", "MACs behind the peer", ["peer"])
    loop = GaugeMetricFamily("bridger_peer_loop", "1 while loop protection blocks the peer "
                             "(a loop runs through it), else 0", labels=["peer"])
    for peer in peers:
        name = peer["name"]
        up.add_metric([name], 1.0 if peer["state"] == "up" else 0.0)
        for value in PEER_STATES:
            state.add_metric([name, value], 1.0 if peer["state"] == value else 0.0)
        peer_info.add_metric([name], {"public_key": peer["public_key"],
                                      "host": peer["host"] or "", "tap": peer["tap"],
                                      "endpoint": peer["endpoint"] or "",
                                      "path_mtu_source": peer.get("path_mtu_source", ""),
                                      "path": peer.get("path", ""),
                                      "via": peer.get("via") or "",
                                      "endpoint_source": peer.get("endpoint_source", "")})
        for key, label in DIRECTION_LABELS:
            frames.add_metric([name, label], peer["frames"][key])
            nbytes.add_metric([name, label], peer["bytes"][key])
            for kind in KINDS:
                kinds.add_metric([name, label, kind], peer["kinds"][key][kind])
        for reason, value in peer["drops"].items():
            peer_drops.add_metric([name, reason], value)
        for event, value in peer["fragments"].items():
            fragments.add_metric([name, event], value)
        handshakes.add_metric([name], peer["handshakes"])
        rekeys.add_metric([name], peer["rekeys"])
        path_mtu.add_metric([name], peer["path_mtu"])
        for family, key, scale in gauges:
            if peer[key] is not None:  # absent rather than a fake 0 when unknown
                family.add_metric([name], peer[key] * scale)
        _add_mac_table(remote, [name], peer["macs"]["remote"])
        if peer.get("guard") is not None:
            loop.add_metric([name], 1.0 if peer["guard"]["loop"] else 0.0)
    yield from (up, loop, state, peer_info, frames, nbytes, kinds, peer_drops, fragments,
                handshakes, rekeys, path_mtu)
    yield from (family for family, _, _ in gauges)
    yield from remote


@dataclass
class MetricsServer:
    """Handle on the running HTTP server (the daemon may ignore it; tests close it)."""

    host: str
    port: int
    _shutdown: Callable[[], None]
    _thread: threading.Thread

    def close(self) -> None:
        self._shutdown()
        self._thread.join(timeout=5)


def start_metrics_server(
    hostport: str, get_snapshot: Callable[[], dict[str, Any]]
) -> MetricsServer:
    """Serve ``/metrics`` on ``hostport`` from a background thread.

    Raises :class:`ConfigError` for a malformed ``HOST:PORT`` and
    :class:`HostError` if the address cannot be bound.  Call it from the trio
    thread so scrapes read the counters there.
    """
    host, port = parse_hostport(hostport)
    return serve_metrics(host, port, get_snapshot)


def serve_metrics(
    host: str, port: int, get_snapshot: Callable[[], dict[str, Any]]
) -> MetricsServer:
    """:func:`start_metrics_server` after parsing; ``port`` 0 picks a free port."""
    try:
        token: trio.lowlevel.TrioToken | None = trio.lowlevel.current_trio_token()
    except RuntimeError:
        token = None  # not inside trio: counters are not being mutated concurrently

    def snapshot() -> dict[str, Any]:
        if token is None:
            return get_snapshot()
        doc: dict[str, Any] = trio.from_thread.run_sync(get_snapshot, trio_token=token)
        return doc

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    try:
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            if host != ALL_ADDRESSES or exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            host = _ALL_IPV4  # IPv6 disabled on this host
            server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise HostError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    bound_port = int(server.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    log.info("serving Prometheus metrics on http://%s:%d/metrics", shown, bound_port)

    def shutdown() -> None:
        server.shutdown()
        server.server_close()

    return MetricsServer(host, bound_port, shutdown, thread)
