"""One peer's side of the receive path, after the device authenticated a datagram.

The device (device.py) demultiplexes datagrams, opens them and checks the
replay window; plain frames it delivers itself. Transport datagrams come in
runs (consecutive datagrams on one keypair); for each run this module does:
 1. :func:`begin_run`, before the run's first payload: a waiting responder
    session (``next``) is confirmed, the endpoint roams to the source, the
    timers hear of an authenticated receive, the queue is flushed, and the
    probes a new session's path-MTU search waits to send go out.
 2. :func:`receive_payload` for an inner message other than a frame:
    fragments are reassembled; PROBE / PROBE_ACK go to the path-MTU driver;
    introductions, relay messages and path checks to NAT traversal.
 3. :func:`end_run`: the frames delivered are counted, the data timers run,
    and an initiator session older than REKEY_ON_RECEIVE_TIME starts a rekey.
"""

from __future__ import annotations

from .constants import REKEY_ON_RECEIVE_TIME
from .events import Address, DropReason, EndpointChanged, Output
from .keypair import Keypair
from .messages import InnerType, decode_fragment_untrusted
from .peerstate import PeerState
from .relay import via_relay
from .traversal import INNER_TYPES as TRAVERSAL_TYPES

_FRAGMENT = int(InnerType.FRAGMENT)
_PROBE = int(InnerType.PROBE)
_PROBE_ACK = int(InnerType.PROBE_ACK)


def begin_run(
    peer: PeerState, kp: Keypair[PeerState], addr: Address, now: float, out: Output
) -> None:
    """Step 1: a run of datagrams on ``kp`` from ``addr`` authenticated."""
    if kp is peer.next:
        peer.confirm_next(kp, now, out)
    authenticated_from(peer, addr, now, out)
    if kp is peer.current:
        peer.flush_queue(now, out)
        if peer.pmtu.probes_waiting:  # the search a new session started
            peer.probe_path(now, out)


def authenticated_from(
    peer: PeerState, addr: Address, now: float, out: Output, proof: bool = False
) -> None:
    """Something from ``addr`` authenticated as the peer's: roam (where NAT
    traversal's path rule allows: traversal.py), liveness, timers."""
    if peer.device.traversal.arrived(peer, addr, now, proof):
        roam(peer, addr, now, out)
    if addr == peer.endpoint and via_relay(addr) is None:
        peer.last_direct_rx = now
    peer.last_received = now
    peer.unreachable = False
    peer.timers.any_authenticated_received()


def roam(peer: PeerState, addr: Address, now: float, out: Output) -> None:
    """The endpoint becomes ``addr``; called only after a packet from it authenticated."""
    if addr != peer.endpoint:
        old = peer.endpoint
        peer.endpoint = addr
        if old is not None:
            peer.path_moved(now, out)
        out.events.append(EndpointChanged(old, addr, peer.name))


def receive_payload(
    peer: PeerState, plaintext: bytes, size: int, addr: Address, now: float, out: Output
) -> int:
    """Step 2: an authenticated inner message other than FRAME / FRAME_CSUM, in a
    datagram of ``size`` bytes from ``addr``; returns how many frames it
    delivered (0 or 1). Raises BadPacket (or ValueError) for a malformed one:
    the device counts it."""
    kind = plaintext[0]
    if kind == _FRAGMENT:
        frag = decode_fragment_untrusted(plaintext)
        peer.fragments_received += 1
        peer.timers.data_received(now)
        whole = peer.reassembler.add(frag, now)
        if whole is not None:
            out.frames.append(whole)
            return 1
        return 0
    if kind == _PROBE:
        peer.answer_probe(plaintext, size, now, out)
    elif kind == _PROBE_ACK:
        peer.probe_acked(plaintext, now, out)
    elif kind in TRAVERSAL_TYPES:
        peer.device.traversal.on_payload(peer, plaintext, addr, now, out)
    else:
        peer.drops[DropReason.MALFORMED] += 1
    return 0


def end_run(
    peer: PeerState, kp: Keypair[PeerState], delivered: int, now: float, out: Output
) -> None:
    """Step 3: the end of a run on ``kp`` that delivered ``delivered`` frames."""
    if delivered:
        peer.frames_received += delivered
        peer.timers.data_received(now)
    if (
        kp is peer.current
        and kp.initiator
        and peer.handshake.pending is None
        and now - kp.created >= REKEY_ON_RECEIVE_TIME
    ):
        peer.start_handshake(now, out)
