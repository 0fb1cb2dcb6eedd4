"""The tasks that move frames between the peers' taps and the UDP socket.

Flow:
1. ``tap_to_wan`` (one task per port): drain the port's tap until EAGAIN
   (bounded batch), count each frame, hand the frames to the port's
   ``Peer.send_frames`` and send the datagrams it returns. With the fast path a
   read may be a TCP superframe, cut into segments that each fit one datagram;
   datagrams of one size leave in one UDP_SEGMENT ``sendmsg``.
2. ``wan_to_tap``: drain the UDP socket the same way (UDP_GRO: one receive may
   hold many datagrams), give the datagrams of each sender to
   ``Device.receive_datagrams`` together, write the frames of each peer to that
   peer's tap (``Output.runs`` says which frames are whose), send the replies.
3. ``timers``: sleep until ``Device.next_deadline()``, then ``tick``; woken
   early when a data path moved the deadline.
Nothing here waits for a view: status, dashboard and metrics only sample
``Counters`` and the core's stats.

With the native lane (``lane``, bridger/shell/lane.py) the first two loops are
the lane's C loop: the tasks register the ports and run the lane, and the
passes here (``tap_pass``, ``udp_pass``) run only on what the lane hands over,
under the lane's mutex (``core()``); the timers task takes the lane's counts
first.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from bridger.dataplane.accounting import Counters
from bridger.errors import BridgerError, HostError
from bridger.fastpath import udp as fast_udp
from bridger.guard.events import LoopGone
from bridger.guard.loop import LoopDetector
from bridger.protocol import Address, Device, Output, Peer
from bridger.protocol.messages import MAX_UDP_PAYLOAD
from bridger.protocol.relay import via_parts
from bridger.shell.eventlog import log_event
from bridger.shell.port import Port, SmallFrames
from bridger.shell.udp import Sender, UdpEndpoint, normalise_address

log = logging.getLogger("bridger")

#: Frames or datagrams handled per wake-up before yielding to other tasks.
BATCH = 128
#: The socket's error queue is read at least this often while datagrams keep coming.
ERROR_QUEUE_INTERVAL = 0.05
#: Largest datagram, frame or (fast path) superframe plus virtio-net header read in one call.
READ_SIZE = 65536 + 1024


def earliest(peers: Iterable[Peer]) -> float | None:
    """The earliest deadline of ``peers``' timers (None: none armed)."""
    best: float | None = None
    for peer in peers:
        deadline = peer.next_deadline()
        if deadline is not None and (best is None or deadline < best):
            best = deadline
    return best


class Lane(Protocol):
    """What the forwarder asks of a native lane (bridger/shell/lane.py's
    ``NativeLane``). The lane sits above the forwarder: it runs the passes
    here on what it hands over, so it imports this module, and the forwarder
    knows it only by these verbs."""

    def held(self) -> AbstractContextManager[None]:
        """The lane's mutex; what the core sends meanwhile leaves after it."""
    def send_later(self, datagrams: list[tuple[bytes, Any]]) -> bool:
        """Keep ``datagrams`` for the end of the current hold (False: not held)."""
    def push(self, now: float, peers: Iterable[Peer] | None = None) -> None:
        """The core's decisions into the lane's tables (``peers``: the only
        peers whose decisions may have changed; None: any)."""
    def learn(self, port: Port, frames: list[bytes]) -> None:
        """Frames Python delivered to ``port``: their sources are behind its peer."""
    def sync(self, now: float) -> None:
        """The lane's counts and timer facts into the core, then ``push``."""
    async def serve_port(self, port: Port) -> None:
        """A port's task: its registration in the lane."""
    async def run(self) -> None:
        """The socket's task: the lane's loop."""


@dataclass(eq=False)
class Forwarder:
    """The data plane's state, shared by its tasks."""

    device: Device
    udp: UdpEndpoint
    counters: Counters
    ports: dict[Peer, Port] = field(default_factory=dict)
    #: Loop protection's probes and verdicts (None: off).
    detector: LoopDetector | None = None
    wake_timers: trio.Event = field(default_factory=trio.Event)
    #: The native lane (bridger.shell.lane), or None: the pure-Python path.
    lane: Lane | None = None
    timer_at: float = math.inf
    #: Bumped by every pass of the forwarding tasks: a watchdog can see they run.
    heartbeat: int = 0
    #: When udp_pass last read the socket's error queue.
    errors_read_at: float = -math.inf
    #: Forget what the bridge learnt on the LAN port (the host's verb; None:
    #: nobody can): called when a loop is gone (:meth:`_loop_gone`).
    flush_lan: Callable[[], None] | None = None
    sender: Sender = field(init=False)
    _by_endpoint: dict[Address, Peer] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.sender = Sender(self.udp, self.counters, self._path_mtu)

    def _path_mtu(self, addr: Address) -> int:
        for peer in self.ports:
            if peer.endpoint == addr:
                return peer.path_mtu
        return MAX_UDP_PAYLOAD  # not a peer's: no probe, any refusal is a drop

    @staticmethod
    def now() -> float:
        return float(trio.current_time())

    def handle(self, out: Output, now: float, peers: Iterable[Peer] | None = None, *,
               wake: bool = True) -> None:
        """Send (datagrams for relayed peers wrapped for their relay first),
        deliver and log what the core returned.  ``peers``: the only peers
        whose timers or lane decisions (session, endpoint, sizes) the work
        behind ``out`` may have changed (None: any of them); only their
        deadlines and lane entries are looked at, so a pass costs the same with
        100 peers as with one (issue 26).  ``wake``: False from the timers
        task, which looks at every deadline itself next."""
        if peers is not None and (out.runs or out.datagrams):
            peers = self._touched(out, peers)
        if out.datagrams:
            self.device.traversal.route(out, now)
        if out.datagrams and (self.lane is None or not self.lane.send_later(out.datagrams)):
            self.sender.send(out.datagrams)  # (with the lane's mutex held: once released)
        if out.frames:
            self._deliver(out, now)
        if self.detector is not None and self.detector.has_relays:
            self.handle(self._relay(now), now)  # (datagrams only: no deeper)
        if self.lane is not None:
            self.lane.push(now, peers)
        for event in out.events:
            log_event(event)
        if self.detector is not None and self.detector.has_events:
            for guard_event in self.detector.take_events():
                log.warning("%s", guard_event.line())
                if isinstance(guard_event, LoopGone):
                    self._loop_gone()
        if not wake:
            return
        deadline = self.device.next_deadline() if peers is None else earliest(peers)
        if deadline is not None and deadline < self.timer_at:
            self.wake_timers.set()

    def _loop_gone(self) -> None:
        """A loop is gone: the bridge learnt remote hosts' MACs on the LAN port
        while it lasted (their frames came in through the loop's cable), and
        would drop what goes to them now that the tunnel carries it again, until
        the entries age out (300 s) or the hosts re-resolve.  Forget them, as a
        switch does on a topology change: the next frame to them is flooded."""
        if self.flush_lan is None:
            return
        try:
            self.flush_lan()
        except (HostError, OSError) as exc:
            log.warning("loop gone: could not flush the bridge's LAN port: %s", exc)

    @staticmethod
    def _touched(out: Output, peers: Iterable[Peer]) -> Iterable[Peer] | None:
        """``peers`` and the peers ``out`` shows were touched too: those that
        delivered frames (a datagram relayed to us is received as from its
        sender); None when a datagram goes through a relay (sealing it for the
        relay moves the relay's timers)."""
        if any(via_parts(dest) is not None for _, dest in out.datagrams):
            return None
        if not out.runs:
            return peers
        return [*peers, *(peer for peer, _ in out.runs)]

    def _deliver(self, out: Output, now: float) -> None:
        frames, csum, runs = out.frames, out.csum, out.runs
        if len(runs) == 1:
            port = self.ports.get(runs[0][0])
            if port is not None:
                port.deliver(frames, csum, now)
                if self.lane is not None:
                    self.lane.learn(port, frames)
            return
        for i, (peer, start) in enumerate(runs):
            end = runs[i + 1][1] if i + 1 < len(runs) else len(frames)
            port = self.ports.get(peer)
            if port is None or start == end:
                continue
            part = {k - start: v for k, v in csum.items() if start <= k < end}
            port.deliver(frames[start:end], part, now)
            if self.lane is not None:
                self.lane.learn(port, frames[start:end])

    # -- tasks -------------------------------------------------------------

    def core(self) -> AbstractContextManager[object]:
        """Hold this around every core call that may seal or open: with a native
        lane running, the lane's mutex (the lane seals and opens on the same
        sessions); without one, nothing."""
        lane = self.lane
        return nullcontext() if lane is None else lane.held()

    async def tap_to_wan(self, port: Port) -> None:
        """A port's task: the pure-Python loop, or with a native lane the port's
        registration in it (the lane reads the tap and hands over what it
        leaves to Python, which runs :meth:`tap_pass` on it)."""
        if self.lane is not None:
            await self.lane.serve_port(port)
            return
        fd = port.fd
        while True:
            await trio.lowlevel.wait_readable(fd)
            if not self.tap_pass(port):  # wait_readable is a checkpoint too
                await trio.lowlevel.checkpoint()

    def tap_pass(self, port: Port, first: bytes | None = None) -> bool:
        """One pass over a tap (``first``: a read already taken from it): drain it
        until EAGAIN (at most BATCH reads), seal, send. True when drained."""
        fd = port.fd
        peer = port.peer
        vnet = port.vnet
        self.heartbeat += 1
        now = self.now()
        small = SmallFrames(peer, now, Output())
        room = peer.frame_room(csum=True)
        drained = False
        for i in range(BATCH):
            if i == 0 and first is not None:
                frame = first
            else:
                try:
                    frame = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    drained = True
                    break
                except OSError as exc:
                    raise BridgerError(f"tap {port.tap}: read failed: {exc.strerror}") from exc
            if vnet:
                port.from_tap(frame, now, room, small)
                if len(small.out.datagrams) + len(small.frames) >= BATCH:
                    small.flush()
                    self.handle(small.out, now, (peer,))
                    small.out = Output()
                continue
            port.plain_from_tap(frame, now, small)
        small.flush()
        self.handle(small.out, now, (peer,))
        return drained

    async def wan_to_tap(self) -> None:
        """The socket's task: the pure-Python loop, or the native lane."""
        if self.lane is not None:
            await self.lane.run()
            return
        sock = self.udp.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            if not self.udp_pass():
                await trio.lowlevel.checkpoint()

    def udp_pass(
        self, first: list[tuple[list[bytes], tuple[Any, ...]]] | None = None,
        errors: bool = False, drain: bool = True,
    ) -> bool:
        """One pass over the socket (``first``: datagrams already received, with
        their senders, in order): drain it until EAGAIN (at most BATCH
        receives), open, deliver, answer; read the error queue where errors may
        wait (``errors``: the lane saw them). True when drained.

        ``drain=False`` (the native lane's hand-overs): only ``first`` and the
        error queue; what waits on the socket stays for the lane, whose checks
        (junk, mac1, per-source handshake admission) it must pass first."""
        sock = self.udp.sock
        device = self.device
        gro = self.udp.gro
        split = fast_udp.split_gro
        cmsg_space = fast_udp.GRO_CMSG_SPACE
        self.heartbeat += 1
        now = self.now()
        wall = time.time()
        out = Output()
        # Datagrams from one sender go to the core together, across reads:
        # without GRO (or when a path splits the sender's GSO batches) that
        # is still one core call per batch rather than per datagram.
        batch: list[bytes] = []
        batch_from: tuple[Any, ...] = ()
        # The peers whose timers these datagrams may move: found by address;
        # None (look at every peer) once one comes from an address no peer has
        # (a handshake from a new endpoint, a stranger).
        touched: set[Peer] | None = set()
        # What the traversal did for other peers than the senders (introduced
        # them, relayed to them) moves those peers' timers too.
        traversal = device.traversal
        cross = (traversal.introductions_taken, traversal.relayed_datagrams)

        def receive() -> None:
            nonlocal touched
            addr = normalise_address(batch_from)
            if touched is not None:
                peer = self._peer_at(addr)
                if peer is None:
                    touched = None
                else:
                    touched.add(peer)
            device.receive_datagrams(batch, addr, now, wall, out)

        def add(datagrams: list[bytes], sockaddr: tuple[Any, ...]) -> None:
            nonlocal batch, batch_from
            if sockaddr != batch_from and batch:
                receive()
                batch = []
            batch_from = sockaddr
            batch.extend(datagrams)

        for datagrams, sockaddr in first or ():
            add(datagrams, sockaddr)
        drained = not drain
        for i in range(BATCH if drain else 0):
            try:
                if gro:
                    data, ancdata, _flags, sockaddr = sock.recvmsg(READ_SIZE, cmsg_space)
                else:
                    data, sockaddr = sock.recvfrom(READ_SIZE)
                    ancdata = None
            except BlockingIOError:
                drained = True
                errors = errors or (i == 0 and not first)  # woken for an error?
                break
            except OSError:
                # An ICMP error (IP_RECVERR): its news waits in the error queue.
                errors = True
                continue
            add(split(data, ancdata) if ancdata else [data], sockaddr)
            if len(batch) + len(out.frames) >= BATCH:
                receive()
                batch = []
                if (traversal.introductions_taken, traversal.relayed_datagrams) != cross:
                    touched = None
                self.handle(out, now, touched)
                out = Output()
                touched = set()
                cross = (traversal.introductions_taken, traversal.relayed_datagrams)
        if batch:
            receive()
        if (traversal.introductions_taken, traversal.relayed_datagrams) != cross:
            touched = None
        if errors or now - self.errors_read_at >= ERROR_QUEUE_INTERVAL:
            # (Not every pass: a send may have taken the error's signal, so the
            # queue is also read now and then while datagrams keep coming.)
            self.errors_read_at = now
            for addr, mtu, local in self.udp.kernel_mtu_reports():
                out.extend(device.path_mtu_report(addr, mtu, now, local=local))
                touched = None
        self.handle(out, now, touched)
        return drained

    def _peer_at(self, addr: Address) -> Peer | None:
        """The peer whose endpoint is ``addr`` (a cache, checked on every hit)."""
        peer = self._by_endpoint.get(addr)
        if peer is not None and peer.endpoint == addr and peer in self.ports:
            return peer
        self._by_endpoint = {p.endpoint: p for p in self.ports if p.endpoint is not None}
        return self._by_endpoint.get(addr)

    def _probe(self, now: float) -> Output:
        """Loop protection: send each peer with a session its probes (a probe
        never starts a handshake)."""
        out = Output()
        assert self.detector is not None
        by_name = {peer.name: peer for peer in self.ports}
        for name, probe in self.detector.tick(now):
            peer = by_name.get(name)
            if peer is not None and peer.current is not None:
                peer.send_frames([probe], now, out)
        return out

    def _relay(self, now: float) -> Output:
        """Loop protection in mode hub: pass other hubs' probes on to each peer
        with a session (bridger/guard/loop.py, 6.)."""
        out = Output()
        assert self.detector is not None
        by_name = {peer.name: peer for peer in self.ports}
        for name, probe in self.detector.take_relays():
            peer = by_name.get(name)
            if peer is not None and peer.current is not None:
                peer.send_frames([probe], now, out)
        return out

    async def timers(self) -> None:
        detector = self.detector
        while True:
            deadline = self.device.next_deadline()
            probe_at = math.inf if detector is None else detector.next_deadline()
            self.timer_at = min(math.inf if deadline is None else deadline, probe_at)
            self.wake_timers = trio.Event()
            with trio.move_on_at(self.timer_at):
                await self.wake_timers.wait()
            now = self.now()
            with self.core():
                if self.lane is not None:
                    self.lane.sync(now)  # the timers see what the lane did
                if deadline is not None and now >= deadline:
                    # Only the peers whose timers ran move in the lane (issue 26).
                    out, ticked = self.device.tick_peers(now, time.time())
                    self.handle(out, now, ticked, wake=False)
                if now >= probe_at:
                    # Sending moves no peer's lane entry (session, endpoint,
                    # sizes, block): a round of probes to every peer does not
                    # make the lane look at every port (issue 26).
                    self.handle(self._probe(now), now, (), wake=False)
