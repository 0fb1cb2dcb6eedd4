"""X25519 keys as users handle them: one line of standard base64 (32 bytes).

Private keys live in files that only their owner may read, as ssh insists for
its identity files; a key file readable by group or others is refused.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from nacl.bindings import crypto_scalarmult_base
from nacl.utils import random as random_bytes

from bridger.errors import ConfigError, KeyFileError

KEY_LEN = 32


def generate_private_key() -> bytes:
    """A fresh X25519 private key (clamping happens inside scalar multiplication)."""
    return random_bytes(KEY_LEN)


def public_key(private: bytes) -> bytes:
    """The X25519 public key of ``private``."""
    return crypto_scalarmult_base(private)


def encode_key(key: bytes) -> str:
    """Standard base64, the one-line form that `genkey`/`pubkey` print."""
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str, where: str) -> bytes:
    """Parse one base64 key; ``where`` names its origin in the error message."""
    stripped = text.strip()
    if not stripped:
        raise ConfigError(f"{where}: empty, expected a base64 X25519 key (44 characters)")
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"{where}: not valid base64, expected a 32-byte X25519 key (44 characters)"
        ) from None
    if len(raw) != KEY_LEN:
        raise ConfigError(f"{where}: decodes to {len(raw)} bytes, an X25519 key is {KEY_LEN}")
    return raw


def read_private_key_file(path: Path) -> bytes:
    """Load a private key file, refusing one that group or others can read."""
    # The mode is checked on the opened file (no stat/open race) and before its
    # contents are looked at, so a too-open file is refused whatever it holds.
    try:
        with path.open("rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o077:
                raise KeyFileError(
                    f"{path}: permissions {mode:04o} are too open: a private key must not be"
                    f" readable by group or others (run: chmod 600 {path})"
                )
            raw = f.read(4096)
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: no such key file (make one with `bridger init` or `bridger genkey`)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a key file (expected one line of base64)") from None
    return decode_key(text, str(path))


def write_private_key_file(path: Path, key: bytes) -> None:
    """Create ``path`` with mode 0600 holding ``key``; used by the lab and tests."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(encode_key(key) + "\n")


def create_private_key_file(path: Path, key: bytes) -> None:
    """Create ``path`` (mode 0600) holding ``key``; an existing file is never overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"{path}: exists; a key is never overwritten (remove it first for a new identity)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create key file: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "w", encoding="ascii") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(encode_key(key) + "\n")
        f.flush()
        os.fsync(f.fileno())
