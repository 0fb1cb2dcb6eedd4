"""The undo journal and the state-directory lock.

The journal is a JSON file listing, in the order they were taken, the undo
records of every change made to the host. Each record is written (tmp file +
fsync + rename + fsync of the directory) *before* the change it undoes, so after
a crash the journal always covers at least everything that was done. Records
are self-contained (names, addresses, full routes) so a fresh process can
replay them with nothing but the state directory.

The lock is an ``flock`` on ``DIR/lock`` held for the daemon's lifetime; the
kernel drops it when the process dies, so a stale lock never blocks recovery.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from bridger.errors import AlreadyRunning, HostError

JOURNAL_NAME = "journal.json"
LOCK_NAME = "lock"
JOURNAL_VERSION = 1

Record = dict[str, Any]


class StateLock:
    """An exclusive, non-blocking flock on ``state_dir/lock``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise HostError(f"cannot use state directory {state_dir}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunning(
                    f"another bridger (pid {holder}) holds {state_dir}; stop it first"
                ) from exc
            raise HostError(f"cannot lock {state_dir}: {exc.strerror}") from exc
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Journal:
    """Undo records for one state directory, persisted atomically on every change."""

    def __init__(self, state_dir: Path, meta: dict[str, Any], records: list[Record]) -> None:
        self.state_dir = state_dir
        self.meta = meta
        self.records = records

    @property
    def path(self) -> Path:
        return self.state_dir / JOURNAL_NAME

    @classmethod
    def load(cls, state_dir: Path) -> Journal | None:
        """The journal left in ``state_dir``, or None if there is nothing to undo."""
        path = state_dir / JOURNAL_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise HostError(f"cannot read journal {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != JOURNAL_VERSION:
            raise HostError(f"journal {path} has an unknown format")
        records = data.get("undo")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise HostError(f"journal {path} has an unknown format")
        if not records:
            return None
        meta = {k: v for k, v in data.items() if k not in ("version", "undo")}
        return cls(state_dir, meta, records)

    def push(self, record: Record) -> None:
        """Record an undo step; call before making the change it undoes."""
        self.records.append(record)
        self.save()

    def pop(self) -> None:
        """Forget the last undo step once it has been applied."""
        self.records.pop()
        self.save()

    def save(self) -> None:
        """Write the journal atomically; an empty journal is removed."""
        if not self.records:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._sync_dir()
            return
        data = {"version": JOURNAL_VERSION, **self.meta, "undo": self.records}
        tmp = self.path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps(data, indent=1).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise HostError(f"cannot write journal {self.path}: {exc.strerror}") from exc
        self._sync_dir()

    def _sync_dir(self) -> None:
        try:
            fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
