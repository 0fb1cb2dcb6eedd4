"""Config loading: TOML plus command line, with one-line errors naming file and key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridger.config import UpConfig, build_up_config, split_host_port
from bridger.errors import ConfigError, KeyFileError
from bridger.keys import (
    encode_key,
    generate_private_key,
    public_key,
    read_private_key_file,
    write_private_key_file,
)

REPO = Path(__file__).resolve().parents[2]
PUB = encode_key(public_key(generate_private_key()))


def cli(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"lan": "eth1", "key_file": "/k", "peer_public_key": PUB}
    base.update(kw)
    return base


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("berlin.example", ("berlin.example", None)),
        ("berlin.example:4000", ("berlin.example", 4000)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
        ("[2001:db8::1]:55555", ("2001:db8::1", 55555)),
        ("2001:db8::1", ("2001:db8::1", None)),
        ("[fe80::1]", ("fe80::1", None)),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int | None]) -> None:
    assert split_host_port(text) == expected


def test_defaults_from_command_line_only() -> None:
    cfg = build_up_config(cli(peer="berlin.example"), None)
    assert cfg == UpConfig(
        lan="eth1",
        key_file=Path("/k"),
        peer_public_key=public_key_bytes(PUB),
        peer_host="berlin.example",
        peer_port=55555,
        listen=55555,
        state_dir=Path("/run/bridger/bridger0"),
    )


def public_key_bytes(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


def test_state_dir_default_follows_bridge_name() -> None:
    cfg = build_up_config(cli(bridge="br-site"), None)
    assert cfg.state_dir == Path("/run/bridger/br-site")


def test_peer_may_be_omitted() -> None:
    assert build_up_config(cli(), None).peer_host is None


def test_command_line_wins_over_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'[local]\nlan = "eth9"\nkey = "k.key"\nlisten = 4000\n'
        f'[peer]\nhost = "a.example"\nport = 7000\npublic_key = "{PUB}"\n',
    )
    cfg = build_up_config({"lan": "eth1", "peer": "b.example"}, path)
    assert cfg.lan == "eth1"
    assert cfg.peer_host == "b.example"
    assert cfg.peer_port == 7000  # --peer without a port keeps the file's port
    assert cfg.listen == 4000
    assert cfg.key_file == tmp_path / "k.key"  # relative to the config file


@pytest.mark.parametrize(
    "body, message",
    [
        ("[peer]\nport = 70000\n", "x.toml: peer.port: must be 1..65535"),
        ("[peer]\nport = \"55555\"\n", "x.toml: peer.port: must be 1..65535"),
        ("[local]\nlisten = 0\n", "x.toml: local.listen: must be 1..65535"),
        ("[local]\nbridge = \"a-very-long-bridge-name\"\n", "x.toml: local.bridge:"),
        ("[local]\nstp = \"yes\"\n", "x.toml: local.stp: must be true or false"),
        ("[local]\nwan_mtu = 100\n", "x.toml: local.wan_mtu: must be 576..65535"),
        ("[local]\nlaan = \"eth1\"\n", "x.toml: local.laan: unknown key"),
        ("[remote]\nhost = \"x\"\n", "x.toml: [remote]: unknown section"),
        ("[peer]\npublic_key = \"abc\"\n", "x.toml: peer.public_key: not valid base64"),
        ("[peer]\nhost = \"bad host!\"\n", "x.toml: peer.host:"),
        ("[peer]\npersistent_keepalive = -1\n", "x.toml: peer.persistent_keepalive:"),
        ("[local]\nmetrics = \"localhost\"\n", "x.toml: local.metrics: must be HOST:PORT"),
        ("[local\n", "x.toml: not valid TOML"),
    ],
)
def test_file_errors_name_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, body)
    given = cli()
    for key in ("peer_public_key",) if "public_key" in body else ():
        given.pop(key)
    with pytest.raises(ConfigError) as info:
        build_up_config(given, path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_required_option() -> None:
    with pytest.raises(ConfigError, match="--lan: required"):
        build_up_config({"key_file": "/k", "peer_public_key": PUB}, None)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        build_up_config(cli(), tmp_path / "nope.toml")


def test_same_name_for_tap_and_bridge_refused() -> None:
    with pytest.raises(ConfigError, match="three different names"):
        build_up_config(cli(bridge="br0", tap="br0"), None)


@pytest.mark.parametrize("name", ["london.toml", "berlin.toml"])
def test_example_configs_are_valid(name: str) -> None:
    cfg = build_up_config({}, REPO / "configs" / name)
    assert cfg.lan == "eth1"
    assert cfg.peer_host in ("berlin.example", "london.example")
    assert len(cfg.peer_public_key) == 32


def test_example_configs_are_two_ends_of_one_link() -> None:
    london = build_up_config({}, REPO / "configs" / "london.toml")
    berlin = build_up_config({}, REPO / "configs" / "berlin.toml")
    assert london.peer_port == berlin.listen and berlin.peer_port == london.listen
    assert london.peer_public_key != berlin.peer_public_key


def test_private_key_file_permissions(tmp_path: Path) -> None:
    path = tmp_path / "k"
    key = generate_private_key()
    write_private_key_file(path, key)
    assert read_private_key_file(path) == key
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="too open"):
        read_private_key_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_private_key_file(path)


def test_private_key_file_missing_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file"):
        read_private_key_file(tmp_path / "none")
    path = tmp_path / "g"
    path.write_text("garbage\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="not valid base64"):
        read_private_key_file(path)


def test_up_config_error_via_cli_is_one_line_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[peer]\nport = 0\n")
    out = subprocess.run(
        [sys.executable, "-m", "bridger", "up", "--config", str(path), "--lan", "eth1",
         "--key", "/k", "--peer-key", PUB],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == f"bridger: {path}: peer.port: must be 1..65535"


def test_offload_option_from_file_and_command_line(tmp_path: Path) -> None:
    assert build_up_config(cli(), None).offload is True
    path = write(tmp_path, "[local]\noffload = false\n")
    assert build_up_config(cli(), path).offload is False
    assert build_up_config(cli(offload=False), None).offload is False
    path = write(tmp_path, "[local]\noffload = 1\n")
    with pytest.raises(ConfigError, match=r"x\.toml: local\.offload: must be true or false"):
        build_up_config(cli(), path)
