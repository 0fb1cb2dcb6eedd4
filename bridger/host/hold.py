"""Bring the host up and hold it until SIGTERM/SIGINT, then restore (tests, debugging).

``python -m bridger.host.hold --lan eth1 --state-dir DIR`` prints ``ready`` once
the bridge is up and ``restored`` after a clean stop. It stands in for the
daemon in tests of signal handling and crash recovery. ``--tap NAME`` may be
repeated; ``--tap NAME,isolated`` marks that port isolated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridger.errors import BridgerError
from bridger.host.privileges import drop_privileges
from bridger.host.setup import HostPlan, TapPlan, bring_up
from bridger.host.signals import StopSignals


def parse_tap(text: str) -> TapPlan:
    name, _, flag = text.partition(",")
    if flag not in ("", "isolated"):
        raise argparse.ArgumentTypeError(f"unknown tap flag {flag!r} (only 'isolated')")
    return TapPlan(name, isolated=flag == "isolated")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bridger.host.hold")
    p.add_argument("--lan", required=True)
    p.add_argument("--bridge", default="bridger0")
    p.add_argument("--tap", type=parse_tap, action="append")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--stp", action="store_true")
    p.add_argument("--netns")
    p.add_argument("--fail-after-step", type=int)
    p.add_argument("--drop-privileges", action="store_true")
    args = p.parse_args(argv)
    taps = tuple(args.tap or [TapPlan("bridger-tap0")])
    plan = HostPlan(lan=args.lan, bridge=args.bridge, taps=taps, state_dir=args.state_dir,
                    stp=args.stp, netns=args.netns)
    with StopSignals() as stop:
        try:
            with bring_up(plan, fail_after_step=args.fail_after_step,
                          interrupted=stop.check) as session:
                if args.drop_privileges:
                    drop_privileges()
                fds = ",".join(f"{name}={fd}" for name, fd in session.taps.items())
                print(f"ready {session.tap_name} fd={session.tap_fd} mtu={session.mtu} "
                      f"taps={fds}", flush=True)
                stop.wait()
        except BridgerError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return exc.exit_code
    print("restored", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
