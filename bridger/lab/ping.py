"""Ping between lab hosts, many pairs at once, and read what ``ping`` reported."""

from __future__ import annotations

import itertools
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bridger.lab.topology import Lab

_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_RTT = re.compile(r"= [\d.]+/([\d.]+)/")


@dataclass(frozen=True)
class PingResult:
    """What one ``ping -c N`` from ``src`` to ``dst``'s LAN address saw."""

    src: str
    dst: str
    family: int
    address: str
    sent: int
    received: int
    #: Average round trip; None when nothing came back.
    rtt_avg_ms: float | None

    @property
    def ok(self) -> bool:
        """At least one answer came back."""
        return self.received > 0


def parse_ping_output(text: str) -> tuple[int, int, float | None]:
    """(sent, received, average RTT in ms) from ping's summary; zeros if it has none."""
    summary = _SUMMARY.search(text)
    if summary is None:
        return 0, 0, None
    rtt = _RTT.search(text)
    return int(summary[1]), int(summary[2]), float(rtt[1]) if rtt else None


def cross_site_pairs(lab: Lab, hosts: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Every unordered pair of ``hosts`` (default: each site's first host) in different sites."""
    chosen = list(hosts) if hosts is not None else [lab.hosts(site)[0] for site in lab.sites]
    return [
        (a, b) for a, b in itertools.combinations(chosen, 2) if lab.site_of(a) != lab.site_of(b)
    ]


def ping_pairs(
    lab: Lab,
    pairs: Iterable[tuple[str, str]],
    families: Sequence[int] = (4, 6),
    *,
    count: int = 3,
    interval: float = 0.2,
    wait: float = 2.0,
) -> list[PingResult]:
    """Ping every ``(src, dst)`` pair in each family, all at once; results in input order."""
    running = []
    for src, dst in pairs:
        for family in families:
            address = lab.lan_address(dst, family)
            argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait)]
            if family == 6:
                argv.append("-6")
            proc = lab.popen(
                src, *argv, address, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            running.append((src, dst, family, address, proc))
    results = []
    budget = count * (interval + wait) + 10
    for src, dst, family, address, proc in running:
        try:
            out, _ = proc.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        sent, received, rtt = parse_ping_output(out or "")
        results.append(PingResult(src, dst, family, address, sent, received, rtt))
    return results
