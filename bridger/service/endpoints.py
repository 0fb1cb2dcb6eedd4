"""Each peer's last authenticated endpoint, remembered across restarts.

A restarted side that only listens (no ``host`` for a peer) would otherwise
wait for the other side's timers (keepalive or rekey, ~15 s or more) before
traffic flows again. With the peer's last authenticated address remembered in
the state directory, it initiates at start and carries traffic again within a
round trip or two.

The file is ``STATE_DIR/endpoints.json``, mode 0600, written like the host
journal (tmp file + fsync + rename + fsync of the directory)::

    {"version": 1, "endpoints": {"<public key, base64>": ["192.0.2.7", 55555], ...}}

Reading never fails: a missing, unreadable, oversized or malformed file, or a
malformed entry, is simply not remembered (one warning for a damaged file).
Only IP literals are kept (a remembered endpoint is an address packets came
from, never a name), and at most :data:`MAX_ENTRIES` of them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import trio

from bridger.keys import encode_key

log = logging.getLogger("bridger")

ENDPOINTS_NAME = "endpoints.json"
ENDPOINTS_VERSION = 1
#: Most peers remembered; a file with more keeps the first ones.
MAX_ENTRIES = 1024
#: Largest file read; a larger one is ignored as damaged.
MAX_FILE_BYTES = 256 * 1024
#: Seconds between writes while endpoints keep changing (roaming, NAT rebinding).
SAVE_INTERVAL = 10.0
#: Seconds between looks at the peers' endpoints (:func:`remember_task`).
LOOK_INTERVAL = 1.0

Endpoint = tuple[str, int]


def _valid_key(text: object) -> bool:
    if not isinstance(text, str) or len(text) != 44:
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _valid_endpoint(value: object) -> Endpoint | None:
    if not isinstance(value, list) or len(value) != 2:
        return None
    host, port = value
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        return None
    if not 1 <= port <= 65535:
        return None
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    return host, port


def load(state_dir: Path) -> dict[str, Endpoint]:
    """The remembered endpoints by base64 public key; empty if there is nothing usable."""
    path = state_dir / ENDPOINTS_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("remembered endpoints %s not used: %s", path, exc.strerror or exc)
        return {}
    try:
        raw = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as exc:
        log.warning("remembered endpoints %s not used: %s", path, exc.strerror or exc)
        return {}
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        log.warning("remembered endpoints %s not used: larger than %d bytes", path, MAX_FILE_BYTES)
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        log.warning("remembered endpoints %s not used: not valid JSON", path)
        return {}
    if (not isinstance(data, dict) or data.get("version") != ENDPOINTS_VERSION
            or not isinstance(data.get("endpoints"), dict)):
        log.warning("remembered endpoints %s not used: unknown format", path)
        return {}
    out: dict[str, Endpoint] = {}
    for key, value in data["endpoints"].items():
        endpoint = _valid_endpoint(value)
        if endpoint is not None and _valid_key(key):
            out[key] = endpoint
            if len(out) >= MAX_ENTRIES:
                break
    return out


def save(state_dir: Path, mapping: Mapping[str, Endpoint]) -> bool:
    """Write ``mapping`` atomically (at most :data:`MAX_ENTRIES`); False (logged) on failure."""
    path = state_dir / ENDPOINTS_NAME
    tmp = state_dir / (ENDPOINTS_NAME + ".tmp")
    entries = dict(list(mapping.items())[:MAX_ENTRIES])
    data = {"version": ENDPOINTS_VERSION,
            "endpoints": {key: [host, port] for key, (host, port) in entries.items()}}
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.fchmod(fd, 0o600)  # an older tmp file may have had another mode
            os.write(fd, json.dumps(data, indent=1).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot remember endpoints in %s: %s", path, exc.strerror or exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    with contextlib.suppress(OSError):
        dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return True


class EndpointBook:
    """The daemon's remembered endpoints: load once, note changes, write at most every
    ``interval`` seconds and once more at stop.

    ``keep``: the public keys of the configured peers; others are dropped at load
    (and by :meth:`retain` after a reload), so the file never grows with old peers.
    """

    def __init__(
        self, state_dir: Path, keep: Iterable[bytes] | None = None,
        interval: float = SAVE_INTERVAL,
    ) -> None:
        self.state_dir = state_dir
        self.interval = interval
        self.endpoints = load(state_dir)
        self.dirty = False
        self._saved_at: float | None = None
        if keep is not None:
            self.retain(keep)

    def get(self, public_key: bytes) -> Endpoint | None:
        return self.endpoints.get(encode_key(public_key))

    def note(self, public_key: bytes, endpoint: Endpoint) -> bool:
        """Remember an authenticated endpoint; True if that is news."""
        key = encode_key(public_key)
        if self.endpoints.get(key) == endpoint:
            return False
        self.endpoints.pop(key, None)  # most recent last
        self.endpoints[key] = endpoint
        while len(self.endpoints) > MAX_ENTRIES:
            del self.endpoints[next(iter(self.endpoints))]
        self.dirty = True
        return True

    def forget(self, public_key: bytes) -> None:
        if self.endpoints.pop(encode_key(public_key), None) is not None:
            self.dirty = True

    def retain(self, public_keys: Iterable[bytes]) -> None:
        """Forget every peer whose key is not in ``public_keys``."""
        wanted = {encode_key(k) for k in public_keys}
        for key in [k for k in self.endpoints if k not in wanted]:
            del self.endpoints[key]
            self.dirty = True

    def due(self, now: float) -> bool:
        """Something changed and the last write is ``interval`` old."""
        return self.dirty and (self._saved_at is None or now - self._saved_at >= self.interval)

    def save_due(self, now: float) -> bool:
        """Write if :meth:`due`; True if written."""
        return self._write(now) if self.due(now) else False

    def flush(self, now: float | None = None) -> bool:
        """Write now if anything changed (at stop)."""
        return self._write(now) if self.dirty else False

    def _write(self, now: float | None) -> bool:
        self._saved_at = now
        if save(self.state_dir, self.endpoints):
            self.dirty = False
            return True
        return False


async def remember_task(
    book: EndpointBook,
    current: Callable[[], Iterable[tuple[bytes, Endpoint | None]]],
    interval: float = LOOK_INTERVAL,
) -> None:
    """Every ``interval``, note the endpoints ``current()`` gives (public key, address
    of each peer that is up), and write the file when due.

    Polling keeps the data path free of bookkeeping; the file is written at
    most every ``book.interval`` seconds, the first time as soon as a peer is
    up. The write is a small file in the state directory (tmpfs under /run),
    so it is done in the loop, like the host journal's.
    """
    while True:
        await trio.sleep(interval)
        for public_key, endpoint in current():
            if endpoint is not None:
                book.note(public_key, endpoint)
        book.save_due(trio.current_time())
