"""The live terminal dashboard and its plain log-line fallback.

1. The data plane only bumps :class:`~bridger.status.counters.Counters`.
2. Every refresh, :func:`run_dashboard` takes one snapshot (a plain dict) on
   the trio thread and feeds it to :class:`History` for rates and sparklines.
3. :func:`render` (pure: snapshot in, renderable out) lays the sections out in
   the console's size, dropping the least important ones when space is short.
4. Drawing happens in a worker thread so a slow terminal never stalls forwarding.

``bridger status`` reuses :func:`render`, so the daemon's screen and the
status command always show the same thing.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any

import trio
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bridger.status.counters import KINDS

#: Display names of the two directions, keyed by the snapshot's direction keys.
DIRECTIONS = (("tx", "LAN→WAN"), ("rx", "WAN→LAN"))

_STATE_STYLE = {"up": "bold green", "handshaking": "bold yellow", "stale": "bold dark_orange",
                "down": "bold red"}
_SPARK = "▁▂▃▄▅▆▇█"
_KIND_LABELS = {"unicast": "ucast", "broadcast": "bcast", "multicast": "mcast", "arp": "ARP",
                "ipv4": "IPv4", "ipv6": "IPv6", "vlan": "VLAN", "other": "other", "runt": "runt"}


# -- formatting helpers (shared with `bridger status` and the log lines) --------------------------

def fmt_count(n: float) -> str:
    """Compact count: 999, 1.2k, 34.5M."""
    if n < 1000:
        return f"{n:.0f}"
    for unit in ("k", "M", "G", "T"):
        n /= 1000
        if n < 1000 or unit == "T":
            return f"{n:.1f}{unit}" if n < 100 else f"{n:.0f}{unit}"
    raise AssertionError("unreachable")


def fmt_bytes(n: float) -> str:
    """Compact byte size in SI units: 512 B, 1.5 kB, 12.3 MB."""
    return f"{n:.0f} B" if n < 1000 else fmt_count(n) + "B"


def fmt_age(seconds: float | None) -> str:
    """A duration for humans: 45s, 3m12s, 2h05m, 3d04h; '—' when unknown."""
    if seconds is None or math.isnan(seconds):
        return "—"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_peer(link: dict[str, Any]) -> str:
    """'berlin.example (203.0.113.5:55555)', or whatever part of that is known."""
    name, endpoint = link.get("peer_name"), link.get("endpoint")
    if name and endpoint:
        return f"{name} ({endpoint})"
    return str(name or endpoint or "no peer endpoint")


def sparkline(values: Iterable[float], width: int) -> str:
    """Unicode block sparkline of the last ``width`` values, scaled to their maximum."""
    data = list(values)[-width:] if width > 0 else []
    top = max(data, default=0.0)
    if top <= 0:
        return _SPARK[0] * len(data)
    last = len(_SPARK) - 1
    return "".join(_SPARK[min(last, round(v / top * last))] for v in data)


# -- rates ----------------------------------------------------------------------------------------

class History:
    """The last samples of the traffic counters, for rates and sparklines.

    A sample is (time, {"frames.tx": n, "bytes.tx": n, ...}).  Counters going
    backwards (a restarted daemon seen by ``status --watch``) count as zero rate.
    """

    def __init__(self, maxlen: int = 600, step: float = 1.0) -> None:
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=maxlen)
        self.step = step  # seconds per sparkline point

    def __len__(self) -> int:
        return len(self._samples)

    def sample(self, snapshot: dict[str, Any], now: float) -> None:
        values = {f"{metric}.{d}": int(snapshot[metric][d])
                  for metric in ("frames", "bytes") for d, _ in DIRECTIONS}
        if self._samples and now <= self._samples[-1][0]:
            self._samples[-1] = (self._samples[-1][0], values)  # same instant: keep the newest
        else:
            self._samples.append((now, values))

    def rate(self, metric: str, direction: str, window: float = 2.0) -> float | None:
        """Per-second rate of ``metric`` ("frames"/"bytes") over about the last ``window``
        seconds; None until two samples exist."""
        if len(self._samples) < 2:
            return None
        key = f"{metric}.{direction}"
        t_last, last = self._samples[-1]
        t_old, old = self._samples[-2]
        for t, values in reversed(self._samples):
            if t_last - t > window:
                break
            t_old, old = t, values
        if t_last <= t_old:
            t_old, old = self._samples[-2]
        return max(0.0, (last[key] - old[key]) / (t_last - t_old))

    def series(self, metric: str, direction: str, points: int) -> list[float]:
        """Per-second rates at ``step`` spacing, oldest first, at most ``points`` of them."""
        key = f"{metric}.{direction}"
        picked: list[tuple[float, int]] = []
        for t, values in reversed(self._samples):
            if not picked or picked[-1][0] - t >= self.step * 0.95:
                picked.append((t, values[key]))
                if len(picked) > points:
                    break
        picked.reverse()
        return [max(0.0, (v1 - v0) / (t1 - t0))
                for (t0, v0), (t1, v1) in pairwise(picked)]


# -- sections -------------------------------------------------------------------------------------

def _header(snap: dict[str, Any], width: int) -> Text:
    link = snap["link"]
    state = str(link["state"])
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("bridger ", style="bold")
    text.append(f"● {state.upper()}", style=_STATE_STYLE.get(state, "bold"))
    text.append("  peer ")
    text.append(fmt_peer(link), style="cyan")
    text.truncate(width, overflow="ellipsis")
    return text


def _link_line(snap: dict[str, Any], width: int) -> Text:
    link = snap["link"]
    rtt = link["rtt_ms"]
    parts = [
        ("session ", fmt_age(link["session_age"])),
        ("handshake ", fmt_age(link["last_handshake_age"]) + (
            " ago" if link["last_handshake_age"] is not None else "")),
        ("rekeys ", str(link["rekeys"])),
        ("rtt ", "—" if rtt is None else f"{rtt:.1f} ms"),
    ]
    return _pairs(parts, width)


def _iface_line(snap: dict[str, Any], width: int) -> Text:
    return _pairs([(f"{k} ", v) for k, v in snap["interface"].items()], width)


def _pairs(parts: list[tuple[str, str]], width: int, sep: str = "  ") -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for i, (label, value) in enumerate(parts):
        if i:
            text.append(sep)
        text.append(label, style="dim")
        text.append(value)
    text.truncate(width, overflow="ellipsis")
    return text


def _table(width: int) -> Table:
    """A borderless table: header, one rule, rows; columns one space apart.

    Columns get explicit widths so the layout is predictable (no wrapping)."""
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0),
                 expand=False, header_style="bold", show_header=True)


def _traffic(snap: dict[str, Any], history: History, width: int) -> Table:
    table = _table(width)
    table.add_column("", no_wrap=True, width=7)
    for name, column in (("frames", 7), ("bytes", 7), ("fr/s", 6), ("Mbit/s", 7)):
        table.add_column(name, justify="right", no_wrap=True, width=column)
    spark_width = width - (7 + 7 + 7 + 6 + 7 + 5) - 1
    if spark_width >= 8:
        table.add_column("history", justify="right", no_wrap=True, width=spark_width)
    for d, label in DIRECTIONS:
        fps, bps = history.rate("frames", d), history.rate("bytes", d)
        row = [
            label, fmt_count(snap["frames"][d]), fmt_bytes(snap["bytes"][d]),
            "—" if fps is None else fmt_count(fps),
            "—" if bps is None else f"{bps * 8 / 1e6:.2f}",
        ]
        if spark_width >= 8:
            row.append(sparkline(history.series("bytes", d, spark_width), spark_width))
        table.add_row(*row)
    return table


def _kinds(snap: dict[str, Any], width: int) -> Table:
    table = _table(width)
    table.add_column("", no_wrap=True, width=7)
    runts = any(snap["kinds"][d]["runt"] for d, _ in DIRECTIONS)
    shown = [k for k in KINDS if k != "runt" or runts]
    # counts are at most 5 cells ("13.1k"); drop trailing kinds rather than truncate numbers
    fit = max(1, (width - 7) // 6)
    shown = shown[:fit]
    column = max(5, min(7, (width - 7) // len(shown) - 1))
    for kind in shown:
        table.add_column(_KIND_LABELS[kind], justify="right", no_wrap=True, width=column,
                         overflow="ellipsis")
    for d, label in DIRECTIONS:
        table.add_row(label, *(fmt_count(snap["kinds"][d][k]) for k in shown))
    return table


def _drops_line(snap: dict[str, Any], width: int) -> Text:
    drops: dict[str, int] = snap["drops"]
    nonzero = sorted(((n, r) for r, n in drops.items() if n), reverse=True)
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("drops ", style="bold")
    if not nonzero:
        text.append("none", style="green")
    for i, (n, reason) in enumerate(nonzero):
        item = (2 if i else 0) + len(reason) + 1 + len(fmt_count(n))
        later = len(nonzero) - i - 1
        reserve = len(f" +{later} more") if later else 0
        if i and text.cell_len + item + reserve > width:
            text.append(f" +{later + 1} more", style="dim")
            break
        if i:
            text.append("  ")
        text.append(reason, style="red")
        text.append(f" {fmt_count(n)}")
    text.truncate(width, overflow="ellipsis")
    return text


def _fragments_line(snap: dict[str, Any], width: int) -> Text:
    parts = [(f"{k} ", fmt_count(v)) for k, v in snap["fragments"].items()]
    parts.append(("path MTU ", str(snap["link"]["path_mtu"] or "—")))
    text = Text("fragments ", style="bold", no_wrap=True)
    text.append_text(_pairs(parts, max(0, width - 10)))
    return text


def _macs_title(snap: dict[str, Any], width: int) -> Text:
    macs = snap["macs"]
    parts = [(f"{side} ", f"{macs[side]['count']}/{macs[side]['capacity']}")
             for side in ("local", "remote")]
    evicted = macs["local"]["evicted"] + macs["remote"]["evicted"]
    if evicted:
        parts.append(("evicted ", fmt_count(evicted)))
    text = Text("MACs ", style="bold", no_wrap=True)
    text.append_text(_pairs(parts, max(0, width - 5)))
    text.append("  top talkers", style="dim")
    text.truncate(width, overflow="ellipsis")
    return text


def _macs_table(snap: dict[str, Any], width: int, rows: int) -> Table:
    """Top talkers: local and remote side by side when wide enough, else merged."""
    table = _table(width)
    local, remote = snap["macs"]["local"]["top"], snap["macs"]["remote"]["top"]
    if width >= 66:
        with_frames = width >= 80
        for side in ("local", "remote"):
            if side == "remote":
                table.add_column("", width=1)  # gap between the two sides
            table.add_column(side, no_wrap=True, width=17)
            if with_frames:
                table.add_column("frames", justify="right", no_wrap=True, width=6)
            table.add_column("bytes", justify="right", no_wrap=True, width=6)
            table.add_column("seen", justify="right", no_wrap=True, width=5)
        for i in range(min(rows, max(len(local), len(remote)))):
            row: list[str] = []
            for side_rows in (local, remote):
                if side_rows is remote:
                    row.append("")
                if i < len(side_rows):
                    entry = side_rows[i]
                    row += [entry["mac"], fmt_count(entry["frames"]), fmt_bytes(entry["bytes"]),
                            fmt_age(entry["last_seen_age"])]
                    if not with_frames:
                        del row[-3]
                else:
                    row += [""] * (4 if with_frames else 3)
            table.add_row(*row)
        return table
    table.add_column("", no_wrap=True, width=1)
    table.add_column("mac", no_wrap=True, width=17)
    table.add_column("bytes", justify="right", no_wrap=True, width=6)
    table.add_column("seen", justify="right", no_wrap=True, width=5, overflow="ellipsis")
    merged = [("L", e) for e in local] + [("R", e) for e in remote]
    merged.sort(key=lambda item: item[1]["bytes"], reverse=True)
    for side, entry in merged[:rows]:
        table.add_row(side, entry["mac"], fmt_bytes(entry["bytes"]),
                      fmt_age(entry["last_seen_age"]))
    return table


def render(snapshot: dict[str, Any], history: History, width: int, height: int) -> RenderableType:
    """Lay the snapshot out in ``width`` x ``height`` cells.

    Sections are admitted in order of importance while they fit (link state
    first, the MAC table last, which then takes whatever lines remain), and
    shown in a fixed order.  Tables here take 1 header + 1 rule + rows lines.
    """
    width = max(20, width)
    sections: dict[str, tuple[int, Callable[[], RenderableType]]] = {
        "header": (1, lambda: _header(snapshot, width)),
        "link": (1, lambda: _link_line(snapshot, width)),
        "traffic": (4, lambda: _traffic(snapshot, history, width)),
        "drops": (1, lambda: _drops_line(snapshot, width)),
        "kinds": (4, lambda: _kinds(snapshot, width)),
        "fragments": (1, lambda: _fragments_line(snapshot, width)),
        "iface": (1, lambda: _iface_line(snapshot, width)),
        "macs": (3, lambda: _macs_title(snapshot, width)),  # title + table header + rule
    }
    if not snapshot["interface"]:
        del sections["iface"]
    budget = max(1, height)
    admitted: set[str] = set()
    for name, (lines, _) in sections.items():
        if lines <= budget:
            admitted.add(name)
            budget -= lines
    order = ("header", "link", "iface", "traffic", "kinds", "drops", "fragments", "macs")
    parts: list[RenderableType] = []
    for name in order:
        if name not in admitted:
            continue
        parts.append(sections[name][1]())
        if name == "macs" and budget > 0:
            parts.append(_macs_table(snapshot, width, budget))
    return Group(*parts)


# -- loops ----------------------------------------------------------------------------------------

async def run_dashboard(
    get_snapshot: Callable[[], dict[str, Any]],
    *,
    refresh_per_second: float = 4,
    console: Console | None = None,
) -> None:
    """Show the live dashboard until cancelled.

    The snapshot is taken on the trio thread (counters are not thread-safe);
    layout and terminal output run in a worker thread.
    """
    console = console or Console()
    history = History()
    period = 1.0 / refresh_per_second
    with Live(console=console, auto_refresh=False, transient=False) as live:

        def draw(snap: dict[str, Any]) -> None:
            width, height = console.size
            # one spare line: the cursor sits below a non-screen Live region
            live.update(render(snap, history, width, height - 1), refresh=True)

        while True:
            snap = get_snapshot()
            history.sample(snap, trio.current_time())
            await trio.to_thread.run_sync(draw, snap)
            await trio.sleep(period)


def summary_line(snap: dict[str, Any], history: History, previous_drops: dict[str, int]) -> str:
    """One plain log line: link, per-direction rates, drops since ``previous_drops``."""
    link = snap["link"]
    parts = [f"link {link['state']} peer {fmt_peer(link)}"]
    if link["rtt_ms"] is not None:
        parts[0] += f" rtt {link['rtt_ms']:.1f}ms"
    for d, label in DIRECTIONS:
        fps, bps = history.rate("frames", d, window=math.inf), history.rate("bytes", d, math.inf)
        rates = "" if fps is None or bps is None else f" {fps:.0f} fr/s {bps * 8 / 1e6:.2f} Mbit/s"
        parts.append(f"{label.replace('→', '->')} {snap['frames'][d]} frames{rates}")
    new = {r: n - previous_drops.get(r, 0) for r, n in snap["drops"].items()}
    new = {r: n for r, n in new.items() if n > 0}
    drops = f"drops +{sum(new.values())}"
    if new:
        top = sorted(new.items(), key=lambda item: item[1], reverse=True)
        drops += " (" + ", ".join(f"{r} {n}" for r, n in top[:4])
        drops += f", +{len(top) - 4} more)" if len(top) > 4 else ")"
    parts.append(drops)
    return " | ".join(parts)


async def run_log_lines(
    get_snapshot: Callable[[], dict[str, Any]],
    *,
    interval: float = 10,
    log: logging.Logger,
) -> None:
    """``--no-dashboard`` / non-TTY: one summary line per ``interval`` until cancelled."""
    snap = get_snapshot()
    previous = dict(snap["drops"])
    while True:
        history = History(maxlen=2)
        history.sample(snap, trio.current_time())
        await trio.sleep(interval)
        snap = get_snapshot()
        history.sample(snap, trio.current_time())
        log.info("%s", summary_line(snap, history, previous))
        previous = dict(snap["drops"])
