"""One peer's side of path-MTU discovery: drives its :class:`~.pmtu.PathMtu`.

pmtu.py is the algorithm (what to probe, what the value is) and never sends;
this module feeds it the peer's news and carries out what it asks:
 1. A session up on a new path (:func:`session_up`) or an endpoint that moved
    (:func:`new_path`) restarts the search between the path's floor and bound.
 2. :func:`step` seals the probes the search wants now (postponed while no
    session is usable) and reports a settled change (``PathMtuChanged``).
 3. A PROBE from the peer is answered with a PROBE_ACK naming the size that
    arrived (:func:`answer_probe`); the peer's PROBE_ACK to ours
    (:func:`receive_ack`) is the only proof that raises the value.
 4. The kernel's reports (ICMP, EMSGSIZE) lower it (:func:`kernel_report`).
Probes are not "authenticated sends" for the timers: one may well be lost, so
it must not stand in for a keepalive.
"""

from __future__ import annotations

from .constants import TRANSPORT_OVERHEAD
from .events import Output, PathMtuChanged
from .messages import (
    decode_probe_ack_untrusted,
    decode_probe_untrusted,
    encode_probe,
    encode_probe_ack,
)
from .peerstate import PeerState


def session_up(peer: PeerState, now: float) -> None:
    """Step 1 for a new session: search afresh on a new path, or when no value
    is proven and no search runs (the probes go out once the session is
    confirmed usable, see :func:`step`)."""
    pmtu = peer.pmtu
    if peer.pmtu_new_path or not (pmtu.proven or pmtu.searching):
        peer.pmtu_new_path = False
        pmtu.restart(now, peer.pmtu_bound(), peer.pmtu_floor())


def new_path(peer: PeerState, now: float, out: Output) -> None:
    """Step 1 for a moved endpoint: the path's MTU is searched afresh (now if a
    session can carry probes, else when the next one is up)."""
    if peer.sendable(now) is None:
        peer.pmtu_new_path = True
        return
    peer.pmtu.restart(now, peer.pmtu_bound(), peer.pmtu_floor())
    step(peer, now, out)


def step(peer: PeerState, now: float, out: Output) -> None:
    """Step 2: send the probes the search wants now; report a settled change."""
    pmtu = peer.pmtu
    kp = peer.sendable(now)
    if kp is None:
        pmtu.postpone(now)
    else:
        overhead = peer.ip_overhead + TRANSPORT_OVERHEAD
        for probe_id, size in pmtu.due(now):
            peer.seal(kp, encode_probe(probe_id, size - overhead), out)
    settled = pmtu.take_settled()
    if settled is not None:
        out.events.append(PathMtuChanged(settled.old, settled.new, peer.name,
                                         settled.source.value))


def answer_probe(peer: PeerState, plaintext: bytes, size: int, now: float, out: Output) -> None:
    """Step 3: the peer's PROBE arrived in a datagram of ``size`` bytes."""
    probe_id = decode_probe_untrusted(plaintext)
    reply = peer.sendable(now)
    if reply is not None:
        peer.seal(reply, encode_probe_ack(probe_id, size), out)
        peer.authenticated_sent(reply, now, out)


def receive_ack(peer: PeerState, plaintext: bytes, now: float, out: Output) -> None:
    """Step 3: the peer's PROBE_ACK to one of our probes."""
    probe_id, acked = decode_probe_ack_untrusted(plaintext)
    if peer.pmtu.acked(probe_id, acked + peer.ip_overhead, now):
        step(peer, now, out)


def kernel_report(peer: PeerState, mtu: int, now: float, out: Output, *, local: bool) -> None:
    """Step 4 (see :meth:`Peer.path_mtu_report`)."""
    if local:
        peer.pmtu.local_limit(mtu, now)
    else:
        peer.pmtu.kernel_report(mtu, now)
    step(peer, now, out)
