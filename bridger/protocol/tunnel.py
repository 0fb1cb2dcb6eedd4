"""The tunnel state machine: one peer, bytes in, bytes and events out.

Outbound flow (send_frame):
 1. Frames larger than max_frame or empty are dropped (frame_size).
 2. With no usable session the frame is queued (bounded) and a handshake starts.
 3. A frame that fits one datagram is sealed as FRAME; otherwise it is split
    into FRAGMENT plaintexts, each sealed with its own counter.
 4. Sending on an initiator session older than REKEY_AFTER_TIME starts a rekey;
    the old session keeps sending until the new one is up.

Inbound flow (receive_datagram):
 1. The first word selects the message type; anything else is malformed.
 2. Handshake messages: mac1 (no DH before it), then mac2/cookie under load and
    the per-source rate limit, then the Noise computation.
 3. Transport: receiver index -> keypair, expiry, AEAD open, then the replay
    window (only after authentication), then roaming and timers.
 4. Nothing raises: every rejection increments one DropReason counter.

Session slots (WireGuard keypairs): ``current`` sends and receives,
``previous`` only receives (in-flight packets across a rekey), ``next`` is a
responder session waiting for the initiator's first transport message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import nacl.utils

from .aead import open_transport, seal_transport
from .checksum import complete_checksum
from .constants import (
    DEFAULT_MAX_FRAME,
    DEFAULT_PERSISTENT_KEEPALIVE,
    HANDSHAKE_GLOBAL_BURST,
    HANDSHAKE_GLOBAL_RATE,
    HANDSHAKE_RACE_RESEND,
    HANDSHAKE_SOURCE_BURST,
    HANDSHAKE_SOURCE_RATE,
    HARD_MAX_FRAME,
    IPV4_UDP_OVERHEAD,
    IPV6_UDP_OVERHEAD,
    MAC_LEN,
    MAX_QUEUED_FRAMES,
    MIN_WAN_MTU,
    PMTU_CONFIRM_INTERVAL,
    PMTU_PROBE_ATTEMPTS,
    PMTU_PROBE_INTERVAL,
    PMTU_REPROBE_INTERVAL,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_ON_RECEIVE_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    TRANSPORT_HEADER_LEN,
    TRANSPORT_OVERHEAD,
)
from .cookie import CookieChecker, CookieGenerator, RateLimiter, TokenBucket
from .events import (
    Address,
    CookieReceived,
    DropReason,
    EndpointChanged,
    HandshakeCompleted,
    HandshakeGaveUp,
    HandshakeInitiated,
    Output,
    PathMtuChanged,
    PeerUnreachable,
    SessionExpired,
)
from .fragment import Reassembler, split
from .messages import (
    FRAME_CSUM_HEADER_LEN,
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
    decode_fragment_untrusted,
    decode_frame_csum_untrusted,
    decode_initiation_untrusted,
    decode_probe_ack_untrusted,
    decode_probe_untrusted,
    decode_response_untrusted,
    decode_transport_header_untrusted,
    encode_frame_csum,
    encode_probe,
    encode_probe_ack,
)
from .noise import (
    Identity,
    InitiatorState,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    tai64n,
)
from .replay import ReplayWindow, Verdict
from .timers import Timers

_TRANSPORT = int(MessageType.TRANSPORT)
_FRAME_BYTE = bytes([InnerType.FRAME])
_ZERO_MAC = bytes(MAC_LEN)
_FRAME_CSUM = int(InnerType.FRAME_CSUM)
_FRAME = int(InnerType.FRAME)
_pack_nonce = TRANSPORT_NONCE.pack


def ip_overhead_for(addr: Address | None) -> int:
    """Outer IP+UDP header bytes for an endpoint; the worse (IPv6) if unknown."""
    if addr is None or ":" in addr[0]:
        return IPV6_UDP_OVERHEAD
    return IPV4_UDP_OVERHEAD


def max_unfragmented_frame(wan_mtu: int, ip_overhead: int = IPV6_UDP_OVERHEAD) -> int:
    """Largest Ethernet frame sent in one datagram on a path of ``wan_mtu``."""
    return wan_mtu - ip_overhead - TRANSPORT_OVERHEAD - 1


def frame_overhead(ip_overhead: int = IPV6_UDP_OVERHEAD) -> int:
    """Bytes added around an unfragmented frame, outer IP/UDP headers included."""
    return ip_overhead + TRANSPORT_OVERHEAD + 1


@dataclass(frozen=True)
class TunnelConfig:
    private_key: bytes
    peer_public_key: bytes
    psk: bytes | None = None
    #: None: wait for the peer to connect (and learn its address).
    endpoint: Address | None = None
    #: Seconds; 0 disables.
    persistent_keepalive: float = DEFAULT_PERSISTENT_KEEPALIVE
    #: Path MTU of the underlay assumed without probing.
    wan_mtu: int = 1500
    max_frame: int = DEFAULT_MAX_FRAME
    #: Outer IP+UDP header bytes; None: 28 for an IPv4 endpoint, 48 otherwise.
    ip_overhead: int | None = None
    #: Probe for a path that carries max_frame unfragmented.
    pmtu_probing: bool = True

    def __post_init__(self) -> None:
        if len(self.private_key) != 32 or len(self.peer_public_key) != 32:
            raise ValueError("keys must be 32 bytes")
        if self.psk is not None and len(self.psk) != 32:
            raise ValueError("pre-shared key must be 32 bytes")
        if self.persistent_keepalive < 0:
            raise ValueError("persistent_keepalive must be >= 0")
        if not MIN_WAN_MTU <= self.wan_mtu <= 65535:
            raise ValueError(f"wan_mtu must be between {MIN_WAN_MTU} and 65535")
        if not 64 <= self.max_frame <= HARD_MAX_FRAME:
            raise ValueError(f"max_frame must be between 64 and {HARD_MAX_FRAME}")
        if self.ip_overhead is not None and not 0 <= self.ip_overhead <= 128:
            raise ValueError("ip_overhead must be between 0 and 128")


@dataclass(slots=True, eq=False)
class Keypair:
    local_index: int
    remote_index: int
    send_key: bytes
    receive_key: bytes
    created: float
    initiator: bool
    send_counter: int = 0
    replay: ReplayWindow = field(default_factory=ReplayWindow)


@dataclass(frozen=True)
class TunnelStats:
    state: str  # "down" | "handshaking" | "up" | "stale"
    endpoint: Address | None
    session_established_at: float | None
    last_handshake_at: float | None
    handshakes: int
    rekeys: int
    rtt: float | None
    path_mtu: int
    queued_frames: int
    reassembly_in_progress: int
    fragments_sent: int
    fragments_received: int
    reassembled: int
    tx_datagrams: int
    rx_datagrams: int
    tx_bytes: int
    rx_bytes: int
    frames_sent: int
    frames_received: int
    keepalives_sent: int
    cookies_sent: int
    drops: dict[str, int]


class Tunnel:
    """Sans-I/O secure tunnel to one peer (see docs/protocol.md)."""

    def __init__(
        self,
        config: TunnelConfig,
        *,
        now: float,
        wall_clock: float,
        random_bytes: Callable[[int], bytes] = nacl.utils.random,
    ) -> None:
        self.config = config
        self._random = random_bytes
        self._ident = Identity.create(config.private_key, config.peer_public_key, config.psk)
        self._checker = CookieChecker(self._ident.public, random_bytes)
        self._cookies = CookieGenerator(config.peer_public_key)
        self._global_bucket = TokenBucket(HANDSHAKE_GLOBAL_RATE, HANDSHAKE_GLOBAL_BURST, now)
        self._per_source = RateLimiter(HANDSHAKE_SOURCE_RATE, HANDSHAKE_SOURCE_BURST)
        self._under_load = False
        self._wall_offset = wall_clock - now
        self._last_timestamp_ns = 0
        self._greatest_timestamp = bytes(12)
        self._endpoint = config.endpoint
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self._by_index: dict[int, Keypair] = {}
        self._handshake: InitiatorState | None = None
        self._handshake_first = 0.0
        self._handshake_sent_at = 0.0
        self._queue: deque[bytes] = deque()
        self._frame_id = 0
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        self._reassembler = Reassembler(self.drops, config.max_frame)
        self.timers = Timers()
        self._unreachable = False
        self._last_received: float | None = None
        self._established_at: float | None = None
        self._last_handshake_at: float | None = None
        self._rtt: float | None = None
        self._path_mtu = config.wan_mtu
        self._probe_id: int | None = None
        self._probe_attempts = 0
        self._probe_due = config.pmtu_probing
        self.handshakes = 0
        self.rekeys = 0
        self.fragments_sent = 0
        self.fragments_received = 0
        self.tx_datagrams = 0
        self.rx_datagrams = 0
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.frames_sent = 0
        self.frames_received = 0
        self.keepalives_sent = 0
        self.cookies_sent = 0
        if self._endpoint is not None and config.persistent_keepalive > 0:
            self.timers.persistent_keepalive = now

    # --- public API ----------------------------------------------------------

    @property
    def endpoint(self) -> Address | None:
        return self._endpoint

    @property
    def public_key(self) -> bytes:
        return self._ident.public

    @property
    def path_mtu(self) -> int:
        return self._path_mtu

    def frame_room(self, csum: bool = False) -> int:
        """Largest frame ``send_frame`` carries in one datagram on the current path
        (``csum``: as FRAME_CSUM); larger frames are fragmented."""
        overhead = FRAME_CSUM_HEADER_LEN if csum else 1
        return min(self._max_plaintext() - overhead, self.config.max_frame)

    def set_under_load(self, under_load: bool) -> None:
        """The shell's hint that handshakes arrive faster than it can serve."""
        self._under_load = under_load

    def next_deadline(self) -> float | None:
        deadline = self.timers.next_deadline()
        reassembly = self._reassembler.next_deadline()
        if reassembly is not None and (deadline is None or reassembly < deadline):
            return reassembly
        return deadline

    def set_endpoint(self, addr: Address | None, now: float) -> Output:
        """Endpoint from configuration or DNS; starts a handshake if frames wait."""
        out = Output()
        old = self._endpoint
        self._endpoint = addr
        if addr is not None and addr != old:
            out.events.append(EndpointChanged(old, addr))
            if self.config.persistent_keepalive > 0 and self.timers.persistent_keepalive is None:
                self.timers.persistent_keepalive = now
            if self._queue and self._sendable(self.current, now) is None:
                self._initiate(now, out, retry=False)
        return out

    def send_frame(
        self,
        frame: bytes,
        now: float,
        out: Output | None = None,
        csum: tuple[int, int] | None = None,
    ) -> Output:
        """Encrypt one Ethernet frame for the peer (or queue it until a session is up).

        Pass ``out`` to append to an existing batch instead of allocating.
        ``csum`` = (csum_start, csum_offset) marks a frame whose L4 checksum is
        partial (the local kernel left it to "hardware"); it travels as
        FRAME_CSUM and the peer completes it.
        """
        if out is None:
            out = Output()
        n = len(frame)
        if n == 0 or n > self.config.max_frame:
            self.drops[DropReason.FRAME_SIZE] += 1
            return out
        kp = self._sendable(self.current, now)
        if kp is None:
            if csum is not None:
                frame = complete_checksum(frame, csum[0], csum[1])
            self._enqueue(frame)
            if self._handshake is None:
                self._initiate(now, out, retry=False)
            return out
        self._send_on(kp, frame, now, out, csum)
        return out

    def send_frames(
        self,
        frames: list[bytes],
        now: float,
        out: Output,
        csum: tuple[int, int] | None = None,
    ) -> Output:
        """``send_frame`` for a batch sharing one ``csum`` (segments of one superframe).

        Same wire result as calling ``send_frame`` for each, in order; the key,
        limits and timers are looked up once per batch instead of per frame.
        """
        kp = self._sendable(self.current, now)
        overhead = 1 if csum is None else FRAME_CSUM_HEADER_LEN
        fits = min(self._max_plaintext() - overhead, self.config.max_frame)
        if (
            kp is None
            or kp.send_counter + len(frames) >= REJECT_AFTER_MESSAGES
            or not all(0 < len(f) <= fits for f in frames)
        ):
            for frame in frames:
                self.send_frame(frame, now, out, csum)
            return out
        head = _FRAME_BYTE if csum is None else encode_frame_csum(b"", csum[0], csum[1])
        endpoint = self._endpoint
        assert endpoint is not None
        remote, key, counter = kp.remote_index, kp.send_key, kp.send_counter
        append = out.datagrams.append
        tx_bytes = 0
        for frame in frames:
            datagram = seal_transport(
                _TRANSPORT, remote, counter, head + frame, _pack_nonce(counter), key
            )
            counter += 1
            append((datagram, endpoint))
            tx_bytes += len(datagram)
        kp.send_counter = counter
        self.tx_datagrams += len(frames)
        self.tx_bytes += tx_bytes
        self.frames_sent += len(frames)
        self.timers.data_sent(now)
        self._sent_on(kp, now, out)
        return out

    def receive_datagrams(
        self, datagrams: list[bytes], addr: Address, now: float, wall_clock: float,
        out: Output | None = None,
    ) -> Output:
        """``receive_datagram`` for a batch from one address (a UDP GRO receive).

        Transport messages for the current session take a short path: header,
        AEAD open and replay window per datagram, while the bookkeeping that
        only depends on "something authenticated arrived from ``addr`` at
        ``now``" (roaming, timers, queue flush, rekey) runs once per batch.
        Anything else goes through the full per-datagram path.
        """
        if out is None:
            out = Output()
        kp = self.current
        if kp is None or now - kp.created >= REJECT_AFTER_TIME:
            for data in datagrams:
                self._receive(data, addr, now, wall_clock, out)
            return out
        self._wall_offset = wall_clock - now
        local, key, check = kp.local_index, kp.receive_key, kp.replay.check
        frames, csum, drops = out.frames, out.csum, self.drops
        authenticated = False
        delivered = rx = rx_bytes = 0
        for data in datagrams:
            if len(data) < MIN_TRANSPORT_LEN or type(data) is not bytes:
                self._receive(data, addr, now, wall_clock, out)
                continue
            word, receiver, counter = TRANSPORT_HEADER.unpack_from(data, 0)
            if word != _TRANSPORT or receiver != local or counter >= REJECT_AFTER_MESSAGES:
                self._receive(data, addr, now, wall_clock, out)
                continue
            rx += 1
            rx_bytes += len(data)
            try:
                plaintext = open_transport(data, _pack_nonce(counter), key)
                if plaintext is None:
                    drops[DropReason.AUTH_FAILED] += 1
                    continue
                verdict = check(counter)
                if verdict is not Verdict.OK:
                    reason = DropReason.REPLAY if verdict is Verdict.REPLAY else DropReason.TOO_OLD
                    drops[reason] += 1
                    continue
                authenticated = True
                if not plaintext:
                    continue
                kind = plaintext[0]
                if kind == _FRAME:
                    frames.append(plaintext[1:])
                    delivered += 1
                elif kind == _FRAME_CSUM:
                    frame, start, offset = decode_frame_csum_untrusted(plaintext)
                    csum[len(frames)] = (start, offset)
                    frames.append(frame)
                    delivered += 1
                else:
                    self._on_payload(plaintext, len(data), kp, now, out)
            except (BadPacket, ValueError):
                drops[DropReason.MALFORMED] += 1
            except Exception:  # a bug must not take the receive loop down
                drops[DropReason.INTERNAL_ERROR] += 1
        self.rx_datagrams += rx
        self.rx_bytes += rx_bytes
        if delivered:
            self.frames_received += delivered
            self.timers.data_received(now)
        if authenticated:
            self._authenticated_received(addr, now, out)
            if kp is self.current:  # a rekey inside the batch may have replaced it
                self._flush_queue(now, out)
                if (
                    kp.initiator
                    and self._handshake is None
                    and now - kp.created >= REKEY_ON_RECEIVE_TIME
                ):
                    self._initiate(now, out, retry=False)
        return out

    def receive_datagram(self, data: bytes, addr: Address, now: float, wall_clock: float) -> Output:
        """Process one UDP payload from ``addr``. Never raises."""
        out = Output()
        self._receive(data, addr, now, wall_clock, out)
        return out

    def _receive(
        self, data: bytes, addr: Address, now: float, wall_clock: float, out: Output
    ) -> None:
        self._wall_offset = wall_clock - now
        self.rx_datagrams += 1
        self.rx_bytes += len(data)
        try:
            if type(data) is not bytes:
                data = bytes(data)
            if len(data) >= TRANSPORT_HEADER_LEN and U32.unpack_from(data, 0)[0] == _TRANSPORT:
                self._on_transport(data, addr, now, out)
            else:
                kind = MessageType(U32.unpack_from(data, 0)[0]) if len(data) >= 4 else None
                if kind is MessageType.HANDSHAKE_INITIATION:
                    self._on_initiation(data, addr, now, out)
                elif kind is MessageType.HANDSHAKE_RESPONSE:
                    self._on_response(data, addr, now, out)
                elif kind is MessageType.COOKIE_REPLY:
                    self._on_cookie_reply(data, now, out)
                else:
                    self.drops[DropReason.MALFORMED] += 1
        except (BadPacket, ValueError):
            self.drops[DropReason.MALFORMED] += 1
        except Exception:  # a bug must not take the receive loop down
            self.drops[DropReason.INTERNAL_ERROR] += 1

    def tick(self, now: float, wall_clock: float) -> Output:
        """Run the timers whose deadline has passed."""
        out = Output()
        self._wall_offset = wall_clock - now
        self._reassembler.expire(now)
        t = self.timers
        if t.retransmit_handshake is not None and now >= t.retransmit_handshake:
            t.retransmit_handshake = None
            self._on_retransmit(now, out)
        if t.new_handshake is not None and now >= t.new_handshake:
            t.new_handshake = None
            silent = now - (self._last_received if self._last_received is not None else now)
            self._unreachable = True
            out.events.append(PeerUnreachable(silent))
            self._reset_path_mtu(out)
            if self._handshake is None:
                self._initiate(now, out, retry=False)
        if t.send_keepalive is not None and now >= t.send_keepalive:
            t.send_keepalive = None
            self._send_keepalive(now, out)
        if t.persistent_keepalive is not None and now >= t.persistent_keepalive:
            t.persistent_keepalive = None
            if self.config.persistent_keepalive > 0 and self._endpoint is not None:
                self._send_keepalive(now, out)
                if t.persistent_keepalive is None:
                    t.persistent_keepalive = now + self.config.persistent_keepalive
        if t.zero_keys is not None and now >= t.zero_keys:
            t.zero_keys = None
            self._zero_keys(out)
        if t.pmtu_probe is not None and now >= t.pmtu_probe:
            t.pmtu_probe = None
            self._probe_step(now, out)
        return out

    def stats(self, now: float | None = None) -> TunnelStats:
        """A snapshot for metrics and status display."""
        return TunnelStats(
            state=self._state(now),
            endpoint=self._endpoint,
            session_established_at=self._established_at,
            last_handshake_at=self._last_handshake_at,
            handshakes=self.handshakes,
            rekeys=self.rekeys,
            rtt=self._rtt,
            path_mtu=self._path_mtu,
            queued_frames=len(self._queue),
            reassembly_in_progress=len(self._reassembler),
            fragments_sent=self.fragments_sent,
            fragments_received=self.fragments_received,
            reassembled=self._reassembler.reassembled,
            tx_datagrams=self.tx_datagrams,
            rx_datagrams=self.rx_datagrams,
            tx_bytes=self.tx_bytes,
            rx_bytes=self.rx_bytes,
            frames_sent=self.frames_sent,
            frames_received=self.frames_received,
            keepalives_sent=self.keepalives_sent,
            cookies_sent=self.cookies_sent,
            drops={reason.value: count for reason, count in self.drops.items()},
        )

    # --- state ---------------------------------------------------------------

    def _state(self, now: float | None) -> str:
        kp = self.current
        usable = kp is not None and (now is None or now - kp.created < REJECT_AFTER_TIME)
        if usable:
            return "stale" if self._unreachable else "up"
        if self._handshake is not None:
            return "handshaking"
        return "down"

    def _sendable(self, kp: Keypair | None, now: float) -> Keypair | None:
        if (
            kp is None
            or self._endpoint is None
            or now - kp.created >= REJECT_AFTER_TIME
            or kp.send_counter >= REJECT_AFTER_MESSAGES
        ):
            return None
        return kp

    @property
    def _ip_overhead(self) -> int:
        if self.config.ip_overhead is not None:
            return self.config.ip_overhead
        return ip_overhead_for(self._endpoint)

    def _max_plaintext(self) -> int:
        return self._path_mtu - self._ip_overhead - TRANSPORT_OVERHEAD

    def _new_index(self) -> int:
        while True:
            index = int(U32.unpack(self._random(4))[0])
            if (
                index
                and index not in self._by_index
                and (self._handshake is None or index != self._handshake.local_index)
            ):
                return index

    def _jitter(self) -> float:
        return int.from_bytes(self._random(2), "little") / 65536 * REKEY_TIMEOUT_JITTER_MAX

    def _enqueue(self, frame: bytes) -> None:
        if len(self._queue) >= MAX_QUEUED_FRAMES:
            self._queue.popleft()
            self.drops[DropReason.QUEUE_FULL] += 1
        self._queue.append(frame)

    def _update_endpoint(self, addr: Address, out: Output) -> None:
        """Roaming: called only after a packet from ``addr`` authenticated."""
        if addr != self._endpoint:
            old = self._endpoint
            self._endpoint = addr
            out.events.append(EndpointChanged(old, addr))

    def _authenticated_received(self, addr: Address, now: float, out: Output) -> None:
        self._update_endpoint(addr, out)
        self._last_received = now
        self._unreachable = False
        self.timers.any_authenticated_received()

    # --- sending -------------------------------------------------------------

    def _seal(self, kp: Keypair, plaintext: bytes, out: Output) -> None:
        counter = kp.send_counter
        kp.send_counter = counter + 1
        datagram = seal_transport(
            _TRANSPORT, kp.remote_index, counter, plaintext, _pack_nonce(counter), kp.send_key
        )
        assert self._endpoint is not None
        out.datagrams.append((datagram, self._endpoint))
        self.tx_datagrams += 1
        self.tx_bytes += len(datagram)

    def _send_on(
        self,
        kp: Keypair,
        frame: bytes,
        now: float,
        out: Output,
        csum: tuple[int, int] | None = None,
    ) -> None:
        room = self._max_plaintext()
        if csum is None and len(frame) < room:
            self._seal(kp, _FRAME_BYTE + frame, out)
        elif csum is not None and len(frame) + FRAME_CSUM_HEADER_LEN <= room:
            self._seal(kp, encode_frame_csum(frame, csum[0], csum[1]), out)
        else:
            if csum is not None:  # fragments carry plain frames: complete it here
                frame = complete_checksum(frame, csum[0], csum[1])
            self._frame_id = (self._frame_id + 1) & 0xFFFFFFFF
            pieces = split(frame, self._frame_id, room)
            for piece in pieces:
                self._seal(kp, piece, out)
            self.fragments_sent += len(pieces)
        self.frames_sent += 1
        self.timers.data_sent(now)
        self._sent_on(kp, now, out)

    def _sent_on(self, kp: Keypair, now: float, out: Output) -> None:
        """After any authenticated send: keepalive timers and key freshness."""
        self.timers.any_authenticated_sent(now, self.config.persistent_keepalive)
        if (
            kp.initiator
            and self._handshake is None
            and (now - kp.created >= REKEY_AFTER_TIME or kp.send_counter >= REKEY_AFTER_MESSAGES)
        ):
            self._initiate(now, out, retry=False)

    def _send_keepalive(self, now: float, out: Output) -> None:
        kp = self._sendable(self.current, now)
        if kp is None:
            if self._handshake is None and self._endpoint is not None:
                self._initiate(now, out, retry=False)
            return
        self._seal(kp, b"", out)
        self.keepalives_sent += 1
        self._sent_on(kp, now, out)

    def _flush_queue(self, now: float, out: Output) -> bool:
        kp = self._sendable(self.current, now)
        if kp is None or not self._queue:
            return False
        while self._queue:
            self._send_on(kp, self._queue.popleft(), now, out)
        return True

    # --- handshake: initiator ------------------------------------------------

    def _timestamp(self, now: float) -> bytes:
        ns = max(int((now + self._wall_offset) * 1e9), self._last_timestamp_ns + 1)
        self._last_timestamp_ns = ns
        return tai64n(ns)

    def _initiate(self, now: float, out: Output, *, retry: bool) -> None:
        if self._endpoint is None:
            return
        if not retry:
            self._handshake_first = now
        msg, state = create_initiation(
            self._ident, self._new_index(), self._random(32), self._timestamp(now)
        )
        self._handshake = state
        self._handshake_sent_at = now
        datagram = self._cookies.add_macs(msg.encode(), now)
        out.datagrams.append((datagram, self._endpoint))
        self.tx_datagrams += 1
        self.tx_bytes += len(datagram)
        self.timers.handshake_initiated(now, self._jitter())
        self.timers.any_authenticated_sent(now, self.config.persistent_keepalive)
        out.events.append(HandshakeInitiated(retry))

    def _on_retransmit(self, now: float, out: Output) -> None:
        if self._handshake is None:
            return
        if now - self._handshake_first >= REKEY_ATTEMPT_TIME:
            dropped = len(self._queue)
            self._queue.clear()
            self.drops[DropReason.HANDSHAKE_GAVE_UP] += dropped
            self._handshake = None
            out.events.append(HandshakeGaveUp(now - self._handshake_first, dropped))
            return
        self._initiate(now, out, retry=True)

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
        state = self._handshake
        if state is None or msg.receiver != state.local_index:
            self.drops[DropReason.UNKNOWN_INDEX] += 1
            return
        try:
            keys = consume_response(self._ident, state, msg)
        except BadPacket:
            self.drops[DropReason.AUTH_FAILED] += 1
            return
        kp = Keypair(state.local_index, msg.sender, keys.send, keys.receive, now, initiator=True)
        self._handshake = None
        self.timers.handshake_complete()
        self._rtt = now - self._handshake_sent_at
        rekey = self.current is not None
        self._install_current(kp)
        self._session_up(kp, rekey, True, now, out)
        self._authenticated_received(addr, now, out)
        if not self._flush_queue(now, out):
            self._send_keepalive(now, out)  # confirms the session to the responder
        self._maybe_start_probe(now, out)

    def _install_current(self, kp: Keypair) -> None:
        if self.previous is not None:
            self._by_index.pop(self.previous.local_index, None)
        self.previous = self.current
        self.current = kp
        self._by_index[kp.local_index] = kp

    def _session_up(
        self, kp: Keypair, rekey: bool, initiator: bool, now: float, out: Output
    ) -> None:
        self.handshakes += 1
        if rekey:
            self.rekeys += 1
        else:
            self._established_at = now
        self._last_handshake_at = now
        self.timers.session_derived(now)
        out.events.append(HandshakeCompleted(rekey, initiator, self._rtt if initiator else None))

    def _on_cookie_reply(self, data: bytes, now: float, out: Output) -> None:
        msg = decode_cookie_reply_untrusted(data)
        waiting = (self._handshake is not None and msg.receiver == self._handshake.local_index) or (
            self.next is not None and msg.receiver == self.next.local_index
        )
        if not waiting:
            self.drops[DropReason.UNKNOWN_INDEX] += 1
            return
        if not self._cookies.consume_reply(msg, now):
            self.drops[DropReason.COOKIE_INVALID] += 1
            return
        out.events.append(CookieReceived())

    # --- handshake: responder ------------------------------------------------

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
            state = consume_initiation(self._ident, msg)
        except BadPacket:
            self.drops[DropReason.AUTH_FAILED] += 1
            return
        if state.timestamp <= self._greatest_timestamp:
            self.drops[DropReason.HANDSHAKE_REPLAY] += 1
            return
        self._greatest_timestamp = state.timestamp
        # The tie-break comes after authentication and after the timestamp is
        # recorded: an initiation dropped for the race must not stay fresh for a
        # later replay (which would be answered and move the endpoint), and
        # someone who only knows our public key must not trigger the re-send.
        if (
            self._handshake is not None
            and now - self._handshake_sent_at < REKEY_TIMEOUT
            and self._ident.public > self._ident.peer_public
        ):
            # Crossing initiations: the side with the greater public key keeps
            # its own; the other answers it. Exactly one session results.
            self.drops[DropReason.HANDSHAKE_RACE] += 1
            if now - self._handshake_sent_at >= HANDSHAKE_RACE_RESEND:
                # Ours has had time to arrive and was not answered: it was lost
                # (typically: the peer was not running yet). Send it again now
                # instead of waiting out REKEY_TIMEOUT; the peer, which loses
                # the tie-break, answers it.
                self._initiate(now, out, retry=True)
            return
        if self._handshake is not None:  # we yield: the peer's handshake wins
            self._handshake = None
            self.timers.handshake_complete()
        local_index = self._new_index()
        resp, keys = create_response(self._ident, state, local_index, self._random(32))
        if self.next is not None:
            self._by_index.pop(self.next.local_index, None)
        kp = Keypair(local_index, msg.sender, keys.send, keys.receive, now, initiator=False)
        self.next = kp
        self._by_index[local_index] = kp
        self._authenticated_received(addr, now, out)
        datagram = self._cookies.add_macs(resp.encode(), now)
        out.datagrams.append((datagram, addr))
        self.tx_datagrams += 1
        self.tx_bytes += len(datagram)
        self.timers.any_authenticated_sent(now, self.config.persistent_keepalive)

    # --- transport -----------------------------------------------------------

    def _on_transport(self, data: bytes, addr: Address, now: float, out: Output) -> None:
        receiver, counter = decode_transport_header_untrusted(data)
        kp = self._by_index.get(receiver)
        if kp is None:
            self.drops[DropReason.UNKNOWN_INDEX] += 1
            return
        if now - kp.created >= REJECT_AFTER_TIME or counter >= REJECT_AFTER_MESSAGES:
            self.drops[DropReason.STALE_SESSION] += 1
            return
        plaintext = open_transport(data, _pack_nonce(counter), kp.receive_key)
        if plaintext is None:
            self.drops[DropReason.AUTH_FAILED] += 1
            return
        verdict = kp.replay.check(counter)
        if verdict is not Verdict.OK:
            reason = DropReason.REPLAY if verdict is Verdict.REPLAY else DropReason.TOO_OLD
            self.drops[reason] += 1
            return
        if kp is self.next:
            self.next = None
            rekey = self.current is not None
            self._install_current(kp)
            self._session_up(kp, rekey, False, now, out)
            self._maybe_start_probe(now, out)
        self._authenticated_received(addr, now, out)
        if kp is self.current:
            self._flush_queue(now, out)
        if plaintext:
            self._on_payload(plaintext, len(data), kp, now, out)
        if (
            kp is self.current
            and kp.initiator
            and self._handshake is None
            and now - kp.created >= REKEY_ON_RECEIVE_TIME
        ):
            self._initiate(now, out, retry=False)

    def _on_payload(
        self, plaintext: bytes, size: int, kp: Keypair, now: float, out: Output
    ) -> None:
        kind = plaintext[0]
        if kind == InnerType.FRAME:
            out.frames.append(plaintext[1:])
            self.frames_received += 1
            self.timers.data_received(now)
        elif kind == _FRAME_CSUM:
            frame, start, offset = decode_frame_csum_untrusted(plaintext)
            out.csum[len(out.frames)] = (start, offset)
            out.frames.append(frame)
            self.frames_received += 1
            self.timers.data_received(now)
        elif kind == InnerType.FRAGMENT:
            frag = decode_fragment_untrusted(plaintext)
            self.fragments_received += 1
            self.timers.data_received(now)
            whole = self._reassembler.add(frag, now)
            if whole is not None:
                out.frames.append(whole)
                self.frames_received += 1
        elif kind == InnerType.PROBE:
            probe_id = decode_probe_untrusted(plaintext)
            reply = self._sendable(self.current, now)
            if reply is not None:
                self._seal(reply, encode_probe_ack(probe_id, size), out)
                self._sent_on(reply, now, out)
        elif kind == InnerType.PROBE_ACK:
            probe_id, acked = decode_probe_ack_untrusted(plaintext)
            self._on_probe_ack(probe_id, acked, now, out)
        else:
            self.drops[DropReason.MALFORMED] += 1

    # --- path MTU ------------------------------------------------------------

    def _probe_target(self) -> int:
        """Path MTU that carries max_frame in one datagram."""
        return self.config.max_frame + 1 + TRANSPORT_OVERHEAD + self._ip_overhead

    def _maybe_start_probe(self, now: float, out: Output) -> None:
        if self._probe_due and self._probe_target() > self._path_mtu:
            self._probe_due = False
            self._probe_attempts = 0
            self._probe_step(now, out)

    def _probe_step(self, now: float, out: Output) -> None:
        kp = self._sendable(self.current, now)
        target = self._probe_target()
        if kp is None or target <= self.config.wan_mtu:
            self._probe_due = kp is None and self.config.pmtu_probing
            return
        if self._probe_attempts >= PMTU_PROBE_ATTEMPTS:
            self._probe_id = None
            self._probe_attempts = 0
            self._reset_path_mtu(out)
            self.timers.pmtu_probe = now + PMTU_REPROBE_INTERVAL
            return
        self._probe_attempts += 1
        self._probe_id = int(U32.unpack(self._random(4))[0])
        plaintext_len = target - self._ip_overhead - TRANSPORT_OVERHEAD
        # Not an "authenticated send" for the timers: a probe may well be lost,
        # so it must not stand in for a keepalive.
        self._seal(kp, encode_probe(self._probe_id, plaintext_len), out)
        self.timers.pmtu_probe = now + PMTU_PROBE_INTERVAL

    def _on_probe_ack(self, probe_id: int, acked: int, now: float, out: Output) -> None:
        target = self._probe_target()
        if probe_id != self._probe_id or acked != target - self._ip_overhead:
            return
        self._probe_id = None
        self._probe_attempts = 0
        if self._path_mtu != target:
            out.events.append(PathMtuChanged(self._path_mtu, target))
            self._path_mtu = target
        self.timers.pmtu_probe = now + PMTU_CONFIRM_INTERVAL

    def _reset_path_mtu(self, out: Output) -> None:
        if self._path_mtu != self.config.wan_mtu:
            out.events.append(PathMtuChanged(self._path_mtu, self.config.wan_mtu))
            self._path_mtu = self.config.wan_mtu
        self._probe_due = self.config.pmtu_probing
        self._probe_id = None

    # --- expiry --------------------------------------------------------------

    def _zero_keys(self, out: Output) -> None:
        self.current = self.previous = self.next = None
        self._by_index.clear()
        self._handshake = None
        self.timers.retransmit_handshake = None
        self._established_at = None
        out.events.append(SessionExpired())
