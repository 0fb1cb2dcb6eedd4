"""One peer of a device: its keypairs, handshake, timers, path MTU and stats.

Outbound flow (:meth:`Peer.send_frames`, the one send path):
 1. Frames larger than max_frame or empty are dropped (frame_size).
 2. With no usable session the frames are queued (bounded) and a handshake starts.
 3. A frame that fits one datagram is sealed as FRAME (FRAME_CSUM with a partial
    checksum); otherwise it is split into FRAGMENT plaintexts, each sealed with
    its own counter. Key, limits and timers are looked up once per call.
 4. Sending on an initiator session older than REKEY_AFTER_TIME starts a rekey;
    the old session keeps sending until the new one is up.

Inbound, the device (device.py) demultiplexes datagrams by receiver index or,
for initiations, by the static key inside; then calls this peer's handlers:
``_on_initiation`` / ``_on_response`` / ``_on_cookie_reply`` for handshakes,
``_authenticated`` once per run of authenticated transport datagrams,
``_on_payload`` for inner messages other than plain frames, ``_run_done`` at the
end of a run.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .aead import seal_transport
from .checksum import complete_checksum
from .constants import (
    DEFAULT_PERSISTENT_KEEPALIVE,
    DEFAULT_WAN_MTU,
    HANDSHAKE_RACE_RESEND,
    IPV4_UDP_OVERHEAD,
    IPV6_UDP_OVERHEAD,
    MAX_QUEUED_FRAMES,
    MIN_WAN_MTU,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_ON_RECEIVE_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    TRANSPORT_OVERHEAD,
)
from .cookie import CookieGenerator
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
from .keypair import Keypair
from .messages import (
    FRAME_CSUM_HEADER_LEN,
    TRANSPORT_NONCE,
    BadPacket,
    CookieReply,
    Initiation,
    InnerType,
    MessageType,
    Response,
    decode_fragment_untrusted,
    decode_probe_ack_untrusted,
    decode_probe_untrusted,
    encode_frame_csum,
    encode_probe,
    encode_probe_ack,
)
from .noise import (
    InitiatorState,
    PeerKeys,
    ResponderState,
    consume_response,
    create_initiation,
    create_response,
    tai64n,
)
from .pmtu import PathMtu, floor_for
from .timers import Timers

if TYPE_CHECKING:
    from .device import Device

_TRANSPORT = int(MessageType.TRANSPORT)
_FRAME_BYTE = bytes([InnerType.FRAME])
_pack_nonce = TRANSPORT_NONCE.pack


def ip_overhead_for(addr: Address | None) -> int:
    """Outer IP+UDP header bytes for an endpoint; the worse (IPv6) if unknown."""
    if addr is None or ":" in addr[0]:
        return IPV6_UDP_OVERHEAD
    return IPV4_UDP_OVERHEAD


@dataclass(frozen=True)
class PeerConfig:
    """One configured peer."""

    public_key: bytes
    psk: bytes | None = None
    #: None: wait for the peer to connect (and learn its address).
    endpoint: Address | None = None
    #: Seconds; 0 disables.
    persistent_keepalive: float = DEFAULT_PERSISTENT_KEEPALIVE
    #: Shown in events and status; unique within a device.
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.public_key) != 32:
            raise ValueError("keys must be 32 bytes")
        if self.psk is not None and len(self.psk) != 32:
            raise ValueError("pre-shared key must be 32 bytes")
        if self.persistent_keepalive < 0:
            raise ValueError("persistent_keepalive must be >= 0")


@dataclass(frozen=True)
class PeerStats:
    state: str  # "down" | "handshaking" | "up" | "stale"
    endpoint: Address | None
    session_established_at: float | None
    last_handshake_at: float | None
    handshakes: int
    rekeys: int
    rtt: float | None
    path_mtu: int
    #: How path_mtu was learnt: "base", "probe", "icmp", "configured".
    pmtu_source: str
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


class Peer:
    """Sans-I/O state of one peer; created by :meth:`Device.add_peer`."""

    def __init__(self, device: Device, config: PeerConfig, now: float) -> None:
        self.device = device
        self.config = config
        self.name = config.name
        self.keys = PeerKeys.create(device.identity, config.public_key, config.psk)
        self._cookies = CookieGenerator(config.public_key)
        self._endpoint = config.endpoint
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self._handshake: InitiatorState | None = None
        self._handshake_first = 0.0
        self._handshake_sent_at = 0.0
        self._last_timestamp_ns = 0
        self._greatest_timestamp = bytes(12)
        self._queue: deque[bytes] = deque()
        self._frame_id = 0
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        self._reassembler = Reassembler(self.drops, device.config.max_frame)
        self.timers = Timers()
        self._unreachable = False
        self._last_received: float | None = None
        self._established_at: float | None = None
        self._last_handshake_at: float | None = None
        self._rtt: float | None = None
        self.pmtu = PathMtu(self._pmtu_bound(), self._pmtu_floor(),
                            probing=device.config.pmtu_probing)
        #: The path is new (first session, endpoint moved, peer was lost):
        #: the next session searches its MTU from the start.
        self._pmtu_new_path = True
        #: The lane's last counts included large datagrams (native_counts).
        self._native_big = False
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
        return self.config.public_key

    @property
    def path_mtu(self) -> int:
        """The path MTU in use: the largest outer IP packet sent to the peer."""
        return self.pmtu.value

    def frame_room(self, csum: bool = False) -> int:
        """Largest frame :meth:`send_frames` carries in one datagram on the current
        path (``csum``: as FRAME_CSUM); larger frames are fragmented."""
        overhead = FRAME_CSUM_HEADER_LEN if csum else 1
        return min(self._max_plaintext() - overhead, self.device.config.max_frame)

    def next_deadline(self) -> float | None:
        best = self.timers.next_deadline()
        for when in (self._reassembler.next_deadline(), self.pmtu.next_deadline()):
            if when is not None and (best is None or when < best):
                best = when
        return best

    def path_mtu_report(self, mtu: int, now: float, out: Output, *, local: bool = False) -> None:
        """The kernel's word on a datagram to this peer: it needed a path MTU of
        ``mtu`` (an ICMP "fragmentation needed" / "packet too big", which is
        unauthenticated news), or with ``local`` the local interface refused it
        as larger than ``mtu`` (EMSGSIZE)."""
        if local:
            self.pmtu.local_limit(mtu, now)
        else:
            self.pmtu.kernel_report(mtu, now)
        self._pmtu_step(now, out)

    def set_endpoint(self, addr: Address | None, now: float, out: Output) -> None:
        """Endpoint from configuration or DNS; starts a handshake if frames wait."""
        old = self._endpoint
        self._endpoint = addr
        if addr is not None and addr != old:
            self._new_path(now, out)
            out.events.append(EndpointChanged(old, addr, self.name))
            if self.config.persistent_keepalive > 0 and self.timers.persistent_keepalive is None:
                self.timers.persistent_keepalive = now
            if self._queue and self._sendable(self.current, now) is None:
                self._initiate(now, out, retry=False)

    def initiate(self, now: float, out: Output) -> None:
        """Start a handshake now unless a session is usable or one is under way
        (e.g. at start towards a remembered endpoint, whatever the keepalive)."""
        if self._sendable(self.current, now) is None and self._handshake is None:
            self._initiate(now, out, retry=False)

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
        as FRAME_CSUM and the peer completes them. The one send path: key, limits
        and timers are looked up once per call."""
        max_frame = self.device.config.max_frame
        kp = self._sendable(self.current, now)
        if kp is None:
            for frame in frames:
                if not 0 < len(frame) <= max_frame:
                    self.drops[DropReason.FRAME_SIZE] += 1
                    continue
                if csum is not None:
                    frame = complete_checksum(frame, csum[0], csum[1])
                self._enqueue(frame)
            if self._queue and self._handshake is None:
                self._initiate(now, out, retry=False)
            return out
        room = self._max_plaintext()
        if csum is None:
            head, fits = _FRAME_BYTE, room - 1
        else:
            head, fits = encode_frame_csum(b"", csum[0], csum[1]), room - FRAME_CSUM_HEADER_LEN
        endpoint = self._endpoint
        assert endpoint is not None  # _sendable checked it
        remote, key, counter = kp.remote_index, kp.send_key, kp.send_counter
        append = out.datagrams.append
        sent = tx = tx_bytes = 0
        big = self._big_frame  # a frame above this could vanish if the path shrank
        has_big = False
        for frame in frames:
            n = len(frame)
            if n > big:
                has_big = True
            if n == 0 or n > max_frame:
                self.drops[DropReason.FRAME_SIZE] += 1
                continue
            if counter >= REJECT_AFTER_MESSAGES:  # this session is spent mid-batch
                self._enqueue(frame if csum is None else complete_checksum(frame, *csum))
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
                self._frame_id = (self._frame_id + 1) & 0xFFFFFFFF
                pieces = split(frame, self._frame_id, room)
                for piece in pieces:
                    datagram = seal_transport(
                        _TRANSPORT, remote, counter, piece, _pack_nonce(counter), key
                    )
                    counter += 1
                    append((datagram, endpoint))
                    tx_bytes += len(datagram)
                tx += len(pieces)
                self.fragments_sent += len(pieces)
            sent += 1
        kp.send_counter = counter
        self.tx_datagrams += tx
        self.tx_bytes += tx_bytes
        if sent:
            self.frames_sent += sent
            self.timers.data_sent(now)
            if has_big:
                self.pmtu.data_sent(now)
            self._sent_on(kp, now, out)
        if self._queue and self._handshake is None and counter >= REJECT_AFTER_MESSAGES:
            self._initiate(now, out, retry=False)
        return out

    def sendable(self, now: float) -> Keypair | None:
        """The keypair :meth:`send_frames` would seal with now (None: it would queue)."""
        return self._sendable(self.current, now)

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
            self._last_received = received_last
            self._unreachable = False
            timers.any_authenticated_received()
        if sent_last:
            timers.any_authenticated_sent(sent_last, self.config.persistent_keepalive)
            if self._native_big:
                self.pmtu.data_sent(sent_last)
        self._native_big = False
        if sent_first:
            timers.data_sent(sent_first)
        if received_first:
            timers.data_received(received_first)
        kp = self.current
        if kp is None or not kp.initiator or self._handshake is not None:
            return
        age = now - kp.created
        if (sent_last and (age >= REKEY_AFTER_TIME or kp.send_counter >= REKEY_AFTER_MESSAGES)) or (
            received_last and age >= REKEY_ON_RECEIVE_TIME
        ):
            self._initiate(now, out, retry=False)

    def native_counts(
        self, frames_sent: int, tx_datagrams: int, tx_bytes: int, rx_datagrams: int,
        rx_bytes: int, frames_received: int, drops: dict[DropReason, int],
    ) -> None:
        """Add what a native lane counted for this peer (see :meth:`native_activity`,
        called after it)."""
        # Large frames among them (the lane tells totals only: judged by the mean
        # datagram): the path MTU in use is worth confirming.
        big = self._big_frame + 1 + TRANSPORT_OVERHEAD + self._ip_overhead
        self._native_big = tx_datagrams > 0 and tx_bytes > tx_datagrams * big // 2
        self.frames_sent += frames_sent
        self.tx_datagrams += tx_datagrams
        self.tx_bytes += tx_bytes
        self.rx_datagrams += rx_datagrams
        self.rx_bytes += rx_bytes
        self.frames_received += frames_received
        for reason, n in drops.items():
            self.drops[reason] += n

    def stats(self, now: float | None = None) -> PeerStats:
        """A snapshot for metrics and status display."""
        return PeerStats(
            state=self._state(now),
            endpoint=self._endpoint,
            session_established_at=self._established_at,
            last_handshake_at=self._last_handshake_at,
            handshakes=self.handshakes,
            rekeys=self.rekeys,
            rtt=self._rtt,
            path_mtu=self.pmtu.value,
            pmtu_source=self.pmtu.source.value,
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

    # --- timers --------------------------------------------------------------

    def tick(self, now: float, out: Output) -> None:
        """Run the timers whose deadline has passed."""
        self._reassembler.expire(now)
        t = self.timers
        if t.retransmit_handshake is not None and now >= t.retransmit_handshake:
            t.retransmit_handshake = None
            self._on_retransmit(now, out)
        if t.new_handshake is not None and now >= t.new_handshake:
            t.new_handshake = None
            silent = now - (self._last_received if self._last_received is not None else now)
            self._unreachable = True
            out.events.append(PeerUnreachable(silent, self.name))
            self.pmtu.peer_lost()
            self._pmtu_new_path = True
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
        pmtu_due = self.pmtu.next_deadline()
        if pmtu_due is not None and now >= pmtu_due:
            self._pmtu_step(now, out)

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
        if self.device.config.ip_overhead is not None:
            return self.device.config.ip_overhead
        return ip_overhead_for(self._endpoint)

    def _max_plaintext(self) -> int:
        return self.pmtu.value - self._ip_overhead - TRANSPORT_OVERHEAD

    def _jitter(self) -> float:
        return int.from_bytes(self.device.random(2), "little") / 65536 * REKEY_TIMEOUT_JITTER_MAX

    def _enqueue(self, frame: bytes) -> None:
        if len(self._queue) >= MAX_QUEUED_FRAMES:
            self._queue.popleft()
            self.drops[DropReason.QUEUE_FULL] += 1
        self._queue.append(frame)

    def _authenticated(self, kp: Keypair, addr: Address, now: float, out: Output) -> None:
        """Once per run of transport datagrams on ``kp`` that authenticated: confirm
        a waiting responder session, roam, timers, flush the queue."""
        if kp is self.next:
            self.next = None
            rekey = self.current is not None
            self._install_current(kp)
            self._session_up(kp, rekey, False, now, out)
        self._authenticated_received(addr, now, out)
        if kp is self.current:
            self._flush_queue(now, out)
            if self.pmtu.probes_waiting:  # the search a new session started
                self._pmtu_step(now, out)

    def _run_done(self, kp: Keypair, delivered: int, now: float, out: Output) -> None:
        """End of a run of datagrams on ``kp``: data timers and rekey-on-receive."""
        if delivered:
            self.frames_received += delivered
            self.timers.data_received(now)
        if (
            kp is self.current
            and kp.initiator
            and self._handshake is None
            and now - kp.created >= REKEY_ON_RECEIVE_TIME
        ):
            self._initiate(now, out, retry=False)

    def _update_endpoint(self, addr: Address, now: float, out: Output) -> None:
        """Roaming: called only after a packet from ``addr`` authenticated."""
        if addr != self._endpoint:
            old = self._endpoint
            self._endpoint = addr
            if old is not None:
                self._new_path(now, out)
            out.events.append(EndpointChanged(old, addr, self.name))

    def _authenticated_received(self, addr: Address, now: float, out: Output) -> None:
        self._update_endpoint(addr, now, out)
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
        if not self._queue or self._sendable(self.current, now) is None:
            return False
        queued = list(self._queue)
        self._queue.clear()
        self.send_frames(queued, now, out)
        return True

    # --- handshake: initiator ------------------------------------------------

    def _timestamp(self, now: float) -> bytes:
        ns = max(int((now + self.device.wall_offset) * 1e9), self._last_timestamp_ns + 1)
        self._last_timestamp_ns = ns
        return tai64n(ns)

    def _initiate(self, now: float, out: Output, *, retry: bool) -> None:
        if self._endpoint is None:
            return
        if not retry and self.next is not None and now - self.next.created < REKEY_TIMEOUT:
            # We just answered the peer's initiation: its first transport message
            # confirms that session within a round trip (frames wait in the
            # queue). Initiating now would make a second, needless handshake
            # (as in WireGuard, a response counts as a recent handshake).
            return
        if not retry:
            self._handshake_first = now
        device = self.device
        if self._handshake is not None:
            device.index.pop(self._handshake.local_index, None)
        msg, state = create_initiation(
            device.identity, self.keys, device.new_index(), device.random(32),
            self._timestamp(now),
        )
        self._handshake = state
        device.index[state.local_index] = self
        self._handshake_sent_at = now
        datagram = self._cookies.add_macs(msg.encode(), now)
        out.datagrams.append((datagram, self._endpoint))
        self.tx_datagrams += 1
        self.tx_bytes += len(datagram)
        self.timers.handshake_initiated(now, self._jitter())
        self.timers.any_authenticated_sent(now, self.config.persistent_keepalive)
        out.events.append(HandshakeInitiated(retry, self.name))

    def _end_handshake(self) -> None:
        if self._handshake is not None:
            self.device.index.pop(self._handshake.local_index, None)
            self._handshake = None

    def _on_retransmit(self, now: float, out: Output) -> None:
        if self._handshake is None:
            return
        if now - self._handshake_first >= REKEY_ATTEMPT_TIME:
            dropped = len(self._queue)
            self._queue.clear()
            self.drops[DropReason.HANDSHAKE_GAVE_UP] += dropped
            self._end_handshake()
            out.events.append(HandshakeGaveUp(now - self._handshake_first, dropped, self.name))
            return
        self._initiate(now, out, retry=True)

    def _on_response(self, msg: Response, addr: Address, now: float, out: Output) -> None:
        """An admitted response whose receiver index is our pending initiation."""
        state = self._handshake
        if state is None or msg.receiver != state.local_index:
            self.drops[DropReason.UNKNOWN_INDEX] += 1
            return
        try:
            keys = consume_response(self.device.identity, self.keys, state, msg)
        except BadPacket:
            self.drops[DropReason.AUTH_FAILED] += 1
            return
        session = self.device.new_session(
            state.local_index, msg.sender, keys.send, keys.receive, now
        )
        kp = Keypair(
            state.local_index, msg.sender, keys.send, keys.receive, now, initiator=True,
            peer=self, session=session,
        )
        self._handshake = None  # its index now names the keypair
        self.timers.handshake_complete()
        self._rtt = now - self._handshake_sent_at
        rekey = self.current is not None
        self._install_current(kp)
        self._session_up(kp, rekey, True, now, out)
        self._authenticated_received(addr, now, out)
        if not self._flush_queue(now, out):
            self._send_keepalive(now, out)  # confirms the session to the responder
        self._pmtu_step(now, out)

    def _install_current(self, kp: Keypair) -> None:
        index = self.device.index
        if self.previous is not None:
            index.pop(self.previous.local_index, None)
        self.previous = self.current
        self.current = kp
        index[kp.local_index] = kp

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
        if self._pmtu_new_path or not (self.pmtu.proven or self.pmtu.searching):
            self._pmtu_new_path = False
            self.pmtu.restart(now, self._pmtu_bound(), self._pmtu_floor())
        out.events.append(
            HandshakeCompleted(rekey, initiator, self._rtt if initiator else None, self.name)
        )

    def _on_cookie_reply(self, msg: CookieReply, now: float, out: Output) -> None:
        if not self._cookies.consume_reply(msg, now):
            self.drops[DropReason.COOKIE_INVALID] += 1
            return
        out.events.append(CookieReceived(self.name))

    def _waiting_for(self, receiver: int) -> bool:
        """Does a cookie reply to ``receiver`` answer our latest handshake message?"""
        return (self._handshake is not None and receiver == self._handshake.local_index) or (
            self.next is not None and receiver == self.next.local_index
        )

    # --- handshake: responder ------------------------------------------------

    def _on_initiation(
        self, msg: Initiation, state: ResponderState, addr: Address, now: float, out: Output
    ) -> None:
        """An admitted initiation, authenticated as coming from this peer."""
        if state.timestamp <= self._greatest_timestamp:
            self.drops[DropReason.HANDSHAKE_REPLAY] += 1
            return
        self._greatest_timestamp = state.timestamp
        # The tie-break comes after authentication and after the timestamp is
        # recorded: an initiation dropped for the race must not stay fresh for a
        # later replay (which would be answered and move the endpoint), and
        # someone who only knows our public key must not trigger the re-send.
        device = self.device
        if (
            self._handshake is not None
            and now - self._handshake_sent_at < REKEY_TIMEOUT
            and device.identity.public > self.config.public_key
        ):
            # Crossing initiations: the side with the greater public key keeps
            # its own; the other answers it. Exactly one session results.
            self.drops[DropReason.HANDSHAKE_RACE] += 1
            resend_at = self._handshake_sent_at + HANDSHAKE_RACE_RESEND
            if now >= resend_at:
                # Ours has had time to arrive and was not answered: it was lost
                # (typically: the peer was not running yet). Send it again now
                # instead of waiting out REKEY_TIMEOUT; the peer, which loses
                # the tie-break, answers it.
                self._initiate(now, out, retry=True)
            else:
                # Ours may still be on its way, or may have been lost: if no
                # answer has come by then, re-send it at resend_at rather than
                # after REKEY_TIMEOUT (the peer now waits for ours).
                t = self.timers
                if t.retransmit_handshake is None or resend_at < t.retransmit_handshake:
                    t.retransmit_handshake = resend_at
            return
        if self._handshake is not None:  # we yield: the peer's handshake wins
            self._end_handshake()
            self.timers.handshake_complete()
        local_index = device.new_index()
        resp, keys = create_response(self.keys, state, local_index, device.random(32))
        if self.next is not None:
            device.index.pop(self.next.local_index, None)
        session = device.new_session(local_index, msg.sender, keys.send, keys.receive, now)
        kp = Keypair(
            local_index, msg.sender, keys.send, keys.receive, now, initiator=False, peer=self,
            session=session,
        )
        self.next = kp
        device.index[local_index] = kp
        self._authenticated_received(addr, now, out)
        datagram = self._cookies.add_macs(resp.encode(), now)
        out.datagrams.append((datagram, addr))
        self.tx_datagrams += 1
        self.tx_bytes += len(datagram)
        self.timers.any_authenticated_sent(now, self.config.persistent_keepalive)

    # --- transport payloads other than plain frames ----------------------------

    def _on_payload(
        self, plaintext: bytes, size: int, kp: Keypair, now: float, out: Output
    ) -> int:
        """An authenticated inner message other than FRAME / FRAME_CSUM (which the
        device's receive loop delivers itself); returns how many frames it
        delivered (0 or 1)."""
        kind = plaintext[0]
        if kind == InnerType.FRAGMENT:
            frag = decode_fragment_untrusted(plaintext)
            self.fragments_received += 1
            self.timers.data_received(now)
            whole = self._reassembler.add(frag, now)
            if whole is not None:
                out.frames.append(whole)
                return 1
            return 0
        if kind == InnerType.PROBE:
            probe_id = decode_probe_untrusted(plaintext)
            reply = self._sendable(self.current, now)
            if reply is not None:
                self._seal(reply, encode_probe_ack(probe_id, size), out)
                self._sent_on(reply, now, out)
        elif kind == InnerType.PROBE_ACK:
            probe_id, acked = decode_probe_ack_untrusted(plaintext)
            if self.pmtu.acked(probe_id, acked + self._ip_overhead, now):
                self._pmtu_step(now, out)
        else:
            self.drops[DropReason.MALFORMED] += 1
        return 0

    # --- path MTU (the state machine is pmtu.PathMtu) ----------------------------

    def _pmtu_floor(self) -> int:
        return floor_for(self._ip_overhead != IPV4_UDP_OVERHEAD)

    def _pmtu_bound(self) -> int:
        """The largest path MTU worth using: the one that carries max_frame in one
        datagram, within ``wan_mtu``; with probing off the configured value
        (1500 unless set)."""
        cfg = self.device.config
        if not cfg.pmtu_probing:
            return cfg.wan_mtu or DEFAULT_WAN_MTU
        bound = cfg.max_frame + 1 + TRANSPORT_OVERHEAD + self._ip_overhead
        if cfg.wan_mtu is not None:
            bound = min(bound, cfg.wan_mtu)
        return max(bound, MIN_WAN_MTU)

    @property
    def _big_frame(self) -> int:
        """Frames longer than this make datagrams above the path's floor: only
        they vanish when a path shrinks, so only they call for confirmations
        (small frames, loop probes and keepalives cost no probes)."""
        return self.pmtu.floor - self._ip_overhead - TRANSPORT_OVERHEAD - 1

    def _new_path(self, now: float, out: Output) -> None:
        """The endpoint moved: the path's MTU is searched afresh (now if a
        session can carry probes, else when the next one is up)."""
        if self._sendable(self.current, now) is None:
            self._pmtu_new_path = True
            return
        self.pmtu.restart(now, self._pmtu_bound(), self._pmtu_floor())
        self._pmtu_step(now, out)

    def _pmtu_step(self, now: float, out: Output) -> None:
        """Send the probes the path-MTU search wants now; report a settled change."""
        kp = self._sendable(self.current, now)
        if kp is None:
            self.pmtu.postpone(now)
        else:
            overhead = self._ip_overhead + TRANSPORT_OVERHEAD
            # Not an "authenticated send" for the timers: a probe may well be
            # lost, so it must not stand in for a keepalive.
            for probe_id, size in self.pmtu.due(now):
                self._seal(kp, encode_probe(probe_id, size - overhead), out)
        settled = self.pmtu.take_settled()
        if settled is not None:
            out.events.append(PathMtuChanged(settled.old, settled.new, self.name,
                                             settled.source.value))

    # --- expiry --------------------------------------------------------------

    def _forget_keys(self) -> None:
        """Drop every keypair and the pending handshake, and their index entries."""
        index = self.device.index
        for kp in (self.current, self.previous, self.next):
            if kp is not None:
                index.pop(kp.local_index, None)
        self.current = self.previous = self.next = None
        self._end_handshake()

    def _zero_keys(self, out: Output) -> None:
        self._forget_keys()
        self.timers.retransmit_handshake = None
        self._established_at = None
        out.events.append(SessionExpired(self.name))
