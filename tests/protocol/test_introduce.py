"""Endpoint introduction (issue 23): the INTRODUCE wire format, what an
introducer tells whom and when, and what a site takes as a hint."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridger.protocol.constants import INTRODUCE_CHECK_INTERVAL, INTRODUCE_REFRESH
from bridger.protocol.introduce import Introducer, acceptable, usable_address
from bridger.protocol.messages import (
    INTRODUCE_LEN,
    BadPacket,
    InnerType,
    Introduction,
    decode_introduce_untrusted,
    decode_path_check_untrusted,
    decode_relay_untrusted,
    encode_introduce,
    encode_path_check,
    encode_relay,
)

KEY_A, KEY_B, KEY_C, KEY_X = (bytes([n]) * 32 for n in (1, 2, 3, 9))


@pytest.mark.parametrize("endpoint", [
    ("10.100.2.2", 55555), ("192.0.2.1", 1), ("fd00:100:1::2", 65535), ("2001:db8::1", 4),
])
def test_introduce_round_trip(endpoint: tuple[str, int]) -> None:
    raw = encode_introduce(KEY_C, endpoint)
    assert len(raw) == INTRODUCE_LEN == 52
    assert raw[0] == InnerType.INTRODUCE
    assert decode_introduce_untrusted(raw) == Introduction(KEY_C, endpoint)


def test_introduce_vector() -> None:
    """The layout byte for byte: type, family, port (LE), address, key."""
    raw = encode_introduce(KEY_C, ("10.100.3.2", 0x1234))
    assert raw[:4] == bytes([6, 4, 0x34, 0x12])
    assert raw[4:20] == bytes([10, 100, 3, 2]) + bytes(12)
    assert raw[20:] == KEY_C


def test_introduce_mapped_ipv6_reads_as_ipv4() -> None:
    raw = encode_introduce(KEY_C, ("::ffff:10.1.2.3", 7))
    assert decode_introduce_untrusted(raw).endpoint == ("10.1.2.3", 7)


@pytest.mark.parametrize("endpoint", [("berlin.example", 1), ("fe80::1%eth0", 1),
                                      ("10.0.0.1", 0), ("10.0.0.1", 70000)])
def test_introduce_refuses_to_encode_what_no_peer_could_use(endpoint: tuple[str, int]) -> None:
    with pytest.raises(ValueError):
        encode_introduce(KEY_C, endpoint)


GOOD = encode_introduce(KEY_C, ("10.0.0.1", 5))


@pytest.mark.parametrize("raw, why", [
    (GOOD[:-1], "short"),
    (GOOD + b"\0", "long"),
    (GOOD[:1] + b"\x05" + GOOD[2:], "family 5"),
    (GOOD[:2] + b"\0\0" + GOOD[4:], "port 0"),
    (GOOD[:10] + b"\x01" + GOOD[11:], "IPv4 with trailing address bytes"),
    (b"", "empty"),
])
def test_introduce_bad_input_is_badpacket(raw: bytes, why: str) -> None:
    with pytest.raises(BadPacket):
        decode_introduce_untrusted(raw)


def test_relay_and_path_check_round_trip() -> None:
    datagram = b"\x04\0\0\0" + bytes(40)
    raw = encode_relay(InnerType.RELAY, KEY_B, datagram)
    assert raw[0] == InnerType.RELAY and len(raw) == 33 + len(datagram)
    assert decode_relay_untrusted(raw) == (KEY_B, datagram)
    ping = encode_path_check(InnerType.PATH_PING, 2**64 - 1)
    assert decode_path_check_untrusted(ping) == 2**64 - 1


@pytest.mark.parametrize("raw", [
    encode_relay(InnerType.RELAY, KEY_B, b"\x04\0\0"),  # no whole type word
    encode_relay(InnerType.RELAY, KEY_B, b"\x09\0\0\0" + bytes(8)),  # no such message
    encode_relay(InnerType.RELAY, KEY_B, b"\x04\0\1\0" + bytes(8)),  # reserved bytes set
    b"\x07",
])
def test_relay_bad_input_is_badpacket(raw: bytes) -> None:
    with pytest.raises(BadPacket):
        decode_relay_untrusted(raw)


@given(st.binary(max_size=200))
def test_traversal_decoders_fail_only_with_badpacket(data: bytes) -> None:
    for decode in (decode_introduce_untrusted, decode_relay_untrusted,
                   decode_path_check_untrusted):
        with contextlib.suppress(BadPacket):
            decode(data)


# -- the introducer --------------------------------------------------------------------------


def test_introducer_tells_each_direct_peer_of_every_other_once_then_on_change() -> None:
    intro = Introducer()
    b, c = (KEY_B, ("10.100.2.2", 55555), 0.0), (KEY_C, ("10.100.3.2", 40001), 0.0)
    assert intro.due([b], 0.0) == []  # one peer: nobody to introduce
    assert sorted(intro.due([b, c], 1.0)) == sorted([(KEY_B, KEY_C, c[1]), (KEY_C, KEY_B, b[1])])
    assert intro.due([b, c], 1.0 + INTRODUCE_CHECK_INTERVAL) == []
    moved = (KEY_C, ("10.100.3.2", 40002), 0.0)  # C's NAT mapped it afresh
    assert intro.due([b, moved], 2.0 + INTRODUCE_CHECK_INTERVAL) == [(KEY_B, KEY_C, moved[1])]
    later = 3.0 + INTRODUCE_REFRESH
    assert len(intro.due([b, moved], later)) == 2  # the refresh


def test_introducer_waits_for_its_check_interval() -> None:
    intro = Introducer()
    peers = [(KEY_B, ("10.0.0.2", 1), 0.0), (KEY_C, ("10.0.0.3", 1), 0.0)]
    assert len(intro.due(peers, 5.0)) == 2
    assert intro.next_deadline() == 5.0 + INTRODUCE_CHECK_INTERVAL
    intro.told.clear()
    assert intro.due(peers, 5.0 + INTRODUCE_CHECK_INTERVAL / 2) == []


def test_introducer_never_introduces_relay_or_unusable_addresses() -> None:
    intro = Introducer()
    peers = [(KEY_B, ("10.0.0.2", 1), 0.0), (KEY_C, ("via:site-a/site-c", 0), 0.0),
             (KEY_X, ("fe80::1%eth0", 5), 0.0)]
    assert intro.due(peers, 0.0) == []


@pytest.mark.parametrize("key, by, listed, endpoint, ok", [
    (KEY_C, KEY_A, {KEY_A, KEY_C}, ("10.0.0.3", 9), True),
    (KEY_X, KEY_A, {KEY_A, KEY_C}, ("10.0.0.3", 9), False),   # a key we do not list
    (KEY_A, KEY_A, {KEY_A, KEY_C}, ("10.0.0.3", 9), False),   # the introducer itself
    (KEY_B, KEY_A, {KEY_A, KEY_B}, ("10.0.0.3", 9), False),   # ourselves (KEY_B)
    (KEY_C, KEY_A, {KEY_A, KEY_C}, ("0.0.0.0", 9), False),    # nowhere
    (KEY_C, KEY_A, {KEY_A, KEY_C}, ("224.0.0.1", 9), False),  # multicast
])
def test_acceptable(key: bytes, by: bytes, listed: set[bytes], endpoint: tuple[str, int],
                    ok: bool) -> None:
    intro = Introduction(key, endpoint)
    assert acceptable(intro, own_key=KEY_B, introducer_key=by, listed=listed) is ok


def test_usable_address() -> None:
    assert usable_address(("10.1.1.1", 1))
    assert not usable_address(("via:site-a/site-b", 0))
    assert not usable_address(("10.1.1.1", 0))


def test_introducer_introduces_only_what_it_may() -> None:
    intro = Introducer()
    peers = [(KEY_B, ("10.0.0.2", 1), 0.0), (KEY_C, ("10.0.0.3", 1), 0.0)]
    assert intro.due(peers, 0.0, introducible={KEY_C}) == [(KEY_B, KEY_C, ("10.0.0.3", 1))]
    assert Introducer().due(peers, 0.0, introducible=set()) == []


def test_introducer_tells_a_peer_that_restarted_again_at_once() -> None:
    intro = Introducer()
    b, c = (KEY_B, ("10.0.0.2", 1), 0.0), (KEY_C, ("10.0.0.3", 1), 0.0)
    assert len(intro.due([b, c], 1.0)) == 2
    restarted = (KEY_B, ("10.0.0.2", 1), 5.0)  # a new session at 5 s, same address
    assert intro.due([restarted, c], 6.0) == [(KEY_B, KEY_C, ("10.0.0.3", 1))]
