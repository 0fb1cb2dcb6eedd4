"""`bridger init`: a new key (mode 0600, never overwritten) and a config skeleton beside it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bridger.config import ETC_ENV, build_up_config, config_skeleton
from bridger.errors import ConfigError
from bridger.keys import encode_key, generate_private_key, public_key

BRIDGER = [sys.executable, "-m", "bridger"]


def run(*args: str, stdin: str = "", etc: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if etc is not None:
        env[ETC_ENV] = str(etc)
    return subprocess.run([*BRIDGER, *args], input=stdin, capture_output=True, text=True,
                          timeout=30, env=env)


def printed_public_key(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("public key:")]
    assert len(lines) == 1, stdout
    return lines[0].split(":", 1)[1].strip()


def test_init_writes_a_0600_key_whose_public_key_it_prints(tmp_path: Path) -> None:
    directory = tmp_path / "etc" / "bridger"  # created, parents too
    out = run("init", "--dir", str(directory))
    assert out.returncode == 0, out.stderr
    key = directory / "private.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pub = printed_public_key(out.stdout)
    expected = run("pubkey", stdin=key.read_text())
    assert expected.returncode == 0
    assert pub == expected.stdout.strip()
    # The skeleton is printed and written, and quotes the same public key.
    config = (directory / "bridger.toml").read_text()
    assert config in out.stdout
    assert config == config_skeleton(pub)
    assert f"#   {pub}\n" in config


def test_init_never_overwrites_a_key(tmp_path: Path) -> None:
    assert run("init", "--dir", str(tmp_path)).returncode == 0
    key = (tmp_path / "private.key").read_bytes()
    (tmp_path / "bridger.toml").write_text("# mine\n")
    out = run("init", "--dir", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr == (
        f"bridger: {tmp_path}/private.key: exists; a key is never overwritten"
        " (remove it first for a new identity)\n"
    )
    assert out.stdout == ""
    assert (tmp_path / "private.key").read_bytes() == key
    assert (tmp_path / "bridger.toml").read_text() == "# mine\n"


def test_init_keeps_an_existing_config(tmp_path: Path) -> None:
    (tmp_path / "bridger.toml").write_text("# mine\n")
    out = run("init", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bridger.toml").read_text() == "# mine\n"
    assert "exists, left unchanged" in out.stdout
    assert "[[peers]]" in out.stdout  # the skeleton is still shown
    assert stat.S_IMODE((tmp_path / "private.key").stat().st_mode) == 0o600


def test_init_defaults_to_the_etc_dir(tmp_path: Path) -> None:
    out = run("init", etc=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "private.key").exists() and (tmp_path / "bridger.toml").exists()


def test_init_into_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = run("init", "--dir", str(blocker / "sub"))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"bridger: {blocker}/sub: cannot create directory:")


def test_skeleton_is_a_config_waiting_only_for_the_peer_key(tmp_path: Path) -> None:
    assert run("init", "--dir", str(tmp_path)).returncode == 0
    path = tmp_path / "bridger.toml"
    with pytest.raises(ConfigError) as info:
        build_up_config({}, None, etc=tmp_path)  # the default config of that etc dir
    assert str(info.value).startswith(f"{path}: peers[1].public_key: not valid base64")
    peer = encode_key(public_key(generate_private_key()))
    path.write_text(path.read_text().replace("PASTE-THE-PEER-PUBLIC-KEY", peer))
    cfg = build_up_config({}, None, etc=tmp_path)
    assert cfg.key_file == tmp_path / "private.key"
    assert cfg.lan == "eth1" and cfg.mode == "mesh"
    assert [(p.name, p.host, p.tap) for p in cfg.peers] == [
        ("berlin", "berlin.example", "berlin")
    ]
