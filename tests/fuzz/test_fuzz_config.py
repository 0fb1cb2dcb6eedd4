"""Fuzz targets for what a user (or a local client) hands bridger: config files,
command-line values, key files, and the control socket in both directions.

Invariant everywhere: a valid result or one ``BridgerError`` whose message is a
single line; never another exception (which the CLI would show as a traceback).
"""

from __future__ import annotations

import json
import os
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

from bridger.config import SETTINGS, UpConfig, build_up_config, read_toml, split_host_port
from bridger.errors import BridgerError, ConfigError, KeyFileError
from bridger.keys import KEY_LEN, decode_key, encode_key, read_private_key_file
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


SCALARS = st.one_of(
    TEXT, st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans(),
    st.sampled_from(["eth1", "bridger0", "10.0.0.1", "[::1]:5", "a" * 16, PUB, "/dev/null",
                     "127.0.0.1:9555", "berlin.example", "", " ", "..", "fe80::1%eth0"]),
)
VALUES = SCALARS | st.lists(SCALARS, max_size=3)
KEYS = [(section, key) for section, key, _opt, _fld in SETTINGS]


def _document(draw: st.DrawFn) -> str:
    chosen = draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=len(KEYS)))
    extra = draw(st.lists(st.tuples(st.sampled_from(["local", "peer", "other"]),
                                    st.text(string.ascii_lowercase, min_size=1, max_size=8)),
                          max_size=2))
    sections: dict[str, list[str]] = {}
    for section, key in chosen + extra:
        sections.setdefault(section, []).append(f"{key} = {_toml_value(draw(VALUES))}")
    return "".join(f"[{s}]\n" + "\n".join(dict.fromkeys(lines)) + "\n"
                   for s, lines in sections.items())


documents = st.composite(_document)


def _load(text: str | bytes, cli: dict[str, Any]) -> UpConfig | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        try:
            return build_up_config(cli, path)
        except ConfigError as exc:
            _one_line(exc)
            return None


@fuzz()
@given(documents(), st.booleans())
def test_structured_config_files_give_a_config_or_one_line(doc: str, with_cli: bool) -> None:
    cli = {"lan": "eth1", "key_file": "/k", "peer_public_key": PUB} if with_cli else {}
    cfg = _load(doc, cli)
    if cfg is not None:
        assert 1 <= cfg.listen <= 65535 and 1 <= cfg.peer_port <= 65535
        assert len(cfg.peer_public_key) == KEY_LEN
        assert len({cfg.lan, cfg.bridge, cfg.tap}) == 3


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
           "--state-dir", "--psk-file", "--persistent-keepalive", "--wan-mtu", "--metrics"]


@fuzz()
@given(st.lists(st.tuples(st.sampled_from(OPTIONS), SCALARS.map(str)), max_size=10),
       st.booleans())
def test_command_line_values_give_a_config_or_one_line(
    pairs: list[tuple[str, str]], flags: bool
) -> None:
    """Through the real argument parser, then the same mapping `bridger up` uses."""
    from bridger.cli import build_parser

    argv = ["up"] + [f"{opt}={value}" for opt, value in pairs]
    if flags:
        argv += ["--stp", "--no-dashboard"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: usage and one error line, exit 2
        assert exc.code == 2
        return
    cli = {
        "lan": args.lan, "peer": args.peer, "key_file": args.key, "peer_public_key": args.peer_key,
        "listen": args.listen, "bridge": args.bridge, "tap": args.tap,
        "state_dir": args.state_dir, "psk_file": args.psk_file,
        "persistent_keepalive": args.persistent_keepalive, "wan_mtu": args.wan_mtu,
        "stp": args.stp, "dashboard": False if args.no_dashboard else None,
        "metrics": args.metrics,
    }
    try:
        build_up_config(cli, None)
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
