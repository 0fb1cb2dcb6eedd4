"""The C twins of checksum / segment_tcp / clamp_mss / coalesce against the Python references.

Every test feeds the same input to bridger.native._lane and to the pure-Python
function and requires the same bytes, or a failure on both sides (SegmentError
-- or struct.error, which the Python raises for a few nonsensical IPv6
csum_start values -- against the binding's ValueError).
"""

from __future__ import annotations

import importlib
import os
import random
import struct
from collections.abc import Sequence
from types import ModuleType
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridger.fastpath import segment as seg
from bridger.fastpath.vnet import VNET_HDR, GsoType, VnetFlag, decode_vnet_hdr_untrusted
from bridger.protocol import checksum

lane: ModuleType | None
try:
    lane = importlib.import_module("bridger.native._lane")
except ImportError:  # not built: only the root check below runs (and fails as root)
    lane = None

needs_lane = pytest.mark.skipif(lane is None, reason="bridger.native._lane is not built")
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
FIN, SYN, PSH, ACK, CWR, ECE = 0x01, 0x02, 0x08, 0x10, 0x80, 0x40
MAC = bytes.fromhex("020000000002" "020000000001")
TS_OPTION = bytes([1, 1, 8, 10]) + struct.pack(">II", 1000, 2000)


def test_extension_built_when_root() -> None:
    """As root (CI) the extension is always built: a missing one is a failure, not a skip."""
    if os.geteuid() == 0:
        assert lane is not None, "bridger.native._lane failed to import as root"


def c() -> ModuleType:
    assert lane is not None
    return lane


# ---- frame builders (independent of bridger.fastpath) ----------------------------------

def ethernet(ethertype: int, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    head = MAC
    for tpid, tci in tags:
        head += struct.pack(">HH", tpid, tci)
    return head + struct.pack(">H", ethertype)


def tcp_frame(payload: bytes, *, v4: bool = True, tags: tuple[tuple[int, int], ...] = (),
              flags: int = ACK, seq: int = 0xFFFFF000, ident: int = 0xFFFE,
              options: bytes = TS_OPTION, ip_options: bytes = b"", ext: bytes = b"",
              sport: int = 40000) -> bytes:
    """A TCP superframe as a sender's kernel hands it to tap (lengths may be anything)."""
    doff = (20 + len(options)) // 4
    tcp = struct.pack(">HHIIBBHHH", sport, 5201, seq, 77, doff << 4, flags, 502, 0x1234, 0)
    tcp += options + payload
    if v4:
        ihl = 5 + len(ip_options) // 4
        ip = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, (20 + len(ip_options) + len(tcp)) & 0xFFFF,
                         ident, 0x4000, 64, 6, 0, bytes([192, 168, 1, 11]),
                         bytes([192, 168, 1, 21])) + ip_options
        return ethernet(ETH_P_IP, tags) + ip + tcp
    nxt = 0 if ext else 6  # hop-by-hop in front of TCP
    ip = struct.pack(">IHBB16s16s", 0x60000000, (len(ext) + len(tcp)) & 0xFFFF, nxt, 64,
                     bytes.fromhex("fd00000b" + "0" * 22 + "11"),
                     bytes.fromhex("fd00000b" + "0" * 22 + "21"))
    return ethernet(ETH_P_IPV6, tags) + ip + ext + tcp


def l4_of(v4: bool, tags: int, ip_options: bytes = b"", ext: bytes = b"") -> int:
    return 14 + 4 * tags + (20 + len(ip_options) if v4 else 40 + len(ext))


def vnet(csum_start: int, gso_size: int, *, v4: bool = True, flags: int = VnetFlag.NEEDS_CSUM,
         ecn: bool = False) -> bytes:
    gso = int(GsoType.TCPV4 if v4 else GsoType.TCPV6) | (0x80 if ecn else 0)
    return VNET_HDR.pack(flags, gso, csum_start + 32, gso_size, csum_start, 16)


# ---- the two sides ----------------------------------------------------------------------

Outcome = tuple[list[bytes], int] | str
Written = list[tuple[bytes, bytes, int, int]]
Frame = bytes | bytearray


def py_segment(frame: Frame, hdr: bytes, max_frame: int) -> Outcome:
    try:
        return seg.segment_tcp(cast(bytes, frame), decode_vnet_hdr_untrusted(hdr), max_frame)
    except (seg.SegmentError, struct.error):
        return "error"


def c_segment(frame: Frame, hdr: bytes, max_frame: int) -> Outcome:
    try:
        segments, start = c().segment_tcp(frame, hdr, max_frame)
    except ValueError:
        return "error"
    return segments, start


def same_segments(frame: Frame, hdr: bytes, max_frame: int) -> Outcome:
    expected = py_segment(frame, hdr, max_frame)
    assert c_segment(frame, hdr, max_frame) == expected
    return expected


def py_coalesce(frames: Sequence[Frame], csum: dict[int, tuple[int, int]]) -> Written | None:
    try:
        return list(seg.coalesce(cast(list[bytes], list(frames)), csum))
    except struct.error:  # a nonsensical IPv6 csum_start: the Python itself fails
        return None


def same_coalesce(frames: Sequence[Frame], csum: dict[int, tuple[int, int]]) -> Written | None:
    expected = py_coalesce(frames, csum)
    got: Written = c().coalesce(frames, csum)
    if expected is not None:
        assert got == expected
        assert [type(x) for t in got for x in t] == [type(x) for t in expected for x in t]
    return expected


# ---- ones_sum / complete_checksum --------------------------------------------------------

@needs_lane
@pytest.mark.parametrize("data", [
    b"", b"\0", b"\x01", b"\xff", b"\xff\xff", b"\xff\xff" * 7 + b"\xff", bytes(64),
    b"\xff" * 65535, b"\x80\x00" * 3, bytes(range(256)) * 257, b"\x00\x01" * 32769,
])
def test_ones_sum_vectors(data: bytes) -> None:
    assert c().ones_sum(data) == checksum.ones_sum(data)
    assert c().ones_sum(bytearray(data)) == checksum.ones_sum(data)
    assert c().ones_sum(memoryview(b"x" + data)[1:]) == checksum.ones_sum(data)


@needs_lane
@FAST
@given(st.binary(max_size=600) | st.builds(lambda n, b: bytes([b]) * n,
                                           st.integers(0, 3000), st.sampled_from([0, 0xFF, 1])))
def test_ones_sum_random(data: bytes) -> None:
    assert c().ones_sum(data) == checksum.ones_sum(data)


@needs_lane
@FAST
@given(st.binary(max_size=200), st.integers(0, 220), st.integers(0, 220))
def test_complete_checksum_random(frame: bytes, start: int, offset: int) -> None:
    if start + offset + 2 <= len(frame):
        assert c().complete_checksum(frame, start, offset) == checksum.complete_checksum(
            frame, start, offset)
    else:
        with pytest.raises(ValueError):
            c().complete_checksum(frame, start, offset)


@needs_lane
def test_complete_checksum_of_segments_verifies() -> None:
    frame = tcp_frame(os.urandom(3001))
    segments, start = c().segment_tcp(frame, vnet(34, 1448), 1500)
    for s in segments:
        done = c().complete_checksum(s, start, 16)
        assert done == checksum.complete_checksum(s, start, 16)


# ---- segment_tcp: fixed vectors ----------------------------------------------------------

TAGS = {0: (), 1: ((0x8100, 7),), 2: ((0x88A8, 5), (0x8100, 7))}
SEGMENT_CASES = [
    # v4, tags, payload, gso_size, max_frame, tcp flags, options, ip options / ext
    pytest.param(True, 0, 5000, 1448, 1514, ACK, TS_OPTION, b"", id="ipv4"),
    pytest.param(False, 0, 5000, 1428, 1514, ACK, TS_OPTION, b"", id="ipv6"),
    pytest.param(True, 1, 3001, 1448, 1500, ACK | PSH, TS_OPTION, b"", id="ipv4-vlan-psh-odd"),
    pytest.param(False, 2, 4097, 1428, 1400, ACK | FIN | PSH, b"", b"", id="ipv6-qinq-fin"),
    pytest.param(True, 0, 1000, 1448, 1514, ACK | CWR | ECE, TS_OPTION, b"", id="one-seg-cwr"),
    pytest.param(True, 0, 9000, 1448, 1514, ACK | CWR | FIN, TS_OPTION, b"", id="cwr-fin"),
    pytest.param(False, 1, 7777, 0, 1280, ACK | CWR | PSH, TS_OPTION, b"", id="ipv6-gso0"),
    pytest.param(True, 0, 65000 - 66, 1448, 1514, ACK, TS_OPTION, b"", id="ipv4-64k"),
    pytest.param(True, 0, 100, 1448, 14 + 20 + 32 + 1, ACK, TS_OPTION, b"", id="tiny-max"),
    pytest.param(True, 0, 0, 1448, 1514, ACK | FIN, TS_OPTION, b"", id="no-payload"),
    pytest.param(True, 2, 2000, 536, 1514, ACK, bytes(40), bytes(40), id="max-options"),
    pytest.param(True, 0, 2000, 1448, 14 + 20 + 32, ACK, TS_OPTION, b"", id="no-room"),
]


@needs_lane
@pytest.mark.parametrize("v4, tags, size, gso, max_frame, flags, options, extra", SEGMENT_CASES)
def test_segment_vectors(v4: bool, tags: int, size: int, gso: int, max_frame: int, flags: int,
                         options: bytes, extra: bytes) -> None:
    payload = random.Random(size).randbytes(size)
    ip_options, ext = (extra, b"") if v4 else (b"", extra)
    frame = tcp_frame(payload, v4=v4, tags=TAGS[tags], flags=flags, options=options,
                      ip_options=ip_options, ext=ext)
    start = l4_of(v4, tags, ip_options, ext)
    for hdr in (vnet(start, gso, v4=v4), vnet(start, gso, v4=v4, flags=0),
                vnet(start + 4, gso, v4=v4), vnet(start, gso, v4=v4, ecn=True)):
        same_segments(frame, hdr, max_frame)
        same_segments(bytearray(frame), hdr, max_frame)


@needs_lane
def test_segment_ipv6_extension_header() -> None:
    ext = bytes([6, 0, 1, 4, 0, 0, 0, 0])  # hop-by-hop, next header TCP, PadN
    frame = tcp_frame(os.urandom(3000), v4=False, ext=ext)
    out = same_segments(frame, vnet(62, 1400, v4=False), 1500)
    assert out != "error"
    assert same_segments(frame, vnet(62, 1400, v4=False, flags=0), 1500) == "error"


@needs_lane
def test_segment_ipv6_csum_start_in_front() -> None:
    """csum_start inside the MAC header of an IPv6 frame: the headers end before
    the payload length field, Python's pack_into raises; the C refuses too."""
    frame = tcp_frame(bytes(600), v4=False, tags=TAGS[2])
    frame = frame[:14] + b"\x60" + frame[15:]  # data offset 6 at csum_start 2: hdrlen 26
    assert py_segment(frame, vnet(2, 0, v4=False), 300) == "error"
    assert c_segment(frame, vnet(2, 0, v4=False), 300) == "error"


@needs_lane
@pytest.mark.parametrize("frame", [
    b"", bytes(13), bytes(14), MAC + b"\x08\x06" + bytes(28),
    tcp_frame(b"x")[:40], tcp_frame(b"x")[:53],
    ethernet(0x8100, ((0x8100, 1), (0x8100, 2))) + bytes(60),  # three tags
])
def test_segment_rejects(frame: bytes) -> None:
    assert same_segments(frame, vnet(34, 1448), 1514) == "error"


@needs_lane
def test_segment_binding_arguments() -> None:
    frame = tcp_frame(b"abc")
    with pytest.raises(ValueError):
        c().segment_tcp(frame, b"short", 1514)
    with pytest.raises(ValueError):
        c().segment_tcp(frame, vnet(34, 0), 2**40)
    with pytest.raises(TypeError):
        c().segment_tcp("text", vnet(34, 0), 1514)
    with pytest.raises(TypeError):
        c().segment_tcp(frame, vnet(34, 0), "1514")


# ---- segment_tcp: hypothesis ---------------------------------------------------------------

@st.composite
def superframes(draw: st.DrawFn) -> tuple[bytes, bytes, int]:
    v4 = draw(st.booleans())
    ntags = draw(st.integers(0, 2))
    tags = tuple((draw(st.sampled_from([0x8100, 0x88A8, 0x9100])), draw(st.integers(0, 0xFFFF)))
                 for _ in range(ntags))
    options = bytes(draw(st.integers(0, 10)) * 4) if draw(st.booleans()) else TS_OPTION
    extra = draw(st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4]))
    if not v4:
        extra = extra[:8] if extra else b""
        if extra:
            extra = bytes([6, 0]) + extra[2:]
    ip_options, ext = (extra, b"") if v4 else (b"", extra)
    size = draw(st.integers(0, 3000))
    frame = tcp_frame(draw(st.binary(min_size=size, max_size=size)), v4=v4, tags=tags,
                      flags=draw(st.integers(0, 255)), seq=draw(st.integers(0, 2**32 - 1)),
                      ident=draw(st.integers(0, 0xFFFF)), options=options,
                      ip_options=ip_options, ext=ext)
    start = l4_of(v4, ntags, ip_options, ext)
    if draw(st.booleans()):
        start = draw(st.integers(0, 120))
    gso = draw(st.sampled_from([0, 1, 7, 536, 1448]) | st.integers(0, 0xFFFF))
    if size > 300 and gso and gso < 8:
        gso = 8  # keep the segment count (and the Python's run time) modest
    flags = draw(st.sampled_from([VnetFlag.NEEDS_CSUM, 0, 3, 0xFF]))
    hdr = VNET_HDR.pack(flags, draw(st.integers(0, 255)), draw(st.integers(0, 0xFFFF)), gso,
                        start, draw(st.integers(0, 0xFFFF)))
    max_frame = draw(st.integers(-5, 400) | st.integers(400, 70000))
    if size > 300 and max_frame < 300:
        max_frame = 300
    if draw(st.booleans()):  # mutate a few bytes of the headers
        b = bytearray(frame)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, min(len(b), 140) - 1))] = draw(st.integers(0, 255))
        frame = bytes(b)
    return frame, hdr, max_frame


@needs_lane
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(superframes())
def test_segment_generated_superframes(case: tuple[bytes, bytes, int]) -> None:
    same_segments(*case)


@needs_lane
@FAST
@given(st.binary(max_size=200), st.binary(min_size=10, max_size=10), st.integers(-10, 3000))
def test_segment_random_bytes(frame: bytes, hdr: bytes, max_frame: int) -> None:
    if len(frame) > 14 and frame[0] & 1:  # often make it look like IP
        frame = frame[:12] + bytes.fromhex("0800" if frame[1] & 1 else "86dd") + frame[14:]
    same_segments(frame, hdr, max_frame)


# ---- clamp_mss ---------------------------------------------------------------------------------

def syn(v4: bool, tags: int, options: bytes, flags: int = SYN) -> bytes:
    return tcp_frame(b"", v4=v4, tags=TAGS[tags], flags=flags, options=options)


def ip_len(frame: bytes, n: int) -> bytes:
    """``frame`` with its IPv4 total length (or IPv6 payload length) set to n."""
    at = 12
    while frame[at:at + 2] in (b"\x81\x00", b"\x88\xa8", b"\x91\x00"):
        at += 4
    field = at + 2 + (2 if frame[at:at + 2] == b"\x08\x00" else 4)
    return frame[:field] + struct.pack(">H", n) + frame[field + 2:]


def MSS(value: int) -> bytes:
    return bytes([2, 4]) + struct.pack(">H", value)


@needs_lane
@pytest.mark.parametrize("frame", [
    syn(True, 0, MSS(1460)), syn(False, 0, MSS(1440) + bytes([1, 1, 4, 2])),
    syn(True, 1, bytes([1, 1]) + MSS(1460) + bytes([1, 1])), syn(False, 2, MSS(8960)),
    syn(True, 0, MSS(1460), flags=SYN | ACK), syn(True, 0, MSS(1460), flags=ACK),
    syn(True, 0, bytes([0, 0]) + MSS(1460)), syn(True, 0, bytes([3, 1]) + MSS(1460)),
    syn(True, 0, bytes([8, 10]) + bytes(8) + MSS(1460)), syn(True, 0, MSS(100)),
    syn(True, 0, bytes([1, 1, 1]) + MSS(1460)[:1]), syn(True, 0, b""),
    MAC + b"\x08\x06" + bytes(28), b"", bytes(23),
    *(ip_len(syn(True, tags, MSS(1460)), n) for tags in (0, 1) for n in (0, 20, 30, 45, 1000)),
])
@pytest.mark.parametrize("room", [-1, 0, 60, 1400, 1500, 9000, 65535])
def test_clamp_mss_vectors(frame: bytes, room: int) -> None:
    for partial in (False, True):
        assert c().clamp_mss(frame, room, partial) == seg.clamp_mss(frame, room, partial)


@needs_lane
@FAST
@given(st.booleans(), st.integers(0, 2), st.binary(max_size=36), st.integers(-100, 65535),
       st.booleans(), st.lists(st.tuples(st.integers(0, 130), st.integers(0, 255)), max_size=4))
def test_clamp_mss_generated(v4: bool, tags: int, options: bytes, room: int, partial: bool,
                             mutations: list[tuple[int, int]]) -> None:
    # (TCP options are at most 40 bytes: the 4 of the MSS option and at most 36 more)
    options = (MSS(1460) + options)[: (4 + len(options)) // 4 * 4]
    b = bytearray(syn(v4, tags, options, flags=SYN | (ACK if room & 1 else 0)))
    for at, value in mutations:
        if at < len(b):
            b[at] = value
    frame = bytes(b)
    assert c().clamp_mss(frame, room, partial) == seg.clamp_mss(frame, room, partial)


@needs_lane
@FAST
@given(st.binary(max_size=130), st.integers(-100, 65535), st.booleans())
def test_clamp_mss_random(frame: bytes, room: int, partial: bool) -> None:
    assert c().clamp_mss(frame, room, partial) == seg.clamp_mss(frame, room, partial)


@needs_lane
def test_clamp_mss_arguments() -> None:
    with pytest.raises(ValueError):
        c().clamp_mss(syn(True, 0, MSS(1460)), 70000, False)
    with pytest.raises(TypeError):
        c().clamp_mss(None, 1400, False)


# ---- coalesce ----------------------------------------------------------------------------------

def meta_all(frames: Sequence[Frame], start: int) -> dict[int, tuple[int, int]]:
    return dict.fromkeys(range(len(frames)), (start, 16))


@needs_lane
@pytest.mark.parametrize("v4, tags, size, flags", [
    (True, 0, 20000, ACK), (False, 0, 20000, ACK | PSH), (True, 1, 5000, ACK | FIN | PSH),
    (False, 2, 4097, ACK | CWR), (True, 0, 64 * 1448 + 5, ACK), (True, 0, 1000, ACK),
])
def test_coalesce_rejoins_segments(v4: bool, tags: int, size: int, flags: int) -> None:
    frame = tcp_frame(os.urandom(size), v4=v4, tags=TAGS[tags], flags=flags)
    segments, start = seg.segment_tcp(frame, decode_vnet_hdr_untrusted(
        vnet(l4_of(v4, tags), 1448, v4=v4)), 1514)
    out = same_coalesce(segments, meta_all(segments, start))
    assert out is not None and sum(t[2] for t in out) == len(segments)


@needs_lane
@pytest.mark.parametrize("v4, tags", [(True, 0), (False, 1), (True, 2)])
def test_coalesce_every_header_byte(v4: bool, tags: int) -> None:
    """Each header byte of a middle segment changed in turn: joined or not, as in Python."""
    frame = tcp_frame(os.urandom(6000), v4=v4, tags=TAGS[tags])
    segments, start = seg.segment_tcp(frame, decode_vnet_hdr_untrusted(
        vnet(l4_of(v4, tags), 1448, v4=v4)), 1514)
    for i in range(start + 32):
        b = bytearray(segments[2])
        b[i] ^= 0x10 if i % 3 else 0xFF
        frames: list[Frame] = [*segments[:2], bytes(b), *segments[3:]]
        same_coalesce(frames, meta_all(frames, start))


@needs_lane
def test_coalesce_mixed_and_arguments() -> None:
    a = seg.segment_tcp(tcp_frame(os.urandom(5000)), decode_vnet_hdr_untrusted(vnet(34, 1448)),
                        1514)[0]
    arp = MAC + b"\x08\x06" + bytes(28)
    frames: list[Frame] = [arp, *a[:2], arp, *a[2:]]
    csum = {1: (34, 16), 2: (34, 16), 3: (34, 17), 4: (34, 16), 5: (34, 16)}
    same_coalesce(frames, csum)
    same_coalesce([bytearray(f) for f in frames], csum)
    assert c().coalesce([], {}) == []
    with pytest.raises(TypeError):
        c().coalesce([b"x", 3], {})
    with pytest.raises(TypeError):
        c().coalesce([b"x"], {0: (1, 2, 3)})
    with pytest.raises(ValueError):
        c().coalesce([b"x"], {0: (-1, 16)})
    with pytest.raises(TypeError):
        c().coalesce([b"x"], [(0, 16)])


@st.composite
def segment_batches(draw: st.DrawFn) -> tuple[list[bytes], dict[int, tuple[int, int]]]:
    frames: list[bytes] = []
    csum: dict[int, tuple[int, int]] = {}
    for _ in range(draw(st.integers(1, 4))):
        v4 = draw(st.booleans())
        ntags = draw(st.integers(0, 2))
        flags = draw(st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | CWR, ACK | SYN])
                     | st.integers(0, 255))
        size = draw(st.integers(0, 6000))
        frame = tcp_frame(os.urandom(size), v4=v4, tags=TAGS[ntags], flags=flags,
                          seq=draw(st.integers(0, 2**32 - 1)), sport=draw(st.sampled_from([1, 2])),
                          options=draw(st.sampled_from([TS_OPTION, b"", bytes(40)])))
        gso = draw(st.sampled_from([1448, 500, 1000]))
        segments, start = seg.segment_tcp(frame, decode_vnet_hdr_untrusted(
            vnet(l4_of(v4, ntags), gso, v4=v4)), 1514)
        for s in segments:
            csum[len(frames)] = (start, 16)
            frames.append(s)
    for _ in range(draw(st.integers(0, 4))):  # non-TCP frames and odd metas
        at = draw(st.integers(0, len(frames)))
        frames.insert(at, draw(st.sampled_from([MAC + b"\x08\x06" + bytes(28), b"", bytes(70)])
                               | st.binary(max_size=120)))
        csum = {i + (i >= at): m for i, m in csum.items()}
        if draw(st.booleans()):
            csum[at] = (draw(st.integers(0, 190)), draw(st.sampled_from([16, 6, 0xFFFF])))
    if draw(st.booleans()):  # a few swaps (reordering)
        for _ in range(draw(st.integers(1, 3))):
            i, j = draw(st.integers(0, len(frames) - 1)), draw(st.integers(0, len(frames) - 1))
            frames[i], frames[j] = frames[j], frames[i]
    for _ in range(draw(st.integers(0, 3))):  # mutations, dropped and changed metas
        i = draw(st.integers(0, len(frames) - 1))
        what = draw(st.integers(0, 3))
        if what == 0 and frames[i]:
            b = bytearray(frames[i])
            b[draw(st.integers(0, min(len(b), 120) - 1))] ^= draw(st.integers(1, 255))
            frames[i] = bytes(b)
        elif what == 1:
            csum.pop(i, None)
        elif what == 2:
            csum[i] = (draw(st.integers(0, 190)), 16)
        else:
            frames[i] = frames[i][: draw(st.integers(0, len(frames[i])))]
    return frames, csum


@needs_lane
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segment_batches())
def test_coalesce_generated(batch: tuple[list[bytes], dict[int, tuple[int, int]]]) -> None:
    same_coalesce(*batch)


@needs_lane
@FAST
@given(st.lists(st.binary(max_size=150), max_size=8),
       st.dictionaries(st.integers(0, 8), st.tuples(st.integers(0, 120), st.just(16))))
def test_coalesce_random_bytes(frames: list[bytes], csum: dict[int, tuple[int, int]]) -> None:
    same_coalesce(frames, csum)
