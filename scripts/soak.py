#!/usr/bin/env python3
"""Soak: the namespace lab with real `bridger up` processes, traffic and a
stream of faults, checked after every one.  Needs root.

    python3 scripts/soak.py --duration 180            # CI-sized (tests run ~75 s)
    python3 scripts/soak.py --duration 14400 --json soak.json   # four hours

1. Build a lab (userspace wire or netem), site B dials A (A only listens and
   learns B's address from authenticated packets), snapshot each gateway's
   host network (``ip -j addr/route/link``) before bridger touches it.
2. Keep a ping running from hostA1 to hostB1 and loop over events, chosen by a
   seeded RNG: ``term`` (SIGTERM a gateway, check its host network is restored
   exactly, start it again), ``kill`` (SIGKILL, ``bridger down``, same check),
   ``roam`` (give gwB a new WAN address while running), ``impair`` (new WAN
   loss/delay/reorder/duplication), ``calm`` (impairments off).
3. After each event: time until a ping answers again, then a byte-exact TCP
   transfer; sample each daemon's RSS and handshake/rekey counters.
4. Print a summary (recovery times, RSS over time, drops, handshakes, rekeys)
   and write it as JSON with ``--json``.  Exit status 1 if any check failed.

Natural rekeys (every 120 s) appear in runs longer than about two minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridger.lab import Lab, LabOptions  # noqa: E402
from tests.adversarial.labtools import vm_rss_kib  # noqa: E402
from tests.e2e.bridged import BRIDGER, BridgedLab, host_address, wait_ping  # noqa: E402
from tests.e2e.test_bridge_traffic import transfer  # noqa: E402

RECOVERY = 30.0
EVENTS = ("term", "kill", "roam", "impair", "calm")


def snapshot(lab: Lab, site: str) -> str:
    """The gateway's host network, with its (roaming) WAN address normalised."""
    wan = lab.gateway_private_address(site)
    parts = []
    for argv in (("ip", "-j", "addr"), ("ip", "-j", "route"), ("ip", "-6", "-j", "route"),
                 ("ip", "-j", "link")):
        data = json.loads(lab.run(f"gw{site}", *argv).stdout)
        for item in data:
            for volatile in ("operstate", "linkmode", "stats64", "txqlen", "ifindex",
                             "link_index", "preferred_life_time", "valid_life_time", "prefsrc"):
                item.pop(volatile, None)
            for a in item.get("addr_info", []):
                a.pop("preferred_life_time", None)
                a.pop("valid_life_time", None)
        parts.append(json.dumps(data, sort_keys=True).replace(f'"{wan}"', '"WAN"'))
    return "\n".join(parts)


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.lab = Lab(LabOptions(engine=args.engine, seed=args.seed))
        self.workdir = workdir
        self.link: BridgedLab | None = None
        self.baseline: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []
        self.rss: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.start = time.monotonic()

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)
            print(f"  FAIL: {what}", flush=True)

    def sample(self, label: str) -> None:
        assert self.link is not None
        row: dict[str, Any] = {"t": round(time.monotonic() - self.start, 1), "after": label}
        for site, proc in self.link.procs.items():
            if proc.poll() is None:
                row[f"rss_kib_{site}"] = vm_rss_kib(proc.pid)
                status = self.link.status(site)
                if status is not None:
                    row[f"handshakes_{site}"] = status["peers"][0]["handshakes"]
                    row[f"rekeys_{site}"] = status["peers"][0]["rekeys"]
        self.rss.append(row)

    def recover(self, label: str, t_event: float) -> dict[str, Any]:
        lab = self.lab
        b1 = host_address(lab, "hostB1")
        try:
            wait_ping(lab, "hostA1", b1, within=RECOVERY)
            recovered = time.monotonic() - t_event
        except AssertionError:
            self.check(False, f"{label}: no traffic within {RECOVERY:.0f}s")
            return {"event": label, "recovered_s": None}
        t0 = time.monotonic()
        sent, received = transfer(lab, self.args.transfer_mb * 1_000_000, timeout=300)
        took = time.monotonic() - t0
        self.check(received == sent, f"{label}: transfer not byte-exact ({sent} vs {received})")
        return {"event": label, "recovered_s": round(recovered, 2),
                "transfer_mbit_s": round(self.args.transfer_mb * 8 / took, 1)}

    def stop_and_check(self, site: str, sig: int) -> None:
        link = self.link
        assert link is not None
        code = link.stop(site, sig)
        if sig == signal.SIGKILL:
            down = self.lab.run(f"gw{site}", *BRIDGER, "down", "--state-dir",
                                str(link.state_dir(site)), check=False)
            self.check(down.returncode == 0, f"bridger down on gw{site}: {down.stderr.strip()}")
        else:
            self.check(code == 0, f"gw{site} exited {code} on SIGTERM")
        self.check(snapshot(self.lab, site) == self.baseline[site],
                   f"gw{site} host network differs after {signal.Signals(sig).name}")

    def event(self, kind: str) -> None:
        link, lab = self.link, self.lab
        assert link is not None
        site = self.rng.choice(["A", "B"])
        label = kind
        t_event = time.monotonic()
        if kind in ("term", "kill"):
            label = f"{kind} gw{site}"
            self.stop_and_check(site, signal.SIGTERM if kind == "term" else signal.SIGKILL)
            t_event = time.monotonic()
            link.start(site)
        elif kind == "roam":
            label = f"roam gwB -> {lab.change_wan_address('B')}"
        elif kind == "impair":
            knobs = {"loss_pct": self.rng.choice([0, 1, 3, 5]),
                     "delay_ms": self.rng.choice([0, 10, 40]),
                     "reorder_pct": self.rng.choice([0, 2]),
                     "duplicate_pct": self.rng.choice([0, 1])}
            lab.set_impairment(**knobs)
            label = "impair " + ",".join(f"{k}={v}" for k, v in knobs.items() if v)
        else:
            lab.set_impairment(loss_pct=0, delay_ms=0, reorder_pct=0, duplicate_pct=0)
        print(f"[{time.monotonic() - self.start:6.1f}s] {label}", flush=True)
        result = self.recover(label, t_event)
        print(f"          recovered in {result['recovered_s']}s, "
              f"transfer {result.get('transfer_mbit_s')} Mbit/s", flush=True)
        self.events.append(result)
        self.sample(label)

    def run(self) -> dict[str, Any]:
        lab = self.lab
        lab.build()
        try:
            self.baseline = {s: snapshot(lab, s) for s in ("A", "B")}
            self.link = link = BridgedLab(lab, self.workdir, b_dials_only=True)
            link.start_all(timeout=40)
            ping = lab.popen("hostA1", "ping", "-i", "0.2", host_address(lab, "hostB1"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                self.sample("start")
                order = list(EVENTS)
                while time.monotonic() - self.start < self.args.duration:
                    if not order:
                        order = list(EVENTS)
                        self.rng.shuffle(order)
                    self.event(order.pop(0))
            finally:
                ping.terminate()
                ping.wait()
            statuses = {s: link.status(s) for s in ("A", "B")}
            for site in ("A", "B"):
                self.stop_and_check(site, signal.SIGTERM)
        finally:
            if self.link is not None:
                self.link.kill_everything()
            lab.teardown()
        return self.report(statuses)

    def report(self, statuses: dict[str, Any]) -> dict[str, Any]:
        times = [e["recovered_s"] for e in self.events if e["recovered_s"] is not None]
        return {
            "duration_s": round(time.monotonic() - self.start, 1),
            "events": self.events,
            "recovery_s": {"max": max(times, default=None),
                           "mean": round(sum(times) / len(times), 2) if times else None},
            "samples": self.rss,
            "final": {s: {"drops": {k: v for k, v in (st or {}).get("drops", {}).items() if v},
                          "peer": ((st or {}).get("peers") or [None])[0]}
                      for s, st in statuses.items()},
            "failures": self.failures,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=180.0, help="seconds of events")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--transfer-mb", type=int, default=2, help="byte-exact transfer per event")
    p.add_argument("--engine", default="auto", choices=["auto", "netem", "wire"])
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bridger-soak-") as tmp:
        report = Soak(args, Path(tmp)).run()
    times = report["recovery_s"]
    rss = [(r["t"], r.get("rss_kib_A"), r.get("rss_kib_B")) for r in report["samples"]]
    print(f"\n{len(report['events'])} events in {report['duration_s']}s; recovery "
          f"max {times['max']}s mean {times['mean']}s")
    print("RSS KiB over time (t, A, B): " + ", ".join(f"({t}, {a}, {b})" for t, a, b in rss))
    for site, final in report["final"].items():
        link = final["peer"] or {}
        print(f"gw{site}: handshakes {link.get('handshakes')}, rekeys {link.get('rekeys')}, "
              f"drops {final['drops']}")
    print("failures: " + ("; ".join(report["failures"]) or "none"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
