"""The mission's command, exactly as written, on gateways configured in /etc/bridger.

Each gateway namespace gets its own /etc/bridger (``ip netns exec`` bind-mounts
/etc/netns/<ns>/* over /etc) with ``bridger.toml`` and ``private.key`` as
``bridger init`` writes them, and its own /etc/hosts naming the other site.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridger.keys import encode_key, generate_private_key, public_key, write_private_key_file
from bridger.lab import Lab, LabOptions
from tests.e2e.bridged import BRIDGER, host_address, wait_ping

pytestmark = pytest.mark.netns

NAMES = {"A": "london.example", "B": "berlin.example"}


@pytest.fixture
def etc_bridger() -> Iterator[None]:
    """`ip netns exec` mounts /etc/netns/<ns>/bridger only over an existing /etc/bridger."""
    made = not Path("/etc/bridger").exists()
    if made:
        Path("/etc/bridger").mkdir()
    yield
    if made:
        Path("/etc/bridger").rmdir()


def _configure(lab: Lab, site: str, other: str, keys: dict[str, bytes], run: Path) -> Path:
    etc = Path("/etc/netns") / lab.ns(f"gw{site}")
    (etc / "bridger").mkdir(parents=True)
    write_private_key_file(etc / "bridger" / "private.key", keys[site])
    (etc / "bridger" / "bridger.toml").write_text(
        "[local]\n"
        f'state_dir = "{run / site}"\n'
        "\n[[peers]]\n"
        f'name = "{NAMES[other].split(".")[0]}"\n'
        f'host = "{NAMES[other]}"\n'
        f'public_key = "{encode_key(public_key(keys[other]))}"\n'
    )
    (etc / "hosts").write_text(
        f"127.0.0.1 localhost\n{lab.gateway_wan_address(other)} {NAMES[other]}\n"
    )
    return etc


def test_bridger_up_lan_eth1_peer_berlin_example(etc_bridger: None, tmp_path: Path) -> None:
    keys = {"A": generate_private_key(), "B": generate_private_key()}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with Lab(LabOptions(engine="direct")) as lab:
        etcs = [_configure(lab, s, o, keys, tmp_path) for s, o in (("A", "B"), ("B", "A"))]
        try:
            for site, other in (("A", "B"), ("B", "A")):
                with (tmp_path / f"gw{site}.log").open("wb") as log:
                    # The mission's command, as typed on the gateway:
                    procs[site] = lab.popen(
                        f"gw{site}", *BRIDGER, "up", "--lan", "eth1", "--peer", NAMES[other],
                        stdout=log, stderr=subprocess.STDOUT,
                    )
            deadline = time.monotonic() + 30
            while True:
                states = []
                for site in "AB":
                    out = subprocess.run(
                        [*BRIDGER, "status", "--json", "--state-dir", str(tmp_path / site)],
                        capture_output=True, text=True, timeout=10)
                    states.append(json.loads(out.stdout)["peers"][0]["state"]
                                  if out.returncode == 0 else None)
                if states == ["up", "up"]:
                    break
                logs = [(tmp_path / f"gw{s}.log").read_text() for s in "AB"]
                assert time.monotonic() < deadline, logs
                assert all(p.poll() is None for p in procs.values()), logs
                time.sleep(0.3)
            wait_ping(lab, "hostA1", host_address(lab, "hostB1"))
        finally:
            for proc in procs.values():
                proc.terminate()
            codes = [proc.wait(20) for proc in procs.values()]
            for etc in etcs:
                shutil.rmtree(etc)
        assert codes == [0, 0], [(tmp_path / f"gw{s}.log").read_text() for s in "AB"]
        assert "Traceback" not in (tmp_path / "gwA.log").read_text()
