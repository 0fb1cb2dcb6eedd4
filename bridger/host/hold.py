"""Bring the host up and hold it until SIGTERM/SIGINT, then restore (tests, debugging).

``python -m bridger.host.hold --lan eth1 --state-dir DIR`` prints ``ready`` once
the bridge is up and ``restored`` after a clean stop. It stands in for the
daemon in tests of signal handling and crash recovery.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from bridger.errors import BridgerError
from bridger.host.privileges import drop_privileges
from bridger.host.setup import HostPlan, bring_up


class _Stop(Exception):
    """A termination signal, turned into an ordinary exception so `with` restores."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bridger.host.hold")
    p.add_argument("--lan", required=True)
    p.add_argument("--bridge", default="bridger0")
    p.add_argument("--tap", default="bridger-tap0")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--stp", action="store_true")
    p.add_argument("--netns")
    p.add_argument("--fail-after-step", type=int)
    p.add_argument("--drop-privileges", action="store_true")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    plan = HostPlan(lan=args.lan, bridge=args.bridge, tap=args.tap, state_dir=args.state_dir,
                    stp=args.stp, netns=args.netns)
    try:
        with bring_up(plan, fail_after_step=args.fail_after_step) as session:
            # The try starts before "ready" is printed: a signal sent the moment the
            # caller reads it must still count as a clean stop, not as "during setup".
            try:
                if args.drop_privileges:
                    drop_privileges()
                print(f"ready {session.tap_name} fd={session.tap_fd} mtu={session.mtu}",
                      flush=True)
                while True:
                    signal.pause()
            except _Stop:
                pass
    except BridgerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except _Stop:
        print("error: interrupted during setup", file=sys.stderr, flush=True)
        return 1
    print("restored", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
