"""NAT traversal for one device (issue 23): introductions, hole punching,
relaying and the path of every peer, sans-I/O.

Flow:
 1. Introducing (``tick``): every peer reached directly hears of every other
    (introduce.py).
 2. Punching (``on_payload`` INTRODUCE): a peer without a session gets a
    handshake towards the introduced address at once; its far end does the
    same on its own introduction, at about the same moment, so each side's
    first packet opens its own NAT for the other's.  A peer with a session
    (relayed) gets path pings on the address instead.
 3. Falling back (``tick``): no direct path PUNCH_WINDOW after the
    introduction, or a direct peer found unreachable: its endpoint becomes a
    ``Via`` address through a relay (a peer that introduced it); with no
    session a handshake goes through the relay at once.  No frame waits for a
    direct path while a relay exists.
 4. Relaying (``route`` on the way out; ``on_payload`` RELAY/RELAYED on the way
    in; relay.py): the sender wraps the pair's own sealed datagrams; the relay
    carries them between two of its configured peers only; the far end
    receives them (``take_relayed``) as datagrams from the ``Via`` address.
 5. Moving (``arrived``, the roaming rule; ``on_payload`` PATH_PONG): a
    relayed peer moves to a direct address only on a round trip there (a
    pong, or a handshake response); a direct one falls back only when stale.
    Every change of path is one PathChanged event.

The core calls in through five verbs (``on_payload``, ``arrived``,
``take_relayed``, ``tick``/``next_deadline``, ``route``) and is driven back
through the verbs of :class:`PathPeer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from .constants import AUTO_KEEPALIVE, DIRECT_DEAD, DIRECT_SUSPECT
from .events import Address, DropReason, Output, PathChanged
from .introduce import Introducer, acceptable
from .messages import (
    BadPacket,
    InnerType,
    decode_introduce_untrusted,
    decode_path_check_untrusted,
    decode_relay_untrusted,
    encode_introduce,
    encode_path_check,
    encode_relay,
)
from .relay import PathKind, PathState, Via, may_relay, via_parts

_INTRODUCE = int(InnerType.INTRODUCE)
_RELAY = int(InnerType.RELAY)
_RELAYED = int(InnerType.RELAYED)
_PATH_PING = int(InnerType.PATH_PING)
_PATH_PONG = int(InnerType.PATH_PONG)
#: The inner types this module handles (the core hands them to ``on_payload``).
INNER_TYPES = frozenset({_INTRODUCE, _RELAY, _RELAYED, _PATH_PING, _PATH_PONG})


class PathPeer(Protocol):
    """What traversal needs of a peer (the verbs of the core's peer)."""

    @property
    def name(self) -> str: ...
    @property
    def public_key(self) -> bytes: ...
    @property
    def endpoint(self) -> Address | None: ...
    @property
    def configured_endpoint(self) -> Address | None: ...
    @property
    def unreachable(self) -> bool: ...
    @property
    def unanswered_since(self) -> float | None: ...
    @property
    def last_handshake_at(self) -> float | None: ...
    @property
    def last_direct_rx(self) -> float | None: ...
    @property
    def drops(self) -> dict[DropReason, int]: ...

    def has_session(self, now: float) -> bool: ...
    def move_endpoint(self, addr: Address | None, now: float, out: Output) -> None:
        """Move the peer (not remembered as configured)."""
    def initiate(self, now: float, out: Output) -> None:
        """A handshake now unless a session is usable or one is under way."""
    def handshake_now(self, now: float, out: Output) -> None:
        """Send an initiation to the endpoint now unless a session is usable."""
    def send_inner(self, plaintext: bytes, now: float, out: Output,
                   to: Address | None = None) -> bool:
        """Seal ``plaintext`` on the current session to ``to`` (default: the
        endpoint); False without a session."""


class Traversal:
    """The NAT traversal state of a device (see the module docstring)."""

    def __init__(self, own_key: bytes, peers: Mapping[bytes, PathPeer],
                 random_id: Callable[[], int]) -> None:
        self.own_key = own_key
        #: The device's peers by public key (the device's own table, read only).
        self._by_key_table = peers
        self._random_id = random_id
        self.introducer = Introducer()
        self.paths: dict[bytes, PathState] = {}
        #: Datagrams that came through a relay, for the receive path: (datagram, Via).
        self._relayed_in: list[tuple[bytes, Address]] = []
        #: As a relay: datagrams and bytes carried between two peers.
        self.relayed_datagrams = 0
        self.relayed_bytes = 0
        self.introductions_sent = 0
        self.introductions_taken = 0
        #: Introduce peers to each other (off on a hub, whose spokes list only
        #: the hub: they would refuse every introduction).
        self.introducing = True

    # -- lookups ----------------------------------------------------------------

    def path(self, peer: PathPeer) -> PathState:
        state = self.paths.get(peer.public_key)
        if state is None:
            state = self.paths[peer.public_key] = PathState()
            state.configured(peer.configured_endpoint)
        return state

    def _peers(self) -> Iterable[PathPeer]:
        return self._by_key_table.values()

    def _by_key(self) -> Mapping[bytes, PathPeer]:
        return self._by_key_table

    def _by_name(self, name: str) -> PathPeer | None:
        return next((p for p in self._peers() if p.name == name), None)

    def _direct(self, peer: PathPeer, now: float) -> bool:
        """Reached directly: a session and a real endpoint (not a relay)."""
        state = self.paths.get(peer.public_key)
        return (state is not None and state.kind is PathKind.DIRECT and peer.has_session(now)
                and via_parts(peer.endpoint) is None and peer.endpoint is not None)

    def keepalive_interval(self, peer: PathPeer, configured: float) -> float:
        """The persistent keepalive the peer gets: the configured one, or
        (configured 0) AUTO_KEEPALIVE on a site that takes part in NAT
        traversal, whose NAT mappings and sessions with introducers must stay
        open (:meth:`depends_on_introductions`)."""
        if configured > 0:
            return configured
        return AUTO_KEEPALIVE if self.depends_on_introductions() else 0.0

    def depends_on_introductions(self) -> bool:
        """Some peer has no configured endpoint: this site takes part in NAT
        traversal (it awaits, introduces or relays), so its mappings and its
        sessions with possible introducers must stay open."""
        return any(p.configured_endpoint is None for p in self._peers())

    # -- the core's verbs ----------------------------------------------------------

    def arrived(self, peer: PathPeer, addr: Address, now: float, proof: bool = False) -> bool:
        """The roaming rule: a packet from ``addr`` authenticated as ``peer``'s
        (``proof``: it answers ours, a handshake response).  True: the core may
        make ``addr`` the endpoint."""
        return self.path(peer).arrived(addr, peer.endpoint, now, proof, peer.last_direct_rx)

    def on_payload(self, peer: PathPeer, plaintext: bytes, addr: Address, now: float,
                   out: Output) -> None:
        """An authenticated inner message of INNER_TYPES from ``peer`` (which
        came from ``addr``).  Raises only BadPacket (a counted malformed drop)."""
        kind = plaintext[0]
        if kind == _INTRODUCE:
            self._introduction(peer, plaintext, now, out)
        elif kind == _RELAY:
            self._relay(peer, plaintext, now, out)
        elif kind == _RELAYED:
            key, datagram = decode_relay_untrusted(plaintext)
            source = self._by_key().get(key)
            if source is None or source is peer or self.paths.get(
                    peer.public_key, PathState()).kind is not PathKind.DIRECT:
                peer.drops[DropReason.RELAY_REFUSED] += 1
                return
            self._relayed_in.append((datagram, Via.of(peer.name, source.name)))
        elif kind == _PATH_PING:
            ping_id = decode_path_check_untrusted(plaintext)
            peer.send_inner(encode_path_check(InnerType.PATH_PONG, ping_id), now, out, to=addr)
        elif kind == _PATH_PONG:
            ping_id = decode_path_check_untrusted(plaintext)
            if self.path(peer).pong(ping_id, addr, now) and addr != peer.endpoint:
                peer.move_endpoint(addr, now, out)
            self._report(peer, out)
        else:
            raise BadPacket("not a traversal message")

    def take_relayed(self) -> list[tuple[bytes, Address]]:
        """The datagrams unwrapped since the last call, for the receive path."""
        taken, self._relayed_in = self._relayed_in, []
        return taken

    def next_deadline(self) -> float | None:
        best: float | None = self.introducer.next_deadline()
        for state in self.paths.values():
            if state.changed_from is not None:
                return 0.0  # a change to report
            when = state.next_deadline()
            if when is not None and (best is None or when < best):
                best = when
        return best

    def tick(self, now: float, out: Output) -> None:
        """Introductions, fallbacks to a relay, path pings: whatever is due."""
        peers = list(self._peers())
        by_key = {p.public_key: p for p in peers}
        direct = [p for p in peers if self._direct(p, now)]
        # Peers whose address the configuration gives are not introduced: who
        # needs it has it configured too.
        learnt = {p.public_key for p in direct if p.endpoint != p.configured_endpoint}
        for to, about, addr in self.introducer.due(
                ((p.public_key, p.endpoint, p.last_handshake_at or 0.0) for p in direct
                 if p.endpoint is not None), now, learnt if self.introducing else set()):
            target = by_key.get(to)
            if target is not None and target.send_inner(encode_introduce(about, addr), now, out):
                self.introductions_sent += 1
        usable = {p.name for p in direct}
        if any(p.endpoint is None for p in peers):
            # A peer only an introduction can find: be in touch with every peer
            # that could introduce it (whatever the keepalive settings).
            for peer in peers:
                if peer.endpoint is not None and via_parts(peer.endpoint) is None:
                    peer.initiate(now, out)
        for peer in peers:
            state = self.path(peer)
            if state.kind is PathKind.DIRECT:
                self._check_direct(peer, state, usable - {peer.name}, now, out)
            elif state.fallback_due(now):
                self._fall_back(peer, state, usable - {peer.name}, now, out)
            if state.ping_at is not None and now >= state.ping_at:
                self._ping(peer, state, now, out)
            self._report(peer, out)

    def route(self, out: Output, now: float) -> None:
        """Wrap the datagrams addressed to Via endpoints for their relays
        (``out.datagrams`` is rewritten in place; order kept)."""
        if not any(via_parts(dest) is not None for _, dest in out.datagrams):
            return
        routed: list[tuple[bytes, Address]] = []
        for datagram, dest in out.datagrams:
            parts = via_parts(dest)
            if parts is None:
                routed.append((datagram, dest))
                continue
            relay, target = self._by_name(parts[0]), self._by_name(parts[1])
            hop = Output()
            if relay is None or target is None or not relay.send_inner(
                    encode_relay(InnerType.RELAY, target.public_key, datagram), now, hop):
                if target is not None:
                    target.drops[DropReason.NO_ENDPOINT] += 1
                continue
            routed += hop.datagrams
        out.datagrams[:] = routed

    # -- the steps -------------------------------------------------------------------

    def _introduction(self, peer: PathPeer, plaintext: bytes, now: float, out: Output) -> None:
        intro = decode_introduce_untrusted(plaintext)
        by_key = self._by_key()
        target = by_key.get(intro.public_key)
        if target is None or not acceptable(intro, own_key=self.own_key,
                                            introducer_key=peer.public_key, listed=by_key):
            peer.drops[DropReason.INTRODUCTION_REFUSED] += 1
            return
        self.introductions_taken += 1
        state = self.path(target)
        if not state.introduced(intro.endpoint, peer.name, now, target.last_direct_rx):
            return
        if target.has_session(now):
            self._ping(target, state, now, out)
        elif state.kind is PathKind.RELAYED:
            return  # its handshake goes through the relay; pings follow the session
        elif target.endpoint != intro.endpoint:
            # Punch: our initiation opens our NAT for the peer's, which it
            # sends on its own introduction at about the same moment.
            target.move_endpoint(intro.endpoint, now, out)
            target.handshake_now(now, out)
        else:
            target.handshake_now(now, out)

    def _relay(self, peer: PathPeer, plaintext: bytes, now: float, out: Output) -> None:
        key, datagram = decode_relay_untrusted(plaintext)
        peers = self._by_key()
        target = peers.get(key)
        # (Per datagram: only the two ends' paths are looked at.)
        reachable = {key} if target is not None and self._direct(target, now) else set()
        if target is None or not may_relay(peer.public_key, key, peers.keys(), reachable) \
                or not self._direct(peer, now):
            peer.drops[DropReason.RELAY_REFUSED] += 1
            return
        if target.send_inner(encode_relay(InnerType.RELAYED, peer.public_key, datagram),
                             now, out):
            self.relayed_datagrams += 1
            self.relayed_bytes += len(datagram)
        else:
            peer.drops[DropReason.RELAY_REFUSED] += 1

    def _check_direct(self, peer: PathPeer, state: PathState, relays: set[str], now: float,
                      out: Output) -> None:
        """A direct path that leaves our data unanswered: liveness pings after
        DIRECT_SUSPECT (answered at once by a working path, whatever the
        traffic), the relay after DIRECT_DEAD (a NAT lost the mapping)."""
        endpoint = peer.endpoint
        if endpoint is None or via_parts(endpoint) is not None:
            return
        since, heard = peer.unanswered_since, peer.last_direct_rx
        # Unanswered since ``since``, and nothing from the endpoint since ``heard``.
        silent = None if since is None else since if heard is None else max(since, heard)
        if peer.unreachable or (silent is not None and now - silent >= DIRECT_DEAD):
            if state.pick_relay(relays) is not None:
                self._fall_back(peer, state, relays, now, out)
            return
        if silent is not None and now - silent >= DIRECT_SUSPECT:
            ping_id = state.alive_ping(endpoint, now, self._random_id)
            if ping_id is not None:
                peer.send_inner(encode_path_check(InnerType.PATH_PING, ping_id), now, out,
                                to=endpoint)

    def _fall_back(self, peer: PathPeer, state: PathState, usable: set[str], now: float,
                   out: Output) -> None:
        relay = state.pick_relay(usable)
        if relay is None:
            return
        state.go_relayed(relay, now)
        peer.move_endpoint(Via.of(relay, peer.name), now, out)
        peer.handshake_now(now, out)

    def _ping(self, peer: PathPeer, state: PathState, now: float, out: Output) -> None:
        for ping_id, addr in state.pings_due(now, self._random_id):
            peer.send_inner(encode_path_check(InnerType.PATH_PING, ping_id), now, out, to=addr)

    def _report(self, peer: PathPeer, out: Output) -> None:
        state = self.paths.get(peer.public_key)
        if state is None:
            return
        old = state.take_change()
        if old is not None:
            out.events.append(PathChanged(old, state.kind.value, state.via, peer.endpoint,
                                          state.how.value, peer.name))

    def forget(self, peer: PathPeer) -> None:
        self.paths.pop(peer.public_key, None)
        self.introducer.forget(peer.public_key)
