"""Every test of the protocol core, again with native sessions.

tests/protocol/conftest.py gives each Device made there the native lane's
Session type when BRIDGER_TEST_SESSIONS=native, so the replay window and the
send counter the core uses are the C ones: replays rejected, any flipped bit
rejected, unknown indexes dropped, the simulations' counters as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridger.native import lane

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(lane is None and os.geteuid() != 0, reason="native path not built")
def test_protocol_suite_passes_with_native_sessions() -> None:
    env = dict(os.environ, BRIDGER_TEST_SESSIONS="native")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/protocol"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout


def test_native_sessions_are_really_used() -> None:
    """The switch works: a Device made under it hands out native sessions."""
    if lane is None:
        pytest.skip("native path not built")
    code = (
        "import tests.protocol.conftest\n"
        "from bridger.protocol import Device, DeviceConfig\n"
        "d = Device(DeviceConfig(bytes(range(32))), now=0.0, wall_clock=0.0)\n"
        "print(type(d.new_session(1, 2, bytes(32), bytes(32), 0.0)).__name__)\n"
    )
    env = dict(os.environ, BRIDGER_TEST_SESSIONS="native")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "Session"
