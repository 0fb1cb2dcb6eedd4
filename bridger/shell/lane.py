"""The native lane in the Trio shell: one C loop in a worker thread moves the
ordinary frames; Python keeps every decision (bridger/native/src/bn_lane.h).

Structure (all owned by the socket task's nursery, so cancellation stops it and
an error propagates like any task's):

1. ``run``: the lane's loop in a worker thread (``trio.to_thread``), with the
   GIL released; its fatal error (a tap that cannot be read) is raised here as
   the same one-line BridgerError the Python loop raises. On cancellation the
   loop is told to stop and the thread is waited for.
2. ``_handovers``: woken by the lane's eventfd when the lane queued
   something (the records of ``bridger.native.contract``).  A handshake
   message (past the lane's length and mac1 checks, through its bounded
   queue; nothing is held) goes to the core on its own, under the mutex for
   just that message.  Anything else came with its fd: a tap read the lane
   does not forward (no session, a frame the guards must look at, a frame to
   fragment...), an authenticated datagram from another address (roaming) or
   to an index only Python holds, an opened payload that is not a frame
   (fragments, probes), or a frame the inbound guard must see.  Under the
   lane's mutex it runs the ordinary Python pass (``Forwarder.tap_pass`` /
   ``udp_pass``) on what was handed over (a tap pass drains its tap; a UDP
   pass reads nothing more from the socket, whose datagrams must pass the
   lane's checks first), then gives the fd back.
3. ``_sync`` every SYNC_INTERVAL (and before the timers run, and before a
   status snapshot): takes the lane's counters and timer facts into the core
   and the status counters, and pushes the core's decisions (sendable
   session, receive sessions, endpoint, sizes, loop block) into the lane's
   tables (``push``, also after every core call through ``Forwarder.handle``).

No frame waits for Python: the lane's tables always hold the last decision.
Nothing Python sends while it holds the mutex leaves under it: ``held``
collects the datagrams and sends them once the mutex is released.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import trio

from bridger.errors import BridgerError
from bridger.native import contract
from bridger.native.contract import (
    FramePunt,
    HandOver,
    HandshakePunt,
    MtuPunt,
    PayloadPunt,
    RawPunt,
    TapPunt,
)
from bridger.native.guardcfg import guard_cfg
from bridger.protocol import DropReason, Output, Peer
from bridger.protocol.keypair import Keypair
from bridger.protocol.relay import via_parts
from bridger.shell.forward import Forwarder
from bridger.shell.udp import normalise_address

if TYPE_CHECKING:
    from bridger.shell.port import Port

log = logging.getLogger("bridger")

#: Seconds between syncs of the lane's counters and timer facts into the core.
SYNC_INTERVAL = 0.1
#: Seconds the device stays under load (cookies required) after the lane shed
#: a handshake message or the queue was deep (wireguard-go's UnderLoadAfterTime).
UNDER_LOAD_AFTER = 1.0
#: Seconds between two pushes that look at every port, whatever they were told.
FULL_PUSH_INTERVAL = 1.0
#: The device is under load while a backlog of handshake messages waits: at
#: least UNDER_LOAD_QUEUE of one take (1/8 of the lane's queue, as WireGuard
#: counts its queue) still to serve once UNDER_LOAD_LAG seconds went into the
#: take (see ``backlogged``).
UNDER_LOAD_QUEUE = contract.HS_QUEUE // 8
UNDER_LOAD_LAG = 0.1


def backlogged(waiting: int, spent: float) -> bool:
    """Is the device under load, with ``waiting`` handshake messages of one
    take still to serve after ``spent`` seconds on it?  Yes when the core
    cannot keep up: a backlog of UNDER_LOAD_QUEUE that UNDER_LOAD_LAG of work
    did not bring down.  A burst of legitimate initiations the core answers
    in a few milliseconds each is not load (a hub whose spokes all restart at
    once, issue 26: when any take of 32 counted, each of them got a cookie
    reply instead of a response).  A flood is: the rest of the take, and
    what comes within UNDER_LOAD_AFTER, then costs a cookie reply each and
    no DH; what the lane sheds (its queue full, strangers over their rate)
    keeps the device there (``sync``); the core's global handshake bucket
    (``Device._admit_handshake``) bounds the DH work before either."""
    return waiting >= UNDER_LOAD_QUEUE and spent >= UNDER_LOAD_LAG


def held_sessions(peer: Peer) -> set[Any]:
    """The native sessions of the keypairs ``peer`` still holds."""
    return {kp.session for kp in (peer.current, peer.previous, peer.next)
            if kp is not None and kp.session is not None}


def wipe_sessions(sessions: Iterable[Any]) -> None:
    """Zero the keys of retired native sessions now (``Session.wipe``), rather
    than when the last reference goes.  Only the native copies can be wiped:
    the core's ``Keypair.send_key`` / ``receive_key``, the handshake's keys,
    the private key and the PSKs are immutable ``bytes`` in
    ``bridger.protocol`` and stay in memory until collected (docs/native.md).
    The caller makes sure the lane's tables no longer hold them, or holds the
    lane's mutex (a wiped session is refused by the lane anyway)."""
    for session in sessions:
        session.wipe()


def clock_offset() -> float:
    """Trio's clock minus CLOCK_MONOTONIC (``time.perf_counter`` on Linux): the
    lane reads the monotonic clock and adds this to get the core's ``now``."""
    return float(trio.current_time()) - time.perf_counter()


class NativeLane:
    """The forwarder's native lane (see the module docstring); a ``forward.Lane``."""

    def __init__(self, fwd: Forwarder, lane_module: Any) -> None:
        self.fwd = fwd
        self._module = lane_module
        udp = fwd.udp
        self.lane = lane_module.Lane(udp.sock.fileno(), udp.dual_stack, udp.gso, udp.gro,
                                     clock_offset())
        self._ids: dict[Port, int] = {}
        self._by_id: dict[int, Port] = {}
        self._pushed: dict[int, tuple[Any, ...]] = {}
        #: The sessions last pushed per port (send and receive).
        self._sessions: dict[int, set[Any]] = {}
        self._wakeups = 0
        self._gso_warned = False
        #: The transport indexes last told to the lane as Python's own.
        self._py_indexes: tuple[int, ...] = ()
        #: The size of the device's index table when the indexes were last looked at.
        self._index_size = -1
        #: When ``push`` last looked at every port.
        self._full_at = -math.inf
        self._mac1_for = b""
        self._loaded_until = -1.0
        #: Depth of ``held``, and what Python sent meanwhile (sent on release).
        self._depth = 0
        self._outbox: list[tuple[bytes, Any]] = []

    # -- the mutex -------------------------------------------------------------

    @contextmanager
    def held(self) -> Iterator[None]:
        """The lane's mutex (recursive).  Datagrams the core returns meanwhile
        (``send_later``) leave when the outermost hold ends, after the unlock."""
        self.lane.lock()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            self.lane.unlock()
            if self._depth == 0 and self._outbox:
                outbox, self._outbox = self._outbox, []
                self.fwd.sender.send(outbox)

    def send_later(self, datagrams: list[tuple[bytes, Any]]) -> bool:
        """Keep ``datagrams`` for the end of the current hold: True, or False
        when the mutex is not held (the caller sends them)."""
        if self._depth == 0:
            return False
        self._outbox.extend(datagrams)
        return True

    # -- ports -------------------------------------------------------------------

    async def serve_port(self, port: Port) -> None:
        """A port's task: registered in the lane while it runs."""
        self.add_port(port)
        try:
            self.push(self.fwd.now())
            await trio.sleep_forever()
        finally:
            self.remove_port(port)

    def add_port(self, port: Port) -> int:
        guard = port.guard
        cfg = guard_cfg(None) if guard is None else guard_cfg(guard.config, guard.free_probes)
        ident: int = self.lane.add_port(port.fd, port.vnet, cfg)
        self.lane.set_udp_join(ident, port.udp_join)
        self._ids[port] = ident
        self._by_id[ident] = port
        self._lend(port, ident, self.fwd.now())
        # The lane's known MACs stay a subset of the guard's ``known`` (the
        # remote MAC table): what the table evicts, the lane forgets.
        lane = self.lane
        port.counters.on_remote_evict(lambda mac: lane.forget(ident, (mac,)))
        return ident

    def _lend(self, port: Port, ident: int, now: float) -> None:
        """Top up the port's storm-bucket tokens in the lane (Guard.lend): it
        passes flooded frames itself while it holds some."""
        guard = port.guard
        if guard is None:
            return
        have = self.lane.lend(ident, 0, 0)
        nd, other = guard.lend(now, have)
        if nd or other:
            self.lane.lend(ident, nd, other)

    def remove_port(self, port: Port) -> None:
        ident = self._ids.pop(port, None)
        if ident is None:
            return
        port.counters.on_remote_evict(None)
        with self.held():
            self.lane.remove_port(ident)
            self._by_id.pop(ident, None)
            self._pushed.pop(ident, None)
            self._sessions.pop(ident, None)

    def push(self, now: float, peers: Iterable[Peer] | None = None) -> None:
        """The core's decisions into the lane's tables (only what changed).

        ``peers``: the only peers whose decisions the work since the last push
        may have changed (``Forwarder.handle``'s); only their ports are looked
        at, so a hand-over costs the same with 100 ports as with one (issue
        26).  Every port is looked at when ``peers`` is None, when the loop
        guard has news (a block or release concerns a peer other than the one
        whose frame revealed it), and at least every FULL_PUSH_INTERVAL (a
        safety net for a change no caller reported)."""
        lane = self.lane
        device = self.fwd.device
        if device.public_key != self._mac1_for:
            lane.set_mac1_key(contract.mac1_key(device.public_key))
            self._mac1_for = device.public_key
        detector = self.fwd.detector
        if (peers is None or now - self._full_at >= FULL_PUSH_INTERVAL
                or (detector is not None and detector.has_events)):
            self._full_at = now
            ports: Iterable[tuple[Port, int]] = self._ids.items()
            full = True
        else:
            by_peer = self.fwd.ports
            ids = self._ids
            ports = []
            for peer in dict.fromkeys(peers):
                port = by_peer.get(peer)
                ident = None if port is None else ids.get(port)
                if port is not None and ident is not None:
                    ports.append((port, ident))
            full = False
        changes = []
        for port, ident in ports:
            peer = port.peer
            kp = peer.sendable(now)
            send = None if kp is None else kp.session
            endpoint = peer.endpoint
            if via_parts(endpoint) is not None:
                # Relayed (issue 23): Python wraps every datagram for the relay,
                # so the lane hands this peer's frames over; it still opens
                # what arrives directly on the peer's sessions.
                send, endpoint = None, None
            rx = tuple(k.session for k in (peer.current, peer.previous)
                       if k is not None and k.session is not None)
            blocked = port.guard is not None and port.guard.loop.blocked
            plain, csum = peer.frame_room(csum=False), peer.frame_room(csum=True)
            # (``next``: its index is one of Python's until it becomes current.)
            state = (id(send), endpoint, tuple(map(id, rx)), plain, csum, blocked, id(peer.next))
            if self._pushed.get(ident) != state:
                changes.append((ident, peer, send, endpoint, rx, plain, csum, blocked, state))
        # The transport indexes Python holds change with some peer's keypairs
        # (then its state above changed) or with the index table's size.
        if full or changes or len(device.index) != self._index_size:
            self._index_size = len(device.index)
            indexes = tuple(i for i, entry in device.index.items() if type(entry) is Keypair)
            if indexes != self._py_indexes:
                lane.set_python_indexes(indexes[:contract.MAX_PY_INDEXES])
                self._py_indexes = indexes
        if not changes:
            return
        sockaddr = self.fwd.udp.sockaddr
        max_frame = device.config.max_frame
        for ident, peer, send, endpoint, rx, plain, csum, blocked, state in changes:
            sessions = set(rx) | ({send} if send is not None else set())
            with self.held():
                lane.set_port(ident, send, None if endpoint is None else sockaddr(endpoint),
                              plain, csum, csum, max_frame, blocked)
                lane.set_rx(ident, rx)
                # Sessions the core let go of (rotated out, expired) are done:
                # their keys are zeroed now, not when the last reference goes.
                wipe_sessions(self._sessions.get(ident, set()) - sessions
                              - held_sessions(peer))
            self._pushed[ident] = state
            self._sessions[ident] = sessions

    def learn(self, port: Port, frames: list[bytes]) -> None:
        """Frames Python delivered to a port: their sources are behind its peer."""
        ident = self._ids.get(port)
        if ident is not None:
            self.lane.learn(ident, frames)

    # -- the tasks -----------------------------------------------------------------

    async def run(self) -> None:
        """The loop, the hand-overs and the sync, until cancelled."""
        lane = self.lane
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._handovers)
            nursery.start_soon(self._sync)
            lane.reset()  # a lane restarted with a new device: forget the last stop
            try:
                await trio.to_thread.run_sync(self._loop)
            finally:
                nursery.cancel_scope.cancel()

    def _loop(self) -> None:
        try:
            self.lane.run()
        except OSError as exc:
            port = self._by_id.get(self.lane.error_port)
            where = f"tap {port.tap}" if port is not None else "native lane"
            raise BridgerError(f"{where}: read failed: {exc.strerror}") from None

    async def _handovers(self) -> None:
        lane = self.lane
        fd = lane.punt_fd
        try:
            while True:
                await trio.lowlevel.wait_readable(fd)
                self._handle(contract.take_punts(lane))
        finally:
            lane.stop()

    def _handle(self, punts: list[HandOver]) -> None:
        """The hand-overs of one take, in order: handshake messages one by one
        (the mutex held for each alone), the rest under one hold."""
        handshakes = [p for p in punts if isinstance(p, HandshakePunt)]
        rest = [p for p in punts if not isinstance(p, HandshakePunt)]
        if rest:
            with self.held():
                self._handle_held(rest)
        if handshakes:
            self._handshakes(handshakes)

    def _handshakes(self, messages: list[HandshakePunt]) -> None:
        fwd = self.fwd
        device = fwd.device
        now = fwd.now()
        wall = time.time()
        began = time.perf_counter()
        for i, msg in enumerate(messages):
            if backlogged(len(messages) - i, time.perf_counter() - began):
                self._loaded_until = now + UNDER_LOAD_AFTER
            device.set_under_load(now < self._loaded_until)
            with self.held():
                out = device.receive_datagrams((msg.data,), normalise_address(msg.sockaddr),
                                               now, wall)
                fwd.handle(out, now)

    def _handle_held(self, punts: Sequence[HandOver]) -> None:
        fwd = self.fwd
        lane = self.lane
        now = fwd.now()
        # The Python side first learns what the lane did (the MACs it saw, its
        # counters), so its guards and core decide on the same state as a
        # pure-Python run would.
        self.sync(now)
        udp = errors = False
        received: list[tuple[list[bytes], tuple[Any, ...]]] = []
        #: The peers of the ports handed over or delivered to (for ``push``).
        touched: list[Peer] = []
        for punt in punts:
            if isinstance(punt, TapPunt):
                port = self._by_id.get(punt.port)
                if port is None:
                    continue
                touched.append(port.peer)
                try:
                    fwd.tap_pass(port, punt.data)
                    self._lend(port, punt.port, now)
                finally:
                    lane.release(punt.port)
            elif isinstance(punt, RawPunt):  # the rest of a receive the lane did not take
                udp = True
                if punt.datagrams:
                    received.append((punt.datagrams, punt.sockaddr))
                else:  # the socket has errors queued (ICMP): udp_pass reads them
                    errors = True
            elif isinstance(punt, PayloadPunt):
                udp = True
                out = fwd.device.receive_payload(punt.local_index, punt.plaintext, punt.size,
                                                 normalise_address(punt.sockaddr), now,
                                                 time.time())
                fwd.handle(out, now)
            elif isinstance(punt, MtuPunt):  # the lane read it off the error queue
                fwd.handle(fwd.device.path_mtu_report(normalise_address(punt.sockaddr), punt.mtu,
                                                      now, local=punt.local), now)
            elif isinstance(punt, FramePunt):
                udp = True
                port = self._by_id.get(punt.port)
                if port is None:
                    continue
                touched.append(port.peer)
                start, offset = punt.csum_start, punt.csum_offset
                port.deliver([punt.frame], {} if start < 0 else {0: (start, offset)}, now)
                lane.learn(punt.port, [punt.frame])
        if udp:
            try:
                # They alone: what waits on the socket is the lane's to read.
                fwd.udp_pass(received, errors, drain=False)
            finally:
                lane.release(-1)
        self.push(now, touched)  # (the passes pushed what they touched)

    async def _sync(self) -> None:
        while True:
            await trio.sleep(SYNC_INTERVAL)
            with self.held():
                self.sync(self.fwd.now())

    # -- counters and timer facts ------------------------------------------------

    def sync(self, now: float) -> None:
        """The lane's counts and timer facts since the last sync, into the core
        and the status counters; then the core's decisions into the lane."""
        fwd = self.fwd
        stats = contract.take_stats(self.lane)
        st = stats.lane
        device = fwd.device
        device.rx_datagrams += st.rx_datagrams
        device.rx_bytes += st.rx_bytes
        for reason, n in ((DropReason.MALFORMED, st.drop_malformed),
                          (DropReason.UNKNOWN_INDEX, st.drop_unknown_index),
                          (DropReason.HANDSHAKE_MAC1, st.drop_mac1)):
            if n:
                device.drops[reason] += n
        counters = fwd.counters
        for name, n in (("udp_send_blocked", st.udp_send_blocked),
                        ("udp_send_failed", st.udp_send_failed),
                        ("udp_send_too_big", st.udp_send_too_big),
                        ("udp_truncated", st.udp_truncated),
                        ("handshake_shed", st.handshakes_shed)):
            if n:
                counters.drop(name, n)
        if st.handshakes_shed:
            self._loaded_until = now + UNDER_LOAD_AFTER
        device.set_under_load(now < self._loaded_until)
        fwd.heartbeat += st.wakeups - self._wakeups
        self._wakeups = st.wakeups
        if st.gso_refused and not self._gso_warned:
            self._gso_warned = True
            fwd.udp.gso = False
            log.warning("UDP GSO refused by the egress device: sending datagrams one by one")
        out = Output()
        #: The peers the lane counted something for: the only ones whose
        #: timers and decisions this sync may move.
        touched: list[Peer] = []
        for row in stats.ports:
            port = self._by_id.get(row.port)
            if port is None:
                continue
            peer: Peer = port.peer
            touched.append(peer)
            drops = {reason: n for reason, n in (
                (DropReason.AUTH_FAILED, row.drop_auth), (DropReason.REPLAY, row.drop_replay),
                (DropReason.TOO_OLD, row.drop_too_old),
                (DropReason.FRAME_TOO_BIG, row.drop_too_big),
                (DropReason.MALFORMED, row.drop_malformed),
                (DropReason.STALE_SESSION, row.drop_stale)) if n}
            peer.native_counts(row.tx_frames, row.tx_datagrams, row.tx_bytes, row.rx_datagrams,
                               row.rx_bytes, row.rx_frames, drops)
            peer.native_activity(row.tx_first_data, row.tx_last, row.rx_last,
                                 row.rx_first_data, now, out)
            port.counters.add_native(row.lan_to_wan, row.wan_to_lan)
            if row.tap_write_failed:
                port.counters.drop("tap_write_failed", row.tap_write_failed)
        for entry in stats.macs:
            port = self._by_id.get(entry.port)
            if port is None:
                continue
            port.counters.native_source(entry.inbound, entry.mac, entry.frames, entry.bytes, now)
            if port.guard is not None:
                port.guard.note_source(entry.mac, entry.inbound, now)
            touched.append(port.peer)
        # Rekeys; pushes; wakes the timers if deadlines moved.
        fwd.handle(out, now, touched)
