"""The settings of `bridger up`, from a TOML file and the command line.

1. The file is ``--config FILE``, else ``/etc/bridger/bridger.toml`` when it
   exists (the directory is :func:`etc_dir`); the key defaults to
   ``/etc/bridger/private.key``.
2. Every ``[local]`` option can come from the file; one given on the command
   line wins.
3. The peers are either ``[[peers]]`` entries (one per other site, each with
   its own tap) or the legacy single peer: a ``[peer]`` table and/or
   ``--peer``/``--peer-key``, whose tap is ``local.tap``/``--tap``.
4. With ``[[peers]]``, ``--peer HOST`` and ``--peer-key KEY`` only pick one of
   the configured peers (and may give it a new address); all of them run.
5. Last come the checks across settings: unique names, keys and interface
   names, and no peer holding our own public key (read from the key file).

Errors are one line naming the file (or the option) and the key, e.g.
``configs/x.toml: peers[2].name: duplicate name "berlin" (also peers[1])``.
``[[peers]]`` entries are counted from 1, in file order.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bridger.errors import ConfigError
from bridger.guard.policy import GuardConfig
from bridger.keys import decode_key, public_key, read_private_key_file

DEFAULT_PORT = 55555
DEFAULT_BRIDGE = "bridger0"
DEFAULT_TAP = "bridger-tap0"
DEFAULT_PERSISTENT_KEEPALIVE = 25.0
DEFAULT_MODE = "mesh"
#: The service user the data plane runs as (docs/security.md).
DEFAULT_USER = "bridger"
MODES = ("mesh", "hub")
#: ``data_path``: "auto" runs the native per-packet path when it is built
#: (bridger.native), else the pure-Python one; "native" requires it.
DATA_PATHS = ("auto", "native", "python")
STATE_ROOT = Path("/run/bridger")
IFNAMSIZ = 15  # Linux interface names are at most 15 bytes

ETC_DIR = Path("/etc/bridger")
ETC_ENV = "BRIDGER_ETC"  # overrides ETC_DIR (tests, unusual layouts)
CONFIG_NAME = "bridger.toml"
KEY_NAME = "private.key"

PEER_NAME_RE = r"^[a-z0-9][a-z0-9-]*$"  # at most PEER_NAME_MAX characters
PEER_NAME_MAX = 15  # a peer's name is also its default tap name (IFNAMSIZ)
LEGACY_PEER_NAME = "peer"

_PEER_NAME = re.compile(PEER_NAME_RE)
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-@:]+$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")


def etc_dir() -> Path:
    """Where the default config and key live: ``$BRIDGER_ETC``, else /etc/bridger.

    (``ip netns exec NAME`` also bind-mounts ``/etc/netns/NAME/bridger`` over
    an existing ``/etc/bridger``, which gives each namespace its own.)
    """
    return Path(os.environ.get(ETC_ENV) or ETC_DIR)


def default_state_dir(bridge: str) -> Path:
    """Per-bridge state directory, so two daemons in two namespaces never collide."""
    return STATE_ROOT / bridge


@dataclass(frozen=True)
class PeerSettings:
    """One other site: who it is (its key), where it is, and its tap interface."""

    name: str
    public_key: bytes  # 32 bytes
    host: str | None = None  # None: wait to be contacted
    port: int = DEFAULT_PORT
    psk_file: Path | None = None
    persistent_keepalive: float = DEFAULT_PERSISTENT_KEEPALIVE
    tap: str = DEFAULT_TAP  # this peer's tap interface name


@dataclass(frozen=True)
class HaSettings:
    """Two or more gateways of one site (``bridger.ha``): elect, or follow keepalived."""

    #: The group: gateways on one LAN with the same site name.
    site: str | None = None
    #: Higher wins the election; the active keeps its place against an equal one.
    priority: int = 100
    #: The group's shared key file (authenticates the election frames).
    group_key: Path | None = None
    #: Follow this state file (keepalived notify: MASTER/BACKUP/...) instead of electing.
    follow: Path | None = None


@dataclass(frozen=True)
class UpConfig:
    """Everything `bridger up` needs, validated."""

    lan: str
    key_file: Path
    peers: tuple[PeerSettings, ...]  # at least one; names, keys and taps unique
    mode: str = DEFAULT_MODE  # "mesh": peer taps isolated from each other; "hub": not
    listen: int = DEFAULT_PORT
    bridge: str = DEFAULT_BRIDGE
    state_dir: Path = field(default_factory=lambda: default_state_dir(DEFAULT_BRIDGE))
    #: Upper bound on every peer's path MTU (None: found by probing alone).
    wan_mtu: int | None = None
    stp: bool = False
    dashboard: bool = True
    metrics: str | None = None
    offload: bool = True
    #: "auto" | "native" | "python": which per-packet implementation forwards.
    data_path: str = "auto"
    #: Loop protection, storm control, DHCP/RA guards, VLAN allow-list (docs/guard.md).
    guard: GuardConfig = field(default_factory=GuardConfig)
    #: Two gateways per site (None: this gateway forwards alone).
    ha: HaSettings | None = None
    #: The unprivileged account the data plane runs as when started as root
    #: (docs/security.md).
    user: str = DEFAULT_USER
    #: The taps exist already, the service user's and enslaved by the
    #: administrator: `up` touches nothing on the host and needs no privilege.
    prepared_taps: bool = False


# One row per setting outside [[peers]]: (TOML section, TOML key, command-line
# option, name in the command-line mapping of build_up_config). The table is
# the single source of truth for naming in error messages; [peer] is the
# legacy single-peer table.
SETTINGS: tuple[tuple[str, str, str, str], ...] = (
    ("local", "lan", "--lan", "lan"),
    ("local", "key", "--key", "key_file"),
    ("local", "mode", "--mode", "mode"),
    ("local", "listen", "--listen", "listen"),
    ("local", "bridge", "--bridge", "bridge"),
    ("local", "tap", "--tap", "tap"),
    ("local", "state_dir", "--state-dir", "state_dir"),
    ("local", "stp", "--stp", "stp"),
    ("local", "wan_mtu", "--wan-mtu", "wan_mtu"),
    ("local", "dashboard", "--dashboard", "dashboard"),
    ("local", "metrics", "--metrics", "metrics"),
    ("local", "offload", "--offload", "offload"),
    ("local", "data_path", "--data-path", "data_path"),
    ("local", "loop_protection", "--loop-protection", "loop_protection"),
    ("local", "flood_rate", "--flood-rate", "flood_rate"),
    ("local", "flood_burst", "--flood-burst", "flood_burst"),
    ("local", "dhcp", "--dhcp", "dhcp"),
    ("local", "ra", "--ra", "ra"),
    ("local", "vlans", "--vlans", "vlans"),
    ("local", "untagged", "--untagged", "untagged"),
    ("local", "site", "--site", "site"),
    ("local", "priority", "--priority", "priority"),
    ("local", "group_key", "--group-key", "group_key"),
    ("local", "ha_follow", "--ha-follow", "ha_follow"),
    ("local", "user", "--user", "user"),
    ("local", "prepared_taps", "--prepared-taps", "prepared_taps"),
    ("peer", "host", "--peer", "peer_host"),
    ("peer", "port", "--peer", "peer_port"),
    ("peer", "public_key", "--peer-key", "peer_public_key"),
    ("peer", "psk_file", "--psk-file", "psk_file"),
    ("peer", "persistent_keepalive", "--persistent-keepalive", "persistent_keepalive"),
)

#: The keys of one ``[[peers]]`` entry.
PEERS_KEYS = ("name", "public_key", "host", "port", "psk_file", "persistent_keepalive", "tap")

_OPTION = {fld: option for _section, _key, option, fld in SETTINGS}


def split_host_port(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int | None]:
    """Split ``HOST[:PORT]``; IPv6 literals go in brackets when a port follows.

    Returns the port as None when absent, so a TOML ``peer.port`` can fill it.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("IPv6 address in brackets expected, e.g. [2001:db8::1]:55555")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:  # a name, an IPv4 address, or a bare IPv6 literal
        host, port_text = text, None
    if not host:
        raise ValueError("empty host")
    if port_text is None:
        return host, None
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    return host, int(port_text)


def _check_port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: must be 1..65535")
    return value


def _check_ifname(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be an interface name")
    if len(value.encode()) > IFNAMSIZ or not _IFNAME.match(value) or value in (".", ".."):
        raise ConfigError(
            f"{where}: {value!r} is not a valid interface name (at most 15 characters)"
        )
    return value


def _check_host(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a host name or IP address")
    if ":" in value:  # IPv6 literal
        try:
            ipaddress.IPv6Address(value.split("%")[0])
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a valid IPv6 address") from None
        return value
    if not _HOSTNAME.match(value):
        raise ConfigError(f"{where}: {value!r} is not a valid host name or address")
    return value


def _check_user(value: Any, where: str) -> str:
    if (not isinstance(value, str) or not 1 <= len(value) <= 32
            or not all(c.isascii() and (c.isalnum() or c in "_-.") for c in value)
            or value[0] == "-"):
        raise ConfigError(f"{where}: must be a user name (letters, digits, '_', '-', '.')")
    return value


def _check_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: must be true or false")
    return value


def _check_seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        raise ConfigError(f"{where}: must be a number of seconds 0..3600 (0 disables)")
    return float(value)


def _check_mtu(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 576 <= value <= 65535:
        raise ConfigError(f"{where}: must be 576..65535")
    return value


def _check_path(value: Any, where: str, base: Path | None) -> Path:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError(f"{where}: must be a file path")
    path = Path(value)
    if base is not None and not path.is_absolute():
        path = base / path
    return path


def _check_mode(value: Any, where: str) -> str:
    if value not in MODES:
        raise ConfigError(f"{where}: must be \"mesh\" or \"hub\"")
    mode: str = value
    return mode


def _check_data_path(value: Any, where: str) -> str:
    if value not in DATA_PATHS:
        raise ConfigError(f'{where}: must be "auto", "native" or "python"')
    if value == "native":
        from bridger import native

        if native.lane is None:
            raise ConfigError(f"{where}: the native data path is not built here "
                              f"({native.unavailable}); use auto or python")
    data_path: str = value
    return data_path


def _check_peer_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a name like \"berlin\"")
    if len(value) > PEER_NAME_MAX or not _PEER_NAME.match(value):
        raise ConfigError(
            f"{where}: {value!r} is not a valid peer name (lowercase letters, digits and '-',"
            f" not starting with '-', at most {PEER_NAME_MAX} characters)"
        )
    return value


def _check_public_key(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be a base64 string")
    return decode_key(value, where)


def _check_metrics(value: Any, where: str) -> str:
    """``HOST:PORT``, ``[v6]:PORT``, or ``:PORT`` for all addresses."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be HOST:PORT")
    text = value.strip()
    if text.startswith(":") and text.count(":") == 1:
        host, port_text = "", text[1:]
        if not port_text.isdigit():
            raise ConfigError(f"{where}: port {port_text!r} is not a number")
        port: int | None = int(port_text)
    else:
        try:
            host, port = split_host_port(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if port is None:
        raise ConfigError(f"{where}: must be HOST:PORT, e.g. 127.0.0.1:9555 (or :9555 for all)")
    _check_port(port, where)
    if host:
        _check_host(host, where)
    return value


def is_ip_literal(host: str) -> bool:
    """An IPv4 or IPv6 address (with an optional %scope), not a name to resolve."""
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


def legacy_peer_name(host: str | None) -> str:
    """The name of the single legacy peer: its host's first DNS label, else "peer"."""
    if host is None or is_ip_literal(host):
        return LEGACY_PEER_NAME
    label = host.split(".")[0]
    if len(label) <= PEER_NAME_MAX and _PEER_NAME.match(label):
        return label
    return LEGACY_PEER_NAME


def read_toml(path: Path) -> dict[str, Any]:
    """Read a config file; unknown sections and keys are errors (typos must not pass silently)."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 at byte {exc.start}") from None
    known: dict[str, set[str]] = {}
    for section, key, _option, _field in SETTINGS:
        known.setdefault(section, set()).add(key)
    for section, table in data.items():
        if section == "peers":
            _check_peers_array(path, table)
            continue
        if section not in known:
            raise ConfigError(
                f"{path}: [{section}]: unknown section (expected [local] and [[peers]] or [peer])"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section}: must be a table [{section}]")
        for key in table:
            if key not in known[section]:
                raise ConfigError(f"{path}: {section}.{key}: unknown key")
    if "peer" in data and "peers" in data:
        raise ConfigError(
            f"{path}: peer: [peer] and [[peers]] both given: use [[peers]] entries only"
            " (a [peer] table is one [[peers]] entry with a name)"
        )
    return data


def _check_peers_array(path: Path, entries: Any) -> None:
    if isinstance(entries, dict):
        raise ConfigError(
            f"{path}: [peers]: write [[peers]] (double brackets, one per peer), or [peer]"
        )
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{path}: peers: must be [[peers]] tables, one per peer")
    if not entries:
        raise ConfigError(f"{path}: peers: needs at least one [[peers]] entry")
    for number, entry in enumerate(entries, 1):
        for key in entry:
            if key not in PEERS_KEYS:
                raise ConfigError(f"{path}: peers[{number}].{key}: unknown key")


@dataclass(frozen=True)
class _Given:
    """One setting's value and where it came from, for error messages."""

    value: Any
    where: str  # "x.toml: local.lan" or "--lan"
    base: Path | None = None  # the config file's directory, for relative paths


@dataclass(frozen=True)
class _Placed:
    """A peer plus how to name each of its keys in an error message."""

    peer: PeerSettings
    label: str  # "peers[2]" or "the peer"
    where: Callable[[str], str]  # PEERS_KEYS key -> "x.toml: peers[2].tap", "--tap", ...


def _normal_host(host: str) -> str:
    """A host as compared: DNS names ignore case and a final dot; addresses compare as such."""
    if is_ip_literal(host):
        address, _, zone = host.partition("%")
        return str(ipaddress.ip_address(address)) + (f"%{zone}" if zone else "")
    return host.lower().rstrip(".")


_GUARD_LOCAL = ("shared", "local")
#: Flooded frames per second a budget may name (far beyond any link).
_MAX_FLOOD = 10_000_000


def _check_vlans(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, str) and where.startswith("--"):  # the command line: "10,20"
        parts = [v.strip() for v in value.split(",") if v.strip()]
        if not all(p.isdigit() for p in parts):
            raise ConfigError(f"{where}: must be VLAN ids 1..4094, e.g. 10,20")
        value = [int(p) for p in parts]
    if not isinstance(value, list) or not all(
        type(v) is int and 1 <= v <= 4094 for v in value
    ):
        raise ConfigError(f"{where}: must be a list of VLAN ids 1..4094, e.g. [10, 20]")
    return tuple(sorted(set(value)))


def _guard_config(given: Mapping[str, Any], where: Callable[[str], str]) -> GuardConfig:
    """The guard settings; each error names its own key."""
    kw: dict[str, Any] = {}
    for fld in ("dhcp", "ra"):
        if fld in given:
            value = given[fld].value
            if value not in _GUARD_LOCAL:
                raise ConfigError(f'{where(fld)}: must be "shared" or "local"')
            kw[fld] = value
    for fld in ("flood_rate", "flood_burst"):
        if fld in given:
            value = given[fld].value
            if isinstance(value, bool) or not isinstance(value, int) or not (
                0 <= value <= _MAX_FLOOD
            ):
                raise ConfigError(f"{where(fld)}: must be frames per second 0..{_MAX_FLOOD}"
                                  " (0: unlimited)")
            kw[fld] = value
    for fld in ("untagged", "loop_protection"):
        if fld in given:
            kw[fld] = _check_bool(given[fld].value, where(fld))
    if "vlans" in given:
        kw["vlans"] = _check_vlans(given["vlans"].value, where("vlans"))
        if not kw["vlans"] and kw.get("untagged") is False:
            raise ConfigError(f"{where('vlans')}: empty with untagged = false: nothing would"
                              " cross")
    try:
        return GuardConfig(**kw)
    except ConfigError as exc:  # a combination the checks above do not cover
        raise ConfigError(f"{where('vlans') if 'vlans' in kw else where('dhcp')}: {exc}") from None


_SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _ha_settings(given: Mapping[str, _Given], where: Callable[[str], str],
                 stp: bool) -> HaSettings | None:
    """``site`` (+ ``group_key``, ``priority``) or ``ha_follow``; None without either."""
    if "site" not in given and "ha_follow" not in given:
        for fld in ("priority", "group_key"):
            if fld in given:
                raise ConfigError(f"{where(fld)}: needs local.site (the group's name)")
        return None
    kw: dict[str, Any] = {}
    if "site" in given:
        site = given["site"].value
        if not isinstance(site, str) or not _SITE.match(site):
            raise ConfigError(f"{where('site')}: must be a name like \"london\" (letters, "
                              "digits, '_.-', at most 63)")
        kw["site"] = site
    if "priority" in given:
        prio = given["priority"].value
        if isinstance(prio, bool) or not isinstance(prio, int) or not 0 <= prio <= 255:
            raise ConfigError(f"{where('priority')}: must be 0..255 (higher wins)")
        kw["priority"] = prio
    if "ha_follow" in given:
        g = given["ha_follow"]
        kw["follow"] = _check_path(g.value, g.where, g.base)
    elif "group_key" not in given:
        raise ConfigError(f"{where('site')}: needs local.group_key, the group's shared key "
                          "file (`bridger genkey`, the same file on every gateway of the site)")
    if "group_key" in given:
        g = given["group_key"]
        kw["group_key"] = _check_path(g.value, g.where, g.base)
        read_private_key_file(kw["group_key"])  # a bad key file is one line now
    if stp:
        raise ConfigError(f"{where('stp')}: must be off with local.site or local.ha_follow "
                          "(the group sets the taps' bridge-port states itself)")
    return HaSettings(**kw)


def build_up_config(
    cli: Mapping[str, Any], config_path: Path | None, *, etc: Path | None = None
) -> UpConfig:
    """Merge the TOML file (if any) with command-line values (which win) and validate.

    ``cli`` maps the last column of :data:`SETTINGS` to values given on the
    command line (absent or None when not given); ``peer`` holds the raw
    ``HOST[:PORT]`` of ``--peer``. Without ``config_path``, ``etc``/bridger.toml
    is read when it exists (``etc`` defaults to :func:`etc_dir`). Reads the
    private key file, to refuse our own public key listed as a peer.
    """
    etc = etc_dir() if etc is None else etc
    if config_path is None and (etc / CONFIG_NAME).exists():
        config_path = etc / CONFIG_NAME
    data = read_toml(config_path) if config_path is not None else {}
    base = config_path.parent if config_path is not None else None

    given: dict[str, _Given] = {}
    for section, key, _option, fld in SETTINGS:
        table = data.get(section, {})
        if key in table:
            given[fld] = _Given(table[key], f"{config_path}: {section}.{key}", base)
    peer_arg: tuple[str, int | None] | None = None
    if cli.get("peer") is not None:
        raw = cli["peer"]
        try:
            peer_arg = split_host_port(raw)
        except ValueError as exc:
            raise ConfigError(f"--peer: {raw!r}: {exc}") from None
        _check_host(peer_arg[0], "--peer")
    for fld, value in cli.items():
        if fld != "peer" and value is not None:
            given[fld] = _Given(value, _OPTION[fld])

    def where(fld: str) -> str:
        return given[fld].where if fld in given else _OPTION[fld]

    if "lan" not in given:
        in_file = config_path if config_path is not None else f"{etc / CONFIG_NAME} or --config"
        raise ConfigError(f"--lan: required (or local.lan in {in_file})")
    lan = _check_ifname(given["lan"].value, where("lan"))
    if "key_file" in given:
        g = given["key_file"]
        key_file = _check_path(g.value, g.where, g.base)
    else:
        key_file = etc / KEY_NAME
        if not key_file.exists():
            raise ConfigError(
                f"--key: required: no {key_file} (make it with `bridger init`), or give --key FILE"
            )
    out: dict[str, Any] = {"lan": lan, "key_file": key_file}
    if "mode" in given:
        out["mode"] = _check_mode(given["mode"].value, where("mode"))
    if "listen" in given:
        out["listen"] = _check_port(given["listen"].value, where("listen"))
    bridge = DEFAULT_BRIDGE
    if "bridge" in given:
        bridge = out["bridge"] = _check_ifname(given["bridge"].value, where("bridge"))
    if lan == bridge:
        other = where("bridge") if "bridge" in given else "the default; pick another with --bridge"
        raise ConfigError(f'{where("lan")}: "{lan}" is also the bridge name ({other})')
    if "state_dir" in given:
        g = given["state_dir"]
        out["state_dir"] = _check_path(g.value, g.where, g.base)
    else:
        out["state_dir"] = default_state_dir(bridge)
    if "wan_mtu" in given:
        out["wan_mtu"] = _check_mtu(given["wan_mtu"].value, where("wan_mtu"))
    if "user" in given:
        out["user"] = _check_user(given["user"].value, where("user"))
    for fld in ("stp", "dashboard", "offload", "prepared_taps"):
        if fld in given:
            out[fld] = _check_bool(given[fld].value, where(fld))
    if "data_path" in given:
        out["data_path"] = _check_data_path(given["data_path"].value, where("data_path"))
    if "metrics" in given:
        out["metrics"] = _check_metrics(given["metrics"].value, where("metrics"))
    out["guard"] = _guard_config(given, where)
    out["ha"] = _ha_settings(given, where, out.get("stp", False))
    if out["ha"] is not None and out.get("prepared_taps"):
        raise ConfigError(f"{where('site')}: two gateways per site need the privileged "
                          "start (bridger up as root, which splits), not prepared_taps: a "
                          "standby's gate is a bridge-port change at any moment, and with "
                          "prepared taps nothing privileged runs (docs/security.md)")

    if "peers" in data:
        assert config_path is not None
        placed = _peers_from_entries(data["peers"], config_path, given, peer_arg)
    else:
        placed = [_legacy_peer(given, peer_arg, config_path, "peer" in data, etc)]
    _check_across_peers(placed, lan, bridge, where("lan"), where("bridge"))
    own = public_key(read_private_key_file(key_file))
    for p in placed:
        if p.peer.public_key == own:
            raise ConfigError(
                f"{p.where('public_key')}: this is our own public key (of {key_file}),"
                " not a peer's"
            )
    return UpConfig(peers=tuple(p.peer for p in placed), **out)


def _legacy_peer(
    given: dict[str, _Given],
    peer_arg: tuple[str, int | None] | None,
    config_path: Path | None,
    has_peer_table: bool,
    etc: Path,
) -> _Placed:
    """The single peer of a [peer] table and/or --peer/--peer-key (the form before [[peers]])."""
    in_file = config_path if config_path is not None else etc / CONFIG_NAME
    if "peer_public_key" not in given:
        if has_peer_table:
            raise ConfigError(f"{config_path}: peer.public_key: required (or --peer-key)")
        if peer_arg is not None:
            host = peer_arg[0]
            raise ConfigError(
                f"--peer {host}: no public key: add a [[peers]] entry with host = \"{host}\""
                f" and public_key to {in_file}, or give --peer-key"
            )
        raise ConfigError(f"--peer-key: required (or a [[peers]] entry in {in_file})")
    names = {"public_key": "peer_public_key", "host": "peer_host", "port": "peer_port",
             "psk_file": "psk_file", "persistent_keepalive": "persistent_keepalive",
             "tap": "tap", "name": "peer_host"}

    def where(key: str) -> str:
        fld = names[key]
        if key in ("host", "port") and peer_arg is not None:
            return "--peer"
        return given[fld].where if fld in given else _OPTION[fld]

    pub = given["peer_public_key"]
    kw: dict[str, Any] = {"public_key": _check_public_key(pub.value, pub.where)}
    if "peer_host" in given:
        kw["host"] = _check_host(given["peer_host"].value, given["peer_host"].where)
    if "peer_port" in given:
        kw["port"] = _check_port(given["peer_port"].value, given["peer_port"].where)
    if peer_arg is not None:
        kw["host"] = peer_arg[0]
        if peer_arg[1] is not None:
            kw["port"] = _check_port(peer_arg[1], "--peer")
    if given.get("psk_file") is not None:
        g = given["psk_file"]
        kw["psk_file"] = _check_path(g.value, g.where, g.base)
    if "persistent_keepalive" in given:
        g = given["persistent_keepalive"]
        kw["persistent_keepalive"] = _check_seconds(g.value, g.where)
    if "tap" in given:
        kw["tap"] = _check_ifname(given["tap"].value, given["tap"].where)
    peer = PeerSettings(name=legacy_peer_name(kw.get("host")), **kw)
    return _Placed(peer, "the peer", where)


def _peers_from_entries(
    entries: list[dict[str, Any]],
    path: Path,
    given: dict[str, _Given],
    peer_arg: tuple[str, int | None] | None,
) -> list[_Placed]:
    """The [[peers]] entries, with --peer/--peer-key picking one of them."""
    for key in ("tap", "psk_file", "persistent_keepalive"):
        if key in given:
            raise ConfigError(
                f"{given[key].where}: not used with [[peers]] in {path}:"
                f" set peers[N].{key} per peer there"
            )
    placed: list[_Placed] = []
    for number, entry in enumerate(entries, 1):
        label = f"peers[{number}]"

        def where(key: str, label: str = label, entry: dict[str, Any] = entry) -> str:
            if key == "tap" and "tap" not in entry:
                key = "name"  # the tap defaults to the name
            return f"{path}: {label}.{key}"

        for required in ("name", "public_key"):
            if required not in entry:
                raise ConfigError(f"{path}: {label}.{required}: required")
        name = _check_peer_name(entry["name"], where("name"))
        kw: dict[str, Any] = {
            "name": name,
            "public_key": _check_public_key(entry["public_key"], where("public_key")),
            "tap": name,
        }
        if "host" in entry:
            kw["host"] = _check_host(entry["host"], where("host"))
        if "port" in entry:
            kw["port"] = _check_port(entry["port"], where("port"))
        if "psk_file" in entry:
            kw["psk_file"] = _check_path(entry["psk_file"], where("psk_file"), path.parent)
        if "persistent_keepalive" in entry:
            kw["persistent_keepalive"] = _check_seconds(
                entry["persistent_keepalive"], where("persistent_keepalive")
            )
        if "tap" in entry:
            kw["tap"] = _check_ifname(entry["tap"], where("tap"))
        placed.append(_Placed(PeerSettings(**kw), label, where))
    if "peer_public_key" in given:
        g = given["peer_public_key"]
        wanted_key = _check_public_key(g.value, g.where)
        chosen = [i for i, p in enumerate(placed) if p.peer.public_key == wanted_key]
        if not chosen:
            raise ConfigError(
                f"{g.where}: not the public_key of any [[peers]] entry in {path}:"
                " add the peer there"
            )
        _readdress(placed, chosen[0], peer_arg, by_key=True)
    elif peer_arg is not None:
        host, port = peer_arg
        wanted = _normal_host(host)
        chosen = [i for i, p in enumerate(placed)
                  if p.peer.host is not None and _normal_host(p.peer.host) == wanted]
        if len(chosen) > 1 and port is not None:
            chosen = [i for i in chosen if placed[i].peer.port == port] or chosen
        if not chosen:
            chosen = [i for i, p in enumerate(placed) if p.peer.name == host]
        if not chosen:
            raise ConfigError(
                f"--peer {host}: no public key: add a [[peers]] entry with host = \"{host}\""
                f" and public_key to {path}, or give --peer-key"
            )
        if len(chosen) > 1:
            raise ConfigError(
                f"--peer {host}: matches {placed[chosen[0]].label} and"
                f" {placed[chosen[1]].label} in {path}: give the peer's name"
            )
        _readdress(placed, chosen[0], peer_arg, by_key=False)
    return placed


def _readdress(
    placed: list[_Placed], index: int, peer_arg: tuple[str, int | None] | None, *, by_key: bool
) -> None:
    """Apply --peer HOST[:PORT] to the [[peers]] entry it picked (or --peer-key picked)."""
    if peer_arg is None:
        return
    p = placed[index]
    host, port = peer_arg
    changes: dict[str, Any] = {}
    if by_key and host != p.peer.name and (
        p.peer.host is None or _normal_host(p.peer.host) != _normal_host(host)
    ):
        changes["host"] = host
    if port is not None:
        changes["port"] = _check_port(port, "--peer")
    if not changes:
        return
    peer = replace(p.peer, **changes)

    def where(key: str) -> str:
        return "--peer" if key in changes else p.where(key)

    placed[index] = _Placed(peer, p.label, where)


def _check_across_peers(
    placed: list[_Placed], lan: str, bridge: str, lan_where: str, bridge_where: str
) -> None:
    """Names, public keys and tap interfaces are unique; a tap is not the LAN NIC or bridge."""
    names: dict[str, str] = {}
    keys: dict[bytes, _Placed] = {}
    taps: dict[str, str] = {}
    for p in placed:
        peer = p.peer
        if peer.name in names:
            raise ConfigError(
                f'{p.where("name")}: duplicate name "{peer.name}" (also {names[peer.name]})'
            )
        names[peer.name] = p.label
        if peer.public_key in keys:
            first = keys[peer.public_key]
            raise ConfigError(
                f'{p.where("public_key")}: same key as {first.label} ("{first.peer.name}")'
            )
        keys[peer.public_key] = p
        tap = peer.tap
        if tap == lan:
            raise ConfigError(
                f'{p.where("tap")}: tap "{tap}" is also the LAN interface ({lan_where})'
            )
        if tap == bridge:
            raise ConfigError(
                f'{p.where("tap")}: tap "{tap}" is also the bridge name ({bridge_where})'
            )
        if tap in taps:
            raise ConfigError(f'{p.where("tap")}: tap "{tap}" is also the tap of {taps[tap]}')
        taps[tap] = p.label


def state_dir_for(
    state_dir: str | None, bridge: str | None, config_path: Path | None,
    *, etc: Path | None = None,
) -> Path:
    """The state directory `bridger down`/`status` look in.

    ``--state-dir``, else ``--bridge``'s default, else what the config file
    (``--config``, or the default file when it exists) sets, else the default.
    """
    if state_dir:
        return Path(state_dir)
    if bridge:
        return default_state_dir(_check_ifname(bridge, "--bridge"))
    etc = etc_dir() if etc is None else etc
    if config_path is None and (etc / CONFIG_NAME).exists():
        config_path = etc / CONFIG_NAME
    if config_path is None:
        return default_state_dir(DEFAULT_BRIDGE)
    local = read_toml(config_path).get("local", {})
    if "state_dir" in local:
        return _check_path(local["state_dir"], f"{config_path}: local.state_dir",
                           config_path.parent)
    if "bridge" in local:
        return default_state_dir(_check_ifname(local["bridge"], f"{config_path}: local.bridge"))
    return default_state_dir(DEFAULT_BRIDGE)


_SKELETON = """\
# bridger.toml, written by `bridger init`. Every key: configs/README.md.
# Command-line options override these. Check with: bridger up (Ctrl-C stops).
#
# This gateway's public key; each other site lists it in its [[peers]]:
#   {public}

[local]
lan = "eth1"              # the LAN NIC to bridge; its addresses move to the bridge
key = "private.key"       # this site's private key (mode 0600), beside this file
# mode = "mesh"           # "mesh": peers reach each other only over their own
#                         # links; "hub": this site also forwards between peers
# listen = 55555          # UDP port, all addresses
# bridge = "bridger0"
# wan_mtu = 1500          # an upper bound on the path MTU; without it each
#                         # peer's is found by probing (and ICMP), any path
# stp = false
# metrics = "127.0.0.1:9555"
# data_path = "auto"      # "auto": native per-packet code when built; "python"

# One [[peers]] entry per other site.
[[peers]]
name = "berlin"           # a-z, 0-9 and '-', at most 15; also its tap interface
public_key = "PASTE-THE-PEER-PUBLIC-KEY"   # `bridger init` printed it there
host = "berlin.example"   # name or address; omit to wait to be contacted
# port = 55555
# persistent_keepalive = 25   # seconds; keeps a NAT mapping open (0: off)
# psk_file = "berlin.psk"     # optional pre-shared key (base64, mode 0600)
"""


def config_skeleton(public: str) -> str:
    """A commented bridger.toml with [local] and one [[peers]] entry to fill in.

    ``public`` is this gateway's public key (base64), quoted in a comment; the
    key file is ``private.key`` beside the config file.
    """
    return _SKELETON.format(public=public)
