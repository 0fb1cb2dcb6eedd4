"""The dashboard renders one row per peer in a fixed-size console, degrades when small,
never reads names as markup, and redraws on a virtual clock."""

from __future__ import annotations

import io
import logging
import re
import threading
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from rich.console import Console

from bridger.dataplane.accounting import Counters
from bridger.status.dashboard import (
    History,
    fmt_age,
    fmt_bytes,
    fmt_count,
    fmt_number,
    previous_drops,
    render,
    run_dashboard,
    run_log_lines,
    sparkline,
    summary_lines,
)
from bridger.status.document import DeviceInfo, PeerInfo, status_document
from tests.status.samples import (
    BERLIN,
    DEVICE,
    LOCAL,
    PARIS,
    REMOTE,
    StuckTerminal,
    arp_broadcast,
    ipv4,
    peer,
)

FOUR = [BERLIN, PARIS, peer("rome"), peer("oslo", "handshaking", endpoint="192.0.2.77:51820")]


def busy_counters(peers: list[PeerInfo] = FOUR) -> tuple[Counters, History]:
    """Ten seconds of traffic sampled once a second: berlin busy (3 local, 12 remote MACs),
    the other peers a little, peer i sending i frames a second."""
    c, history = Counters(), History()
    for t in range(11):
        berlin = c.peer("berlin")
        for i in range(3):
            berlin.lan_to_wan(ipv4(REMOTE, LOCAL[:5] + bytes([i]), 1000), float(t))
        for i in range(12):
            berlin.wan_to_lan(ipv4(LOCAL, REMOTE[:5] + bytes([i]), 500), float(t))
        berlin.wan_to_lan(arp_broadcast(), float(t))
        for n, info in enumerate(peers[1:], start=1):
            for _ in range(n):
                c.peer(info.name).lan_to_wan(ipv4(REMOTE, LOCAL, 100), float(t))
        history.sample(status_document(c.snapshot(float(t)), DEVICE, peers), float(t))
    c.peer("berlin").tap_write_failed()
    return c, history


def draw(snapshot: dict[str, Any], history: History, width: int, height: int,
         console: Console | None = None) -> list[str]:
    """Render into a recording console; check it fits; return the lines."""
    console = console or Console(width=width, height=height, record=True, file=io.StringIO(),
                                 color_system=None, legacy_windows=False,
                                 markup=False, emoji=False)
    console.print(render(snapshot, history, width, height))
    lines = console.export_text().rstrip("\n").split("\n")
    assert len(lines) <= height, "\n".join(lines)
    assert max(len(line.rstrip()) for line in lines) <= width, "\n".join(lines)
    return lines


def row(lines: list[str], name: str) -> list[str]:
    """The first line that starts with ``name``, split into words."""
    return next(line for line in lines if line.startswith(name + " ")).split()


def test_full_dashboard_fits_80x24_with_four_peers() -> None:
    c, history = busy_counters()
    doc = status_document(c.snapshot(10.0), DEVICE, FOUR)
    lines = draw(doc, history, 80, 23)  # the dashboard keeps a line
    text = "\n".join(lines)
    assert lines[0] == ("bridger 2 UP 1 HANDSHAKING 1 DOWN  mesh  lan eth1  bridge br0  "
                        "listen [::]:55555")
    for expected in [
        "peer", "state", "endpoint", "rtt ms", "tx fr", "rx fr", "tx Mb/s", "rx Mb/s", "drops",
        "session", "last hs", "rekeys", "MTU", "MACs",
        "LAN→WAN", "WAN→LAN", "frames", "bytes", "fr/s", "Mbit/s",
        "ucast", "bcast", "ARP", "IPv4", "IPv6", "VLAN",
        "auth_failed 12", "replay 3", "malformed 2", "tap_write_failed 1 +1 more",
    ]:
        assert expected in text, f"{expected!r} missing from\n{text}"
    assert "+" not in text.split("LAN→WAN")[0], "all four peers have a row"
    # one row per peer, in config order while all fit: name state endpoint rtt tx rx rates drops
    assert row(lines, "berlin") == ["berlin", "up", "203.0.113.5:55555", "14.2", "33", "143",
                                    "0.02", "0.05", "16"]
    assert row(lines, "paris")[:3] == ["paris", "down", "—"]
    assert row(lines, "oslo")[:3] == ["oslo", "handshaking", "192.0.2.77:51820"]
    peer_rows = [i for i, line in enumerate(lines)
                 if line.split()[:1] in (["berlin"], ["paris"], ["rome"], ["oslo"])]
    assert [lines[i].split()[0] for i in peer_rows[:4]] == ["berlin", "paris", "rome", "oslo"]
    # details row: session, last handshake, handshakes, rekeys, path MTU and how it
    # was learnt, MACs behind berlin
    assert row(lines, "berlin") != (details := next(
        line.split() for line in lines[peer_rows[3] + 1:] if line.startswith("berlin ")))
    assert details[:8] == ["berlin", "1h02m", "1m10s", "3", "2", "1420", "probe", "12"]
    assert row(lines, "oslo")[3:5] == ["1.50", "33"]
    # all peers LAN->WAN: berlin 3 x 1000 B/s, the others 1 + 2 + 3 x 100 B/s, for 11 s
    tx_row = next(line for line in lines if line.startswith("LAN→WAN"))
    assert tx_row.split()[1:5] == ["99", "39.6kB", "9", "0.03"]
    assert "█" in tx_row  # sparkline present


def test_more_peers_than_rows_shows_the_busiest_and_counts_the_rest() -> None:
    peers = [peer(f"site{i:02d}") for i in range(30)]
    c, history = Counters(), History()
    for t in range(3):
        for i, info in enumerate(peers):
            busy = 100 if i in (7, 21) else 1  # two busy peers deep in the list
            for _ in range(busy if t else 1):
                c.peer(info.name).wan_to_lan(ipv4(LOCAL, REMOTE, 500), float(t))
        history.sample(status_document(c.snapshot(float(t)), DEVICE, peers), float(t))
    lines = draw(status_document(c.snapshot(2.0), DEVICE, peers), history, 80, 23)
    names = [line.split()[0] for line in lines if line.startswith("site")]
    assert names[:2] == ["site07", "site21"], "\n".join(lines)  # the busiest first
    more = next(line for line in lines if re.match(r"\+\d+ more peers", line))
    assert int(more.split()[0][1:]) == 30 - len(set(names))
    assert lines[0].startswith("bridger 30 UP  mesh")


@pytest.mark.parametrize(("width", "height"), [(80, 23), (80, 12), (60, 15), (40, 8), (30, 3),
                                               (20, 1), (120, 40), (200, 60)])
@pytest.mark.parametrize("count", [0, 1, 4, 12])
def test_degrades_to_fit(width: int, height: int, count: int) -> None:
    peers = FOUR[:count] if count <= 4 else [*FOUR, *(peer(f"x{i}") for i in range(count - 4))]
    c, history = busy_counters(peers) if peers else (Counters(), History())
    lines = draw(status_document(c.snapshot(10.0), DEVICE, peers), history, width, height)
    assert lines[0].startswith("bridger")  # the header (peers by state) always survives
    if height >= 23 and count:
        assert "berlin" in "\n".join(lines)


def test_down_peer_without_endpoint_renders() -> None:
    device = DeviceInfo(interface={"lan": "eth1"})
    lines = draw(status_document(Counters().snapshot(0.0), device, [PARIS]), History(), 80, 23)
    text = "\n".join(lines)
    assert lines[0].startswith("bridger 1 DOWN  mesh")
    assert row(lines, "paris")[:5] == ["paris", "down", "—", "—", "0"]
    assert "drops none" in text
    assert "local 0/1024" in text


def test_no_peers_renders() -> None:
    lines = draw(status_document(Counters().snapshot(0.0), DeviceInfo(), []), History(), 80, 23)
    assert lines[0].startswith("bridger no peers")


# -- user, host and network strings are never markup or emoji (issue 12 item 5) -------------------

#: A MAC containing ":cd:" (the emoji code for an optical disc), and names that look like markup.
MAC_CD = bytes.fromhex("aacdef000001")
MAC_SMILE = bytes.fromhex("02cdcd000002")
HOSTILE = PeerInfo(name="[bold]x:smile:", public_key="[red]key:cd:", state="up",
                   endpoint="[link=http://x]e[/link]:1", host="h")


def hostile_snapshot() -> tuple[dict[str, Any], History]:
    c, history = Counters(), History()
    plain = peer("plain")
    device = DeviceInfo(interface={"lan": "[bold]eth1", "bridge": ":smile:", "listen": "[::]:1"},
                        drops={"[i]odd:cd:": 1})
    for t in range(3):
        c.peer(HOSTILE.name).lan_to_wan(ipv4(REMOTE, MAC_CD, 100), float(t))
        c.peer(HOSTILE.name).wan_to_lan(ipv4(LOCAL, MAC_SMILE, 100), float(t))
        c.peer("plain").lan_to_wan(ipv4(REMOTE, LOCAL, 100), float(t))
        history.sample(status_document(c.snapshot(float(t)), device, [HOSTILE, plain]), float(t))
    return status_document(c.snapshot(3.0), device, [HOSTILE, plain]), history


@pytest.mark.parametrize("width", [80, 120])
def test_names_macs_and_addresses_render_verbatim(width: int) -> None:
    """Drawn on a console with markup and emoji ON (as rich's default Console, e.g. in
    `lab demo`): the renderable itself must carry no markup."""
    snap, history = hostile_snapshot()
    console = Console(width=width, height=60, record=True, file=io.StringIO(), color_system=None,
                      markup=True, emoji=True)
    lines = draw(snap, history, width, 60, console)
    text = "\n".join(lines)
    for verbatim in ["aa:cd:ef:00:00:01", "02:cd:cd:00:00:02", "[bold]eth1", ":smile:",
                     "[i]odd:cd: 1"]:
        assert verbatim in text, f"{verbatim!r} not drawn verbatim in\n{text}"
    assert "💿" not in text and "😄" not in text
    assert "[bold]x:smile" in text and "[link=http://x]" in text
    # columns line up: the hostile peer's numbers sit where the plain peer's do
    hostile_row = next(line for line in lines if line.startswith("[bold]x:smile"))
    plain_row = next(line for line in lines if line.startswith("plain "))
    assert hostile_row.index(" up ") == plain_row.index(" up ")
    assert hostile_row.rstrip().rfind(" ") == plain_row.rstrip().rfind(" ")
    # and in the MAC table a ':cd:' MAC takes exactly 17 cells like any other
    mac_rows = [line for line in lines if "aa:cd:ef:00:00:01" in line]
    assert mac_rows and all(line.index("aa:cd:ef:00:00:01") == 0 for line in mac_rows)
    local_top = [line for line in lines if re.match(r"[0-9a-f]{2}(:[0-9a-f]{2}){5} ", line)]
    assert len({len(line[:17]) for line in local_top}) == 1


def test_status_console_prints_names_verbatim() -> None:
    """The log lines too: no markup is ever interpreted in them either."""
    snap, history = hostile_snapshot()
    lines = summary_lines(snap, history, {})
    assert lines[0].startswith("peer [bold]x:smile: up [link=http://x]e[/link]:1")
    assert any("[i]odd:cd: 1" in line for line in lines)


# -- rates and helpers ----------------------------------------------------------------------------

def test_history_rates_per_peer_and_reset() -> None:
    h = History()
    c = Counters()
    snap = status_document(c.snapshot(0.0), DEVICE, [BERLIN])
    h.sample(snap, 0.0)
    assert h.rate("bytes", "tx") is None
    snap["bytes"]["tx"], snap["frames"]["rx"] = 1000, 10
    snap["peers"][0]["bytes"]["tx"] = 400
    h.sample(snap, 1.0)
    snap["bytes"]["tx"] = 3000
    h.sample(snap, 2.0)
    assert h.rate("bytes", "tx", window=1.0) == 2000.0
    assert h.rate("bytes", "tx", window=5.0) == 1500.0
    assert h.rate("frames", "rx") == 5.0
    assert h.series("bytes", "tx", 10) == [1000.0, 2000.0]
    assert h.rate("bytes", "tx", window=5.0, peer="berlin") == 200.0
    assert h.rate("bytes", "tx", peer="nobody") is None
    # a peer that appears later gets a rate from its second sample on
    snap = status_document(c.snapshot(3.0), DEVICE, [BERLIN, PARIS])
    h.sample(snap, 3.0)
    assert h.rate("bytes", "rx", peer="paris") is None
    snap["peers"][1]["bytes"]["rx"] = 50
    h.sample(snap, 4.0)
    assert h.rate("bytes", "rx", peer="paris") == 50.0
    assert h.series("bytes", "rx", 10, peer="paris") == [50.0]
    snap["bytes"]["tx"] = 0  # daemon restarted under `status --watch`
    h.sample(snap, 5.0)
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
    (fmt_number, None, "—"), (fmt_number, 0.444, "0.44"), (fmt_number, 14.25, "14.2"),
    (fmt_number, 950.4, "950"), (fmt_number, 12345.0, "12345"),
])
def test_formatting(fn: Any, value: Any, text: str) -> None:
    assert fn(value) == text


def test_summary_lines_per_peer_rates_and_new_drops() -> None:
    c, history = busy_counters()
    snap = status_document(c.snapshot(10.0), DEVICE, FOUR)
    previous = {"berlin": {"auth_failed": 10}, "": {"malformed": 2}}
    lines = summary_lines(snap, history, previous)
    assert len(lines) == 5  # four peers and the device's new handshake_mac1 drop
    berlin = lines[0]
    assert berlin.startswith("peer berlin up 203.0.113.5:55555 rtt 14.2ms")
    assert "LAN->WAN 33 frames 3 fr/s 0.02 Mbit/s" in berlin
    assert "WAN->LAN 143 frames 13 fr/s 0.05 Mbit/s" in berlin
    assert berlin.endswith("drops +6 (replay 3, auth_failed 2, tap_write_failed 1)")
    assert lines[1].startswith("peer paris down no endpoint | LAN->WAN 11 frames 1 fr/s")
    assert lines[1].endswith("drops +0")
    assert lines[4] == "device 4 peers | drops +1 (handshake_mac1 1)"
    assert summary_lines(snap, History(), previous_drops(snap)) == [
        line.split(" | ")[0] + " | LAN->WAN " + str(p["frames"]["tx"]) + " frames | WAN->LAN "
        + str(p["frames"]["rx"]) + " frames | drops +0"
        for line, p in zip(lines, snap["peers"], strict=False)]


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_run_log_lines_one_line_per_peer_per_interval() -> None:
    c = Counters()
    peers = [BERLIN, PARIS]
    log = logging.getLogger("test.status.lines")
    handler = ListHandler()
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_log_lines(
                lambda: status_document(c.snapshot(0.0), DEVICE, peers), interval=10, log=log))
            await trio.sleep(0.5)  # traffic never at the logger's wake-up instants
            for _ in range(25):  # berlin: 100 frames/s for 25 s
                for _ in range(100):
                    c.peer("berlin").lan_to_wan(ipv4(REMOTE, LOCAL, 125), 0.0)
                await trio.sleep(1)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        log.removeHandler(handler)
    assert len(handler.lines) == 4  # two intervals, two peers each
    for line in handler.lines[0::2]:
        assert line.startswith("peer berlin") and "100 fr/s 0.10 Mbit/s" in line, line
    for line in handler.lines[1::2]:
        assert line.startswith("peer paris") and "LAN->WAN 0 frames 0 fr/s" in line, line


def test_run_dashboard_redraws_on_the_virtual_clock() -> None:
    """Deterministic: a MockClock drives the refresh period and the rates, and the loop
    stops after a given number of frames (no wall-clock timeout deciding how many)."""
    c = Counters()
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, force_terminal=True, color_system=None,
                      markup=False, emoji=False)
    snapshots_at: list[float] = []

    def get_snapshot() -> dict[str, Any]:
        snapshots_at.append(trio.current_time())
        for _ in range(1000):  # 1000 frames of 125 B per refresh, 4 refreshes a second
            c.peer("berlin").lan_to_wan(ipv4(REMOTE, LOCAL, 125), 0.0)
        return status_document(c.snapshot(0.0), DEVICE, [BERLIN])

    async def main() -> None:
        await run_dashboard(get_snapshot, refresh_per_second=4, console=console, frames=5)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert snapshots_at == [0.0, 0.25, 0.5, 0.75, 1.0]
    text = out.getvalue()
    for total in ("1.0k", "2.0k", "3.0k", "4.0k", "5.0k"):  # each frame drawn, in order
        assert f"berlin up 203.0.113.5:55555 14.2 {total}" in re.sub(r" +", " ", text), total
    # 4000 frames/s of 125 B = 4.00 Mbit/s, computed on virtual time
    assert re.search(r"berlin +up .* 4\.00 +0\.00 ", text)


def test_stuck_terminal_does_not_hold_up_cancellation() -> None:
    """The daemon restores the host network only after its nursery exits: a terminal
    that stopped taking output must not keep the dashboard task alive."""
    terminal = StuckTerminal()
    console = Console(file=terminal, width=80, height=24, force_terminal=True,
                      color_system=None, markup=False, emoji=False)
    c = Counters()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(
                run_dashboard, lambda: status_document(c.snapshot(0.0), DEVICE, [BERLIN]),
                console=console))
            await trio.to_thread.run_sync(terminal.entered.wait, 5)
            nursery.cancel_scope.cancel()  # SIGTERM while the terminal is stuck

    finished = threading.Event()

    def run() -> None:
        trio.run(main)
        finished.set()

    threading.Thread(target=run, daemon=True).start()
    try:
        assert finished.wait(10), "cancelling the dashboard waited for the stuck terminal"
    finally:
        terminal.release.set()
