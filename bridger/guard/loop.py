"""Loop detection, sans-I/O: probes out, own probes back, peers blocked and released.

How it works (docs/guard.md has the pictures):

1. Every PROBE_INTERVAL (+- jitter) :meth:`LoopDetector.tick` returns one probe
   frame per peer (and per allowed VLAN): the daemon sends each *to that peer
   through the tunnel*, like a frame read from the peer's tap.  The peer writes
   it into its bridge; its LAN floods it (multicast destination).
2. In a loop-free network the probe never comes back.  If it does - read from
   one of our taps (it reached our LAN) or received from any peer over the
   tunnel - the network has a loop through the peer it was sent to: that peer
   is blocked (nothing but probes crosses to or from it) and one event is
   logged.  Each probe carries a random nonce; we remember which peer and
   VLAN each nonce went to for PROBE_MEMORY seconds.
3. Exception: a probe that comes back *from* a peer which is itself blocked
   (and is not the peer it was sent to) proves nothing new - that path is
   already cut - so it does not block a second peer.  With several loops at
   once this blocks one peer per loop instead of every peer.
4. Probes keep going to blocked peers, so the loop stays visible without the
   storm.  A peer is released when no probe sent to it has come back for its
   hold time: HOLD_BASE, doubled for each repeat within STRIKE_MEMORY of the
   last release, capped at HOLD_MAX, times a random factor up to
   1 + HOLD_JITTER (two sites never release in lockstep).  Recovery after the
   loop is gone: at most HOLD_MAX * (1 + HOLD_JITTER) = 20 s.
5. Our own probes are always consumed where we see them (never forwarded).
   Other sites' probes go from a tunnel into our LAN and from our LAN into a
   tunnel like any flooded frame (never towards a blocked peer), but never
   from one tunnel to another through our bridge: a probe read from a tap
   that we wrote into the bridge from another peer moments ago is dropped
   (hub mode; in mesh mode the taps are isolated ports and the kernel never
   hands it over; bridger/host/storm.py drops it in the kernel first).  A
   hub flooding every spoke's probes to every other spoke made the idle cost
   of a hub grow with the square of its spokes (issue 26), and it is not
   needed: a loop through this bridge from one tunnel to another (two spokes'
   LANs cabled together) is a loop our own probes, sent down either tunnel,
   come back from.  Where the kernel does that cut (``tap_cut``: the storm
   table's forward chain, or isolated taps), the note of what came in is not
   needed either: another site's probe from a tunnel is then an ordinary
   frame (:func:`foreign_probe_vid`), which the native lane writes into the
   bridge itself; only ours and, in a hub, other hubs' still reach the
   detector.  Each spoke's probes cost a hub no Python at all.
6. The one case our own probes cannot see: a loop that crosses two bridges
   that forward between tunnels (two hubs).  So a hub marks its probes
   (``FLAG_RELAY``) and a hub passes a marked probe of another site on to its
   other peers itself, once per probe, never from or to a blocked peer:
   probes cross hubs only from hubs, which are few.
7. A site that is no hub sends no probes down a tunnel to a hub it hears
   probing (a marked probe from that peer within HUB_HEARD_FOR): every loop
   through that tunnel passes the hub's bridge, and the hub's own probes
   down the tunnel come back through it (two spokes' LANs cabled together;
   a spoke's LAN cabled to the hub's).  The hub blocks the tunnel instead of
   the spoke, within the same 2 s.  A hub that stops probing (loop
   protection off, stopped) is probed again after HUB_HEARD_FOR.  A hub
   always probes, also towards another hub.  A hub of N spokes then gets no
   probes at all from them: its idle cost is its own N probe streams.

With STP on, a blocking port discards the probes like any data frame: they
never come back and nothing happens.  Probes go to a locally administered
multicast address outside 01:80:C2:00:00:0x, so bridges flood them (never
consume them as they do BPDUs); their source MAC is locally administered and
derived from the site id, so no real host's MAC is moved around by them.
"""

from __future__ import annotations

import math
import os
import random
import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from bridger.guard.constants import (
    ETH_HLEN,
    HOLD_BASE,
    HOLD_JITTER,
    HOLD_MAX,
    HUB_HEARD_FOR,
    PROBE_INTERVAL,
    PROBE_JITTER,
    PROBE_MAGIC,
    PROBE_MEMORY,
    PROBE_VERSION,
    STRIKE_MEMORY,
    TAINT_CAPACITY,
    TAINT_MEMORY,
    VLAN_TPIDS,
    EtherType,
)
from bridger.guard.events import GuardEvent, LoopDetected, LoopGone
from bridger.guard.flaps import MacFlaps

# --- wire format -------------------------------------------------------------

#: Destination of every probe: group bit and locally-administered bit set.
PROBE_DST = bytes.fromhex("0f6272646772")
#: Probe body after the EtherType: magic, version, flags, VLAN id, site id,
#: nonce.
PROBE_BODY = struct.Struct(">4sBBH8s8s")
SITE_ID_LEN = 8
NONCE_LEN = 8
#: Shortest Ethernet frame without FCS; a tagged frame is 4 bytes longer.
MIN_FRAME = 60
_ETHERTYPE = struct.Struct(">H")
#: Flags byte (once "reserved, 0"; older daemons ignore it): the sender
#: forwards between its peers (mode hub), so other hubs relay its probes (6.).
FLAG_RELAY = 0x01
_TAG = struct.Struct(">HHH")


class ProbeVerdict(IntEnum):
    """What the data path does with a loop probe it met."""

    #: Another site's probe: forward it like any flooded frame.
    FORWARD = 0
    #: One of ours: consume it (the detector has acted on it).
    OURS = 1
    #: Another site's probe that must not go on (to a blocked peer, or one that
    #: came in from a blocked peer and is now headed for another tunnel).
    DROP = 2


class BadProbe(Exception):
    """Raised by :func:`decode_probe_untrusted` only."""


@dataclass(frozen=True)
class Probe:
    site_id: bytes
    nonce: bytes
    #: VLAN the probe was sent in (0: untagged).
    vlan: int
    #: Flags (FLAG_RELAY: sent by a hub).
    flags: int = 0


def probe_src_mac(site_id: bytes) -> bytes:
    """Locally administered unicast MAC derived from the site id."""
    return bytes(((site_id[0] & 0xFC) | 0x02,)) + site_id[1:6]


def encode_probe(probe: Probe) -> bytes:
    """The probe as an Ethernet frame (802.1Q-tagged when ``probe.vlan``)."""
    head = PROBE_DST + probe_src_mac(probe.site_id)
    if probe.vlan:
        head += _TAG.pack(EtherType.VLAN, probe.vlan, EtherType.LOOP_PROBE)
        size = MIN_FRAME + 4
    else:
        head += _ETHERTYPE.pack(EtherType.LOOP_PROBE)
        size = MIN_FRAME
    body = PROBE_BODY.pack(
        PROBE_MAGIC, PROBE_VERSION, probe.flags, probe.vlan, probe.site_id, probe.nonce
    )
    frame = head + body
    return frame + bytes(size - len(frame))


_B_PROBE = EtherType.LOOP_PROBE.to_bytes(2, "big")
_B_TPIDS = frozenset(t.to_bytes(2, "big") for t in VLAN_TPIDS)


def foreign_probe_vid(frame: bytes, site_id: bytes) -> int:
    """The outer VLAN id (0: untagged) of another site's loop probe, untagged or
    under one tag, that a detector with ``tap_cut`` only lets through (see 5.):
    not ours (``site_id``), and not a hub's (FLAG_RELAY: the detector notes
    those, 6. and 7.).  -1 for anything else (ours, a hub's, a malformed body,
    two tags, not a probe).  Never raises.  bn_guard.c has its twin."""
    et = frame[12:14]
    vid, l3 = 0, ETH_HLEN
    if et in _B_TPIDS and len(frame) >= 18:
        vid = ((frame[14] & 0x0F) << 8) | frame[15]
        et, l3 = frame[16:18], 18
    if et != _B_PROBE or len(frame) < l3 + PROBE_BODY.size:
        return -1
    magic, version, flags, _vlan, site, _nonce = PROBE_BODY.unpack_from(frame, l3)
    if magic != PROBE_MAGIC or version != PROBE_VERSION or site == site_id:
        return -1
    if flags & FLAG_RELAY:
        return -1
    return vid


def decode_probe_untrusted(frame: bytes, l3: int = ETH_HLEN) -> Probe:
    """The probe whose body starts at ``l3`` (after the EtherType and any tags)."""
    if len(frame) < l3 + PROBE_BODY.size:
        raise BadProbe("probe too short")
    magic, version, flags, vlan, site_id, nonce = PROBE_BODY.unpack_from(frame, l3)
    if magic != PROBE_MAGIC or version != PROBE_VERSION:
        raise BadProbe("not a bridger probe")
    return Probe(site_id, nonce, vlan & 0x0FFF, flags)


# --- state -------------------------------------------------------------------


@dataclass(eq=False)
class PeerLoop:
    """Loop state of one peer.  ``blocked`` is read by that peer's Guard per frame."""

    name: str
    blocked: bool = False
    blocked_at: float = 0.0
    #: Last time a probe sent to this peer came back.
    last_return: float = -math.inf
    #: Where the last one came back ("lan" or a peer name).
    via: str = ""
    hold: float = 0.0
    strikes: int = 0
    released_at: float | None = None
    loops_detected: int = 0
    probes_sent: int = 0
    probes_returned: int = 0
    #: Last time a hub's probe came from this peer (it probes the tunnel, 7.).
    hub_heard: float = -math.inf

    def release_at(self) -> float:
        return self.last_return + self.hold

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "loop": self.blocked,
            "loop_for": round(now - self.blocked_at, 3) if self.blocked else 0.0,
            "loop_via": self.via if self.blocked else None,
            "hold": round(self.hold, 3) if self.blocked else 0.0,
            "loops_detected": self.loops_detected,
            "probes_sent": self.probes_sent,
            "probes_returned": self.probes_returned,
            "probed_by_hub": now - self.hub_heard < HUB_HEARD_FOR,
        }


class LoopDetector:
    """One per device.  Timers: :meth:`next_deadline` and :meth:`tick`."""

    def __init__(
        self,
        *,
        site_id: bytes | None = None,
        rng: random.Random | None = None,
        vlans: tuple[int, ...] | None = None,
        untagged: bool = True,
        interval: float = PROBE_INTERVAL,
        hold_base: float = HOLD_BASE,
        hold_max: float = HOLD_MAX,
        flaps: MacFlaps | None = None,
        hub: bool = False,
        tap_cut: bool = False,
    ) -> None:
        self.site_id = os.urandom(SITE_ID_LEN) if site_id is None else site_id
        if len(self.site_id) != SITE_ID_LEN:
            raise ValueError("site id must be 8 bytes")
        self._rng = rng or random.Random()
        #: VLANs the probes go in (0: untagged): where frames may cross.
        self.probe_vlans: tuple[int, ...] = (
            (0,) if vlans is None else ((0,) if untagged else ()) + tuple(vlans)
        )
        self.interval = interval
        self.hold_base = hold_base
        self.hold_max = hold_max
        self.flaps = flaps if flaps is not None else MacFlaps()
        #: Mode hub: our bridge forwards between peers; our probes carry
        #: FLAG_RELAY and other hubs' probes are relayed (6.).
        self.hub = hub
        self._flags = FLAG_RELAY if hub else 0
        #: Our bridge never hands a probe from one peer's tap to another's (the
        #: kernel's storm table, or isolated taps): other sites' probes from a
        #: tunnel need no note (5.).
        self.tap_cut = tap_cut
        self._peers: dict[str, PeerLoop] = {}
        self._sent: dict[bytes, tuple[PeerLoop, int, float]] = {}  # nonce -> (peer, vlan, sent)
        self._sent_order: deque[tuple[float, bytes]] = deque()
        #: Other sites' probes received from a peer, written into our bridge:
        #: site id + nonce -> (peer, when) (5.).
        self._delivered: dict[bytes, tuple[str, float]] = {}
        #: Other hubs' probes to pass on: (peer, frame) (6.).
        self._relays: list[tuple[str, bytes]] = []
        self._next_probe = -math.inf  # the first tick probes
        self._events: list[GuardEvent] = []
        #: Loops detected since start (all peers).
        self.loops_detected = 0
        #: Own probes that came back too late or with an unknown nonce (ignored).
        self.stale_probes = 0
        #: Own probes that came back through a peer already blocked (ignored, 3.).
        self.via_blocked = 0
        #: Other sites' probes our bridge handed from one peer's tap to another's,
        #: dropped (5.).
        self.cut_between_peers = 0
        #: Other hubs' probes passed on to a peer (6.).
        self.relayed = 0

    # -- peers --------------------------------------------------------------

    def add_peer(self, name: str) -> PeerLoop:
        state = self._peers.get(name)
        if state is None:
            state = self._peers[name] = PeerLoop(name)
        return state

    def remove_peer(self, name: str) -> None:
        self._peers.pop(name, None)

    def peer(self, name: str) -> PeerLoop:
        return self._peers[name]

    def blocked(self) -> list[str]:
        return [name for name, state in self._peers.items() if state.blocked]

    # -- timers -------------------------------------------------------------

    def next_deadline(self) -> float:
        """When :meth:`tick` must run next (a probe round or a release)."""
        deadline = self._next_probe
        for state in self._peers.values():
            if state.blocked:
                deadline = min(deadline, state.release_at())
        return deadline

    def tick(self, now: float) -> list[tuple[str, bytes]]:
        """Release peers whose hold ran out, forget old nonces and, when due,
        return ``(peer name, probe frame)`` pairs to send through the tunnel."""
        for state in self._peers.values():
            if state.blocked and now >= state.release_at():
                state.blocked = False
                state.released_at = now
                self._events.append(LoopGone(state.name, now - state.blocked_at))
        delivered = self._delivered
        while delivered:
            oldest = next(iter(delivered))
            if delivered[oldest][1] >= now - TAINT_MEMORY:
                break
            del delivered[oldest]
        sent, order = self._sent, self._sent_order
        while order and order[0][0] < now - PROBE_MEMORY:
            sent.pop(order.popleft()[1], None)
        if now < self._next_probe:
            return []
        rng = self._rng
        self._next_probe = now + self.interval * (1 + PROBE_JITTER * (2 * rng.random() - 1))
        probes: list[tuple[str, bytes]] = []
        for state in self._peers.values():
            if not self.hub and now - state.hub_heard < HUB_HEARD_FOR:
                continue  # that hub probes the tunnel (7.)
            for vlan in self.probe_vlans:
                nonce = rng.getrandbits(8 * NONCE_LEN).to_bytes(NONCE_LEN, "big")
                sent[nonce] = (state, vlan, now)
                order.append((now, nonce))
                state.probes_sent += 1
                probes.append(
                    (state.name, encode_probe(Probe(self.site_id, nonce, vlan, self._flags))))
        return probes

    # -- probes seen on the data path ---------------------------------------

    def probe_seen_untrusted(
        self, frame: bytes, l3: int, peer: str, from_wan: bool, now: float
    ) -> ProbeVerdict:
        """A loop probe (EtherType 0x88B5, body at ``l3``) on the data path:
        ``from_wan``: received from ``peer`` over the tunnel; else read from
        ``peer``'s tap, to be sent to it."""
        try:
            probe = decode_probe_untrusted(frame, l3)
        except BadProbe:  # someone else's use of the EtherType: an ordinary frame
            state = self._peers.get(peer)
            return ProbeVerdict.DROP if state is not None and state.blocked else (
                ProbeVerdict.FORWARD)
        if probe.site_id != self.site_id:
            return self._foreign(probe, peer, from_wan, now)
        entry = self._sent.get(probe.nonce)
        if entry is None or now - entry[2] > PROBE_MEMORY:
            self.stale_probes += 1
            return ProbeVerdict.OURS
        target, vlan, _sent_at = entry
        if self._peers.get(target.name) is not target:
            return ProbeVerdict.OURS  # sent to a peer since removed
        if from_wan and peer != target.name:
            via = self._peers.get(peer)
            if via is not None and via.blocked:
                self.via_blocked += 1
                return ProbeVerdict.OURS
        target.probes_returned += 1
        target.last_return = now
        target.via = peer if from_wan else "lan"
        if not target.blocked:
            self._block(target, vlan, now)
        return ProbeVerdict.OURS

    def _foreign(self, probe: Probe, peer: str, from_wan: bool, now: float) -> ProbeVerdict:
        """Another site's probe: into our LAN from any peer, never on from one peer
        to another through our bridge (5.), never to a blocked peer; another
        hub's is relayed by us instead (6.)."""
        state = self._peers.get(peer)
        key = probe.site_id + probe.nonce
        delivered = self._delivered
        if from_wan:
            relayed = self.hub and probe.flags & FLAG_RELAY
            if probe.flags & FLAG_RELAY and state is not None:
                state.hub_heard = now  # (7.)
            if self.tap_cut and not relayed:
                return ProbeVerdict.FORWARD  # foreign_probe_vid's case: no note needed
            if key in delivered:
                return ProbeVerdict.FORWARD  # (a copy that took another path: no relay)
            delivered[key] = (peer, now)
            if len(delivered) > TAINT_CAPACITY:
                del delivered[next(iter(delivered))]
            if relayed and not (state is not None and state.blocked):
                self._relay(peer, probe)
            return ProbeVerdict.FORWARD
        if state is not None and state.blocked:
            return ProbeVerdict.DROP
        if key in delivered:
            self.cut_between_peers += 1
            return ProbeVerdict.DROP
        return ProbeVerdict.FORWARD

    def _relay(self, source: str, probe: Probe) -> None:
        frame = encode_probe(probe)
        for state in self._peers.values():
            if state.name != source and not state.blocked:
                self._relays.append((state.name, frame))
                self.relayed += 1

    @property
    def has_relays(self) -> bool:
        """Whether :meth:`take_relays` has anything (cheap: asked per batch)."""
        return bool(self._relays)

    def take_relays(self) -> list[tuple[str, bytes]]:
        """Other hubs' probes to pass on now: ``(peer name, probe frame)`` pairs to
        send through the tunnel, as :meth:`tick`'s probes are (6.)."""
        relays, self._relays = self._relays, []
        return relays

    def _block(self, state: PeerLoop, vlan: int, now: float) -> None:
        if state.released_at is not None and now - state.released_at < STRIKE_MEMORY:
            state.strikes += 1
        else:
            state.strikes = 1
        hold = min(self.hold_base * 2 ** (state.strikes - 1), self.hold_max)
        state.hold = hold * (1 + HOLD_JITTER * self._rng.random())
        state.blocked = True
        state.blocked_at = now
        state.loops_detected += 1
        self.loops_detected += 1
        self._events.append(LoopDetected(state.name, state.via, vlan, state.hold))

    # -- reporting ----------------------------------------------------------

    @property
    def has_events(self) -> bool:
        """Whether :meth:`take_events` has anything (cheap: asked per batch)."""
        return bool(self._events) or self.flaps.has_events

    def take_events(self) -> list[GuardEvent]:
        """Events since the last call (loop and MAC-flap), oldest first."""
        events = self._events + self.flaps.take_events()
        self._events = []
        return events

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "site_id": self.site_id.hex(),
            "loops_detected": self.loops_detected,
            "blocked": self.blocked(),
            "stale_probes": self.stale_probes,
            "via_blocked": self.via_blocked,
            "cut_between_peers": self.cut_between_peers,
            "relayed": self.relayed,
            "mac_flaps": self.flaps.snapshot(now),
        }
