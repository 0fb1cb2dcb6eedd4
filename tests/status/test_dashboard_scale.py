"""The dashboard, the log lines and `status --json` with a hundred peers (issue 26):
the screen summarises what does not fit, the log summarises quiet peers, the
history's memory does not grow with the peers, and a snapshot is quick."""

from __future__ import annotations

import io
import json
import re
import time
from typing import Any

from rich.console import Console

from bridger.dataplane.accounting import Counters
from bridger.status.dashboard import (
    MAX_LOG_PEERS,
    PEER_SAMPLES,
    History,
    previous_drops,
    render,
    summary_lines,
)
from bridger.status.document import status_document
from tests.status.samples import DEVICE, LOCAL, REMOTE, ipv4, peer

HUNDRED = [peer(f"s{i:03d}", "handshaking" if i in (17, 58) else "down" if i == 90 else "up")
           for i in range(1, 101)]


def hub_snapshot(t: float, counters: Counters, looped: str | None = None) -> dict[str, Any]:
    doc = status_document(counters.snapshot(t), DEVICE, HUNDRED)
    for p in doc["peers"]:
        if p["name"] == looped:
            p["guard"] = {"loop": True, "loop_for": 3.0, "loop_via": "lan"}
    return doc


def sampled(seconds: int, looped: str | None = None) -> tuple[dict[str, Any], History, Counters]:
    c, history = Counters(), History()
    doc: dict[str, Any] = {}
    for t in range(seconds):
        for info in HUNDRED[:40]:
            c.peer(info.name).wan_to_lan(ipv4(LOCAL, REMOTE, 200), float(t))
        doc = hub_snapshot(float(t), c, looped)
        history.sample(doc, float(t))
    return doc, history, c


def draw(doc: dict[str, Any], history: History, width: int, height: int) -> list[str]:
    console = Console(width=width, height=height, record=True, file=io.StringIO(),
                      color_system=None, legacy_windows=False, markup=False, emoji=False)
    console.print(render(doc, history, width, height))
    lines = console.export_text().rstrip("\n").split("\n")
    assert len(lines) <= height, "\n".join(lines)
    assert max(len(line.rstrip()) for line in lines) <= width, "\n".join(lines)
    return lines


def test_a_hundred_peers_in_24_lines_show_the_trouble_first_and_count_the_rest() -> None:
    doc, history, _c = sampled(5, looped="s042")
    lines = draw(doc, history, 80, 23)
    assert lines[0].startswith("bridger 96 UP 2 HANDSHAKING 1 DOWN 1 LOOP"), lines[0]
    shown = [line.split()[0] for line in lines if re.match(r"s\d{3} ", line)]
    rows = list(dict.fromkeys(shown))  # (details rows repeat the names)
    assert rows[0] == "s042"  # the loop first, then the peers that are not up
    assert set(rows[1:4]) == {"s017", "s058", "s090"}, "\n".join(lines)
    more = next(line for line in lines if line.startswith("+"))
    count = int(more.split()[0][1:])
    assert count == 100 - len(rows)
    assert more.endswith(f": {count} up"), more  # the rest, by state


def test_the_rest_line_names_the_states_of_peers_left_out() -> None:
    doc, history, _c = sampled(3)
    lines = draw(doc, history, 80, 8)
    more = next(line for line in lines if line.startswith("+"))
    assert re.match(r"\+\d+ more peers: \d+ up", more), more


def test_log_lines_of_a_hundred_peers_summarise() -> None:
    doc, _history, c = sampled(3)
    history = History(maxlen=2)
    history.sample(doc, 2.0)
    later = hub_snapshot(12.0, c)
    history.sample(later, 12.0)
    lines = summary_lines(later, history, previous_drops(doc))
    assert lines[0].startswith("100 peers: 97 up, 2 handshaking, 1 down"), lines[0]
    named = [line.split()[1] for line in lines[1:] if line.startswith("peer ")]
    assert sorted(named) == ["s017", "s058", "s090"]  # only those not up
    assert len(lines) <= 1 + MAX_LOG_PEERS + 1


def test_the_history_of_a_hundred_peers_stays_small() -> None:
    _doc, history, _c = sampled(PEER_SAMPLES + 60)
    per_peer = [len(values) for _t, values in history._samples]
    assert max(per_peer[:-PEER_SAMPLES]) == 4  # the totals alone
    assert per_peer[-1] == 4 + 4 * 100
    assert history.rate("frames", "rx", peer="s001") is not None
    assert history.series("frames", "rx", 60)  # the sparkline keeps its whole width


def test_status_json_of_a_hundred_peers_is_quick() -> None:
    _doc, _history, c = sampled(2)
    began = time.perf_counter()
    for _ in range(10):
        text = json.dumps(hub_snapshot(3.0, c))
    spent = (time.perf_counter() - began) / 10
    print(f"snapshot + JSON of 100 peers: {spent * 1000:.1f} ms, {len(text)} bytes")
    assert spent < 1.0  # generous: "well under a second" even on a loaded machine
