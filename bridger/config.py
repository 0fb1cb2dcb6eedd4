"""The settings of `bridger up`, from a TOML file and the command line.

Every option can come from ``--config FILE``; an option given on the command
line wins. Errors are one line naming the file (or the option) and the key,
e.g. ``configs/x.toml: peer.port: must be 1..65535``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridger.errors import ConfigError
from bridger.keys import decode_key

DEFAULT_PORT = 55555
DEFAULT_BRIDGE = "bridger0"
DEFAULT_TAP = "bridger-tap0"
DEFAULT_PERSISTENT_KEEPALIVE = 25.0
STATE_ROOT = Path("/run/bridger")
IFNAMSIZ = 15  # Linux interface names are at most 15 bytes

_IFNAME = re.compile(r"^[A-Za-z0-9_.\-@:]+$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")


def default_state_dir(bridge: str) -> Path:
    """Per-bridge state directory, so two daemons in two namespaces never collide."""
    return STATE_ROOT / bridge


@dataclass(frozen=True)
class UpConfig:
    """Everything `bridger up` needs, validated."""

    lan: str
    key_file: Path
    peer_public_key: bytes
    peer_host: str | None = None
    peer_port: int = DEFAULT_PORT
    listen: int = DEFAULT_PORT
    bridge: str = DEFAULT_BRIDGE
    tap: str = DEFAULT_TAP
    state_dir: Path = field(default_factory=lambda: default_state_dir(DEFAULT_BRIDGE))
    psk_file: Path | None = None
    persistent_keepalive: float = DEFAULT_PERSISTENT_KEEPALIVE
    wan_mtu: int = 1500
    stp: bool = False
    dashboard: bool = True
    metrics: str | None = None
    offload: bool = True


# One row per setting: (TOML section, TOML key, command-line option, UpConfig field).
# The table is the single source of truth for naming in error messages.
SETTINGS: tuple[tuple[str, str, str, str], ...] = (
    ("local", "lan", "--lan", "lan"),
    ("local", "key", "--key", "key_file"),
    ("local", "listen", "--listen", "listen"),
    ("local", "bridge", "--bridge", "bridge"),
    ("local", "tap", "--tap", "tap"),
    ("local", "state_dir", "--state-dir", "state_dir"),
    ("local", "stp", "--stp", "stp"),
    ("local", "wan_mtu", "--wan-mtu", "wan_mtu"),
    ("local", "dashboard", "--no-dashboard", "dashboard"),
    ("local", "metrics", "--metrics", "metrics"),
    ("local", "offload", "--no-offload", "offload"),
    ("peer", "host", "--peer", "peer_host"),
    ("peer", "port", "--peer", "peer_port"),
    ("peer", "public_key", "--peer-key", "peer_public_key"),
    ("peer", "psk_file", "--psk-file", "psk_file"),
    ("peer", "persistent_keepalive", "--persistent-keepalive", "persistent_keepalive"),
)


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


class _Source:
    """Where a value came from, for error messages."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def where(self, section: str, key: str, option: str) -> str:
        if self.path is None:
            return option
        return f"{self.path}: {section}.{key}"


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
        import ipaddress

        try:
            ipaddress.IPv6Address(value.split("%")[0])
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a valid IPv6 address") from None
        return value
    if not _HOSTNAME.match(value):
        raise ConfigError(f"{where}: {value!r} is not a valid host name or address")
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
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a file path")
    path = Path(value)
    if base is not None and not path.is_absolute():
        path = base / path
    return path


def _check_metrics(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be HOST:PORT")
    try:
        _host, port = split_host_port(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if port is None:
        raise ConfigError(f"{where}: must be HOST:PORT, e.g. 127.0.0.1:9555")
    _check_port(port, where)
    return value


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
        if section not in known:
            raise ConfigError(f"{path}: [{section}]: unknown section (expected [local] or [peer])")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section}: must be a table [{section}]")
        for key in table:
            if key not in known[section]:
                raise ConfigError(f"{path}: {section}.{key}: unknown key")
    return data


def build_up_config(cli: Mapping[str, Any], config_path: Path | None) -> UpConfig:
    """Merge the TOML file (if any) with command-line values (which win) and validate.

    ``cli`` maps UpConfig field names to values given on the command line
    (absent or None when not given); ``peer`` holds the raw ``HOST[:PORT]``.
    """
    file_values: dict[str, Any] = {}
    if config_path is not None:
        data = read_toml(config_path)
        for section, key, _option, fld in SETTINGS:
            table = data.get(section, {})
            if key in table:
                file_values[fld] = table[key]
    file_src = _Source(config_path)
    cli_src = _Source(None)
    base = config_path.parent if config_path is not None else None

    values: dict[str, Any] = {}
    origin: dict[str, _Source] = {}
    for fld, value in file_values.items():
        values[fld] = value
        origin[fld] = file_src

    peer_arg = cli.get("peer")
    if peer_arg is not None:
        try:
            host, port = split_host_port(peer_arg)
        except ValueError as exc:
            raise ConfigError(f"--peer: {peer_arg!r}: {exc}") from None
        values["peer_host"] = host
        origin["peer_host"] = cli_src
        if port is not None:
            values["peer_port"] = port
            origin["peer_port"] = cli_src
    for fld, value in cli.items():
        if fld == "peer" or value is None:
            continue
        values[fld] = value
        origin[fld] = cli_src

    def where(fld: str) -> str:
        for section, key, option, f in SETTINGS:
            if f == fld:
                return origin.get(fld, cli_src).where(section, key, option)
        raise AssertionError(fld)

    def path_base(fld: str) -> Path | None:
        return base if origin.get(fld) is file_src else None

    for fld, option in (("lan", "--lan"), ("key_file", "--key"), ("peer_public_key", "--peer-key")):
        if fld not in values:
            hint = f" (or {where(fld)} in --config)" if config_path is None else ""
            raise ConfigError(f"{option}: required{hint}")

    out: dict[str, Any] = {
        "lan": _check_ifname(values["lan"], where("lan")),
        "key_file": _check_path(values["key_file"], where("key_file"), path_base("key_file")),
    }
    pub = values["peer_public_key"]
    if not isinstance(pub, str):
        raise ConfigError(f"{where('peer_public_key')}: must be a base64 string")
    out["peer_public_key"] = decode_key(pub, where("peer_public_key"))
    if "peer_host" in values:
        out["peer_host"] = _check_host(values["peer_host"], where("peer_host"))
    if "peer_port" in values:
        out["peer_port"] = _check_port(values["peer_port"], where("peer_port"))
    if "listen" in values:
        out["listen"] = _check_port(values["listen"], where("listen"))
    for fld in ("bridge", "tap"):
        if fld in values:
            out[fld] = _check_ifname(values[fld], where(fld))
    bridge = out.get("bridge", DEFAULT_BRIDGE)
    if out.get("tap", DEFAULT_TAP) in (bridge, out["lan"]) or bridge == out["lan"]:
        raise ConfigError(f"{where('tap')}: lan, bridge and tap must be three different names")
    if "state_dir" in values:
        out["state_dir"] = _check_path(
            values["state_dir"], where("state_dir"), path_base("state_dir")
        )
    else:
        out["state_dir"] = default_state_dir(bridge)
    if values.get("psk_file") is not None:
        out["psk_file"] = _check_path(values["psk_file"], where("psk_file"), path_base("psk_file"))
    if "persistent_keepalive" in values:
        out["persistent_keepalive"] = _check_seconds(
            values["persistent_keepalive"], where("persistent_keepalive")
        )
    if "wan_mtu" in values:
        out["wan_mtu"] = _check_mtu(values["wan_mtu"], where("wan_mtu"))
    for fld in ("stp", "dashboard", "offload"):
        if fld in values:
            out[fld] = _check_bool(values[fld], where(fld))
    if values.get("metrics") is not None:
        out["metrics"] = _check_metrics(values["metrics"], where("metrics"))
    return UpConfig(**out)
