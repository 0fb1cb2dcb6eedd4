"""The live terminal dashboard and its plain log-line fallback.

1. The data plane only bumps :class:`~bridger.dataplane.accounting.PeerCounters`.
2. Every refresh, :func:`run_dashboard` takes one snapshot (a plain dict) on
   the trio thread and feeds it to :class:`History` for rates and sparklines.
3. :func:`render` (pure: snapshot in, renderable out) lays the sections out in
   the console's size, dropping the least important ones when space is short:
   one row per peer (the busiest first when not all fit, then "+N more").
4. Drawing happens in a worker thread so a slow terminal never stalls forwarding.

Every string that comes from the network, the host or the config (peer names,
endpoints, interface names, drop reasons, MACs) reaches rich as a
:class:`~rich.text.Text`, never as a ``str``: rich would parse a ``str`` for
markup (``[bold]``) and emoji codes (``:cd:`` in a MAC address).

``bridger status`` reuses :func:`render`, so the daemon's screen and the
status command always show the same thing.

rich is imported by the functions that draw, not by this module: a daemon
without a terminal uses only the log lines and never loads it (memory).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import trio

from bridger.dataplane.accounting import KINDS
from bridger.status.document import PEER_STATES

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text

#: Display names of the two directions, keyed by the snapshot's direction keys.
DIRECTIONS = (("tx", "LAN→WAN"), ("rx", "WAN→LAN"))

#: Seconds the dashboard waits, when stopped, for the terminal to take its last frame.
STOP_TIMEOUT = 2.0

#: Peer rows the layout keeps before it gives lines to the less important sections.
MIN_PEER_ROWS = 4

_STATE_STYLE = {"up": "bold green", "handshaking": "bold yellow", "stale": "bold dark_orange",
                "down": "bold red", "loop": "bold white on red"}
#: What a peer blocked by loop protection shows instead of its link state.
LOOP = "loop"
_SPARK = "▁▂▃▄▅▆▇█"
_KIND_LABELS = {"unicast": "ucast", "broadcast": "bcast", "multicast": "mcast", "arp": "ARP",
                "ipv4": "IPv4", "ipv6": "IPv6", "vlan": "VLAN", "other": "other", "runt": "runt"}


# -- formatting helpers (shared with `bridger status` and the log lines) --------------------------

def fmt_count(n: float) -> str:
    """Compact count: 999, 1.2k, 34.5M (at most 5 characters)."""
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


def fmt_mtu(peer: dict[str, Any]) -> str:
    """A peer's path MTU and how it was learnt: "1492 probe", "1280 base"; '—' unknown."""
    if not peer.get("path_mtu"):
        return "—"
    source = peer.get("path_mtu_source") or ""
    return f"{peer['path_mtu']} {source}".rstrip()


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


def fmt_number(value: float | None) -> str:
    """A measurement in at most 5 characters: 0.44, 14.2, 950; '—' when unknown."""
    if value is None:
        return "—"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def fmt_mbit(bytes_per_second: float | None) -> str:
    """A byte rate as Mbit/s, see :func:`fmt_number`."""
    return fmt_number(None if bytes_per_second is None else bytes_per_second * 8 / 1e6)


def sparkline(values: Iterable[float], width: int) -> str:
    """Unicode block sparkline of the last ``width`` values, scaled to their maximum."""
    data = list(values)[-width:] if width > 0 else []
    top = max(data, default=0.0)
    if top <= 0:
        return _SPARK[0] * len(data)
    last = len(_SPARK) - 1
    return "".join(_SPARK[min(last, round(v / top * last))] for v in data)


def _plain(value: object, style: str = "") -> Text:
    """Any value as literal text: never parsed for markup or emoji."""
    from rich.text import Text

    return Text(str(value), style=style, no_wrap=True, overflow="ellipsis")


def is_looped(peer: dict[str, Any]) -> bool:
    """True while loop protection blocks the peer (``peers[].guard.loop``)."""
    guard = peer.get("guard")
    return bool(guard and guard.get("loop"))


def peer_state(peer: dict[str, Any]) -> tuple[str, str]:
    """A peer's state as shown, and its style: ``LOOP 12s`` (blocked by loop
    protection for that long) instead of the link state, else the link state."""
    if is_looped(peer):
        return f"LOOP {fmt_age(peer['guard'].get('loop_for'))}", _STATE_STYLE[LOOP]
    return peer["state"], _STATE_STYLE.get(peer["state"], "")


def guard_settings(guard: dict[str, Any] | None) -> str:
    """A peer's guard settings in a few cells: ``flood 2.0k`` (flooded frames/s;
    ``flood off``), ``local dhcp,ra`` (kept local), ``vlan u,10,20`` (VLANs that
    cross, ``u``: untagged), ``loop off``; empty without a guard."""
    if guard is None:
        return ""
    rate = guard.get("flood_rate", 0)
    parts = [f"flood {fmt_count(rate)}" if rate else "flood off"]
    local = [key for key in ("dhcp", "ra") if guard.get(key) == "local"]
    if local:
        parts.append("local " + ",".join(local))
    vlans = guard.get("vlans")
    if vlans is not None:
        parts.append("vlan " + ",".join(["u"] * bool(guard.get("untagged"))
                                        + [str(v) for v in vlans]))
    if guard.get("loop_protection") is False or (
            "loop_protection" not in guard and "loops_detected" not in guard):
        parts.append("loop off")
    return " ".join(parts)


# -- rates ----------------------------------------------------------------------------------------

#: A sampled value: (peer name or None for the device totals, "frames"/"bytes", "tx"/"rx").
_Key = tuple[str | None, str, str]


#: Samples that keep per-peer values (the newest); older ones keep the totals.
PEER_SAMPLES = 40
_TOTAL_KEYS = tuple((None, m, d) for m in ("frames", "bytes") for d, _ in DIRECTIONS)


class History:
    """The last samples of the traffic counters, for rates and sparklines.

    A sample is (time, {(peer, metric, direction): n}) with peer None for the
    device totals.  Counters going backwards (a restarted daemon seen by
    ``status --watch``) count as zero rate; a peer missing from older samples
    gets a rate once two samples hold it.
    """

    def __init__(self, maxlen: int = 600, step: float = 1.0) -> None:
        self._samples: deque[tuple[float, dict[_Key, int]]] = deque(maxlen=maxlen)
        self.step = step  # seconds per sparkline point

    def __len__(self) -> int:
        return len(self._samples)

    def sample(self, snapshot: dict[str, Any], now: float) -> None:
        values: dict[_Key, int] = {}
        for peer, counts in [(None, snapshot), *((p["name"], p) for p in snapshot["peers"])]:
            for metric in ("frames", "bytes"):
                for d, _ in DIRECTIONS:
                    values[(peer, metric, d)] = int(counts[metric][d])
        samples = self._samples
        if samples and now <= samples[-1][0]:
            samples[-1] = (samples[-1][0], values)  # same instant: keep the newest
        else:
            samples.append((now, values))
            # Per-peer rates look a few seconds back only; the sparklines (all
            # peers) the whole history: older samples keep the totals alone, so
            # 100 peers cost no more memory than one.
            if len(samples) > PEER_SAMPLES:
                t, old = samples[-PEER_SAMPLES - 1]
                if len(old) > len(_TOTAL_KEYS):
                    samples[-PEER_SAMPLES - 1] = (t, {k: old[k] for k in _TOTAL_KEYS if k in old})

    def rate(self, metric: str, direction: str, window: float = 2.0,
             peer: str | None = None) -> float | None:
        """Per-second rate of ``metric`` ("frames"/"bytes") over about the last ``window``
        seconds, for ``peer`` (None: all peers); None until two samples hold it."""
        key = (peer, metric, direction)
        if len(self._samples) < 2 or key not in self._samples[-1][1]:
            return None
        t_last, last = self._samples[-1]
        old: tuple[float, int] | None = None
        for t, values in reversed(self._samples):
            if t < t_last and key in values:
                if old is not None and t_last - t > window:
                    break
                old = (t, values[key])
        if old is None:
            return None
        return max(0.0, (last[key] - old[1]) / (t_last - old[0]))

    def series(self, metric: str, direction: str, points: int,
               peer: str | None = None) -> list[float]:
        """Per-second rates at ``step`` spacing, oldest first, at most ``points`` of them."""
        key = (peer, metric, direction)
        picked: list[tuple[float, int]] = []
        for t, values in reversed(self._samples):
            if key not in values:
                break
            if not picked or picked[-1][0] - t >= self.step * 0.95:
                picked.append((t, values[key]))
                if len(picked) > points:
                    break
        picked.reverse()
        return [max(0.0, (v1 - v0) / (t1 - t0))
                for (t0, v0), (t1, v1) in pairwise(picked)]

    def busyness(self, peer: dict[str, Any]) -> tuple[float, int]:
        """Sort key of a peer element, busiest largest: recent byte rate, then total bytes."""
        name = peer["name"]
        rate = sum(self.rate("bytes", d, peer=name) or 0.0 for d, _ in DIRECTIONS)
        return rate, int(peer["bytes"]["tx"]) + int(peer["bytes"]["rx"])


# -- tables ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Column:
    """One table column: ``width`` 0 means it takes the room left, at least ``flex_min``
    and at most ``flex_max`` cells."""

    key: str
    header: str
    width: int
    justify: str = "right"
    flex_min: int = 0
    flex_max: int = 0


def _table() -> Table:
    """A borderless table: header, one rule, rows; columns one space apart.

    Columns get explicit widths so the layout is predictable (no wrapping)."""
    from rich import box
    from rich.table import Table

    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0),
                 expand=False, header_style="bold", show_header=True)


def _fit(columns: list[_Column], width: int, drop_order: Iterable[str]) -> list[_Column]:
    """The columns that fit in ``width`` cells, dropping keys in ``drop_order`` first;
    the flexible column gets what is left."""
    shown = list(columns)
    for key in (None, *drop_order):
        shown = [c for c in shown if c.key != key]
        fixed = sum(c.width for c in shown) + len(shown) - 1
        flex = [c for c in shown if c.width == 0]
        room = width - fixed
        if not flex and room >= 0:
            return shown
        if flex and room >= flex[0].flex_min:
            room = min(room, flex[0].flex_max)
            return [c if c.width else _Column(c.key, c.header, room, c.justify) for c in shown]
    return shown[:1]


def _fitted_table(columns: list[_Column], rows: list[dict[str, Text]]) -> Table:
    table = _table()
    for column in columns:
        table.add_column(column.header, justify=column.justify,  # type: ignore[arg-type]
                         no_wrap=True, width=column.width, overflow="ellipsis")
    for row in rows:
        table.add_row(*(row[c.key] for c in columns))
    return table


def _name_width(peers: list[dict[str, Any]]) -> int:
    return max(4, min(15, max((len(p["name"]) for p in peers), default=4)))


#: Paths that need no column: every peer dialled as configured (or unknown).
_PLAIN_PATHS = ("—", "direct conf")
#: How an endpoint was learnt, in a few letters (status's endpoint_source).
_SOURCE_SHORT = {"configured": "conf", "learnt": "learnt", "introduced": "intro"}


def peer_path(peer: dict[str, Any]) -> str:
    """"direct intro", "via site-a", "—" (issue 23; older documents: "—")."""
    path = peer.get("path")
    if path == "relayed":
        return f"via {peer.get('via') or '?'}"
    if path == "direct":
        how = _SOURCE_SHORT.get(peer.get("endpoint_source") or "", "")
        return f"direct {how}".rstrip()
    return "—"


def _peers_table(peers: list[dict[str, Any]], history: History, width: int,
                 rest: list[dict[str, Any]]) -> RenderableType:
    """One row per peer: state, endpoint, RTT, frames and Mbit/s each way, drops."""
    from rich.console import Group
    from rich.text import Text

    states = {p["name"]: peer_state(p) for p in peers}
    state_width = max(5, max((len(label) for label, _ in states.values()), default=5))
    columns = [
        _Column("name", "peer", _name_width(peers), "left"),
        _Column("state", "state", state_width, "left"),
        _Column("endpoint", "endpoint", 0, "left", flex_min=9, flex_max=47),  # [IPv6]:port
        _Column("rtt", "rtt ms", 6),
        _Column("tx", "tx fr", 5),
        _Column("rx", "rx fr", 5),
        _Column("tx_rate", "tx Mb/s", 7),
        _Column("rx_rate", "rx Mb/s", 7),
        _Column("drops", "drops", 5),
    ]
    paths = [peer_path(p) for p in peers]
    if any(path not in _PLAIN_PATHS for path in paths):
        # Only where NAT traversal shows: a relay, an introduced or learnt endpoint.
        columns.insert(3, _Column("path", "path", max(4, *map(len, paths)), "left"))
    columns = _fit(columns, width, ("rx_rate", "tx_rate", "rtt", "path", "rx", "drops", "tx",
                                    "endpoint"))
    rows = []
    for peer in peers:
        name = peer["name"]
        rows.append({
            "name": _plain(name, "cyan"),
            "state": _plain(*states[name]),
            "endpoint": _plain(peer["endpoint"] or "—"),
            "path": _plain(peer_path(peer)),
            "rtt": _plain(fmt_number(peer["rtt_ms"])),
            "tx": _plain(fmt_count(peer["frames"]["tx"])),
            "rx": _plain(fmt_count(peer["frames"]["rx"])),
            "tx_rate": _plain(fmt_mbit(history.rate("bytes", "tx", peer=name))),
            "rx_rate": _plain(fmt_mbit(history.rate("bytes", "rx", peer=name))),
            "drops": _plain(fmt_count(sum(peer["drops"].values())),
                            "red" if any(peer["drops"].values()) else ""),
        })
    table = _fitted_table(columns, rows)
    if not rest:
        return table
    more = len(rest)
    line = Text(f"+{more} more peer{'s' if more > 1 else ''}", style="dim", no_wrap=True,
                overflow="ellipsis")
    counts = _counts(rest)
    for i, (state, n) in enumerate(counts.items()):
        line.append(": " if i == 0 else ", ", style="dim")
        line.append(f"{n} {state}", style="dim" if state == "up" else _STATE_STYLE.get(state, ""))
    line.truncate(width, overflow="ellipsis")
    return Group(table, line)


def _details_table(peers: list[dict[str, Any]], width: int) -> Table:
    """Per-peer session details: ages, handshakes, rekeys, path MTU, MACs, fragments,
    guard settings, key.  With guards, their settings take the room left and the key
    (44 cells) is shown only where there is room for it."""
    guards = {p["name"]: guard_settings(p.get("guard")) for p in peers}
    guard_width = max((len(text) for text in guards.values()), default=0)
    columns = [
        _Column("name", "peer", _name_width(peers), "left"),
        _Column("session", "session", 7),
        _Column("handshake", "last hs", 7),
        _Column("handshakes", "hshakes", 7),
        _Column("rekeys", "rekeys", 6),
        _Column("mtu", "path MTU", 10),
        _Column("macs", "MACs", 5),
        _Column("fragments", "frags", 5),
        _Column("key", "public key", 0, "left", flex_min=10, flex_max=44),  # base64
    ]
    drop_order = ["key", "fragments", "handshakes", "macs", "handshake", "rekeys", "session",
                  "mtu"]
    if guard_width:
        columns[-1] = _Column("key", "public key", 44, "left")
        columns.insert(-1, _Column("guard", "guards", 0, "left", flex_min=10,
                                   flex_max=max(6, guard_width)))
        drop_order.insert(3, "guard")
    columns = _fit(columns, width, drop_order)
    rows = []
    for peer in peers:
        fragments = peer["fragments"]
        rows.append({
            "name": _plain(peer["name"], "cyan"),
            "session": _plain(fmt_age(peer["session_age"])),
            "handshake": _plain(fmt_age(peer["last_handshake_age"])),
            "handshakes": _plain(fmt_count(peer["handshakes"])),
            "rekeys": _plain(fmt_count(peer["rekeys"])),
            "mtu": _plain(fmt_mtu(peer)),
            "macs": _plain(fmt_count(peer["macs"]["remote"]["count"])),
            "fragments": _plain(fmt_count(fragments.get("sent", 0)
                                          + fragments.get("received", 0))),
            "guard": _plain(guards[peer["name"]]),
            "key": _plain(peer["public_key"], "dim"),
        })
    return _fitted_table(columns, rows)


# -- lines and device-wide sections ---------------------------------------------------------------

def _pairs(parts: list[tuple[str, str]], width: int, sep: str = "  ") -> Text:
    """``label value`` pairs; labels are ours, values may come from anywhere."""
    from rich.text import Text

    text = Text(no_wrap=True, overflow="ellipsis")
    for i, (label, value) in enumerate(parts):
        if i:
            text.append(sep)
        text.append(label, style="dim")
        text.append(value)
    text.truncate(width, overflow="ellipsis")
    return text


#: Peer states from the best to the worst, the order the header counts them in
#: (a peer blocked by loop protection counts as LOOP, whatever its link state).
_STATE_ORDER = ("up", "handshaking", "stale", "down", LOOP)
assert set(_STATE_ORDER) == {*PEER_STATES, LOOP}


def state_counts(snap: dict[str, Any]) -> dict[str, int]:
    """How many peers are in each state, best state first (zero states left out)."""
    return _counts(snap["peers"])


def _counts(peers: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(_STATE_ORDER, 0)
    for peer in peers:
        state = LOOP if is_looped(peer) else peer["state"]
        counts[state] = counts.get(state, 0) + 1
    return {state: n for state, n in counts.items() if n}


def _header(snap: dict[str, Any], width: int) -> Text:
    """bridger, peers by state, mode and the local interfaces."""
    from rich.text import Text

    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("bridger ", style="bold")
    peers = snap["peers"]
    if not peers:
        text.append("no peers", style="bold red")
    for i, (state, n) in enumerate(state_counts(snap).items()):
        text.append(" " if i else "")
        text.append(f"{n} {state.upper()}", style=_STATE_STYLE.get(state, "bold"))
    text.append("  ")
    ha = snap.get("ha")
    if ha is not None:  # two gateways per site: the role first
        role = str(ha["role"])
        text.append(role.upper(), style="bold green" if role == "active" else "bold yellow")
        text.append("  ")
    parts = [("", str(snap["mode"]))]
    parts += [(f"{k} ", v) for k, v in snap["interface"].items()]
    text.append_text(_pairs(parts, width))
    text.truncate(width, overflow="ellipsis")
    return text


def _traffic(snap: dict[str, Any], history: History, width: int) -> Table:
    """All peers together: frames, bytes and rates each way, with a sparkline."""
    table = _table()
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
        table.add_row(*map(_plain, row))
    return table


def _kinds(snap: dict[str, Any], width: int) -> Table:
    table = _table()
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
        table.add_row(_plain(label), *(_plain(fmt_count(snap["kinds"][d][k])) for k in shown))
    return table


def _drops_line(snap: dict[str, Any], width: int) -> Text:
    """Drops of the whole device (every peer included) by reason, the biggest first."""
    from rich.text import Text

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


def _guard_needed(snap: dict[str, Any]) -> bool:
    """The guard line is shown once there is something to tell: a loop, a MAC flap."""
    guard = snap.get("guard")
    return bool(guard and (guard["loops_detected"] or guard["blocked"]
                           or guard["mac_flaps"]["total"]))


def _guard_line(snap: dict[str, Any], width: int) -> Text:
    """Loop protection and MAC flaps of the whole device: ``loops detected N`` (red
    while a peer is blocked: its row says LOOP), MAC flaps (total, per second over
    the last 10 s) and the MAC that flaps most, with the two sides it moves between."""
    from rich.text import Text

    guard = snap["guard"]
    text = Text("guard ", style="bold", no_wrap=True, overflow="ellipsis")
    text.append("loops detected ", style="dim")
    text.append(fmt_count(guard["loops_detected"]), style="bold red" if guard["blocked"] else "")
    flaps = guard["mac_flaps"]
    if flaps["total"]:
        text.append("  MAC flaps ", style="dim")
        text.append(f"{fmt_count(flaps['total'])} {fmt_number(flaps['rate'])}/s",
                    style="yellow" if flaps["rate"] else "")
        if flaps["worst"]:
            worst = flaps["worst"][0]
            text.append("  worst ", style="dim")
            text.append(str(worst["mac"]))
            text.append(" " + "/".join(str(side) for side in worst["sides"]), style="cyan")
    text.truncate(width, overflow="ellipsis")
    return text


def _macs_title(snap: dict[str, Any], width: int) -> Text:
    from rich.text import Text

    local = snap["macs"]["local"]
    remote = [p["macs"]["remote"] for p in snap["peers"]]
    parts = [("local ", f"{local['count']}/{local['capacity']}"),
             ("remote ", str(sum(side["count"] for side in remote)))]
    evicted = local["evicted"] + sum(side["evicted"] for side in remote)
    if evicted:
        parts.append(("evicted ", fmt_count(evicted)))
    text = Text("MACs ", style="bold", no_wrap=True)
    text.append_text(_pairs(parts, max(0, width - 5)))
    text.append("  top talkers", style="dim")
    text.truncate(width, overflow="ellipsis")
    return text


def _macs_table(snap: dict[str, Any], width: int, rows: int) -> Table:
    """Top talkers: local MACs and the MACs behind the peers side by side when wide
    enough, else merged into one list."""
    from rich.text import Text

    local = snap["macs"]["local"]["top"]
    remote = [(p["name"], e) for p in snap["peers"] for e in p["macs"]["remote"]["top"]]
    remote.sort(key=lambda item: item[1]["bytes"], reverse=True)
    name_width = min(8, _name_width(snap["peers"]))
    table = _table()
    if width >= 39 + 2 + 29 + name_width:
        with_frames = width >= 39 + 2 + 36 + name_width
        table.add_column("local", no_wrap=True, width=17)
        table.add_column("frames", justify="right", no_wrap=True, width=6)
        table.add_column("bytes", justify="right", no_wrap=True, width=6)
        table.add_column("seen", justify="right", no_wrap=True, width=5)
        table.add_column("", width=1)  # gap between the two sides
        table.add_column("remote", no_wrap=True, width=17)
        table.add_column("peer", no_wrap=True, width=name_width, overflow="ellipsis")
        if with_frames:
            table.add_column("frames", justify="right", no_wrap=True, width=6)
        table.add_column("bytes", justify="right", no_wrap=True, width=6)
        table.add_column("seen", justify="right", no_wrap=True, width=5)
        for i in range(min(rows, max(len(local), len(remote)))):
            row: list[Text] = []
            if i < len(local):
                e = local[i]
                row += [_plain(e["mac"]), _plain(fmt_count(e["frames"])),
                        _plain(fmt_bytes(e["bytes"])), _plain(fmt_age(e["last_seen_age"]))]
            else:
                row += [Text()] * 4
            row.append(Text())
            if i < len(remote):
                peer, e = remote[i]
                row += [_plain(e["mac"]), _plain(peer, "cyan")]
                row += [_plain(fmt_count(e["frames"]))] if with_frames else []
                row += [_plain(fmt_bytes(e["bytes"])), _plain(fmt_age(e["last_seen_age"]))]
            else:
                row += [Text()] * (5 if with_frames else 4)
            table.add_row(*row)
        return table
    table.add_column("side", no_wrap=True, width=name_width, overflow="ellipsis")
    table.add_column("mac", no_wrap=True, width=17)
    table.add_column("bytes", justify="right", no_wrap=True, width=6)
    table.add_column("seen", justify="right", no_wrap=True, width=5, overflow="ellipsis")
    merged = [("local", e) for e in local] + remote
    merged.sort(key=lambda item: item[1]["bytes"], reverse=True)
    for side, e in merged[:rows]:
        table.add_row(_plain(side, "" if side == "local" else "cyan"), _plain(e["mac"]),
                      _plain(fmt_bytes(e["bytes"])), _plain(fmt_age(e["last_seen_age"])))
    return table


# -- layout ---------------------------------------------------------------------------------------

def _peer_lines(n: int, budget: int) -> tuple[int, int]:
    """(rows shown, lines used) of a peers table of ``n`` peers in ``budget`` lines:
    header and rule, the rows, and a "+N more" line when some are left out."""
    if n == 0 or budget < 4 - (n == 1):
        return 0, 0
    if n + 2 <= budget:
        return n, n + 2
    return budget - 3, budget


def render(snapshot: dict[str, Any], history: History, width: int, height: int) -> RenderableType:
    """Lay the snapshot out in ``width`` x ``height`` cells.

    Sections are admitted in order of importance while they fit and shown in
    a fixed order: the header (peers by state) always; the peers table with up
    to MIN_PEER_ROWS rows; the guard line (loops, MAC flaps: only once there is
    one), the all-peers traffic and the drops; then more peer
    rows; per-peer details (only for the rows shown); frame kinds; and the MAC
    table, which takes whatever lines remain.  When not every peer has a row,
    those in a loop and then the busiest are shown first, and a "+N more" line
    counts the rest.
    Tables take 1 header + 1 rule + rows lines.
    """
    from rich.console import Group

    width = max(20, width)
    budget = max(1, height) - 1  # the header
    peers: list[dict[str, Any]] = list(snapshot["peers"])
    n = len(peers)
    shown, peer_lines = _peer_lines(n, min(budget, 2 + MIN_PEER_ROWS + 1))
    budget -= peer_lines
    admitted: set[str] = set()
    guard_lines = 1 if _guard_needed(snapshot) else 99
    for name, lines in (("guard", guard_lines), ("traffic", 4), ("drops", 1)):
        if lines <= budget:
            admitted.add(name)
            budget -= lines
    if shown < n:
        shown, more_lines = _peer_lines(n, peer_lines + budget)
        budget -= more_lines - peer_lines
    if shown < n:  # peers in a loop first, then those not up, then the busiest
        peers.sort(key=lambda p: (is_looped(p), p["state"] != "up", history.busyness(p)),
                   reverse=True)
    rest = peers[shown:]
    peers = peers[:shown]
    # the MAC table needs its title, header and rule, and one row to be worth showing
    for name, lines in (("details", 2 + shown if shown else 99), ("kinds", 4), ("macs", 3)):
        if lines + (name == "macs") <= budget:
            admitted.add(name)
            budget -= lines
    parts: list[RenderableType] = [_header(snapshot, width)]
    if shown:
        parts.append(_peers_table(peers, history, width, rest))
    if "details" in admitted:
        parts.append(_details_table(peers, width))
    if "traffic" in admitted:
        parts.append(_traffic(snapshot, history, width))
    if "kinds" in admitted:
        parts.append(_kinds(snapshot, width))
    if "drops" in admitted:
        parts.append(_drops_line(snapshot, width))
    if "guard" in admitted:
        parts.append(_guard_line(snapshot, width))
    if "macs" in admitted:
        parts.append(_macs_title(snapshot, width))
        if budget > 0:
            parts.append(_macs_table(snapshot, width, budget))
    return Group(*parts)


# -- loops ----------------------------------------------------------------------------------------

async def run_dashboard(
    get_snapshot: Callable[[], dict[str, Any]],
    *,
    refresh_per_second: float = 4,
    console: Console | None = None,
    frames: int | None = None,
) -> None:
    """Show the live dashboard until cancelled (or, for tests, after ``frames`` redraws).

    The snapshot is taken on the trio thread (counters are not thread-safe)
    and its time read from trio's clock, so a test's MockClock drives the
    rates; layout and terminal output run in a worker thread.
    """
    from rich.console import Console
    from rich.live import Live

    console = console or Console(markup=False, emoji=False, highlight=False)
    history = History()
    period = 1.0 / refresh_per_second
    live = Live(console=console, auto_refresh=False, transient=False)

    def draw(snap: dict[str, Any]) -> None:
        width, height = console.size
        # one spare line: the cursor sits below a non-screen Live region
        live.update(render(snap, history, width, height - 1), refresh=True)

    # Even starting and stopping write to the terminal (cursor codes): all of it runs in
    # worker threads, abandoned on cancel, so a stuck terminal cannot hold up shutdown
    # (and with it the host network's restore).
    await trio.to_thread.run_sync(live.start, abandon_on_cancel=True)
    try:
        drawn = 0
        while frames is None or drawn < frames:
            if drawn:
                await trio.sleep(period)
            snap = get_snapshot()
            history.sample(snap, trio.current_time())
            await trio.to_thread.run_sync(draw, snap, abandon_on_cancel=True)
            drawn += 1
    finally:
        with trio.move_on_after(STOP_TIMEOUT, shield=True):
            await trio.to_thread.run_sync(live.stop, abandon_on_cancel=True)


def _drops_delta(drops: dict[str, int], previous: dict[str, int]) -> str:
    new = {r: n - previous.get(r, 0) for r, n in drops.items()}
    new = {r: n for r, n in new.items() if n > 0}
    text = f"drops +{sum(new.values())}"
    if new:
        top = sorted(new.items(), key=lambda item: item[1], reverse=True)
        text += " (" + ", ".join(f"{r} {n}" for r, n in top[:4])
        text += f", +{len(top) - 4} more)" if len(top) > 4 else ")"
    return text


#: Key of the device's own drops in the ``previous`` mapping of :func:`summary_lines`.
DEVICE = ""


def previous_drops(snap: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The drop counts of ``snap``, as :func:`summary_lines` wants them next time."""
    previous = {p["name"]: dict(p["drops"]) for p in snap["peers"]}
    previous[DEVICE] = dict(snap["device_drops"])
    return previous


#: With more peers than this, the log lines summarise: one line for all peers
#: and one per peer only for those worth a look (in a loop, not up, new drops),
#: at most this many; an idle hub of 100 spokes logs one line per interval.
MAX_LOG_PEERS = 8


def summary_lines(snap: dict[str, Any], history: History,
                  previous: dict[str, dict[str, int]]) -> list[str]:
    """Plain log lines: one per peer (state, endpoint, RTT, per-direction frames and
    rates, drops since ``previous``), and one for the device's own drops if any are new.
    With more than MAX_LOG_PEERS peers: a line counting the peers by state, then
    lines for at most MAX_LOG_PEERS peers in a loop, not up or with new drops."""
    peers = snap["peers"]
    lines = []
    listed = peers
    if len(peers) > MAX_LOG_PEERS:
        def worth(peer: dict[str, Any]) -> tuple[bool, bool, bool]:
            new = _drops_delta(peer["drops"], previous.get(peer["name"], {})) != "drops +0"
            return is_looped(peer), peer["state"] != "up", new

        flagged = [p for p in peers if any(worth(p))]
        flagged.sort(key=worth, reverse=True)
        listed = flagged[:MAX_LOG_PEERS]
        counts = ", ".join(f"{n} {state}" for state, n in _counts(peers).items())
        totals = [history.rate("frames", d, window=math.inf) for d, _ in DIRECTIONS]
        total = " | ".join(f"{label.replace('→', '->')} {rate:.0f} fr/s"
                           for (_, label), rate in zip(DIRECTIONS, totals, strict=True)
                           if rate is not None)
        head = f"{len(peers)} peers: {counts}"
        if total:
            head += f" | {total}"
        if len(flagged) > len(listed):
            head += f" | {len(flagged) - len(listed)} more need a look (bridger status)"
        lines.append(head)
    for peer in listed:
        name = peer["name"]
        head = f"peer {name} {peer['state']}"
        if is_looped(peer):
            guard = peer["guard"]
            head += f" LOOP {fmt_age(guard.get('loop_for'))} via {guard.get('loop_via')}"
        head += f" {peer['endpoint'] or 'no endpoint'}"
        if peer["rtt_ms"] is not None:
            head += f" rtt {peer['rtt_ms']:.1f}ms"
        parts = [head]
        for d, label in DIRECTIONS:
            fps = history.rate("frames", d, window=math.inf, peer=name)
            bps = history.rate("bytes", d, window=math.inf, peer=name)
            rates = ("" if fps is None or bps is None
                     else f" {fps:.0f} fr/s {bps * 8 / 1e6:.2f} Mbit/s")
            parts.append(f"{label.replace('→', '->')} {peer['frames'][d]} frames{rates}")
        parts.append(_drops_delta(peer["drops"], previous.get(name, {})))
        lines.append(" | ".join(parts))
    device = _drops_delta(snap["device_drops"], previous.get(DEVICE, {}))
    if device != "drops +0" or not lines:
        lines.append(f"device {len(snap['peers'])} peers | {device}")
    return lines


async def run_log_lines(
    get_snapshot: Callable[[], dict[str, Any]],
    *,
    interval: float = 10,
    log: logging.Logger,
) -> None:
    """``--no-dashboard`` / non-TTY: per ``interval``, one summary line per peer (and
    one for new device drops) until cancelled."""
    snap = get_snapshot()
    previous = previous_drops(snap)
    while True:
        history = History(maxlen=2)
        history.sample(snap, trio.current_time())
        await trio.sleep(interval)
        snap = get_snapshot()
        history.sample(snap, trio.current_time())
        for line in summary_lines(snap, history, previous):
            log.info("%s", line)
        previous = previous_drops(snap)
