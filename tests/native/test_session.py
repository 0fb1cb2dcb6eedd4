"""The native Session (bn_session.c) against the Python reference.

Sealing and opening are held to aead.seal_transport / open_transport byte for
byte, the replay window to replay.ReplayWindow verdict for verdict.  Skipped
where the extension is not built, except as root (how CI runs): there a
missing extension fails test_extension_is_built.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridger.native import lane, unavailable
from bridger.protocol.aead import open_transport, seal_transport
from bridger.protocol.constants import REJECT_AFTER_MESSAGES
from bridger.protocol.messages import TRANSPORT_HEADER, TRANSPORT_NONCE, MessageType
from bridger.protocol.replay import WINDOW_SIZE, ReplayWindow, Verdict

needs_lane = pytest.mark.skipif(lane is None, reason=f"native extension: {unavailable}")
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

U32 = 2**32 - 1
U64 = 2**64 - 1
VERDICT_CODE = {Verdict.OK: 0, Verdict.REPLAY: 1, Verdict.TOO_OLD: 2}
KEY_A = bytes(range(0x80, 0xA0))
KEY_B = bytes(range(0xA0, 0xC0))
TRANSPORT = int(MessageType.TRANSPORT)


def pair(key_a: bytes = KEY_A, key_b: bytes = KEY_B, a_index: int = 0x11223344,
         b_index: int = 0x55667788) -> tuple[Any, Any]:
    """Two Sessions of one handshake: a sends under key_a, b under key_b."""
    assert lane is not None
    a = lane.Session(a_index, b_index, key_a, key_b, 1.5)
    b = lane.Session(b_index, a_index, key_b, key_a, 2.5)
    return a, b


def py_seal(receiver: int, counter: int, plaintext: bytes, key: bytes) -> bytes:
    return seal_transport(TRANSPORT, receiver, counter, plaintext, TRANSPORT_NONCE.pack(counter),
                          key)


def py_open(datagram: bytes, key: bytes) -> bytes | None:
    """open_transport as the device calls it: the nonce from the datagram's header."""
    if len(datagram) < TRANSPORT_HEADER.size:
        return None
    _, _, counter = TRANSPORT_HEADER.unpack_from(datagram, 0)
    return open_transport(datagram, TRANSPORT_NONCE.pack(counter), key)


def test_extension_is_built() -> None:
    if os.geteuid() == 0:
        assert lane is not None, f"as root the native extension must be built: {unavailable}"


# ---- sealing and opening --------------------------------------------------------

@needs_lane
def test_wire_vector() -> None:
    """A literal datagram (from the Python reference): type 4, receiver, counter, sealed."""
    assert lane is not None
    s = lane.Session(1, 0xDEADBEEF, KEY_A, KEY_B, 0.0)
    datagram = s.seal(0x0102030405060708, b"bridger")
    assert datagram.hex() == (
        "04000000" "efbeadde" "0807060504030201"
        "96c387df37bf2973b96450724a5629471770fd32af6503"
    )


@needs_lane
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 63, 64, 65, 1400, 9000])
@pytest.mark.parametrize("counter", [0, 1, 63, 64, U32, 2**32, 2**63, REJECT_AFTER_MESSAGES, U64])
def test_seal_matches_python(size: int, counter: int) -> None:
    a, b = pair()
    plaintext = bytes((i * 7 + size) % 256 for i in range(size))
    datagram = a.seal(counter, plaintext)
    assert datagram == py_seal(0x55667788, counter, plaintext, KEY_A)
    assert len(datagram) == size + 32
    assert b.open(datagram) == plaintext
    assert py_open(datagram, KEY_A) == plaintext
    # b's own datagrams, opened by Python and by a.
    back = b.seal(counter, plaintext)
    assert py_open(back, KEY_B) == plaintext
    assert a.open(back) == plaintext
    assert a.open(datagram) is None  # wrong direction's key


@needs_lane
@SETTINGS
@given(key_a=st.binary(min_size=32, max_size=32), key_b=st.binary(min_size=32, max_size=32),
       a_index=st.integers(0, U32), b_index=st.integers(0, U32), counter=st.integers(0, U64),
       plaintext=st.binary(max_size=2000))
def test_seal_open_differential(key_a: bytes, key_b: bytes, a_index: int, b_index: int,
                                counter: int, plaintext: bytes) -> None:
    a, b = pair(key_a, key_b, a_index, b_index)
    datagram = a.seal(counter, plaintext)
    reference = py_seal(b_index, counter, plaintext, key_a)
    assert datagram == reference
    assert b.open(reference) == plaintext
    assert py_open(datagram, key_a) == plaintext
    # Any buffer works, not just bytes.
    assert b.open(bytearray(datagram)) == plaintext
    assert b.open(memoryview(datagram)) == plaintext
    assert a.seal(counter, bytearray(plaintext)) == datagram


@needs_lane
@SETTINGS
@given(plaintext=st.binary(max_size=300), counter=st.integers(0, U64), data=st.data())
def test_flipped_bit(plaintext: bytes, counter: int, data: st.DataObject) -> None:
    """A flipped bit in the counter, ciphertext or tag fails both; the type and
    receiver words are not authenticated (the device checks them), so there
    both still open it, alike."""
    a, b = pair()
    datagram = a.seal(counter, plaintext)
    bit = data.draw(st.integers(0, 8 * len(datagram) - 1), label="bit")
    flipped = bytearray(datagram)
    flipped[bit // 8] ^= 1 << (bit % 8)
    native, python = b.open(bytes(flipped)), py_open(bytes(flipped), KEY_A)
    assert native == python
    assert native == (plaintext if bit < 64 else None)


@needs_lane
def test_truncated() -> None:
    a, b = pair()
    for size in (0, 1, 40):
        datagram = a.seal(99, bytes(range(size)))
        for cut in range(len(datagram)):
            short = datagram[:cut]
            assert b.open(short) is None
            assert py_open(short, KEY_A) is None
        # Extended by a byte: the tag is read from the wrong place.
        assert b.open(datagram + b"\0") is None
        assert py_open(datagram + b"\0", KEY_A) is None


@needs_lane
def test_open_leaves_replay_window() -> None:
    a, b = pair()
    datagram = a.seal(5, b"x")
    assert b.open(datagram) == b"x"
    assert b.open(datagram) == b"x"
    assert b.check(5) == 0
    assert b.check(5) == 1


# ---- the replay window ----------------------------------------------------------

def _verdicts(counters: list[int]) -> tuple[list[int], list[int]]:
    assert lane is not None
    window = ReplayWindow()
    session = lane.Session(1, 2, KEY_A, KEY_B, 0.0)
    python = [VERDICT_CODE[window.check(c)] for c in counters]
    native = [session.check(c) for c in counters]
    return python, native


#: One step of a counter sequence, relative to the greatest counter so far.
STEP = st.one_of(
    st.tuples(st.just("ahead"), st.integers(0, 200)),
    st.tuples(st.just("behind"), st.integers(0, 200)),
    st.tuples(st.just("edge"), st.integers(-70, 70)),  # around greatest - WINDOW_SIZE
    st.tuples(st.just("jump"), st.integers(WINDOW_SIZE - 70, 3 * WINDOW_SIZE)),
    st.tuples(st.just("ring"), st.integers(-130, 130)),  # about a whole ring of 128 blocks ahead
    st.tuples(st.just("reject"), st.integers(-300, 300)),  # around REJECT_AFTER_MESSAGES
    st.tuples(st.just("again"), st.integers(0, 10**6)),  # an earlier counter
    st.tuples(st.just("any"), st.integers(0, U64)),
)


def _counters(steps: list[tuple[str, int]]) -> list[int]:
    greatest = 0
    out: list[int] = []
    for kind, value in steps:
        if kind == "ahead":
            c = greatest + value
        elif kind == "behind":
            c = greatest - value
        elif kind == "edge":
            c = greatest - WINDOW_SIZE + value
        elif kind == "jump":
            c = greatest + value
        elif kind == "ring":
            c = greatest + 128 * 64 + value
        elif kind == "reject":
            c = REJECT_AFTER_MESSAGES + value
        elif kind == "again":
            c = out[value % len(out)] if out else 0
        else:
            c = value
        c = min(max(c, 0), U64)
        out.append(c)
        if c < REJECT_AFTER_MESSAGES:
            greatest = max(greatest, c)
    return out


@needs_lane
@SETTINGS
@given(steps=st.lists(STEP, max_size=120))
def test_replay_differential(steps: list[tuple[str, int]]) -> None:
    counters = _counters(steps)
    python, native = _verdicts(counters)
    assert native == python


@needs_lane
@SETTINGS
@given(counters=st.lists(st.integers(0, 3 * WINDOW_SIZE), max_size=300),
       base=st.sampled_from([0, 2**32 - 1000, REJECT_AFTER_MESSAGES - 4 * WINDOW_SIZE]))
def test_replay_reordered(counters: list[int], base: int) -> None:
    python, native = _verdicts([base + c for c in counters])
    assert native == python


@needs_lane
def test_replay_vectors() -> None:
    top = 3 * WINDOW_SIZE
    in_order = list(range(300))
    python, native = _verdicts(in_order + in_order)
    assert native == python == [0] * 300 + [1] * 300
    edge = [top, top - WINDOW_SIZE, top - WINDOW_SIZE - 1, top - WINDOW_SIZE, top + 1, top]
    python, native = _verdicts(edge)
    assert native == python == [0, 0, 2, 1, 0, 1]
    last = REJECT_AFTER_MESSAGES - 1
    python, native = _verdicts([last, REJECT_AFTER_MESSAGES, U64, last, last - WINDOW_SIZE - 1])
    assert native == python == [0, 2, 2, 1, 2]
    descending = list(range(top, top - WINDOW_SIZE - 64, -1))
    python, native = _verdicts(descending)
    assert native == python
    assert native.count(0) == WINDOW_SIZE + 1


# ---- the binding's arguments ----------------------------------------------------

@needs_lane
def test_attributes() -> None:
    assert lane is not None
    s = lane.Session(U32, 0, KEY_A, bytearray(KEY_B), 123.25)
    assert (s.local_index, s.remote_index, s.created) == (U32, 0, 123.25)
    assert (s.send_key, s.receive_key) == (KEY_A, KEY_B)
    assert type(s.receive_key) is bytes
    assert s.send_counter == 0
    for value in (1, U64, 0):
        s.send_counter = value
        assert s.send_counter == value
    for name in ("local_index", "remote_index", "send_key", "receive_key", "created"):
        with pytest.raises(AttributeError):
            setattr(s, name, getattr(s, name))
    s2 = lane.Session(local_index=3, remote_index=4, send_key=KEY_A, receive_key=KEY_B,
                      created=0)
    assert (s2.local_index, s2.remote_index, s2.created) == (3, 4, 0.0)


@needs_lane
@pytest.mark.parametrize("args, error", [
    ((-1, 0, KEY_A, KEY_B, 0.0), ValueError),
    ((2**32, 0, KEY_A, KEY_B, 0.0), ValueError),
    ((0, -1, KEY_A, KEY_B, 0.0), ValueError),
    ((0, 2**32, KEY_A, KEY_B, 0.0), ValueError),
    ((0, 0, KEY_A[:31], KEY_B, 0.0), ValueError),
    ((0, 0, KEY_A, KEY_B + b"\0", 0.0), ValueError),
    ((0, 0, b"", KEY_B, 0.0), ValueError),
    ((1.0, 0, KEY_A, KEY_B, 0.0), TypeError),
    ((0, "0", KEY_A, KEY_B, 0.0), TypeError),
    ((0, 0, "k" * 32, KEY_B, 0.0), TypeError),
    ((0, 0, KEY_A, None, 0.0), TypeError),
    ((0, 0, KEY_A, KEY_B, "now"), TypeError),
    ((0, 0, KEY_A, KEY_B), TypeError),
])
def test_constructor_rejects(args: tuple[object, ...], error: type[Exception]) -> None:
    assert lane is not None
    with pytest.raises(error):
        lane.Session(*args)


@needs_lane
def test_methods_reject() -> None:
    s, _ = pair()
    for bad in (-1, 2**64):
        with pytest.raises((ValueError, OverflowError)):
            s.send_counter = bad
        with pytest.raises(ValueError):
            s.check(bad)
        with pytest.raises(ValueError):
            s.seal(bad, b"")
    with pytest.raises(TypeError):
        s.send_counter = 1.0
    with pytest.raises(TypeError):
        del s.send_counter
    assert s.send_counter == 0
    with pytest.raises(TypeError):
        s.check("1")
    with pytest.raises(TypeError):
        s.check(None)
    with pytest.raises(TypeError):
        s.seal(1, "text")
    with pytest.raises(TypeError):
        s.seal(1)
    with pytest.raises(TypeError):
        s.seal(1, b"", b"")
    with pytest.raises(TypeError):
        s.open("datagram" * 8)
    with pytest.raises(TypeError):
        s.open(None)


@needs_lane
def test_wipe_zeroes_the_keys_and_the_session_is_refused_from_then_on() -> None:
    """Issue 21: a retired session's keys were zeroed only at dealloc.
    ``wipe()`` zeroes them at once; sealing or opening with it then raises
    rather than using zero keys, and its counter and age make the lane refuse it."""
    a, b = pair()
    datagram = a.seal(0, b"frame")
    a.wipe()
    assert a.wiped and not b.wiped
    assert a.send_key == bytes(32) and a.receive_key == bytes(32)
    assert a.send_counter >= REJECT_AFTER_MESSAGES
    for call in (lambda: a.seal(1, b"x"), lambda: a.open(datagram)):
        with pytest.raises(ValueError, match="wiped"):
            call()
    assert b.open(datagram) == b"frame"  # the other end's session is its own
