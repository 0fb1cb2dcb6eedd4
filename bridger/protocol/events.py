"""What the core hands back to its caller: drop reasons, events and Output."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Address = tuple[str, int]


class DropReason(StrEnum):
    """Why a datagram, frame or fragment was dropped; each has a counter."""

    #: Too short, unknown type, nonzero reserved bytes, bad inner header.
    MALFORMED = "malformed"
    #: Transport/response/cookie for a receiver index we do not hold.
    UNKNOWN_INDEX = "unknown_index"
    #: AEAD or handshake authentication failed.
    AUTH_FAILED = "auth_failed"
    #: Counter already seen inside the replay window.
    REPLAY = "replay"
    #: Counter older than the replay window.
    TOO_OLD = "too_old"
    #: Session past REJECT_AFTER_TIME / REJECT_AFTER_MESSAGES.
    STALE_SESSION = "stale_session"
    #: Incomplete frame timed out.
    REASSEMBLY_TIMEOUT = "reassembly_timeout"
    #: Reassembly memory cap reached; oldest partial frame evicted.
    REASSEMBLY_OVERFLOW = "reassembly_overflow"
    #: Fragment disagreeing with a partial frame of the same id (peer restart).
    REASSEMBLY_CONFLICT = "reassembly_conflict"
    #: Handshake over the per-source rate limit.
    RATE_LIMITED = "rate_limited"
    #: Handshake message with a wrong mac1 (sender does not know our key).
    HANDSHAKE_MAC1 = "handshake_mac1"
    #: Under load without a valid mac2, or with a wrong nonzero mac2: cookie sent.
    HANDSHAKE_MAC2 = "handshake_mac2"
    #: Initiation whose timestamp is not newer than the last one accepted.
    HANDSHAKE_REPLAY = "handshake_replay"
    #: Peer's initiation crossing ours; the tie-break let ours win.
    HANDSHAKE_RACE = "handshake_race"
    #: Cookie reply that does not match our latest handshake message.
    COOKIE_INVALID = "cookie_invalid"
    #: Outbound frame dropped because the pre-session queue was full.
    QUEUE_FULL = "queue_full"
    #: Outbound frame empty or larger than max_frame.
    FRAME_SIZE = "frame_size"
    #: Outbound frames discarded when the handshake gave up.
    HANDSHAKE_GAVE_UP = "handshake_gave_up"
    #: A bug: an unexpected exception caught at the receive boundary.
    INTERNAL_ERROR = "internal_error"
    #: Initiation (valid mac1) from a static key that is not a configured peer.
    UNKNOWN_PEER = "unknown_peer"
    #: Inbound whole frame from a peer larger than max_frame (never reaches the tap).
    FRAME_TOO_BIG = "frame_too_big"
    #: Outbound frame for a peer with no endpoint and no relay to reach it
    #: through (evicted from the waiting queue; issue 23).
    NO_ENDPOINT = "no_endpoint"
    #: Introduction refused: of a key this site does not list, of the
    #: introducer itself or of this site, or an address no peer could use.
    INTRODUCTION_REFUSED = "introduction_refused"
    #: Relay message refused: for or from a key the relay does not list, for
    #: the sender itself, or for a peer the relay cannot reach directly.
    RELAY_REFUSED = "relay_refused"


@dataclass(frozen=True, slots=True)
class HandshakeInitiated:
    retry: bool
    #: Name of the peer this event is about.
    peer: str = ""


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    rekey: bool
    initiator: bool
    rtt: float | None
    #: Name of the peer this event is about.
    peer: str = ""


@dataclass(frozen=True, slots=True)
class HandshakeGaveUp:
    after: float
    frames_dropped: int
    #: Name of the peer this event is about.
    peer: str = ""


@dataclass(frozen=True, slots=True)
class EndpointChanged:
    old: Address | None
    new: Address
    #: Name of the peer this event is about.
    peer: str = ""


@dataclass(frozen=True, slots=True)
class PeerUnreachable:
    """Data was sent but nothing authenticated came back for ``silent_for`` s."""

    silent_for: float
    #: Name of the peer this event is about.
    peer: str = ""


@dataclass(frozen=True, slots=True)
class SessionExpired:
    """All keys wiped after long silence; the tunnel is down."""
    #: Name of the peer this event is about.
    peer: str = ""


@dataclass(frozen=True, slots=True)
class PathMtuChanged:
    """A path-MTU search settled on a new value (outer IP packet bytes)."""
    old: int
    new: int
    #: Name of the peer this event is about.
    peer: str = ""
    #: How it was learnt: "probe", "icmp", "configured" (pmtu.Source values).
    how: str = ""


@dataclass(frozen=True, slots=True)
class CookieReceived:
    """The peer is under load; our next handshake will carry mac2."""
    #: Name of the peer this event is about.
    peer: str = ""


@dataclass(frozen=True, slots=True)
class PathChanged:
    """How frames reach a peer changed (issue 23): ``kind`` "direct",
    "relayed" (through ``via``) or "none"; ``endpoint`` where they go
    (the relay's endpoint when relayed) and ``how`` it was learnt."""

    old: str
    kind: str
    via: str = ""
    endpoint: Address | None = None
    how: str = ""
    #: Name of the peer this event is about.
    peer: str = ""


@dataclass(frozen=True, slots=True)
class InternalError:
    """A bug: an exception escaped the processing of one datagram (counted as
    ``internal_error``). ``detail`` is the formatted traceback; the core emits at
    most one per INTERNAL_ERROR_REPORT_INTERVAL and counts the rest in ``suppressed``."""

    detail: str
    suppressed: int = 0
    peer: str = ""


Event = (
    HandshakeInitiated
    | HandshakeCompleted
    | HandshakeGaveUp
    | EndpointChanged
    | PeerUnreachable
    | SessionExpired
    | PathMtuChanged
    | CookieReceived
    | PathChanged
    | InternalError
)


@dataclass(slots=True)
class Output:
    """Work for the I/O shell. Append-only; ``extend`` merges batches cheaply."""

    frames: list[bytes] = field(default_factory=list)
    datagrams: list[tuple[bytes, Address]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: Index in ``frames`` -> (csum_start, csum_offset) for frames whose L4
    #: checksum the peer left partial (FRAME_CSUM): the shell completes it, or
    #: hands it to the kernel with VIRTIO_NET_HDR_F_NEEDS_CSUM.
    csum: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Which peer each received frame came from: (peer, index of its first frame
    #: in ``frames``), in order; a run lasts until the next entry. Filled by
    #: ``Device.receive_datagrams`` (empty where only one peer can deliver).
    runs: list[tuple[Any, int]] = field(default_factory=list)

    def extend(self, other: Output) -> Output:
        if other.csum:
            base = len(self.frames)
            for index, value in other.csum.items():
                self.csum[base + index] = value
        if other.runs:
            base = len(self.frames)
            self.runs += [(peer, base + start) for peer, start in other.runs]
        self.frames += other.frames
        self.datagrams += other.datagrams
        self.events += other.events
        return self

    def __bool__(self) -> bool:
        return bool(self.frames or self.datagrams or self.events)
