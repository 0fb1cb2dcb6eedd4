"""The election of a site's active gateway, sans-I/O: frames and ``now`` in, frames out.

Gateways on one LAN that declare the same site form a group.  Every member
sends a HELLO every :data:`HELLO_INTERVAL` (and at once when its role changes);
:class:`Election` turns what it hears into one role for itself:

* ``listening``: for :data:`HOLD` after start (it learns who is there; the
  active ignores it meanwhile), unless an active member answers first: standby.
* ``active``: it forwards between the LAN and the peers.
* ``standby``: it forwards nothing; its tunnels stay up.

The rules, the same on every member (so all agree without a second round):

1. A member is *live* while its last counted frame is younger than :data:`HOLD`
   and it has not said BYE.  Listening members are not candidates for the
   active (it does not step down for one that has not listened yet).
2. Each candidate (live members and ourselves) ranks as (hears its peers,
   priority, is active, node id), highest first.  *Hears its peers*: something
   came through one of its tunnels within :data:`WAN_HOLD` (the shell says so
   with :meth:`Election.peers_heard`; each member says it in its frames: flag
   ``WAN_LOST``).  The active keeps its place against an equal newcomer (no
   needless handover); a higher rank takes over (the active steps down first,
   then the newcomer goes active: never two at once on purpose); two actives
   after a partition heals keep the higher node id.
3. The best-ranked candidate goes active once no other live member says it is
   active; anyone else is standby.
4. An active that has lost its WAN counts another member as hearing its peers
   only on proof that it heard one *after* our WAN went silent: a frame
   received since our loss that says ``WAN_FRESH`` (it heard a peer within
   :data:`WAN_FRESH`).  The peers' probes reach every member at most
   ``PROBE_GAP`` apart, so when both lose a shared uplink at once, the other's
   last peer frame is older than that (``WAN_HOLD - WAN_FRESH > PROBE_GAP``):
   nobody hands over and the active keeps its role.  A member whose WAN has
   just come back (its frames said ``WAN_LOST`` before) is proof only
   ``PROBE_GAP`` later: when a shared uplink returns, our own peers are heard
   within that time too, and nothing moves.  A standby that hears its peers
   answers an active's ``WAN_LOST`` at once (a HELLO when that frame comes, or
   when it next hears a peer).

So an active whose WAN is cut steps down for a standby that still hears the
peers, a standby without WAN never takes over from one with it, and two
members that lose the WAN together stay as they are.

Replay protection: a frame counts only if it echoes our own nonce (random per
start: it was made after we started) and its sequence number is above the last
one counted from that sender's nonce.  A sender's earlier nonces are retired:
frames of a previous run of that member never count again.  Frames that do not
echo us yet are remembered only so that our next HELLO echoes their nonce.

Timers are deadlines: :meth:`Election.next_deadline` (``now`` only tells past
expiries from future ones), and :meth:`Election.tick`
when it passes.  No clock is read here.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bridger.ha.wire import (
    MACS_PER_FRAME,
    MAX_ECHO,
    BadFrame,
    Flag,
    Kind,
    Message,
    decode_untrusted,
    encode,
    peek_untrusted,
)

# --- implementation constants --------------------------------------------------------

#: Seconds between HELLOs.
HELLO_INTERVAL = 0.2
#: A member unheard for this long is gone; a starting member listens this long.
HOLD = 1.2
#: Seconds between the active's MAC lists.
SYNC_INTERVAL = 1.0
#: Seconds a MAC from the active's lists is remembered (the bridges' ageing time).
MAC_MEMORY = 300.0
#: Most members a group tracks (a frame echoes at most MAX_ECHO nonces).
MAX_MEMBERS = MAX_ECHO
#: Nonces of a member not yet confirmed (they do not echo us), kept for echoing.
PENDING_PER_MEMBER = 2
#: Retired nonces remembered per member.
RETIRED_PER_MEMBER = 16
#: A member unheard this long is forgotten.
FORGET_AFTER = 600.0
#: Copies of a BYE (a lost one would cost a HOLD of outage).
BYE_COPIES = 3
#: How much longer a starting member listens while an authentic member is heard
#: whose frames do not count yet (it has not echoed our nonce: a busy host).  A
#: replay of recorded frames can delay a start by this much, no more.
LISTEN_EXTRA = 2 * HOLD
#: The longest gap between two frames from the peers on a sound WAN: the peers'
#: loop guards send a probe through every tunnel every 0.5 +- 0.1 s
#: (bridger.guard.constants), and the shell looks at the taps every 0.05 s.
PROBE_GAP = 0.65
#: A member that heard nothing from any peer for this long has lost its WAN: one
#: probe lost is no loss (as HOLD is on the LAN).
WAN_HOLD = 1.2
#: A member that heard a peer within this long says WAN_FRESH (rule 4); with
#: WAN_HOLD - WAN_FRESH > PROBE_GAP, plus slack for a busy host.
WAN_FRESH = 0.4


class Role(StrEnum):
    LISTENING = "listening"
    STANDBY = "standby"
    ACTIVE = "active"


@dataclass(frozen=True)
class RoleChanged:
    """Our role changed; ``reason`` is for the one log line."""

    role: Role
    previous: Role
    reason: str


@dataclass(frozen=True)
class WanChanged:
    """We stopped hearing our peers (``ok`` False), or hear them again; for the log."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class Reannounce:
    """We stay active, but bridges may point elsewhere (another active just stepped
    down after a partition healed): announce the MACs again."""

    reason: str


@dataclass(frozen=True)
class GroupConfig:
    site: str
    #: The site tag on the wire (``wire.site_tag(site)``).
    site_tag: bytes
    #: Our node id (``wire.node_id(public key)``).
    node: bytes
    #: Frame MAC key (``wire.auth_key(group key, site)``).
    key: bytes
    priority: int = 100


@dataclass
class Member:
    node: bytes
    #: The confirmed nonce of its current run (None: not confirmed yet).
    nonce: bytes | None = None
    seq: int = -1
    priority: int = 0
    flags: Flag = Flag.NONE
    #: When its last counted frame came (-inf: never, or it said BYE).
    heard: float = -math.inf
    #: Last time any authentic frame of it came (counted or not).
    seen: float = -math.inf
    pending: dict[bytes, float] = field(default_factory=dict)
    retired: deque[bytes] = field(default_factory=lambda: deque(maxlen=RETIRED_PER_MEMBER))
    said_bye: bool = False
    #: When its frames stopped saying WAN_LOST (-inf: never said it), and when they
    #: started to (the latest loss).
    wan_back_at: float = -math.inf
    wan_lost_at: float = -math.inf

    def live(self, now: float) -> bool:
        return now - self.heard < HOLD

    def rank(self) -> tuple[bool, int, bool, bytes]:
        """Rule 2 of the module docstring."""
        return (not self.flags & Flag.WAN_LOST, self.priority, bool(self.flags & Flag.ACTIVE),
                self.node)


def node_name(node: bytes) -> str:
    return node[:4].hex()


class Election:
    """One member's view of its group (module docstring)."""

    def __init__(self, config: GroupConfig, now: float, nonce: bytes) -> None:
        if len(nonce) != 8:
            raise ValueError("nonce must be 8 bytes")
        self.config = config
        self.nonce = nonce
        self.role = Role.LISTENING
        self.since = now
        self.listen_until = now + HOLD
        self.members: dict[bytes, Member] = {}
        self.seq = 0
        self.next_hello = now
        self.next_sync = now
        #: Counted frames by kind; drops by reason.
        self.received: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.changes = 0
        #: The active's last lists: MAC -> when it was last listed (local: on its LAN
        #: port; remote: behind its taps).
        self.local_macs: dict[bytes, float] = {}
        self.remote_macs: dict[bytes, float] = {}
        self._events: list[RoleChanged | Reannounce | WanChanged] = []
        #: Our LAN link is down: never active, nobody's candidate (``fault``).
        self.faulty = False
        #: When something last came through one of our tunnels (``peers_heard``).
        self.peers_heard_at = -math.inf
        #: The WAN state our frames last said (None: not yet known).
        self._wan_said: bool | None = None
        #: Whether we ever heard a peer (the first time is no news for the log).
        self._wan_seen = False
        #: When we last sent a frame that says WAN_FRESH.
        self._fresh_sent_at = -math.inf

    # -- what the shell reads -----------------------------------------------------------

    @property
    def forwarding(self) -> bool:
        return self.role is Role.ACTIVE

    def take_events(self) -> list[RoleChanged | Reannounce | WanChanged]:
        events, self._events = self._events, []
        return events

    def wan_ok(self, now: float) -> bool:
        """Whether we heard a peer within WAN_HOLD (rule 2)."""
        return now - self.peers_heard_at < WAN_HOLD

    def wan_fresh(self, now: float) -> bool:
        """Whether we heard a peer within WAN_FRESH (rule 4)."""
        return now - self.peers_heard_at < WAN_FRESH

    def next_deadline(self, now: float) -> float:
        """When :meth:`tick` is due next: a HELLO, the end of listening, a member's
        expiry, our WAN's."""
        when = self.next_hello
        if self.role is Role.LISTENING:
            when = min(when, self.listen_until)
        if self.peers_heard_at + WAN_HOLD > now:
            when = min(when, self.peers_heard_at + WAN_HOLD)
        elif self.role is Role.ACTIVE:  # rule 4: a member's WAN back long enough
            for member in self.members.values():
                if member.wan_back_at + PROBE_GAP > now:
                    when = min(when, member.wan_back_at + PROBE_GAP)
        for member in self.members.values():
            expiry = member.heard + HOLD
            if expiry > now:
                when = min(when, expiry)
        return when

    def sync_due(self, now: float) -> bool:
        """Whether the active should send its MAC lists now (:meth:`macs`)."""
        return self.role is Role.ACTIVE and now >= self.next_sync

    def known_macs(self, now: float) -> tuple[set[bytes], set[bytes]]:
        """(local, remote) MACs from the active's lists, not older than MAC_MEMORY."""
        local = {mac for mac, t in self.local_macs.items() if now - t < MAC_MEMORY}
        remote = {mac for mac, t in self.remote_macs.items() if now - t < MAC_MEMORY}
        return local, remote

    # -- event verbs ----------------------------------------------------------------------

    def tick(self, now: float) -> list[bytes]:
        """Deadlines that passed: members gone, listening over, our WAN silent, HELLO
        due.  Payloads to send."""
        self._check_wan(now)
        self._decide(now)
        if now < self.next_hello:
            return []
        self.next_hello = now + HELLO_INTERVAL
        self._forget(now)
        return [self._payload(Kind.HELLO, now)]

    def receive_untrusted(self, payload: bytes, now: float) -> None:
        """One frame from the LAN (the bytes after the EtherType); drops are counted."""
        try:
            site, _kind = peek_untrusted(payload)
        except BadFrame:
            self.drops["malformed"] += 1
            return
        if site != self.config.site_tag:
            self.drops["other_site"] += 1
            return
        try:
            msg = decode_untrusted(payload, self.config.key)
        except BadFrame:
            self.drops["auth"] += 1
            return
        if msg.node == self.config.node:
            # Our own frame reflected by the LAN, or a second gateway with our key.
            self.drops["own" if msg.nonce == self.nonce else "same_node"] += 1
            return
        member = self.members.get(msg.node)
        if member is None:
            if len(self.members) >= MAX_MEMBERS:
                self.drops["members"] += 1
                return
            member = self.members[msg.node] = Member(msg.node)
        member.seen = now
        if not self._fresh(member, msg, now):
            return
        self.received[msg.kind.name.lower()] += 1
        member.seq = msg.seq
        was_live = member.live(now)
        was_active = was_live and bool(member.flags & Flag.ACTIVE)
        if msg.kind is Kind.BYE:
            member.heard = -math.inf
            member.flags = Flag.NONE
            member.said_bye = True
        else:
            if member.flags & Flag.WAN_LOST and not msg.flags & Flag.WAN_LOST:
                member.wan_back_at = now
            elif msg.flags & Flag.WAN_LOST and not member.flags & Flag.WAN_LOST:
                member.wan_lost_at = now
            member.heard = now
            member.priority = msg.priority
            member.flags = msg.flags
            member.said_bye = False
        if msg.kind is Kind.MACS:
            self._learn_macs(msg, now)
        self._offer_proof(now)
        we_were_active = self.role is Role.ACTIVE
        self._decide(now, member if msg.kind is Kind.BYE else None)
        # Only if we already were: one that goes active now announces anyway.
        if (not we_were_active or self.role is not Role.ACTIVE or msg.kind is Kind.BYE
                or member.flags & Flag.ACTIVE):
            return
        if was_active:
            self._events.append(Reannounce(f"member {node_name(member.node)} stepped down"))
        elif not was_live and not member.flags & Flag.LISTENING:
            # Back after we did not hear it (a partition), already standby: it may
            # have forwarded meanwhile and stepped down before we heard it active.
            self._events.append(Reannounce(f"member {node_name(member.node)} is back "
                                           "as standby"))

    def begin(self, now: float) -> None:
        """The shell starts reading frames: listening lasts HOLD from now.  The time
        spent setting up the host (seconds on a busy one) heard nothing; without
        this a starting member that missed the active's HELLOs meanwhile went
        active at its first tick."""
        if self.role is Role.LISTENING:
            self.since = now
            self.listen_until = now + HOLD
            self.next_hello = now

    def peers_heard(self, now: float) -> None:
        """Something came from a peer through one of our tunnels (any frame counts:
        the shell cannot tell the peers' probes from their data, nor needs to)."""
        self.peers_heard_at = now
        if self._check_wan(now):
            self._decide(now)
        self._offer_proof(now)

    def stalled(self, now: float) -> None:
        """The shell was not scheduled for a while (its looks at the tunnels stopped):
        frames from the peers may still wait in the data plane's queues, and the
        group's frames that come now were sent long ago.  A WAN that was sound gets
        PROBE_GAP more before it counts as lost (it does not become fresh by this:
        no proof for rule 4 rests on it)."""
        if self._wan_said:
            self.peers_heard_at = max(self.peers_heard_at, now - WAN_HOLD + PROBE_GAP)

    def fault(self, down: bool, now: float) -> None:
        """Our LAN link went down (``down``) or came back.  Down: standby at once
        (the frames it would forward have nowhere to go).  Back: listen again, as
        at start, so a group that went on without us keeps its active."""
        if down == self.faulty:
            return
        self.faulty = down
        if down:
            self._set(Role.STANDBY, now, "LAN link down")
        else:
            self.listen_until = now + HOLD
            self._set(Role.LISTENING, now, "LAN link back")

    def goodbye(self, now: float) -> list[bytes]:
        """A clean stop: BYE frames to send now (the shell gates itself off first)."""
        previous = self.role
        self.role = Role.STANDBY
        if previous is not Role.STANDBY:
            self._changed(previous, now, "stopping")
        return [self._payload(Kind.BYE, now) for _ in range(BYE_COPIES)]

    def macs(self, local: list[bytes], remote: list[bytes], now: float) -> list[bytes]:
        """The active's MAC lists as payloads (several when long); none when not active."""
        if self.role is not Role.ACTIVE:
            return []
        self.next_sync = now + SYNC_INTERVAL
        out = []
        local, remote = list(local), list(remote)
        while True:
            take_local = local[:MACS_PER_FRAME]
            take_remote = remote[:MACS_PER_FRAME - len(take_local)]
            local, remote = local[len(take_local):], remote[len(take_remote):]
            out.append(self._payload(Kind.MACS, now, take_local, take_remote))
            if not local and not remote:
                return out

    # -- inside ---------------------------------------------------------------------------

    def _fresh(self, member: Member, msg: Message, now: float) -> bool:
        """Whether ``msg`` counts (module docstring: replay protection); drops counted."""
        if msg.nonce in member.retired:
            self.drops["replay"] += 1
            return False
        confirmed = self.nonce in msg.echo
        if msg.nonce == member.nonce:
            if msg.seq <= member.seq:
                self.drops["replay"] += 1
                return False
            if not confirmed:  # it has forgotten us: echoed again from its next HELLO on
                member.seq = msg.seq
                self.drops["unconfirmed"] += 1
                return False
            return True
        if not confirmed:
            if msg.nonce not in member.pending and len(member.pending) >= PENDING_PER_MEMBER:
                del member.pending[min(member.pending, key=member.pending.__getitem__)]
            member.pending[msg.nonce] = now
            self.drops["unconfirmed"] += 1
            return False
        # A new run of this member (or our first contact with it) that knows us.
        if member.nonce is not None:
            member.retired.append(member.nonce)
        member.nonce = msg.nonce
        member.seq = -1
        member.pending.pop(msg.nonce, None)
        return True

    def _learn_macs(self, msg: Message, now: float) -> None:
        for mac in msg.local:
            self.local_macs[mac] = now
            self.remote_macs.pop(mac, None)
        for mac in msg.remote:
            self.remote_macs[mac] = now
            self.local_macs.pop(mac, None)
        if len(self.local_macs) + len(self.remote_macs) > 4 * 65536:  # bounded memory
            for table in (self.local_macs, self.remote_macs):
                for mac in [m for m, t in table.items() if now - t >= MAC_MEMORY]:
                    del table[mac]

    def _echo(self, now: float) -> tuple[bytes, ...]:
        confirmed = [m.nonce for m in self.members.values() if m.nonce is not None]
        pending = [n for m in self.members.values() for n, t in m.pending.items()
                   if now - t < HOLD]
        return tuple((confirmed + pending)[:MAX_ECHO])

    def _payload(self, kind: Kind, now: float, local: list[bytes] | None = None,
                 remote: list[bytes] | None = None) -> bytes:
        self.seq += 1
        flags = Flag.NONE
        if self.role is Role.ACTIVE:
            flags |= Flag.ACTIVE
        if self.role is Role.LISTENING or self.faulty:
            flags |= Flag.LISTENING
        if not self.wan_ok(now):
            flags |= Flag.WAN_LOST
        elif self.wan_fresh(now):
            flags |= Flag.WAN_FRESH
            self._fresh_sent_at = now
        msg = Message(kind, flags, self.config.priority, self.config.site_tag, self.config.node,
                      self.nonce, self.seq, self._echo(now), tuple(local or ()),
                      tuple(remote or ()))
        return encode(msg, self.config.key)

    def _forget(self, now: float) -> None:
        for node in [n for n, m in self.members.items() if now - m.seen > FORGET_AFTER]:
            del self.members[node]
        for member in self.members.values():
            for nonce in [n for n, t in member.pending.items() if now - t >= HOLD]:
                del member.pending[nonce]

    def _offer_proof(self, now: float) -> None:
        """Rule 4: an active says WAN_LOST, we hear our peers and have not said so
        since it lost them: our next HELLO goes at once (it is the proof)."""
        if self.role is Role.ACTIVE or not self.wan_fresh(now):
            return
        if any(m.live(now) and m.flags & Flag.ACTIVE and m.flags & Flag.WAN_LOST
               and m.wan_lost_at > self._fresh_sent_at for m in self.members.values()):
            self.next_hello = now

    def _check_wan(self, now: float) -> bool:
        """Whether our WAN state changed since our frames last said it; if so, the
        next HELLO goes at once and the log hears of it (after the first contact)."""
        ok = self.wan_ok(now)
        if ok == self._wan_said:
            return False
        self._wan_said = ok
        self.next_hello = now
        if ok and not self._wan_seen:
            self._wan_seen = True
        elif self._wan_seen:
            self._events.append(WanChanged(ok, "peers heard again" if ok else
                                           f"no peer heard for {WAN_HOLD:.1f} s"))
        return True

    def _decide(self, now: float, left: Member | None = None) -> None:
        if self.faulty:
            return
        listening = self.role is Role.LISTENING
        # A listening member is nobody's reason to stop forwarding (the active
        # ignores it until it has listened); for the others it is a candidate, so
        # that members starting together do not go active one after the other.
        live = [m for m in self.members.values()
                if m.live(now) and (self.role is not Role.ACTIVE
                                    or not m.flags & Flag.LISTENING)]
        active = [m for m in live if m.flags & Flag.ACTIVE]
        if listening:
            if active:
                self._set(Role.STANDBY, now, f"member {node_name(active[0].node)} is active")
                return
            if now < self.listen_until:
                return
            if now < self.listen_until + LISTEN_EXTRA and any(
                    now - m.seen < HOLD and not m.live(now) for m in self.members.values()):
                return  # someone is there; wait for its frames to count
        wan = self.wan_ok(now)
        me = (wan, self.config.priority, self.role is Role.ACTIVE, self.config.node)
        if self.role is Role.ACTIVE and not wan:  # rule 4
            lost_at = self.peers_heard_at + WAN_HOLD
            best = max(((bool(m.flags & Flag.WAN_FRESH) and m.heard >= lost_at
                         and now - m.wan_back_at >= PROBE_GAP, *m.rank()[1:])
                        for m in live), default=None)
        else:
            best = max((m.rank() for m in live), default=None)
        if best is None or me > best:
            if self.role is not Role.ACTIVE and not active:
                self._set(Role.ACTIVE, now, self._why_active(now, left))
            elif self.role is Role.LISTENING:
                self._set(Role.STANDBY, now, "waiting for the active member to step down")
        elif self.role is Role.ACTIVE:
            why = (f"no peer heard for {WAN_HOLD:.1f} s; member {node_name(best[3])} hears them"
                   if best[0] and not wan else
                   f"member {node_name(best[3])} ranks higher (priority {best[1]})")
            self._set(Role.STANDBY, now, why)
        elif self.role is Role.LISTENING:
            self._set(Role.STANDBY, now, f"member {node_name(best[3])} ranks higher")

    def _why_active(self, now: float, left: Member | None) -> str:
        if left is not None:
            return f"member {node_name(left.node)} said goodbye"
        gone = [m for m in self.members.values()
                if m.flags & Flag.ACTIVE and not m.live(now) and not m.said_bye]
        if gone:
            return f"active member {node_name(gone[0].node)} silent for {HOLD:.1f} s"
        cut = [m for m in self.members.values() if m.live(now) and m.flags & Flag.WAN_LOST]
        if cut:
            return f"member {node_name(cut[0].node)} hears no peer"
        if not any(m.live(now) for m in self.members.values()):
            return "no other member answers"
        return "ranks first"

    def _set(self, role: Role, now: float, reason: str) -> None:
        previous = self.role
        if role is previous:
            return
        self.role = role
        self._changed(previous, now, reason)

    def _changed(self, previous: Role, now: float, reason: str) -> None:
        self.since = now
        self.changes += 1
        self.next_hello = now  # tell the others at once
        self.next_sync = now
        self._events.append(RoleChanged(self.role, previous, reason))

    def snapshot(self, now: float) -> dict[str, Any]:
        members = []
        for m in sorted(self.members.values(), key=lambda m: m.node):
            if m.live(now):
                state = ("active" if m.flags & Flag.ACTIVE else
                         "listening" if m.flags & Flag.LISTENING else "standby")
            else:
                state = "left" if m.said_bye else "gone"
            members.append({
                "node": node_name(m.node), "priority": m.priority, "role": state,
                "heard_age": None if m.heard == -math.inf else max(0.0, now - m.heard),
                "wan": "lost" if m.flags & Flag.WAN_LOST else "ok",
            })
        return {
            "mode": "elect",
            "site": self.config.site,
            "node": node_name(self.config.node),
            "priority": self.config.priority,
            "role": self.role.value,
            "role_age": max(0.0, now - self.since),
            "changes": self.changes,
            "wan": "ok" if self.wan_ok(now) else "lost",
            "peers_heard_age": (None if self.peers_heard_at == -math.inf
                                else max(0.0, now - self.peers_heard_at)),
            "members": members,
            "received": dict(sorted(self.received.items())),
            "drops": dict(sorted(self.drops.items())),
        }


#: keepalived's (and our own) state words -> role.
FOLLOW_STATES = {"active": Role.ACTIVE, "master": Role.ACTIVE, "standby": Role.STANDBY,
              "backup": Role.STANDBY, "fault": Role.STANDBY, "stop": Role.STANDBY}


class Follower:
    """The role comes from outside (keepalived): a state file or ``bridger ha set``.

    keepalived's states map: MASTER -> active; BACKUP, FAULT, STOP -> standby.
    Until a state is given, the gateway is standby (it never forwards on a guess).
    """

    def __init__(self, now: float, source: str) -> None:
        self.role = Role.STANDBY
        self.since = now
        self.source = source
        self.changes = 0
        self.bad_states = 0
        self._events: list[RoleChanged] = []

    @property
    def forwarding(self) -> bool:
        return self.role is Role.ACTIVE

    def set_untrusted(self, text: str, now: float) -> bool:
        """A state word (case and surrounding space ignored); False if unknown."""
        role = FOLLOW_STATES.get(text.strip().lower())
        if role is None:
            self.bad_states += 1
            return False
        if role is not self.role:
            previous, self.role, self.since = self.role, role, now
            self.changes += 1
            self._events.append(RoleChanged(role, previous, f"{self.source} says {text.strip()}"))
        return True

    def take_events(self) -> list[RoleChanged]:
        events, self._events = self._events, []
        return events

    def snapshot(self, now: float) -> dict[str, Any]:
        return {"mode": "follow", "source": self.source, "role": self.role.value,
                "role_age": max(0.0, now - self.since), "changes": self.changes,
                "bad_states": self.bad_states}
