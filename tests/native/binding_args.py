"""Every entry of the native binding (``bridger.native._lane``) called with
generated bad arguments; run as a program by ``test_binding_args.py`` so that
a crash is a failed test, not a dead pytest.

Each entry has a template of plausible arguments; hypothesis replaces some of
them with bad ones (wrong types, None, negative, huge and out-of-range ints,
NaN, empty, short and oversized buffers, read-only and non-contiguous
buffers, closed fds, unused port slots) and sometimes adds or drops one.
Whatever happens must be a return or a Python exception other than
``SystemError`` (which means C returned an error without setting one); a
segfault or an abort kills this process and fails the test.  Before each call
the entry and its arguments go to stderr, so the last line names a crash.

    .venv/bin/python tests/native/binding_args.py [examples per group]

(three groups: module functions and constructors, Lane methods, Session
methods and attributes; each example one call).
"""

from __future__ import annotations

import math
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridger.native import lane as native

assert native is not None, "bridger.native._lane is not built"
m: Any = native


def closed_fd() -> int:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    return fd


CLOSED = closed_fd()
SESSION = m.Session(1, 2, bytes(32), bytes(32), 0.0)
FRAME = bytes(range(14)) + bytes(50)
HDR = bytes(10)

BAD: list[Any] = [
    None, -1, 0, 1, 63, 64, 65, 2**31 - 1, 2**31, -2**31, -2**31 - 1, 2**63, 2**64, -2**64,
    math.nan, math.inf, -0.0, 1.5, True, "", "x" * 3, b"", b"\0", bytes(7), bytes(65), FRAME,
    bytes(70000), bytearray(16), memoryview(bytes(64))[::2], memoryview(bytes(32)),
    (), [], [None], [b""], [FRAME] * 3, ("127.0.0.1",), ("127.0.0.1", -1), ("::1", 70000),
    ("not an address", 1), ("127.0.0.1", 1, 2, 3, 4), {}, {0: (1, 2)}, {0: None}, {"a": 1},
    object(), SESSION, [SESSION, None], CLOSED, float("-inf"), 2**32, 2**16, -65536,
]


def bad() -> st.SearchStrategy[Any]:
    return st.sampled_from(BAD)


def mutated(template: list[Any]) -> st.SearchStrategy[list[Any]]:
    """The template with some arguments bad, sometimes one more or one fewer."""
    @st.composite
    def build(draw: Any) -> list[Any]:
        args = [draw(st.one_of(st.just(a), bad())) for a in template]
        change = draw(st.sampled_from(["none", "none", "none", "drop", "add"]))
        if change == "drop" and args:
            args.pop(draw(st.integers(0, len(args) - 1)))
        elif change == "add":
            args.append(draw(bad()))
        return args
    return build()


def fresh_lane() -> tuple[Any, socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    lane = m.Lane(sock.fileno(), False, False, False, 0.0)
    return lane, sock


def call(name: str, fn: Callable[..., Any], args: list[Any]) -> None:
    print(f"{name}({', '.join(map(short, args))})", file=sys.stderr, flush=True)
    try:
        fn(*args)
    except SystemError:
        raise
    except Exception:  # a clean refusal
        pass


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


#: Lane methods and their templates (port 0 is added; 5 is a free slot).
LANE: dict[str, list[Any]] = {
    "add_port": [-1, False, None],
    "set_udp_join": [0, True],
    "remove_port": [0],
    "set_port": [0, SESSION, ("127.0.0.1", 9), 1400, 1396, 1396, 1514, False],
    "set_rx": [0, [SESSION]],
    "release": [0],
    "set_mac1_key": [bytes(64)],
    "set_python_indexes": [[1, 2, 3]],
    "learn": [0, [FRAME]],
    "forget": [0, [FRAME[6:12]]],
    "knows": [0, FRAME[6:12]],
    "tap_read": [0, FRAME],
    "flush_tx": [0],
    "udp_receive": [[bytes(40)], ("127.0.0.1", 9), 0],
    "take_punts": [],
    "take_stats": [],
    "reset": [],
    "stop": [],
    "lock": [],
    "unlock": [],
    "run": [],
    "close": [],
}
NOARGS = {"take_punts", "take_stats", "reset", "stop", "lock", "unlock", "run", "close"}

FUNCTIONS: dict[str, list[Any]] = {
    "ones_sum": [FRAME],
    "complete_checksum": [FRAME, 14, 16],
    "clamp_mss": [FRAME, 1400, True],
    "segment_tcp": [FRAME, HDR, 1500],
    "coalesce": [[FRAME, FRAME], {}, False],
    "guard_fast_out": [m.guard_config(), FRAME, True],
    "guard_fast_in": [m.guard_config(), FRAME],
    "account": [FRAME, 1, len(FRAME)],
    "aead_seal": [bytes(32), bytes(12), b"", b"plain"],
    "aead_open": [bytes(32), bytes(12), b"", bytes(21)],
    "Session": [1, 2, bytes(32), bytes(32), 0.0],
    "Lane": [CLOSED, False, False, False, 0.0],
}

SESSION_METHODS: dict[str, list[Any]] = {
    "check": [5],
    "seal": [0, b"plain"],
    "open": [bytes(48)],
    "wipe": [],
}


def run(examples: int) -> int:
    cfg = settings(max_examples=examples, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))
    calls = 0

    @cfg
    @given(st.sampled_from(sorted(FUNCTIONS)), st.data())
    def function(name: str, data: Any) -> None:
        nonlocal calls
        args = data.draw(mutated(FUNCTIONS[name]))
        calls += 1
        if name == "Lane":
            try:
                obj = m.Lane(*args)
            except SystemError:
                raise
            except Exception:
                return
            obj.close()
            return
        call(name, getattr(m, name), args)
    function()

    @cfg
    @given(st.sampled_from(sorted(LANE)), st.data())
    def lane_method(name: str, data: Any) -> None:
        nonlocal calls
        lane, sock = fresh_lane()
        far, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            lane.add_port(ours.fileno(), False, None)
            template = LANE[name]
            args = data.draw(mutated(template)) if template else [data.draw(bad())]
            if name in NOARGS and not args:
                args = [None]  # the no-argument entries must refuse an argument
            calls += 1
            call(f"Lane.{name}", getattr(lane, name), args)
            # and the same lane goes on working: a valid call after the bad one
            lane.take_stats()
        finally:
            lane.stop()
            lane.close()
            sock.close()
            far.close()
            ours.close()
    lane_method()

    @cfg
    @given(st.sampled_from(sorted(SESSION_METHODS)), st.data())
    def session_method(name: str, data: Any) -> None:
        nonlocal calls
        session = m.Session(1, 2, bytes(32), bytes(32), 0.0)
        template = SESSION_METHODS[name]
        args = data.draw(mutated(template)) if template else [data.draw(bad())]
        calls += 1
        call(f"Session.{name}", getattr(session, name), args)
        for attr, value in data.draw(st.lists(st.tuples(
                st.sampled_from(["send_counter", "created", "local_index"]), bad()),
                max_size=2)):
            call(f"Session.{attr}=", lambda v, attr=attr: setattr(session, attr, v), [value])
    session_method()
    return calls


if __name__ == "__main__":
    n = run(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
    print(f"binding_args: {n} calls, no crash")
