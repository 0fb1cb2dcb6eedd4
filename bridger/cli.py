"""The `bridger` command line.

The spelling of every command and option here is a contract: users and
scripts depend on it. Each command turns a :class:`BridgerError` into one line
on stderr and exit code 2; nothing a user types produces a traceback.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bridger import __version__
from bridger.config import DEFAULT_BRIDGE, MODES
from bridger.errors import BridgerError, ConfigError


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


def up_values(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line mapping :func:`bridger.config.build_up_config` takes, from `up`'s args.

    Options not given are None, so the config file (or the default) decides.
    """
    return {
        "lan": args.lan,
        "peer": args.peer,
        "key_file": args.key,
        "peer_public_key": args.peer_key,
        "mode": args.mode,
        "listen": args.listen,
        "bridge": args.bridge,
        "tap": args.tap,
        "state_dir": args.state_dir,
        "psk_file": args.psk_file,
        "persistent_keepalive": args.persistent_keepalive,
        "wan_mtu": args.wan_mtu,
        "stp": args.stp,
        "dashboard": args.dashboard,
        "metrics": args.metrics,
        "offload": args.offload,
        "data_path": args.data_path,
        "loop_protection": args.loop_protection,
        "flood_rate": args.flood_rate,
        "flood_burst": args.flood_burst,
        "dhcp": args.dhcp,
        "ra": args.ra,
        "vlans": args.vlans,
        "untagged": args.untagged,
        "site": args.site,
        "priority": args.priority,
        "group_key": args.group_key,
        "ha_follow": args.ha_follow,
        "user": args.user,
        "prepared_taps": args.prepared_taps,
    }


def _cmd_up(args: argparse.Namespace) -> int:
    # The daemon's imports (trio, pyroute2, the core: about 0.2 CPU-seconds,
    # most of what a start costs) make objects that live as long as the
    # process: the collector's passes over them meanwhile free nothing and
    # cost 5-10 % of the imports (issue 26: a hundred gateways starting on
    # two cores). The run collects and freezes once set up (privsep.split).
    gc.disable()
    try:
        from bridger.config import build_up_config

        values = up_values(args)
        path = Path(args.config) if args.config else None
        config = build_up_config(values, path)
        from bridger.daemon import run_up
    finally:
        gc.enable()
    return run_up(config, lambda: build_up_config(values, path))


def _cmd_prepare(args: argparse.Namespace) -> int:
    from bridger.config import build_up_config
    from bridger.daemon import run_prepare

    path = Path(args.config) if args.config else None
    print(run_prepare(build_up_config(up_values(args), path), add_taps=args.add_taps))
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    """A new private key (never overwriting one) and a config skeleton beside it."""
    from bridger.config import CONFIG_NAME, KEY_NAME, config_skeleton, etc_dir
    from bridger.keys import create_private_key_file, encode_key, generate_private_key, public_key

    directory = Path(args.dir) if args.dir else etc_dir()
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot create directory: {exc.strerror or exc}") from None
    key_path = directory / KEY_NAME
    private = generate_private_key()
    create_private_key_file(key_path, private)
    public = encode_key(public_key(private))
    skeleton = config_skeleton(public)
    config_path = directory / CONFIG_NAME
    try:
        with config_path.open("x", encoding="utf-8") as f:
            f.write(skeleton)
        config_note = "new: edit [local] lan and the [[peers]] entry"
    except FileExistsError:
        config_note = "exists, left unchanged; a skeleton to compare with follows"
    except OSError as exc:
        config_note = f"not written ({exc.strerror or exc}); the skeleton follows"
    owner = ""
    if os.geteuid() == 0:
        # The service's daemon runs as this user and reads the key itself.
        from bridger.host.privileges import ensure_user

        user, created = ensure_user(args.user)
        os.chown(key_path, user.uid, user.gid)
        owner = f", owned by {user.name}"
        print(f"service user: {user.name} (uid {user.uid}, {'new' if created else 'exists'})")
    print(f"private key: {key_path} (new, mode 0600{owner})")
    print(f"public key:  {public}")
    print(f"config:      {config_path} ({config_note})")
    if args.unit_dir:
        print(f"unit:        {_install_unit(Path(args.unit_dir))}")
    print()
    print(skeleton, end="")
    return 0


#: The systemd unit shipped beside the package (configs/systemd).
UNIT_NAME = "bridger@.service"


def _install_unit(directory: Path) -> str:
    source = Path(__file__).resolve().parent.parent / "configs" / "systemd" / UNIT_NAME
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the unit {source}: {exc.strerror or exc}") from None
    target = directory / UNIT_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(target)
    except OSError as exc:
        raise ConfigError(f"{target}: cannot install the unit: {exc.strerror or exc}") from None
    return f"{target} (run `systemctl daemon-reload`, then `systemctl enable --now bridger@NAME`)"


def _state_dir(args: argparse.Namespace) -> Path:
    from bridger.config import state_dir_for

    return state_dir_for(args.state_dir, args.bridge, Path(args.config) if args.config else None)


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


def _up_options(p: argparse.ArgumentParser) -> None:
    """The options of `up` (and of `prepare`, which reads the same configuration)."""
    on_off = argparse.BooleanOptionalAction
    p.add_argument("--config", metavar="FILE",
                   help="TOML file with any of these options (/etc/bridger/bridger.toml if it"
                        " exists)")
    p.add_argument("--lan", metavar="IF", help="the LAN NIC to bridge (e.g. eth1)")
    p.add_argument("--peer", metavar="HOST[:PORT]",
                   help="the peer gateway (omit to only listen); with [[peers]] in the config,"
                        " the host or name of one of them")
    p.add_argument("--key", metavar="FILE",
                   help="this site's private key file, mode 0600 (/etc/bridger/private.key)")
    p.add_argument("--peer-key", metavar="PUBKEY", help="the peer's public key (base64)")
    p.add_argument("--mode", choices=MODES,
                   help="mesh: peers reach each other only over their own links (default);"
                        " hub: this site also forwards between its peers")
    p.add_argument("--listen", metavar="PORT", type=_port, help="UDP port to listen on (55555)")
    p.add_argument("--bridge", metavar="NAME", help=f"bridge to create or use ({DEFAULT_BRIDGE})")
    p.add_argument("--tap", metavar="NAME", help="tap interface of the single peer (bridger-tap0)")
    p.add_argument("--state-dir", metavar="DIR", help="journal and control socket directory")
    p.add_argument("--dashboard", action=on_off,
                   help="live view on a terminal (default), or plain log lines")
    p.add_argument("--psk-file", metavar="FILE", help="optional pre-shared key file (base64)")
    p.add_argument(
        "--persistent-keepalive", metavar="SECONDS", type=_seconds,
        help="keepalive interval for NAT (25, 0 disables)",
    )
    p.add_argument("--wan-mtu", metavar="BYTES", type=_int,
                   help="upper bound on every peer's path MTU (default: none; each "
                        "peer's is found by probing)")
    p.add_argument("--stp", action=on_off, help="spanning tree on the bridge (off)")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics (:PORT for all addresses)")
    p.add_argument("--offload", action=on_off,
                   help="tap offloads, TSO superframes (on); off: one frame per read")
    p.add_argument("--data-path", metavar="PATH", choices=("auto", "native", "python"),
                   help="per-packet code: auto (native when built), native, python")
    p.add_argument("--user", metavar="NAME",
                   help="run the data plane as this unprivileged user when started as root"
                        " (bridger)")
    p.add_argument("--prepared-taps", action=on_off,
                   help="the taps exist, owned by this user and enslaved by hand: touch nothing"
                        " on the host, need no privilege (off)")
    g = p.add_argument_group("guards (docs/guard.md)")
    g.add_argument("--loop-protection", action=on_off,
                   help="detect loops through the LANs and block the peer they run through (on)")
    g.add_argument("--flood-rate", metavar="FPS", type=_int,
                   help="flooded frames per second to each peer (2000, 0: unlimited)")
    g.add_argument("--flood-burst", metavar="FRAMES", type=_int,
                   help="burst allowance of the flood budget (0: one second's worth)")
    g.add_argument("--dhcp", choices=("shared", "local"),
                   help="local: DHCP server messages never cross the tunnel (shared)")
    g.add_argument("--ra", choices=("shared", "local"),
                   help="local: IPv6 router advertisements never cross the tunnel (shared)")
    g.add_argument("--vlans", metavar="ID,ID",
                   help="only frames tagged with these VLAN ids cross (default: any)")
    g.add_argument("--untagged", action=on_off,
                   help="with --vlans: untagged frames cross too (on)")
    h = p.add_argument_group("two gateways per site (docs/operations.md)")
    h.add_argument("--site", metavar="NAME",
                   help="gateways on one LAN with the same site elect one to forward")
    h.add_argument("--priority", metavar="0-255", type=_int,
                   help="election priority, higher wins (100)")
    h.add_argument("--group-key", metavar="FILE",
                   help="the site's shared group key (authenticates the election)")
    h.add_argument("--ha-follow", metavar="FILE",
                   help="follow this state file (keepalived: MASTER/BACKUP) instead of electing")


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

    p = sub.add_parser("init", help="make this site's key and a bridger.toml skeleton")
    p.add_argument("--dir", metavar="DIR",
                   help="where to write private.key and bridger.toml (/etc/bridger)")
    p.add_argument("--user", metavar="NAME", default="bridger",
                   help="as root: the service user to create; it owns the key (bridger)")
    p.add_argument("--unit-dir", metavar="DIR",
                   help="also install the systemd unit bridger@.service there"
                        " (/etc/systemd/system)")
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("up", help="bridge a LAN NIC to the peer sites")
    _up_options(p)
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("prepare", help="as root, set the host up for an unprivileged "
                                       "`up --prepared-taps` (systemd's ExecStartPre=+)")
    _up_options(p)
    p.add_argument("--add-taps", action="store_true",
                   help="only add the taps of peers new in the config (a reload)")
    p.set_defaults(func=_cmd_prepare)

    for name, func, text in (
        ("down", _cmd_down, "undo what a crashed `up` left behind"),
        ("status", _cmd_status, "show a running daemon's status"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--state-dir", metavar="DIR", help="state directory of the daemon")
        p.add_argument("--bridge", metavar="NAME", help="bridge name (picks the default state dir)")
        p.add_argument("--config", metavar="FILE",
                       help="take the state dir from this config (/etc/bridger/bridger.toml)")
        if name == "status":
            p.add_argument("--json", action="store_true", help="machine-readable output")
            p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
        p.set_defaults(func=func)

    p = sub.add_parser("lab", help="network-namespace lab")
    lab_sub = p.add_subparsers(dest="lab_command", metavar="LABCOMMAND", required=True)
    d = lab_sub.add_parser("demo", help="sites and a WAN on this machine, joined by bridger")
    from bridger.demo import add_demo_arguments

    add_demo_arguments(d)
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
