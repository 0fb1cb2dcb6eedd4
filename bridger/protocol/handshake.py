"""One peer's handshakes: initiation, response and cookie reply, over noise.py.

noise.py computes the messages; this module decides when to send them and what
a completed one changes (see docs/protocol.md, "Handshake"):
 1. Initiator: :func:`initiate` sends an initiation (mac1, and mac2 with a
    fresh cookie) and enters it in the device's index table; the timers
    retransmit it (:func:`retransmit`) until REKEY_ATTEMPT_TIME, when the
    queued frames are dropped (``HandshakeGaveUp``).
 2. A response to our pending initiation (:func:`receive_response`) makes the
    ``current`` keypair at once; the queue is flushed, or a keepalive confirms
    the session to the responder.
 3. Responder: an initiation (:func:`receive_initiation`) with a fresh
    timestamp is answered with a response and makes the ``next`` keypair; it
    becomes ``current`` when the initiator's first transport message arrives
    (receive.py). Crossing initiations: the side with the greater public key
    keeps its own.
 4. A cookie reply to our latest handshake message (:func:`receive_cookie_reply`)
    gives the cookie the next initiation's mac2 carries.  If it refused a
    message that carried no mac2 (the responder is under load), that message
    is sent again with the cookie after COOKIE_RETRY_DELAY + jitter
    (:func:`resend_with_cookie`): an initiation still pending, or a response
    whose session still waits for its confirmation.  The initiator would
    otherwise sit idle until its retransmission (REKEY_TIMEOUT), and a
    responder until the peer's; a hub whose spokes all restart at once put
    them there for 5-9 s (issue 26).  At most one such resend per refusal: the
    resent message carries a mac2, and a refusal of that is not resent.
The device has already checked mac1, mac2 and the rate limits of every
handshake message it hands over, and authenticated an initiation's sender.
"""

from __future__ import annotations

from .constants import (
    HANDSHAKE_RACE_RESEND,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
)
from .events import (
    Address,
    CookieReceived,
    DropReason,
    HandshakeCompleted,
    HandshakeGaveUp,
    HandshakeInitiated,
    Output,
)
from .keypair import Keypair
from .messages import U32, BadPacket, CookieReply, Initiation, Response
from .noise import (
    ResponderState,
    consume_response,
    create_initiation,
    create_response,
    tai64n,
)
from .peerstate import PeerState
from .timers import jitter


def initiate(peer: PeerState, now: float, out: Output, *, retry: bool) -> None:
    """Send an initiation (step 1); ``retry``: a retransmission of this attempt."""
    if peer.endpoint is None:
        return
    hs = peer.handshake
    if not retry and peer.next is not None and now - peer.next.created < REKEY_TIMEOUT:
        # We just answered the peer's initiation: its first transport message
        # confirms that session within a round trip (frames wait in the
        # queue). Initiating now would make a second, needless handshake
        # (as in WireGuard, a response counts as a recent handshake).
        return
    if not retry:
        hs.first_sent_at = now
    device = peer.device
    if hs.pending is not None:
        device.release_index(hs.pending.local_index)
    msg, state = create_initiation(
        device.identity, peer.keys, device.new_index(), device.random(32),
        _timestamp(peer, now),
    )
    hs.pending = state
    device.bind_index(state.local_index, peer)
    hs.sent_at = now
    datagram = hs.cookies.add_macs(msg.encode(), now)
    out.datagrams.append((datagram, peer.endpoint))
    peer.tx_datagrams += 1
    peer.tx_bytes += len(datagram)
    peer.timers.handshake_initiated(now, _jitter(peer))
    peer.timers.any_authenticated_sent(now, peer.keepalive_interval)
    out.events.append(HandshakeInitiated(retry, peer.name))


def retransmit(peer: PeerState, now: float, out: Output) -> None:
    """The retransmit timer fired: send the initiation again, or give up."""
    hs = peer.handshake
    if hs.pending is None:
        return
    if now - hs.first_sent_at >= REKEY_ATTEMPT_TIME:
        dropped = peer.queue.clear()
        peer.drops[DropReason.HANDSHAKE_GAVE_UP] += dropped
        end(peer)
        out.events.append(HandshakeGaveUp(now - hs.first_sent_at, dropped, peer.name))
        return
    initiate(peer, now, out, retry=True)


def end(peer: PeerState) -> None:
    """Forget the pending initiation, if any, and its index entry."""
    hs = peer.handshake
    if hs.pending is not None:
        peer.device.release_index(hs.pending.local_index)
        hs.pending = None


def receive_response(
    peer: PeerState, msg: Response, addr: Address, now: float, out: Output
) -> None:
    """Step 2: an admitted response whose receiver index is our pending initiation."""
    hs = peer.handshake
    state = hs.pending
    if state is None or msg.receiver != state.local_index:
        peer.drops[DropReason.UNKNOWN_INDEX] += 1
        return
    device = peer.device
    try:
        keys = consume_response(device.identity, peer.keys, state, msg)
    except BadPacket:
        peer.drops[DropReason.AUTH_FAILED] += 1
        return
    session = device.new_session(state.local_index, msg.sender, keys.send, keys.receive, now)
    kp = Keypair(
        state.local_index, msg.sender, keys.send, keys.receive, now, initiator=True,
        peer=peer, session=session,
    )
    hs.pending = None  # its index now names the keypair
    peer.timers.handshake_complete()
    peer.rtt = now - hs.sent_at
    rekey = peer.current is not None
    install_current(peer, kp)
    session_up(peer, kp, rekey, True, now, out)
    peer.authenticated_from(addr, now, out, proof=True)
    if not peer.flush_queue(now, out):
        peer.send_keepalive(now, out)  # confirms the session to the responder
    peer.probe_path(now, out)


def receive_initiation(
    peer: PeerState, msg: Initiation, state: ResponderState, addr: Address, now: float,
    out: Output,
) -> None:
    """Step 3: an admitted initiation, authenticated as coming from ``peer``."""
    hs = peer.handshake
    if state.timestamp <= hs.greatest_timestamp:
        peer.drops[DropReason.HANDSHAKE_REPLAY] += 1
        return
    hs.greatest_timestamp = state.timestamp
    # The tie-break comes after authentication and after the timestamp is
    # recorded: an initiation dropped for the race must not stay fresh for a
    # later replay (which would be answered and move the endpoint), and
    # someone who only knows our public key must not trigger the re-send.
    device = peer.device
    if (
        hs.pending is not None
        and now - hs.sent_at < REKEY_TIMEOUT
        and device.identity.public > peer.config.public_key
    ):
        # Crossing initiations: the side with the greater public key keeps
        # its own; the other answers it. Exactly one session results.
        peer.drops[DropReason.HANDSHAKE_RACE] += 1
        resend_at = hs.sent_at + HANDSHAKE_RACE_RESEND
        if now >= resend_at:
            # Ours has had time to arrive and was not answered: it was lost
            # (typically: the peer was not running yet). Send it again now
            # instead of waiting out REKEY_TIMEOUT; the peer, which loses
            # the tie-break, answers it.
            initiate(peer, now, out, retry=True)
        else:
            # Ours may still be on its way, or may have been lost: if no
            # answer has come by then, re-send it at resend_at rather than
            # after REKEY_TIMEOUT (the peer now waits for ours).
            t = peer.timers
            if t.retransmit_handshake is None or resend_at < t.retransmit_handshake:
                t.retransmit_handshake = resend_at
        return
    if hs.pending is not None:  # we yield: the peer's handshake wins
        end(peer)
        peer.timers.handshake_complete()
    local_index = device.new_index()
    resp, keys = create_response(peer.keys, state, local_index, device.random(32))
    if peer.next is not None:
        device.release_index(peer.next.local_index)
    session = device.new_session(local_index, msg.sender, keys.send, keys.receive, now)
    kp = Keypair(
        local_index, msg.sender, keys.send, keys.receive, now, initiator=False, peer=peer,
        session=session,
    )
    peer.next = kp
    device.bind_index(local_index, kp)
    peer.authenticated_from(addr, now, out)
    datagram = hs.cookies.add_macs(resp.encode(), now)
    out.datagrams.append((datagram, addr))
    peer.tx_datagrams += 1
    peer.tx_bytes += len(datagram)
    peer.timers.any_authenticated_sent(now, peer.keepalive_interval)


def confirm_next(peer: PeerState, kp: Keypair[PeerState], now: float, out: Output) -> None:
    """Step 3's end: the initiator's first transport message arrived on the
    ``next`` keypair ``kp``, which becomes ``current``."""
    peer.next = None
    rekey = peer.current is not None
    install_current(peer, kp)
    session_up(peer, kp, rekey, False, now, out)


def awaits_reply_to(peer: PeerState, receiver: int) -> bool:
    """Does a cookie reply to ``receiver`` answer our latest handshake message?"""
    pending = peer.handshake.pending
    return (pending is not None and receiver == pending.local_index) or (
        peer.next is not None and receiver == peer.next.local_index
    )


def receive_cookie_reply(peer: PeerState, msg: CookieReply, now: float, out: Output) -> None:
    """Step 4: a cookie reply to our latest handshake message."""
    cookies = peer.handshake.cookies
    if not cookies.consume_reply(msg, now):
        peer.drops[DropReason.COOKIE_INVALID] += 1
        return
    out.events.append(CookieReceived(peer.name))
    if cookies.has_refused:
        peer.timers.handshake_refused(now, _jitter(peer))


def resend_with_cookie(peer: PeerState, now: float, out: Output) -> None:
    """Step 4's end: the cookie retry timer fired.  The refused message goes
    again, unchanged but for its mac2, while it still matters: our pending
    initiation (the response will find it), or our response while its
    session is still the one waiting (the initiator still holds the
    initiation it answers: a refused message was dropped before any work)."""
    hs = peer.handshake
    body = hs.cookies.take_refused()
    if body is None or peer.endpoint is None:
        return
    sender = U32.unpack_from(body, 4)[0]  # initiation and response alike
    initiation = hs.pending is not None and sender == hs.pending.local_index
    if not initiation and (peer.next is None or sender != peer.next.local_index):
        return  # superseded: a newer handshake, or the session came up
    datagram = hs.cookies.add_macs(body, now)
    out.datagrams.append((datagram, peer.endpoint))
    peer.tx_datagrams += 1
    peer.tx_bytes += len(datagram)
    if initiation:
        hs.sent_at = now  # the round trip counts from this copy
        out.events.append(HandshakeInitiated(True, peer.name))


def install_current(peer: PeerState, kp: Keypair[PeerState]) -> None:
    """Rotate the keypair slots: ``kp`` becomes current, current becomes previous."""
    device = peer.device
    if peer.previous is not None:
        device.release_index(peer.previous.local_index)
    peer.previous = peer.current
    peer.current = kp
    device.bind_index(kp.local_index, kp)


def session_up(
    peer: PeerState, kp: Keypair[PeerState], rekey: bool, initiator: bool, now: float, out: Output
) -> None:
    """A handshake completed with ``kp`` now current: counters, timers, path MTU."""
    peer.handshakes += 1
    if rekey:
        peer.rekeys += 1
    else:
        peer.established_at = now
    peer.last_handshake_at = now
    peer.timers.session_derived(now)
    peer.path_session_up(now)
    out.events.append(
        HandshakeCompleted(rekey, initiator, peer.rtt if initiator else None, peer.name)
    )


def _timestamp(peer: PeerState, now: float) -> bytes:
    hs = peer.handshake
    ns = max(int((now + peer.device.wall_offset) * 1e9), hs.last_timestamp_ns + 1)
    hs.last_timestamp_ns = ns
    return tai64n(ns)


def _jitter(peer: PeerState) -> float:
    return jitter(peer.device.random)
