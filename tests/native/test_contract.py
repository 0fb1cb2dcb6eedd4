"""The lane's contract with Python is defined once: the constants of
``bridger.native.contract`` equal bn_lane.h's / bn.h's ``#define``s and enums
(parsed here) and ``bridger.protocol``'s, the records' fields are the order
the binding builds its tuples in, and the lane's mac1 check (libsodium's
``crypto_generichash``) agrees with ``cookie.CookieChecker.check_mac1``."""

from __future__ import annotations

import random
import re
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridger.guard import constants as guard_constants
from bridger.guard import loop
from bridger.native import contract
from bridger.native import lane as native
from bridger.protocol import constants, messages
from bridger.protocol.cookie import CookieChecker, CookieGenerator
from bridger.shell.forward import ERROR_QUEUE_INTERVAL

SRC = Path(__file__).resolve().parents[2] / "bridger" / "native" / "src"


def defines() -> dict[str, str]:
    """``#define NAME value`` of bn.h and bn_lane.h (value text as written)."""
    out: dict[str, str] = {}
    for name in ("bn.h", "bn_lane.h"):
        for m in re.finditer(r"^#define (BN_\w+) (.+?)\s*$", (SRC / name).read_text(), re.M):
            out[m.group(1)] = m.group(2)
    return out


def punt_enum() -> dict[str, int]:
    """The BN_PUNT_* enum of bn_lane.h, numbered as C numbers it."""
    text = (SRC / "bn_lane.h").read_text()
    body = re.search(r"enum \{\s*(BN_PUNT_[^}]*)\}", text)
    assert body is not None
    out: dict[str, int] = {}
    value = -1
    for m in re.finditer(r"(BN_PUNT_\w+)(?:\s*=\s*(\d+))?", body.group(1)):
        value = int(m.group(2)) if m.group(2) else value + 1
        out[m.group(1).removeprefix("BN_PUNT_")] = value
    return out


def test_punt_kinds_mirror_the_c_enum() -> None:
    assert punt_enum() == {kind.name: int(kind) for kind in contract.Punt}


def test_constants_are_the_c_ones() -> None:
    d = defines()
    assert int(d["BN_MAX_PORTS"]) == contract.MAX_PORTS
    assert int(d["BN_BATCH"]) == contract.BATCH
    assert int(d["BN_HS_QUEUE"]) == contract.HS_QUEUE
    assert float(d["BN_HS_RATE"]) == contract.HS_RATE
    assert float(d["BN_HS_BURST"]) == contract.HS_BURST
    assert float(d["BN_HS_SOURCE_RATE"]) == contract.HS_SOURCE_RATE
    assert float(d["BN_HS_SOURCE_BURST"]) == contract.HS_SOURCE_BURST
    assert int(d["BN_HS_SOURCES"]) == contract.HS_SOURCES
    assert int(d["BN_MAX_PY_INDEXES"]) == contract.MAX_PY_INDEXES
    assert int(d["BN_MAC1_KEY_LEN"]) == contract.MAC1_KEY_LEN
    assert float(d["BN_REJECT_AFTER_TIME"]) == contract.REJECT_AFTER_TIME
    assert float(d["BN_MTU_INTERVAL"]) == contract.MTU_INTERVAL
    # the lane's path-MTU reports come as often as Python reads the error queue
    assert contract.MTU_INTERVAL == ERROR_QUEUE_INTERVAL
    assert int(d["BN_ERRQ_BATCH"]) == contract.ERRQ_BATCH


def test_spec_constants_copied_into_c_equal_the_protocols() -> None:
    d = defines()
    assert contract.REJECT_AFTER_TIME == constants.REJECT_AFTER_TIME
    assert d["BN_REJECT_AFTER_MESSAGES"] == "(UINT64_MAX - (UINT64_C(1) << 13))"
    assert constants.REJECT_AFTER_MESSAGES == (1 << 64) - 1 - (1 << 13)
    assert int(d["BN_MSG_INITIATION"]) == messages.MessageType.HANDSHAKE_INITIATION
    assert int(d["BN_MSG_RESPONSE"]) == messages.MessageType.HANDSHAKE_RESPONSE
    assert int(d["BN_MSG_COOKIE_REPLY"]) == messages.MessageType.COOKIE_REPLY
    assert int(d["BN_MSG_TRANSPORT"]) == messages.MessageType.TRANSPORT
    assert int(d["BN_INITIATION_LEN"]) == messages.INITIATION_LEN
    assert int(d["BN_RESPONSE_LEN"]) == messages.RESPONSE_LEN
    assert int(d["BN_COOKIE_REPLY_LEN"]) == messages.COOKIE_REPLY_LEN
    assert int(d["BN_MAC_LEN"]) == constants.MAC_LEN
    assert int(d["BN_TRANSPORT_HEADER"]) == constants.TRANSPORT_HEADER_LEN
    assert int(d["BN_TRANSPORT_OVERHEAD"]) == messages.MIN_TRANSPORT_LEN
    assert len(contract.mac1_key(bytes(32))) == contract.MAC1_KEY_LEN
    # the lane's look at another site's loop probe (bn_guard.c foreign_probe)
    assert int(d["BN_PROBE_BODY_LEN"]) == loop.PROBE_BODY.size
    assert d["BN_PROBE_MAGIC"] == '"' + guard_constants.PROBE_MAGIC.decode() + '"'
    assert int(d["BN_PROBE_VERSION"]) == guard_constants.PROBE_VERSION
    assert int(d["BN_PROBE_FLAG_RELAY"], 0) == loop.FLAG_RELAY
    assert int(d["BN_SITE_ID_LEN"]) == loop.SITE_ID_LEN


needs_lane = pytest.mark.skipif(native is None, reason="bridger.native._lane is not built")


@needs_lane
def test_records_have_the_fields_the_binding_builds() -> None:
    assert native is not None
    assert contract.PortStats._fields == native.PORT_STAT_FIELDS
    assert contract.LaneStats._fields == native.LANE_STAT_FIELDS
    assert contract.DirCounts._fields == native.DIR_FIELDS
    assert contract.MacLogEntry._fields == native.MACLOG_FIELDS
    assert native.MAX_PORTS == contract.MAX_PORTS


# ---- mac1: the lane's check against CookieChecker's -----------------------------------

OURS = bytes(range(32))
ADDR = ("127.0.0.1", 40000)


def _lane():  # type: ignore[no-untyped-def]
    assert native is not None
    lane = native.Lane(-1, False, False, False, 0.0)
    lane.set_mac1_key(contract.mac1_key(OURS))
    return lane


def lane_verdict(lane, msg: bytes) -> str:  # type: ignore[no-untyped-def]
    """What the lane did with one datagram: queued, or the drop it counted."""
    lane.udp_receive([msg], ADDR)
    punts = contract.take_punts(lane)
    stats = contract.take_stats(lane).lane
    if punts:
        assert punts == [contract.HandshakePunt(msg, ADDR)]
        return "queued"
    if stats.drop_mac1:
        return "mac1"
    if stats.drop_malformed:
        return "malformed"
    if stats.handshakes_shed:
        return "shed"
    return "?"


def python_mac1(msg: bytes) -> bool:
    checker = CookieChecker(OURS, random.Random(1).randbytes)
    return checker.check_mac1(msg, len(msg) - 2 * constants.MAC_LEN)


@needs_lane
@settings(max_examples=200, deadline=None)
@given(st.sampled_from([(1, messages.INITIATION_LEN), (2, messages.RESPONSE_LEN)]),
       st.binary(min_size=200, max_size=200), st.booleans(), st.integers(0, 255))
def test_the_lanes_mac1_check_is_cookie_checkers(kind: tuple[int, int], body: bytes,
                                                 valid: bool, flip: int) -> None:
    """Valid mac1s (made by CookieGenerator), and the same with one byte of the
    message or its mac1 changed: the lane queues exactly those Python accepts
    and counts the others as handshake_mac1."""
    word, size = kind
    template = struct.pack("<I", word) + body[: size - 4 - 2 * constants.MAC_LEN]
    msg = CookieGenerator(OURS).add_macs(template + bytes(2 * constants.MAC_LEN), 0.0)
    if not valid:
        buf = bytearray(msg)
        buf[4 + flip % (size - 4 - constants.MAC_LEN)] ^= 1 + flip % 255
        msg = bytes(buf)
    lane = _lane()
    try:
        verdict = lane_verdict(lane, msg)
    finally:
        lane.close()
    assert verdict == ("queued" if python_mac1(msg) else "mac1")


@needs_lane
@pytest.mark.parametrize("msg, verdict", [
    (b"", "malformed"),
    (b"\x01\0\0", "malformed"),
    (b"\x01\0\0\0" + bytes(100), "malformed"),       # an initiation of the wrong length
    (b"\x01\0\0\x01" + bytes(144), "malformed"),     # reserved bytes set: no message type
    (b"\x07\0\0\0" + bytes(60), "malformed"),        # no such type
    (b"\x03\0\0\0" + bytes(61), "malformed"),        # a cookie reply of the wrong length
    (b"\x03\0\0\0" + bytes(60), "queued"),           # cookie replies carry no mac1
    (b"\x01\0\0\0" + bytes(144), "mac1"),
    (b"\x02\0\0\0" + bytes(88), "mac1"),
])
def test_what_the_lane_drops_before_python_sees_it(msg: bytes, verdict: str) -> None:
    lane = _lane()
    try:
        assert lane_verdict(lane, msg) == verdict
        assert lane.held == []  # nothing handed over: the socket stays the lane's
    finally:
        lane.close()


def _valid_initiation() -> bytes:
    template = b"\x01\0\0\0" + bytes(messages.INITIATION_MAC1_OFFSET - 4)
    return CookieGenerator(OURS).add_macs(template + bytes(2 * constants.MAC_LEN), 0.0)


@needs_lane
def test_one_strangers_handshakes_are_admitted_at_its_own_rate() -> None:
    """A burst of valid-mac1 initiations from one address that is no peer's
    endpoint: HS_SOURCE_BURST are queued, the rest shed and counted; another
    address still gets its own share (issue 21: per-source limits in C)."""
    lane = _lane()
    msg = _valid_initiation()
    try:
        began = time.monotonic()
        lane.udp_receive([msg] * 1000, ADDR)
        refill = contract.HS_SOURCE_RATE * (time.monotonic() - began) + 1
        queued = len(contract.take_punts(lane))
        stats = contract.take_stats(lane).lane
        assert contract.HS_SOURCE_BURST <= queued <= contract.HS_SOURCE_BURST + refill
        assert stats.handshakes_shed == 1000 - queued
        assert stats.handshakes_queued == queued
        assert stats.rx_datagrams == 1000 - queued  # the shed ones are counted received
        lane.udp_receive([msg] * 10, ("127.0.0.2", 40000))
        assert len(contract.take_punts(lane)) >= contract.HS_SOURCE_BURST
    finally:
        lane.close()


def _source_slot(host: str) -> int:
    """The lane's slot of an IPv4 source (bn_lane_rx.c's hs_admit: FNV-1a of the
    IPv4-mapped address, modulo HS_SOURCES)."""
    h = 2166136261
    for byte in bytes(10) + b"\xff\xff" + bytes(map(int, host.split("."))):
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h % contract.HS_SOURCES


@needs_lane
def test_a_collision_never_refills_a_flooders_bucket() -> None:
    """Addresses that share a flooding address's slot share its empty bucket: a
    spray from many addresses cannot keep handing one address a fresh burst
    (the WAN attack lab saw 28/s of cookie replies to one address that way)."""
    slot = _source_slot(ADDR[0])
    colliders = [a for a in (f"10.66.{i >> 8}.{i & 255}" for i in range(65536))
                 if _source_slot(a) == slot][:5]
    assert len(colliders) == 5
    lane = _lane()
    msg = _valid_initiation()
    try:
        lane.udp_receive([msg] * 100, ADDR)  # its burst, then shed
        contract.take_punts(lane)
        began = time.monotonic()
        for other in colliders:
            lane.udp_receive([msg], (other, 40000))
            lane.udp_receive([msg] * 20, ADDR)
        refill = contract.HS_SOURCE_RATE * (time.monotonic() - began) + 1
        assert len(contract.take_punts(lane)) <= refill
    finally:
        lane.close()


@needs_lane
def test_one_ipv6_64_is_one_source() -> None:
    """An IPv6 host may own a whole /64: its addresses share one bucket."""
    lane = _lane()
    msg = _valid_initiation()
    try:
        began = time.monotonic()
        for i in range(1, 101):
            lane.udp_receive([msg], (f"2001:db8:1:2::{i:x}", 40000))
        refill = contract.HS_SOURCE_RATE * (time.monotonic() - began) + 1
        queued = len(contract.take_punts(lane))
        assert contract.HS_SOURCE_BURST <= queued <= contract.HS_SOURCE_BURST + refill
    finally:
        lane.close()


@needs_lane
def test_strangers_handshakes_are_admitted_at_a_bounded_rate() -> None:
    """Valid-mac1 initiations from many addresses (spoofed): HS_BURST are
    queued in all, the rest shed and counted; the queue never exceeds
    HS_QUEUE whatever comes."""
    lane = _lane()
    msg = _valid_initiation()
    try:
        began = time.monotonic()
        for i in range(1000):
            lane.udp_receive([msg], (f"10.66.{i >> 8}.{i & 255}", 40000))
        refill = contract.HS_RATE * (time.monotonic() - began) + 1  # (what the clock refilled)
        queued = len(contract.take_punts(lane))
        stats = contract.take_stats(lane).lane
        assert contract.HS_BURST <= queued <= contract.HS_BURST + refill
        assert queued <= contract.HS_QUEUE
        assert stats.handshakes_shed == 1000 - queued
        assert stats.handshakes_queued == queued
    finally:
        lane.close()
