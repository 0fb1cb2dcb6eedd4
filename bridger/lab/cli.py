"""``python3 -m bridger.lab up|down|list|cleanup``: the lab by hand.

``up`` builds a lab, prints its namespaces, and holds it until Ctrl-C, SIGTERM
or SIGHUP (or ``--for SECONDS``), then removes everything. ``down`` and
``cleanup`` remove what a crashed or SIGKILLed run left behind (``cleanup``:
hub labs of bridger.lab.hub too, their gateways stopped first).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from bridger.errors import BridgerError
from bridger.lab.hub import cleanup_stale_hub_labs
from bridger.lab.topology import (
    MAX_SITES,
    MIN_SITES,
    Lab,
    LabOptions,
    _pid_alive,
    cleanup_stale,
    lab_owners,
    remove_lab,
)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stop(Exception):
    """A stop signal arrived."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m bridger.lab", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build a lab and hold it until Ctrl-C/SIGTERM")
    up.add_argument("--delay", type=float, default=0, metavar="MS", help="one-way WAN delay")
    up.add_argument("--jitter", type=float, default=0, metavar="MS")
    up.add_argument("--loss", type=float, default=0, metavar="PCT")
    up.add_argument("--reorder", type=float, default=0, metavar="PCT")
    up.add_argument("--duplicate", type=float, default=0, metavar="PCT")
    up.add_argument("--rate", type=float, default=None, metavar="MBIT")
    up.add_argument("--mtu", type=int, default=1500, help="WAN link MTU")
    up.add_argument("--nat", action="store_true", help="put site B behind a NAT namespace")
    up.add_argument(
        "--sites",
        type=int,
        default=MIN_SITES,
        metavar="N",
        help=f"how many sites A, B, C, ... ({MIN_SITES}-{MAX_SITES}, default {MIN_SITES})",
    )
    up.add_argument("--prefix", help="namespace prefix (default: bl + 6 random hex digits)")
    up.add_argument("--engine", choices=("auto", "netem", "wire", "direct"), default="auto")
    up.add_argument("--seed", type=int, default=0, help="seed of the userspace wire")
    up.add_argument(
        "--for",
        dest="duration",
        type=float,
        metavar="SECONDS",
        help="tear down after this long instead of waiting for a signal",
    )
    down = sub.add_parser("down", help="remove every namespace of a lab")
    down.add_argument("--prefix", required=True)
    sub.add_parser("list", help="list labs present on this machine")
    sub.add_parser("cleanup", help="remove labs whose owning process is gone")
    return parser


def _up(args: argparse.Namespace) -> int:
    options = LabOptions(
        delay_ms=args.delay,
        jitter_ms=args.jitter,
        loss_pct=args.loss,
        reorder_pct=args.reorder,
        duplicate_pct=args.duplicate,
        rate_mbit=args.rate,
        wan_mtu=args.mtu,
        nat_b=args.nat,
        sites=args.sites,
        prefix=args.prefix,
        engine=args.engine,
        seed=args.seed,
    )
    lab = Lab(options)
    old = {sig: signal.signal(sig, _raise_stop) for sig in STOP_SIGNALS}
    try:
        lab.build()
        for line in lab.describe():
            print(line)
        print("press Ctrl-C to tear down", flush=True)
        if args.duration is not None:
            time.sleep(args.duration)
        else:
            while True:
                signal.pause()
    except _Stop:
        pass
    finally:
        # A second Ctrl-C must not interrupt the cleanup itself.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        lab.teardown()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    print(f"lab {lab.prefix} removed", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and return 2."""
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "up":
            return _up(args)
        if args.cmd == "down":
            removed = remove_lab(args.prefix)
            print(f"removed {len(removed)} namespace(s)")
            return 0
        if args.cmd == "list":
            for prefix, pid in sorted(lab_owners().items()):
                state = (
                    "unknown owner"
                    if pid is None
                    else (f"pid {pid} " + ("running" if _pid_alive(pid) else "dead"))
                )
                print(f"{prefix}\t{state}")
            return 0
        # Hub labs first: the classic lab's roles include their "wan" only.
        removed = cleanup_stale_hub_labs()
        removed += cleanup_stale()
        listed = f": {' '.join(removed)}" if removed else ""
        print(f"removed {len(removed)} namespace(s){listed}")
        return 0
    except BridgerError as exc:
        print(f"bridger lab: {exc}", file=sys.stderr)
        return exc.exit_code
