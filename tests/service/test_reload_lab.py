"""Reload without a restart, in the lab: SIGHUP re-reads the config.

Both gateways run from ``[[peers]]`` files. While a ping runs across the
A-B link, A is sent a broken file, a file changing a fixed setting, a file
adding a peer and one removing it: the broken ones are refused with one log
line, the peer's tap comes and goes, and the unchanged A-B session loses no
frame. Then A's private key is rotated on both ends by reload: traffic flows
again and neither daemon restarted. Last, one reload swaps A's peer B for C
under traffic both ways (the native lane hands B's freed port slot to C at
once): no frame of B's reaches C's tap or site C, and none of A's meant for B.

One three-site lab serves the module (a lab costs more than a test's own
gateways); each test runs its own daemons and leaves the gateways as found.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridger.keys import encode_key, generate_private_key, public_key, write_private_key_file
from bridger.lab import Lab, LabOptions
from bridger.status.control import control_path, query_status
from tests.e2e.bridged import BRIDGER, Capture, Frame, host_address, host_mac, wait_ping

pytestmark = pytest.mark.netns

BRIDGE = "bridger0"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(LabOptions(sites=3, engine="direct")) as lab:  # no impairment: no wire
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
        """Kill a daemon still running (a test that failed) and undo what it left on
        the gateway, for the next test of the module's lab."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self.lab.run(self.role, *BRIDGER, "down", "--state-dir", str(self.dir / "state"),
                         check=False, timeout=30)


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
    """What `bridger status --json` prints, asked in-process (no interpreter per poll)."""
    return query_status(control_path(site.dir / "state"), timeout=10)


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


#: Ping payload patterns (``ping -p``): which site's LAN sent a frame.
MARK_A, MARK_B = "a5a5a5a5a5a5a5a5", "b5b5b5b5b5b5b5b5"


def _marked(frames: list[Frame]) -> list[bytes]:
    """The frames holding either pattern (it repeats over a ping's payload)."""
    marks = [bytes.fromhex(m) * 2 for m in (MARK_A, MARK_B)]
    return [f.data for f in frames if any(m in f.data for m in marks)]


def _written_into(lab: Lab, role: str, tap: str) -> int:
    """Frames the daemon has written into ``tap`` (the kernel counts them as received)."""
    out = lab.run(role, "ip", "-s", "-j", "link", "show", "dev", tap).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


def test_a_peer_swapped_by_one_reload_under_traffic_gets_none_of_the_old_ones_frames(
    lab: Lab, tmp_path: Path,
) -> None:
    """A runs with peer B, then one reload removes B and adds C while B pings A's
    LAN and both LANs broadcast: B's port slot in the native lane goes to C at
    once, with hand-overs of B's frames maybe still queued (issue 21).

    A frame of B's written into C's tap shows there as written by the daemon
    (incoming): none may come from site B's addresses or carry B's pattern. A
    frame of A's LAN read from B's tap and sealed to C would reach site C
    without ever leaving A's bridge through C's tap: every marked frame site C
    gets from A must have left through that tap, as often as it arrives.
    """
    a, b, c = (Site(lab, tmp_path, name) for name in "abc")
    a.write([b.entry()])
    b.write([a.entry()])
    c.write([a.entry()])  # C calls A; A does not know C until the reload
    b_macs = {bytes.fromhex(host_mac(lab, h).replace(":", "")) for h in lab.hosts("B")}
    b_macs.add(bytes.fromhex(lab.run("gwB", "cat", "/sys/class/net/eth1/address")
                             .stdout.strip().replace(":", "")))
    a1 = host_address(lab, "hostA1")
    pingers: list[subprocess.Popen[bytes]] = []
    try:
        a.start()
        b.start()
        c.start()
        wait_ping(lab, "hostB1", a1, within=20)
        c.wait_ports("a", True)
        with Capture(lab, "gwA", "c", later=True) as tap_c, Capture(lab, "gwC", "a") as at_c:
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            pingers = [
                lab.popen("hostB1", "ping", "-q", "-i", "0.005", "-s", "200", "-p", MARK_B,
                          a1, **quiet),
                lab.popen("hostB2", "ping", "-q", "-b", "-i", "0.01", "-p", MARK_B,
                          "192.168.1.255", **quiet),
                lab.popen("hostA2", "ping", "-q", "-b", "-i", "0.01", "-p", MARK_A,
                          "192.168.1.255", **quiet),
            ]
            wait_ping(lab, "hostB1", a1, within=10)  # the traffic is under way
            a.write([c.entry()])
            since = a.reload()
            a.wait_ports("b", False)
            a.wait_ports("c", True)
            wait_ping(lab, "hostC1", a1, within=20)  # C's session carries frames both ways
            # ... and A's broadcasts (100/s) go on reaching site C.
            written = _written_into(lab, "gwC", "a")
            deadline = time.monotonic() + 10
            while _written_into(lab, "gwC", "a") < written + 50:
                assert time.monotonic() < deadline, a.log_text(since)
                time.sleep(0.05)
            assert all(proc.poll() is None for proc in pingers)  # the swap was under traffic
        for site in (a, b, c):
            assert site.stop() == 0, site.log_text()
    finally:
        for proc in pingers:
            proc.kill()
            proc.wait()
        for site in (a, b, c):
            site.kill()
    into_c = [f for f in tap_c.frames if not f.outgoing]
    from_b = [f.data.hex() for f in into_c if f.data[6:12] in b_macs]
    marked_b = [d.hex() for d in _marked(into_c) if bytes.fromhex(MARK_B) * 2 in d]
    assert not from_b and not marked_b, (from_b[:3], marked_b[:3], a.log_text())
    left_for_c = Counter(_marked([f for f in tap_c.frames if f.outgoing]))
    got_at_c = Counter(_marked([f for f in at_c.frames if not f.outgoing]))
    leaked = got_at_c - left_for_c
    assert not leaked, (f"{sum(leaked.values())} frames reached site C that never left "
                        f"A's bridge through C's tap", a.log_text())
    assert got_at_c and left_for_c  # A's broadcasts crossed to C, seen at both ends
