"""Test support: a namespace lab with a real `bridger up` process on each gateway.

:class:`BridgedLab` joins two sites with command-line options (one peer);
:class:`SitesLab` runs every gateway of an N-site lab from the ``[[peers]]``
configs of :func:`bridger.lab.write_gateway_configs` (mesh or hub).
:class:`Capture` records the frames crossing one interface of a namespace.
"""

from __future__ import annotations

import contextlib
import json
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridger.errors import BridgerError
from bridger.keys import encode_key, generate_private_key, public_key, write_private_key_file
from bridger.lab import Lab, write_gateway_configs
from bridger.lab.gateways import LAB_PORT, GatewayFiles, TomlValue, peer_states
from bridger.protocol.messages import MIN_TRANSPORT_LEN, MessageType
from bridger.status.control import control_path, query_status

BRIDGER = [sys.executable, "-m", "bridger"]


class Gateways:
    """`bridger up` processes on some gateways of one lab; subclasses say how to start them."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        workdir.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_everything()

    def state_dir(self, site: str) -> Path:
        return self.workdir / f"state{site}"

    def data_plane_pid(self, site: str) -> int:
        """The process that handles the traffic: started as root, `bridger up`
        splits (issue 25) and the data plane is the monitor's one child."""
        pid = self.procs[site].pid
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.procs[site].poll() is None:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                break
            for child in children:  # the fork, not a passing `nft` of the host setup
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/cmdline").read_bytes() == cmdline:
                        return int(child)
            time.sleep(0.05)  # the split comes once the host is set up
        return pid

    def log_path(self, site: str) -> Path:
        return self.workdir / f"gw{site}.log"

    def argv(self, site: str) -> list[str]:
        raise NotImplementedError

    def expected_peers(self, site: str) -> set[str] | None:
        """Peer names that must be up at ``site`` (None: whatever the status lists)."""
        return None

    def start(self, site: str) -> subprocess.Popen[bytes]:
        with self.log_path(site).open("ab") as log:
            proc = self.lab.popen(f"gw{site}", *self.argv(site), stdout=log,
                                  stderr=subprocess.STDOUT)
        self.procs[site] = proc
        return proc

    def status(self, site: str) -> dict[str, Any] | None:
        """The document `bridger status --json` prints, asked in-process (a poll loop
        then costs no interpreter start); None where that command would fail."""
        try:
            return query_status(control_path(self.state_dir(site)), timeout=10)
        except BridgerError:
            return None

    def is_up(self, site: str) -> bool:
        """Every peer ``site`` should have reports state "up"."""
        doc = self.status(site)
        states = peer_states(doc) if doc is not None else {}
        names = self.expected_peers(site)
        wanted = names if names is not None else set(states)
        return bool(states) and bool(wanted) and all(states.get(n) == "up" for n in wanted)

    def wait_up(self, timeout: float = 20.0) -> float:
        """Wait until every running gateway has all its peers up; return the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            for site, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"gateway {site} exited:\n{self.logs()}")
            if all(self.is_up(s) for s in self.procs):
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(f"link not up after {timeout}s:\n{self.logs()}")

    def stop(self, site: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        proc = self.procs.pop(site)
        proc.send_signal(sig)
        return proc.wait(timeout)

    def stop_all(self) -> dict[str, int]:
        return {site: self.stop(site) for site in list(self.procs)}

    def logs(self) -> str:
        parts = []
        for site in self.lab.sites:
            path = self.log_path(site)
            if path.exists():
                parts.append(f"--- gw{site} ---\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def kill_everything(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()


class BridgedLab(Gateways):
    """Two gateways of one lab running bridger with one peer each: sites "A" and "B",
    or the two given in ``sites`` (e.g. ("A", "C") in a bigger lab)."""

    def __init__(self, lab: Lab, workdir: Path, *, b_dials_only: bool = False,
                 extra_args: list[str] | None = None,
                 peers: dict[str, str] | None = None,
                 sites: tuple[str, str] = ("A", "B")) -> None:
        super().__init__(lab, workdir)
        self.sites = sites
        self.keys = {site: generate_private_key() for site in sites}
        self.b_dials_only = b_dials_only
        self.extra_args = extra_args or []
        self.peers = peers or {}
        for site, key in self.keys.items():
            write_private_key_file(self.key_path(site), key)

    def __enter__(self) -> BridgedLab:
        return self

    def key_path(self, site: str) -> Path:
        return self.workdir / f"gw{site}.key"

    def argv(self, site: str) -> list[str]:
        first, second = self.sites
        other = second if site == first else first
        argv = [
            *BRIDGER, "up", "--lan", "eth1", "--key", str(self.key_path(site)),
            "--peer-key", encode_key(public_key(self.keys[other])),
            "--state-dir", str(self.state_dir(site)), "--no-dashboard", *self.extra_args,
        ]
        if site in self.peers:
            argv += ["--peer", self.peers[site]]
        elif site == second or not self.b_dials_only:
            argv += ["--peer", self.lab.gateway_wan_address(other)]
        return argv

    def start_all(self, timeout: float = 20.0) -> None:
        for site in self.sites:
            self.start(site)
        self.wait_up(timeout)


class SitesLab(Gateways):
    """Every gateway of an N-site lab running bridger from its ``[[peers]]`` config.

    ``topology`` "mesh": every site lists every other; "hub": ``hub`` lists the
    spokes (dialling them only if ``hub_dials``), each spoke lists only the hub.
    """

    def __init__(self, lab: Lab, workdir: Path, *, topology: str = "mesh", hub: str = "A",
                 hub_dials: bool = False, local: Mapping[str, TomlValue] | None = None) -> None:
        super().__init__(lab, workdir)
        self.files: dict[str, GatewayFiles] = write_gateway_configs(
            lab, workdir, topology=topology, hub=hub, hub_dials=hub_dials, local=local
        )

    def __enter__(self) -> SitesLab:
        return self

    def state_dir(self, site: str) -> Path:
        return self.files[site].state_dir

    def argv(self, site: str) -> list[str]:
        return self.files[site].up_argv()

    def expected_peers(self, site: str) -> set[str]:
        return {p.name for p in self.files[site].peers}

    def start_all(self, timeout: float = 40.0) -> None:
        for site in self.lab.sites:
            self.start(site)
        self.wait_up(timeout)

    def peer_status(self, site: str, peer_site: str) -> dict[str, Any]:
        """The status document's entry for ``peer_site`` as seen from ``site``."""
        doc = self.status(site)
        name = self.files[peer_site].name
        for peer in (doc or {}).get("peers", []):
            if peer.get("name") == name:
                return dict(peer)
        raise AssertionError(f"gw{site} reports no peer {name}: {doc}")


def addresses(lab: Lab, role: str, ifname: str, family: str) -> list[str]:
    """Addresses of ``ifname`` in ``role``'s namespace, e.g. family "inet6"."""
    out = lab.run(role, "ip", "-j", "addr", "show", "dev", ifname)
    data = json.loads(out.stdout)
    return [a["local"] for link in data for a in link.get("addr_info", [])
            if a["family"] == family]


def host_address(lab: Lab, role: str, family: str = "inet", link_local: bool = False) -> str:
    """The LAN address of a lab host (its one non-loopback interface), with %dev for fe80."""
    out = lab.run(role, "ip", "-j", "addr", "show")
    for link in json.loads(out.stdout):
        if link["ifname"] == "lo":
            continue
        for a in link.get("addr_info", []):
            if a["family"] != family:
                continue
            is_ll = a["local"].startswith("fe80:")
            if is_ll == link_local:
                return f"{a['local']}%{link['ifname']}" if is_ll else str(a["local"])
    raise AssertionError(f"{role} has no {family} address")


def host_ifname(lab: Lab, role: str) -> str:
    out = lab.run(role, "ip", "-j", "link", "show")
    return next(str(link["ifname"]) for link in json.loads(out.stdout) if link["ifname"] != "lo")


def ping(lab: Lab, role: str, *args: str, count: int = 3, timeout: float = 20) -> bool:
    out = lab.run(role, "ping", "-c", str(count), "-W", "2", *args, check=False,
                  timeout=timeout)
    return out.returncode == 0


def wait_ping(lab: Lab, role: str, *args: str, within: float = 15.0) -> float:
    """Ping once a second until one answer comes; return how long recovery took."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        out = lab.run(role, "ping", "-c", "1", "-W", "1", *args, check=False, timeout=10)
        if out.returncode == 0:
            return time.monotonic() - start
    raise AssertionError(f"{role}: no ping answer from {args} within {within}s")


def host_mac(lab: Lab, role: str) -> str:
    """The MAC address of a host's LAN interface, e.g. "02:..."."""
    out = lab.run(role, "ip", "-j", "link", "show", "dev", lab.lan_ifname(role))
    return str(json.loads(out.stdout)[0]["address"])


# -- packet capture ------------------------------------------------------------------------------

CAPTURE_SOURCE = r"""
import select, socket, sys
ifname = sys.argv[1]
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 23)  # SO_RCVBUFFORCE (root)
if sys.argv[2:] != ["later"]:  # "later": every interface, ifname may not exist yet
    sock.bind((ifname, 0))
print("ready", flush=True)
frames = []
def take():
    frame, info = sock.recvfrom(65535)
    if info[0] == ifname:
        frames.append((info[2] == socket.PACKET_OUTGOING, frame))
while True:
    ready, _, _ = select.select([sock, sys.stdin], [], [])
    if sys.stdin in ready:  # "stop" or EOF: take what is queued, then report
        sock.setblocking(False)
        try:
            while True:
                take()
        except BlockingIOError:
            break
    take()
for outgoing, frame in frames:
    print(int(outgoing), frame.hex())
"""


@dataclass(frozen=True)
class Frame:
    """One captured frame; ``outgoing`` when the captured namespace sent it."""

    outgoing: bool
    data: bytes


class Capture:
    """Records every frame crossing ``ifname`` in ``role``'s namespace, both directions.

    ``with Capture(lab, "wan", "wC") as cap: ...`` then ``cap.frames``. With
    ``later=True`` the interface may appear only during the capture (e.g. a
    tap a reload makes): every interface of the namespace is read and
    ``ifname``'s frames kept.
    """

    def __init__(self, lab: Lab, role: str, ifname: str, *, later: bool = False) -> None:
        self.lab, self.role, self.ifname = lab, role, ifname
        self.later = later
        self.frames: list[Frame] = []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Capture:
        self._proc = self.lab.popen(
            self.role, sys.executable, "-c", CAPTURE_SOURCE, self.ifname,
            *(["later"] if self.later else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            self._proc.kill()
            raise AssertionError(f"capture on {self.role}:{self.ifname} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Frame]:
        """End the capture (idempotent) and return what it saw."""
        proc, self._proc = self._proc, None
        if proc is None:
            return self.frames
        try:
            out, _ = proc.communicate("stop\n", timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            out, _ = proc.communicate()
        for line in out.splitlines():
            direction, _, data = line.partition(" ")
            if direction in ("0", "1"):
                self.frames.append(Frame(direction == "1", bytes.fromhex(data)))
        return self.frames

    def count(self, marker: bytes, *, incoming_only: bool = True) -> int:
        """Frames holding ``marker`` (by default only those that arrived)."""
        return sum(marker in f.data for f in self.frames if not (incoming_only and f.outgoing))


_ETH = struct.Struct("!6s6sH")
_UDP = struct.Struct("!HHHH")


def udp_payloads(frames: list[Frame], port: int = LAB_PORT) -> Iterator[tuple[int, bytes]]:
    """(payload size, payload bytes captured) of each UDP datagram from or to ``port``.

    IPv4 and IPv6; the size comes from the UDP header, so a datagram split into
    IP fragments counts once, at its full size.
    """
    for frame in frames:
        data = frame.data
        if len(data) < _ETH.size:
            continue
        ethertype = _ETH.unpack_from(data)[2]
        ip = data[_ETH.size:]
        if ethertype == 0x0800 and len(ip) >= 20 and ip[9] == 17:
            if struct.unpack_from("!H", ip, 6)[0] & 0x1FFF:
                continue  # a later fragment: no UDP header in it
            udp = ip[(ip[0] & 0x0F) * 4:]
        elif ethertype == 0x86DD and len(ip) >= 40 and ip[6] == 17:
            udp = ip[40:]
        else:
            continue
        if len(udp) < _UDP.size:
            continue
        sport, dport, length, _ = _UDP.unpack_from(udp)
        if port in (sport, dport) and length >= _UDP.size:
            yield length - _UDP.size, udp[_UDP.size:length]


def data_datagrams(frames: list[Frame], port: int = LAB_PORT) -> list[int]:
    """Sizes of the bridger transport messages bigger than a keepalive (they carry frames).

    Handshakes (types 1-3) and keepalives (a transport message of exactly
    MIN_TRANSPORT_LEN bytes) are not counted.
    """
    return [
        size for size, payload in udp_payloads(frames, port)
        if payload[:1] == bytes([MessageType.TRANSPORT]) and size > MIN_TRANSPORT_LEN
    ]
