"""How frames reach one peer: directly, or through a relay (issue 23).

A relay is a site both ends have a session with.  The datagrams of the pair
stay sealed end to end: the sender wraps its ordinary outer datagram for the
far peer in a RELAY message on its session with the relay, the relay checks
that both ends are its own configured peers and passes the datagram on in a
RELAYED message on its session with the far peer, which unwraps it and
receives it as if it had come from the network (``Via``: its source).  The
relay can neither read nor forge nor replay what it carries (it holds no key
of the pair; the pair's replay windows are end to end); it can only drop it,
as any router can.

A relayed peer's endpoint is a :class:`Via` address: the core seals and
counts for it as for any address, and :meth:`Traversal.route` wraps what is
addressed to it (bridger/protocol/traversal.py).

The path state of one peer (:class:`PathState`) is a table of transitions;
invariants:

* ``kind`` is DIRECT only after a packet from a direct address authenticated
  and the address was allowed (``arrived``): the first contact, a handshake
  response (a round trip), or a path pong (a round trip on that address).
  While RELAYED, a direct packet alone does not move the path: it might be a
  one-way hole (its sender's NAT lets the answers back in or not).
* ``kind`` is RELAYED only with ``via`` naming a peer that introduced this one
  (so it has a session with it).
* No path is dropped for want of a better one: DIRECT gives way to RELAYED only
  when our data went unanswered DIRECT_DEAD (5 s) with nothing from the
  endpoint either, or when the peer itself moved to the relay and the
  endpoint has been silent DIRECT_SUSPECT (2 s).
* New attempts at a direct path (path pings on the candidates) start when an
  introduction arrives (the introducer tells both ends at once, every
  INTRODUCE_REFRESH), or when the peer's packets arrive from a new address.

verb                 NONE                 DIRECT                  RELAYED
-------------------  -------------------  ----------------------  ---------------------
introduced(addr,by)  punch; fallback at   silent: punch           ping round on addr
                     now + PUNCH_WINDOW
arrived(direct)      -> DIRECT            allow (NAT rebinding)   proof: -> DIRECT;
                                                                  else ping it, refuse
arrived(via relay)   -> RELAYED           silent 2 s: -> RELAYED  allow (relay change)
                                          else refuse
pong(id, addr)       -> DIRECT            -> DIRECT (addr)        -> DIRECT
fallback_due         -> RELAYED if relay  -                       -
unanswered 5 s       -                    -> RELAYED if relay     -
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, TypeVar

from .constants import (
    DIRECT_SUSPECT,
    MAX_CANDIDATES,
    PATH_PING_INTERVAL,
    PATH_PINGS_PER_ROUND,
    PUNCH_WINDOW,
    TRANSPORT_OVERHEAD,
)
from .events import Address
from .messages import RELAY_HEADER_LEN

#: What relaying adds to a datagram of the pair: the RELAY type and key, and
#: the transport header and tag of the session with the relay.
RELAY_OVERHEAD = RELAY_HEADER_LEN + TRANSPORT_OVERHEAD

K = TypeVar("K")
V = TypeVar("V")

#: The host part of every Via address; never a valid IP address or DNS name.
VIA_PREFIX = "via:"


class Via(NamedTuple):
    """The endpoint of peer ``target`` reached through the relay peer ``relay``
    (both by name): an Address (host "via:<relay>/<target>", port 0) that no
    socket ever sees."""

    host: str
    port: int = 0

    @classmethod
    def of(cls, relay: str, target: str) -> Via:
        return cls(f"{VIA_PREFIX}{relay}/{target}")


def via_parts(addr: Address | None) -> tuple[str, str] | None:
    """(relay, target) when ``addr`` is a Via address, else None."""
    if addr is None or not addr[0].startswith(VIA_PREFIX):
        return None
    relay, _, target = addr[0][len(VIA_PREFIX):].partition("/")
    return relay, target


def via_relay(addr: Address | None) -> str | None:
    """The relay's name when ``addr`` is a Via address, else None."""
    parts = via_parts(addr)
    return None if parts is None else parts[0]


class PathKind(StrEnum):
    """How frames reach a peer."""

    #: No endpoint and no relay: frames wait (and are counted when evicted).
    NONE = "none"
    DIRECT = "direct"
    RELAYED = "relayed"


class Source(StrEnum):
    """How the endpoint in use was learnt."""

    #: From the configuration (``host``, resolved).
    CONFIGURED = "configured"
    #: From the peer's own authenticated packets (it dialled us, or roamed).
    LEARNT = "learnt"
    #: From an introduction by a third site, confirmed by a handshake or pong.
    INTRODUCED = "introduced"
    #: Through a relay.
    RELAY = "relay"


@dataclass(slots=True)
class PathState:
    """The path of one peer; every verb takes ``now`` and reads no clock."""

    kind: PathKind = PathKind.NONE
    how: Source = Source.LEARNT
    #: The relay in use (RELAYED), by peer name.
    via: str = ""
    #: Who introduced the direct address in use ("" if nobody did).
    introducer: str = ""
    #: Candidate direct addresses -> who told us ("" = seen on the peer's packets).
    candidates: dict[Address, str] = field(default_factory=dict)
    #: Possible relays (the peers that introduced this one) -> when last.
    relays: dict[str, float] = field(default_factory=dict)
    #: Fall back to a relay at this time unless a direct path appeared.
    fallback_at: float | None = None
    #: Next path ping and how many the running round has left.
    ping_at: float | None = None
    pings_left: int = 0
    #: Outstanding path pings: id -> address.
    pings: dict[int, Address] = field(default_factory=dict)
    #: Next liveness ping to a direct endpoint that left our data unanswered.
    alive_ping_at: float = 0.0
    #: A change of ``kind``/``via``/endpoint not yet reported (a PathChanged).
    changed_from: str | None = None
    #: The endpoint the configuration gives (resolved), if any.
    configured_endpoint: Address | None = None

    # -- queries ------------------------------------------------------------

    def describe(self) -> str:
        """"direct", "relayed via site-a", "none"."""
        return f"relayed via {self.via}" if self.kind is PathKind.RELAYED else self.kind.value

    def next_deadline(self) -> float | None:
        best = self.fallback_at
        if self.ping_at is not None and (best is None or self.ping_at < best):
            best = self.ping_at
        return best

    def direct_fresh(self, now: float, last_direct: float | None) -> bool:
        """Direct, and the endpoint was heard from less than DIRECT_SUSPECT ago
        (``last_direct``: the core's last authenticated receive from it)."""
        return (self.kind is PathKind.DIRECT and last_direct is not None
                and now - last_direct < DIRECT_SUSPECT)

    def pick_relay(self, usable: set[str]) -> str | None:
        """The most recent introducer that is ``usable`` (has a direct session)."""
        best = [(when, name) for name, when in self.relays.items() if name in usable]
        return max(best)[1] if best else None

    # -- verbs ----------------------------------------------------------------

    def introduced(self, addr: Address, by: str, now: float,
                   last_direct: float | None = None) -> bool:
        """A peer ``by`` says this one is at ``addr``.  True: punch now (handshake
        or path pings towards ``addr``)."""
        self.relays[by] = now
        _remember(self.relays, MAX_CANDIDATES)
        self.candidates[addr] = by
        _remember(self.candidates, MAX_CANDIDATES)
        if self.kind is PathKind.DIRECT and (
                last_direct is not None and now - last_direct < DIRECT_SUSPECT * 5):
            return False
        if self.kind is PathKind.NONE and self.fallback_at is None:
            self.fallback_at = now + PUNCH_WINDOW
        self.start_round(now)
        return True

    def start_round(self, now: float) -> None:
        """Path pings from now on, unless a round is already under way."""
        if self.ping_at is None or self.ping_at > now + PATH_PING_INTERVAL:
            self.pings_left = PATH_PINGS_PER_ROUND
            self.ping_at = now

    def arrived(self, addr: Address, endpoint: Address | None, now: float, proof: bool,
                last_direct: float | None = None) -> bool:
        """An authenticated packet from ``addr`` (``proof``: it answered one of
        ours there: a handshake response; ``last_direct``: the core's last
        authenticated receive from the direct endpoint, before this one).
        True: the endpoint may be ``addr``."""
        relay = via_relay(addr)
        if relay is None:
            if addr == endpoint:
                if self.kind is not PathKind.DIRECT:  # e.g. the first handshake
                    self._go_direct(addr, now)
                return True
            if self.kind is PathKind.RELAYED and not proof:
                self.candidates[addr] = self.candidates.get(addr, "")
                _remember(self.candidates, MAX_CANDIDATES)
                self.start_round(now)
                return False
            self._go_direct(addr, now)
            return True
        if self.direct_fresh(now, last_direct):
            return False  # relayed packets still in flight, or the peer is slower to move
        self.go_relayed(relay, now)
        return True

    def alive_ping(self, endpoint: Address, now: float, new_id: Callable[[], int]
                   ) -> int | None:
        """A liveness ping for a direct endpoint that left our data unanswered
        DIRECT_SUSPECT: its id, at most one per PATH_PING_INTERVAL (the pong,
        or anything authenticated, answers it)."""
        if now < self.alive_ping_at:
            return None
        self.alive_ping_at = now + PATH_PING_INTERVAL
        ping_id = new_id()
        if len(self.pings) > 4 * MAX_CANDIDATES:
            self.pings.clear()
        self.pings[ping_id] = endpoint
        return ping_id

    def pong(self, ping_id: int, addr: Address, now: float) -> bool:
        """A pong from ``addr``.  True: it answers our ping there; the path is
        direct at ``addr`` now (the caller moves the endpoint)."""
        if self.pings.get(ping_id) != addr:
            return False
        self.pings.clear()
        self._go_direct(addr, now)
        return True

    def pings_due(self, now: float, new_id: Callable[[], int]) -> list[tuple[int, Address]]:
        """The path pings to send now: (id, address) for every candidate.
        ``new_id()`` makes an id."""
        if self.ping_at is None or now < self.ping_at:
            return []
        self.pings_left = max(0, self.pings_left - 1)
        self.ping_at = now + PATH_PING_INTERVAL if self.pings_left else None
        if self.kind is PathKind.DIRECT or not self.candidates:
            return []
        due = [(new_id(), addr) for addr in self.candidates]
        if len(self.pings) > 4 * MAX_CANDIDATES:
            self.pings.clear()
        self.pings.update(due)
        return due

    def fallback_due(self, now: float) -> bool:
        """True once when the punch window ended without a direct path."""
        if self.fallback_at is None or now < self.fallback_at:
            return False
        self.fallback_at = None
        return self.kind is not PathKind.DIRECT

    def go_relayed(self, relay: str, now: float) -> None:
        if self.kind is not PathKind.RELAYED or self.via != relay:
            self.changed_from = self.changed_from or self.describe()
        self.kind, self.via, self.how = PathKind.RELAYED, relay, Source.RELAY
        self.fallback_at = None

    def configured(self, addr: Address | None) -> None:
        """The configuration (or DNS) says the peer is at ``addr``."""
        self.configured_endpoint = addr
        if addr is not None:
            self.candidates[addr] = self.candidates.get(addr, "")
            _remember(self.candidates, MAX_CANDIDATES)

    def _go_direct(self, addr: Address, now: float) -> None:
        if self.kind is not PathKind.DIRECT:
            self.changed_from = self.changed_from or self.describe()
        introducer = self.candidates.get(addr, "")
        if addr == self.configured_endpoint:
            self.how = Source.CONFIGURED
        else:
            self.how = Source.INTRODUCED if introducer else Source.LEARNT
        self.kind, self.via, self.introducer = PathKind.DIRECT, "", introducer
        self.fallback_at = None
        self.ping_at, self.pings_left = None, 0
        self.pings.clear()

    def take_change(self) -> str | None:
        """The path described before an unreported change, once."""
        old, self.changed_from = self.changed_from, None
        if old == self.describe():
            return None
        return old


def _remember(table: dict[K, V], limit: int) -> None:
    """Keep the newest ``limit`` entries (dicts keep insertion order)."""
    while len(table) > limit:
        del table[next(iter(table))]


def may_relay(sender_key: bytes, target_key: bytes, peers: Collection[bytes],
              reachable: Collection[bytes]) -> bool:
    """The relay's rule: carry a datagram from ``sender_key`` to ``target_key``
    only between two different configured peers (``peers``), to one reached
    directly with a session (``reachable``): never to itself, never to a key it
    does not list, never through a second relay."""
    return (sender_key != target_key and sender_key in peers and target_key in peers
            and target_key in reachable)
