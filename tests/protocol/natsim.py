"""Sites behind simulated NATs, with real devices and a virtual clock (issue 23).

Each site is one ``Device`` with one ``Peer`` per other site, as in
``meshsim``; what is new is a NAT in front of some sites, modelled on Linux
conntrack masquerade (the lab's NATs, bridger/lab/nat.py):

* a mapping is per flow (private source, remote address); ``preserving`` keeps
  the private port as the public one, ``random`` picks a random port per flow;
* inbound passes only as the reply of a flow: from exactly the remote address
  and port the flow went to (address- and port-dependent filtering);
* a mapping lives UDP_TIMEOUT seconds after its last packet, and ``flush``
  forgets every mapping at once;
* a packet that is the reply of no flow is delivered to the NAT box itself,
  and conntrack keeps that flow (UNREPLIED_TIMEOUT after its last packet): a
  new outbound flow whose reply would look the same cannot keep its port and
  gets a random one (Linux's clash handling; why the two ends of a punch must
  send at about the same moment, and why one failed attempt spoils the next
  for a while).

Sites behind a NAT have no ``host`` for each other (they know public sites by
address only); the shell's part, wrapping datagrams for relays
(``Traversal.route``), is done here on every output.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from bridger.protocol import Address, Device, DeviceConfig, Event, Output, Peer, PeerConfig
from tests.protocol.meshsim import MeshSim
from tests.protocol.simnet import WALL_EPOCH, keypair

PORT = 55555
#: Conntrack forgets an idle UDP flow after 30 s (unreplied) to 120 s; one value here.
UDP_TIMEOUT = 60.0
#: An unanswered flow (to the NAT box itself) is forgotten after this long.
UNREPLIED_TIMEOUT = 30.0


@dataclass
class Nat:
    kind: str  # "public" | "preserving" | "random"
    public_ip: str
    rng: random.Random
    #: (private source, remote) -> public port
    out: dict[tuple[Address, Address], int] = field(default_factory=dict)
    #: (public port, remote) -> private source
    back: dict[tuple[int, Address], Address] = field(default_factory=dict)
    used: dict[tuple[int, Address], float] = field(default_factory=dict)
    #: (public port, remote) -> last unsolicited packet (a flow to the NAT box)
    local: dict[tuple[int, Address], float] = field(default_factory=dict)

    def outbound(self, src: Address, dest: Address, now: float) -> Address:
        if self.kind == "public":
            return src
        port = self.out.get((src, dest))
        if port is None or now - self.used.get((port, dest), -1e9) > UDP_TIMEOUT:
            self._forget(src, dest)
            port = src[1] if self.kind == "preserving" else self.rng.randint(1024, 65535)
            while (port, dest) in self.back or now - self.local.get((port, dest), -1e9) \
                    < UNREPLIED_TIMEOUT:
                port = self.rng.randint(1024, 65535)
            self.out[(src, dest)] = port
            self.back[(port, dest)] = src
        self.used[(port, dest)] = now
        return (self.public_ip, port)

    def inbound(self, port: int, remote: Address, now: float) -> Address | None:
        key = (port, remote)
        src = self.back.get(key)
        if src is None or now - self.used.get(key, -1e9) > UDP_TIMEOUT:
            self.local[key] = now
            return None
        self.used[key] = now
        return src

    def _forget(self, src: Address, dest: Address) -> None:
        port = self.out.pop((src, dest), None)
        if port is not None:
            self.back.pop((port, dest), None)
            self.used.pop((port, dest), None)

    def flush(self) -> None:
        self.out.clear()
        self.back.clear()
        self.used.clear()
        self.local.clear()


@dataclass
class Site:
    index: int
    name: str
    device: Device
    private: Address
    nat: Nat
    peers: dict[int, Peer]
    received: dict[int, set[int]] = field(default_factory=dict)
    sent: dict[int, list[int]] = field(default_factory=dict)
    events: list[tuple[float, Event]] = field(default_factory=list)
    duplicates: int = 0
    misdelivered: int = 0


class NatSim(MeshSim):
    """Sites ``kinds`` ("public", "preserving", "random"), a full mesh."""

    def __init__(self, kinds: list[str], seed: int = 1, *, keepalive: float = 25.0,
                 delay: float = 0.01, loss: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.kinds = kinds
        self.delay = delay
        self.loss = loss
        self.keepalive = keepalive
        self.now = 0.0
        self.keys = [keypair(self.rng) for _ in kinds]
        self.nats = [Nat(kind, f"203.0.113.{i + 1}", random.Random(self.rng.random()))
                     for i, kind in enumerate(kinds)]
        self.down: set[int] = set()
        self._queue: list[tuple[float, int, bytes, Address, Address]] = []
        self._order = 0
        self._seq = 0
        self.sites = [self._make_site(i) for i in range(len(kinds))]

    def public_address(self, i: int) -> Address:
        return (self.nats[i].public_ip, PORT)

    def _private(self, i: int) -> Address:
        if self.kinds[i] == "public":
            return self.public_address(i)
        return (f"172.16.{i + 1}.2", PORT)

    def _make_site(self, i: int) -> Site:
        rng = random.Random(self.rng.random())
        device = Device(DeviceConfig(self.keys[i][0]), now=self.now,
                        wall_clock=WALL_EPOCH + self.now, random_bytes=rng.randbytes)
        peers = {}
        for j, kind in enumerate(self.kinds):
            if j == i:
                continue
            host = self.public_address(j) if kind == "public" else None
            peers[j] = device.add_peer(PeerConfig(
                self.keys[j][1], endpoint=host, persistent_keepalive=self.keepalive,
                name=f"site-{chr(97 + j)}"), self.now)
        return Site(i, chr(65 + i), device, self._private(i), self.nats[i], peers)

    # -- plumbing -------------------------------------------------------------------

    def _absorb(self, site: Site, out: Output) -> None:
        site.device.traversal.route(out, self.now)
        super()._absorb(site, out)

    def _send_out(self, site: Site, dest: Address, datagram: bytes) -> None:
        assert not dest[0].startswith("via:"), "a datagram for a relay left unwrapped"
        if self.rng.random() < self.loss:
            return  # lost before its NAT saw it
        self._enqueue(site.nat.outbound(site.private, dest, self.now), dest, datagram)

    def _deliver(self, datagram: bytes, src: Address, dest: Address) -> None:
        for i, site in enumerate(self.sites):
            if i in self.down or site.nat.public_ip != dest[0]:
                continue
            if site.nat.kind == "public":
                if dest != site.private:
                    return
            elif site.nat.inbound(dest[1], src, self.now) is None:
                return  # no flow this is the reply of: the NAT drops it
            self._absorb(site, site.device.receive_datagrams(
                [datagram], src, self.now, WALL_EPOCH + self.now))
            return

    def frame_size(self) -> int:
        return 200

    # -- what tests read ---------------------------------------------------------------

    def path(self, i: int, j: int) -> str:
        """How site i reaches site j: "direct", "relayed via site-a", "none"."""
        return self.sites[i].device.traversal.path(self.sites[i].peers[j]).describe()

    def delivered(self, src: int, dst: int, since: int = 0) -> bool:
        """At least one frame sent after seq ``since`` arrived."""
        got = self.sites[dst].received.get(src, set())
        return any(s > since for s in got)
