"""Hole punching, relaying and the path of each peer (issue 23), on real
devices behind simulated NATs (natsim.py), and the path state table alone.

  A public ── B (NAT keeps ports) ── C (NAT ports random)
  B and C know A by address and each other by key only.
"""

from __future__ import annotations

import pytest

from bridger.protocol import DropReason, Output
from bridger.protocol.constants import (
    DIRECT_DEAD,
    INTRODUCE_REFRESH,
    MAX_QUEUED_FRAMES,
    PATH_PINGS_PER_ROUND,
    PUNCH_WINDOW,
)
from bridger.protocol.events import PathChanged
from bridger.protocol.messages import InnerType, encode_introduce, encode_relay
from bridger.protocol.relay import PathKind, PathState, Source, Via, may_relay, via_parts
from tests.protocol.natsim import NatSim

A, B, C = 0, 1, 2
BOTH = [(B, C), (C, B)]


def run(sim: NatSim, until: float, rate: float = 20.0) -> None:
    sim.traffic(until, rate, BOTH)


def path_changes(sim: NatSim, site: int) -> list[PathChanged]:
    return [e for _, e in sim.sites[site].events if isinstance(e, PathChanged)]


def no_unexplained_drops(sim: NatSim) -> None:
    for site in sim.sites:
        assert site.misdelivered == 0
        assert site.device.drops[DropReason.INTERNAL_ERROR] == 0
        for peer in site.peers.values():
            assert peer.drops[DropReason.INTERNAL_ERROR] == 0
            assert peer.drops[DropReason.MALFORMED] == 0


def test_port_keeping_nats_punch_through_and_go_direct() -> None:
    sim = NatSim(["public", "preserving", "preserving"], seed=1)
    run(sim, 2.0)
    assert sim.path(B, C) == sim.path(C, B) == "direct"
    peer = sim.sites[B].peers[C]
    assert peer.endpoint == sim.public_address(C)
    assert sim.sites[B].device.traversal.path(peer).how is Source.INTRODUCED
    assert sim.sites[A].device.traversal.relayed_datagrams == 0
    mark = sim._seq
    run(sim, 10.0)
    assert sim.ratio(B, C, mark) > 0.99 and sim.ratio(C, B, mark) > 0.99
    # One line per change of path: none -> direct, once.
    assert [(e.old, e.kind, e.how) for e in path_changes(sim, B) if e.peer == "site-c"] == [
        ("none", "direct", "introduced")]
    no_unexplained_drops(sim)


def test_random_ports_go_through_the_introducer_within_the_punch_window() -> None:
    sim = NatSim(["public", "preserving", "random"], seed=2)
    run(sim, PUNCH_WINDOW + 2.0)
    assert sim.path(B, C) == sim.path(C, B) == "relayed via site-a"
    assert sim.sites[B].peers[C].endpoint == Via.of("site-a", "site-c")
    relay = sim.sites[A].device.traversal
    before = relay.relayed_datagrams
    mark = sim._seq
    run(sim, 20.0)
    assert relay.relayed_datagrams > before
    assert sim.ratio(B, C, mark) > 0.99 and sim.ratio(C, B, mark) > 0.99
    no_unexplained_drops(sim)


def test_frames_queued_before_any_path_all_arrive_through_the_relay() -> None:
    """Frames sent from the start (no endpoint, then punching, then the relay)
    wait in the queue and none is lost: a relay exists."""
    sim = NatSim(["public", "preserving", "random"], seed=3)
    run(sim, 12.0)
    sent = sim.sites[B].sent[C]
    got = sim.sites[C].received[B]
    in_flight = [s for s in sent if s not in got]
    assert len(in_flight) <= 1, in_flight  # at most the last frame, still on its way
    assert sim.sites[B].peers[C].drops[DropReason.NO_ENDPOINT] == 0


def test_direct_pair_survives_its_introducer_going_away() -> None:
    sim = NatSim(["public", "preserving", "preserving"], seed=4, keepalive=0.0)
    run(sim, 3.0)
    assert sim.path(B, C) == "direct"
    sim.down.add(A)
    sim.run_until(200.0)  # idle far past the NAT timeout: the automatic keepalive holds it
    mark = sim._seq
    run(sim, 205.0)
    assert sim.ratio(B, C, mark) > 0.95 and sim.ratio(C, B, mark) > 0.95
    assert sim.path(B, C) == "direct"


@pytest.mark.parametrize("seed", range(5))
def test_nats_forgetting_their_mappings_mid_traffic_cost_seconds(seed: int) -> None:
    """Both NATs flushed while frames flow both ways: the first packets after it
    may spoil the direct path (each NAT sees the other's before its own went
    out); the pair is back within DIRECT_DEAD plus a round trip, relayed or direct."""
    sim = NatSim(["public", "preserving", "preserving"], seed=50 + seed)
    run(sim, 3.0)
    assert sim.path(B, C) == "direct"
    sim.nats[B].flush()
    sim.nats[C].flush()
    run(sim, 3.0 + DIRECT_DEAD + 1.5)
    mark = sim._seq
    run(sim, sim.now + 5.0)
    sim.run_until(sim.now + 0.5)  # what is still in flight arrives
    assert sim.ratio(B, C, mark) == 1.0 and sim.ratio(C, B, mark) == 1.0, (
        sim.path(B, C), sim.path(C, B))


@pytest.mark.parametrize("kinds, path", [
    (["public", "preserving", "preserving"], "direct"),
    (["public", "preserving", "random"], "relayed via site-a"),
])
def test_a_site_that_restarts_is_introduced_again_at_once(kinds: list[str], path: str) -> None:
    """B restarts (no state; same NAT mapping, so the same address at A): A
    tells it of C again as soon as its new session is up, not a minute later."""
    sim = NatSim(kinds, seed=11)
    run(sim, PUNCH_WINDOW + 2.0)
    assert sim.path(B, C) == path
    sim.restart(B)
    start = sim.now
    run(sim, start + PUNCH_WINDOW + 3.0)
    assert sim.path(B, C) == path
    mark = sim._seq
    run(sim, sim.now + 3.0)
    sim.run_until(sim.now + 0.5)
    assert sim.ratio(B, C, mark) == 1.0 and sim.ratio(C, B, mark) == 1.0


def test_relayed_pair_moves_to_a_direct_path_that_appears_later() -> None:
    sim = NatSim(["public", "preserving", "random"], seed=6)
    run(sim, PUNCH_WINDOW + 2.0)
    assert sim.path(B, C) == "relayed via site-a"
    sim.nats[C].kind = "preserving"  # C's router replaced by a kinder one
    sim.nats[C].flush()
    run(sim, PUNCH_WINDOW + 2.0 + INTRODUCE_REFRESH + 5.0)  # the next introduction
    assert sim.path(B, C) == sim.path(C, B) == "direct"
    changes = [(e.old, e.kind) for e in path_changes(sim, B) if e.peer == "site-c"]
    assert changes[-1] == ("relayed via site-a", "direct")
    mark = sim._seq
    run(sim, sim.now + 5.0)
    assert sim.ratio(B, C, mark) > 0.99 and sim.ratio(C, B, mark) > 0.99
    no_unexplained_drops(sim)


def test_without_a_relay_frames_wait_and_evictions_count_as_no_endpoint() -> None:
    """Two NATed sites and no introducer: nothing can connect them."""
    sim = NatSim(["preserving", "preserving"], seed=7)
    for _ in range(MAX_QUEUED_FRAMES + 10):
        sim.send(0, 1)
    sim.run_until(5.0)
    peer = sim.sites[0].peers[1]
    assert peer.drops[DropReason.NO_ENDPOINT] == 10
    assert peer.drops[DropReason.QUEUE_FULL] == 0


def test_relay_carries_only_between_two_of_its_own_peers() -> None:
    sim = NatSim(["public", "preserving", "random"], seed=8)
    run(sim, 2.0)
    b_to_a = sim.sites[B].peers[A]
    relay_side = sim.sites[A].peers[B]
    out = Output()
    stranger = bytes([7]) * 32
    transport = b"\x04\0\0\0" + bytes(40)
    for key in (stranger, sim.keys[B][1]):  # a key A does not list; B itself
        assert b_to_a.send_inner(encode_relay(InnerType.RELAY, key, transport), sim.now, out)
    sim._absorb(sim.sites[B], out)
    sim.run_until(sim.now + 0.5)
    assert relay_side.drops[DropReason.RELAY_REFUSED] == 2


def test_introductions_of_unlisted_keys_are_refused_and_counted() -> None:
    sim = NatSim(["public", "preserving", "preserving"], seed=9)
    run(sim, 2.0)
    out = Output()
    a_to_b = sim.sites[A].peers[B]
    for key in (bytes([7]) * 32, sim.keys[A][1], sim.keys[B][1]):
        assert a_to_b.send_inner(encode_introduce(key, ("198.51.100.9", 1)), sim.now, out)
    sim._absorb(sim.sites[A], out)
    sim.run_until(sim.now + 0.5)
    assert sim.sites[B].peers[A].drops[DropReason.INTRODUCTION_REFUSED] == 3


def test_lying_introducer_only_delays() -> None:
    """A wrong address: the punch fails, the pair falls back to the relay (and
    the handshake authenticates whoever answers)."""
    sim = NatSim(["public", "preserving", "preserving"], seed=10)
    sim.run_until(0.2)
    out = Output()
    a_to_b = sim.sites[A].peers[B]
    a_to_b.send_inner(encode_introduce(sim.keys[C][1], ("198.51.100.66", 4444)), sim.now, out)
    sim._absorb(sim.sites[A], out)
    run(sim, 10.0)
    assert sim.path(B, C) in ("direct", "relayed via site-a")
    mark = sim._seq
    run(sim, 12.0)
    assert sim.ratio(B, C, mark) > 0.99


# -- the path state table alone ---------------------------------------------------------------

D1, D2 = ("198.51.100.1", 5), ("198.51.100.2", 6)
VIA = Via.of("site-a", "site-c")


def test_path_table_first_contact_and_rebinding() -> None:
    s = PathState()
    assert s.arrived(D1, None, 0.0, proof=False) and s.kind is PathKind.DIRECT
    assert s.how is Source.LEARNT
    assert s.arrived(D2, D1, 1.0, proof=False)  # NAT rebinding while direct
    assert s.take_change() == "none" and s.take_change() is None


def test_path_table_relayed_refuses_one_way_direct_packets_but_pings_them() -> None:
    s = PathState()
    s.go_relayed("site-a", 0.0)
    assert not s.arrived(D1, VIA, 1.0, proof=False)
    assert s.kind is PathKind.RELAYED and D1 in s.candidates
    due = s.pings_due(1.0, iter(range(100)).__next__)
    assert due == [(0, D1)]
    assert not s.pong(0, D2, 1.1)  # from elsewhere: no proof
    assert s.pong(0, D1, 1.1) and s.kind is PathKind.DIRECT


def test_path_table_relayed_moves_on_a_handshake_response_there() -> None:
    s = PathState()
    s.go_relayed("site-a", 0.0)
    assert s.arrived(D1, VIA, 1.0, proof=True) and s.kind is PathKind.DIRECT


def test_path_table_direct_refuses_the_relay_while_the_endpoint_speaks() -> None:
    s = PathState()
    s.arrived(D1, None, 0.0, proof=False)
    assert not s.arrived(VIA, D1, 5.0, proof=False, last_direct=4.5)
    assert s.arrived(VIA, D1, 8.0, proof=False, last_direct=5.0)
    assert s.describe() == "relayed via site-a"


def test_path_table_punch_window_then_fallback_once() -> None:
    s = PathState()
    assert s.introduced(D1, "site-a", 10.0)
    assert not s.fallback_due(10.0 + PUNCH_WINDOW - 0.1)
    assert s.fallback_due(10.0 + PUNCH_WINDOW)
    assert not s.fallback_due(10.0 + PUNCH_WINDOW + 1)
    assert s.pick_relay({"site-a"}) == "site-a" and s.pick_relay(set()) is None


def test_path_table_a_round_is_a_few_pings_then_quiet() -> None:
    s = PathState()
    s.introduced(D1, "site-a", 0.0)
    s.go_relayed("site-a", 3.0)
    ids = iter(range(1000)).__next__
    sent = sum(len(s.pings_due(t / 4, ids)) for t in range(400))
    assert sent == PATH_PINGS_PER_ROUND
    s.introduced(D1, "site-a", 200.0)  # the introducer's refresh: another round
    assert [a for _, a in s.pings_due(200.0, ids)] == [D1]


@pytest.mark.parametrize("sender, target, ok", [
    (b"B", b"C", True), (b"B", b"B", False), (b"X", b"C", False), (b"B", b"X", False),
    (b"B", b"D", False),  # D listed but not reached directly
])
def test_may_relay(sender: bytes, target: bytes, ok: bool) -> None:
    assert may_relay(sender, target, {b"B", b"C", b"D"}, {b"B", b"C"}) is ok


def test_via_addresses() -> None:
    assert via_parts(Via.of("site-a", "site-c")) == ("site-a", "site-c")
    assert via_parts(("10.0.0.1", 5)) is None and via_parts(None) is None
