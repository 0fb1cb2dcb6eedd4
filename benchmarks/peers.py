"""How each tunnel under comparison is started on a lab gateway.

Every peer is configured the way a user would pick it for this job: a tap
interface in a Linux bridge with ``eth1`` (eth1's addresses moved to the
bridge, as ``bridger up`` does), UDP, the simplest secure configuration.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridger.keys import encode_key, generate_private_key, public_key, write_private_key_file
from bridger.lab import Lab

ROOT = Path(__file__).resolve().parents[1]
SITES = ("A", "B")
PORT = 55555


def other(site: str) -> str:
    return "B" if site == "A" else "A"


@dataclass
class Runner:
    """Base: start/stop one tunnel on both gateways; ``pids`` for CPU/RSS sampling."""

    lab: Lab
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    name: str = "?"

    def start(self) -> None:
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        return {site: proc.pid for site, proc in self.procs.items()}

    def log(self, site: str) -> Path:
        return self.workdir / f"{self.name}-gw{site}.log"

    def _popen(self, site: str, *argv: str, env: dict[str, str] | None = None) -> None:
        with self.log(site).open("ab") as log:
            self.procs[site] = self.lab.popen(
                f"gw{site}", *argv, stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        self.unbridge()

    def unbridge(self) -> None:
        """Peers: put eth1's addresses back (bridger restores the host itself)."""

    def logs(self) -> str:
        return "\n".join(
            f"--- {self.name} gw{s} ---\n" + self.log(s).read_text(errors="replace")[-3000:]
            for s in SITES if self.log(s).exists()
        )


class Bridger(Runner):
    """``bridger up`` on each gateway; ``offload`` toggles the fast path (--no-offload),
    ``extra`` adds options, ``root`` runs another checkout (a commit to compare with)."""

    def __init__(self, lab: Lab, workdir: Path, *, offload: bool = True,
                 name: str | None = None, extra: tuple[str, ...] = (),
                 root: Path = ROOT) -> None:
        super().__init__(lab, workdir,
                         name=name or ("bridger" if offload else "bridger-nooffload"))
        self.offload = offload
        self.extra = extra
        self.root = root
        self.keys = {s: generate_private_key() for s in SITES}
        for s in SITES:
            write_private_key_file(workdir / f"{self.name}-{s}.key", self.keys[s])

    def start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(self.root), env.get("PYTHONPATH")]))
        for s in SITES:
            self._popen(
                s, sys.executable, "-m", "bridger", "up", "--lan", "eth1",
                "--key", str(self.workdir / f"{self.name}-{s}.key"),
                "--peer-key", encode_key(public_key(self.keys[other(s)])),
                "--peer", self.lab.gateway_wan_address(other(s)),
                "--state-dir", str(self.workdir / f"{self.name}-state{s}"),
                "--no-dashboard", *([] if self.offload else ["--no-offload"]), *self.extra,
                env=env,
            )


class BridgedPeer(Runner):
    """A peer that makes a tap named ``tap``; the script bridges it with eth1."""

    tap = "ptap0"
    bridge = "pbr0"

    def __init__(self, lab: Lab, workdir: Path, name: str) -> None:
        super().__init__(lab, workdir, name=name)
        self._addrs: dict[str, list[str]] = {}

    def bridge_up(self, site: str, timeout: float = 15.0) -> None:
        """Wait for the tap, then the same host setup bridger does: br + eth1 + tap."""
        gw = f"gw{site}"
        deadline = time.monotonic() + timeout
        while self.lab.run(gw, "ip", "link", "show", self.tap, check=False).returncode:
            if time.monotonic() > deadline or self.procs[site].poll() is not None:
                raise RuntimeError(f"{self.name}: no tap on gw{site}\n{self.logs()}")
            time.sleep(0.1)
        out = self.lab.run(gw, "ip", "-o", "addr", "show", "dev", "eth1").stdout
        self._addrs[site] = re.findall(r"inet6? (\S+)", out)
        addrs = [a for a in self._addrs[site] if not a.startswith("fe80")]
        mac = self.lab.run(gw, "cat", "/sys/class/net/eth1/address").stdout.strip()
        cmds = [
            f"link add {self.bridge} type bridge",
            f"link set {self.bridge} address {mac} mtu 1500",
            f"link set {self.tap} mtu 1500 master {self.bridge} up",
            *(f"addr del {a} dev eth1" for a in addrs),
            f"link set eth1 master {self.bridge}",
            *(f"addr add {a} dev {self.bridge}" for a in addrs),
            f"link set {self.bridge} up",
        ]
        for cmd in cmds:
            self.lab.run(gw, "ip", *cmd.split())

    def unbridge(self) -> None:
        for site, addrs in self._addrs.items():
            gw = f"gw{site}"
            self.lab.run(gw, "ip", "link", "del", self.bridge, check=False)
            for a in addrs:
                if not a.startswith("fe80"):
                    self.lab.run(gw, "ip", "addr", "add", a, "dev", "eth1", check=False)
        self._addrs.clear()


class OpenVpn(BridgedPeer):
    """OpenVPN 2.6 tap, UDP, TLS with self-signed certificates pinned by fingerprint.

    Peer-fingerprint mode is the simplest secure setup OpenVPN 2.6 offers
    (static-key mode is deprecated); the data channel is AES-256-GCM.
    """

    def __init__(self, lab: Lab, workdir: Path) -> None:
        super().__init__(lab, workdir, "openvpn")
        self.fp: dict[str, str] = {}
        for s in SITES:
            key, crt = workdir / f"ovpn-{s}.key", workdir / f"ovpn-{s}.crt"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", f"/CN=gw{s}",
                 "-keyout", str(key), "-out", str(crt)],
                check=True, capture_output=True,
            )
            out = subprocess.run(
                ["openssl", "x509", "-in", str(crt), "-noout", "-fingerprint", "-sha256"],
                check=True, capture_output=True, text=True,
            ).stdout
            self.fp[s] = out.strip().split("=", 1)[1]

    def start(self) -> None:
        for s in SITES:
            role = ["--tls-server", "--dh", "none"] if s == "A" else ["--tls-client"]
            self._popen(
                s, "openvpn", "--dev", self.tap, "--dev-type", "tap", "--proto", "udp",
                "--local", self.lab.gateway_wan_address(s), "--lport", str(PORT),
                "--remote", self.lab.gateway_wan_address(other(s)), "--rport", str(PORT),
                "--cert", str(self.workdir / f"ovpn-{s}.crt"),
                "--key", str(self.workdir / f"ovpn-{s}.key"),
                "--peer-fingerprint", self.fp[other(s)], *role,
                "--data-ciphers", "AES-256-GCM", "--tun-mtu", "1500",
                "--disable-dco", "--verb", "3", "--ping", "10",
                # the same 4 MB socket buffers bridger asks for: a fair comparison
                "--sndbuf", "4194304", "--rcvbuf", "4194304", "--txqueuelen", "1000",
            )
        for s in SITES:
            self.bridge_up(s)


class Fastd(BridgedPeer):
    """fastd in tap mode, salsa2012+umac (its fast recommended method), static peer."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        super().__init__(lab, workdir, "fastd")
        self.secret: dict[str, str] = {}
        self.public: dict[str, str] = {}
        for s in SITES:
            out = subprocess.run(["fastd", "--generate-key"], check=True, capture_output=True,
                                 text=True).stdout
            self.secret[s] = re.search(r"Secret: (\w+)", out).group(1)  # type: ignore[union-attr]
            self.public[s] = re.search(r"Public: (\w+)", out).group(1)  # type: ignore[union-attr]

    def start(self) -> None:
        for s in SITES:
            o = other(s)
            conf = self.workdir / f"fastd-{s}.conf"
            conf.write_text(
                f'interface "{self.tap}";\nmode tap;\nmethod "salsa2012+umac";\n'
                f'secret "{self.secret[s]}";\nmtu 1500;\npmtu no;\n'
                f"bind {self.lab.gateway_wan_address(s)}:{PORT};\n"
                f'peer "gw{o}" {{ key "{self.public[o]}"; '
                f"remote {self.lab.gateway_wan_address(o)}:{PORT}; }}\n"
            )
            self._popen(s, "fastd", "--config", str(conf), "--log-level", "info")
        for s in SITES:
            self.bridge_up(s)


def make(name: str, lab: Lab, workdir: Path) -> Runner:
    table: dict[str, Any] = {
        "bridger": lambda: Bridger(lab, workdir),
        "bridger-nooffload": lambda: Bridger(lab, workdir, offload=False),
        # The guards off: what loop protection, storm control and the rest cost.
        "bridger-noguard": lambda: Bridger(lab, workdir, name="bridger-noguard",
                                           extra=("--no-loop-protection", "--flood-rate", "0")),
        # Another checkout (BRIDGER_BASE=DIR, e.g. a `git worktree` of the commit
        # before a change), measured in the same run.
        "bridger-base": lambda: Bridger(lab, workdir, name="bridger-base",
                                        root=Path(os.environ["BRIDGER_BASE"])),
        "openvpn": lambda: OpenVpn(lab, workdir),
        "fastd": lambda: Fastd(lab, workdir),
    }
    runner: Runner = table[name]()
    return runner
