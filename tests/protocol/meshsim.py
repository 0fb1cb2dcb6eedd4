"""N real devices in a full mesh over an in-memory lossy link, with a virtual clock.

Each site is one ``Device`` with one ``Peer`` per other site. Frames name their
source and destination site and carry a sequence number, so a receiver can
check that every frame came out of the right peer (``Output.runs``), was meant
for it, arrived intact and at most once. All randomness comes from one seeded
``random.Random``.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import struct
from dataclasses import dataclass, field

from bridger.protocol import Address, Device, DeviceConfig, Event, Output, Peer, PeerConfig
from tests.protocol.simnet import WALL_EPOCH, keypair

_HEAD = struct.Struct(">BBQH")


def make_frame(src: int, dst: int, seq: int, size: int) -> bytes:
    head = _HEAD.pack(src, dst, seq, size)
    body = hashlib.blake2b(head, digest_size=64).digest()
    need = size - len(head)
    return head + (body * (need // 64 + 1))[:need]


def parse_frame(frame: bytes) -> tuple[int, int, int]:
    src, dst, seq, size = _HEAD.unpack_from(frame, 0)
    assert frame == make_frame(src, dst, seq, size), "frame corrupted"
    return src, dst, seq


@dataclass
class Site:
    index: int
    device: Device
    addr: Address
    #: Peer for each other site index.
    peers: dict[int, Peer]
    received: dict[int, set[int]] = field(default_factory=dict)  # src -> seqs
    sent: dict[int, list[int]] = field(default_factory=dict)  # dst -> seqs
    events: list[tuple[float, Event]] = field(default_factory=list)
    duplicates: int = 0
    misdelivered: int = 0


class MeshSim:
    def __init__(self, n: int, seed: int, *, loss: float = 0.0, delay: float = 0.01) -> None:
        self.rng = random.Random(seed)
        self.n = n
        self.loss = loss
        self.delay = delay
        self.now = 0.0
        self.keys = [keypair(self.rng) for _ in range(n)]
        self.addrs: list[Address] = [(f"192.0.2.{i + 1}", 55555) for i in range(n)]
        self._queue: list[tuple[float, int, bytes, Address, Address]] = []
        self._order = 0
        self.down: set[int] = set()
        self.sites = [self._make_site(i) for i in range(n)]
        self._seq = 0

    def _make_site(self, i: int) -> Site:
        rng = random.Random(self.rng.random())
        device = Device(DeviceConfig(self.keys[i][0]), now=self.now,
                        wall_clock=WALL_EPOCH + self.now, random_bytes=rng.randbytes)
        peers = {}
        for j in range(self.n):
            if j != i:
                peers[j] = device.add_peer(PeerConfig(
                    self.keys[j][1], endpoint=self.addrs[j], persistent_keepalive=25.0,
                    name=f"site{j}",
                ), self.now)
        return Site(i, device, self.addrs[i], peers)

    def restart(self, i: int) -> None:
        """Replace site ``i``'s device with a fresh one (same keys, no state)."""
        old = self.sites[i]
        new = self._make_site(i)
        new.received, new.sent, new.events = old.received, old.sent, old.events
        new.duplicates, new.misdelivered = old.duplicates, old.misdelivered
        self.sites[i] = new

    def _absorb(self, site: Site, out: Output) -> None:
        runs = out.runs
        for r, (peer, start) in enumerate(runs):
            end = runs[r + 1][1] if r + 1 < len(runs) else len(out.frames)
            for frame in out.frames[start:end]:
                src, dst, seq = parse_frame(frame)
                if dst != site.index or peer is not site.peers.get(src):
                    site.misdelivered += 1
                    continue
                got = site.received.setdefault(src, set())
                if seq in got:
                    site.duplicates += 1
                got.add(seq)
        if out.frames and not runs:
            site.misdelivered += len(out.frames)
        for event in out.events:
            site.events.append((self.now, event))
        for datagram, dest in out.datagrams:
            self._send_out(site, dest, datagram)

    def _send_out(self, site: Site, dest: Address, datagram: bytes) -> None:
        """A datagram ``site`` sent onto the network (a NAT would rewrite its source)."""
        self._transmit(site.addr, dest, datagram)

    def _transmit(self, src: Address, dest: Address, datagram: bytes) -> None:
        if self.rng.random() < self.loss:
            return
        self._enqueue(src, dest, datagram)

    def _enqueue(self, src: Address, dest: Address, datagram: bytes) -> None:
        self._order += 1
        heapq.heappush(self._queue, (self.now + self.delay, self._order, datagram, src, dest))

    def send(self, src: int, dst: int, size: int = 200) -> None:
        site = self.sites[src]
        self._seq += 1
        site.sent.setdefault(dst, []).append(self._seq)
        frame = make_frame(src, dst, self._seq, size)
        self._absorb(site, site.peers[dst].send_frames([frame], self.now, Output()))

    def run_until(self, end: float) -> None:
        while True:
            candidates = [end]
            if self._queue:
                candidates.append(self._queue[0][0])
            for i, site in enumerate(self.sites):
                deadline = site.device.next_deadline()
                if deadline is not None and i not in self.down:
                    candidates.append(max(deadline, self.now))
            t = min(candidates)
            if t >= end and not (self._queue and self._queue[0][0] <= end):
                self.now = end
                return
            self.now = max(self.now, t)
            wall = WALL_EPOCH + self.now
            if self._queue and self._queue[0][0] <= self.now:
                _, _, datagram, src, dest = heapq.heappop(self._queue)
                self._deliver(datagram, src, dest)
                continue
            for i, site in enumerate(self.sites):
                deadline = site.device.next_deadline()
                if deadline is not None and deadline <= self.now and i not in self.down:
                    self._absorb(site, site.device.tick(self.now, wall))

    def _deliver(self, datagram: bytes, src: Address, dest: Address) -> None:
        """A datagram in flight arrives (at every running site with address ``dest``)."""
        for i, site in enumerate(self.sites):
            if site.addr == dest and i not in self.down:
                self._absorb(site, site.device.receive_datagrams(
                    [datagram], src, self.now, WALL_EPOCH + self.now))

    def frame_size(self) -> int:
        """The size of the next frame ``traffic`` sends."""
        return self.rng.randint(60, 1514)

    def traffic(self, end: float, rate: float, pairs: list[tuple[int, int]]) -> None:
        """Frames at Poisson ``rate`` per second on each (src, dst) pair until ``end``."""
        due = [self.now + self.rng.expovariate(rate) for _ in pairs]
        while True:
            k = min(range(len(pairs)), key=due.__getitem__)
            if due[k] >= end:
                self.run_until(end)
                return
            self.run_until(due[k])
            src, dst = pairs[k]
            if src not in self.down:
                self.send(src, dst, self.frame_size())
            due[k] += self.rng.expovariate(rate)

    def ratio(self, src: int, dst: int, since: int = 0) -> float:
        sent = [s for s in self.sites[src].sent.get(dst, []) if s > since]
        got = self.sites[dst].received.get(src, set())
        return sum(1 for s in sent if s in got) / max(1, len(sent))
