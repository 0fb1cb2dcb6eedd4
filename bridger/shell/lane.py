"""The native lane in the Trio shell: one C loop in a worker thread moves the
ordinary frames; Python keeps every decision (bridger/native/src/bn_lane.h).

Structure (all owned by the socket task's nursery, so cancellation stops it and
an error propagates like any task's):

1. ``run``: the lane's loop in a worker thread (``trio.to_thread``), with the
   GIL released; its fatal error (a tap that cannot be read) is raised here as
   the same one-line BridgerError the Python loop raises. On cancellation the
   loop is told to stop and the thread is waited for.
2. ``_handovers``: woken by the lane's eventfd when the lane handed something
   over with its fd: a tap read it does not forward (no session, a frame the
   guards must look at, a frame to fragment...), or a datagram it does not
   take (handshakes, unknown index, another address: roaming...), or an
   opened payload that is not a frame (fragments, probes), or a frame the
   inbound guard must see.  Under the lane's mutex it runs the ordinary
   Python pass (``Forwarder.tap_pass`` / ``udp_pass``) on that fd, starting
   with what was handed over, then gives the fd back.
3. ``_sync`` every SYNC_INTERVAL (and before the timers run, and before a
   status snapshot): takes the lane's counters and timer facts into the core
   and the status counters, and pushes the core's decisions (sendable
   session, receive sessions, endpoint, sizes, loop block) into the lane's
   tables (``push``, also after every core call through ``Forwarder.handle``).

No frame waits for Python: the lane's tables always hold the last decision.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import trio

from bridger.errors import BridgerError
from bridger.native.guardcfg import guard_cfg
from bridger.protocol import DropReason, Output, Peer
from bridger.shell.udp import normalise_address

if TYPE_CHECKING:
    from bridger.shell.forward import Forwarder
    from bridger.shell.port import Port

log = logging.getLogger("bridger")

#: Seconds between syncs of the lane's counters and timer facts into the core.
SYNC_INTERVAL = 0.1


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
    """The forwarder's native lane (see the module docstring)."""

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

    # -- the mutex -------------------------------------------------------------

    @contextmanager
    def held(self) -> Iterator[None]:
        self.lane.lock()
        try:
            yield
        finally:
            self.lane.unlock()

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
        config = None if port.guard is None else port.guard.config
        ident: int = self.lane.add_port(port.fd, port.vnet, guard_cfg(config))
        self.lane.set_udp_join(ident, port.udp_join)
        self._ids[port] = ident
        self._by_id[ident] = port
        # The lane's known MACs stay a subset of the guard's ``known`` (the
        # remote MAC table): what the table evicts, the lane forgets.
        lane = self.lane
        port.counters.on_remote_evict(lambda mac: lane.forget(ident, (mac,)))
        return ident

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

    def push(self, now: float) -> None:
        """The core's decisions into the lane's tables (only what changed)."""
        lane = self.lane
        sockaddr = self.fwd.udp.sockaddr
        for port, ident in self._ids.items():
            peer = port.peer
            kp = peer.sendable(now)
            send = None if kp is None else kp.session
            endpoint = peer.endpoint
            rx = tuple(k.session for k in (peer.current, peer.previous)
                       if k is not None and k.session is not None)
            blocked = port.guard is not None and port.guard.loop.blocked
            plain, csum = peer.frame_room(csum=False), peer.frame_room(csum=True)
            state = (id(send), endpoint, tuple(map(id, rx)), plain, csum, blocked)
            if self._pushed.get(ident) == state:
                continue
            sessions = set(rx) | ({send} if send is not None else set())
            with self.held():
                lane.set_port(ident, send, None if endpoint is None else sockaddr(endpoint),
                              plain, csum, csum, self.fwd.device.config.max_frame, blocked)
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
                with self.held():
                    self._handle(lane.take_punts())
        finally:
            lane.stop()

    def _handle(self, punts: list[tuple[Any, ...]]) -> None:
        fwd = self.fwd
        lane = self.lane
        now = fwd.now()
        # The Python side first learns what the lane did (the MACs it saw, its
        # counters), so its guards and core decide on the same state as a
        # pure-Python run would.
        self.sync(now)
        udp = errors = False
        received: list[tuple[list[bytes], tuple[Any, ...]]] = []
        for punt in punts:
            kind = punt[0]
            if kind == "tap":
                port = self._by_id.get(punt[1])
                if port is None:
                    continue
                try:
                    fwd.tap_pass(port, punt[2])
                finally:
                    lane.release(punt[1])
            elif kind == "raw":  # the rest of a receive, and receives after it
                udp = True
                if punt[1]:
                    received.append((punt[1], punt[2]))
                else:  # the socket has errors queued (ICMP): udp_pass reads them
                    errors = True
            elif kind == "payload":
                udp = True
                _kind, _ident, index, plaintext, size, sockaddr = punt
                out = fwd.device.receive_payload(index, plaintext, size,
                                                 normalise_address(sockaddr), now, time.time())
                fwd.handle(out, now)
            elif kind == "frame":
                udp = True
                port = self._by_id.get(punt[1])
                if port is None:
                    continue
                frame, start, offset = punt[2], punt[3], punt[4]
                port.deliver([frame], {} if start < 0 else {0: (start, offset)}, now)
                lane.learn(punt[1], [frame])
        if udp:
            try:
                fwd.udp_pass(received, errors)  # they, then what waits on the socket
            finally:
                lane.release(-1)
        self.push(now)

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
        device_stats, ports, macs = self.lane.take_stats()
        (rx_dgrams, rx_bytes, blocked, failed, too_big, wakeups, _lost, gso_refused,
         truncated) = device_stats
        device = fwd.device
        device.rx_datagrams += rx_dgrams
        device.rx_bytes += rx_bytes
        counters = fwd.counters
        for reason, n in (("udp_send_blocked", blocked), ("udp_send_failed", failed),
                          ("udp_send_too_big", too_big), ("udp_truncated", truncated)):
            if n:
                counters.drop(reason, n)
        fwd.heartbeat += wakeups - self._wakeups
        self._wakeups = wakeups
        if gso_refused and not self._gso_warned:
            self._gso_warned = True
            fwd.udp.gso = False
            log.warning("UDP GSO refused by the egress device: sending datagrams one by one")
        out = Output()
        for row in ports:
            port = self._by_id.get(row[0])
            if port is None:
                continue
            (_ident, tx_frames, tx_dgrams, tx_bytes, p_rx_dgrams, p_rx_bytes, rx_frames,
             auth, replay, too_old, too_big_frames, malformed, tap_failed, tx, rx,
             sent_first, sent_last, received_last, received_first) = row
            peer: Peer = port.peer
            drops = {reason: n for reason, n in (
                (DropReason.AUTH_FAILED, auth), (DropReason.REPLAY, replay),
                (DropReason.TOO_OLD, too_old), (DropReason.FRAME_TOO_BIG, too_big_frames),
                (DropReason.MALFORMED, malformed)) if n}
            peer.native_counts(tx_frames, tx_dgrams, tx_bytes, p_rx_dgrams, p_rx_bytes,
                               rx_frames, drops)
            peer.native_activity(sent_first, sent_last, received_last, received_first, now, out)
            port.counters.add_native(tx, rx)
            if tap_failed:
                port.counters.drop("tap_write_failed", tap_failed)
        for ident, direction, mac, frames, nbytes in macs:
            port = self._by_id.get(ident)
            if port is None:
                continue
            inbound = direction == 1
            port.counters.native_source(inbound, mac, frames, nbytes, now)
            if port.guard is not None:
                port.guard.note_source(mac, inbound, now)
        fwd.handle(out, now)  # rekeys; pushes; wakes the timers if deadlines moved
