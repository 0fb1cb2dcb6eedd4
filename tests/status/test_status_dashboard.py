"""The dashboard renders the expected fields in a fixed-size console, and degrades when small."""

from __future__ import annotations

import io
import logging
import struct
from typing import Any

import pytest
import trio
import trio.testing
from rich.console import Console

from bridger.status.counters import Counters, LinkInfo
from bridger.status.dashboard import (
    History,
    fmt_age,
    fmt_bytes,
    fmt_count,
    render,
    run_dashboard,
    run_log_lines,
    sparkline,
    summary_line,
)

LOCAL = bytes.fromhex("020000000001")
REMOTE = bytes.fromhex("020000000002")


def ipv4(dst: bytes, src: bytes, size: int = 100) -> bytes:
    return dst + src + struct.pack("!H", 0x0800) + b"\x45" + b"\x00" * (size - 15)


UP = LinkInfo(
    state="up", endpoint="203.0.113.5:55555", peer_name="berlin.example", session_age=3725.0,
    last_handshake_age=70.0, handshakes=3, rekeys=2, rtt_ms=14.2, path_mtu=1420,
    drops={"decrypt_failed": 12, "replay": 3, "bad_header": 0},
    fragments={"sent": 4, "received": 2, "reassembled": 1},
    interface={"lan": "eth1", "bridge": "br0", "tap": "bt0", "listen": "0.0.0.0:55555"},
)
DOWN = LinkInfo(state="down", endpoint=None, peer_name=None, path_mtu=0,
                interface={"lan": "eth1", "listen": "0.0.0.0:55555"})


def busy_counters() -> tuple[Counters, History]:
    """Ten seconds of traffic from 12 remote and 3 local MACs, sampled once a second."""
    c, history = Counters(), History()
    for t in range(11):
        for i in range(3):
            c.lan_to_wan(ipv4(REMOTE, LOCAL[:5] + bytes([i]), 1000), float(t))
        for i in range(12):
            c.wan_to_lan(ipv4(LOCAL, REMOTE[:5] + bytes([i]), 500), float(t))
        c.wan_to_lan(b"\xff" * 6 + REMOTE + b"\x08\x06" + b"\x00" * 28, float(t))
        history.sample(c.snapshot(UP, float(t)), float(t))
    c.tap_write_failed()
    return c, history


def draw(snapshot: dict[str, Any], history: History, width: int, height: int) -> list[str]:
    console = Console(width=width, height=height, record=True, file=io.StringIO(),
                      color_system=None, legacy_windows=False)
    console.print(render(snapshot, history, width, height))
    lines = console.export_text().rstrip("\n").split("\n")
    assert len(lines) <= height, "\n".join(lines)
    assert max(len(line.rstrip()) for line in lines) <= width, "\n".join(lines)
    return lines


def test_full_dashboard_fits_80x24_with_all_fields() -> None:
    c, history = busy_counters()
    lines = draw(c.snapshot(UP, 10.0), history, 80, 24)
    text = "\n".join(lines)
    for expected in [
        "UP", "berlin.example (203.0.113.5:55555)", "session 1h02m", "handshake 1m10s ago",
        "rekeys 2", "rtt 14.2 ms", "lan eth1", "bridge br0", "tap bt0",
        "LAN→WAN", "WAN→LAN", "frames", "bytes", "fr/s", "Mbit/s",
        "ucast", "bcast", "mcast", "ARP", "IPv4", "IPv6", "VLAN",
        "decrypt_failed 12", "replay 3", "tap_write_failed 1",
        "reassembled 1", "received 2", "sent 4", "path MTU 1420",
        "local 3/1024", "remote 12/1024", "02:00:00:00:00:01", "02:00:00:00:00:02",
    ]:
        assert expected in text, f"{expected!r} missing from\n{text}"
    assert "bad_header" not in text  # zero drop reasons are not listed
    # rates over the sampled history: 3 frames of 1000 B per second LAN->WAN = 0.02 Mbit/s
    tx_row = next(line for line in lines if line.startswith("LAN→WAN") and "Mbit" not in line)
    assert tx_row.split()[1:5] == ["33", "33.0kB", "3", "0.02"]
    assert "█" in tx_row  # sparkline present


def test_down_link_without_endpoint_renders() -> None:
    lines = draw(Counters().snapshot(DOWN, 0.0), History(), 80, 24)
    text = "\n".join(lines)
    assert "DOWN" in text
    assert "no peer endpoint" in text
    assert "session —" in text and "rtt —" in text
    assert "drops none" in text
    assert "path MTU —" in text
    assert "local 0/1024" in text


@pytest.mark.parametrize(("width", "height"), [(80, 24), (80, 12), (60, 15), (40, 8), (30, 3),
                                               (20, 1), (120, 40)])
@pytest.mark.parametrize("link", [UP, DOWN], ids=["up", "down"])
def test_degrades_to_fit(width: int, height: int, link: LinkInfo) -> None:
    c, history = busy_counters()
    lines = draw(c.snapshot(link, 10.0), history, width, height)
    assert link.state.upper() in lines[0]  # the link state always survives


def test_history_rates_and_reset() -> None:
    h = History()
    snap = Counters().snapshot(DOWN, 0.0)
    h.sample(snap, 0.0)
    assert h.rate("bytes", "tx") is None
    snap["bytes"]["tx"], snap["frames"]["rx"] = 1000, 10
    h.sample(snap, 1.0)
    snap["bytes"]["tx"] = 3000
    h.sample(snap, 2.0)
    assert h.rate("bytes", "tx", window=1.0) == 2000.0
    assert h.rate("bytes", "tx", window=5.0) == 1500.0
    assert h.rate("frames", "rx") == 5.0
    assert h.series("bytes", "tx", 10) == [1000.0, 2000.0]
    snap["bytes"]["tx"] = 0  # daemon restarted under `status --watch`
    h.sample(snap, 3.0)
    assert h.rate("bytes", "tx", window=1.0) == 0.0


def test_sparkline() -> None:
    assert sparkline([0, 0, 0], 5) == "▁▁▁"
    assert sparkline([0, 4, 8], 5) == "▁▅█"
    assert sparkline([1, 2, 3, 4, 8, 0], 10) == "▂▃▄▅█▁"  # bars scaled from zero
    assert sparkline([5] * 10 + [0, 8], 3) == "▅▁█"  # only the newest values that fit
    assert sparkline([1], 0) == ""


@pytest.mark.parametrize(("fn", "value", "text"), [
    (fmt_count, 999, "999"), (fmt_count, 1234, "1.2k"), (fmt_count, 123_456, "123k"),
    (fmt_count, 5e9, "5.0G"), (fmt_bytes, 512, "512 B"), (fmt_bytes, 1_500_000, "1.5MB"),
    (fmt_age, None, "—"), (fmt_age, 45.9, "45s"), (fmt_age, 192, "3m12s"),
    (fmt_age, 7500, "2h05m"), (fmt_age, 3 * 86400 + 4 * 3600, "3d04h"), (fmt_age, -1, "0s"),
])
def test_formatting(fn: Any, value: Any, text: str) -> None:
    assert fn(value) == text


def test_summary_line_rates_and_new_drops() -> None:
    c, history = busy_counters()
    snap = c.snapshot(UP, 10.0)
    line = summary_line(snap, history, previous_drops={"decrypt_failed": 10})
    assert line.startswith("link up peer berlin.example (203.0.113.5:55555) rtt 14.2ms")
    assert "LAN->WAN 33 frames 3 fr/s 0.02 Mbit/s" in line
    assert "WAN->LAN 143 frames 13 fr/s 0.05 Mbit/s" in line
    assert line.endswith("drops +6 (replay 3, decrypt_failed 2, tap_write_failed 1)")
    assert summary_line(snap, History(), snap["drops"]).endswith("drops +0")


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_run_log_lines_one_line_per_interval() -> None:
    c = Counters()
    log = logging.getLogger("test.status.lines")
    handler = ListHandler()
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_log_lines(lambda: c.snapshot(UP, 0.0), interval=10,
                                                     log=log))
            await trio.sleep(0.5)  # traffic never at the logger's wake-up instants
            for _ in range(25):  # 100 frames/s for 25 s
                for _ in range(100):
                    c.lan_to_wan(ipv4(REMOTE, LOCAL, 125), 0.0)
                await trio.sleep(1)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        log.removeHandler(handler)
    assert len(handler.lines) == 2
    for line in handler.lines:
        assert "LAN->WAN" in line and "100 fr/s 0.10 Mbit/s" in line, line


def test_run_dashboard_draws_live() -> None:
    c, _ = busy_counters()
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, force_terminal=True, color_system=None)

    async def main() -> None:
        with trio.move_on_after(0.5):
            await run_dashboard(lambda: c.snapshot(UP, 10.0), refresh_per_second=20,
                                console=console)

    trio.run(main)
    text = out.getvalue()
    assert text.count("LAN→WAN") >= 3  # redrawn several times
    assert "berlin.example" in text
