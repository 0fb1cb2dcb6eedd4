"""The CLI contract for keys: `genkey`, `pubkey`, and clear errors on garbage."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from nacl.public import PrivateKey

BRIDGER = [sys.executable, "-m", "bridger"]


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BRIDGER, *args], input=stdin, capture_output=True, text=True, timeout=30
    )


def test_genkey_prints_one_line_of_base64_32_bytes() -> None:
    out = run("genkey")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1
    assert len(base64.b64decode(lines[0], validate=True)) == 32


def test_genkey_is_random() -> None:
    assert run("genkey").stdout != run("genkey").stdout


def test_pubkey_matches_libsodium() -> None:
    private = run("genkey").stdout
    out = run("pubkey", stdin=private)
    assert out.returncode == 0, out.stderr
    expected = bytes(PrivateKey(base64.b64decode(private)).public_key)
    assert base64.b64decode(out.stdout.strip()) == expected


def test_pubkey_known_vector() -> None:
    # RFC 7748 section 6.1: Alice's private and public key.
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    alice_pub = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    out = run("pubkey", stdin=base64.b64encode(alice).decode() + "\n")
    assert base64.b64decode(out.stdout.strip()) == alice_pub


@pytest.mark.parametrize(
    "garbage, message",
    [
        ("", "empty"),
        ("not base64 !!!\n", "not valid base64"),
        (base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
        (base64.b64encode(bytes(33)).decode(), "decodes to 33 bytes"),
    ],
)
def test_pubkey_garbage_is_a_clear_error(garbage: str, message: str) -> None:
    out = run("pubkey", stdin=garbage)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def test_unknown_command_is_usage_error() -> None:
    out = run("frobnicate")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_python_dash_m_and_version() -> None:
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("bridger ")
