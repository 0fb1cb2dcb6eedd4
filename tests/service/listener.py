"""A stand-in for systemd's notification socket: a real AF_UNIX datagram listener.

It records each datagram with its arrival time (time.monotonic, or a clock the
test gives) and parses it the way the service manager does: ``KEY=value`` lines.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path


def parse(datagram: bytes) -> dict[str, str]:
    fields = {}
    for line in datagram.decode().split("\n"):
        if line:
            key, sep, value = line.partition("=")
            assert sep, f"not a KEY=value line: {line!r}"
            fields[key] = value
    return fields


class NotifyListener:
    """Bound at ``env_value`` (a path, or ``@name`` for an abstract address)."""

    def __init__(self, directory: Path | None = None, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"bridger-test-{os.getpid()}-{id(self):x}"
            self.sock.bind(b"\0" + name.encode())
            self.env_value = "@" + name
        else:
            assert directory is not None
            path = directory / "notify"
            self.sock.bind(str(path))
            self.env_value = str(path)
        self.received: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = False

    def recv(self, timeout: float = 2.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        return parse(self.sock.recv(4096))

    def pending(self) -> list[dict[str, str]]:
        """Everything queued now, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(parse(self.sock.recv(4096)))
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        return out

    def start(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Read in a thread (the kernel queues only ~10 datagrams), time-stamping each."""

        def run() -> None:
            self.sock.settimeout(0.05)
            while not self._stop:
                try:
                    data = self.sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                with self._lock:
                    self.received.append((clock(), parse(data)))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def times(self, key: str) -> list[float]:
        with self._lock:
            return [t for t, fields in self.received if key in fields]

    def values(self, key: str) -> list[str]:
        with self._lock:
            return [fields[key] for _t, fields in self.received if key in fields]

    def close(self) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join(2)
        self.sock.close()
