"""Property tests (hypothesis) at the network boundary.

HYPOTHESIS_PROFILE=long runs many more examples (see docs/protocol.md).
"""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridger.protocol import DropReason, Tunnel
from tests.protocol.simnet import WALL_EPOCH, Sim

settings.register_profile(
    "default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _established() -> tuple[Sim, list[tuple[int, bytes]]]:
    """A session, plus every datagram captured in both directions (receiver, bytes)."""
    sim = Sim(seed=11, keepalive=0)
    captured: list[tuple[int, bytes]] = []
    original = sim._transmit

    def tap(src: tuple[str, int], dest: tuple[str, int], datagram: bytes) -> None:
        if len(datagram) + 28 <= sim.link.mtu:  # only what the link delivers
            captured.append((0 if dest == sim.addrs[0] else 1, datagram))
        original(src, dest, datagram)

    sim._transmit = tap  # type: ignore[method-assign]
    sim.send(0, 100)
    sim.run_until(1)
    sim.send(1, 1514)  # fragmented
    sim.send(0, 64)
    sim.run_until(2)
    return sim, captured


SIM, CAPTURED = _established()


def _session(t: Tunnel) -> tuple[object, ...]:
    return (
        t.current and t.current.receive_key,
        t.previous and t.previous.receive_key,
        t.next and t.next.receive_key,
        t.endpoint,
        t.path_mtu,
    )


def _rejected(t: Tunnel, data: bytes, now: float) -> bool:
    before_drops = sum(t.drops.values())
    before = _session(t)
    out = t.receive_datagram(data, ("203.0.113.66", 4444), now, WALL_EPOCH + now)
    return (
        not out.frames
        # the only answer a rejected datagram may get is a cookie reply (type 3,
        # after a valid mac1 but wrong mac2), which creates no state
        and all(d[0] == 3 for d, _ in out.datagrams)
        and sum(t.drops.values()) == before_drops + 1
        and _session(t) == before
        and t.drops[DropReason.INTERNAL_ERROR] == 0
    )


@given(st.binary(max_size=2000), st.sampled_from([0, 1]), st.sampled_from([1, 2, 3, 4, 9]))
def test_arbitrary_bytes_never_raise_nor_change_the_session(
    data: bytes, who: int, first: int
) -> None:
    t = SIM.peers[who].tunnel
    # also aim at each message type: same first word, random rest
    for candidate in (data, bytes([first, 0, 0, 0]) + data):
        assert _rejected(t, candidate, SIM.now)


@given(st.data())
def test_flipping_any_bit_gets_a_datagram_rejected(data: st.DataObject) -> None:
    who, datagram = data.draw(st.sampled_from(CAPTURED))
    bit = data.draw(st.integers(0, len(datagram) * 8 - 1))
    flipped = bytearray(datagram)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert _rejected(SIM.peers[who].tunnel, bytes(flipped), SIM.now)


@given(st.sampled_from(CAPTURED))
def test_replaying_any_captured_datagram_is_rejected(item: tuple[int, bytes]) -> None:
    who, datagram = item
    assert _rejected(SIM.peers[who].tunnel, datagram, SIM.now)


def test_capture_covers_every_message_kind() -> None:
    kinds = {d[0] for _, d in CAPTURED}
    assert {1, 2, 4} <= kinds
    assert len(CAPTURED) >= 6


def test_core_imports_no_io_modules() -> None:
    code = (
        "import sys, bridger.protocol\n"
        "bad = {'trio', 'socket', 'select', 'selectors', 'asyncio', 'pyroute2', 'subprocess'}\n"
        "print(sorted(bad & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=os.getcwd()
    )
    assert result.stdout.strip() == "[]"


def test_core_source_has_no_io_imports() -> None:
    import ast
    from pathlib import Path

    import bridger.protocol

    banned = {"trio", "socket", "select", "selectors", "asyncio", "pyroute2", "os", "time"}
    for path in Path(bridger.protocol.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"
