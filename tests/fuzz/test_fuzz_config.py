"""Fuzz targets for what a user (or a local client) hands bridger: config files,
command-line values, key files, and the control socket in both directions.

Invariant everywhere: a valid result or one ``BridgerError`` whose message is a
single line; never another exception (which the CLI would show as a traceback).
"""

from __future__ import annotations

import json
import os
import re
import socket
import string
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from bridger.config import (
    MODES,
    PEER_NAME_RE,
    PEERS_KEYS,
    SETTINGS,
    UpConfig,
    build_up_config,
    read_toml,
    split_host_port,
)
from bridger.errors import BridgerError, ConfigError, KeyFileError
from bridger.keys import (
    KEY_LEN,
    decode_key,
    encode_key,
    public_key,
    read_private_key_file,
    write_private_key_file,
)
from bridger.status.control import query_status, serve_control
from tests.fuzz.budget import fuzz

PUB = encode_key(bytes(range(32)))
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)


def _one_line(exc: BridgerError) -> None:
    assert "\n" not in str(exc) and str(exc), repr(exc)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = repr(value)
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(text, text)
    if isinstance(value, str):
        return json.dumps(value)  # JSON strings without surrogates are TOML basic strings
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise AssertionError(type(value))


OWN_PRIVATE = bytes(range(100, 132))
OWN = encode_key(public_key(OWN_PRIVATE))
OTHER = encode_key(bytes(range(1, 33)))
SCALARS = st.one_of(
    TEXT, st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans(),
    st.sampled_from(["eth1", "bridger0", "10.0.0.1", "[::1]:5", "a" * 16, PUB, OTHER, OWN,
                     "/dev/null", "127.0.0.1:9555", ":9555", "berlin.example", "", " ", "..",
                     "fe80::1%eth0", "mesh", "hub", "berlin", "paris", "bridger-tap0",
                     "Berlin", "-x", "a" * 15]),
)
VALUES = SCALARS | st.lists(SCALARS, max_size=3)
KEYS = [(section, key) for section, key, _opt, _fld in SETTINGS]
# Values that make a [[peers]] entry valid more often than random scalars would.
PEER_VALUES = {
    "name": st.sampled_from(["berlin", "paris", "eth1", "bridger0", "x", "Berlin", "a" * 16]),
    "public_key": st.sampled_from([PUB, OTHER, OWN, "abc"]),
    "tap": st.sampled_from(["berlin", "paris", "t0", "eth1", "bridger0"]),
}


def _document(draw: st.DrawFn) -> str:
    chosen = draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=len(KEYS)))
    extra = draw(st.lists(st.tuples(st.sampled_from(["local", "peer", "other"]),
                                    st.text(string.ascii_lowercase, min_size=1, max_size=8)),
                          max_size=2))
    sections: dict[str, list[str]] = {}
    for section, key in chosen + extra:
        sections.setdefault(section, []).append(f"{key} = {_toml_value(draw(VALUES))}")
    text = "".join(f"[{s}]\n" + "\n".join(dict.fromkeys(lines)) + "\n"
                   for s, lines in sections.items())
    for _ in range(draw(st.integers(0, 3))):
        keys = draw(st.lists(st.sampled_from([*PEERS_KEYS, "hots"]), unique=True))
        lines = []
        for key in keys:
            value = draw(PEER_VALUES[key] | VALUES if key in PEER_VALUES else VALUES)
            lines.append(f"{key} = {_toml_value(value)}")
        text += "[[peers]]\n" + "".join(line + "\n" for line in lines)
    return text


documents = st.composite(_document)


def _load(text: str | bytes, cli: dict[str, Any]) -> UpConfig | None:
    """Load ``text`` as a config file, with our key as the default key of an empty etc dir."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        write_private_key_file(Path(tmp) / "private.key", OWN_PRIVATE)
        try:
            return build_up_config(cli, path, etc=Path(tmp))
        except ConfigError as exc:
            _one_line(exc)
            return None


def _check_invariants(cfg: UpConfig) -> None:
    """What every valid config promises the daemon."""
    assert cfg.peers and cfg.mode in MODES
    assert 1 <= cfg.listen <= 65535
    assert cfg.lan != cfg.bridge
    names, keys, taps = set(), set(), set()
    for peer in cfg.peers:
        assert re.match(PEER_NAME_RE, peer.name) and len(peer.name) <= 15
        assert 1 <= peer.port <= 65535
        assert len(peer.public_key) == KEY_LEN and peer.public_key != public_key(OWN_PRIVATE)
        assert peer.tap not in (cfg.lan, cfg.bridge)
        names.add(peer.name)
        keys.add(peer.public_key)
        taps.add(peer.tap)
    assert len(names) == len(keys) == len(taps) == len(cfg.peers)


@fuzz()
@given(documents(), st.booleans())
def test_structured_config_files_give_a_config_or_one_line(doc: str, with_cli: bool) -> None:
    cli = {"lan": "eth1", "peer_public_key": PUB} if with_cli else {}
    cfg = _load(doc, cli)
    if cfg is not None:
        _check_invariants(cfg)


@fuzz()
@given(st.integers(1, 4), st.data())
def test_peers_arrays_give_a_config_or_one_line(count: int, data: st.DataObject) -> None:
    """Mostly-valid [[peers]] arrays, so the checks across peers run (not just the first)."""
    text = '[local]\nlan = "eth1"\n'
    for number in range(count):
        name = data.draw(PEER_VALUES["name"] | st.just(f"p{number}"))
        key = data.draw(PEER_VALUES["public_key"]
                        | st.just(encode_key(bytes([number + 40]) * 32)))
        text += f'[[peers]]\nname = "{name}"\npublic_key = "{key}"\n'
        if data.draw(st.booleans()):
            text += f'tap = "{data.draw(PEER_VALUES["tap"])}"\n'
    cli = data.draw(st.sampled_from([{}, {"peer": "berlin"}, {"peer": "nowhere.example:9"},
                                     {"peer_public_key": PUB}, {"tap": "t9"}]))
    cfg = _load(text, cli)
    if cfg is not None:
        _check_invariants(cfg)


@fuzz()
@given(st.binary(max_size=600) | TEXT.map(str.encode))
def test_arbitrary_config_bytes_give_a_config_or_one_line(raw: bytes) -> None:
    _load(raw, {})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_bytes(raw)
        try:
            read_toml(path)
        except ConfigError as exc:
            _one_line(exc)


OPTIONS = ["--lan", "--peer", "--key", "--peer-key", "--listen", "--bridge", "--tap",
           "--state-dir", "--psk-file", "--persistent-keepalive", "--wan-mtu", "--metrics",
           "--mode"]
FLAGS = ["--stp", "--no-stp", "--dashboard", "--no-dashboard", "--offload", "--no-offload"]


@fuzz()
@given(st.lists(st.tuples(st.sampled_from(OPTIONS), SCALARS.map(str)), max_size=10),
       st.lists(st.sampled_from(FLAGS), max_size=4))
def test_command_line_values_give_a_config_or_one_line(
    pairs: list[tuple[str, str]], flags: list[str]
) -> None:
    """Through the real argument parser, then the same mapping `bridger up` uses."""
    from bridger.cli import build_parser, up_values

    argv = ["up"] + [f"{opt}={value}" for opt, value in pairs] + flags
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: usage and one error line, exit 2
        assert exc.code == 2
        return
    with tempfile.TemporaryDirectory() as tmp:  # an empty etc dir: no default config or key
        try:
            build_up_config(up_values(args), None, etc=Path(tmp))
        except ConfigError as exc:
            _one_line(exc)


@fuzz()
@given(TEXT | st.sampled_from([PUB, PUB + "\n", " " + PUB, PUB[:-1], PUB + "=", PUB.lower()]))
def test_decode_key_gives_32_bytes_or_one_line(text: str) -> None:
    try:
        assert len(decode_key(text, "--peer-key")) == KEY_LEN
    except ConfigError as exc:
        _one_line(exc)


@fuzz()
@given(TEXT)
def test_split_host_port_fails_only_with_valueerror(text: str) -> None:
    try:
        host, port = split_host_port(text)
    except ValueError:
        return
    assert host and (port is None or port >= 0)


@fuzz()
@given(st.binary(max_size=100) | st.sampled_from([PUB.encode(), (PUB + "\n").encode()]),
       st.integers(0, 0o777))
def test_key_files_load_or_fail_in_one_line_and_loose_modes_never_load(
    content: bytes, mode: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k"
        path.write_bytes(content)
        os.chmod(path, mode)
        try:
            key = read_private_key_file(path)
        except ConfigError as exc:  # KeyFileError is a ConfigError
            _one_line(exc)
            if mode & 0o077:
                assert isinstance(exc, KeyFileError) and "too open" in str(exc)
            return
        assert len(key) == KEY_LEN and not mode & 0o077


# --- the control socket, both ends --------------------------------------------------------

def _fake_daemon(path: Path, reply: bytes) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            conn.recv(256)
            conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@fuzz(0.5)
@given(st.binary(max_size=300) | st.builds(lambda d: json.dumps(d).encode() + b"\n",
                                           st.dictionaries(TEXT, TEXT | st.integers(),
                                                           max_size=3)))
def test_status_client_survives_any_reply(reply: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "control.sock"
        thread = _fake_daemon(path, reply)
        try:
            doc = query_status(path, timeout=0.5)
        except BridgerError as exc:
            _one_line(exc)
        else:
            assert isinstance(doc, dict) and "error" not in doc
        thread.join(2)


@fuzz(0.25)
@given(st.lists(st.binary(max_size=600) | st.sampled_from([b"status\n", b"status", b"\n"]),
                min_size=1, max_size=5))
def test_control_socket_answers_any_request_with_one_json_line(requests: list[bytes]) -> None:
    snapshot = {"version": 1, "link": {"state": "up"}}

    async def main(path: Path) -> list[bytes]:
        answers = []
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, path, lambda: snapshot)
            for request in requests:
                sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                with sock:
                    await sock.connect(str(path))
                    await sock.send(request)
                    sock.shutdown(socket.SHUT_WR)
                    data = b""
                    with trio.fail_after(5):
                        while chunk := await sock.recv(65536):
                            data += chunk
                answers.append(data)
            nursery.cancel_scope.cancel()
        return answers

    with tempfile.TemporaryDirectory() as tmp:
        answers = trio.run(main, Path(tmp) / "control.sock")
    for request, data in zip(requests, answers, strict=True):
        assert data.endswith(b"\n") and data.count(b"\n") == 1
        doc = json.loads(data)
        if request.split(b"\n", 1)[0].strip() == b"status":
            assert doc == snapshot
        else:
            assert "error" in doc


@pytest.mark.parametrize("bad", ["[local]\nlan = 1e400\n", "[peer]\nport = 99999999999999999999\n",
                                 "[local]\nlisten = 0x10000\n", "\ufeff[local]\n"])
def test_config_edge_cases_are_one_line_errors(bad: str) -> None:
    assert _load(bad, {}) is None


def test_regression_non_utf8_config_file_is_a_one_line_error() -> None:
    """Found by the fuzzer: tomllib raised UnicodeDecodeError (a traceback) on b"\\x80"."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_bytes(b"[local]\nlan = \"\x80\"\n")
        with pytest.raises(ConfigError, match="not UTF-8"):
            read_toml(path)


def test_regression_too_open_key_file_is_refused_before_its_contents_are_read() -> None:
    """Found by the fuzzer: a group-readable file of non-ASCII bytes was reported as
    undecodable instead of too open (the mode is now checked first, on the open fd)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k"
        path.write_bytes(b"\x80")
        os.chmod(path, 0o640)
        with pytest.raises(KeyFileError, match="too open"):
            read_private_key_file(path)
        os.chmod(path, 0o600)
        with pytest.raises(KeyFileError, match="not a key file"):
            read_private_key_file(path)
