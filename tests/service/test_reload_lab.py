"""Reload without a restart, in the lab: SIGHUP re-reads the config.

Both gateways run from ``[[peers]]`` files. While a ping runs across the
A-B link, A is sent a broken file, a file changing a fixed setting, a file
adding a peer and one removing it: the broken ones are refused with one log
line, the peer's tap comes and goes, and the unchanged A-B session loses no
frame. Then A's private key is rotated on both ends by reload: traffic flows
again and neither daemon restarted.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridger.keys import encode_key, generate_private_key, public_key, write_private_key_file
from bridger.lab import Lab, LabOptions
from tests.e2e.bridged import BRIDGER, host_address, wait_ping

pytestmark = pytest.mark.netns

BRIDGE = "bridger0"


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(LabOptions()) as lab:
        yield lab


class Site:
    def __init__(self, lab: Lab, workdir: Path, name: str) -> None:
        self.lab = lab
        self.name = name  # "a" or "b"
        self.role = "gw" + name.upper()
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.key_path = self.dir / "private.key"
        self.private = generate_private_key()
        write_private_key_file(self.key_path, self.private)
        self.config = self.dir / "site.toml"
        self.log = self.dir / "log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def public(self) -> str:
        return encode_key(public_key(self.private))

    def entry(self) -> dict[str, str]:
        """This site as a [[peers]] entry of the other's config."""
        return {"name": self.name, "public_key": self.public,
                "host": self.lab.gateway_wan_address(self.name.upper())}

    def write(self, peers: list[dict[str, str]], **local: object) -> None:
        lines = ["[local]", 'lan = "eth1"', f'key = "{self.key_path}"',
                 f'state_dir = "{self.dir / "state"}"', "dashboard = false"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in local.items()]
        for peer in peers:
            lines += ["", "[[peers]]"] + [f"{k} = {json.dumps(v)}" for k, v in peer.items()]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = self.lab.popen(self.role, *BRIDGER, "up", "--config", str(self.config),
                                       stdout=log, stderr=subprocess.STDOUT)

    def reload(self) -> int:
        """SIGHUP; returns the log size before, to look only at what follows."""
        size = self.log.stat().st_size
        assert self.proc is not None and self.proc.poll() is None, self.log_text()
        self.proc.send_signal(signal.SIGHUP)
        return size

    def log_text(self, since: int = 0) -> str:
        return self.log.read_bytes()[since:].decode(errors="replace")

    def wait_log(self, pattern: str, since: int, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_text(since).splitlines():
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line {pattern!r}:\n{self.log_text(since)}")

    def ports(self) -> list[str]:
        out = self.lab.run(self.role, "ip", "-j", "link", "show", "master", BRIDGE, check=False)
        return [link["ifname"] for link in json.loads(out.stdout or "[]")]

    def wait_ports(self, present: str, want: bool, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (present in self.ports()) != want:
            assert time.monotonic() < deadline, (present, want, self.ports(), self.log_text())
            time.sleep(0.05)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _start_linked(lab: Lab, a: Site, b: Site) -> tuple[str, tuple[int, int]]:
    """Start both sites and wait for a ping across; hostB1's address and the pids."""
    a.start()
    b.start()
    b1 = host_address(lab, "hostB1")
    wait_ping(lab, "hostA1", b1, within=20)
    assert a.proc is not None and b.proc is not None
    return b1, (a.proc.pid, b.proc.pid)


def test_reload_adds_removes_refuses_and_rekeys(lab: Lab, tmp_path: Path) -> None:
    a, b = Site(lab, tmp_path, "a"), Site(lab, tmp_path, "b")
    b_wan = lab.gateway_wan_address("B")
    peer_b = b.entry()
    a.write([peer_b])
    b.write([a.entry()])
    try:
        b1, pids = _start_linked(lab, a, b)

        pinger = lab.popen("hostA1", "ping", "-i", "0.05", "-c", "160", "-W", "1", b1,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        a.config.write_text(a.config.read_text().replace(f'host = "{b_wan}"',
                                                         f'host = "{b_wan}"\nport = 0'))
        since = a.reload()
        line = a.wait_log("reload refused", since)
        assert "running configuration kept" in line and "peers[1].port" in line, line

        a.write([peer_b], listen=4000)
        since = a.reload()
        line = a.wait_log("reload refused", since)
        assert "local.listen cannot change while running" in line, line

        other = encode_key(public_key(generate_private_key()))
        a.write([peer_b, {"name": "c", "public_key": other}])
        since = a.reload()
        a.wait_ports("c", True)
        a.write([peer_b])
        since = a.reload()
        a.wait_ports("c", False)
        assert "b" in a.ports()

        out, _ = pinger.communicate(timeout=60)
        summary = out.decode()
        assert re.search(r"160 packets transmitted, 160 received", summary), summary

        # A new key for A: written on both ends, then both reload. No restart.
        new_private = generate_private_key()
        write_private_key_file(a.key_path, new_private)
        a.private = new_private
        b.write([a.entry()])
        a.reload()
        b.reload()
        wait_ping(lab, "hostA1", b1, within=10)
        assert (a.proc.pid, b.proc.pid) == pids  # type: ignore[union-attr]
        assert a.proc.poll() is None and b.proc.poll() is None  # type: ignore[union-attr]

        assert a.stop() == 0, a.log_text()
        assert b.stop() == 0, b.log_text()
    finally:
        a.kill()
        b.kill()


def _status(site: Site) -> dict[str, object]:
    out = subprocess.run([*BRIDGER, "status", "--json", "--state-dir", str(site.dir / "state")],
                         capture_output=True, text=True, timeout=10, check=True)
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def _peer_states(site: Site) -> dict[str, str]:
    peers = _status(site)["peers"]
    assert isinstance(peers, list)
    return {p["name"]: p["state"] for p in peers}


def _wait_states(site: Site, want: dict[str, str], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while (states := _peer_states(site)) != want:
        assert time.monotonic() < deadline, (states, want, site.log_text())
        time.sleep(0.1)


def test_a_peer_added_by_reload_comes_up_and_a_removed_one_leaves_status(
    lab: Lab, tmp_path: Path,
) -> None:
    a, b = Site(lab, tmp_path, "a"), Site(lab, tmp_path, "b")
    stranger = {"name": "c", "public_key": encode_key(public_key(generate_private_key()))}
    a.write([stranger])  # A starts knowing only a site that never calls
    b.write([a.entry()])
    try:
        a.start()
        b.start()
        a.wait_log("up: eth1", 0)
        _wait_states(a, {"c": "down"})
        a.write([stranger, b.entry()])
        a.reload()
        _wait_states(a, {"c": "down", "b": "up"})
        wait_ping(lab, "hostA1", host_address(lab, "hostB1"), within=10)
        a.write([b.entry()])
        a.reload()
        _wait_states(a, {"b": "up"})
        a.wait_ports("c", False)
        assert a.stop() == 0, a.log_text()
        assert b.stop() == 0, b.log_text()
    finally:
        a.kill()
        b.kill()


def test_key_rotation_on_one_side_under_traffic(lab: Lab, tmp_path: Path) -> None:
    """A gets a new key while a ping runs: B learns A's new public key, A takes its
    new private key, both by reload; the ping loses at most the reload gap."""
    a, b = Site(lab, tmp_path, "a"), Site(lab, tmp_path, "b")
    a.write([b.entry()])
    b.write([a.entry()])
    try:
        b1, pids = _start_linked(lab, a, b)
        pinger = lab.popen("hostA1", "ping", "-i", "0.05", "-c", "100", "-W", "1", b1,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.0)
        new_private = generate_private_key()
        write_private_key_file(a.key_path, new_private)  # A's config file is unchanged
        a.private = new_private
        b.write([a.entry()])
        b.reload()
        a.reload()
        out, _ = pinger.communicate(timeout=60)
        summary = out.decode()
        got = re.search(r"100 packets transmitted, (\d+) received", summary)
        assert got is not None, summary
        assert int(got[1]) >= 90, summary  # 5 s of pings; the gap is a reload and a handshake
        wait_ping(lab, "hostA1", b1, within=5)
        assert (a.proc.pid, b.proc.pid) == pids  # type: ignore[union-attr]
        assert _peer_states(a) == {"b": "up"} and _peer_states(b) == {"a": "up"}
    finally:
        a.kill()
        b.kill()
