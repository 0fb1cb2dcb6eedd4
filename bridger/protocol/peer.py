"""One peer of a device: the verbs that drive it, each carried out by one concept module.

A peer's behaviour is split by concept, one module each, as in wireguard-go's
``device/`` (see docs/protocol.md, "Layout"):

==================  ==========================================================
``peerstate.py``    the peer's state (keypair slots, endpoint, timers, queue,
                    counters), what it answers from it, and the verbs between
                    the concept modules, declared abstract
``peer.py``         :class:`Peer`: those verbs carried out, the entry points of
                    the device, the shell and NAT traversal, the timers'
                    dispatch (``tick``)
``send.py``         the outbound flow: frames -> sealed datagrams, the queue,
                    keepalives, key freshness on send
``receive.py``      the peer's side of an authenticated run: confirm, roam,
                    payloads other than frames, rekey on receive
``handshake.py``    initiation, response, cookie reply (over noise.py)
``pmtu_driver.py``  this peer's path-MTU probing (over pmtu.PathMtu)
==================  ==========================================================

NAT traversal (introductions, punching, relaying: traversal.py) is the
device's; it drives a peer through the verbs under "From NAT traversal", and a
peer asks it, through the device, whether an address it heard from may become
the endpoint (receive.py) and which keepalive it needs (``keepalive_interval``).

The rule that keeps them apart, and every import pointing downward: a concept
module is functions of a :class:`~.peerstate.PeerState` and imports none of
the others; where one needs another (a send that starts a rekey, a response
that flushes the queue) it calls a verb PeerState declares, and only this
module, on top, imports the concept modules to carry the verbs out. The device
drives a peer through the verbs under "Inbound, from the device" and never
touches its private members; a peer uses the device's public verbs
(``new_index``, ``bind_index``, ``release_index``, ``new_session``), seen from
below as a :class:`~.peerstate.PeerHost`.
"""

from __future__ import annotations

from typing import Self

from . import handshake, pmtu_driver, receive, send
from .constants import (
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_TIME,
    TRANSPORT_OVERHEAD,
)
from .events import (
    Address,
    DropReason,
    EndpointChanged,
    Output,
    PeerUnreachable,
    SessionExpired,
)
from .keypair import Keypair
from .messages import CookieReply, Initiation, Response
from .noise import ResponderState
from .peerstate import PeerState
from .relay import via_relay


class Peer(PeerState):
    """Sans-I/O state of one peer, with its verbs; created by ``Device.add_peer``."""

    # --- from the shell --------------------------------------------------------

    def send_frames(
        self,
        frames: list[bytes],
        now: float,
        out: Output,
        csum: tuple[int, int] | None = None,
    ) -> Output:
        """Encrypt Ethernet frames for this peer, in order (or queue them until a
        session is up). ``csum`` = (csum_start, csum_offset) marks frames whose L4
        checksum is partial (the local kernel left it to "hardware"); they travel
        as FRAME_CSUM and the peer completes them. The one send path (send.py)."""
        return send.send_frames(self, frames, now, out, csum)

    def set_endpoint(self, addr: Address | None, now: float, out: Output) -> None:
        """Endpoint from configuration or DNS; starts a handshake if frames wait."""
        self.configured_endpoint = addr
        self.device.traversal.path(self).configured(addr)
        self.move_endpoint(addr, now, out)

    # --- from NAT traversal (traversal.py) ---------------------------------------

    def move_endpoint(self, addr: Address | None, now: float, out: Output) -> None:
        """Send to ``addr`` from now on (an introduced address, a relay, a path a
        pong confirmed; not remembered as configured); a handshake if frames wait."""
        old = self.endpoint
        self.endpoint = addr
        if addr is not None and addr != old:
            pmtu_driver.new_path(self, now, out)
            out.events.append(EndpointChanged(old, addr, self.name))
            if self.keepalive_interval > 0 and self.timers.persistent_keepalive is None:
                self.timers.persistent_keepalive = now
            if self.queue and self.sendable(now) is None:
                self.start_handshake(now, out)

    def handshake_now(self, now: float, out: Output) -> None:
        """An initiation to the endpoint now (a punch, a fallback to a relay),
        unless a session is usable; it replaces one under way."""
        if self.sendable(now) is None and self.endpoint is not None:
            self.start_handshake(now, out, retry=self.handshake.pending is not None)

    def send_inner(self, plaintext: bytes, now: float, out: Output,
                   to: Address | None = None) -> bool:
        """Seal an inner message (not a frame: no data for the dead-peer timer)
        on the current session, to the endpoint (an authenticated send for the
        keepalive timers) or to ``to`` (a path ping or pong: none); False
        without a session."""
        kp = self.sendable(now)
        if kp is None:
            return False
        send.seal(self, kp, plaintext, out, to)
        if to is None or to == self.endpoint:
            self.authenticated_sent(kp, now, out)
        return True

    # --- from the shell, continued -----------------------------------------------

    def initiate(self, now: float, out: Output) -> None:
        """Start a handshake now unless a session is usable or one is under way
        (e.g. at start towards a remembered endpoint, whatever the keepalive)."""
        if self.sendable(now) is None and self.handshake.pending is None:
            self.start_handshake(now, out)

    def path_mtu_report(self, mtu: int, now: float, out: Output, *, local: bool = False) -> None:
        """The kernel's word on a datagram to this peer: it needed a path MTU of
        ``mtu`` (an ICMP "fragmentation needed" / "packet too big", which is
        unauthenticated news), or with ``local`` the local interface refused it
        as larger than ``mtu`` (EMSGSIZE)."""
        pmtu_driver.kernel_report(self, mtu, now, out, local=local)

    def native_activity(
        self,
        sent_first: float,
        sent_last: float,
        received_last: float,
        received_first: float,
        now: float,
        out: Output,
    ) -> None:
        """What a native lane did on this peer's sessions since the last call, as
        times on the core's clock (0: did not happen): the first frame sent since
        the last authenticated receive, the last authenticated send and receive,
        the first frame received since the last authenticated send.  Applies the
        same timer verbs and rekey checks as :meth:`send_frames` and a receive
        run would have (the lane only uses ``current`` to send and ``current``
        or ``previous`` to receive, from the peer's endpoint)."""
        timers = self.timers
        if received_last:
            self.last_received = received_last
            if via_relay(self.endpoint) is None:  # the lane receives from the endpoint only
                self.last_direct_rx = received_last
            self.unreachable = False
            timers.any_authenticated_received()
        if sent_last:
            timers.any_authenticated_sent(sent_last, self.keepalive_interval)
            if self.native_big:
                self.pmtu.data_sent(sent_last)
        self.native_big = False
        if sent_first:
            timers.data_sent(sent_first, self.device.random)
        if received_first:
            timers.data_received(received_first)
        kp = self.current
        if kp is None or not kp.initiator or self.handshake.pending is not None:
            return
        age = now - kp.created
        if (sent_last and (age >= REKEY_AFTER_TIME or kp.send_counter >= REKEY_AFTER_MESSAGES)) or (
            received_last and age >= REKEY_ON_RECEIVE_TIME
        ):
            self.start_handshake(now, out)

    def native_counts(
        self, frames_sent: int, tx_datagrams: int, tx_bytes: int, rx_datagrams: int,
        rx_bytes: int, frames_received: int, drops: dict[DropReason, int],
    ) -> None:
        """Add what a native lane counted for this peer (see :meth:`native_activity`,
        called after it)."""
        # Large frames among them (the lane tells totals only: judged by the mean
        # datagram): the path MTU in use is worth confirming.
        big = self.big_frame() + 1 + TRANSPORT_OVERHEAD + self.ip_overhead
        self.native_big = tx_datagrams > 0 and tx_bytes > tx_datagrams * big // 2
        self.frames_sent += frames_sent
        self.tx_datagrams += tx_datagrams
        self.tx_bytes += tx_bytes
        self.rx_datagrams += rx_datagrams
        self.rx_bytes += rx_bytes
        self.frames_received += frames_received
        for reason, n in drops.items():
            self.drops[reason] += n

    # --- timers ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        best = self.timers.next_deadline()
        for when in (self.reassembler.next_deadline(), self.pmtu.next_deadline()):
            if when is not None and (best is None or when < best):
                best = when
        return best

    def tick(self, now: float, out: Output) -> None:
        """Run the timers whose deadline has passed."""
        self.reassembler.expire(now)
        t = self.timers
        if t.retransmit_handshake is not None and now >= t.retransmit_handshake:
            t.retransmit_handshake = None
            handshake.retransmit(self, now, out)
        if t.cookie_retry is not None and now >= t.cookie_retry:
            t.cookie_retry = None
            handshake.resend_with_cookie(self, now, out)
        if t.new_handshake is not None and now >= t.new_handshake:
            t.new_handshake = None
            silent = now - (self.last_received if self.last_received is not None else now)
            self.unreachable = True
            out.events.append(PeerUnreachable(silent, self.name))
            self.pmtu.peer_lost()
            self.pmtu_new_path = True
            if self.handshake.pending is None:
                self.start_handshake(now, out)
        if t.send_keepalive is not None and now >= t.send_keepalive:
            t.send_keepalive = None
            self.send_keepalive(now, out)
        if t.persistent_keepalive is not None and now >= t.persistent_keepalive:
            t.persistent_keepalive = None
            interval = self.keepalive_interval
            if interval > 0 and self.endpoint is not None:
                self.send_keepalive(now, out)
                if t.persistent_keepalive is None:
                    t.persistent_keepalive = now + interval
        if t.zero_keys is not None and now >= t.zero_keys:
            t.zero_keys = None
            self.zero_keys(out)
        pmtu_due = self.pmtu.next_deadline()
        if pmtu_due is not None and now >= pmtu_due:
            self.probe_path(now, out)

    # --- inbound, from the device ----------------------------------------------

    def receive_initiation(
        self, msg: Initiation, state: ResponderState, addr: Address, now: float, out: Output
    ) -> None:
        """An admitted initiation, authenticated as coming from this peer."""
        handshake.receive_initiation(self, msg, state, addr, now, out)

    def receive_response(self, msg: Response, addr: Address, now: float, out: Output) -> None:
        """An admitted response whose receiver index names this peer."""
        handshake.receive_response(self, msg, addr, now, out)

    def awaits_reply_to(self, receiver: int) -> bool:
        """Does a cookie reply to ``receiver`` answer our latest handshake message?"""
        return handshake.awaits_reply_to(self, receiver)

    def receive_cookie_reply(self, msg: CookieReply, now: float, out: Output) -> None:
        """A cookie reply for which :meth:`awaits_reply_to` said yes."""
        handshake.receive_cookie_reply(self, msg, now, out)

    def begin_run(self, kp: Keypair[Self], addr: Address, now: float, out: Output) -> None:
        """Once per run of transport datagrams on ``kp`` that authenticated, before
        its first payload: confirm a waiting session, roam, timers, flush the queue."""
        receive.begin_run(self, kp, addr, now, out)

    def receive_payload(self, plaintext: bytes, size: int, addr: Address, now: float,
                        out: Output) -> int:
        """An authenticated inner message other than FRAME / FRAME_CSUM (which the
        device's receive loop delivers itself) in a datagram of ``size`` bytes
        from ``addr``; returns how many frames it delivered (0 or 1)."""
        return receive.receive_payload(self, plaintext, size, addr, now, out)

    def end_run(self, kp: Keypair[Self], delivered: int, now: float, out: Output) -> None:
        """The end of a run on ``kp``: data timers and rekey-on-receive."""
        receive.end_run(self, kp, delivered, now, out)

    def forget(self) -> None:
        """Drop every keypair, the pending handshake and the queued frames (the
        device is removing this peer)."""
        self.forget_keys()
        self.queue.clear()

    # --- the verbs between the concept modules (declared by PeerState) --------

    def start_handshake(self, now: float, out: Output, *, retry: bool = False) -> None:
        """Send an initiation now (handshake.py), whatever the session's state."""
        handshake.initiate(self, now, out, retry=retry)

    def confirm_next(self, kp: Keypair[Self], now: float, out: Output) -> None:
        """The waiting responder session ``kp`` is confirmed: it becomes current."""
        handshake.confirm_next(self, kp, now, out)

    def authenticated_from(self, addr: Address, now: float, out: Output,
                           proof: bool = False) -> None:
        """Something from ``addr`` authenticated as this peer's (receive.py);
        ``proof``: it answers one of ours there (a handshake response)."""
        receive.authenticated_from(self, addr, now, out, proof)

    def seal(self, kp: Keypair[Self], plaintext: bytes, out: Output) -> None:
        """One transport datagram carrying ``plaintext`` to the endpoint (send.py)."""
        send.seal(self, kp, plaintext, out)

    def authenticated_sent(self, kp: Keypair[Self], now: float, out: Output) -> None:
        """After an authenticated send on ``kp``: timers, key freshness (send.py)."""
        send.authenticated_sent(self, kp, now, out)

    def send_keepalive(self, now: float, out: Output) -> None:
        """An empty transport message, or a handshake without a session (send.py)."""
        send.send_keepalive(self, now, out)

    def flush_queue(self, now: float, out: Output) -> bool:
        """Send the queued frames if a session is usable; whether it was (send.py)."""
        return send.flush_queue(self, now, out)

    def probe_path(self, now: float, out: Output) -> None:
        """Send the path-MTU probes due now; report a settled change (pmtu_driver.py)."""
        pmtu_driver.step(self, now, out)

    def path_moved(self, now: float, out: Output) -> None:
        """The endpoint moved: search the new path's MTU (pmtu_driver.py)."""
        pmtu_driver.new_path(self, now, out)

    def path_session_up(self, now: float) -> None:
        """A session came up: restart the path-MTU search if due (pmtu_driver.py)."""
        pmtu_driver.session_up(self, now)

    def answer_probe(self, plaintext: bytes, size: int, now: float, out: Output) -> None:
        """The peer's PROBE arrived in ``size`` bytes: ack it (pmtu_driver.py)."""
        pmtu_driver.answer_probe(self, plaintext, size, now, out)

    def probe_acked(self, plaintext: bytes, now: float, out: Output) -> None:
        """The peer's PROBE_ACK to one of our probes (pmtu_driver.py)."""
        pmtu_driver.receive_ack(self, plaintext, now, out)

    # --- expiry ----------------------------------------------------------------

    def forget_keys(self) -> None:
        """Drop every keypair and the pending handshake, and their index entries."""
        release = self.device.release_index
        for kp in (self.current, self.previous, self.next):
            if kp is not None:
                release(kp.local_index)
        self.current = self.previous = self.next = None
        handshake.end(self)

    def zero_keys(self, out: Output) -> None:
        """The zero-keys timer fired: the sessions are over (``SessionExpired``)."""
        self.forget_keys()
        self.timers.retransmit_handshake = None
        self.established_at = None
        out.events.append(SessionExpired(self.name))
