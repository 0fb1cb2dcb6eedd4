"""Prometheus endpoint: scraped over HTTP and parsed with prometheus_client.parser."""

from __future__ import annotations

import threading
import urllib.request
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from bridger.dataplane.accounting import Counters
from bridger.errors import ConfigError, HostError
from bridger.status.document import DeviceInfo, status_document
from bridger.status.metrics import parse_hostport, serve_metrics, start_metrics_server
from tests.status.samples import BERLIN, DEVICE, LOCAL, PARIS, REMOTE, arp_broadcast, ipv4

PEERS = [BERLIN, PARIS]


def counters() -> Counters:
    c = Counters()
    for _ in range(7):
        c.peer("berlin").lan_to_wan(ipv4(REMOTE, LOCAL, 100), 1.0)
    c.peer("berlin").wan_to_lan(arp_broadcast(), 1.0)
    c.peer("paris").wan_to_lan(ipv4(LOCAL, REMOTE, 60), 1.0)
    c.peer("berlin").tap_write_failed()
    c.drop("udp_send_blocked")
    return c


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_scrape_outside_trio() -> None:
    c = counters()
    server = serve_metrics("127.0.0.1", 0, lambda: status_document(c.snapshot(2.0), DEVICE, PEERS))
    try:
        first = scrape(server.port)
        c.peer("berlin").lan_to_wan(bytes(100), 3.0)  # read at scrape time, not at start
        second = scrape(server.port)
    finally:
        server.close()
    b, p = ("peer", "berlin"), ("peer", "paris")
    tx, rx = ("direction", "lan_to_wan"), ("direction", "wan_to_lan")
    assert first[("bridger_frames_total", (tx, b))] == 7
    assert second[("bridger_frames_total", (tx, b))] == 8
    assert first[("bridger_frames_total", (rx, b))] == 1
    assert first[("bridger_frames_total", (rx, p))] == 1
    assert first[("bridger_frames_total", (tx, p))] == 0
    assert first[("bridger_bytes_total", (tx, b))] == 7 * 100
    assert first[("bridger_bytes_total", (rx, b))] == 42
    assert first[("bridger_peer_drops_total", (b, ("reason", "auth_failed")))] == 12
    assert first[("bridger_peer_drops_total", (b, ("reason", "tap_write_failed")))] == 1
    assert first[("bridger_peer_drops_total", (p, ("reason", "tap_write_failed")))] == 0
    # device-level series carry no peer label
    assert first[("bridger_drops_total", (("reason", "malformed"),))] == 2
    assert first[("bridger_drops_total", (("reason", "udp_send_blocked"),))] == 1
    assert first[("bridger_drops_total", (("reason", "udp_send_failed"),))] == 0
    assert first[("bridger_peers", (("state", "up"),))] == 1
    assert first[("bridger_peers", (("state", "down"),))] == 1
    assert first[("bridger_local_mac_table_entries", ())] == 1
    assert first[("bridger_peer_up", (b,))] == 1
    assert first[("bridger_peer_up", (p,))] == 0
    assert first[("bridger_peer_state", (b, ("state", "up")))] == 1
    assert first[("bridger_peer_state", (b, ("state", "down")))] == 0
    assert first[("bridger_peer_state", (p, ("state", "down")))] == 1
    assert first[("bridger_rtt_seconds", (b,))] == pytest.approx(0.0142)
    assert ("bridger_rtt_seconds", (p,)) not in first  # absent, not a fake 0, while unknown
    assert first[("bridger_path_mtu_bytes", (b,))] == 1420
    assert first[("bridger_rekeys_total", (b,))] == 2
    assert first[("bridger_handshakes_total", (b,))] == 3
    assert first[("bridger_fragments_total", (("event", "sent"), b))] == 4
    assert first[("bridger_frames_by_kind_total", (tx, ("kind", "ipv4"), b))] == 7
    assert first[("bridger_frames_by_kind_total", (rx, ("kind", "arp"), b))] == 1
    assert first[("bridger_frames_by_kind_total", (rx, ("kind", "broadcast"), b))] == 1
    assert first[("bridger_remote_mac_table_entries", (b,))] == 1
    info = dict(next(k[1] for k in first if k[0] == "bridger_peer_info" and b in k[1]))
    assert info["endpoint"] == "203.0.113.5:55555" and info["public_key"] == BERLIN.public_key
    assert info["host"] == "berlin.example" and info["tap"] == "berlin"
    device = dict(next(k[1] for k in first if k[0] == "bridger_info"))
    assert device == {"mode": "mesh", "data_path": "python", "interface_lan": "eth1",
                      "interface_bridge": "br0", "interface_listen": "[::]:55555"}
    # every series is either per peer (a peer label) or device-wide (listed here)
    device_wide = {"bridger_info", "bridger_peers", "bridger_drops_total",
                   "bridger_local_mac_table_entries", "bridger_local_mac_table_capacity",
                   "bridger_local_mac_table_evictions_total"}
    for name, labels in first:
        assert (name in device_wide) != any(k == "peer" for k, _ in labels), (name, labels)


def test_scrape_inside_trio_reads_on_trio_thread() -> None:
    """Started from trio, scrapes run get_snapshot on the trio thread (counters are not
    thread-safe), and a down link without an endpoint exports no fake RTT."""
    c = counters()
    threads: list[Any] = []

    def get_snapshot() -> dict[str, Any]:
        threads.append(threading.current_thread())
        return status_document(c.snapshot(2.0), DeviceInfo(), [PARIS])

    async def main() -> dict[Any, float]:
        server = serve_metrics("127.0.0.1", 0, get_snapshot)
        try:
            samples = await trio.to_thread.run_sync(scrape, server.port)
        finally:
            server.close()
        assert threads == [threading.current_thread()]
        return samples

    samples = trio.run(main)
    assert samples[("bridger_peer_up", (("peer", "paris"),))] == 0
    assert samples[("bridger_peer_state", (("peer", "paris"), ("state", "down")))] == 1
    assert not any(name == "bridger_rtt_seconds" for name, _ in samples)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9470", ("127.0.0.1", 9470)),
    (":9470", ("::", 9470)),
    ("[::1]:9470", ("::1", 9470)),
    ("metrics.local:80", ("metrics.local", 80)),
])
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["9470", "host:", "host:port", "host:0", "host:70000",
                                  "::1:9470", "[nope]:9470", ""])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="--metrics"):
        parse_hostport(text)


def test_all_addresses_serves_ipv4_and_ipv6() -> None:
    """``:PORT`` listens on every address: IPv4 loopback and, where the host has IPv6,
    IPv6 loopback too."""
    c = counters()
    host, _ = parse_hostport(":1")
    server = serve_metrics(host, 0, lambda: status_document(c.snapshot(2.0), DEVICE, PEERS))
    try:
        assert scrape(server.port)[("bridger_peer_up", (("peer", "berlin"),))] == 1
        if server.host == "::":
            url = f"http://[::1]:{server.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                assert b"bridger_peer_up" in response.read()
    finally:
        server.close()


def test_port_in_use_is_host_error() -> None:
    server = serve_metrics("127.0.0.1", 0, lambda: {})
    try:
        with pytest.raises(HostError, match="cannot serve metrics"):
            start_metrics_server(f"127.0.0.1:{server.port}", lambda: {})
    finally:
        server.close()
