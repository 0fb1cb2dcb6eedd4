"""The classifier: a table of literal frames, then properties over random ones.

Each vector is a frame as it appears on the wire (no FCS); the expected kind,
VLAN ids, ``hidden`` and ``later_fragment`` were worked out by hand from the
bytes, not by running the classifier.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridger.guard.classify import (
    FrameKind,
    Hidden,
    classify_untrusted,
    interest_tables,
    ordinary_untrusted,
)
from tests.fuzz.budget import fuzz
from tests.guard import frames as f

VECTORS = [
    (
        "ipv4_tcp",
        (
            "02000000000b02000000000a0800450000280007000040060000c0a8010ac0a8010b9c40"
            "01bb0000000100000001501001f600000000"
        ),
        FrameKind.OTHER, (), Hidden.NONE, False,
    ),
    (
        "ipv4_dhcp_offer",
        (
            "ffffffffffff02000000000a0800450000200007000040110000c0a8010ac0a8010b0043"
            "0044000c000002010600"
        ),
        FrameKind.DHCP4_SERVER, (), Hidden.NONE, False,
    ),
    (
        "vlan10_dhcp_offer",
        (
            "ffffffffffff02000000000a8100000a0800450000200007000040110000c0a8010ac0a8"
            "010b00430044000c000002010600"
        ),
        FrameKind.DHCP4_SERVER, (10,), Hidden.NONE, False,
    ),
    (
        "qinq_dhcp_offer",
        (
            "ffffffffffff02000000000a88a800648100000a0800450000200007000040110000c0a8"
            "010ac0a8010b00430044000c000002010600"
        ),
        FrameKind.DHCP4_SERVER, (100, 10), Hidden.NONE, False,
    ),
    (
        "ipv4_options_dhcp_offer",
        (
            "ffffffffffff02000000000a0800460000240007000040110000c0a8010ac0a8010b9404"
            "000000430044000c000002010600"
        ),
        FrameKind.DHCP4_SERVER, (), Hidden.NONE, False,
    ),
    (
        "ipv4_first_fragment_offer",
        (
            "ffffffffffff02000000000a0800450000200007200040110000c0a8010ac0a8010b0043"
            "0044000c000002010600"
        ),
        FrameKind.DHCP4_SERVER, (), Hidden.NONE, False,
    ),
    (
        "ipv4_later_fragment",
        (
            "ffffffffffff02000000000a08004500001c000700b940110000c0a8010ac0a8010b0043"
            "004400000000"
        ),
        FrameKind.OTHER, (), Hidden.NONE, True,
    ),
    (
        "ipv4_dhcp_client",
        (
            "ffffffffffff02000000000a08004500001c0007000040110000c0a8010ac0a8010b0044"
            "004300080000"
        ),
        FrameKind.OTHER, (), Hidden.NONE, False,
    ),
    (
        "arp_request",
        (
            "ffffffffffff02000000000a0806000108000604000102000000000ac0a8010a00000000"
            "0000c0a8010b"
        ),
        FrameKind.ARP, (), Hidden.NONE, False,
    ),
    (
        "ipv6_ra",
        (
            "33330000000102000000000a86dd6000000000103afffe80000000000000000000000000"
            "0001ff02000000000000000000000000000186000000000000000000000000000000"
        ),
        FrameKind.RA, (), Hidden.NONE, False,
    ),
    (
        "ipv6_hbh_ra",
        (
            "33330000000102000000000a86dd60000000001800fffe80000000000000000000000000"
            "0001ff0200000000000000000000000000013a0000000000000086000000000000000000"
            "000000000000"
        ),
        FrameKind.RA, (), Hidden.NONE, False,
    ),
    (
        "ipv6_three_ext_ra",
        (
            "33330000000102000000000a86dd60000000003000fffe80000000000000000000000000"
            "0001ff0200000000000000000000000000013c000000000000002b010000000000000000"
            "0000000000003a0000000000000086000000000000000000000000000000"
        ),
        FrameKind.RA, (), Hidden.NONE, False,
    ),
    (
        "ipv6_first_fragment_ra",
        (
            "33330000000102000000000a86dd6000000000182cfffe80000000000000000000000000"
            "0001ff0200000000000000000000000000013a0000010000123486000000000000000000"
            "000000000000"
        ),
        FrameKind.RA, (), Hidden.NONE, False,
    ),
    (
        "ipv6_later_fragment",
        (
            "33330000000102000000000a86dd6000000000182cfffe80000000000000000000000000"
            "0001ff0200000000000000000000000000013a0000080000123486000000000000000000"
            "000000000000"
        ),
        FrameKind.OTHER, (), Hidden.NONE, True,
    ),
    (
        "ipv6_ns",
        (
            "33330000000102000000000a86dd6000000000103afffe80000000000000000000000000"
            "0001ff02000000000000000000000000000187000000000000000000000000000000"
        ),
        FrameKind.ND, (), Hidden.NONE, False,
    ),
    (
        "ipv6_dhcp6_advertise",
        (
            "02000000000b02000000000a86dd60000000000c11fffe80000000000000000000000000"
            "0001ff02000000000000000000000000000102230222000c000002000001"
        ),
        FrameKind.DHCP6_SERVER, (), Hidden.NONE, False,
    ),
    (
        "ipv6_dstopts_dhcp6",
        (
            "02000000000b02000000000a86dd6000000000143cfffe80000000000000000000000000"
            "0001ff020000000000000000000000000001110000000000000002230222000c00000200"
            "0001"
        ),
        FrameKind.DHCP6_SERVER, (), Hidden.NONE, False,
    ),
    (
        "ipv6_fragment_cut_before_icmp",
        (
            "33330000000102000000000a86dd6000000000102cfffe80000000000000000000000000"
            "0001ff0200000000000000000000000000013c000001000012343a01000000000000"
        ),
        FrameKind.OTHER, (), Hidden.RA, False,
    ),
    (
        "ipv6_nine_ext_ra",
        (
            "33330000000102000000000a86dd6000000000583cfffe80000000000000000000000000"
            "0001ff0200000000000000000000000000013c000000000000003c000000000000003c00"
            "0000000000003c000000000000003c000000000000003c000000000000003c0000000000"
            "00003c000000000000003a0000000000000086000000000000000000000000000000"
        ),
        FrameKind.OTHER, (), Hidden.ANY, False,
    ),
    (
        "three_tags_offer",
        (
            "ffffffffffff02000000000a88a80001810000028100000308004500001c000700004011"
            "0000c0a8010ac0a8010b0043004400080000"
        ),
        FrameKind.OTHER, (1, 2), Hidden.ANY, False,
    ),
    (
        "bpdu",
        (
            "0180c200000002000000000a002642420300000000000000000000000000000000000000"
            "00000000000000000000000000000000"
        ),
        FrameKind.LINK_LOCAL, (), Hidden.NONE, False,
    ),
    (
        "runt",
        (
            "00000000000000000000"
        ),
        FrameKind.OTHER, (), Hidden.ANY, False,
    ),
    (
        "ipv4_udp_cut",
        (
            "ffffffffffff02000000000a08004500001c0007000040110000c0a8010ac0a8010b0043"
        ),
        FrameKind.OTHER, (), Hidden.DHCP, False,
    ),
    (
        "ipv6_ah_ra",
        (
            "33330000000102000000000a86dd60000000002833fffe80000000000000000000000000"
            "0001ff0200000000000000000000000000013a0400000000000000000000000000000000"
            "00000000000086000000000000000000000000000000"
        ),
        FrameKind.RA, (), Hidden.NONE, False,
    ),
    (
        "priority_tag_tcp",
        (
            "02000000000b02000000000a810060000800450000280007000040060000c0a8010ac0a8"
            "010b9c4001bb0000000100000001501001f600000000"
        ),
        FrameKind.OTHER, (0,), Hidden.NONE, False,
    ),
    (
        "ipv6_esp",
        (
            "02000000000b02000000000a86dd60000000001832fffe80000000000000000000000000"
            "0001ff020000000000000000000000000001000000000000000000000000000000000000"
            "000000000000"
        ),
        FrameKind.OTHER, (), Hidden.NONE, False,
    ),
    (
        "ipv6_hbh_tcp",
        (
            "02000000000b02000000000a86dd60000000001c00fffe80000000000000000000000000"
            "0001ff02000000000000000000000000000106000000000000009c4001bb000000010000"
            "0001501001f600000000"
        ),
        FrameKind.OTHER, (), Hidden.NONE, False,
    ),]


@pytest.mark.parametrize(("name", "hexframe", "kind", "vlans", "hidden", "later"), VECTORS,
                         ids=[v[0] for v in VECTORS])
def test_vector(
    name: str, hexframe: str, kind: FrameKind, vlans: tuple[int, ...], hidden: Hidden, later: bool
) -> None:
    info = classify_untrusted(bytes.fromhex(hexframe))
    assert (info.kind, info.vlans, info.hidden, info.later_fragment) == (
        kind, vlans, hidden, later
    ), name


def test_group_bit_and_outer_vlan() -> None:
    table = {v[0]: bytes.fromhex(v[1]) for v in VECTORS}
    assert classify_untrusted(table["ipv4_dhcp_offer"]).group
    assert not classify_untrusted(table["ipv4_tcp"]).group
    assert classify_untrusted(table["qinq_dhcp_offer"]).outer_vlan == 100
    assert classify_untrusted(table["priority_tag_tcp"]).outer_vlan == 0  # a priority tag
    probe = classify_untrusted(table["bpdu"])
    assert probe.group and probe.ethertype == 38  # an 802.3 length, not an EtherType


def test_ipv4_ihl_moves_the_udp_header() -> None:
    # 8 bytes of options: ports 67->68 at the IHL offset, not right after 20 bytes.
    # Bytes 20-23 of the IP header (the first option word) read "00 43 00 44" and
    # must not be taken for ports; the real ports are 68 -> 67 (a client message).
    frame = f.eth(f.BROADCAST, 0x0800, f.ipv4(17, f.udp(68, 67), options=b"\x00\x43\x00\x44"))
    assert classify_untrusted(frame).kind == FrameKind.OTHER
    frame = f.eth(f.BROADCAST, 0x0800, f.ipv4(17, f.dhcp_offer(), options=bytes(8)))
    assert classify_untrusted(frame).kind == FrameKind.DHCP4_SERVER


def test_probe_is_classified_tagged_or_not() -> None:
    body = b"BRGD\x01" + bytes(40)
    assert classify_untrusted(f.eth(f.BROADCAST, 0x88B5, body)).kind == FrameKind.LOOP_PROBE
    tagged = classify_untrusted(f.eth(f.BROADCAST, 0x88B5, body, ((0x8100, 7),)))
    assert (tagged.kind, tagged.l3) == (FrameKind.LOOP_PROBE, 18)


# --- properties ----------------------------------------------------------------

TPIDS = st.sampled_from([0x8100, 0x88A8, 0x9100])
TAGS = st.lists(st.tuples(TPIDS, st.integers(0, 4095)), max_size=2).map(tuple)
EXT_KINDS = st.sampled_from([0, 43, 60])


@st.composite
def dhcp_server_frames(draw: st.DrawFn) -> bytes:
    """A DHCPv4 or DHCPv6 server message at tag depth 0-2, with IPv4 options or
    up to three IPv6 extension headers (maybe a first-fragment header)."""
    tags = draw(TAGS)
    dst = draw(st.sampled_from([f.BROADCAST, f.HOST_B]))
    if draw(st.booleans()):
        options = bytes(4 * draw(st.integers(0, 10)))
        more = draw(st.booleans())
        return f.eth(dst, 0x0800, f.ipv4(17, f.dhcp_offer(), options, 0, more), tags)
    chain = b""
    headers = draw(st.lists(EXT_KINDS, max_size=3))
    nexts = [*headers[1:], 17]
    for i in range(len(headers)):
        chain += f.ext(nexts[i], draw(st.sampled_from([6, 14, 22])))
    first = headers[0] if headers else 17
    if draw(st.booleans()):
        chain = f.frag6(first, 0, True) + chain
        first = 44
    return f.eth(dst, 0x86DD, f.ipv6(first, chain + f.dhcp6_advertise()), tags)


@given(dhcp_server_frames())
@fuzz()
def test_dhcp_server_messages_caught_at_any_depth(frame: bytes) -> None:
    kind = classify_untrusted(frame).kind
    assert kind in (FrameKind.DHCP4_SERVER, FrameKind.DHCP6_SERVER)
    v4, v6 = interest_tables(dhcp=True, ra=False)
    assert ordinary_untrusted(frame, v4, v6) == -1


@given(st.binary(max_size=200))
@fuzz()
def test_random_bytes_never_raise(data: bytes) -> None:
    info = classify_untrusted(data)
    assert isinstance(info.kind, FrameKind)
    for dhcp in (False, True):
        for ra in (False, True):
            ordinary_untrusted(data, *interest_tables(dhcp, ra))


ETHERTYPES = st.sampled_from([0x0800, 0x86DD, 0x0806, 0x88B5, 0x8100, 0x88A8, 0x1234])


@st.composite
def plausible_frames(draw: st.DrawFn) -> bytes:
    """Frames that get deep into the parsers: real-looking headers, then random
    bytes, cut anywhere."""
    tags = draw(TAGS)
    et = draw(ETHERTYPES)
    if et == 0x0800:
        body = f.ipv4(draw(st.sampled_from([6, 17, 1])), draw(st.binary(max_size=40)),
                      bytes(4 * draw(st.integers(0, 3))), draw(st.sampled_from([0, 0, 1, 185])),
                      draw(st.booleans()))
    elif et == 0x86DD:
        body = f.ipv6(draw(st.sampled_from([0, 6, 17, 43, 44, 50, 51, 58, 59, 60])),
                      draw(st.binary(max_size=80)))
    else:
        body = draw(st.binary(max_size=60))
    frame = f.eth(draw(st.sampled_from([f.BROADCAST, f.HOST_B, bytes.fromhex("0180c2000000")])),
                  et, body, tags)
    cut = draw(st.integers(0, len(frame)))
    return frame[:cut] if draw(st.booleans()) else frame


@given(plausible_frames(), st.booleans(), st.booleans())
@fuzz(2.0)
def test_precheck_agrees_with_the_classifier(frame: bytes, dhcp: bool, ra: bool) -> None:
    """Whenever the hot-path pre-check says "ordinary", the full look finds
    nothing an enabled guard acts on, and the same outer VLAN."""
    vid = ordinary_untrusted(frame, *interest_tables(dhcp, ra))
    info = classify_untrusted(frame)
    if vid < 0:
        return
    assert vid == info.outer_vlan
    assert info.kind != FrameKind.LOOP_PROBE
    if dhcp:
        assert info.kind not in (FrameKind.DHCP4_SERVER, FrameKind.DHCP6_SERVER)
    if ra:
        assert info.kind != FrameKind.RA
    if dhcp:
        assert not info.hidden & Hidden.DHCP
    if ra:
        assert not info.hidden & Hidden.RA


@given(plausible_frames())
@fuzz()
def test_no_guard_means_only_tags_and_probes_need_a_look(frame: bytes) -> None:
    """With no DHCP/RA guard, IP frames at tag depth 0-2 all pass the pre-check."""
    info = classify_untrusted(frame)
    vid = ordinary_untrusted(frame, *interest_tables(False, False))
    if info.ethertype in (0x0800, 0x86DD) and len(frame) >= info.l3 + 10 and not info.hidden:
        assert vid == info.outer_vlan


def test_other_uses_of_the_experimental_ethertype_are_ordinary_frames() -> None:
    """0x88B5 is anyone's local experiment: only frames with our probe header are
    probes (a test's raw 0x88B5 frames were held to the 200/s control budget)."""
    from bridger.guard.classify import FrameKind, classify_untrusted

    head = bytes.fromhex("020000000002" "020000000001" "88b5")
    assert classify_untrusted(head + bytes(50)).kind == FrameKind.OTHER
    assert classify_untrusted(head + b"BRGD\x02" + bytes(45)).kind == FrameKind.OTHER
    assert classify_untrusted(head + b"BRGD\x01" + bytes(45)).kind == FrameKind.LOOP_PROBE
