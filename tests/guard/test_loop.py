"""Loop protection: the probe format, the detector's state machine on a virtual
clock, and whole networks (tests/guard/sim.py) with and without loops."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridger.guard import GuardConfig, LoopDetected, LoopDetector, LoopGone
from bridger.guard.classify import FrameKind, classify_untrusted
from bridger.guard.constants import HUB_HEARD_FOR
from bridger.guard.loop import (
    FLAG_RELAY,
    PROBE_DST,
    BadProbe,
    Probe,
    ProbeVerdict,
    decode_probe_untrusted,
    encode_probe,
    probe_src_mac,
)
from tests.fuzz.budget import fuzz
from tests.guard import frames as f
from tests.guard.sim import Cable, Net

SITE = bytes.fromhex("a1a2a3a4a5a6a7a8")

# --- the probe on the wire ------------------------------------------------------


def test_probe_frame_layout() -> None:
    frame = encode_probe(Probe(SITE, bytes(range(8)), 0))
    assert frame.hex() == (
        "0f6272646772" "a2a2a3a4a5a6" "88b5"  # dst, src from the site id, EtherType
        "42524744" "01" "00" "0000"  # "BRGD", version 1, reserved, VLAN 0
        "a1a2a3a4a5a6a7a8" "0001020304050607"  # site id, nonce
    ) + "00" * 22  # padded to 60 bytes
    assert PROBE_DST[0] & 3 == 3  # group + locally administered: flooded, not 01:80:c2
    assert probe_src_mac(SITE)[0] & 3 == 2  # unicast + locally administered
    tagged = encode_probe(Probe(SITE, bytes(8), 10))
    assert len(tagged) == 64 and tagged[12:16] == b"\x81\x00\x00\x0a"
    info = classify_untrusted(tagged)
    assert info.kind == FrameKind.LOOP_PROBE and info.vlans == (10,)
    assert decode_probe_untrusted(tagged, info.l3) == Probe(SITE, bytes(8), 10)


@given(st.binary(max_size=80))
@fuzz()
def test_probe_decoder_raises_only_bad_probe(data: bytes) -> None:
    with contextlib.suppress(BadProbe):
        decode_probe_untrusted(data)


# --- the state machine -------------------------------------------------------------


def detector(**kwargs: object) -> LoopDetector:
    d = LoopDetector(site_id=SITE, rng=random.Random(1), **kwargs)  # type: ignore[arg-type]
    d.add_peer("b")
    d.add_peer("c")
    return d


def probes_to(d: LoopDetector, now: float, peer: str) -> list[bytes]:
    return [frame for name, frame in d.tick(now) if name == peer]


def test_probe_rounds_and_deadlines() -> None:
    d = detector()
    assert d.next_deadline() == float("-inf")  # the first tick probes at once
    first = d.tick(10.0)
    assert sorted(name for name, _ in first) == ["b", "c"]
    deadline = d.next_deadline()
    assert 10.4 <= deadline <= 10.6
    assert d.tick(deadline - 0.01) == []
    assert len(d.tick(deadline)) == 2
    nonces = {frame[-30:-22] for _, frame in first}
    assert len(nonces) == 2  # one nonce per probe


def test_loop_detected_blocks_and_releases_after_hold() -> None:
    d = detector()
    probe = probes_to(d, 0.0, "b")[0]
    assert d.probe_seen_untrusted(probe, 14, "b", False, 0.05)  # read from a tap: ours
    b = d.peer("b")
    assert b.blocked and b.via == "lan" and d.loops_detected == 1 and not d.peer("c").blocked
    (event,) = d.take_events()
    assert isinstance(event, LoopDetected) and event.peer == "b" and 2.0 <= event.hold <= 2.5
    assert "loop detected via peer b" in event.line()
    # The loop stays: every probe to b comes back, b stays blocked.
    t = 0.0
    while t < 30:
        t = d.next_deadline()
        for frame in probes_to(d, t, "b"):
            d.probe_seen_untrusted(frame, 14, "c", True, t + 0.02)  # now from peer c
    assert b.blocked and b.via == "c" and d.loops_detected == 1
    # The loop is gone: nothing comes back; released one hold after the last return.
    last = b.last_return
    while b.blocked:
        t = d.next_deadline()
        d.tick(t)
    assert t == pytest.approx(last + b.hold) and t - last <= 2.5
    (event,) = d.take_events()
    assert isinstance(event, LoopGone) and event.peer == "b"
    assert "forwarding resumed" in event.line()


def test_backoff_doubles_to_a_cap_then_forgets() -> None:
    d = detector()
    holds = []
    t = 0.0
    for _ in range(6):  # the loop comes back right after each release
        probe = probes_to(d, t, "b")
        if not probe:
            t = d.next_deadline()
            probe = probes_to(d, t, "b")
        d.probe_seen_untrusted(probe[0], 14, "b", False, t)
        holds.append(d.peer("b").hold)
        while d.peer("b").blocked:
            t = d.next_deadline()
            d.tick(t)
    assert [round(h / (2 * 2**i)) if i < 4 else round(h / 16) for i, h in enumerate(holds)] == [
        1] * 6
    assert all(hold <= 16 * 1.25 for hold in holds)  # recovery stays under 30 s
    t += 61  # a quiet minute: the next loop starts at the base hold again
    for frame in probes_to(d, t, "b"):
        d.probe_seen_untrusted(frame, 14, "b", False, t)
    assert 2.0 <= d.peer("b").hold <= 2.5


def test_return_through_a_blocked_peer_blocks_nothing_more() -> None:
    d = detector()
    round_one = d.tick(0.0)
    to_b = next(fr for name, fr in round_one if name == "b")
    to_c = next(fr for name, fr in round_one if name == "c")
    d.probe_seen_untrusted(to_b, 14, "c", True, 0.02)  # sent to b, back from c: b is blocked
    d.probe_seen_untrusted(to_c, 14, "b", True, 0.03)  # sent to c, back from blocked b
    assert d.blocked() == ["b"] and d.via_blocked == 1
    d.probe_seen_untrusted(to_c, 14, "b", False, 0.04)  # ... but from the LAN it counts
    assert d.blocked() == ["b", "c"]


def test_foreign_stale_and_forged_probes() -> None:
    d = detector()
    d.tick(0.0)
    theirs = encode_probe(Probe(b"\x00" * 8, bytes(8), 0))
    assert not d.probe_seen_untrusted(theirs, 14, "b", True, 0.1)  # another site's: forward
    forged = encode_probe(Probe(SITE, b"guessed!", 0))  # our site id, a nonce we never sent
    assert d.probe_seen_untrusted(forged, 14, "b", True, 0.1)  # consumed, ignored
    late = probes_to(d, 1.0, "b")[0]
    assert d.probe_seen_untrusted(late, 14, "b", True, 1.0 + 5.1)  # older than PROBE_MEMORY
    assert d.blocked() == [] and d.stale_probes == 2 and d.loops_detected == 0
    junk = f.eth(PROBE_DST, 0x88B5, b"BRGX" + bytes(40))
    assert not d.probe_seen_untrusted(junk, 14, "b", True, 1.0)
    d.remove_peer("b")
    sent_to_removed = d.tick(2.0)
    assert [name for name, _ in sent_to_removed] == ["c"]


def test_other_sites_probes_never_cross_a_cut() -> None:
    d = detector()
    d.tick(0.0)
    to_c = d.tick(d.next_deadline())[1][1]
    d.probe_seen_untrusted(to_c, 14, "c", False, 0.6)  # a loop via c: c is blocked
    via_c = encode_probe(Probe(b"\x0c" * 8, b"1" * 8, 0))  # site C's, from c
    lan = encode_probe(Probe(b"\x0b" * 8, b"2" * 8, 0))  # site B's, met on our LAN
    assert d.probe_seen_untrusted(via_c, 14, "c", True, 0.7) == ProbeVerdict.FORWARD  # to our LAN
    assert d.probe_seen_untrusted(via_c, 14, "b", False, 0.7) == ProbeVerdict.DROP  # hub relay
    assert d.probe_seen_untrusted(lan, 14, "c", False, 0.7) == ProbeVerdict.DROP  # to c: cut
    assert d.probe_seen_untrusted(lan, 14, "b", False, 0.7) == ProbeVerdict.FORWARD
    someone_elses = f.eth(PROBE_DST, 0x88B5, b"not ours" + bytes(40))
    assert d.probe_seen_untrusted(someone_elses, 14, "b", True, 2.0) == ProbeVerdict.FORWARD
    assert d.probe_seen_untrusted(someone_elses, 14, "c", True, 2.0) == ProbeVerdict.DROP


def test_other_sites_probes_go_from_a_tunnel_to_the_lan_only() -> None:
    """Issue 26: a hub flooded every spoke's probes to every other spoke (the idle
    cost grew with the square of the spokes).  A probe received from a peer goes
    into our LAN; the copy our bridge hands to another peer's tap is dropped,
    until the memory of it has gone (TAINT_MEMORY)."""
    d = detector()
    spoke = encode_probe(Probe(b"\x0b" * 8, b"1" * 8, 0))
    assert d.probe_seen_untrusted(spoke, 14, "b", True, 0.1) == ProbeVerdict.FORWARD
    assert d.probe_seen_untrusted(spoke, 14, "c", False, 0.1) == ProbeVerdict.DROP
    assert d.cut_between_peers == 1 and not d.take_relays()  # not a hub: nothing relayed
    d.tick(2.0)
    assert d.probe_seen_untrusted(spoke, 14, "c", False, 2.0) == ProbeVerdict.FORWARD
    assert d.snapshot(2.0)["cut_between_peers"] == 1


def test_a_hub_marks_its_probes_and_relays_other_hubs_probes_once() -> None:
    hub = detector(hub=True)
    hub.add_peer("d")
    ours = hub.tick(0.0)
    assert all(decode_probe_untrusted(frame).flags == FLAG_RELAY for _, frame in ours)
    assert all(decode_probe_untrusted(frame).flags == 0 for _, frame in detector().tick(0.0))
    spoke = encode_probe(Probe(b"\x0b" * 8, b"1" * 8, 0))
    other_hub = encode_probe(Probe(b"\x0e" * 8, b"2" * 8, 0, FLAG_RELAY))
    assert hub.probe_seen_untrusted(spoke, 14, "b", True, 0.1) == ProbeVerdict.FORWARD
    assert not hub.has_relays  # a spoke's probe: into our LAN only
    assert hub.probe_seen_untrusted(other_hub, 14, "b", True, 0.1) == ProbeVerdict.FORWARD
    assert hub.has_relays
    assert sorted(name for name, _ in hub.take_relays()) == ["c", "d"]  # not back to b
    assert hub.probe_seen_untrusted(other_hub, 14, "c", True, 0.1) == ProbeVerdict.FORWARD
    assert not hub.has_relays  # a copy by another path: relayed once only
    assert hub.probe_seen_untrusted(other_hub, 14, "c", False, 0.1) == ProbeVerdict.DROP
    # From a blocked peer: into our LAN, relayed to nobody.
    hub.peer("c").blocked = True
    again = encode_probe(Probe(b"\x0e" * 8, b"3" * 8, 0, FLAG_RELAY))
    assert hub.probe_seen_untrusted(again, 14, "c", True, 0.2) == ProbeVerdict.FORWARD
    assert not hub.take_relays()
    # To a blocked peer: never.
    fresh = encode_probe(Probe(b"\x0e" * 8, b"4" * 8, 0, FLAG_RELAY))
    hub.probe_seen_untrusted(fresh, 14, "b", True, 0.3)
    assert sorted(name for name, _ in hub.take_relays()) == ["d"]


def test_probes_go_in_every_allowed_vlan() -> None:
    d = LoopDetector(site_id=SITE, vlans=(10, 20), untagged=False)
    d.add_peer("b")
    vlans = [classify_untrusted(frame).vlans for _, frame in d.tick(0.0)]
    assert vlans == [(10,), (20,)]
    d2 = LoopDetector(site_id=SITE, vlans=(10,), untagged=True)
    d2.add_peer("b")
    assert [classify_untrusted(fr).vlans for _, fr in d2.tick(0.0)] == [(), (10,)]


# --- whole networks -------------------------------------------------------------------


def broadcast(tag: bytes) -> bytes:
    return f.eth(f.BROADCAST, 0x0800, f.ipv4(17, f.udp(5000, 5000, tag)))


def two_sites(**cable: bool) -> tuple[Net, Cable]:
    net = Net()
    a, b = net.site("a"), net.site("b")
    net.tunnel("a", "b")
    wire = Cable(a.lan, b.lan, **cable)
    return net, wire


def test_no_loop_nothing_happens() -> None:
    net, _wire = two_sites(connected=False)
    net.sites["a"].lan.host_send(broadcast(b"hello-b!"))
    net.run(60.0)
    a, b = net.sites["a"], net.sites["b"]
    assert a.detector.loops_detected == b.detector.loops_detected == 0
    assert a.events == b.events == [] and not a.drops and not b.drops
    assert b.lan.seen[b"hello-b!"] == 1
    assert a.detector.peer("b").probes_sent >= 100


def test_backup_cable_loop_detected_cut_and_recovered() -> None:
    net, wire = two_sites(connected=False)
    a, b = net.sites["a"], net.sites["b"]
    net.run(5.0)
    wire.connected = True  # someone plugs in the backup link
    net.run(7.0)
    for site, peer in ((a, "b"), (b, "a")):
        state = site.detector.peer(peer)
        assert state.blocked and state.blocked_at - 5.0 <= 2.0, site.name
    net.run(15.0)
    # Blocked: a LAN broadcast reaches the other LAN once, over the cable only,
    # instead of circling forever.
    a.lan.host_send(broadcast(b"storm?!!"))
    net.run(20.0)
    assert b.lan.seen[b"storm?!!"] == 1 and a.lan.seen[b"storm?!!"] == 0
    assert a.drops["loop_blocked"] >= 1 and a.detector.loops_detected == 1
    wire.connected = False  # the cable is pulled again
    net.run(50.0)
    released = [t for site in (a, b) for t, ev in site.events if isinstance(ev, LoopGone)]
    assert len(released) == 2 and all(t - 20.0 < 30.0 for t in released)
    a.lan.host_send(broadcast(b"again!!!"))
    net.run(55.0)
    assert b.lan.seen[b"again!!!"] == 1  # forwarding resumed through the tunnel
    assert a.detector.loops_detected == 1 and net.overflow == 0


def test_stp_blocking_the_cable_means_no_loop() -> None:
    net, wire = two_sites(blocked=True)  # STP has put the backup link's port in blocking
    net.run(60.0)
    a, b = net.sites["a"], net.sites["b"]
    assert a.detector.loops_detected == b.detector.loops_detected == 0 and wire.carried == 0


def test_a_storm_before_detection_stays_bounded_by_the_flood_budget() -> None:
    net = Net()
    config = GuardConfig(flood_rate=200)
    a, b = net.site("a", config), net.site("b", config)
    net.tunnel("a", "b")
    Cable(a.lan, b.lan)
    a.lan.host_send(broadcast(b"storm!!!"))  # before the first probe round has come back
    net.run(10.0)
    assert a.detector.peer("b").blocked and b.detector.peer("a").blocked
    assert net.overflow == 0


def test_three_site_mesh_with_a_backup_cable_between_two() -> None:
    """LAN A and LAN B are also cabled together: the a-b tunnel is a loop, and
    so is c's pair of tunnels into what is now one LAN.  a and b cut their
    tunnel; c cuts one of its two - and keeps the other."""
    net = Net()
    for name in "abc":
        net.site(name)
    for x, y in ("ab", "bc", "ac"):
        net.tunnel(x, y)
    a, b, c = (net.sites[n] for n in "abc")
    wire = Cable(a.lan, b.lan)
    net.run(10.0)
    assert "b" in a.blocked() and "a" in b.blocked()
    assert len(c.blocked()) == 1
    assert "c" not in a.blocked() and "c" not in b.blocked()
    c.lan.host_send(broadcast(b"from-c!!"))
    net.run(12.0)
    assert a.lan.seen[b"from-c!!"] == 1 and b.lan.seen[b"from-c!!"] == 1
    wire.connected = False
    net.run(45.0)
    assert not a.blocked() and not b.blocked() and not c.blocked()


@pytest.mark.parametrize("seed", [0, 1, 4, 10])
def test_hub_mode_triangle_settles_without_cutting_every_tunnel(seed: int) -> None:
    """Three sites in hub mode with every pair tunnelled: the tunnels alone form
    a loop.  The sites end up with the loop cut and every LAN still reachable.
    (Seeds 1 and 4 cut both of b's tunnels before other sites' probes were kept
    from crossing a blocked peer to another tunnel.)"""
    net = Net()
    for name in "abc":
        net.site(name, mode="hub", seed=seed)
    for x, y in ("ab", "bc", "ac"):
        net.tunnel(x, y)
    net.run(60.0)
    for tag, sender in ((b"hub-a!!!", "a"), (b"hub-b!!!", "b"), (b"hub-c!!!", "c")):
        net.sites[sender].lan.host_send(broadcast(tag))
    net.run(62.0)
    for name in "abc":
        seen = net.sites[name].lan.seen
        for tag, sender in ((b"hub-a!!!", "a"), (b"hub-b!!!", "b"), (b"hub-c!!!", "c")):
            if sender != name:
                assert seen[tag] == 1, (name, tag)
    assert net.overflow == 0


# --- a hub and its spokes (issue 26) ----------------------------------------------------


def hub_and_spokes(spokes: int, seed: int = 0) -> tuple[Net, list[str]]:
    """Site "hub" in mode hub with a tunnel to each spoke "s1".."sN"."""
    net = Net()
    net.site("hub", mode="hub", seed=seed)
    names = [f"s{i}" for i in range(1, spokes + 1)]
    for name in names:
        net.site(name, seed=seed)
        net.tunnel("hub", name)
    return net, names


def first_loop(site: Any, after: float) -> tuple[float, str] | None:
    """(when, peer) of ``site``'s first LoopDetected after ``after``."""
    return next(((t, ev.peer) for t, ev in site.events
                 if isinstance(ev, LoopDetected) and t >= after), None)


@pytest.mark.parametrize("spokes", [4, 16])
def test_an_idle_hub_sends_each_spoke_its_own_probes_only(spokes: int) -> None:
    """The hub's cost per spoke does not grow with the number of spokes: each
    spoke gets the hub's probes (2 a second), no other spoke's."""
    net, names = hub_and_spokes(spokes)
    net.run(20.0)
    hub = net.sites["hub"]
    for name in names:
        assert hub.sent[name] <= 20.0 / 0.45 + 1, (name, hub.sent[name])
        assert net.sites[name].sent["hub"] <= 20.0 / 0.45 + 1
    assert hub.detector.cut_between_peers > 0  # the bridge's copies, dropped
    assert not any(site.events for site in net.sites.values())


def test_a_cable_between_two_spokes_lans_is_cut_by_the_hub_within_2_s() -> None:
    net, names = hub_and_spokes(8)
    net.run(5.0)
    Cable(net.sites["s2"].lan, net.sites["s6"].lan)
    net.run(12.0)
    hub = net.sites["hub"]
    found = first_loop(hub, 5.0)
    assert found is not None and found[0] - 5.0 < 2.0 and found[1] in ("s2", "s6"), hub.events
    assert len(hub.blocked()) == 1  # one tunnel per loop
    assert net.overflow == 0
    # Every LAN still hears every other (s2 and s6 through the cable and one tunnel).
    net.sites["s1"].lan.host_send(broadcast(b"all-lan!"))
    net.run(13.0)
    for name in names:
        assert net.sites[name].lan.seen[b"all-lan!"] == (0 if name == "s1" else 1), name


def test_a_cable_between_the_hubs_lan_and_a_spokes_lan_is_cut_within_2_s() -> None:
    net, _names = hub_and_spokes(6)
    net.run(5.0)
    Cable(net.sites["hub"].lan, net.sites["s3"].lan)
    net.run(10.0)
    hub, s3 = net.sites["hub"], net.sites["s3"]
    found = first_loop(hub, 5.0)
    assert found is not None and found[0] - 5.0 < 2.0 and found[1] == "s3", hub.events
    # The spoke leaves its tunnel to the hub it hears probing (loop.py 7.).
    assert first_loop(s3, 5.0) is None, s3.events
    assert hub.blocked() == {"s3"} and net.overflow == 0


def test_a_loop_through_two_hubs_is_found_by_the_relayed_probes() -> None:
    """Hubs h1 and h2 tunnelled together, spoke a on h1 and b on h2, LANs a and b
    cabled: the loop crosses two bridges from tunnel to tunnel, which only
    another hub's relayed probe sees."""
    net = Net()
    net.site("h1", mode="hub")
    net.site("h2", mode="hub")
    net.site("a")
    net.site("b")
    net.site("c")
    for x, y in (("h1", "h2"), ("h1", "a"), ("h2", "b"), ("h2", "c")):
        net.tunnel(x, y)
    net.run(5.0)
    assert not any(site.events for site in net.sites.values())
    Cable(net.sites["a"].lan, net.sites["b"].lan)
    net.run(10.0)
    found = [first_loop(net.sites[n], 5.0) for n in ("h1", "h2")]
    assert any(f is not None and f[0] - 5.0 < 2.0 for f in found), found
    assert net.sites["h1"].detector.relayed + net.sites["h2"].detector.relayed > 0
    assert net.overflow == 0


def test_a_spoke_leaves_the_probing_of_its_tunnel_to_a_hub_it_hears() -> None:
    """Issue 26 (loop.py 7.): a site that is no hub sends no probes to a peer
    whose hub probes it hears, and probes it again once they stop; a hub
    always probes, also towards another hub."""
    hub_probe = encode_probe(Probe(b"H" * 8, b"n" * 8, 0, FLAG_RELAY))
    l3 = 14
    spoke = LoopDetector(site_id=b"S" * 8, rng=random.Random(1), tap_cut=True)
    spoke.add_peer("hub")
    spoke.add_peer("other")
    assert {name for name, _ in spoke.tick(0.0)} == {"hub", "other"}
    assert spoke.probe_seen_untrusted(hub_probe, l3, "hub", True, 0.5) == ProbeVerdict.FORWARD
    assert {name for name, _ in spoke.tick(1.0)} == {"other"}
    assert spoke.peer("hub").snapshot(1.0)["probed_by_hub"]
    assert {name for name, _ in spoke.tick(0.5 + HUB_HEARD_FOR + 0.1)} == {"hub", "other"}
    hub = LoopDetector(site_id=b"T" * 8, rng=random.Random(1), tap_cut=True, hub=True)
    hub.add_peer("hub")
    hub.probe_seen_untrusted(hub_probe, l3, "hub", True, 0.5)
    assert [name for name, _ in hub.tick(1.0)] == ["hub"]
