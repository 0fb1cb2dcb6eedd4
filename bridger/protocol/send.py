"""The outbound flow of one peer: frames in, sealed transport datagrams out.

Outbound flow (:func:`send_frames`, the one send path for frames):
 1. Frames larger than max_frame or empty are dropped (frame_size).
 2. With no usable session the frames wait in the peer's ``SendQueue``
    (bounded: the oldest is dropped, queue_full) and a handshake starts.
 3. A frame that fits one datagram is sealed as FRAME (FRAME_CSUM with a partial
    checksum); otherwise it is split into FRAGMENT plaintexts, each sealed with
    its own counter. Key, limits and timers are looked up once per call.
 4. After any authenticated send (:func:`authenticated_sent`): the keepalive
    timers, and key freshness: sending on an initiator session older than
    REKEY_AFTER_TIME (or past REKEY_AFTER_MESSAGES) starts a rekey; the old
    session keeps sending until the new one is up.
 5. When a session comes up the queue is sent through step 3
    (:func:`flush_queue`).

:func:`seal` seals one plaintext on its own (keepalives, probes, probe acks);
:func:`send_keepalive` is the empty transport message of the timers.
Like every concept module of a peer, this one calls the others only through
the verbs declared on :class:`~.peerstate.PeerState` (see peerstate.py).
"""

from __future__ import annotations

from .aead import seal_transport
from .checksum import complete_checksum
from .constants import (
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
)
from .events import Address, DropReason, Output
from .fragment import split
from .keypair import Keypair
from .messages import (
    FRAME_CSUM_HEADER_LEN,
    TRANSPORT_NONCE,
    InnerType,
    MessageType,
    encode_frame_csum,
)
from .peerstate import PeerState

_TRANSPORT = int(MessageType.TRANSPORT)
_FRAME_BYTE = bytes([InnerType.FRAME])
_pack_nonce = TRANSPORT_NONCE.pack


def send_frames(
    peer: PeerState,
    frames: list[bytes],
    now: float,
    out: Output,
    csum: tuple[int, int] | None = None,
) -> Output:
    """Steps 1-4 of the flow for a batch of frames (see :meth:`Peer.send_frames`)."""
    max_frame = peer.device.config.max_frame
    queue = peer.queue
    kp = peer.sendable(now)
    if kp is None:
        for frame in frames:
            if not 0 < len(frame) <= max_frame:
                peer.drops[DropReason.FRAME_SIZE] += 1
                continue
            if csum is not None:
                frame = complete_checksum(frame, csum[0], csum[1])
            queue.push(frame, no_endpoint=peer.endpoint is None)
        if queue and peer.handshake.pending is None:
            peer.start_handshake(now, out)
        return out
    room = peer.max_plaintext()
    if csum is None:
        head, fits = _FRAME_BYTE, room - 1
    else:
        head, fits = encode_frame_csum(b"", csum[0], csum[1]), room - FRAME_CSUM_HEADER_LEN
    endpoint = peer.endpoint
    assert endpoint is not None  # sendable() checked it
    remote, key, counter = kp.remote_index, kp.send_key, kp.send_counter
    append = out.datagrams.append
    sent = tx = tx_bytes = 0
    big = peer.big_frame()  # a frame above this could vanish if the path shrank
    has_big = False
    for frame in frames:
        n = len(frame)
        if n > big:
            has_big = True
        if n == 0 or n > max_frame:
            peer.drops[DropReason.FRAME_SIZE] += 1
            continue
        if counter >= REJECT_AFTER_MESSAGES:  # this session is spent mid-batch
            queue.push(frame if csum is None else complete_checksum(frame, *csum))
            continue
        if n <= fits:
            datagram = seal_transport(
                _TRANSPORT, remote, counter, head + frame, _pack_nonce(counter), key
            )
            counter += 1
            append((datagram, endpoint))
            tx += 1
            tx_bytes += len(datagram)
        else:
            if csum is not None:  # fragments carry plain frames: complete it here
                frame = complete_checksum(frame, csum[0], csum[1])
            peer.frame_id = (peer.frame_id + 1) & 0xFFFFFFFF
            pieces = split(frame, peer.frame_id, room)
            for piece in pieces:
                datagram = seal_transport(
                    _TRANSPORT, remote, counter, piece, _pack_nonce(counter), key
                )
                counter += 1
                append((datagram, endpoint))
                tx_bytes += len(datagram)
            tx += len(pieces)
            peer.fragments_sent += len(pieces)
        sent += 1
    kp.send_counter = counter
    peer.tx_datagrams += tx
    peer.tx_bytes += tx_bytes
    if sent:
        peer.frames_sent += sent
        peer.timers.data_sent(now, peer.device.random)
        if has_big:
            peer.pmtu.data_sent(now)
        authenticated_sent(peer, kp, now, out)
    if queue and peer.handshake.pending is None and counter >= REJECT_AFTER_MESSAGES:
        peer.start_handshake(now, out)
    return out


def seal(peer: PeerState, kp: Keypair[PeerState], plaintext: bytes, out: Output,
         to: Address | None = None) -> None:
    """One transport datagram carrying ``plaintext`` to the peer's endpoint (or
    to ``to``: a path ping or pong on a candidate address, traversal.py)."""
    counter = kp.send_counter
    kp.send_counter = counter + 1
    datagram = seal_transport(
        _TRANSPORT, kp.remote_index, counter, plaintext, _pack_nonce(counter), kp.send_key
    )
    dest = to or peer.endpoint
    assert dest is not None
    out.datagrams.append((datagram, dest))
    peer.tx_datagrams += 1
    peer.tx_bytes += len(datagram)


def authenticated_sent(peer: PeerState, kp: Keypair[PeerState], now: float, out: Output) -> None:
    """Step 4, after any authenticated send: keepalive timers and key freshness."""
    peer.timers.any_authenticated_sent(now, peer.keepalive_interval)
    if (
        kp.initiator
        and peer.handshake.pending is None
        and (now - kp.created >= REKEY_AFTER_TIME or kp.send_counter >= REKEY_AFTER_MESSAGES)
    ):
        peer.start_handshake(now, out)


def send_keepalive(peer: PeerState, now: float, out: Output) -> None:
    """An empty transport message; with no usable session, a handshake instead."""
    kp = peer.sendable(now)
    if kp is None:
        if peer.handshake.pending is None and peer.endpoint is not None:
            peer.start_handshake(now, out)
        return
    seal(peer, kp, b"", out)
    peer.keepalives_sent += 1
    authenticated_sent(peer, kp, now, out)


def flush_queue(peer: PeerState, now: float, out: Output) -> bool:
    """Step 5: send the waiting frames if a session is usable; whether it was."""
    if not peer.queue or peer.sendable(now) is None:
        return False
    send_frames(peer, peer.queue.take_all(), now, out)
    return True
