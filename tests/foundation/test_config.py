"""Config loading: TOML plus command line, with one-line errors naming file and key."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridger.cli import build_parser, up_values
from bridger.config import (
    ETC_ENV,
    PeerSettings,
    UpConfig,
    build_up_config,
    etc_dir,
    legacy_peer_name,
    split_host_port,
    state_dir_for,
)
from bridger.errors import ConfigError, KeyFileError
from bridger.guard.policy import GuardConfig
from bridger.keys import (
    encode_key,
    generate_private_key,
    public_key,
    read_private_key_file,
    write_private_key_file,
)

REPO = Path(__file__).resolve().parents[2]
#: Fixed keys: they appear in test ids, which must be the same in every process
#: that collects them (pytest-xdist's workers).
KEYS = [encode_key(public_key(bytes([n]) * 32)) for n in range(1, 4)]
PUB = KEYS[0]


def raw(text: str) -> bytes:
    return base64.b64decode(text)


@pytest.fixture
def own(tmp_path: Path) -> tuple[Path, str]:
    """This site's private key file and its public key."""
    path = tmp_path / "own.key"
    private = generate_private_key()
    write_private_key_file(path, private)
    return path, encode_key(public_key(private))


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """An empty stand-in for /etc/bridger, so the host's own never leaks into a test."""
    path = tmp_path / "etc"
    path.mkdir()
    return path


def build(cli: dict[str, Any], path: Path | None, etc: Path) -> UpConfig:
    return build_up_config(cli, path, etc=etc)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.toml"
    path.write_text(text)
    return path


def entry(name: str, key: str, **extra: Any) -> str:
    lines = [f'name = "{name}"', f'public_key = "{key}"']
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    return "[[peers]]\n" + "\n".join(lines) + "\n"


def error(call: Any) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


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


# --- the legacy single peer: [peer], --peer, --peer-key ------------------------------------

def test_defaults_from_command_line_only(own: tuple[Path, str], etc: Path) -> None:
    key_file, _ = own
    cfg = build({"lan": "eth1", "key_file": str(key_file), "peer_public_key": PUB,
                 "peer": "berlin.example"}, None, etc)
    assert cfg == UpConfig(
        lan="eth1",
        key_file=key_file,
        peers=(PeerSettings(name="berlin", public_key=raw(PUB), host="berlin.example",
                            port=55555, tap="bridger-tap0"),),
        mode="mesh",
        listen=55555,
        state_dir=Path("/run/bridger/bridger0"),
    )
    (peer,) = cfg.peers
    assert (peer.psk_file, peer.persistent_keepalive) == (None, 25.0)


@pytest.mark.parametrize(
    "host, name",
    [
        ("berlin.example", "berlin"),
        ("gw-2.berlin.example", "gw-2"),
        ("Berlin.example", "peer"),  # the name rule is lowercase
        ("10.0.0.1", "peer"),  # an address has no DNS label
        ("2001:db8::1", "peer"),
        ("fe80::1%eth0", "peer"),
        ("a-sixteen-chars0.example", "peer"),
        ("berlin", "berlin"),
        (None, "peer"),
    ],
)
def test_legacy_peer_name_is_the_first_dns_label(host: str | None, name: str) -> None:
    assert legacy_peer_name(host) == name


def test_legacy_peer_tap_is_local_tap(tmp_path: Path, own: tuple[Path, str], etc: Path) -> None:
    path = write(tmp_path, f'[local]\ntap = "tap-x"\n[peer]\npublic_key = "{PUB}"\n')
    cfg = build({"lan": "eth1", "key_file": str(own[0])}, path, etc)
    assert [(p.name, p.tap, p.host) for p in cfg.peers] == [("peer", "tap-x", None)]
    assert build({"lan": "eth1", "key_file": str(own[0]), "tap": "tap-y"}, path,
                 etc).peers[0].tap == "tap-y"


def test_state_dir_default_follows_bridge_name(own: tuple[Path, str], etc: Path) -> None:
    cfg = build({"lan": "eth1", "key_file": str(own[0]), "peer_public_key": PUB,
                 "bridge": "br-site"}, None, etc)
    assert cfg.state_dir == Path("/run/bridger/br-site")


def test_command_line_wins_over_file(tmp_path: Path, own: tuple[Path, str], etc: Path) -> None:
    (tmp_path / "k.key").write_bytes(own[0].read_bytes())
    os.chmod(tmp_path / "k.key", 0o600)
    path = write(
        tmp_path,
        f'[local]\nlan = "eth9"\nkey = "k.key"\nlisten = 4000\n'
        f'[peer]\nhost = "a.example"\nport = 7000\npublic_key = "{PUB}"\n',
    )
    cfg = build({"lan": "eth1", "peer": "b.example"}, path, etc)
    assert cfg.lan == "eth1"
    assert cfg.peers[0].host == "b.example"
    assert cfg.peers[0].port == 7000  # --peer without a port keeps the file's port
    assert cfg.peers[0].name == "b"
    assert cfg.listen == 4000
    assert cfg.key_file == tmp_path / "k.key"  # relative to the config file


@pytest.mark.parametrize(
    "body, message",
    [
        ("[peer]\nport = 70000\n", "{path}: peer.port: must be 1..65535"),
        ("[peer]\nport = \"55555\"\n", "{path}: peer.port: must be 1..65535"),
        ("[local]\nlisten = 0\n", "{path}: local.listen: must be 1..65535"),
        ("[local]\nbridge = \"a-very-long-bridge-name\"\n",
         "{path}: local.bridge: 'a-very-long-bridge-name' is not a valid interface name"
         " (at most 15 characters)"),
        ("[local]\nstp = \"yes\"\n", "{path}: local.stp: must be true or false"),
        ("[local]\nwan_mtu = 100\n", "{path}: local.wan_mtu: must be 576..65535"),
        ("[local]\nlaan = \"eth1\"\n", "{path}: local.laan: unknown key"),
        ("[remote]\nhost = \"x\"\n",
         "{path}: [remote]: unknown section (expected [local] and [[peers]] or [peer])"),
        ("[peer]\npublic_key = \"abc\"\n",
         "{path}: peer.public_key: not valid base64, expected a 32-byte X25519 key"
         " (44 characters)"),
        ("[peer]\nhost = \"bad host!\"\n",
         "{path}: peer.host: 'bad host!' is not a valid host name or address"),
        ("[peer]\npersistent_keepalive = -1\n",
         "{path}: peer.persistent_keepalive: must be a number of seconds 0..3600 (0 disables)"),
        ("[local]\nmetrics = \"localhost\"\n",
         "{path}: local.metrics: must be HOST:PORT, e.g. 127.0.0.1:9555 (or :9555 for all)"),
        ("[local]\nmetrics = \":x\"\n", "{path}: local.metrics: port 'x' is not a number"),
        ("[local]\nmetrics = \":0\"\n", "{path}: local.metrics: must be 1..65535"),
        ("[local]\nmode = \"star\"\n", "{path}: local.mode: must be \"mesh\" or \"hub\""),
        ("[local]\nlan = \"bridger0\"\n",
         "{path}: local.lan: \"bridger0\" is also the bridge name"
         " (the default; pick another with --bridge)"),
        ("[local]\nlan = \"br0\"\nbridge = \"br0\"\n",
         "{path}: local.lan: \"br0\" is also the bridge name ({path}: local.bridge)"),
        ("[local]\ntap = \"eth1\"\n",
         "{path}: local.tap: tap \"eth1\" is also the LAN interface (--lan)"),
        ("[local]\nlan = \"eth1\"\ntap = \"eth1\"\n",
         "{path}: local.tap: tap \"eth1\" is also the LAN interface ({path}: local.lan)"),
        ("[peer]\nhost = \"b.example\"\n", "{path}: peer.public_key: required (or --peer-key)"),
    ],
)
def test_file_errors_name_file_and_key(
    tmp_path: Path, own: tuple[Path, str], etc: Path, body: str, message: str
) -> None:
    path = write(tmp_path, body)
    given: dict[str, Any] = {"key_file": str(own[0])}
    if "lan =" not in body:
        given["lan"] = "eth1"
    if "public_key" not in body and "b.example" not in body:
        given["peer_public_key"] = PUB
    assert error(lambda: build(given, path, etc)) == message.format(path=path)


@pytest.mark.parametrize(
    "given, message",
    [
        ({"bridge": "br0", "tap": "br0"}, '--tap: tap "br0" is also the bridge name (--bridge)'),
        ({"tap": "eth1"}, '--tap: tap "eth1" is also the LAN interface (--lan)'),
        ({"lan": "br0", "bridge": "br0"}, '--lan: "br0" is also the bridge name (--bridge)'),
        ({"mode": "ring"}, '--mode: must be "mesh" or "hub"'),
        ({"peer": "bad host!"}, "--peer: 'bad host!' is not a valid host name or address"),
        ({"peer": ":5"}, "--peer: ':5': empty host"),
        ({"peer_public_key": "short"},
         "--peer-key: not valid base64, expected a 32-byte X25519 key (44 characters)"),
    ],
)
def test_command_line_errors_name_the_option(
    own: tuple[Path, str], etc: Path, given: dict[str, Any], message: str
) -> None:
    cli = {"lan": "eth1", "key_file": str(own[0]), "peer_public_key": PUB, **given}
    assert error(lambda: build(cli, None, etc)) == message


def test_missing_required_options(etc: Path, own: tuple[Path, str]) -> None:
    assert error(lambda: build({"key_file": "/k", "peer_public_key": PUB}, None, etc)) == (
        f"--lan: required (or local.lan in {etc}/bridger.toml or --config)"
    )
    assert error(lambda: build({"lan": "eth1", "key_file": str(own[0])}, None, etc)) == (
        f"--peer-key: required (or a [[peers]] entry in {etc}/bridger.toml)"
    )


def test_missing_config_file(tmp_path: Path, etc: Path) -> None:
    assert error(lambda: build({"lan": "eth1"}, tmp_path / "nope.toml", etc)) == (
        f"{tmp_path / 'nope.toml'}: no such config file"
    )


def test_own_public_key_as_the_peer_is_refused(own: tuple[Path, str], etc: Path) -> None:
    key_file, mine = own
    cli = {"lan": "eth1", "key_file": str(key_file), "peer_public_key": mine}
    assert error(lambda: build(cli, None, etc)) == (
        f"--peer-key: this is our own public key (of {key_file}), not a peer's"
    )


def test_key_file_errors_stay_one_line(own: tuple[Path, str], etc: Path) -> None:
    key_file, _ = own
    os.chmod(key_file, 0o644)
    cli = {"lan": "eth1", "key_file": str(key_file), "peer_public_key": PUB}
    with pytest.raises(KeyFileError) as info:
        build(cli, None, etc)
    assert str(info.value) == (
        f"{key_file}: permissions 0644 are too open: a private key must not be readable by"
        f" group or others (run: chmod 600 {key_file})"
    )


# --- [[peers]] -----------------------------------------------------------------------------

def test_peers_entries(tmp_path: Path, own: tuple[Path, str], etc: Path) -> None:
    path = write(
        tmp_path,
        '[local]\nlan = "eth1"\nmode = "hub"\n'
        + entry("berlin", KEYS[0], host="berlin.example", persistent_keepalive=10)
        + entry("paris", KEYS[1], port=4000, tap="tap-paris", psk_file="paris.psk")
        + entry("rome", KEYS[2], host="2001:db8::7"),
    )
    cfg = build({"key_file": str(own[0])}, path, etc)
    assert cfg.mode == "hub"
    assert cfg.peers == (
        PeerSettings("berlin", raw(KEYS[0]), host="berlin.example", persistent_keepalive=10.0,
                     tap="berlin"),
        PeerSettings("paris", raw(KEYS[1]), port=4000, tap="tap-paris",
                     psk_file=tmp_path / "paris.psk"),
        PeerSettings("rome", raw(KEYS[2]), host="2001:db8::7", tap="rome"),
    )


PEER_ERRORS = [
    (entry("berlin", KEYS[0]) + entry("berlin", KEYS[1]),
     '{path}: peers[2].name: duplicate name "berlin" (also peers[1])'),
    (entry("berlin", KEYS[0]) + entry("paris", KEYS[1]) + entry("rome", KEYS[0]),
     '{path}: peers[3].public_key: same key as peers[1] ("berlin")'),
    (entry("berlin", KEYS[0]) + entry("paris", "{own}"),
     "{path}: peers[2].public_key: this is our own public key (of {key}), not a peer's"),
    (f'[peer]\npublic_key = "{KEYS[0]}"\n' + entry("berlin", KEYS[1]),
     "{path}: peer: [peer] and [[peers]] both given: use [[peers]] entries only"
     " (a [peer] table is one [[peers]] entry with a name)"),
    (entry("berlin", KEYS[0], tap="t0") + entry("paris", KEYS[1], tap="t0"),
     '{path}: peers[2].tap: tap "t0" is also the tap of peers[1]'),
    (entry("berlin", KEYS[0], tap="paris") + entry("paris", KEYS[1]),
     '{path}: peers[2].name: tap "paris" is also the tap of peers[1]'),
    (entry("eth1", KEYS[0]),
     '{path}: peers[1].name: tap "eth1" is also the LAN interface (--lan)'),
    (entry("berlin", KEYS[0], tap="eth1"),
     '{path}: peers[1].tap: tap "eth1" is also the LAN interface (--lan)'),
    (entry("bridger0", KEYS[0]),
     '{path}: peers[1].name: tap "bridger0" is also the bridge name (--bridge)'),
    ('[local]\nbridge = "br-x"\n' + entry("berlin", KEYS[0], tap="br-x"),
     '{path}: peers[1].tap: tap "br-x" is also the bridge name ({path}: local.bridge)'),
    (entry("Berlin", KEYS[0]),
     "{path}: peers[1].name: 'Berlin' is not a valid peer name (lowercase letters, digits"
     " and '-', not starting with '-', at most 15 characters)"),
    (entry("-berlin", KEYS[0]), "{path}: peers[1].name: '-berlin' is not a valid peer name"),
    (entry("berlin-frankfurt", KEYS[0]),
     "{path}: peers[1].name: 'berlin-frankfurt' is not a valid peer name"),
    (entry("berlin.x", KEYS[0]), "{path}: peers[1].name: 'berlin.x' is not a valid peer name"),
    ("[[peers]]\nname = 7\npublic_key = \"" + KEYS[0] + "\"\n",
     '{path}: peers[1].name: must be a name like "berlin"'),
    (f'[[peers]]\npublic_key = "{KEYS[0]}"\n', "{path}: peers[1].name: required"),
    (entry("berlin", KEYS[0]) + '[[peers]]\nname = "paris"\n',
     "{path}: peers[2].public_key: required"),
    (entry("berlin", "abc"), "{path}: peers[1].public_key: not valid base64"),
    (entry("berlin", KEYS[0], hots="x"), "{path}: peers[1].hots: unknown key"),
    (entry("berlin", KEYS[0], port=0), "{path}: peers[1].port: must be 1..65535"),
    (entry("berlin", KEYS[0], host="no such!"),
     "{path}: peers[1].host: 'no such!' is not a valid host name or address"),
    (entry("berlin", KEYS[0], persistent_keepalive=4000),
     "{path}: peers[1].persistent_keepalive: must be a number of seconds 0..3600"),
    (entry("berlin", KEYS[0], tap="a-very-long-tap-name"),
     "{path}: peers[1].tap: 'a-very-long-tap-name' is not a valid interface name"),
    ('[peers]\nname = "berlin"\n',
     "{path}: [peers]: write [[peers]] (double brackets, one per peer), or [peer]"),
    ("peers = []\n", "{path}: peers: needs at least one [[peers]] entry"),
    ("peers = 3\n", "{path}: peers: must be [[peers]] tables, one per peer"),
    ('[local]\ntap = "bridger-tap0"\n' + entry("berlin", KEYS[0]),
     "{path}: local.tap: not used with [[peers]] in {path}: set peers[N].tap per peer there"),
]


@pytest.mark.parametrize("body, message", PEER_ERRORS)
def test_peers_errors_are_one_line_naming_file_and_key(
    tmp_path: Path, own: tuple[Path, str], etc: Path, body: str, message: str
) -> None:
    key_file, mine = own
    path = write(tmp_path, body.replace("{own}", mine))
    got = error(lambda: build({"lan": "eth1", "key_file": str(key_file)}, path, etc))
    expected = message.format(path=path, key=key_file)
    assert got.startswith(expected), (got, expected)


@pytest.mark.parametrize(
    "given, message",
    [
        ({"tap": "t1"}, "--tap: not used with [[peers]] in {path}: set peers[N].tap per peer"
                        " there"),
        ({"psk_file": "/p"}, "--psk-file: not used with [[peers]] in {path}: set"
                             " peers[N].psk_file per peer there"),
        ({"persistent_keepalive": 5.0},
         "--persistent-keepalive: not used with [[peers]] in {path}: set"
         " peers[N].persistent_keepalive per peer there"),
        ({"peer_public_key": KEYS[2]},
         "--peer-key: not the public_key of any [[peers]] entry in {path}: add the peer there"),
        ({"peer": "rome.example"},
         '--peer rome.example: no public key: add a [[peers]] entry with host = "rome.example"'
         " and public_key to {path}, or give --peer-key"),
    ],
)
def test_peers_command_line_errors(
    tmp_path: Path, own: tuple[Path, str], etc: Path, given: dict[str, Any], message: str
) -> None:
    path = write(tmp_path, entry("berlin", KEYS[0], host="berlin.example")
                 + entry("paris", KEYS[1]))
    cli = {"lan": "eth1", "key_file": str(own[0]), **given}
    assert error(lambda: build(cli, path, etc)) == message.format(path=path)


# --- defaults from /etc/bridger and `--peer HOST` ------------------------------------------

MESH = (
    '[local]\nlan = "eth1"\n'
    + entry("berlin", KEYS[0], host="berlin.example")
    + entry("paris", KEYS[1], host="Paris.Example", port=4000)
    + entry("rome", KEYS[2])
    + entry("oslo", encode_key(public_key(generate_private_key())), host="2001:db8::7")
)


@pytest.fixture
def gateway(etc: Path) -> Path:
    """An etc dir as a gateway has it: bridger.toml with three peers, and private.key."""
    (etc / "bridger.toml").write_text(MESH)
    write_private_key_file(etc / "private.key", generate_private_key())
    return etc


def mission(etc: Path, *argv: str) -> UpConfig:
    args = build_parser().parse_args(["up", *argv])
    return build_up_config(up_values(args), Path(args.config) if args.config else None, etc=etc)


def names(cfg: UpConfig) -> list[tuple[str, str | None, int]]:
    return [(p.name, p.host, p.port) for p in cfg.peers]


ALL = [("berlin", "berlin.example", 55555), ("paris", "Paris.Example", 4000),
       ("rome", None, 55555), ("oslo", "2001:db8::7", 55555)]


@pytest.mark.parametrize(
    "peer, expected",
    [
        ("berlin.example", ALL),  # by host: all configured peers run
        ("BERLIN.example.", ALL),  # DNS names compare case-insensitively
        ("paris.example", ALL),
        ("berlin", ALL),  # by name
        ("rome", ALL),  # by name, a peer that has no host
        ("2001:db8:0::7", ALL),  # addresses compare as addresses
        ("berlin.example:4444", [("berlin", "berlin.example", 4444), *ALL[1:]]),
        ("rome:4444", [*ALL[:2], ("rome", None, 4444), ALL[3]]),
        ("[2001:db8::7]:9", [*ALL[:3], ("oslo", "2001:db8::7", 9)]),
    ],
)
def test_mission_command_with_default_config(
    gateway: Path, peer: str, expected: list[tuple[str, str | None, int]]
) -> None:
    """`bridger up --lan eth1 --peer berlin.example` on a gateway set up by the book."""
    cfg = mission(gateway, "--lan", "eth1", "--peer", peer)
    assert cfg.key_file == gateway / "private.key"
    assert names(cfg) == expected
    assert [p.tap for p in cfg.peers] == ["berlin", "paris", "rome", "oslo"]


def test_etc_dir_comes_from_the_environment(
    gateway: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ETC_ENV, str(gateway))
    assert etc_dir() == gateway
    args = build_parser().parse_args(["up", "--lan", "eth1", "--peer", "berlin.example"])
    assert names(build_up_config(up_values(args), None)) == ALL
    monkeypatch.delenv(ETC_ENV)
    assert etc_dir() == Path("/etc/bridger")


def test_peer_not_configured_says_what_to_add(gateway: Path, etc: Path) -> None:
    message = error(lambda: mission(gateway, "--lan", "eth1", "--peer", "oslo.example"))
    assert message == (
        '--peer oslo.example: no public key: add a [[peers]] entry with host = "oslo.example"'
        f" and public_key to {gateway}/bridger.toml, or give --peer-key"
    )


def test_peer_without_any_config_says_what_to_add(etc: Path) -> None:
    write_private_key_file(etc / "private.key", generate_private_key())
    message = error(lambda: mission(etc, "--lan", "eth1", "--peer", "berlin.example"))
    assert message == (
        '--peer berlin.example: no public key: add a [[peers]] entry with host = "berlin.example"'
        f" and public_key to {etc}/bridger.toml, or give --peer-key"
    )


def test_missing_default_key_says_how_to_make_it(etc: Path) -> None:
    (etc / "bridger.toml").write_text(MESH)
    assert error(lambda: mission(etc, "--peer", "berlin")) == (
        f"--key: required: no {etc}/private.key (make it with `bridger init`), or give --key FILE"
    )


def test_legacy_default_config_and_mission_command(etc: Path) -> None:
    (etc / "bridger.toml").write_text(
        f'[local]\nlan = "eth1"\n[peer]\nhost = "berlin.example"\npublic_key = "{PUB}"\n'
    )
    write_private_key_file(etc / "private.key", generate_private_key())
    cfg = mission(etc, "--lan", "eth1", "--peer", "berlin.example")
    assert names(cfg) == [("berlin", "berlin.example", 55555)]
    assert cfg.peers[0].tap == "bridger-tap0"


def test_explicit_config_replaces_the_default(gateway: Path, tmp_path: Path) -> None:
    (gateway / "bridger.toml").write_text("[broken\n")
    other = write(tmp_path, '[local]\nlan = "eth2"\n' + entry("oslo", KEYS[0]))
    cfg = mission(gateway, "--config", str(other))
    assert (cfg.lan, names(cfg)) == ("eth2", [("oslo", None, 55555)])
    assert error(lambda: mission(gateway, "--lan", "eth1")).startswith(
        f"{gateway}/bridger.toml: not valid TOML"
    )


def test_peer_key_picks_a_configured_peer_and_peer_gives_its_address(gateway: Path) -> None:
    cfg = mission(gateway, "--peer-key", KEYS[2], "--peer", "10.9.9.9:7000")
    assert names(cfg) == [*ALL[:2], ("rome", "10.9.9.9", 7000), ALL[3]]
    cfg = mission(gateway, "--peer-key", KEYS[0], "--peer", "berlin")  # its name: no change
    assert names(cfg) == ALL


def test_peer_host_shared_by_two_entries(etc: Path, own: tuple[Path, str]) -> None:
    path = write(etc, entry("a", KEYS[0], host="nat.example", port=1000)
                 + entry("b", KEYS[1], host="nat.example", port=2000))
    cli = {"lan": "eth1", "key_file": str(own[0])}
    assert names(build({**cli, "peer": "nat.example:2000"}, path, etc))[1] == (
        "b", "nat.example", 2000
    )
    assert error(lambda: build({**cli, "peer": "nat.example"}, path, etc)) == (
        f"--peer nat.example: matches peers[1] and peers[2] in {path}: give the peer's name"
    )


# --- switches on and off -------------------------------------------------------------------

@pytest.mark.parametrize("switch", ["stp", "dashboard", "offload"])
@pytest.mark.parametrize("in_file", [None, True, False])
@pytest.mark.parametrize("argv", [[], ["--{s}"], ["--no-{s}"], ["--{s}", "--no-{s}"],
                                  ["--no-{s}", "--{s}"]])
def test_command_line_switches_win_over_the_file(
    gateway: Path, switch: str, in_file: bool | None, argv: list[str]
) -> None:
    defaults = {"stp": False, "dashboard": True, "offload": True}
    text = MESH.replace('lan = "eth1"\n', f'lan = "eth1"\n{switch} = {str(in_file).lower()}\n')
    (gateway / "bridger.toml").write_text(MESH if in_file is None else text)
    flags = [a.format(s=switch) for a in argv]
    expected = defaults[switch] if in_file is None else in_file
    if flags:
        expected = not flags[-1].startswith("--no-")  # the last one given wins
    assert getattr(mission(gateway, *flags), switch) is expected


@pytest.mark.parametrize("value", [":9555", "127.0.0.1:9555", "[::1]:9555", "[::]:9555",
                                   "localhost:1"])
def test_metrics_addresses(gateway: Path, value: str) -> None:
    assert mission(gateway, "--metrics", value).metrics == value


@pytest.mark.parametrize("value, message", [
    ("9555", "--metrics: must be HOST:PORT, e.g. 127.0.0.1:9555 (or :9555 for all)"),
    (":70000", "--metrics: must be 1..65535"),
    ("bad host!:1", "--metrics: 'bad host!' is not a valid host name or address"),
])
def test_metrics_errors(gateway: Path, value: str, message: str) -> None:
    assert error(lambda: mission(gateway, "--metrics", value)) == message


def test_mode_from_command_line(gateway: Path) -> None:
    assert mission(gateway).mode == "mesh"
    assert mission(gateway, "--mode", "hub").mode == "hub"
    (gateway / "bridger.toml").write_text(MESH.replace('lan = "eth1"\n',
                                                       'lan = "eth1"\nmode = "hub"\n'))
    assert mission(gateway).mode == "hub"
    assert mission(gateway, "--mode", "mesh").mode == "mesh"


# --- where `down` and `status` look -------------------------------------------------------

def test_state_dir_for_down_and_status(etc: Path, tmp_path: Path) -> None:
    assert state_dir_for(None, None, None, etc=etc) == Path("/run/bridger/bridger0")
    (etc / "bridger.toml").write_text('[local]\nbridge = "br-lan"\n')
    assert state_dir_for(None, None, None, etc=etc) == Path("/run/bridger/br-lan")
    assert state_dir_for(None, "br-x", None, etc=etc) == Path("/run/bridger/br-x")
    assert state_dir_for("/s", "br-x", None, etc=etc) == Path("/s")
    other = write(tmp_path, '[local]\nstate_dir = "state"\n')
    assert state_dir_for(None, None, other, etc=etc) == tmp_path / "state"


# --- through the real command line ---------------------------------------------------------

def test_up_config_error_via_cli_is_one_line_exit_2(tmp_path: Path, etc: Path) -> None:
    path = write(tmp_path, "[peer]\nport = 0\n")
    out = subprocess.run(
        [sys.executable, "-m", "bridger", "up", "--config", str(path), "--lan", "eth1",
         "--key", "/k", "--peer-key", PUB],
        capture_output=True, text=True, timeout=30, env={**os.environ, ETC_ENV: str(etc)},
    )
    assert out.returncode == 2
    assert out.stderr.strip() == f"bridger: {path}: peer.port: must be 1..65535"


def test_mission_command_without_config_is_one_line_exit_2(etc: Path) -> None:
    write_private_key_file(etc / "private.key", generate_private_key())
    out = subprocess.run(
        [sys.executable, "-m", "bridger", "up", "--lan", "eth1", "--peer", "berlin.example"],
        capture_output=True, text=True, timeout=30, env={**os.environ, ETC_ENV: str(etc)},
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        'bridger: --peer berlin.example: no public key: add a [[peers]] entry with'
        f' host = "berlin.example" and public_key to {etc}/bridger.toml, or give --peer-key'
    )


# --- the shipped examples ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["london.toml", "berlin.toml"])
def test_example_configs_are_valid(own: tuple[Path, str], etc: Path, name: str) -> None:
    cfg = build({"key_file": str(own[0])}, REPO / "configs" / name, etc)
    assert cfg.lan == "eth1"
    assert cfg.peers[0].host in ("berlin.example", "london.example")
    assert len(cfg.peers[0].public_key) == 32


def test_example_configs_are_two_ends_of_one_link(own: tuple[Path, str], etc: Path) -> None:
    london = build({"key_file": str(own[0])}, REPO / "configs" / "london.toml", etc)
    berlin = build({"key_file": str(own[0])}, REPO / "configs" / "berlin.toml", etc)
    assert london.peers[0].port == berlin.listen and berlin.peers[0].port == london.listen
    assert london.peers[0].public_key != berlin.peers[0].public_key
    assert (london.peers[0].name, berlin.peers[0].name) == ("berlin", "london")


SITES = ("london", "berlin", "paris")


def test_mesh_examples_are_three_consistent_sites(own: tuple[Path, str], etc: Path) -> None:
    configs = {site: build({"key_file": str(own[0])}, REPO / "configs" / f"mesh-{site}.toml",
                           etc) for site in SITES}
    key_of: dict[str, bytes] = {}
    for site, cfg in configs.items():
        assert cfg.mode == "mesh"
        assert sorted(p.name for p in cfg.peers) == sorted(set(SITES) - {site})
        for peer in cfg.peers:
            # Every file gives a site the same key, and a port the site listens on.
            assert key_of.setdefault(peer.name, peer.public_key) == peer.public_key
            assert peer.port == configs[peer.name].listen
            assert peer.tap == peer.name
            assert peer.host in (None, f"{peer.name}.example")
    assert len(set(key_of.values())) == 3
    # Someone dials each pair: a site without a host in one file has one in the other.
    for a in SITES:
        for b in SITES:
            if a < b:
                a_to_b = next(p for p in configs[a].peers if p.name == b)
                b_to_a = next(p for p in configs[b].peers if p.name == a)
                assert a_to_b.host or b_to_a.host


# --- key files -----------------------------------------------------------------------------

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


def test_offload_option_from_file_and_command_line(
    tmp_path: Path, own: tuple[Path, str], etc: Path
) -> None:
    cli = {"lan": "eth1", "key_file": str(own[0]), "peer_public_key": PUB}
    assert build(cli, None, etc).offload is True
    path = write(tmp_path, "[local]\noffload = false\n")
    assert build(cli, path, etc).offload is False
    assert build({**cli, "offload": False}, None, etc).offload is False
    assert build({**cli, "offload": True}, path, etc).offload is True
    path = write(tmp_path, "[local]\noffload = 1\n")
    assert error(lambda: build(cli, path, etc)) == (
        f"{path}: local.offload: must be true or false"
    )


@pytest.mark.parametrize(
    ("toml", "cli", "message"),
    [
        ('dhcp = "off"', {}, 'local.dhcp: must be "shared" or "local"'),
        ('ra = 1', {}, 'local.ra: must be "shared" or "local"'),
        ("vlans = [10, 5000]", {}, "local.vlans: must be a list of VLAN ids 1..4094"),
        ('vlans = "10"', {}, "local.vlans: must be a list of VLAN ids"),
        ("vlans = []\nuntagged = false", {}, "local.vlans: empty with untagged = false"),
        ("flood_rate = -1", {}, "local.flood_rate: must be frames per second"),
        ("flood_burst = 1.5", {}, "local.flood_burst: must be frames per second"),
        ("loop_protection = 1", {}, "local.loop_protection: must be true or false"),
        ("", {"vlans": "10,x"}, "--vlans: must be VLAN ids 1..4094"),
        ("", {"dhcp": "maybe"}, '--dhcp: must be "shared" or "local"'),
    ],
)
def test_guard_settings_errors_name_their_key(
    own: tuple[Path, str], etc: Path, tmp_path: Path, toml: str, cli: dict[str, str],
    message: str,
) -> None:
    path = tmp_path / "g.toml"
    path.write_text(f'[local]\nlan = "eth1"\n{toml}\n\n[peer]\npublic_key = "{PUB}"\n')
    with pytest.raises(ConfigError) as exc:
        build({"key_file": str(own[0]), **cli}, path, etc)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_guard_settings_from_file_and_command_line(
    own: tuple[Path, str], etc: Path, tmp_path: Path,
) -> None:
    path = tmp_path / "g.toml"
    path.write_text(f'[local]\nlan = "eth1"\ndhcp = "local"\nvlans = [20, 10]\n'
                    f'flood_rate = 500\n\n[peer]\npublic_key = "{PUB}"\n')
    cfg = build({"key_file": str(own[0])}, path, etc)
    assert (cfg.guard.dhcp, cfg.guard.ra, cfg.guard.vlans, cfg.guard.flood_rate) == (
        "local", "shared", (10, 20), 500)
    assert cfg.guard.loop_protection and cfg.guard.untagged
    cli = build({"key_file": str(own[0]), "dhcp": "shared", "vlans": "30", "flood_rate": 0,
                 "loop_protection": False}, path, etc)
    assert (cli.guard.dhcp, cli.guard.vlans, cli.guard.flood_rate,
            cli.guard.loop_protection) == ("shared", (30,), 0, False)
    assert build({"key_file": str(own[0]), "peer_public_key": PUB, "lan": "eth1"},
                 None, etc).guard == GuardConfig()


def test_data_path_option_from_file_and_command_line(
    tmp_path: Path, own: tuple[Path, str], etc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = {"lan": "eth1", "key_file": str(own[0]), "peer_public_key": PUB}
    assert build(cli, None, etc).data_path == "auto"
    path = write(tmp_path, '[local]\ndata_path = "python"\n')
    assert build(cli, path, etc).data_path == "python"
    assert build({**cli, "data_path": "auto"}, path, etc).data_path == "auto"
    path = write(tmp_path, '[local]\ndata_path = "fast"\n')
    assert error(lambda: build(cli, path, etc)) == (
        f'{path}: local.data_path: must be "auto", "native" or "python"'
    )
    from bridger import native

    monkeypatch.setattr(native, "lane", None)
    monkeypatch.setattr(native, "unavailable", "not built (test)")
    message = error(lambda: build({**cli, "data_path": "native"}, None, etc))
    assert message.startswith("--data-path: the native data path is not built here")
    assert "not built (test)" in message
    assert build({**cli, "data_path": "auto"}, None, etc).data_path == "auto"
