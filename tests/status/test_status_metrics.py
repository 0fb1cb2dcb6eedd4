"""Prometheus endpoint: scraped over HTTP and parsed with prometheus_client.parser."""

from __future__ import annotations

import threading
import urllib.request
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from bridger.errors import ConfigError, HostError
from bridger.status.counters import Counters, LinkInfo
from bridger.status.metrics import parse_hostport, serve_metrics, start_metrics_server

LINK = LinkInfo(state="up", endpoint="203.0.113.5:55555", peer_name="berlin.example",
                session_age=10.0, last_handshake_age=1.5, handshakes=2, rekeys=1, rtt_ms=12.5,
                path_mtu=1420, drops={"decrypt_failed": 4, "replay": 0},
                fragments={"sent": 3, "reassembled": 1},
                interface={"lan": "eth1", "tap": "bt0"})


def counters() -> Counters:
    c = Counters()
    ipv4 = bytes.fromhex("020000000002" "020000000001" "0800") + b"\x45" + b"\x00" * 85
    for _ in range(7):
        c.lan_to_wan(ipv4, 1.0)
    c.wan_to_lan(b"\xff" * 6 + bytes.fromhex("020000000002" "0806") + b"\x00" * 28, 1.0)
    c.tap_write_failed()
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
    server = serve_metrics("127.0.0.1", 0, lambda: c.snapshot(LINK, 2.0))
    try:
        first = scrape(server.port)
        c.lan_to_wan(bytes(100), 3.0)  # read at scrape time, not at start
        second = scrape(server.port)
    finally:
        server.close()
    tx, rx = (("direction", "lan_to_wan"),), (("direction", "wan_to_lan"),)
    assert first[("bridger_frames_total", tx)] == 7
    assert second[("bridger_frames_total", tx)] == 8
    assert first[("bridger_frames_total", rx)] == 1
    assert first[("bridger_bytes_total", tx)] == 7 * 100
    assert first[("bridger_bytes_total", rx)] == 42
    assert first[("bridger_drops_total", (("reason", "decrypt_failed"),))] == 4
    assert first[("bridger_drops_total", (("reason", "tap_write_failed"),))] == 1
    assert first[("bridger_drops_total", (("reason", "udp_send_failed"),))] == 0
    assert first[("bridger_link_up", ())] == 1
    assert first[("bridger_link_state", (("state", "up"),))] == 1
    assert first[("bridger_link_state", (("state", "down"),))] == 0
    assert first[("bridger_rtt_seconds", ())] == pytest.approx(0.0125)
    assert first[("bridger_path_mtu_bytes", ())] == 1420
    assert first[("bridger_rekeys_total", ())] == 1
    assert first[("bridger_handshakes_total", ())] == 2
    assert first[("bridger_fragments_total", (("event", "sent"),))] == 3
    assert first[("bridger_frames_by_kind_total", (*tx, ("kind", "ipv4")))] == 7
    assert first[("bridger_frames_by_kind_total", (*rx, ("kind", "arp")))] == 1
    assert first[("bridger_frames_by_kind_total", (*rx, ("kind", "broadcast")))] == 1
    assert first[("bridger_mac_table_entries", (("side", "local"),))] == 1
    info = [k for k in first if k[0] == "bridger_peer_info"]
    assert info and ("endpoint", "203.0.113.5:55555") in info[0][1]


def test_scrape_inside_trio_reads_on_trio_thread() -> None:
    """Started from trio, scrapes run get_snapshot on the trio thread (counters are not
    thread-safe), and a down link without an endpoint exports no fake RTT."""
    c = counters()
    threads: list[Any] = []

    def get_snapshot() -> dict[str, Any]:
        threads.append(threading.current_thread())
        return c.snapshot(LinkInfo(state="down"), 2.0)

    async def main() -> dict[Any, float]:
        server = serve_metrics("127.0.0.1", 0, get_snapshot)
        try:
            samples = await trio.to_thread.run_sync(scrape, server.port)
        finally:
            server.close()
        assert threads == [threading.current_thread()]
        return samples

    samples = trio.run(main)
    assert samples[("bridger_link_up", ())] == 0
    assert samples[("bridger_link_state", (("state", "down"),))] == 1
    assert not any(name == "bridger_rtt_seconds" for name, _ in samples)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9470", ("127.0.0.1", 9470)),
    (":9470", ("0.0.0.0", 9470)),
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


def test_port_in_use_is_host_error() -> None:
    server = serve_metrics("127.0.0.1", 0, lambda: {})
    try:
        with pytest.raises(HostError, match="cannot serve metrics"):
            start_metrics_server(f"127.0.0.1:{server.port}", lambda: {})
    finally:
        server.close()
