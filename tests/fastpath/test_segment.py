"""Segmentation and coalescing against frames built independently (tests/fastpath/reference)."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridger.fastpath.segment import SegmentError, coalesce, segment_tcp
from bridger.fastpath.vnet import VNET_HDR, GsoType, VnetFlag, VnetHdr
from bridger.protocol.checksum import complete_checksum, ones_sum
from tests.fastpath import reference as ref

MAC = bytes.fromhex("020000000002" "020000000001")
V4 = (bytes([192, 168, 1, 11]), bytes([192, 168, 1, 21]))
V6 = (bytes.fromhex("fd00000b" + "0" * 22 + "11"), bytes.fromhex("fd00000b" + "0" * 22 + "21"))
#: NOP NOP timestamp: what Linux puts in every data segment.
TS_OPTION = bytes([1, 1, 8, 10]) + struct.pack(">II", 1000, 2000)
ACK, PSH, FIN, CWR = 0x10, 0x08, 0x01, 0x80
SEQ, ACKNO, IDENT = 0xFFFFF000, 77, 0xFFFE  # sequence and IP id both wrap


def ethernet(ethertype: int, vlans: tuple[int, ...]) -> bytes:
    head = MAC
    for tag in vlans:
        head += struct.pack(">HH", 0x8100 if tag == vlans[-1] else 0x88A8, tag)
    return head + struct.pack(">H", ethertype)


def build(payload: bytes, *, v4: bool, flags: int, seq: int, ident: int,
          vlans: tuple[int, ...] = (), partial: bool) -> bytes:
    """One TCP frame exactly as a sender's kernel would build it."""
    src, dst = V4 if v4 else V6
    tcp = ref.tcp_header(40000, 5201, seq, ACKNO, flags, TS_OPTION) + payload
    tcp = ref.with_tcp_checksum(tcp, src, dst, partial=partial)
    ip = ref.ipv4_header(src, dst, len(tcp), ident) if v4 else ref.ipv6_header(src, dst, len(tcp))
    return ethernet(0x0800 if v4 else 0x86DD, vlans) + ip + tcp


def superframe_hdr(frame: bytes, v4: bool, vlans: tuple[int, ...], mss: int) -> VnetHdr:
    l4 = 14 + 4 * len(vlans) + (20 if v4 else 40)
    gso = GsoType.TCPV4 if v4 else GsoType.TCPV6
    return VnetHdr(VnetFlag.NEEDS_CSUM, gso, l4 + 32, mss, l4, 16)


CASES = [
    pytest.param(True, (), 5000, 1448, 1435, id="ipv4"),
    pytest.param(False, (), 5000, 1428, 1415, id="ipv6"),
    pytest.param(True, (7,), 3000, 1448, 1435, id="ipv4-vlan"),
    pytest.param(False, (5, 7), 4097, 1428, 1415, id="ipv6-qinq"),
    pytest.param(True, (), 1000, 1448, 1435, id="one-segment"),
]


@pytest.mark.parametrize("v4, vlans, size, mss, max_frame", CASES)
def test_segments_equal_reference_segments(v4: bool, vlans: tuple[int, ...], size: int,
                                           mss: int, max_frame: int) -> None:
    payload = random.Random(size).randbytes(size)
    flags = ACK | PSH | CWR
    frame = build(payload, v4=v4, flags=flags, seq=SEQ, ident=IDENT, vlans=vlans, partial=True)
    segments, csum_start = segment_tcp(frame, superframe_hdr(frame, v4, vlans, mss), max_frame)
    l3 = 14 + 4 * len(vlans)
    hdrlen = l3 + (20 if v4 else 40) + 32
    assert csum_start == l3 + (20 if v4 else 40)
    step = min(mss, max_frame - hdrlen)
    chunks = [payload[i:i + step] for i in range(0, size, step)]
    assert len(segments) == len(chunks)
    for i, (segment, chunk) in enumerate(zip(segments, chunks, strict=True)):
        last = i == len(chunks) - 1
        want_flags = ACK | (PSH if last else 0) | (CWR if i == 0 else 0)
        seq = (SEQ + i * step) & 0xFFFFFFFF
        ident = (IDENT + i) & 0xFFFF
        # exact bytes: the segment as its kernel would have sent it, checksum partial
        assert segment == build(chunk, v4=v4, flags=want_flags, seq=seq, ident=ident,
                                vlans=vlans, partial=True)
        assert len(segment) <= max_frame
        # completed like a NIC would, the TCP checksum verifies with the reference
        done = complete_checksum(segment, csum_start, 16)
        assert done == build(chunk, v4=v4, flags=want_flags, seq=seq, ident=ident,
                             vlans=vlans, partial=False)
        assert ref.tcp_checksum_ok(done, l3, v4)


@pytest.mark.parametrize("v4, vlans, size, mss, max_frame", CASES)
def test_coalesce_rebuilds_the_superframe(v4: bool, vlans: tuple[int, ...], size: int,
                                          mss: int, max_frame: int) -> None:
    payload = random.Random(size).randbytes(size)
    frame = build(payload, v4=v4, flags=ACK | PSH, seq=SEQ, ident=IDENT, vlans=vlans,
                  partial=True)
    segments, start = segment_tcp(frame, superframe_hdr(frame, v4, vlans, mss), max_frame)
    out = list(coalesce(segments, dict.fromkeys(range(len(segments)), (start, 16))))
    assert len(out) == 1
    vh, joined, count, nbytes = out[0]
    assert joined == frame
    assert (count, nbytes) == (len(segments), sum(map(len, segments)))
    flags, gso, hdr_len, gso_size, cstart, coff = VNET_HDR.unpack(vh)
    assert flags == VnetFlag.NEEDS_CSUM and (cstart, coff) == (start, 16)
    if len(segments) > 1:
        assert gso == (GsoType.TCPV4 if v4 else GsoType.TCPV6)
        assert gso_size == len(segments[0]) - hdr_len
    else:
        assert gso == GsoType.NONE


def test_coalesce_keeps_flows_gaps_and_complete_frames_apart() -> None:
    a = [build(bytes([i]) * 100, v4=True, flags=ACK, seq=1000 + 100 * i, ident=i, partial=True)
         for i in range(3)]
    gap = build(b"x" * 100, v4=True, flags=ACK, seq=9999, ident=9, partial=True)
    complete = build(b"y" * 100, v4=True, flags=ACK, seq=1300, ident=3, partial=False)
    other_flow = bytearray(a[0])
    other_flow[34:36] = struct.pack(">H", 40001)  # another source port
    frames = [*a, gap, complete, bytes(other_flow)]
    csum = {0: (34, 16), 1: (34, 16), 2: (34, 16), 3: (34, 16), 5: (34, 16)}
    out = list(coalesce(frames, csum))
    assert [len(f) for _, f, _, _ in out] == [len(a[0]) + 200, len(gap), len(complete), len(a[0])]
    assert [count for _, _, count, _ in out] == [3, 1, 1, 1]
    assert out[0][3] == sum(map(len, a))  # what a counter adds for the joined run
    assert out[2] == (bytes(10), complete, 1, len(complete))  # unchanged, plain header


def test_ack_without_payload_is_not_joined() -> None:
    acks = [build(b"", v4=True, flags=ACK, seq=5, ident=i, partial=True) for i in range(3)]
    out = list(coalesce(acks, dict.fromkeys(range(3), (34, 16))))
    assert [f for _, f, _, _ in out] == acks


def test_segment_refuses_what_it_cannot_cut() -> None:
    frame = build(b"z" * 3000, v4=True, flags=ACK, seq=1, ident=1, partial=True)
    hdr = superframe_hdr(frame, True, (), 1448)
    with pytest.raises(SegmentError):
        segment_tcp(frame, hdr, max_frame=60)  # headers alone exceed it
    with pytest.raises(SegmentError):
        segment_tcp(frame[:40], hdr, max_frame=1400)
    arp = MAC + b"\x08\x06" + bytes(28)
    with pytest.raises(SegmentError):
        segment_tcp(arp, hdr, max_frame=1400)


@given(st.binary(max_size=200), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_segment_untrusted_raises_only_segment_error(data: bytes, start: int, size: int) -> None:
    hdr = VnetHdr(VnetFlag.NEEDS_CSUM, GsoType.TCPV4, 0, size, start, 16)
    try:
        segments, _ = segment_tcp(data, hdr, 1400)
    except SegmentError:
        return
    assert all(len(s) <= 1400 for s in segments)


@given(st.binary(max_size=3000))
def test_ones_sum_matches_rfc1071(data: bytes) -> None:
    assert (~ones_sum(data) & 0xFFFF) == ref.rfc1071(data) or (
        ref.rfc1071(data) == 0xFFFF and ones_sum(data) == 0
    ) or (ref.rfc1071(data) == 0 and ones_sum(data) == 0xFFFF)


@given(st.lists(st.binary(min_size=1, max_size=100), max_size=20))
def test_coalesce_passes_unknown_frames_in_order(frames: list[bytes]) -> None:
    assert [f for _, f, _, _ in coalesce(frames, {})] == frames


MSS_OPTIONS = bytes([2, 4, 0x05, 0xB4, 4, 2, 8, 10]) + bytes(8) + bytes([1, 3, 3, 7])  # MSS 1460


def syn(v4: bool, *, partial: bool, options: bytes = MSS_OPTIONS) -> bytes:
    src, dst = V4 if v4 else V6
    tcp = ref.with_tcp_checksum(ref.tcp_header(40000, 5201, 1, 0, 0x02, options), src, dst,
                                partial=partial)
    ip = ref.ipv4_header(src, dst, len(tcp), 1) if v4 else ref.ipv6_header(src, dst, len(tcp))
    return ethernet(0x0800 if v4 else 0x86DD, ()) + ip + tcp


@pytest.mark.parametrize("v4", [True, False], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("partial", [True, False], ids=["partial", "complete"])
def test_clamp_mss_lowers_the_option_and_keeps_the_checksum_right(v4: bool,
                                                                  partial: bool) -> None:
    from bridger.fastpath.segment import clamp_mss

    frame = syn(v4, partial=partial)
    l4 = 34 if v4 else 54
    out = clamp_mss(frame, 1435, partial)
    assert out is not None
    want = 1435 - l4 - 20  # 1381 over IPv4: 1369 payload bytes with timestamps
    assert struct.unpack_from(">H", out, l4 + 22)[0] == want
    assert out[:l4 + 22] == frame[:l4 + 22] if partial else out[:l4 + 16] == frame[:l4 + 16]
    if partial:
        assert out[l4 + 16:l4 + 18] == frame[l4 + 16:l4 + 18]
    else:
        assert ref.tcp_checksum_ok(out, 14, v4)
    # already small enough, not a SYN, or no MSS option: untouched
    assert clamp_mss(out, 1435, partial) is None
    assert clamp_mss(syn(v4, partial=partial, options=bytes([1, 1, 1, 1])), 1435, partial) is None
    data = build(b"x" * 10, v4=v4, flags=ACK, seq=1, ident=1, partial=partial)
    assert clamp_mss(data, 1435, partial) is None


def test_clamp_mss_looks_through_vlan_tags() -> None:
    from bridger.fastpath.segment import clamp_mss

    frame = syn(True, partial=True)
    tagged = frame[:12] + struct.pack(">HH", 0x8100, 7) + frame[12:]
    out = clamp_mss(tagged, 1435, True)
    assert out is not None
    assert struct.unpack_from(">H", out, 4 + 34 + 22)[0] == 1435 - 4 - 34 - 20


@given(st.binary(min_size=14, max_size=120), st.sampled_from([b"\x08\x00", b"\x86\xdd",
                                                              b"\x81\x00", b"\x08\x06"]))
def test_quick_tcp_filter_never_hides_what_the_parser_calls_tcp(body: bytes,
                                                                ethertype: bytes) -> None:
    """clamp_mss skips the full parser for frames the quick look calls non-TCP;
    the full parser must agree that each of those is not a TCP frame."""
    from bridger.fastpath.segment import _may_be_tcp, _tcp_layout

    frame = body[:12] + ethertype + body[14:]
    if not _may_be_tcp(frame):
        with pytest.raises(SegmentError):
            _tcp_layout(frame, None)
