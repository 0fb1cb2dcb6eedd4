"""The `bridger` command line.

The spelling of every command and option here is a contract: users and
scripts depend on it. Each command turns a :class:`BridgerError` into one line
on stderr and exit code 2; nothing a user types produces a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bridger import __version__
from bridger.config import DEFAULT_BRIDGE, default_state_dir
from bridger.errors import BridgerError


def _cmd_genkey(args: argparse.Namespace) -> int:
    from bridger.keys import encode_key, generate_private_key

    print(encode_key(generate_private_key()))
    return 0


def _cmd_pubkey(args: argparse.Namespace) -> int:
    from bridger.keys import decode_key, encode_key, public_key

    text = sys.stdin.read()
    private = decode_key(text, "stdin")
    print(encode_key(public_key(private)))
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from bridger.config import build_up_config

    cli_values = {
        "lan": args.lan,
        "peer": args.peer,
        "key_file": args.key,
        "peer_public_key": args.peer_key,
        "listen": args.listen,
        "bridge": args.bridge,
        "tap": args.tap,
        "state_dir": args.state_dir,
        "psk_file": args.psk_file,
        "persistent_keepalive": args.persistent_keepalive,
        "wan_mtu": args.wan_mtu,
        "stp": args.stp,
        "dashboard": False if args.no_dashboard else None,
        "metrics": args.metrics,
        "offload": False if args.no_offload else None,
    }
    config = build_up_config(cli_values, Path(args.config) if args.config else None)
    from bridger.daemon import run_up

    return run_up(config)


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    return default_state_dir(args.bridge or DEFAULT_BRIDGE)


def _cmd_down(args: argparse.Namespace) -> int:
    from bridger.host import bring_down

    print(bring_down(_state_dir(args)))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from bridger.status.control import status_main

    return status_main(_state_dir(args), as_json=args.json, watch=args.watch)


def _cmd_lab(args: argparse.Namespace) -> int:
    from bridger.demo import run_demo_command

    return run_demo_command(args)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError("must be 1..65535")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be 0..3600")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an integer") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridger",
        description="Layer-2 site-to-site bridge over an authenticated, encrypted UDP link.",
    )
    parser.add_argument("--version", action="version", version=f"bridger {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("genkey", help="print a new X25519 private key (base64)")
    p.set_defaults(func=_cmd_genkey)
    p = sub.add_parser("pubkey", help="read a private key on stdin, print its public key")
    p.set_defaults(func=_cmd_pubkey)

    p = sub.add_parser("up", help="bridge a LAN NIC to the peer site")
    p.add_argument("--lan", metavar="IF", help="the LAN NIC to bridge (e.g. eth1)")
    p.add_argument("--peer", metavar="HOST[:PORT]", help="the peer gateway (omit to only listen)")
    p.add_argument("--key", metavar="FILE", help="this site's private key file (mode 0600)")
    p.add_argument("--peer-key", metavar="PUBKEY", help="the peer's public key (base64)")
    p.add_argument("--listen", metavar="PORT", type=_port, help="UDP port to listen on (55555)")
    p.add_argument("--bridge", metavar="NAME", help=f"bridge to create or use ({DEFAULT_BRIDGE})")
    p.add_argument("--tap", metavar="NAME", help="tap interface name (bridger-tap0)")
    p.add_argument("--state-dir", metavar="DIR", help="journal and control socket directory")
    p.add_argument("--config", metavar="FILE", help="TOML file with any of these options")
    p.add_argument("--no-dashboard", action="store_true", help="plain log lines, no live view")
    p.add_argument("--psk-file", metavar="FILE", help="optional pre-shared key file (base64)")
    p.add_argument(
        "--persistent-keepalive", metavar="SECONDS", type=_seconds,
        help="keepalive interval for NAT (25, 0 disables)",
    )
    p.add_argument("--wan-mtu", metavar="BYTES", type=_int, help="underlay path MTU (1500)")
    p.add_argument("--stp", action="store_const", const=True, help="enable STP on the bridge")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics")
    p.add_argument("--no-offload", action="store_true",
                   help="no tap offloads (TSO superframes); one frame per read")
    p.set_defaults(func=_cmd_up)

    for name, func, text in (
        ("down", _cmd_down, "undo what a crashed `up` left behind"),
        ("status", _cmd_status, "show a running daemon's status"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--state-dir", metavar="DIR", help="state directory of the daemon")
        p.add_argument("--bridge", metavar="NAME", help="bridge name (picks the default state dir)")
        if name == "status":
            p.add_argument("--json", action="store_true", help="machine-readable output")
            p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
        p.set_defaults(func=func)

    p = sub.add_parser("lab", help="network-namespace lab")
    lab_sub = p.add_subparsers(dest="lab_command", metavar="LABCOMMAND", required=True)
    d = lab_sub.add_parser("demo", help="two sites and a WAN on this machine, joined by bridger")
    d.add_argument("--duration", type=float, metavar="SECONDS", help="stop by itself after this")
    d.add_argument("--delay", type=float, default=0.0, metavar="MS", help="WAN one-way delay")
    d.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="WAN loss percent")
    d.add_argument("--nat", action="store_true", help="put site B behind NAT")
    d.add_argument("--no-dashboard", action="store_true", help="plain output")
    d.set_defaults(func=_cmd_lab)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BridgerError as exc:
        print(f"bridger: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
