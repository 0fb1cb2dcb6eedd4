"""A small layer-2 world on a virtual clock, with the guards at the I/O seam.

::

      host a1            host b1
        |                  |
     [LAN A]---cable---[LAN B]        (the cable: a backup link, maybe STP-blocked)
        |                  |
      eth0               eth0
     bridge A           bridge B      (flood everything; peer taps isolated in mesh)
      tap-b              tap-a
        |                  |
      daemon A ~~tunnel~~ daemon B    (Guard.outbound / inbound per frame, probes
                                       from LoopDetector.tick sent into the tunnel)

Bridges do not learn (every frame is flooded, the worst case for a loop).
A frame takes ``lan_delay`` on a LAN or cable and ``wan_delay`` through a
tunnel.  The event queue is capped (a saturated link drops), so a storm that
nothing stops stays finite; ``overflow`` counts what that cap dropped.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridger.guard import Guard, GuardConfig, LoopDetector

QUEUE_CAP = 20_000


class Net:
    def __init__(self, wan_delay: float = 0.01, lan_delay: float = 0.0001) -> None:
        self.now = 0.0
        self.wan_delay = wan_delay
        self.lan_delay = lan_delay
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.overflow = 0
        self.sites: dict[str, Site] = {}

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        if len(self._queue) >= QUEUE_CAP:
            self.overflow += 1
            return
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, fn, args))

    def run(self, until: float) -> None:
        while self._queue and self._queue[0][0] <= until:
            when, _seq, fn, args = heapq.heappop(self._queue)
            self.now = when
            fn(*args)
        self.now = until

    # -- building the world ------------------------------------------------------

    def site(self, name: str, config: GuardConfig | None = None, mode: str = "mesh",
             seed: int = 0) -> Site:
        site = Site(self, name, config or GuardConfig(), mode, random.Random(f"{name}{seed}"))
        self.sites[name] = site
        self.at(0.0, site.tick)
        return site

    def tunnel(self, a: str, b: str) -> None:
        self.sites[a].add_peer(b)
        self.sites[b].add_peer(a)


class Lan:
    """A broadcast segment: a frame sent by one port reaches every other port."""

    def __init__(self, net: Net, name: str) -> None:
        self.net = net
        self.name = name
        self.ports: list[Callable[[bytes], None]] = []
        self.seen: Counter[bytes] = Counter()  # frames by payload tail, as hosts see them

    def attach(self, port: Callable[[bytes], None]) -> Callable[[bytes], None]:
        self.ports.append(port)

        def send(frame: bytes) -> None:
            for other in self.ports:
                if other is not port:
                    self.net.at(self.net.now + self.net.lan_delay, other, frame)

        return send

    def host_send(self, frame: bytes) -> None:
        """A host on this LAN sends ``frame``."""
        self._host_send(frame)

    def _host_port(self, frame: bytes) -> None:
        self.seen[frame[-8:]] += 1

    def add_host(self) -> None:
        self._host_send = self.attach(self._host_port)


@dataclass(eq=False)
class Cable:
    """A backup link between two LANs; ``blocked`` is an STP blocking port."""

    a: Lan
    b: Lan
    connected: bool = True
    blocked: bool = False
    carried: int = 0
    _to_a: Callable[[bytes], None] = field(init=False)
    _to_b: Callable[[bytes], None] = field(init=False)

    def __post_init__(self) -> None:
        self._to_b = self.b.attach(self._from_b)
        self._to_a = self.a.attach(self._from_a)

    def _from_a(self, frame: bytes) -> None:
        if self.connected and not self.blocked:
            self.carried += 1
            self._to_b(frame)

    def _from_b(self, frame: bytes) -> None:
        if self.connected and not self.blocked:
            self.carried += 1
            self._to_a(frame)


class Site:
    def __init__(self, net: Net, name: str, config: GuardConfig, mode: str,
                 rng: random.Random) -> None:
        self.net = net
        self.name = name
        self.config = config
        self.mode = mode
        self.detector = LoopDetector(site_id=rng.randbytes(8), rng=rng, vlans=config.vlans,
                                     untagged=config.untagged, hub=mode == "hub")
        self.guards: dict[str, Guard] = {}
        self.drops: Counter[str] = Counter()
        #: Frames sent through each tunnel, by peer.
        self.sent: Counter[str] = Counter()
        self.events: list[tuple[float, Any]] = []
        self.lan = Lan(net, f"lan-{name}")
        self.lan.add_host()
        self._to_lan = self.lan.attach(lambda frame: self.bridge(frame, "eth"))

    def add_peer(self, peer: str) -> None:
        self.guards[peer] = Guard(self.config, peer, self.detector)

    # the kernel bridge
    def bridge(self, frame: bytes, in_port: str) -> None:
        if in_port != "eth":
            self._to_lan(frame)
        for peer in self.guards:
            if peer == in_port:
                continue
            if in_port != "eth" and self.mode == "mesh":
                continue  # isolated ports: a peer's frame never goes to another peer
            self.from_tap(peer, frame)

    # the daemon
    def from_tap(self, peer: str, frame: bytes) -> None:
        reason = self.guards[peer].outbound(frame, self.net.now)
        if reason is not None:
            self.drops[reason] += 1
            return
        self.send(peer, frame)

    def send(self, peer: str, frame: bytes) -> None:
        self.sent[peer] += 1
        self.net.at(self.net.now + self.net.wan_delay, self.net.sites[peer].from_wan,
                    self.name, frame)

    def from_wan(self, peer: str, frame: bytes) -> None:
        reason = self.guards[peer].inbound(frame, self.net.now)
        if reason is not None:
            self.drops[reason] += 1
            return
        self.bridge(frame, peer)
        for target, probe in self.detector.take_relays():  # what forward.py's handle does
            self.send(target, probe)

    def tick(self) -> None:
        now = self.net.now
        for peer, probe in self.detector.tick(now):
            self.send(peer, probe)
        self.events.extend((now, event) for event in self.detector.take_events())
        self.net.at(max(self.detector.next_deadline(), now + 1e-6), self.tick)

    def blocked(self) -> set[str]:
        return set(self.detector.blocked())
