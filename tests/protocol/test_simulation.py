"""Two tunnels over a lossy in-memory link with a virtual clock.

BRIDGER_SIM_HOURS (default 1) sets how much simulated time the long runs cover.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from bridger.lab.impair import Impairment
from bridger.protocol import (
    DropReason,
    EndpointChanged,
    HandshakeCompleted,
    HandshakeGaveUp,
    PathMtuChanged,
    PeerUnreachable,
)
from tests.protocol.simnet import LinkParams, Sim

HOURS = float(os.environ.get("BRIDGER_SIM_HOURS", "1"))


def assert_clean(sim: Sim) -> None:
    for peer in sim.peers:
        assert peer.duplicates == 0
        stats = peer.tunnel.stats(sim.now)
        assert stats.drops[DropReason.INTERNAL_ERROR] == 0
        assert stats.drops[DropReason.AUTH_FAILED] == 0


def test_clean_link_rekeys_lose_no_frame() -> None:
    sim = Sim(seed=1, link=LinkParams(Impairment(delay_ms=40, jitter_ms=10)))
    sim.traffic(HOURS * 3600, rate=2.0)
    sim.run_until(sim.now + 5)
    assert sim.delivered_ratio(0) == 1.0
    assert sim.delivered_ratio(1) == 1.0
    for peer in sim.peers:
        stats = peer.tunnel.stats(sim.now)
        assert stats.state == "up"
        # a rekey roughly every REKEY_AFTER_TIME
        assert stats.rekeys >= HOURS * 3600 / 180
    assert_clean(sim)


def test_lossy_duplicating_reordering_link() -> None:
    # delay 30..110 ms: datagrams overtake each other
    link = LinkParams(Impairment(delay_ms=70, jitter_ms=40, loss_pct=20, duplicate_pct=5))
    sim = Sim(seed=2, link=link)
    sim.traffic(HOURS * 3600, rate=2.0)
    assert_clean(sim)
    for i in (0, 1):
        # unfragmented frames survive with p=0.8, two-fragment frames with 0.64
        assert sim.delivered_ratio(i) > 0.65
        stats = sim.peers[i].tunnel.stats(sim.now)
        assert stats.rekeys >= HOURS * 3600 / 180
        assert stats.drops[DropReason.REPLAY] > 0  # duplicates were seen and dropped
        assert stats.reassembled > 0
    # recovery: a quiet lossless period afterwards delivers everything
    sim.link.impairment = replace(sim.link.impairment, loss_pct=0, duplicate_pct=0)
    start = [p.next_seq for p in sim.peers]
    sim.run_until(sim.now + 30)
    sim.traffic(sim.now + 300, rate=2.0)
    sim.run_until(sim.now + 5)
    assert sim.delivered_ratio(0, start[0]) == 1.0
    assert sim.delivered_ratio(1, start[1]) == 1.0


def test_simultaneous_initiation_converges_to_one_session() -> None:
    sim = Sim(seed=3, keepalive=0)
    sim.send(0, 100)
    sim.send(1, 100)  # both initiate at t=0
    sim.run_until(10)
    a, b = (p.tunnel for p in sim.peers)
    assert a.current is not None and b.current is not None
    assert a.current.send_key == b.current.receive_key
    assert a.current.receive_key == b.current.send_key
    assert a.stats().handshakes == b.stats().handshakes == 1
    assert sim.delivered_ratio(0) == sim.delivered_ratio(1) == 1.0
    races = a.drops[DropReason.HANDSHAKE_RACE] + b.drops[DropReason.HANDSHAKE_RACE]
    assert races == 1
    sim.run_until(60)  # no handshake loop
    assert a.stats().handshakes == 1


def test_peer_restart_with_fresh_state_recovers() -> None:
    sim = Sim(seed=4, link=LinkParams(Impairment(delay_ms=30, jitter_ms=10, loss_pct=5)))
    sim.traffic(600, rate=2.0)
    for victim in (1, 0):
        sim.restart(victim)
        restart_at = sim.now
        start = [p.next_seq for p in sim.peers]
        sim.traffic(sim.now + 600, rate=2.0)
        assert_clean(sim)
        # frames sent once dead-peer detection had time to act get through
        late = [
            min((s for s in sim.peers[i].sent if s >= start[i]), default=0) + 60 for i in (0, 1)
        ]
        assert sim.delivered_ratio(0, late[0]) > 0.85
        assert sim.delivered_ratio(1, late[1]) > 0.85
        assert sim.peers[victim].tunnel.stats(sim.now).state == "up"
        assert any(t > restart_at for t, _ in sim.events_of(1 - victim, HandshakeCompleted))


def test_endpoint_change_is_learned_from_authenticated_packets() -> None:
    sim = Sim(seed=5)
    sim.traffic(60, rate=2.0)
    new_addr = ("203.0.113.9", 40000)
    sim.move(0, new_addr)
    start = sim.peers[0].next_seq
    sim.traffic(sim.now + 120, rate=2.0)
    b = sim.peers[1].tunnel
    assert b.endpoint == new_addr
    changes = [e for _, e in sim.events_of(1, EndpointChanged) if isinstance(e, EndpointChanged)]
    assert changes and changes[-1].new == new_addr
    assert sim.delivered_ratio(0, start) == 1.0
    assert sim.delivered_ratio(1, sim.peers[1].next_seq - 100) == 1.0
    assert_clean(sim)


def test_outage_gives_up_reports_unreachable_and_recovers() -> None:
    sim = Sim(seed=6)
    sim.traffic(60, rate=2.0)
    sim.link.up = False
    sim.traffic(sim.now + 200, rate=1.0)
    assert sim.events_of(0, PeerUnreachable)
    assert sim.events_of(0, HandshakeGaveUp) or sim.events_of(1, HandshakeGaveUp)
    assert sim.peers[0].tunnel.stats(sim.now).state != "up"
    sim.link.up = True
    sim.run_until(sim.now + 30)  # persistent keepalive re-handshakes
    assert sim.peers[0].tunnel.stats(sim.now).state == "up"
    start = [p.next_seq for p in sim.peers]
    sim.traffic(sim.now + 60, rate=2.0)
    sim.run_until(sim.now + 5)
    assert sim.delivered_ratio(0, start[0]) == 1.0
    assert sim.delivered_ratio(1, start[1]) == 1.0


@pytest.mark.parametrize(
    ("link_mtu", "expect_mtu", "fragments"),
    [(1500, 1500, True), (1600, 1583, False), (9000, 1583, False)],
)
def test_path_mtu_probing(link_mtu: int, expect_mtu: int, fragments: bool) -> None:
    sim = Sim(seed=7, link=LinkParams(mtu=link_mtu))
    sim.send(0, 60)
    sim.run_until(5)
    before = [p.tunnel.fragments_sent for p in sim.peers]
    for _ in range(20):
        sim.send(0, 1514)
        sim.send(1, 1514)
    sim.run_until(10)
    for i, peer in enumerate(sim.peers):
        assert peer.tunnel.path_mtu == expect_mtu
        assert (peer.tunnel.fragments_sent > before[i]) == fragments
    assert sim.delivered_ratio(0) == sim.delivered_ratio(1) == 1.0
    if not fragments:
        assert sim.events_of(0, PathMtuChanged)


def test_path_shrinks_falls_back_to_fragments() -> None:
    sim = Sim(seed=8, link=LinkParams(mtu=1600))
    sim.traffic(60, rate=2.0)
    assert sim.peers[0].tunnel.path_mtu == 1583
    sim.link.mtu = 1500  # path shrinks: large datagrams now vanish
    sim.traffic(sim.now + 120, rate=2.0)
    assert sim.peers[0].tunnel.path_mtu == 1500
    start = [p.next_seq for p in sim.peers]
    sim.traffic(sim.now + 60, rate=2.0)
    sim.run_until(sim.now + 5)
    assert sim.delivered_ratio(0, start[0]) == 1.0
    assert sim.delivered_ratio(1, start[1]) == 1.0


@pytest.mark.parametrize("link_mtu", [1492, 1452, 1400, 1280])
def test_a_narrow_path_from_the_start_loses_no_frame(link_mtu: int) -> None:
    """No probing has to succeed first: until an ack proves more, datagrams are
    sized to the safe base, so every frame of every size arrives."""
    sim = Sim(seed=11, link=LinkParams(mtu=link_mtu))
    sim.traffic(20.0, rate=30.0)
    sim.run_until(21.0)
    for peer in sim.peers:
        assert peer.tunnel.path_mtu == link_mtu
    assert sim.delivered_ratio(0) == sim.delivered_ratio(1) == 1.0


def test_a_path_that_shrinks_mid_session_carries_again_within_seconds() -> None:
    """No ICMP in this network: only probes can tell. Large frames sent from 5 s
    after the shrink on all arrive; the path MTU is right within 5 s."""
    sim = Sim(seed=12, link=LinkParams(mtu=1500))
    sim.traffic(10.0, rate=30.0, sizes=(1400, 1514))
    assert sim.peers[0].tunnel.path_mtu == 1500
    sim.link.mtu = 1400
    shrunk = sim.now
    start = [p.next_seq for p in sim.peers]
    sim.traffic(shrunk + 5.0, rate=30.0, sizes=(1400, 1514))
    for peer in sim.peers:
        assert peer.tunnel.path_mtu == 1400
        changes = [t for t, e in peer.events if isinstance(e, PathMtuChanged) and t > shrunk]
        assert changes and changes[0] - shrunk < 5.0
    after = [p.next_seq for p in sim.peers]
    sim.traffic(sim.now + 10.0, rate=30.0, sizes=(1400, 1514))
    sim.run_until(sim.now + 1.0)
    assert sim.delivered_ratio(0, after[0]) == sim.delivered_ratio(1, after[1]) == 1.0
    assert sim.delivered_ratio(0, start[0]) > 0.5  # the frames of the first seconds


def test_cookie_under_load_still_connects() -> None:
    sim = Sim(seed=9, keepalive=0)
    sim.peers[1].tunnel.set_under_load(True)
    sim.send(0, 100)
    sim.run_until(20)
    b = sim.peers[1].tunnel
    assert b.stats().cookies_sent >= 1
    assert b.drops[DropReason.HANDSHAKE_MAC2] >= 1
    assert sim.delivered_ratio(0) == 1.0
    assert sim.peers[0].tunnel.stats(sim.now).state == "up"


def test_psk_mismatch_never_connects() -> None:
    sim = Sim(seed=10, psk=bytes(range(32)), keepalive=0)
    sim.peers[1] = sim._make_peer(1)  # same config...
    sim.psk = bytes(32)
    sim.peers[0] = sim._make_peer(0)  # ...but peer 0 uses a different PSK
    sim.send(0, 100)
    sim.run_until(30)
    assert sim.delivered_ratio(0) == 0.0
    assert sim.peers[0].tunnel.drops[DropReason.AUTH_FAILED] >= 1


def test_staggered_start_when_winners_initiation_was_lost_connects_at_once() -> None:
    """The side that wins crossing initiations re-sends at once if its own was lost.

    Start-up order on real gateways: the first daemon's initiation hits a peer
    that is not running yet; the second daemon's initiation then crosses the
    first's still-pending one. Without re-sending, the link waits a full
    REKEY_TIMEOUT for the retransmit.
    """
    sim = Sim(seed=7, keepalive=0, link=LinkParams(up=False))
    winner = 0 if sim.keys[0][1] > sim.keys[1][1] else 1
    loser = 1 - winner
    sim.send(winner, 100)  # initiation lost: the peer is not up yet
    sim.run_until(2.0)
    sim.link.up = True
    sim.send(loser, 100)
    sim.run_until(2.5)
    for peer in sim.peers:
        assert peer.tunnel.stats(sim.now).state == "up"
        assert peer.tunnel.stats(sim.now).handshakes == 1
    assert sim.peers[winner].tunnel.drops[DropReason.HANDSHAKE_RACE] == 1
    sim.run_until(60)  # and no extra handshake or loop afterwards
    assert sim.peers[winner].tunnel.stats(sim.now).handshakes == 1
    assert sim.peers[loser].tunnel.stats(sim.now).handshakes == 1
    assert sim.delivered_ratio(loser) == 1.0


@pytest.mark.parametrize("first_frame", [0.0, 0.01, 0.02, 0.03, 0.05, 0.5])
def test_start_makes_exactly_one_handshake(first_frame: float) -> None:
    """Regression (review item 8): at start a daemon answers the other side's
    initiation, and the LAN (IPv6 DAD, router solicitations) hands it a frame
    before the other side's first transport message confirms that session.
    It initiated for that frame: a second handshake replaced the first
    (``rekeys`` 1 right after start). Now the frame waits for the confirmation."""
    sim = Sim(seed=8, keepalive=25.0)
    sim.peers[0].tunnel.peer.timers.persistent_keepalive = None  # A's timers run late
    sim.run_until(first_frame)
    sim.send(0, 100)
    sim.run_until(10.0)
    for peer in sim.peers:
        stats = peer.tunnel.stats()
        assert stats.state == "up"
        assert (stats.handshakes, stats.rekeys) == (1, 0), (peer.name, first_frame)
    assert sim.delivered_ratio(0) == 1.0


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("late", [0.1, 0.3, 0.6])
def test_a_lost_winning_initiation_is_resent_within_a_second(seed: int, late: float) -> None:
    """A starts first; its initiation is lost (B is not running). B starts ``late``
    s later and initiates; A's crossing initiation wins the tie-break on half of
    the seeds, and B then waits for A's. A used to re-send only after REKEY_TIMEOUT
    (5 s); now at the latest HANDSHAKE_RACE_RESEND (1 s) after it first sent."""
    sim = Sim(seed=seed, keepalive=25.0)
    not_yet = sim.peers[1]  # B is not running before ``late``:
    not_yet.tunnel.peer.timers.persistent_keepalive = None  # it sends nothing
    not_yet.addr = ("0.0.0.0", 1)  # and receives nothing
    sim.run_until(late)
    sim.restart(1)
    sim.run_until(1.2)
    assert all(p.tunnel.stats().state == "up" for p in sim.peers), seed
