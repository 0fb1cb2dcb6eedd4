"""An error inside a daemon task ends `bridger up` with one line, host restored.

Regression (review item 2): Trio's strict exception groups carried a task's
error (a failed tap read, a control socket that cannot be bound) to the user
as a Python traceback inside an ExceptionGroup, instead of the promised line.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bridger.lab import Lab, LabOptions
from bridger.status.control import control_path
from tests.e2e.bridged import BridgedLab
from tests.e2e.test_resilience import snapshot_host

pytestmark = pytest.mark.netns


def _finish(link: BridgedLab, site: str, timeout: float = 20.0) -> tuple[int, str]:
    proc = link.procs.pop(site)
    code = proc.wait(timeout)
    return code, link.log_path(site).read_text(errors="replace")


def _assert_one_line_error(code: int, output: str, expect: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output and "ExceptionGroup" not in output, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("bridger: ") and expect in last, output
    assert last.endswith("host network restored"), output


def test_a_tap_read_failure_is_one_line_and_the_host_is_restored(tmp_path: Path) -> None:
    with Lab(LabOptions(engine="direct")) as lab, BridgedLab(lab, tmp_path) as link:
        before = snapshot_host(lab, "gwA")
        link.start("A")
        deadline = time.monotonic() + 20
        while link.status("A") is None:
            assert time.monotonic() < deadline, link.logs()
            time.sleep(0.2)
        lab.run("gwA", "ip", "link", "del", "bridger-tap0")  # an admin's slip
        code, output = _finish(link, "A")
        _assert_one_line_error(code, output, "tap bridger-tap0: read failed")
        assert snapshot_host(lab, "gwA") == before


def test_a_control_socket_that_cannot_be_bound_is_one_line_and_the_host_is_restored(
    tmp_path: Path,
) -> None:
    with Lab(LabOptions(engine="direct")) as lab, BridgedLab(lab, tmp_path) as link:
        before = snapshot_host(lab, "gwA")
        path = control_path(link.state_dir("A"))
        path.mkdir(parents=True)  # something else sits where the socket goes
        (path / "keep").write_text("x")
        link.start("A")
        code, output = _finish(link, "A")
        _assert_one_line_error(code, output, str(path))
        assert snapshot_host(lab, "gwA") == before
