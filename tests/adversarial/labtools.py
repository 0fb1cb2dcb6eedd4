"""Lab helpers for the adversarial tests and the soak script: process figures,
captures and the attacker, all against real `bridger up` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bridger.keys import encode_key, public_key
from bridger.lab import Lab
from tests.e2e.bridged import BridgedLab

REPO = Path(__file__).resolve().parents[2]
ATTACK = REPO / "scripts" / "attack.py"


def vm_rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS in /proc/<pid>/status), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_capture(lab: Lab, iface: str, path: Path, count: int = 400) -> subprocess.Popen[bytes]:
    """tcpdump of tunnel traffic on the router's ``iface`` (stop it with ``stop_capture``)."""
    proc = lab.popen("wan", "tcpdump", "-i", iface, "-nn", "-U", "-c", str(count), "-w", str(path),
                     "udp port 55555", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before anything is sent
    return proc


def stop_capture(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.wait(10)


def start_attack(link: BridgedLab, capture: Path | None, duration: float, rate: float,
                 out: Path, *, site: str = "A", spoof: int = 4096,
                 seed: int = 1) -> subprocess.Popen[str]:
    """scripts/attack.py in the router namespace against ``site``; returns once it sprays."""
    lab = link.lab
    other = "B" if site == "A" else "A"
    argv = [
        sys.executable, str(ATTACK), "--iface", f"w{site}",
        "--target", f"{lab.gateway_wan_address(site)}:55555",
        "--peer", lab.gateway_wan_address(other),
        "--target-key", encode_key(public_key(link.keys[site])),
        "--source-base", f"{lab.gateway_wan_address(site).rsplit('.', 1)[0]}.200",
        "--duration", str(duration), "--rate", str(rate), "--spoof", str(spoof),
        "--seed", str(seed), "--json", str(out),
    ]
    if capture is not None:
        argv += ["--capture", str(capture)]
    proc = lab.popen("wan", *argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "spraying", f"attacker did not start: {line!r}"
    return proc


def finish_attack(proc: subprocess.Popen[str], timeout: float = 60, *,
                  stop: bool = True) -> dict[str, Any]:
    """Stop the attacker (or with ``stop=False`` let it run its course); its summary."""
    if stop and proc.poll() is None:
        proc.terminate()
    stdout, _ = proc.communicate(timeout=timeout)
    summary: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return summary
