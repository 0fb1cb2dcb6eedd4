"""Daemon-level memory bound: an authenticated peer sends 60 000 never-completed
fragment trains to a running `bridger up`; its RSS and reassembly stay flat."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridger.keys import encode_key, public_key
from bridger.lab import Lab, LabOptions
from bridger.protocol.constants import REASSEMBLY_MAX_FRAMES
from tests.adversarial.labtools import REPO, vm_rss_kib
from tests.e2e.bridged import BridgedLab

pytestmark = pytest.mark.netns

TRAINS = 60_000


@pytest.fixture
def link(tmp_path: Path) -> Iterator[BridgedLab]:
    with Lab(LabOptions(engine="direct")) as lab, BridgedLab(lab, tmp_path / "lab") as bridged:
        yield bridged


def _fake_b(link: BridgedLab, count: int) -> dict[str, float]:
    lab = link.lab
    out = lab.run("gwB", sys.executable, "-m", "tests.adversarial.fakepeer",
                  str(link.key_path("B")), encode_key(public_key(link.keys["A"])),
                  f"{lab.gateway_wan_address('A')}:55555", str(count), cwd=str(REPO),
                  timeout=300)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_never_completed_fragment_trains_keep_daemon_memory_flat(link: BridgedLab) -> None:
    link.start("A")
    pid = link.data_plane_pid("A")
    _fake_b(link, 5_000)  # warm-up: allocator and reassembly at their working size
    time.sleep(1)
    rss0 = vm_rss_kib(pid)
    run = _fake_b(link, TRAINS)
    time.sleep(1)
    rss1 = vm_rss_kib(pid)
    status = link.status("A")
    assert status is not None
    frags, drops = status["peers"][0]["fragments"], status["drops"]
    print(f"\n{TRAINS} trains in {run['elapsed']}s: RSS {rss0} -> {rss1} KiB, "
          f"in progress {frags['in_progress']}, overflow {drops['reassembly_overflow']}, "
          f"received {frags['received']}")
    assert frags["in_progress"] <= REASSEMBLY_MAX_FRAMES
    assert frags["received"] >= 0.9 * (TRAINS + 5_000)
    assert drops["reassembly_overflow"] >= frags["received"] - 2 * REASSEMBLY_MAX_FRAMES - 10
    assert drops["internal_error"] == 0
    assert rss1 - rss0 < 4 * 1024, "daemon RSS grew with the number of fragment trains"
    assert link.procs["A"].poll() is None
