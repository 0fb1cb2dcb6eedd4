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

from bridger.errors import ConfigError, HostError
from bridger.status.counters import KINDS, LINK_STATES

log = logging.getLogger("bridger.status.metrics")

#: Label values of ``direction``: the snapshot's tx is LAN->WAN, rx is WAN->LAN.
DIRECTION_LABELS = (("tx", "lan_to_wan"), ("rx", "wan_to_lan"))


def parse_hostport(hostport: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (all addresses) -> (host, port)."""
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
    return host or "0.0.0.0", port


class SnapshotCollector(Collector):
    """Exposes one status snapshot, taken at scrape time, as Prometheus metrics."""

    def __init__(self, get_snapshot: Callable[[], dict[str, Any]]) -> None:
        self._get_snapshot = get_snapshot

    def collect(self) -> Iterator[Metric]:
        yield from snapshot_metrics(self._get_snapshot())


def snapshot_metrics(snap: dict[str, Any]) -> Iterator[Metric]:
    """The metric families for one snapshot (pure, so it is easy to test)."""
    link = snap["link"]
    up = GaugeMetricFamily("bridger_link_up", "1 if the link to the peer is up (keys valid, "
                           "traffic flowing or recently confirmed), else 0")
    up.add_metric([], 1.0 if link["state"] == "up" else 0.0)
    yield up
    state = GaugeMetricFamily("bridger_link_state", "Current link state (1 for the current one)",
                              labels=["state"])
    for name in LINK_STATES:
        state.add_metric([name], 1.0 if link["state"] == name else 0.0)
    yield state

    info = InfoMetricFamily("bridger_peer", "The peer endpoint and local interfaces")
    labels = {"endpoint": link["endpoint"] or "", "peer_name": link["peer_name"] or ""}
    labels.update({f"interface_{k}": v for k, v in snap["interface"].items()})
    info.add_metric([], labels)
    yield info

    for metric, help_text in (("frames", "Ethernet frames forwarded"),
                              ("bytes", "Ethernet frame bytes forwarded")):
        family = CounterMetricFamily(f"bridger_{metric}", help_text, labels=["direction"])
        for key, label in DIRECTION_LABELS:
            family.add_metric([label], snap[metric][key])
        yield family

    kinds = CounterMetricFamily("bridger_frames_by_kind", "Forwarded frames by destination "
                                "class, (inner) ethertype and VLAN tagging",
                                labels=["direction", "kind"])
    for key, label in DIRECTION_LABELS:
        for kind in KINDS:
            kinds.add_metric([label, kind], snap["kinds"][key][kind])
    yield kinds

    drops = CounterMetricFamily("bridger_drops", "Packets or frames dropped, by reason",
                                labels=["reason"])
    for reason, value in snap["drops"].items():
        drops.add_metric([reason], value)
    yield drops

    fragments = CounterMetricFamily("bridger_fragments", "Fragmentation and reassembly events",
                                    labels=["event"])
    for event, value in snap["fragments"].items():
        fragments.add_metric([event], value)
    yield fragments

    yield CounterMetricFamily("bridger_handshakes", "Completed handshakes",
                              value=link["handshakes"])
    yield CounterMetricFamily("bridger_rekeys", "Session rekeys", value=link["rekeys"])
    yield GaugeMetricFamily("bridger_path_mtu_bytes", "Path MTU to the peer (0 if unknown)",
                            value=link["path_mtu"])
    for name, key, scale, help_text in (
        ("bridger_rtt_seconds", "rtt_ms", 1e-3, "Round-trip time estimate to the peer"),
        ("bridger_session_age_seconds", "session_age", 1.0, "Age of the current session"),
        ("bridger_last_handshake_age_seconds", "last_handshake_age", 1.0,
         "Time since the last completed handshake"),
    ):
        if link[key] is not None:  # absent rather than a fake 0 when unknown
            yield GaugeMetricFamily(name, help_text, value=link[key] * scale)

    entries = GaugeMetricFamily("bridger_mac_table_entries", "MACs in the table", labels=["side"])
    capacity = GaugeMetricFamily("bridger_mac_table_capacity", "MAC table size bound",
                                 labels=["side"])
    evicted = CounterMetricFamily("bridger_mac_table_evictions", "MACs evicted (table full)",
                                  labels=["side"])
    for side in ("local", "remote"):
        entries.add_metric([side], snap["macs"][side]["count"])
        capacity.add_metric([side], snap["macs"][side]["capacity"])
        evicted.add_metric([side], snap["macs"][side]["evicted"])
    yield entries
    yield capacity
    yield evicted


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
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise HostError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    bound_port = int(server.server_address[1])
    log.info("serving Prometheus metrics on http://%s:%d/metrics", host, bound_port)

    def shutdown() -> None:
        server.shutdown()
        server.server_close()

    return MetricsServer(host, bound_port, shutdown, thread)
