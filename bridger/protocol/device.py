"""The device: one static identity, one UDP port, many peers (sans-I/O).

What is device-wide (as in wireguard-go's ``device/``): the static key pair,
the receiver-index table (local index -> keypair, or -> peer for a pending
initiation), mac1/cookie checking and the handshake rate limits, the peers by
public key. Everything else belongs to a :class:`~bridger.protocol.peer.Peer`.

Inbound flow (:meth:`Device.receive_datagrams`, the one receive path; a single
datagram is a batch of one):
 1. The first word selects the message type; anything else is malformed.
 2. Transport: receiver index -> keypair (and so the peer), expiry, AEAD open,
    then the replay window (only after authentication). The first datagram of
    each run on one keypair does the per-peer bookkeeping (confirm a waiting
    session, roam, timers, flush the queue) *before* its payload; the end of the
    run counts the frames and may start a rekey. Frames are tagged with their
    peer in ``Output.runs``.
 3. Handshake messages: mac1 (no DH before it), then mac2/cookie under load and
    the per-source rate limit, then the Noise computation. An initiation names
    its peer by the static key inside it: an unknown key is dropped
    (``unknown_peer``) with no answer and no per-peer state. Responses and
    cookie replies find their peer by receiver index.
 4. Nothing raises: every rejection increments one DropReason counter, the
    peer's where the datagram is attributable to a peer, else the device's. An
    unexpected exception is counted and reported as an ``InternalError`` event
    (rate-limited) carrying its traceback.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import nacl.utils

from .aead import open_transport
from .constants import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_GLOBAL_BURST,
    HANDSHAKE_GLOBAL_RATE,
    HANDSHAKE_SOURCE_BURST,
    HANDSHAKE_SOURCE_RATE,
    HARD_MAX_FRAME,
    INTERNAL_ERROR_REPORT_INTERVAL,
    MAC_LEN,
    MIN_WAN_MTU,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
)
from .cookie import CookieChecker, RateLimiter, TokenBucket
from .events import Address, DropReason, InternalError, Output
from .keypair import Keypair
from .messages import (
    INITIATION_LEN,
    INITIATION_MAC1_OFFSET,
    MIN_TRANSPORT_LEN,
    RESPONSE_LEN,
    RESPONSE_MAC1_OFFSET,
    TRANSPORT_HEADER,
    TRANSPORT_NONCE,
    U32,
    BadPacket,
    InnerType,
    MessageType,
    decode_cookie_reply_untrusted,
    decode_frame_csum_untrusted,
    decode_initiation_untrusted,
    decode_response_untrusted,
)
from .noise import Identity, consume_initiation, decrypt_initiator_static
from .peer import Peer
from .peerstate import PeerConfig
from .replay import Verdict
from .traversal import Traversal

_TRANSPORT = int(MessageType.TRANSPORT)
_INITIATION = int(MessageType.HANDSHAKE_INITIATION)
_RESPONSE = int(MessageType.HANDSHAKE_RESPONSE)
_COOKIE_REPLY = int(MessageType.COOKIE_REPLY)
_FRAME = int(InnerType.FRAME)
_FRAME_CSUM = int(InnerType.FRAME_CSUM)
_ZERO_MAC = bytes(MAC_LEN)
_OK = Verdict.OK
_REPLAY = Verdict.REPLAY
_pack_nonce = TRANSPORT_NONCE.pack
_unpack_header = TRANSPORT_HEADER.unpack_from
_unpack_word = U32.unpack_from


@dataclass(frozen=True)
class DeviceConfig:
    private_key: bytes
    #: Upper bound on every peer's path MTU (None: the local route's MTU and
    #: max_frame bound it); with probing off, the path MTU (None: 1500).
    wan_mtu: int | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    #: Outer IP+UDP header bytes; None: 28 for an IPv4 endpoint, 48 otherwise.
    ip_overhead: int | None = None
    #: Discover and track each peer's path MTU with probes (pmtu.py).
    pmtu_probing: bool = True

    def __post_init__(self) -> None:
        if len(self.private_key) != 32:
            raise ValueError("keys must be 32 bytes")
        if self.wan_mtu is not None and not MIN_WAN_MTU <= self.wan_mtu <= 65535:
            raise ValueError(f"wan_mtu must be between {MIN_WAN_MTU} and 65535")
        if not 64 <= self.max_frame <= HARD_MAX_FRAME:
            raise ValueError(f"max_frame must be between 64 and {HARD_MAX_FRAME}")
        if self.ip_overhead is not None and not 0 <= self.ip_overhead <= 128:
            raise ValueError("ip_overhead must be between 0 and 128")


class Device:
    """Sans-I/O secure tunnel endpoint for many peers (see docs/protocol.md)."""

    def __init__(
        self,
        config: DeviceConfig,
        *,
        now: float,
        wall_clock: float,
        random_bytes: Callable[[int], bytes] = nacl.utils.random,
        session_factory: Callable[[int, int, bytes, bytes, float], object] | None = None,
    ) -> None:
        self.config = config
        self.random = random_bytes
        #: Makes the native session of each new keypair (None: plain Python state).
        self.session_factory = session_factory
        self.identity = Identity.create(config.private_key)
        self._checker = CookieChecker(self.identity.public, random_bytes)
        self._global_bucket = TokenBucket(HANDSHAKE_GLOBAL_RATE, HANDSHAKE_GLOBAL_BURST, now)
        self._per_source = RateLimiter(HANDSHAKE_SOURCE_RATE, HANDSHAKE_SOURCE_BURST)
        self._under_load = False
        #: wall clock minus ``now``, for handshake timestamps.
        self.wall_offset = wall_clock - now
        #: The receiver-index table: our local index -> keypair, or -> the peer
        #: whose initiation with that index is pending.
        self.index: dict[int, Keypair[Peer] | Peer] = {}
        #: Peers by static public key.
        self.peers: dict[bytes, Peer] = {}
        #: Drops not attributable to a peer (each peer has its own ``drops``).
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        self.rx_datagrams = 0
        self.rx_bytes = 0
        self.tx_datagrams = 0
        self.tx_bytes = 0
        self.cookies_sent = 0
        self._error_reported_at = -INTERNAL_ERROR_REPORT_INTERVAL
        self._errors_suppressed = 0
        #: Introductions, punching, relaying and each peer's path (issue 23).
        self.traversal = Traversal(
            self.identity.public, self.peers,
            lambda: int.from_bytes(self.random(8), "little"),
        )

    # --- peers ---------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self.identity.public

    def add_peer(self, config: PeerConfig, now: float) -> Peer:
        """Configure a peer; its key must be new and not our own."""
        if config.public_key == self.identity.public:
            raise ValueError("a peer cannot have this device's own public key")
        if config.public_key in self.peers:
            raise ValueError("a peer with this public key is already configured")
        peer = Peer(self, config, now)
        self.peers[config.public_key] = peer
        return peer

    def remove_peer(self, peer: Peer) -> None:
        """Forget a peer: its sessions, pending handshake and index entries."""
        peer.forget()
        self.peers.pop(peer.public_key, None)
        self.traversal.forget(peer)

    def new_index(self) -> int:
        """A fresh nonzero receiver index not in the table."""
        while True:
            index = int(U32.unpack(self.random(4))[0])
            if index and index not in self.index:
                return index

    def bind_index(self, index: int, owner: Keypair[Peer] | Peer) -> None:
        """Enter ``index`` (from :meth:`new_index`) in the table: a keypair, or the
        peer whose initiation with that index is pending."""
        self.index[index] = owner

    def release_index(self, index: int) -> None:
        """Remove ``index`` from the table (a keypair dropped, a handshake ended)."""
        self.index.pop(index, None)

    def new_session(
        self, local_index: int, remote_index: int, send_key: bytes, receive_key: bytes,
        created: float,
    ) -> object:
        """The native session for a new keypair, or None without a factory."""
        factory = self.session_factory
        if factory is None:
            return None
        return factory(local_index, remote_index, send_key, receive_key, created)

    def path_mtu_report(
        self, addr: Address, mtu: int, now: float, *, local: bool = False
    ) -> Output:
        """The kernel's word that a datagram to ``addr`` needed a path MTU of
        ``mtu`` (ICMP fragmentation needed / packet too big; with ``local``, the
        local interface refused it): news for the peer whose endpoint that is,
        none for any other address (see :meth:`Peer.path_mtu_report`).  The
        kernel names no port when the local interface refused a datagram of
        an unconnected socket (port 0): the route's MTU is that of every peer
        at that address."""
        out = Output()
        host, port = addr
        any_port = local and port == 0
        for peer in self.peers.values():
            endpoint = peer.endpoint
            if endpoint == addr or (any_port and endpoint is not None and endpoint[0] == host):
                peer.path_mtu_report(mtu, now, out, local=local)
        return out

    def set_under_load(self, under_load: bool) -> None:
        """The shell's hint that handshakes arrive faster than it can serve."""
        self._under_load = under_load

    # --- timers --------------------------------------------------------------

    def next_deadline(self) -> float | None:
        best: float | None = self.traversal.next_deadline() if len(self.peers) > 1 else None
        for peer in self.peers.values():
            deadline = peer.next_deadline()
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        return best

    def tick(self, now: float, wall_clock: float) -> Output:
        """Run every peer's timers whose deadline has passed."""
        return self.tick_peers(now, wall_clock)[0]

    def tick_peers(self, now: float, wall_clock: float) -> tuple[Output, list[Peer] | None]:
        """:meth:`tick`, and the peers whose timers ran: the only ones it may have
        changed (None: the traversal's timers ran too, which concern any peer)."""
        out = Output()
        self.wall_offset = wall_clock - now
        ticked: list[Peer] = []
        for peer in list(self.peers.values()):
            deadline = peer.next_deadline()
            if deadline is not None and now >= deadline:
                peer.tick(now, out)
                ticked.append(peer)
        if len(self.peers) > 1:
            due = self.traversal.next_deadline()
            if due is not None and now >= due:
                self.traversal.tick(now, out)
                return out, None
        return out, ticked

    # --- receive -------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float, wall_clock: float) -> Output:
        """Process one UDP payload from ``addr``. Never raises."""
        return self.receive_datagrams((data,), addr, now, wall_clock)

    def receive_datagrams(
        self,
        datagrams: Iterable[bytes],
        addr: Address,
        now: float,
        wall_clock: float,
        out: Output | None = None,
        relayed: bool = False,
    ) -> Output:
        """Process UDP payloads from ``addr`` (a GRO receive, or reads gathered
        from one sender), in order. Never raises. See the module docstring."""
        if out is None:
            out = Output()
        self.wall_offset = wall_clock - now
        index_get = self.index.get
        frames, csum, runs = out.frames, out.csum, out.runs
        max_frame = self.config.max_frame
        run_kp: Keypair[Peer] | None = None
        delivered = rx = rx_bytes = 0
        for data in datagrams:
            rx += 1
            rx_bytes += len(data)
            peer: Peer | None = None
            try:
                if type(data) is not bytes:
                    data = bytes(data)
                if len(data) < 4 or _unpack_word(data, 0)[0] != _TRANSPORT:
                    self._receive_handshake(data, addr, now, out)
                    continue
                if len(data) < MIN_TRANSPORT_LEN:
                    self.drops[DropReason.MALFORMED] += 1
                    continue
                _word, receiver, counter = _unpack_header(data, 0)
                kp = index_get(receiver)
                if type(kp) is not Keypair:
                    self.drops[DropReason.UNKNOWN_INDEX] += 1
                    continue
                peer = kp.peer
                peer.rx_datagrams += 1
                peer.rx_bytes += len(data)
                if now - kp.created >= REJECT_AFTER_TIME or counter >= REJECT_AFTER_MESSAGES:
                    peer.drops[DropReason.STALE_SESSION] += 1
                    continue
                plaintext = open_transport(data, _pack_nonce(counter), kp.receive_key)
                if plaintext is None:
                    peer.drops[DropReason.AUTH_FAILED] += 1
                    continue
                verdict = kp.replay.check(counter)
                if verdict is not _OK:
                    reason = DropReason.REPLAY if verdict is _REPLAY else DropReason.TOO_OLD
                    peer.drops[reason] += 1
                    continue
                if kp is not run_kp:
                    if run_kp is not None:
                        run_kp.peer.end_run(run_kp, delivered, now, out)
                        delivered = 0
                    if not runs or runs[-1][0] is not peer:
                        runs.append((peer, len(frames)))
                    run_kp = kp
                    peer.begin_run(kp, addr, now, out)
                if not plaintext:  # keepalive
                    continue
                kind = plaintext[0]
                if kind == _FRAME:
                    if len(plaintext) > max_frame + 1:
                        peer.drops[DropReason.FRAME_TOO_BIG] += 1
                        continue
                    frames.append(plaintext[1:])
                    delivered += 1
                elif kind == _FRAME_CSUM:
                    frame, start, offset = decode_frame_csum_untrusted(plaintext)
                    if len(frame) > max_frame:
                        peer.drops[DropReason.FRAME_TOO_BIG] += 1
                        continue
                    csum[len(frames)] = (start, offset)
                    frames.append(frame)
                    delivered += 1
                else:
                    delivered += peer.receive_payload(plaintext, len(data), addr, now, out)
            except (BadPacket, ValueError):
                (self.drops if peer is None else peer.drops)[DropReason.MALFORMED] += 1
            except Exception:  # a bug must not take the receive loop down
                self._internal_error(now, out, peer)
        if run_kp is not None:
            try:
                run_kp.peer.end_run(run_kp, delivered, now, out)
            except Exception:
                self._internal_error(now, out, run_kp.peer)
        self.rx_datagrams += rx
        self.rx_bytes += rx_bytes
        if not relayed:
            self._receive_relayed(now, wall_clock, out)
        return out

    def receive_payload(
        self,
        local_index: int,
        plaintext: bytes,
        size: int,
        addr: Address,
        now: float,
        wall_clock: float,
        out: Output | None = None,
    ) -> Output:
        """An inner message other than a frame, of a datagram a native lane has
        already counted, opened and replay-checked on keypair ``local_index``:
        the rest of the receive path for it, as a run of one. Never raises."""
        if out is None:
            out = Output()
        self.wall_offset = wall_clock - now
        kp = self.index.get(local_index)
        if type(kp) is not Keypair:  # the session ended meanwhile
            self.drops[DropReason.UNKNOWN_INDEX] += 1
            return out
        peer = kp.peer
        try:
            if not out.runs or out.runs[-1][0] is not peer:
                out.runs.append((peer, len(out.frames)))
            peer.begin_run(kp, addr, now, out)
            delivered = peer.receive_payload(plaintext, size, addr, now, out)
            peer.end_run(kp, delivered, now, out)
        except (BadPacket, ValueError):
            peer.drops[DropReason.MALFORMED] += 1
        except Exception:
            self._internal_error(now, out, peer)
        self._receive_relayed(now, wall_clock, out)
        return out

    def _receive_relayed(self, now: float, wall_clock: float, out: Output) -> None:
        """The datagrams relays carried for us (traversal.py), as if they had
        come from the network, from their Via address. Bounded: a relayed
        datagram cannot carry another relayed one (traversal refuses RELAYED
        from a peer it does not reach directly)."""
        for _ in range(4):
            relayed = self.traversal.take_relayed()
            if not relayed:
                return
            for datagram, via in relayed:
                self.receive_datagrams((datagram,), via, now, wall_clock, out, relayed=True)

    def _internal_error(self, now: float, out: Output, peer: Peer | None) -> None:
        self.drops[DropReason.INTERNAL_ERROR] += 1
        if now - self._error_reported_at >= INTERNAL_ERROR_REPORT_INTERVAL:
            self._error_reported_at = now
            out.events.append(InternalError(
                traceback.format_exc(), self._errors_suppressed,
                "" if peer is None else peer.name,
            ))
            self._errors_suppressed = 0
        else:
            self._errors_suppressed += 1

    def _receive_handshake(self, data: bytes, addr: Address, now: float, out: Output) -> None:
        kind = _unpack_word(data, 0)[0] if len(data) >= 4 else None
        if kind == _INITIATION:
            self._on_initiation(data, addr, now, out)
        elif kind == _RESPONSE:
            self._on_response(data, addr, now, out)
        elif kind == _COOKIE_REPLY:
            msg = decode_cookie_reply_untrusted(data)
            entry = self.index.get(msg.receiver)
            peer = entry.peer if type(entry) is Keypair else entry
            if not isinstance(peer, Peer) or not peer.awaits_reply_to(msg.receiver):
                self.drops[DropReason.UNKNOWN_INDEX] += 1
                return
            peer.receive_cookie_reply(msg, now, out)
        else:
            self.drops[DropReason.MALFORMED] += 1

    def _admit_handshake(
        self, data: bytes, mac1_offset: int, sender: int, addr: Address, now: float, out: Output
    ) -> bool:
        """mac2 / cookie and rate limits, after mac1 and before any DH."""
        mac2_offset = mac1_offset + MAC_LEN
        has_budget = self._global_bucket.take(now)
        under_load = self._under_load or not has_budget
        mac2 = data[mac2_offset:]
        if mac2 != _ZERO_MAC:
            valid = self._checker.check_mac2(data, mac2_offset, addr, now)
        else:
            valid = False
        if (mac2 != _ZERO_MAC and not valid) or (under_load and not valid):
            self.drops[DropReason.HANDSHAKE_MAC2] += 1
            reply = self._checker.create_reply(data, mac1_offset, sender, addr, now)
            out.datagrams.append((reply, addr))
            self.cookies_sent += 1
            self.tx_datagrams += 1
            self.tx_bytes += len(reply)
            return False
        if not self._per_source.allow(addr[0], now):
            self.drops[DropReason.RATE_LIMITED] += 1
            return False
        return True

    def _on_initiation(self, data: bytes, addr: Address, now: float, out: Output) -> None:
        if len(data) != INITIATION_LEN:
            self.drops[DropReason.MALFORMED] += 1
            return
        if not self._checker.check_mac1(data, INITIATION_MAC1_OFFSET):
            self.drops[DropReason.HANDSHAKE_MAC1] += 1
            return
        msg = decode_initiation_untrusted(data)
        if not self._admit_handshake(data, INITIATION_MAC1_OFFSET, msg.sender, addr, now, out):
            return
        try:
            static, chaining_key, hash_value = decrypt_initiator_static(self.identity, msg)
        except BadPacket:
            self.drops[DropReason.AUTH_FAILED] += 1
            return
        peer = self.peers.get(static)
        if peer is None:
            self.drops[DropReason.UNKNOWN_PEER] += 1
            return
        try:
            state = consume_initiation(peer.keys, msg, chaining_key, hash_value)
        except BadPacket:
            peer.drops[DropReason.AUTH_FAILED] += 1
            return
        peer.receive_initiation(msg, state, addr, now, out)

    def _on_response(self, data: bytes, addr: Address, now: float, out: Output) -> None:
        if len(data) != RESPONSE_LEN:
            self.drops[DropReason.MALFORMED] += 1
            return
        if not self._checker.check_mac1(data, RESPONSE_MAC1_OFFSET):
            self.drops[DropReason.HANDSHAKE_MAC1] += 1
            return
        msg = decode_response_untrusted(data)
        if not self._admit_handshake(data, RESPONSE_MAC1_OFFSET, msg.sender, addr, now, out):
            return
        peer = self.index.get(msg.receiver)
        if not isinstance(peer, Peer):
            self.drops[DropReason.UNKNOWN_INDEX] += 1
            return
        peer.receive_response(msg, addr, now, out)
