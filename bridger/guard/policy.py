"""The per-peer guard: which frames may cross to and from one peer.

Flow of :meth:`Guard.outbound` (a frame read from the peer's tap, to be sent
to the peer) and :meth:`Guard.inbound` (received from the peer, to be written
to its tap); ``None`` means pass, a string is the drop reason to count:

1. Peer blocked by the loop detector: only loop probes go on (own probes are
   consumed in step 2); anything else is ``loop_blocked``.
2. Hot path: :func:`ordinary_untrusted` says "plain traffic" -> only the
   VLAN allow-list and (outbound, flooded frames only) storm control apply.
   Everything else takes the full :func:`classify_untrusted` look:
3. Loop probe: ours -> the detector learns of it, ``loop_probe`` (consumed);
   another site's -> goes on like any flooded frame, except to a blocked peer
   or (hub mode) from one tunnel on to another: ``loop_blocked``
   (bridger/guard/loop.py, 5. and 6.).
4. VLAN allow-list (outer tag; untagged and priority-tagged count as untagged):
   ``guard_vlan``.
5. DHCP/RA guards when "local": ``guard_hidden`` (upper-layer header not
   reachable: RFC 7113), ``guard_dhcp``, ``guard_ra``.
6. Outbound only, when ``flood_rate`` > 0: a flooded frame (group destination,
   or a unicast destination not known behind the peer) takes a token from a
   bucket: ARP/ND from the ND share first, then the general budget
   (``storm_nd`` when both are empty); BPDUs and other sites' probes from the
   control bucket (``storm_ctl``); the rest from the general budget (``storm``).
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

from bridger.errors import ConfigError
from bridger.guard.classify import (
    NEIGHBOUR_KINDS,
    FrameKind,
    Hidden,
    interest_tables,
    look_untrusted,
    ordinary_untrusted,
)
from bridger.guard.constants import (
    CONTROL_BURST,
    CONTROL_RATE,
    DEFAULT_FLOOD_RATE,
    DEFAULT_ND_SHARE,
    ETH_HLEN,
    VLAN_TPIDS,
    EtherType,
)
from bridger.guard.flaps import MacFlaps
from bridger.guard.loop import LoopDetector, PeerLoop, ProbeVerdict, foreign_probe_vid
from bridger.protocol.bucket import TokenBucket

SHARED = "shared"
LOCAL = "local"
MODES = (SHARED, LOCAL)


class Reason:
    """Drop reasons the guards return (each is its own counter)."""

    #: Peer blocked by loop protection; only probes cross.
    LOOP_BLOCKED = "loop_blocked"
    #: One of our own loop probes came back: consumed (the detector acted on it).
    LOOP_PROBE = "loop_probe"
    #: Outer VLAN id not in ``vlans`` (or untagged with ``untagged = false``).
    VLAN = "guard_vlan"
    #: DHCPv4/DHCPv6 server message with ``dhcp = "local"``.
    DHCP = "guard_dhcp"
    #: ICMPv6 router advertisement with ``ra = "local"``.
    RA = "guard_ra"
    #: A DHCP/RA guard is on and the frame's upper-layer header cannot be reached.
    HIDDEN = "guard_hidden"
    #: Flooded frame over the flood budget.
    STORM = "storm"
    #: ARP/ND over its share and the general budget.
    STORM_ND = "storm_nd"
    #: BPDU or another site's probe over the control bucket.
    STORM_CTL = "storm_ctl"


#: Every reason, for counters that list all reasons at zero.
GUARD_DROP_REASONS = (
    Reason.LOOP_BLOCKED, Reason.LOOP_PROBE, Reason.VLAN, Reason.DHCP, Reason.RA,
    Reason.HIDDEN, Reason.STORM, Reason.STORM_ND, Reason.STORM_CTL,
)


@dataclass(frozen=True)
class GuardConfig:
    """The guard settings (``[local]`` in the config file); defaults are on."""

    #: "shared": DHCP crosses; "local": DHCPv4/v6 server messages never cross.
    dhcp: str = SHARED
    #: "shared": router advertisements cross; "local": they never cross.
    ra: str = SHARED
    #: Only frames whose outer VLAN id is listed cross (None: any VLAN).
    vlans: tuple[int, ...] | None = None
    #: With ``vlans``: untagged (and priority-tagged) frames cross too.
    untagged: bool = True
    #: Flooded frames per second to each peer (0: unlimited).
    flood_rate: int = DEFAULT_FLOOD_RATE
    #: Burst allowance in frames (0: one second's worth, ``flood_rate``).
    flood_burst: int = 0
    #: Part of the budget reserved for ARP and IPv6 neighbour discovery.
    nd_share: float = DEFAULT_ND_SHARE
    #: Loop protection (probes, blocking).
    loop_protection: bool = True

    def __post_init__(self) -> None:
        for key in ("dhcp", "ra"):
            if getattr(self, key) not in MODES:
                raise ConfigError(f'[local] {key} must be "shared" or "local"')
        if self.vlans is not None:
            if not isinstance(self.vlans, tuple) or not all(
                type(v) is int and 1 <= v <= 4094 for v in self.vlans
            ):
                raise ConfigError("[local] vlans must be a list of VLAN ids 1-4094")
            if not self.vlans and not self.untagged:
                raise ConfigError("[local] vlans = [] with untagged = false lets nothing cross")
        for key in ("flood_rate", "flood_burst"):
            value = getattr(self, key)
            if type(value) is not int or value < 0:
                raise ConfigError(f"[local] {key} must be a whole number >= 0")
        if not 0 <= self.nd_share < 1:
            raise ConfigError("nd_share must be at least 0 and below 1")

    @property
    def burst(self) -> int:
        return self.flood_burst or self.flood_rate


#: Most tokens of each storm bucket the native lane holds at once (Guard.lend):
#: one hand-over to Python per LEND flooded frames at most, and never more
#: than LEND frames of each kind past the budget's own count.
LEND = 16

_B_PROBE = EtherType.LOOP_PROBE.to_bytes(2, "big")
_B_TPIDS = frozenset(t.to_bytes(2, "big") for t in VLAN_TPIDS)
_PROBE, _LINK_LOCAL, _RA = FrameKind.LOOP_PROBE, FrameKind.LINK_LOCAL, FrameKind.RA
_DHCP_KINDS = frozenset((FrameKind.DHCP4_SERVER, FrameKind.DHCP6_SERVER))
_CONTROL_KINDS = frozenset((_LINK_LOCAL, _PROBE))
_OURS, _FORWARD = ProbeVerdict.OURS, ProbeVerdict.FORWARD


class Guard:
    """The guards for one peer.

    ``known``: the MACs known to be behind this peer (``in`` is all that is
    used: the daemon's live MAC table); a unicast frame to any other MAC was
    flooded by the bridge and counts against the budget.  None: only group
    frames count.  ``flaps``: note source MACs (side "lan" outbound when
    ``lan_side``, the peer's name inbound).
    """

    def __init__(
        self,
        config: GuardConfig,
        peer: str,
        loop: LoopDetector | None = None,
        known: Container[bytes] | None = None,
        flaps: MacFlaps | None = None,
        lan_side: bool = True,
    ) -> None:
        self.config = config
        self.peer = peer
        self._detector = loop if config.loop_protection else None
        self.loop: PeerLoop = self._detector.add_peer(peer) if self._detector else PeerLoop(peer)
        self.known = known
        self._flaps = flaps
        self._lan_side = lan_side
        self._dhcp = config.dhcp == LOCAL
        self._ra = config.ra == LOCAL
        self._v4, self._v6 = interest_tables(self._dhcp, self._ra)
        detector = self._detector
        #: Our site id when other sites' probes from the tunnel need no look
        #: (:func:`~bridger.guard.loop.foreign_probe_vid`); None: they do.
        self.free_probes: bytes | None = (
            detector.site_id if detector is not None and detector.tap_cut else None)
        self._hidden_mask = (Hidden.DHCP if self._dhcp else 0) | (Hidden.RA if self._ra else 0)
        #: No VLAN list and no DHCP/RA guard: an untagged frame that is not a
        #: probe needs no look at all (the storm check aside).
        self._plain = config.vlans is None and not self._dhcp and not self._ra
        self._allowed: frozenset[int] | None = None
        if config.vlans is not None:
            self._allowed = frozenset(config.vlans) | ({0} if config.untagged else set())
        rate, burst, share = config.flood_rate, config.burst, config.nd_share
        self._storm = rate > 0
        self._flood = TokenBucket(rate * (1 - share), burst * (1 - share))
        self._nd = TokenBucket(rate * share, burst * share)
        self._control = TokenBucket(CONTROL_RATE, CONTROL_BURST)

    # -- the data path --------------------------------------------------------

    def outbound(self, frame: bytes, now: float, count: int = 1) -> str | None:
        """A frame read from the peer's tap: None to send it, else the drop reason.

        ``count``: the frame heads that many frames with the same Ethernet/IP
        headers (a TCP superframe's segments: pass the superframe or its first
        segment); they pass or drop together and cost ``count`` tokens.
        """
        if self._flaps is not None and self._lan_side:
            self._flaps.seen(frame[6:12], "lan", now)
        if self.loop.blocked:
            return self._blocked(frame, now, False)
        et = frame[12:14]
        if not self._plain or et == _B_PROBE or et in _B_TPIDS:
            vid = ordinary_untrusted(frame, self._v4, self._v6)
            if vid < 0:
                return self._look(frame, now, count, True)
            allowed = self._allowed
            if allowed is not None and vid not in allowed:
                return Reason.VLAN
        if self._storm:
            known = self.known
            try:
                flooded = frame[0] & 1 or (known is not None and frame[:6] not in known)
            except IndexError:
                return None  # an empty read: nothing to flood (the counters count runts)
            if flooded:
                return self._look(frame, now, count, True)
        return None

    def inbound(self, frame: bytes, now: float) -> str | None:
        """A frame received from the peer: None to write it to the tap, else the
        drop reason."""
        if self._flaps is not None:
            self._flaps.seen(frame[6:12], self.peer, now)
        return self._inbound(frame, now)

    def inbound_batch(self, frames: Sequence[bytes], now: float) -> list[tuple[int, str]]:
        """:meth:`inbound` for a batch: ``(index, reason)`` of each frame to drop,
        in order.  Source MACs are noted once per run of frames from one MAC."""
        drops: list[tuple[int, str]] = []
        flaps = self._flaps
        peer = self.peer
        check = self._inbound
        loop = self.loop
        plain = self._plain
        prev = b""
        for index, frame in enumerate(frames):
            if flaps is not None:
                src = frame[6:12]
                if src != prev:
                    flaps.seen(src, peer, now)
                    prev = src
            if plain and not loop.blocked:
                et = frame[12:14]  # _inbound's first step, without the call
                if et != _B_PROBE and et not in _B_TPIDS:
                    continue
            reason = check(frame, now)
            if reason is not None:
                drops.append((index, reason))
        return drops

    def note_source(self, src: bytes, inbound: bool, now: float) -> None:
        """The MAC-flap note of :meth:`outbound` / :meth:`inbound` alone, for a
        frame a native lane passed (``src``: its source MAC)."""
        flaps = self._flaps
        if flaps is not None:
            if inbound:
                flaps.seen(src, self.peer, now)
            elif self._lan_side:
                flaps.seen(src, "lan", now)

    def _inbound(self, frame: bytes, now: float) -> str | None:
        if self.loop.blocked:
            return self._blocked(frame, now, True)
        if self._plain:
            et = frame[12:14]
            if et != _B_PROBE and et not in _B_TPIDS:
                return None
        vid = ordinary_untrusted(frame, self._v4, self._v6)
        if vid < 0:
            free = self.free_probes
            if free is not None:
                vid = foreign_probe_vid(frame, free)
            if vid < 0:
                return self._look(frame, now, 1, False)
        allowed = self._allowed
        if allowed is not None and vid not in allowed:
            return Reason.VLAN
        return None

    # -- slower paths ------------------------------------------------------------

    def _blocked(self, frame: bytes, now: float, inbound: bool) -> str | None:
        et = frame[12:14]
        if et != _B_PROBE and et not in _B_TPIDS:
            return Reason.LOOP_BLOCKED  # cheap: a storm is what blocked frames look like
        kind, _vlans, _et, l3, _hidden, _later = look_untrusted(frame)
        if kind != _PROBE:
            return Reason.LOOP_BLOCKED
        verdict = self._probe(frame, l3, now, inbound)
        if verdict == _OURS:
            return Reason.LOOP_PROBE
        return None if verdict == _FORWARD else Reason.LOOP_BLOCKED

    def _probe(self, frame: bytes, l3: int, now: float, inbound: bool) -> ProbeVerdict:
        detector = self._detector
        if detector is None:
            return _FORWARD
        return detector.probe_seen_untrusted(frame, l3, self.peer, inbound, now)

    def _look(self, frame: bytes, now: float, count: int, outbound: bool) -> str | None:
        kind, vlans, _et, l3, hidden, _later = look_untrusted(frame)
        if kind == _PROBE:
            verdict = self._probe(frame, l3, now, not outbound)
            if verdict != _FORWARD:
                return Reason.LOOP_PROBE if verdict == _OURS else Reason.LOOP_BLOCKED
        allowed = self._allowed
        if allowed is not None and (vlans[0] if vlans else 0) not in allowed:
            return Reason.VLAN
        if hidden & self._hidden_mask:
            return Reason.HIDDEN
        if self._dhcp and kind in _DHCP_KINDS:
            return Reason.DHCP
        if self._ra and kind == _RA:
            return Reason.RA
        if not (outbound and self._storm) or len(frame) < ETH_HLEN:
            return None
        known = self.known
        if not frame[0] & 1 and (known is None or frame[:6] in known):
            return None  # known unicast: not flooded
        if kind in NEIGHBOUR_KINDS:
            if self._nd.take(now, count) or self._flood.take(now, count):
                return None
            return Reason.STORM_ND
        if kind in _CONTROL_KINDS:
            return None if self._control.take(now, count) else Reason.STORM_CTL
        return None if self._flood.take(now, count) else Reason.STORM

    # -- the native lane's share of storm control ------------------------------

    def lend(self, now: float, have: tuple[int, int]) -> tuple[int, int]:
        """Tokens of the storm buckets (the ND share, the rest) for the native lane
        to pass flooded frames with itself, on top of ``have`` (what it still
        holds; at most LEND of each in all).  They leave the buckets now, so
        what the lane passes on them is paid for as if this guard had looked at
        each frame (bn_guard_flood_class picks the bucket as :meth:`_look`
        does); a frame the lane has no token for comes here.  (0, 0) without
        storm control.  A hub floods each spoke's multicast to every other
        spoke: without this, every copy was a hand-over to Python (issue 26)."""
        if not self._storm:
            return 0, 0
        return (_take_up_to(self._nd, now, LEND - have[0]),
                _take_up_to(self._flood, now, LEND - have[1]))

    # -- status ---------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """The peer's ``guard`` object for ``bridger status --json``."""
        config = self.config
        doc: dict[str, Any] = self.loop.snapshot(now) if self._detector else {"loop": False}
        doc.update(
            {
                "dhcp": config.dhcp,
                "ra": config.ra,
                "vlans": list(config.vlans) if config.vlans is not None else None,
                "untagged": config.untagged,
                "flood_rate": config.flood_rate,
                "flood_burst": config.flood_burst,
                "loop_protection": config.loop_protection,
                "flood_tokens": round(self._flood.refill(now), 1) if self._storm else None,
                "nd_tokens": round(self._nd.refill(now), 1) if self._storm else None,
            }
        )
        return doc


def _take_up_to(bucket: TokenBucket, now: float, n: int) -> int:
    """Up to ``n`` whole tokens out of ``bucket`` (never into debt): how many."""
    if n <= 0:
        return 0
    got = min(n, int(bucket.refill(now)))
    if got <= 0:
        return 0
    bucket.tokens -= got
    return got


def without(
    frames: list[bytes], csum: dict[int, tuple[int, int]], drops: list[tuple[int, str]]
) -> tuple[list[bytes], dict[int, tuple[int, int]]]:
    """``frames`` and their partial-checksum map (index -> (start, offset), as in
    ``Output.csum``) without the frames :meth:`Guard.inbound_batch` dropped."""
    if not drops:
        return frames, csum
    gone = {index for index, _reason in drops}
    kept: list[bytes] = []
    moved: dict[int, tuple[int, int]] = {}
    for index, frame in enumerate(frames):
        if index in gone:
            continue
        meta = csum.get(index)
        if meta is not None:
            moved[len(kept)] = meta
        kept.append(frame)
    return kept, moved
