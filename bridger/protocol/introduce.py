"""Endpoint introduction (issue 23): a site with sessions to two peers tells
each where the other is.

The introducer side (:class:`Introducer`): every peer reached directly (a
session and a real endpoint, not a relay) hears of every other such peer
when that peer's endpoint is new to it, and again every INTRODUCE_REFRESH.
An introduction is an INTRODUCE message on the authenticated session (its
format: bridger/protocol/messages.py), so only a configured peer can
introduce, and only to a configured peer.

The receiving side (:func:`acceptable`): an introduction is taken only of a
key this site lists, never of the introducer itself nor of this site, and only
for an address a socket can use.  It is a hint: a handshake or a path pong on
that address authenticates the peer there as ever, so a lying introducer can
delay a pair (send it to a wrong address for PUNCH_WINDOW) but never
impersonate anyone or read anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from .constants import INTRODUCE_CHECK_INTERVAL, INTRODUCE_REFRESH
from .events import Address
from .messages import Introduction


@dataclass(slots=True)
class Introducer:
    """What this site told whom, and when it looks again."""

    #: (told key, introduced key) -> (the endpoint told, when).
    told: dict[tuple[bytes, bytes], tuple[Address, float]] = field(default_factory=dict)
    check_at: float = 0.0

    def next_deadline(self) -> float:
        return self.check_at

    def due(self, reachable: Iterable[tuple[bytes, Address, float]], now: float,
            introducible: Collection[bytes] | None = None
            ) -> list[tuple[bytes, bytes, Address]]:
        """(to, about, endpoint) introductions to send now, given the peers
        reached directly as (public key, endpoint, its last handshake: a peer
        that restarted has forgotten what it was told, and to us its new
        session looks like any rekey); only those in
        ``introducible`` (default: all) are introduced."""
        if now < self.check_at:
            return []
        self.check_at = now + INTRODUCE_CHECK_INTERVAL
        if introducible is not None and not introducible:
            return []  # (a hub: nobody to introduce; not N x N pairs to find it out)
        peers = [(key, addr, since) for key, addr, since in reachable if usable_address(addr)]
        if len(peers) < 2:
            return []
        out = []
        for to, _, since in peers:
            for about, addr, _ in peers:
                if about == to or (introducible is not None and about not in introducible):
                    continue
                last = self.told.get((to, about))
                if last is None or last[0] != addr or last[1] < since or (
                        now - last[1] >= INTRODUCE_REFRESH):
                    self.told[(to, about)] = (addr, now)
                    out.append((to, about, addr))
        return out

    def forget(self, key: bytes) -> None:
        """A peer was removed: what it was told and what it was told of."""
        for pair in [p for p in self.told if key in p]:
            del self.told[pair]


def usable_address(addr: Address) -> bool:
    """An IPv4/IPv6 literal another site could send to (no scope, no name, no
    relay), with a port."""
    try:
        ip = ipaddress.ip_address(addr[0])
    except ValueError:
        return False
    return (0 < addr[1] < 65536 and "%" not in addr[0] and not ip.is_unspecified
            and not ip.is_multicast)


def acceptable(intro: Introduction, *, own_key: bytes, introducer_key: bytes,
               listed: Iterable[bytes]) -> bool:
    """Whether a site takes an introduction as a hint (see the module docstring)."""
    key = intro.public_key
    return (key != own_key and key != introducer_key and key in set(listed)
            and usable_address(intro.endpoint))
