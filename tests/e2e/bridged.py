"""Test support: a namespace lab with a real `bridger up` process on each gateway."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bridger.keys import encode_key, generate_private_key, public_key, write_private_key_file
from bridger.lab import Lab

BRIDGER = [sys.executable, "-m", "bridger"]


class BridgedLab:
    """Two gateways of one lab running bridger; sites are "A" and "B"."""

    def __init__(self, lab: Lab, workdir: Path, *, b_dials_only: bool = False,
                 extra_args: list[str] | None = None,
                 peers: dict[str, str] | None = None) -> None:
        self.lab = lab
        self.workdir = workdir
        self.keys = {"A": generate_private_key(), "B": generate_private_key()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.b_dials_only = b_dials_only
        self.extra_args = extra_args or []
        self.peers = peers or {}
        workdir.mkdir(parents=True, exist_ok=True)
        for site, key in self.keys.items():
            write_private_key_file(self.key_path(site), key)

    def __enter__(self) -> BridgedLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_everything()

    def key_path(self, site: str) -> Path:
        return self.workdir / f"gw{site}.key"

    def state_dir(self, site: str) -> Path:
        return self.workdir / f"state{site}"

    def log_path(self, site: str) -> Path:
        return self.workdir / f"gw{site}.log"

    def argv(self, site: str) -> list[str]:
        other = "B" if site == "A" else "A"
        argv = [
            *BRIDGER, "up", "--lan", "eth1", "--key", str(self.key_path(site)),
            "--peer-key", encode_key(public_key(self.keys[other])),
            "--state-dir", str(self.state_dir(site)), "--no-dashboard", *self.extra_args,
        ]
        if site in self.peers:
            argv += ["--peer", self.peers[site]]
        elif site == "B" or not self.b_dials_only:
            argv += ["--peer", self.lab.gateway_wan_address(other)]
        return argv

    def start(self, site: str) -> subprocess.Popen[bytes]:
        with self.log_path(site).open("ab") as log:
            proc = self.lab.popen(f"gw{site}", *self.argv(site), stdout=log,
                                  stderr=subprocess.STDOUT)
        self.procs[site] = proc
        return proc

    def start_all(self, timeout: float = 20.0) -> None:
        self.start("A")
        self.start("B")
        self.wait_up(timeout)

    def status(self, site: str) -> dict[str, Any] | None:
        out = subprocess.run(
            [*BRIDGER, "status", "--json", "--state-dir", str(self.state_dir(site))],
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode != 0:
            return None
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    def wait_up(self, timeout: float = 20.0) -> float:
        """Wait until both gateways report the link up; return the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            for site, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"gateway {site} exited:\n{self.logs()}")
            states = [self.status(s) for s in self.procs]
            if all(s is not None and s["peers"][0]["state"] == "up" for s in states):
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
        for site in ("A", "B"):
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
