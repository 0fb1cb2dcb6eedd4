"""How each tunnel under comparison is started on a lab gateway.

Every peer is configured the way a user would pick it for this job: a tap
interface in a Linux bridge with ``eth1`` (eth1's addresses moved to the
bridge, as ``bridger up`` does), UDP, the simplest secure configuration.

On a lab with a narrow hop (``LabOptions.path_mtu_b``) each peer is set up as
its manual tells a user who knows the path MTU (``Runner.path_mtu``), and
``Runner.notes`` says what was set; bridger gets no MTU option at all (it has
to find the path MTU itself).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
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
    #: What this tunnel was configured with for the path (MTU settings), for the table.
    notes: list[str] = field(default_factory=list)

    def start(self) -> None:
        raise NotImplementedError

    @property
    def path_mtu(self) -> int:
        """The path MTU between the gateways, as a user who measured it would know it."""
        opts = self.lab.options
        return opts.wan_mtu if opts.path_mtu_b is None else min(opts.path_mtu_b, opts.wan_mtu)

    @property
    def narrow(self) -> bool:
        """Whether the path is narrower than the gateways' own WAN links."""
        return self.path_mtu < self.lab.options.wan_mtu

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until the tunnel has finished adapting to the path (after the first ping)."""

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
        self.notes.append("no MTU option: finds the path MTU itself")
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
    #: The tap's MTU in the bridge: the LAN's, or the bridge drops larger frames.
    tap_mtu = 1500

    def __init__(self, lab: Lab, workdir: Path, name: str) -> None:
        super().__init__(lab, workdir, name=name)
        self._addrs: dict[str, list[str]] = {}

    def attach_command(self) -> str:
        """The ``ip`` command that puts the tap into the bridge."""
        return f"link set {self.tap} mtu {self.tap_mtu} master {self.bridge} up"

    def bridge_up(self, site: str, timeout: float = 15.0, attach: bool = True) -> None:
        """Wait for the tap, then the same host setup bridger does: br + eth1 + tap.

        ``attach=False``: the bridge with eth1 only, before the tunnel starts; the
        tunnel's own up-script runs :meth:`attach_command` (tinc's ``tinc-up``).
        """
        gw = f"gw{site}"
        deadline = time.monotonic() + timeout
        while attach and self.lab.run(gw, "ip", "link", "show", self.tap,
                                      check=False).returncode:
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
            *([self.attach_command()] if attach else []),
            *(f"addr del {a} dev eth1" for a in addrs),
            f"link set eth1 master {self.bridge}",
            *(f"addr add {a} dev {self.bridge}" for a in addrs),
            f"link set {self.bridge} up",
        ]
        for cmd in cmds:
            self.lab.run(gw, "ip", *cmd.split())

    def wait_attached(self, site: str, timeout: float = 15.0) -> None:
        """Wait until the tunnel's own script has put the tap into the bridge."""
        master = f"/sys/class/net/{self.tap}/master"
        deadline = time.monotonic() + timeout
        while self.lab.run(f"gw{site}", "test", "-e", master, check=False).returncode:
            if time.monotonic() > deadline or self.procs[site].poll() is not None:
                raise RuntimeError(f"{self.name}: tap not bridged on gw{site}\n{self.logs()}")
            time.sleep(0.1)

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

    def __init__(self, lab: Lab, workdir: Path, *, fragment: bool = True) -> None:
        super().__init__(lab, workdir, "openvpn" if fragment else "openvpn-mssfix")
        #: False: on a narrow path only ``--mssfix`` (TCP fits; other large
        #: packets are left to IP fragmentation or are lost where ICMP is).
        self.fragment = fragment
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

    def mtu_options(self) -> list[str]:
        """The manual's advice for a path whose PMTU discovery cannot be trusted:
        ``--fragment`` (OpenVPN splits datagrams itself) with ``--mssfix`` taking
        its size from it; 2.6's ``mtu`` keyword counts the IP and UDP headers, so
        the figure is the path MTU itself. On a full path: the default mssfix."""
        if not self.narrow:
            self.notes.append("tun-mtu 1500, default mssfix (1492 mtu)")
            return []
        p = str(self.path_mtu)
        if not self.fragment:
            self.notes.append(f"tun-mtu 1500, --mssfix {p} mtu only (no --fragment: TCP "
                              "only is sized to the path)")
            return ["--mssfix", p, "mtu"]
        self.notes.append(f"tun-mtu 1500, --fragment {p} mtu, --mssfix {p} mtu")
        return ["--fragment", p, "mtu", "--mssfix", p, "mtu"]

    def start(self) -> None:
        mtu = self.mtu_options()
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
                *mtu,
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
        self.notes.append("mtu 1500, pmtu no (unchanged on a narrow path: fastd has no"
                          " fragmentation or MSS clamping of its own)" if self.narrow
                          else "mtu 1500, pmtu no")
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


class Tinc(BridgedPeer):
    """tinc 1.0 in switch mode: a tap, RSA keys, the default data cipher
    (aes-256-cbc + 4 bytes of HMAC-SHA256), UDP with its TCP meta connection.

    ``tinc-up`` puts the tap into the bridge (the bridge with eth1 is made
    before tincd starts). On a narrow path nothing needs setting: tinc probes
    the path MTU itself (``PMTUDiscovery = yes``, the default) and clamps TCP
    MSS to it (``ClampMSS = yes``, the default); both are written out in the
    host files so the configuration says what it relies on.
    """

    def __init__(self, lab: Lab, workdir: Path) -> None:
        super().__init__(lab, workdir, "tinc")
        for s in SITES:
            conf = self.confdir(s)
            (conf / "hosts").mkdir(parents=True, exist_ok=True)
            host = conf / "hosts" / f"gw{s}"
            host.write_text(
                f"Address = {lab.gateway_wan_address(s)}\nPort = {PORT}\n"
                "PMTUDiscovery = yes\nClampMSS = yes\n"
            )
            (conf / "tinc.conf").write_text(f"Name = gw{s}\n")
            # 1.0's -K writes rsa_key.priv and appends the public key to hosts/<Name>.
            subprocess.run(["tincd", "-c", str(conf), "-K"], check=True,
                           stdin=subprocess.DEVNULL, capture_output=True)
        for s in SITES:  # exchange the host files, as a user mails them
            mine = self.confdir(s) / "hosts" / f"gw{s}"
            (self.confdir(other(s)) / "hosts" / f"gw{s}").write_text(mine.read_text())

    def confdir(self, site: str) -> Path:
        return self.workdir / f"tinc-{site}"

    def start(self) -> None:
        self.notes.append("PMTUDiscovery = yes, ClampMSS = yes (the defaults; nothing set"
                          " for the path)")
        for s in SITES:
            conf = self.confdir(s)
            (conf / "tinc.conf").write_text(
                f"Name = gw{s}\nMode = switch\nInterface = {self.tap}\n"
                f"AddressFamily = ipv4\nBindToAddress = {self.lab.gateway_wan_address(s)}\n"
                + (f"ConnectTo = gw{other(s)}\n" if s == "A" else "")
            )
            up = conf / "tinc-up"
            up.write_text(f"#!/bin/sh\nexec ip {self.attach_command()}\n")
            up.chmod(0o755)
            self.bridge_up(s, attach=False)
            self._popen(s, "tincd", "-c", str(conf), "-D", "-d1",
                        f"--pidfile={conf / 'tincd.pid'}")
        for s in SITES:
            self.wait_attached(s)

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until both daemons have fixed the path MTU to each other.

        tincd's SIGUSR2 dumps its nodes (``... pmtu N (min A max B)``) to its
        log; discovery is over when min == max. Until then, frames above the
        lower bound go over the TCP meta connection.
        """
        deadline = time.monotonic() + timeout
        fixed: dict[str, int] = {}
        while time.monotonic() < deadline:
            for s in SITES:
                if s in fixed:
                    continue
                self.procs[s].send_signal(signal.SIGUSR2)
                time.sleep(0.2)
                found = re.findall(rf"gw{other(s)} at .*?pmtu (\d+) \(min (\d+) max (\d+)\)",
                                   self.log(s).read_text(errors="replace"))
                if found and found[-1][1] == found[-1][2]:
                    fixed[s] = int(found[-1][0])
            if len(fixed) == len(SITES):
                self.notes.append("discovered PMTU " + ", ".join(
                    f"gw{s}->gw{other(s)} {fixed[s]}" for s in SITES))
                return
            time.sleep(1.0)
        self.notes.append(f"PMTU discovery not finished after {timeout:.0f} s")


class WireguardVxlan(BridgedPeer):
    """wireguard-go (userspace; this kernel has no WireGuard module) carrying
    kernel VXLAN, whose interface is the bridge port.

    Addresses 10.200.0.1/.2 on the WireGuard interfaces, VXLAN VNI 42 on port
    4789 between them. wireguard-go does no path-MTU discovery, so the
    WireGuard MTU is set as wg-quick sets it: the path MTU less 80 (the
    IPv6-safe overhead; 1420 on a 1500 path), from the path MTU the user
    knows. VXLAN adds 50 bytes, so the VXLAN interface could only carry
    frames of (WireGuard MTU - 50) whole; the LAN keeps 1500 and a bridge
    drops frames larger than a port's MTU, so vx0 is given 1500 (which the
    kernel allows only for a VXLAN device not bound to the WireGuard one with
    ``dev``) and the kernel fits VXLAN packets to the WireGuard MTU by IP
    fragmentation (``df unset``).

    The WireGuard interfaces get a random name per run (``wg<hex><site>``):
    wireguard-go's control socket lives in /run/wireguard/<ifname>.sock,
    which all namespaces share. The CPU and RSS figures are wireguard-go's;
    VXLAN's encapsulation is kernel time and not counted.
    """

    tap = "vx0"
    net = "10.200.0"

    def __init__(self, lab: Lab, workdir: Path) -> None:
        super().__init__(lab, workdir, "wireguard-vxlan")
        token = secrets.token_hex(3)
        self.ifname = {s: f"wg{token}{s}" for s in SITES}
        self.public: dict[str, str] = {}
        for s in SITES:
            key = subprocess.run(["wg", "genkey"], check=True, capture_output=True,
                                 text=True).stdout.strip()
            self.public[s] = subprocess.run(["wg", "pubkey"], input=key, check=True,
                                            capture_output=True, text=True).stdout.strip()
            conf = workdir / f"wg-{s}.conf"
            conf.touch(mode=0o600)
            conf.write_text(f"[Interface]\nPrivateKey = {key}\nListenPort = {PORT}\n")

    def address(self, site: str) -> str:
        return f"{self.net}.{SITES.index(site) + 1}"

    @property
    def wg_mtu(self) -> int:
        return self.path_mtu - 80

    def start(self) -> None:
        self.notes.append(f"wg MTU {self.wg_mtu} (path - 80, as wg-quick), vx0 MTU 1500"
                          f" (whole frames only up to {self.wg_mtu - 50})")
        for s in SITES:
            o = other(s)
            conf = self.workdir / f"wg-{s}.conf"
            with conf.open("a") as f:
                f.write(f"\n[Peer]\nPublicKey = {self.public[o]}\n"
                        f"Endpoint = {self.lab.gateway_wan_address(o)}:{PORT}\n"
                        f"AllowedIPs = {self.address(o)}/32\n")
            wg = self.ifname[s]
            self._popen(s, "wireguard-go", "-f", wg,
                        env=dict(os.environ, LOG_LEVEL="error"))
            sock = Path("/run/wireguard") / f"{wg}.sock"
            deadline = time.monotonic() + 15
            while not sock.exists():
                if time.monotonic() > deadline or self.procs[s].poll() is not None:
                    raise RuntimeError(f"{self.name}: wireguard-go did not start\n{self.logs()}")
                time.sleep(0.1)
            gw = f"gw{s}"
            self.lab.run(gw, "wg", "setconf", wg, str(conf))
            for cmd in (
                f"addr add {self.address(s)}/24 dev {wg}",
                f"link set {wg} mtu {self.wg_mtu} up",
                # No ``dev {wg}``: bound to a device, VXLAN refuses an MTU above
                # that device's MTU - 50. Unbound, the route to the peer's
                # address leads over the WireGuard interface all the same.
                f"link add {self.tap} type vxlan id 42 local {self.address(s)}"
                f" remote {self.address(o)} dstport 4789 df unset",
            ):
                self.lab.run(gw, "ip", *cmd.split())
            self.bridge_up(s)

    def stop(self) -> None:
        super().stop()
        for wg in self.ifname.values():
            (Path("/run/wireguard") / f"{wg}.sock").unlink(missing_ok=True)

    def unbridge(self) -> None:
        for site in self._addrs:
            self.lab.run(f"gw{site}", "ip", "link", "del", self.tap, check=False)
        super().unbridge()


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
        "openvpn-mssfix": lambda: OpenVpn(lab, workdir, fragment=False),
        "fastd": lambda: Fastd(lab, workdir),
        "tinc": lambda: Tinc(lab, workdir),
        "wireguard-vxlan": lambda: WireguardVxlan(lab, workdir),
    }
    runner: Runner = table[name]()
    return runner
