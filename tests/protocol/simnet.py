"""Two real tunnels over an in-memory lossy link with a virtual clock.

The link is the lab's impairment core (:class:`bridger.lab.impair.ImpairedLink`
with its :class:`Impairment` knobs: loss, duplication, delay ± jitter, which
reorders) plus an MTU and an on/off switch; all randomness comes from one
seeded ``random.Random``.  Frames
carry a sequence number and a payload derived from it, so the receiver can
check each arrives intact and at most once.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass, field

from nacl.bindings import crypto_scalarmult_base

from bridger.lab.impair import ImpairedLink, Impairment
from bridger.protocol import Address, Event, Output, Tunnel, TunnelConfig

WALL_EPOCH = 1_700_000_000.0
_SEQ = struct.Struct(">BQ")


def make_frame(side: int, seq: int, size: int) -> bytes:
    """A frame whose contents are a function of (side, seq, size)."""
    head = _SEQ.pack(side, seq) + struct.pack(">H", size)
    body = hashlib.blake2b(head, digest_size=64).digest()
    need = size - len(head)
    return head + (body * (need // 64 + 1))[:need]


def parse_frame(frame: bytes) -> tuple[int, int]:
    side, seq = _SEQ.unpack_from(frame, 0)
    (size,) = struct.unpack_from(">H", frame, _SEQ.size)
    assert frame == make_frame(side, seq, size), "frame corrupted"
    return side, seq


def keypair(rng: random.Random) -> tuple[bytes, bytes]:
    private = rng.randbytes(32)
    return private, crypto_scalarmult_base(private)


@dataclass
class Peer:
    name: int
    tunnel: Tunnel
    addr: Address
    sent: list[int] = field(default_factory=list)
    received: set[int] = field(default_factory=set)
    duplicates: int = 0
    events: list[tuple[float, Event]] = field(default_factory=list)
    next_seq: int = 0


@dataclass
class LinkParams:
    impairment: Impairment = field(default_factory=lambda: Impairment(delay_ms=20.0))
    mtu: int = 1500  # IP MTU of the link (IPv4: 28 bytes of headers)
    up: bool = True


#: What the simulated link carries: a datagram with its source and destination.
Carried = tuple[bytes, Address, Address]


class Sim:
    def __init__(
        self,
        seed: int,
        link: LinkParams | None = None,
        *,
        keepalive: float = 25.0,
        psk: bytes | None = None,
        max_frame: int = 1522,
    ) -> None:
        self.rng = random.Random(seed)
        self.link = link or LinkParams()
        self.now = 0.0
        self._wan: ImpairedLink[Carried] = ImpairedLink(self.link.impairment, self.rng)
        self.keys = [keypair(self.rng), keypair(self.rng)]
        self.psk = psk
        self.keepalive = keepalive
        self.max_frame = max_frame
        self.addrs: list[Address] = [("192.0.2.1", 55555), ("198.51.100.2", 55555)]
        self.peers = [self._make_peer(0), self._make_peer(1)]
        self.delivered_datagrams = 0

    def _make_peer(self, i: int, *, endpoint: bool = True) -> Peer:
        private = self.keys[i][0]
        peer_public = self.keys[1 - i][1]
        config = TunnelConfig(
            private,
            peer_public,
            psk=self.psk,
            endpoint=self.addrs[1 - i] if endpoint else None,
            persistent_keepalive=self.keepalive,
            max_frame=self.max_frame,
        )
        rng = random.Random(self.rng.random())
        tunnel = Tunnel(
            config, now=self.now, wall_clock=WALL_EPOCH + self.now, random_bytes=rng.randbytes
        )
        return Peer(i, tunnel, self.addrs[i])

    def restart(self, i: int) -> None:
        """Replace peer ``i`` with a fresh tunnel (same keys, no state)."""
        old = self.peers[i]
        new = self._make_peer(i)
        new.sent, new.received, new.next_seq = old.sent, old.received, old.next_seq
        new.duplicates, new.events = old.duplicates, old.events
        self.peers[i] = new

    def move(self, i: int, addr: Address) -> None:
        """Peer ``i`` now sends from (and is reached at) ``addr``: NAT rebinding."""
        self.addrs[i] = addr
        self.peers[i].addr = addr

    # --- plumbing -----------------------------------------------------------

    def _absorb(self, peer: Peer, out: Output) -> None:
        for frame in out.frames:
            side, seq = parse_frame(frame)
            assert side == 1 - peer.name
            if seq in peer.received:
                peer.duplicates += 1
            peer.received.add(seq)
        for event in out.events:
            peer.events.append((self.now, event))
        for datagram, dest in out.datagrams:
            self._transmit(peer.addr, dest, datagram)

    def _transmit(self, src: Address, dest: Address, datagram: bytes) -> None:
        link = self.link
        if not link.up or len(datagram) + 28 > link.mtu:
            return
        self._wan.impairment = link.impairment  # a test may have changed the knobs
        self._wan.submit((datagram, src, dest), self.now, len(datagram))

    def send(self, i: int, size: int) -> None:
        peer = self.peers[i]
        seq = peer.next_seq
        peer.next_seq += 1
        peer.sent.append(seq)
        self._absorb(peer, peer.tunnel.send_frame(make_frame(i, seq, size), self.now))

    def run_until(self, end: float) -> None:
        """Deliver datagrams and fire timers up to ``end`` (virtual seconds)."""
        while True:
            candidates = [end]
            due = self._wan.next_deadline()
            if due is not None:
                candidates.append(due)
            for peer in self.peers:
                deadline = peer.tunnel.next_deadline()
                if deadline is not None:
                    candidates.append(max(deadline, self.now))
            t = min(candidates)
            if t >= end and not (due is not None and due <= end):
                self.now = end
                return
            self.now = max(self.now, t)
            wall = WALL_EPOCH + self.now
            arrived = self._wan.pop_due(self.now)
            for datagram, src, dest in arrived:
                for peer in self.peers:
                    if peer.addr == dest:
                        self.delivered_datagrams += 1
                        self._absorb(
                            peer, peer.tunnel.receive_datagram(datagram, src, self.now, wall)
                        )
            if arrived:
                continue
            for peer in self.peers:
                deadline = peer.tunnel.next_deadline()
                if deadline is not None and deadline <= self.now:
                    self._absorb(peer, peer.tunnel.tick(self.now, wall))

    def traffic(self, end: float, rate: float, sizes: tuple[int, int] = (60, 1514)) -> None:
        """Both sides send frames at Poisson ``rate`` per second until ``end``."""
        next_send = [self.now + self.rng.expovariate(rate) for _ in range(2)]
        while True:
            i = 0 if next_send[0] <= next_send[1] else 1
            t = next_send[i]
            if t >= end:
                self.run_until(end)
                return
            self.run_until(t)
            self.send(i, self.rng.randint(*sizes))
            next_send[i] = t + self.rng.expovariate(rate)

    def delivered_ratio(self, i: int, since_seq: int = 0) -> float:
        """Share of frames peer ``i`` sent (seq >= since_seq) that arrived."""
        sent = [s for s in self.peers[i].sent if s >= since_seq]
        got = self.peers[1 - i].received
        return sum(1 for s in sent if s in got) / max(1, len(sent))

    def events_of(self, i: int, kind: type) -> list[tuple[float, Event]]:
        return [(t, e) for t, e in self.peers[i].events if isinstance(e, kind)]
