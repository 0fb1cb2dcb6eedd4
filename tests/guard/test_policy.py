"""The per-peer Guard: VLAN allow-list, DHCP/RA guards, storm control (virtual
time), blocked peers, batches, MAC flaps and the settings' checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridger.errors import ConfigError
from bridger.guard import (
    GUARD_DROP_REASONS,
    Guard,
    GuardConfig,
    LoopDetector,
    MacFlaps,
    Reason,
    without,
)
from bridger.guard.loop import Probe, encode_probe
from bridger.protocol.bucket import TokenBucket
from tests.fuzz.budget import fuzz
from tests.guard import frames as f

NO_STORM = GuardConfig(flood_rate=0, loop_protection=False)
TCP = f.eth(f.HOST_B, 0x0800, f.ipv4(6, f.tcp()))
ARP = f.eth(f.BROADCAST, 0x0806, bytes(28))
BCAST_UDP = f.eth(f.BROADCAST, 0x0800, f.ipv4(17, f.udp(5000, 5000)))
OFFER = f.eth(f.BROADCAST, 0x0800, f.ipv4(17, f.dhcp_offer()))
RA = f.eth(f.ALL_NODES, 0x86DD, f.ipv6(58, f.icmp6(134)))
NS = f.eth(f.ALL_NODES, 0x86DD, f.ipv6(58, f.icmp6(135)))
BPDU = bytes.fromhex("0180c2000000") + f.HOST_A + b"\x00\x26\x42\x42\x03" + bytes(35)


def both(guard: Guard, frame: bytes, now: float = 0.0) -> tuple[str | None, str | None]:
    return guard.outbound(frame, now), guard.inbound(frame, now)


# --- VLAN allow-list -------------------------------------------------------------

VLAN_IDS = st.integers(1, 4094)


@given(
    st.lists(VLAN_IDS, min_size=1, max_size=5, unique=True).map(tuple),
    st.lists(st.tuples(st.sampled_from([0x8100, 0x88A8, 0x9100]), st.integers(0, 4095)),
             max_size=3).map(tuple),
    st.booleans(),
    st.sampled_from([(0x0800, TCP[14:]), (0x0806, ARP[14:]), (0x0800, OFFER[14:]), (0x1234, b"")]),
)
@fuzz()
def test_vlan_allow_list(
    vlans: tuple[int, ...],
    tags: tuple[tuple[int, int], ...],
    untagged: bool,
    payload: tuple[int, bytes],
) -> None:
    """Both ways: a frame crosses iff its outer VLAN id is listed (0 = untagged,
    which crosses iff ``untagged``), whatever it carries and however deep."""
    config = GuardConfig(vlans=vlans, untagged=untagged, flood_rate=0, loop_protection=False)
    guard = Guard(config, "b")
    frame = f.eth(f.HOST_B, payload[0], payload[1], tags)
    outer = tags[0][1] & 0x0FFF if tags else 0
    allowed = outer in vlans if outer else untagged
    assert both(guard, frame) == ((None, None) if allowed else (Reason.VLAN, Reason.VLAN))


def test_vlan_list_table() -> None:
    config = GuardConfig(vlans=(10, 20), untagged=False, flood_rate=0, loop_protection=False)
    guard = Guard(config, "b")
    cases = [
        ((), Reason.VLAN),  # untagged
        (((0x8100, 0x6000),), Reason.VLAN),  # priority tag (VID 0) counts as untagged
        (((0x8100, 10),), None),
        (((0x8100, 0xE014),), None),  # VLAN 20 with PCP 7
        (((0x8100, 30),), Reason.VLAN),
        (((0x88A8, 20), (0x8100, 30)), None),  # the outer tag decides
        (((0x88A8, 30), (0x8100, 10)), Reason.VLAN),
    ]
    for tags, expected in cases:
        assert both(guard, f.eth(f.HOST_B, 0x0800, f.ipv4(6, f.tcp()), tags)) == (
            expected, expected), tags
    open_guard = Guard(GuardConfig(vlans=(10,), flood_rate=0, loop_protection=False), "b")
    assert both(open_guard, TCP) == (None, None)  # untagged = true is the default


# --- DHCP and RA guards -------------------------------------------------------------


@pytest.mark.parametrize("tags", [(), ((0x8100, 10),), ((0x88A8, 100), (0x8100, 10))])
def test_dhcp_local_drops_server_messages_both_ways(tags: tuple[tuple[int, int], ...]) -> None:
    local = Guard(GuardConfig(dhcp="local", flood_rate=0, loop_protection=False), "b")
    shared = Guard(NO_STORM, "b")
    offer4 = f.eth(f.BROADCAST, 0x0800, f.ipv4(17, f.dhcp_offer()), tags)
    offer4_unicast = f.eth(f.HOST_B, 0x0800, f.ipv4(17, f.dhcp_offer(), b"\x94\x04\x00\x00"), tags)
    advertise6 = f.eth(f.HOST_B, 0x86DD, f.ipv6(60, f.ext(17) + f.dhcp6_advertise()), tags)
    for frame in (offer4, offer4_unicast, advertise6):
        assert both(local, frame) == (Reason.DHCP, Reason.DHCP)
        assert both(shared, frame) == (None, None)
    discover = f.eth(f.BROADCAST, 0x0800, f.ipv4(17, f.udp(68, 67, bytes(240))), tags)
    solicit6 = f.eth(f.HOST_B, 0x86DD, f.ipv6(17, f.udp(546, 547, bytes(4))), tags)
    for frame in (discover, solicit6, TCP):
        assert both(local, frame) == (None, None)  # clients still reach a server anywhere


def test_dhcp_fragments() -> None:
    """The first fragment of an offer is caught; a later fragment, whose payload
    happens to start with bytes that read as ports 67 -> 68, crosses."""
    local = Guard(GuardConfig(dhcp="local", flood_rate=0, loop_protection=False), "b")
    first = f.eth(f.BROADCAST, 0x0800, f.ipv4(17, f.dhcp_offer()[:64], more=True))
    later = f.eth(f.BROADCAST, 0x0800, f.ipv4(17, b"\x00\x43\x00\x44" + bytes(60), frag_offset=8))
    assert both(local, first) == (Reason.DHCP, Reason.DHCP)
    assert both(local, later) == (None, None)
    tiny = f.eth(f.BROADCAST, 0x0800, f.ipv4(17, b"\x00\x43", more=True))  # ports cut off
    assert both(local, tiny) == (Reason.HIDDEN, Reason.HIDDEN)


def test_ra_local() -> None:
    local = Guard(GuardConfig(ra="local", flood_rate=0, loop_protection=False), "b")
    hbh_ra = f.eth(f.ALL_NODES, 0x86DD, f.ipv6(0, f.ext(58) + f.icmp6(134)))
    frag_ra = f.eth(f.ALL_NODES, 0x86DD, f.ipv6(44, f.frag6(58, 0, True) + f.icmp6(134)))
    unicast_ra = f.eth(f.HOST_B, 0x86DD, f.ipv6(58, f.icmp6(134)), ((0x8100, 5),))
    for frame in (RA, hbh_ra, frag_ra, unicast_ra):
        assert both(local, frame) == (Reason.RA, Reason.RA)
    later = f.eth(f.ALL_NODES, 0x86DD, f.ipv6(44, f.frag6(58, 2) + f.icmp6(134)))
    for frame in (NS, later, OFFER, TCP):
        assert both(local, frame) == (None, None)
    deep = f.eth(f.ALL_NODES, 0x86DD,
                 f.ipv6(60, b"".join(f.ext(60) for _ in range(8)) + f.ext(58) + f.icmp6(134)))
    assert both(local, deep) == (Reason.HIDDEN, Reason.HIDDEN)  # RFC 7113: fail closed
    assert both(Guard(NO_STORM, "b"), deep) == (None, None)
    # A DHCP-only guard does not drop an ICMPv6 packet it cannot read.
    cut_icmp = f.eth(f.ALL_NODES, 0x86DD, f.ipv6(58, b""))
    dhcp_only = Guard(GuardConfig(dhcp="local", flood_rate=0, loop_protection=False), "b")
    assert both(dhcp_only, cut_icmp) == (None, None)
    assert both(local, cut_icmp) == (Reason.HIDDEN, Reason.HIDDEN)


# --- storm control ----------------------------------------------------------------


def run(guard: Guard, frame: bytes, start: float, seconds: float, fps: int) -> int:
    """Send ``frame`` outbound at ``fps`` for ``seconds``; how many passed."""
    passed = 0
    for i in range(int(seconds * fps)):
        passed += guard.outbound(frame, start + i / fps) is None
    return passed


def test_flood_budget_held() -> None:
    guard = Guard(GuardConfig(flood_rate=100, loop_protection=False), "b")
    # general bucket: 75/s, burst 75; ND share: 25/s, burst 25
    passed = run(guard, BCAST_UDP, 0.0, 10.0, 1000)
    assert 75 + 750 - 2 <= passed <= 75 + 750 + 1
    assert [guard.outbound(BCAST_UDP, 10.0) for _ in range(3)][1:] == [Reason.STORM] * 2


def test_burst_allowance() -> None:
    guard = Guard(GuardConfig(flood_rate=100, flood_burst=400, loop_protection=False), "b")
    at_once = [guard.outbound(BCAST_UDP, 5.0) for _ in range(400)]
    assert at_once.count(None) == 300  # 3/4 of the burst is the general bucket's
    assert at_once[-1] == Reason.STORM
    assert guard.outbound(BCAST_UDP, 5.0 + 1 / 75 + 1e-9) is None  # refilled by one token


def test_arp_and_nd_keep_their_share_during_a_broadcast_storm() -> None:
    guard = Guard(GuardConfig(flood_rate=100, loop_protection=False), "b")
    passed = {"bcast": 0, "arp": 0, "ns": 0}
    for ms in range(10_000):  # 10 s: 1000 broadcasts/s, 10 ARP/s, 10 NS/s
        now = ms / 1000
        passed["bcast"] += guard.outbound(BCAST_UDP, now) is None
        if ms % 100 == 0:
            passed["arp"] += guard.outbound(ARP, now) is None
        if ms % 100 == 50:
            passed["ns"] += guard.outbound(NS, now) is None
    assert passed["arp"] == 100 and passed["ns"] == 100
    assert passed["bcast"] <= 75 + 750 + 1


def test_arp_storm_is_held_too() -> None:
    guard = Guard(GuardConfig(flood_rate=100, loop_protection=False), "b")
    passed = run(guard, ARP, 0.0, 10.0, 1000)
    assert 1100 - 5 <= passed <= 1100 + 1  # both buckets: 100/s and both bursts
    assert [guard.outbound(ARP, 10.0) for _ in range(3)][1:] == [Reason.STORM_ND] * 2


def test_bpdus_pass_a_storm() -> None:
    guard = Guard(GuardConfig(flood_rate=100, loop_protection=False), "b")
    run(guard, BCAST_UDP, 0.0, 1.0, 1000)
    assert [guard.outbound(BCAST_UDP, 1.0) for _ in range(3)][1:] == [Reason.STORM] * 2
    assert all(guard.outbound(BPDU, 1.0 + i / 2) is None for i in range(20))
    bpdu_flood = run(guard, BPDU, 20.0, 1.0, 10_000)
    assert bpdu_flood <= 200 + 200 + 1  # the control bucket is bounded too


def test_unknown_unicast_is_flooded_traffic() -> None:
    known: set[bytes] = {f.HOST_B}
    guard = Guard(GuardConfig(flood_rate=100, loop_protection=False), "b", known=known)
    other = f.eth(bytes.fromhex("02000000000c"), 0x0800, f.ipv4(6, f.tcp()))
    assert run(guard, TCP, 0.0, 1.0, 10_000) == 10_000  # known unicast: never budgeted
    assert run(guard, other, 1.0, 1.0, 10_000) <= 75 + 75 + 1
    known.add(bytes.fromhex("02000000000c"))  # learned: the live table is consulted
    assert guard.outbound(other, 2.0) is None
    # No MAC table: unicast is never counted as flooded.
    blind = Guard(GuardConfig(flood_rate=100, loop_protection=False), "b")
    assert run(blind, other, 0.0, 1.0, 1000) == 1000


def test_a_superframe_costs_its_segments() -> None:
    guard = Guard(GuardConfig(flood_rate=100, loop_protection=False), "b", known=set())
    assert guard.outbound(TCP, 0.0, count=46) is None
    assert guard.outbound(TCP, 0.0, count=46) == Reason.STORM  # 75 - 46 < 46
    assert guard.outbound(TCP, 2.0, count=200) is None  # bigger than the burst: debt
    assert guard.outbound(TCP, 3.0) == Reason.STORM  # 75 - 200 + 75 < 1
    assert guard.outbound(TCP, 4.0) is None


def test_unlimited_and_inbound() -> None:
    unlimited = Guard(GuardConfig(flood_rate=0, loop_protection=False), "b")
    assert run(unlimited, BCAST_UDP, 0.0, 1.0, 10_000) == 10_000
    limited = Guard(GuardConfig(flood_rate=10, loop_protection=False), "b")
    assert all(limited.inbound(BCAST_UDP, 0.0) is None for _ in range(1000))  # peer's job


def test_token_bucket() -> None:
    bucket = TokenBucket(10, 5)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.take(-100.0)  # a clock stepping back adds nothing
    assert bucket.take(0.1)
    assert not bucket.take(0.1)
    assert bucket.take(100.0, 50)  # 5 there, more than the burst asked: debt
    assert bucket.tokens == -45
    assert not bucket.take(104.0) and bucket.take(105.0)
    with pytest.raises(ValueError):
        TokenBucket(-1, 1)


# --- loop-blocked peers -------------------------------------------------------------


def test_a_blocked_peer_passes_only_probes() -> None:
    detector = LoopDetector(site_id=b"A" * 8)
    guard = Guard(GuardConfig(), "b", detector)
    (peer, ours), = detector.tick(0.0)
    assert peer == "b"
    theirs = encode_probe(Probe(b"Z" * 8, b"n" * 8, 0))
    assert both(guard, theirs) == (None, None)
    assert guard.outbound(ours, 0.1) == Reason.LOOP_PROBE  # came back from the LAN: a loop
    assert guard.loop.blocked
    for frame in (TCP, ARP, OFFER, f.eth(f.HOST_B, 0x0800, f.ipv4(6, f.tcp()), ((0x8100, 3),))):
        assert both(guard, frame, 0.2) == (Reason.LOOP_BLOCKED, Reason.LOOP_BLOCKED)
    assert guard.inbound(theirs, 0.2) is None  # delivered: it dies at our taps
    assert guard.outbound(theirs, 0.2) == Reason.LOOP_BLOCKED  # never circles the loop
    assert guard.outbound(ours, 0.3) == Reason.LOOP_PROBE and guard.inbound(ours, 0.3) == (
        Reason.LOOP_PROBE)
    snap = guard.snapshot(0.5)
    assert snap["loop"] is True and snap["loops_detected"] == 1 and snap["loop_via"] == "b"


def test_loop_protection_off() -> None:
    detector = LoopDetector(site_id=b"A" * 8)
    guard = Guard(GuardConfig(loop_protection=False), "b", detector)
    assert detector.tick(0.0) == []  # no peer registered: no probes
    ours = encode_probe(Probe(b"A" * 8, b"n" * 8, 0))
    assert both(guard, ours) == (None, None)
    assert guard.snapshot(0.0)["loop"] is False


# --- batches and MAC flaps ----------------------------------------------------------


@given(st.lists(st.sampled_from([TCP, ARP, OFFER, RA, NS, BCAST_UDP, b"", b"\x00" * 13,
                                 f.eth(f.HOST_B, 0x0800, f.ipv4(6, f.tcp()), ((0x8100, 10),))]),
                max_size=30))
@fuzz()
def test_batch_is_frame_by_frame(frames: list[bytes]) -> None:
    config = GuardConfig(dhcp="local", ra="local", vlans=(10,), loop_protection=False)
    one, many = Guard(config, "b"), Guard(config, "b")
    expected = [(i, r) for i, fr in enumerate(frames) if (r := one.inbound(fr, 1.0)) is not None]
    assert many.inbound_batch(frames, 1.0) == expected


def test_mac_flaps_through_the_guards() -> None:
    detector = LoopDetector(site_id=b"A" * 8)
    flaps = detector.flaps
    to_b = Guard(GuardConfig(flood_rate=0), "b", detector, flaps=flaps)
    to_c = Guard(GuardConfig(flood_rate=0), "c", detector, flaps=flaps)
    host = f.eth(f.BROADCAST, 0x0806, bytes(28), src=f.HOST_A)
    other = f.eth(f.BROADCAST, 0x0806, bytes(28), src=f.HOST_B)
    for i in range(50):  # HOST_A seen from the LAN and from peer b, 10 times a second
        now = i / 10
        to_b.outbound(host, now)
        to_b.inbound_batch([host, host, host], now + 0.05)  # one note per run of a MAC
        to_c.inbound(other, now)  # HOST_B stays behind c ...
    to_b.outbound(other, 5.0)  # ... until it shows up on the LAN once
    assert flaps.side(f.HOST_A) == "b" and flaps.side(f.HOST_B) == "lan"
    assert flaps.total == 1 + 49 * 2 + 1
    worst = flaps.worst(5.0, 1)[0]
    assert worst["mac"] == f.HOST_A.hex(":") and set(worst["sides"]) == {"lan", "b"}
    assert flaps.rate(5.0) == pytest.approx(10.0)
    events = detector.take_events()
    assert len(events) == 1 and "flapping between" in events[0].line()
    assert detector.take_events() == []


def test_flap_table_is_bounded() -> None:
    flaps = MacFlaps(capacity=100)
    for i in range(10_000):
        flaps.seen(i.to_bytes(6, "big"), "lan", i / 1000)
    assert flaps.snapshot(10.0)["tracked"] == 100 and flaps.evicted == 9_900
    assert flaps.total == 0


# --- settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dhcp": "off"}, '[local] dhcp must be "shared" or "local"'),
        ({"ra": "yes"}, '[local] ra must be "shared" or "local"'),
        ({"vlans": (0,)}, "[local] vlans must be a list of VLAN ids 1-4094"),
        ({"vlans": (4095,)}, "[local] vlans must be a list of VLAN ids 1-4094"),
        ({"vlans": (), "untagged": False},
         "[local] vlans = [] with untagged = false lets nothing cross"),
        ({"flood_rate": -1}, "[local] flood_rate must be a whole number >= 0"),
        ({"flood_burst": 1.5}, "[local] flood_burst must be a whole number >= 0"),
        ({"nd_share": 1.0}, "nd_share must be at least 0 and below 1"),
    ],
)
def test_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        GuardConfig(**kwargs)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_defaults() -> None:
    config = GuardConfig()
    assert (config.dhcp, config.ra, config.vlans, config.untagged, config.flood_rate,
            config.burst, config.loop_protection) == (
        "shared", "shared", None, True, 2000, 2000, True)


def test_without_keeps_checksums_with_their_frames() -> None:
    guard = Guard(GuardConfig(dhcp="local", loop_protection=False), "b")
    frames = [TCP + b"1", OFFER, TCP + b"2", OFFER, TCP + b"3"]
    csum = {0: (34, 16), 2: (34, 17), 4: (34, 18)}
    drops = guard.inbound_batch(frames, 0.0)
    assert drops == [(1, Reason.DHCP), (3, Reason.DHCP)]
    kept, moved = without(frames, csum, drops)
    assert kept == [TCP + b"1", TCP + b"2", TCP + b"3"]
    assert moved == {0: (34, 16), 1: (34, 17), 2: (34, 18)}
    assert without(kept, moved, guard.inbound_batch(kept, 0.0)) == (kept, moved)


def test_batch_blocked_midway_by_a_returning_probe() -> None:
    """Default settings (the batch's fast lane): a probe of ours in the batch
    blocks the peer, and the rest of the same batch is already held back."""
    results = []
    for batch in (True, False):
        detector = LoopDetector(site_id=b"A" * 8)
        guard = Guard(GuardConfig(), "b", detector)
        (_peer, ours), = detector.tick(0.0)
        theirs = encode_probe(Probe(b"Z" * 8, b"n" * 8, 0))
        frames = [TCP, ARP, ours, TCP, theirs, BCAST_UDP]
        if batch:
            results.append(guard.inbound_batch(frames, 0.1))
        else:
            results.append([(i, r) for i, fr in enumerate(frames)
                            if (r := guard.inbound(fr, 0.1)) is not None])
    assert results[0] == results[1] == [
        (2, Reason.LOOP_PROBE), (3, Reason.LOOP_BLOCKED), (5, Reason.LOOP_BLOCKED)]


@given(st.lists(st.binary(max_size=90), max_size=8), st.booleans(), st.booleans(), st.booleans())
@fuzz()
def test_guards_never_raise(frames: list[bytes], dhcp: bool, vlans: bool, blocked: bool) -> None:
    detector = LoopDetector(site_id=b"A" * 8)
    config = GuardConfig(dhcp="local" if dhcp else "shared", ra="local" if dhcp else "shared",
                         vlans=(10,) if vlans else None, flood_rate=5)
    guard = Guard(config, "b", detector, known={f.HOST_B}, flaps=detector.flaps)
    guard.loop.blocked = blocked
    frames = [*frames, *(fr[:n] for fr in (TCP, OFFER, RA) for n in (0, 12, 13, 14, 20, 23))]
    for i, frame in enumerate(frames):
        assert guard.outbound(frame, i / 10, 1 + i % 3) in (None, *GUARD_DROP_REASONS)
        assert guard.inbound(frame, i / 10) in (None, *GUARD_DROP_REASONS)
    assert all(r in GUARD_DROP_REASONS for _, r in guard.inbound_batch(frames, 9.0))
