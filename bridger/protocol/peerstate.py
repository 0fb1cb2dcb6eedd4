"""One peer's state, and the verbs its concept modules call one another by.

This module is the floor the peer's concept modules stand on (see
docs/protocol.md, "Layout"):

    peer.py                          Peer: implements the verbs below by calling
      |                              the concept modules; the device's, the
      v                              shell's and NAT traversal's entry points
    send.py  receive.py  handshake.py  pmtu_driver.py
      |         (functions of a PeerState; none imports another)
      v
    peerstate.py                     PeerState: what a peer remembers, the
                                     questions it answers from that, and the
                                     cross-concept verbs, declared abstract

A concept module that needs another (a send that starts a rekey, a response
that flushes the queue) calls the verb declared here; only :class:`Peer`
knows which module carries it out. So every import points downward, and the
peer's state is read in one place.

What a peer needs of its device is :class:`PeerHost` (device.py's ``Device``
is one): its configuration, identity and randomness, the receiver-index table
and NAT traversal.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, Self

from .constants import (
    DEFAULT_PERSISTENT_KEEPALIVE,
    DEFAULT_WAN_MTU,
    IPV4_UDP_OVERHEAD,
    IPV6_UDP_OVERHEAD,
    MAX_QUEUED_FRAMES,
    MIN_WAN_MTU,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    TRANSPORT_OVERHEAD,
)
from .cookie import CookieGenerator
from .events import Address, DropReason, Output
from .fragment import Reassembler
from .keypair import Keypair
from .messages import FRAME_CSUM_HEADER_LEN
from .noise import Identity, InitiatorState, PeerKeys
from .pmtu import PathMtu, floor_for
from .relay import RELAY_OVERHEAD, via_relay
from .timers import Timers
from .traversal import Traversal


class PeerLimits(Protocol):
    """What a peer reads of its device's configuration (device.DeviceConfig)."""

    @property
    def wan_mtu(self) -> int | None: ...
    @property
    def max_frame(self) -> int: ...
    @property
    def ip_overhead(self) -> int | None: ...
    @property
    def pmtu_probing(self) -> bool: ...


class PeerHost(Protocol):
    """What a peer needs of its device (device.py's ``Device``)."""

    @property
    def config(self) -> PeerLimits: ...
    @property
    def identity(self) -> Identity: ...
    @property
    def traversal(self) -> Traversal: ...
    #: Wall clock minus the core's clock, for handshake timestamps.
    wall_offset: float
    random: Callable[[int], bytes]

    def new_index(self) -> int:
        """A fresh receiver index, not yet in the table."""
    def bind_index(self, index: int, owner: Any) -> None:
        """Enter ``index`` in the table: a keypair, or the peer whose initiation
        with that index is pending (``owner``: Device types it as its own)."""
    def release_index(self, index: int) -> None:
        """Remove ``index`` from the table."""
    def new_session(self, local_index: int, remote_index: int, send_key: bytes,
                    receive_key: bytes, created: float) -> object:
        """The native session for a new keypair, or None."""


def ip_overhead_for(addr: Address | None) -> int:
    """Outer IP+UDP header bytes for an endpoint; the worse (IPv6) if unknown.
    Through a relay: the relay hop's headers (IPv4's; the path-MTU search finds
    the rest) and its RELAY wrapping (relay.py)."""
    if addr is not None and via_relay(addr) is not None:
        return IPV4_UDP_OVERHEAD + RELAY_OVERHEAD
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




@dataclass
class HandshakeState:
    """What one peer remembers of handshakes between sessions."""

    #: mac1 / mac2 of the handshake messages we send (mac2: the peer's cookie).
    cookies: CookieGenerator
    #: Our initiation waiting for its response; its index is in the device's table.
    pending: InitiatorState | None = None
    #: When this attempt (with its retransmissions) began.
    first_sent_at: float = 0.0
    #: When the latest initiation was sent (round-trip time, crossing tie-break).
    sent_at: float = 0.0
    #: Our latest TAI64N timestamp, in ns: each is greater than the last.
    last_timestamp_ns: int = 0
    #: The greatest timestamp of the peer's initiations: older ones are replays.
    greatest_timestamp: bytes = bytes(12)


class SendQueue:
    """Frames waiting for a session, oldest first; bounded by MAX_QUEUED_FRAMES
    (a full queue drops its oldest frame and counts queue_full)."""

    def __init__(self, drops: dict[DropReason, int]) -> None:
        self._frames: deque[bytes] = deque()
        self._drops = drops

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: bytes, *, no_endpoint: bool = False) -> None:
        """``no_endpoint``: the peer has no endpoint (and no relay) yet, so an
        eviction is counted as no_endpoint rather than queue_full."""
        if len(self._frames) >= MAX_QUEUED_FRAMES:
            self._frames.popleft()
            self._drops[DropReason.NO_ENDPOINT if no_endpoint else DropReason.QUEUE_FULL] += 1
        self._frames.append(frame)

    def take_all(self) -> list[bytes]:
        """Empty the queue; its frames, oldest first."""
        frames = list(self._frames)
        self._frames.clear()
        return frames

    def clear(self) -> int:
        """Drop every waiting frame; how many there were."""
        n = len(self._frames)
        self._frames.clear()
        return n


class PeerState(ABC):
    """What one peer remembers, and the verbs between its concept modules."""

    def __init__(self, device: PeerHost, config: PeerConfig, now: float) -> None:
        self.device = device
        self.config = config
        self.name = config.name
        self.keys = PeerKeys.create(device.identity, config.public_key, config.psk)
        #: Where datagrams to the peer go; roams to the source of what authenticates
        #: (as NAT traversal allows); a ``relay.Via`` address when relayed.
        self.endpoint: Address | None = config.endpoint
        #: Where the configuration (or DNS) says the peer is.
        self.configured_endpoint: Address | None = config.endpoint
        #: The last authenticated receive from a direct endpoint (not a relay).
        self.last_direct_rx: float | None = None
        #: The keypair slots (keypair.py): current sends and receives, previous
        #: only receives, next is a responder session awaiting confirmation.
        self.current: Keypair[Self] | None = None
        self.previous: Keypair[Self] | None = None
        self.next: Keypair[Self] | None = None
        self.handshake = HandshakeState(CookieGenerator(config.public_key))
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        self.queue = SendQueue(self.drops)
        #: The id of the latest fragmented frame sent.
        self.frame_id = 0
        self.reassembler = Reassembler(self.drops, device.config.max_frame)
        self.timers = Timers()
        #: The dead-peer timer fired and nothing has authenticated since.
        self.unreachable = False
        self.last_received: float | None = None
        self.established_at: float | None = None
        self.last_handshake_at: float | None = None
        self.rtt: float | None = None
        self.pmtu = PathMtu(self.pmtu_bound(), self.pmtu_floor(),
                            probing=device.config.pmtu_probing)
        #: The path is new (first session, endpoint moved, peer was lost):
        #: the next session searches its MTU from the start.
        self.pmtu_new_path = True
        #: The lane's last counts included large datagrams (native_counts).
        self.native_big = False
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
        if self.endpoint is not None and self.keepalive_interval > 0:
            self.timers.persistent_keepalive = now

    # --- the peer's state ------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self.config.public_key

    @property
    def keepalive_interval(self) -> float:
        """The persistent keepalive in force: the configured one, or where a NAT
        mapping depends on it an automatic one (traversal.py)."""
        return self.device.traversal.keepalive_interval(self, self.config.persistent_keepalive)

    @property
    def unanswered_since(self) -> float | None:
        """When data was first sent with nothing authenticated received since."""
        return self.timers.unanswered_since

    def has_session(self, now: float) -> bool:
        return self.sendable(now) is not None

    @property
    def path_mtu(self) -> int:
        """The path MTU in use: the largest outer IP packet sent to the peer."""
        return self.pmtu.value

    @property
    def ip_overhead(self) -> int:
        """Outer IP+UDP header bytes towards the endpoint (configured, or by family)."""
        if self.device.config.ip_overhead is not None:
            return self.device.config.ip_overhead
        return ip_overhead_for(self.endpoint)

    def max_plaintext(self) -> int:
        """The largest transport plaintext one datagram carries on the current path."""
        return self.pmtu.value - self.ip_overhead - TRANSPORT_OVERHEAD

    def frame_room(self, csum: bool = False) -> int:
        """Largest frame ``send_frames`` carries in one datagram on the current
        path (``csum``: as FRAME_CSUM); larger frames are fragmented."""
        overhead = FRAME_CSUM_HEADER_LEN if csum else 1
        return min(self.max_plaintext() - overhead, self.device.config.max_frame)

    def pmtu_floor(self) -> int:
        """The smallest path MTU assumed for the endpoint (IPv4 or IPv6)."""
        return floor_for(self.ip_overhead == IPV6_UDP_OVERHEAD)

    def pmtu_bound(self) -> int:
        """The largest path MTU worth using: the one that carries max_frame in one
        datagram, within ``wan_mtu``; with probing off the configured value
        (1500 unless set)."""
        cfg = self.device.config
        if not cfg.pmtu_probing:
            return cfg.wan_mtu or DEFAULT_WAN_MTU
        limit = cfg.max_frame + 1 + TRANSPORT_OVERHEAD + self.ip_overhead
        if cfg.wan_mtu is not None:
            limit = min(limit, cfg.wan_mtu)
        return max(limit, MIN_WAN_MTU)

    def big_frame(self) -> int:
        """Frames longer than this make datagrams above the path's floor: only
        they vanish when a path shrinks, so only they call for path-MTU
        confirmations (small frames, loop probes and keepalives cost no probes)."""
        return self.pmtu.floor - self.ip_overhead - TRANSPORT_OVERHEAD - 1

    def sendable(self, now: float) -> Keypair[Self] | None:
        """The keypair ``send_frames`` would seal with now (None: it would queue)."""
        kp = self.current
        if (
            kp is None
            or self.endpoint is None
            or now - kp.created >= REJECT_AFTER_TIME
            or kp.send_counter >= REJECT_AFTER_MESSAGES
        ):
            return None
        return kp

    def state(self, now: float | None = None) -> str:
        """"up", "stale" (up, but the peer went silent), "handshaking" or "down"."""
        kp = self.current
        usable = kp is not None and (now is None or now - kp.created < REJECT_AFTER_TIME)
        if usable:
            return "stale" if self.unreachable else "up"
        if self.handshake.pending is not None:
            return "handshaking"
        return "down"

    def stats(self, now: float | None = None) -> PeerStats:
        """A snapshot for metrics and status display."""
        return PeerStats(
            state=self.state(now),
            endpoint=self.endpoint,
            session_established_at=self.established_at,
            last_handshake_at=self.last_handshake_at,
            handshakes=self.handshakes,
            rekeys=self.rekeys,
            rtt=self.rtt,
            path_mtu=self.pmtu.value,
            pmtu_source=self.pmtu.source.value,
            queued_frames=len(self.queue),
            reassembly_in_progress=len(self.reassembler),
            fragments_sent=self.fragments_sent,
            fragments_received=self.fragments_received,
            reassembled=self.reassembler.reassembled,
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

    # --- the verbs between the concept modules (implemented by peer.Peer) -----

    @abstractmethod
    def start_handshake(self, now: float, out: Output, *, retry: bool = False) -> None:
        """Send an initiation now (handshake.py), whatever the session's state."""

    @abstractmethod
    def confirm_next(self, kp: Keypair[Self], now: float, out: Output) -> None:
        """The waiting responder session ``kp`` is confirmed: it becomes current
        (handshake.py)."""

    @abstractmethod
    def authenticated_from(self, addr: Address, now: float, out: Output,
                           proof: bool = False) -> None:
        """Something from ``addr`` authenticated as this peer's (receive.py);
        ``proof``: it answers one of ours there (a handshake response)."""

    @abstractmethod
    def seal(self, kp: Keypair[Self], plaintext: bytes, out: Output) -> None:
        """One transport datagram carrying ``plaintext`` to the endpoint (send.py)."""

    @abstractmethod
    def authenticated_sent(self, kp: Keypair[Self], now: float, out: Output) -> None:
        """After an authenticated send on ``kp``: timers, key freshness (send.py)."""

    @abstractmethod
    def send_keepalive(self, now: float, out: Output) -> None:
        """An empty transport message, or a handshake without a session (send.py)."""

    @abstractmethod
    def flush_queue(self, now: float, out: Output) -> bool:
        """Send the queued frames if a session is usable; whether it was (send.py)."""

    @abstractmethod
    def probe_path(self, now: float, out: Output) -> None:
        """Send the path-MTU probes due now; report a settled change (pmtu_driver.py)."""

    @abstractmethod
    def path_moved(self, now: float, out: Output) -> None:
        """The endpoint moved: search the new path's MTU (pmtu_driver.py)."""

    @abstractmethod
    def path_session_up(self, now: float) -> None:
        """A session came up: restart the path-MTU search if due (pmtu_driver.py)."""

    @abstractmethod
    def answer_probe(self, plaintext: bytes, size: int, now: float, out: Output) -> None:
        """The peer's PROBE arrived in ``size`` bytes: ack it (pmtu_driver.py)."""

    @abstractmethod
    def probe_acked(self, plaintext: bytes, now: float, out: Output) -> None:
        """The peer's PROBE_ACK to one of our probes (pmtu_driver.py)."""

    # --- the verbs NAT traversal drives a peer by (traversal.PathPeer) ----------

    @abstractmethod
    def move_endpoint(self, addr: Address | None, now: float, out: Output) -> None:
        """Send to ``addr`` from now on (not remembered as configured)."""

    @abstractmethod
    def initiate(self, now: float, out: Output) -> None:
        """A handshake now unless a session is usable or one is under way."""

    @abstractmethod
    def handshake_now(self, now: float, out: Output) -> None:
        """An initiation to the endpoint now unless a session is usable."""

    @abstractmethod
    def send_inner(self, plaintext: bytes, now: float, out: Output,
                   to: Address | None = None) -> bool:
        """Seal an inner message on the current session; False without one."""
