"""Unit tests: wire formats, replay window vectors, fragmentation, DoS rules."""

from __future__ import annotations

import pytest

from bridger.protocol import DropReason, Tunnel, TunnelConfig, public_key
from bridger.protocol import device as device_module
from bridger.protocol.constants import (
    COOKIE_RETRY_DELAY,
    MAC_LEN,
    REASSEMBLY_MAX_FRAMES,
    REASSEMBLY_TIMEOUT,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)
from bridger.protocol.cookie import CookieChecker, CookieGenerator
from bridger.protocol.fragment import Reassembler, split
from bridger.protocol.messages import (
    COOKIE_REPLY_LEN,
    INITIATION_LEN,
    INITIATION_MAC1_OFFSET,
    RESPONSE_LEN,
    BadPacket,
    CookieReply,
    Initiation,
    MessageType,
    Response,
    decode_cookie_reply_untrusted,
    decode_fragment_untrusted,
    decode_initiation_untrusted,
    decode_probe_ack_untrusted,
    decode_probe_untrusted,
    decode_response_untrusted,
    decode_transport_header_untrusted,
    encode_probe,
    encode_probe_ack,
    encode_transport,
    message_type_untrusted,
)
from bridger.protocol.replay import WINDOW_SIZE, ReplayWindow, Verdict

# --- wire formats -------------------------------------------------------------


def test_message_sizes_are_the_specified_ones() -> None:
    assert (INITIATION_LEN, RESPONSE_LEN, COOKIE_REPLY_LEN) == (148, 92, 64)


def test_initiation_roundtrip() -> None:
    msg = Initiation(7, b"e" * 32, b"s" * 48, b"t" * 28, b"m" * 16, b"n" * 16)
    raw = msg.encode()
    assert raw[:4] == b"\x01\x00\x00\x00"
    assert decode_initiation_untrusted(raw) == msg


def test_response_roundtrip() -> None:
    msg = Response(7, 9, b"e" * 32, b"x" * 16, b"m" * 16, b"n" * 16)
    assert decode_response_untrusted(msg.encode()) == msg


def test_cookie_reply_roundtrip() -> None:
    msg = CookieReply(5, b"n" * 24, b"c" * 32)
    assert decode_cookie_reply_untrusted(msg.encode()) == msg


def test_transport_header_roundtrip() -> None:
    raw = encode_transport(0xDEADBEEF, 2**63 + 5, b"z" * 16)
    assert decode_transport_header_untrusted(raw) == (0xDEADBEEF, 2**63 + 5)


def test_probe_and_ack_roundtrip() -> None:
    probe = encode_probe(77, 1400)
    assert len(probe) == 1400
    assert decode_probe_untrusted(probe) == 77
    assert decode_probe_ack_untrusted(encode_probe_ack(77, 1555)) == (77, 1555)


@pytest.mark.parametrize(
    ("decoder", "data"),
    [
        (message_type_untrusted, b"\x01\x00"),
        (message_type_untrusted, b"\x09\x00\x00\x00"),
        (message_type_untrusted, b"\x01\x00\x01\x00"),  # reserved byte set
        (decode_initiation_untrusted, bytes(147)),
        (decode_initiation_untrusted, b"\x02" + bytes(147)),
        (decode_response_untrusted, b"\x02\x00\x00\x01" + bytes(88)),
        (decode_cookie_reply_untrusted, b"\x03\x00\x00\x00" + bytes(59)),
        (decode_transport_header_untrusted, b"\x04\x00\x00\x00" + bytes(27)),
        (decode_transport_header_untrusted, b"\x04\x01\x00\x00" + bytes(40)),
        (decode_fragment_untrusted, b"\x02" + bytes(8)),  # no data
        (decode_fragment_untrusted, b"\x02\x00\x00\x00\x00\x01\x01\x10\x00x"),  # count 1
        (decode_fragment_untrusted, b"\x02\x00\x00\x00\x00\x03\x02\x10\x00x"),  # index>=count
        (decode_probe_ack_untrusted, b"\x04\x00"),
    ],
)
def test_untrusted_decoders_raise_only_badpacket(decoder: object, data: bytes) -> None:
    with pytest.raises(BadPacket):
        decoder(data)  # type: ignore[operator]


def test_message_type_accepts_each_type() -> None:
    for kind in MessageType:
        assert message_type_untrusted(bytes([kind, 0, 0, 0])) is kind


# --- replay window (table of vectors, after WireGuard's replay tests) ----------

T_LIM = WINDOW_SIZE + 1
REPLAY_VECTORS: list[tuple[int, Verdict]] = [
    (0, Verdict.OK),
    (1, Verdict.OK),
    (1, Verdict.REPLAY),
    (9, Verdict.OK),
    (8, Verdict.OK),
    (7, Verdict.OK),
    (7, Verdict.REPLAY),
    (T_LIM, Verdict.OK),
    (T_LIM - 1, Verdict.OK),
    (T_LIM - 1, Verdict.REPLAY),
    (T_LIM - 2, Verdict.OK),
    (2, Verdict.OK),
    (2, Verdict.REPLAY),
    (T_LIM + 16, Verdict.OK),
    (3, Verdict.TOO_OLD),
    (T_LIM + 16, Verdict.REPLAY),
    (T_LIM * 4, Verdict.OK),
    (T_LIM * 4 - (T_LIM - 1), Verdict.OK),
    (10, Verdict.TOO_OLD),
    (T_LIM * 4 - T_LIM, Verdict.TOO_OLD),
    (T_LIM * 4 - (T_LIM + 1), Verdict.TOO_OLD),
    (T_LIM * 4 - (T_LIM - 2), Verdict.OK),
    (T_LIM * 4 + 1 - T_LIM, Verdict.REPLAY),
    (0, Verdict.TOO_OLD),
    (2**64 - 1, Verdict.TOO_OLD),  # beyond REJECT_AFTER_MESSAGES
]


def test_replay_window_vectors() -> None:
    window = ReplayWindow()
    for step, (counter, verdict) in enumerate(REPLAY_VECTORS):
        assert window.check(counter) is verdict, f"step {step}: counter {counter}"


def test_replay_window_is_at_least_2048_and_accepts_reordering() -> None:
    assert WINDOW_SIZE >= 2048
    window = ReplayWindow()
    order = list(range(3000))
    order.reverse()
    order = [3000, *order]
    assert all(window.check(c) is Verdict.OK for c in order)
    assert all(window.check(c) is not Verdict.OK for c in order)


def test_replay_window_large_jump_clears_bitmap() -> None:
    window = ReplayWindow()
    for c in range(200):
        window.check(c)
    jump = 200 + 10 * WINDOW_SIZE
    assert window.check(jump) is Verdict.OK
    assert window.check(jump - 64) is Verdict.OK  # bit cleared, not left over


# --- fragmentation --------------------------------------------------------------


def test_split_and_reassemble_any_order() -> None:
    drops = dict.fromkeys(DropReason, 0)
    frame = bytes(range(256)) * 6
    pieces = split(frame, 42, 500)
    assert all(len(p) <= 500 for p in pieces)
    r = Reassembler(drops, 9216)
    results = [r.add(decode_fragment_untrusted(p), 0.0) for p in reversed(pieces)]
    assert results[:-1] == [None] * (len(pieces) - 1)
    assert results[-1] == frame
    assert len(r) == 0 and r.reassembled == 1


def test_reassembly_timeout_and_overflow_are_counted() -> None:
    drops = dict.fromkeys(DropReason, 0)
    r = Reassembler(drops, 9216)
    for fid in range(REASSEMBLY_MAX_FRAMES + 5):
        r.add(decode_fragment_untrusted(split(bytes(1000), fid, 600)[0]), 0.0)
    assert drops[DropReason.REASSEMBLY_OVERFLOW] == 5
    assert len(r) == REASSEMBLY_MAX_FRAMES
    assert r.next_deadline() == REASSEMBLY_TIMEOUT
    r.expire(REASSEMBLY_TIMEOUT)
    assert drops[DropReason.REASSEMBLY_TIMEOUT] == REASSEMBLY_MAX_FRAMES
    assert len(r) == 0


def test_reassembly_rejects_oversize_and_conflicts() -> None:
    drops = dict.fromkeys(DropReason, 0)
    r = Reassembler(drops, 1522)
    big = split(bytes(3000), 1, 1000)
    assert r.add(decode_fragment_untrusted(big[0]), 0.0) is None
    assert drops[DropReason.MALFORMED] == 1
    a = split(bytes(1200), 2, 700)
    b = split(bytes(1400), 2, 700)
    r.add(decode_fragment_untrusted(a[0]), 0.0)
    r.add(decode_fragment_untrusted(b[0]), 0.0)  # same id, different frame
    assert drops[DropReason.REASSEMBLY_CONFLICT] == 1
    r.add(decode_fragment_untrusted(b[0]), 0.0)  # same piece twice
    assert drops[DropReason.REASSEMBLY_CONFLICT] == 2
    assert len(b) == 3
    assert r.add(decode_fragment_untrusted(b[2]), 0.0) is None
    assert r.add(decode_fragment_untrusted(b[1]), 0.0) == bytes(1400)


# --- DoS: no DH and no answer without mac1 ----------------------------------------


def _pair() -> tuple[Tunnel, Tunnel]:
    ka, kb = bytes(range(1, 33)), bytes(range(2, 34))
    a = Tunnel(
        TunnelConfig(ka, public_key(kb), endpoint=("192.0.2.2", 1), persistent_keepalive=0),
        now=0.0,
        wall_clock=1e9,
    )
    b = Tunnel(TunnelConfig(kb, public_key(ka), persistent_keepalive=0), now=0.0, wall_clock=1e9)
    return a, b


def test_bad_mac1_costs_no_dh_and_gets_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _pair()
    init = bytearray(a.send_frame(b"x" * 60, 0.0).datagrams[0][0])
    init[-20] ^= 1  # inside mac1

    def forbidden(*args: object) -> None:
        raise AssertionError("DH computed for an unauthenticated packet")

    monkeypatch.setattr(device_module, "decrypt_initiator_static", forbidden)
    out = b.receive_datagram(bytes(init), ("192.0.2.1", 1), 0.0, 1e9)
    assert not out.datagrams
    assert b.drops[DropReason.HANDSHAKE_MAC1] == 1


def test_handshake_replay_and_rate_limit() -> None:
    a, b = _pair()
    init = a.send_frame(b"x" * 60, 0.0).datagrams[0][0]
    src = ("192.0.2.1", 1)
    assert b.receive_datagram(init, src, 0.0, 1e9).datagrams  # answered once
    assert not b.receive_datagram(init, src, 0.1, 1e9).datagrams
    assert b.drops[DropReason.HANDSHAKE_REPLAY] == 1
    for _ in range(20):
        b.receive_datagram(init, src, 0.2, 1e9)
    assert b.drops[DropReason.RATE_LIMITED] > 0


def test_under_load_answers_with_cookie_only() -> None:
    a, b = _pair()
    b.set_under_load(True)
    init = a.send_frame(b"x" * 60, 0.0).datagrams[0][0]
    out = b.receive_datagram(init, ("192.0.2.1", 1), 0.0, 1e9)
    [(reply, _)] = out.datagrams
    assert reply[0] == MessageType.COOKIE_REPLY and len(reply) == 64
    assert b.next is None  # no session state created
    a_out = a.receive_datagram(reply, ("192.0.2.2", 1), 0.01, 1e9)
    assert a_out.events  # CookieReceived
    # the replayed cookie reply is refused
    a.receive_datagram(reply, ("192.0.2.2", 1), 0.02, 1e9)
    assert a.drops[DropReason.COOKIE_INVALID] == 1


A_ADDR, B_ADDR = ("192.0.2.1", 1), ("192.0.2.2", 1)


def test_an_initiation_refused_for_want_of_a_cookie_goes_again_soon_with_it() -> None:
    """Issue 26: a hub under load answers a restarted spoke's initiation with a
    cookie reply.  The spoke used to keep the cookie and wait for its
    retransmission (REKEY_TIMEOUT + jitter: 5-5.3 s, 5.9 s at 50 spokes in the
    lab); it now sends the same initiation with the cookie's mac2 within
    COOKIE_RETRY_DELAY + jitter, which the hub answers even under load."""
    a, b = _pair()
    b.set_under_load(True)
    [(init, _)] = a.send_frame(b"x" * 60, 0.0).datagrams
    [(reply, _)] = b.receive_datagram(init, A_ADDR, 0.0, 1e9).datagrams
    assert reply[0] == MessageType.COOKIE_REPLY
    assert not a.receive_datagram(reply, B_ADDR, 0.01, 1e9).datagrams
    due = a.next_deadline()
    assert due is not None and 0.01 + COOKIE_RETRY_DELAY <= due <= (
        0.01 + COOKIE_RETRY_DELAY + REKEY_TIMEOUT_JITTER_MAX)
    assert not a.tick(due - 0.001, 1e9).datagrams  # not before its time
    [(again, dest)] = a.tick(due, 1e9).datagrams
    assert dest == B_ADDR and again[:-MAC_LEN] == init[:-MAC_LEN]  # the same, but mac2
    assert again[-MAC_LEN:] != bytes(MAC_LEN)
    [(response, _)] = b.receive_datagram(again, A_ADDR, due + 0.01, 1e9).datagrams
    assert response[0] == MessageType.HANDSHAKE_RESPONSE  # admitted under load: the cookie's mac2
    a.receive_datagram(response, B_ADDR, due + 0.02, 1e9)
    assert a.current is not None
    assert a.stats().handshakes == 1 and b.stats().cookies_sent == 1
    # The retransmission timer is the handshake's own: gone with the handshake.
    assert a.timers.retransmit_handshake is None and a.timers.cookie_retry is None


def test_a_response_refused_for_want_of_a_cookie_goes_again_soon_with_it() -> None:
    """The responder's side of the same: the initiator under load refuses our
    response (before any work: its initiation is still pending), so the
    response goes again with the cookie, rather than both sides waiting for
    the initiator's retransmission."""
    a, b = _pair()
    [(init, _)] = a.send_frame(b"x" * 60, 0.0).datagrams
    [(response, _)] = b.receive_datagram(init, A_ADDR, 0.0, 1e9).datagrams
    a.set_under_load(True)
    [(reply, _)] = a.receive_datagram(response, B_ADDR, 0.01, 1e9).datagrams
    assert reply[0] == MessageType.COOKIE_REPLY and a.current is None
    b.receive_datagram(reply, A_ADDR, 0.02, 1e9)
    due = b.next_deadline()
    assert due is not None and due <= 0.02 + COOKIE_RETRY_DELAY + REKEY_TIMEOUT_JITTER_MAX
    [(again, _)] = b.tick(due, 1e9).datagrams
    assert again[:-MAC_LEN] == response[:-MAC_LEN]
    out = a.receive_datagram(again, B_ADDR, due + 0.01, 1e9)
    assert a.current is not None  # a's session is up: its queued frame goes
    b.receive_datagram(out.datagrams[0][0], A_ADDR, due + 0.02, 1e9)
    assert b.current is not None


def test_a_message_refused_despite_its_cookie_is_not_resent_early() -> None:
    """Each refusal costs at most one more message: what carried a mac2 and
    was refused all the same (a rotated secret, another address) waits for
    the ordinary retransmission; so does a refused message a newer one
    superseded."""
    a, b = _pair()
    b.set_under_load(True)
    [(init, _)] = a.send_frame(b"x" * 60, 0.0).datagrams
    [(reply, _)] = b.receive_datagram(init, A_ADDR, 0.0, 1e9).datagrams
    a.receive_datagram(reply, B_ADDR, 0.01, 1e9)
    [(again, _)] = a.tick(a.next_deadline() or 0.0, 1e9).datagrams
    # Seen from another address, the cookie's mac2 is not valid: refused again.
    [(reply2, _)] = b.receive_datagram(again, ("192.0.2.9", 1), 0.5, 1e9).datagrams
    assert reply2[0] == MessageType.COOKIE_REPLY
    a.receive_datagram(reply2, B_ADDR, 0.51, 1e9)
    assert a.timers.cookie_retry is None
    assert a.next_deadline() == a.timers.retransmit_handshake and (
        a.timers.retransmit_handshake or 0.0) >= REKEY_TIMEOUT

    # A newer message sent before the retry is due supersedes the refused one.
    gen = CookieGenerator(b.public_key)
    checker = CookieChecker(b.public_key, bytes)
    bare = bytes(INITIATION_LEN)
    reply3 = checker.create_reply(gen.add_macs(bare, 0.0), INITIATION_MAC1_OFFSET, 7, A_ADDR, 0.0)
    assert gen.consume_reply(decode_cookie_reply_untrusted(reply3), 0.1) and gen.has_refused
    gen.add_macs(b"\1" + bare[1:], 0.2)
    assert not gen.has_refused and gen.take_refused() is None


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TunnelConfig(b"short", bytes(32))
    with pytest.raises(ValueError):
        TunnelConfig(bytes(32), bytes(32), wan_mtu=100)
    with pytest.raises(ValueError):
        TunnelConfig(bytes(32), bytes(32), max_frame=20000)


def test_frame_size_limits_are_counted() -> None:
    a, _ = _pair()
    a.send_frame(b"", 0.0)
    a.send_frame(bytes(1523), 0.0)
    assert a.drops[DropReason.FRAME_SIZE] == 2
