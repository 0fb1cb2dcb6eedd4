"""A small client of systemd's notification protocol (sd_notify(3)), no dependency.

The service manager passes ``NOTIFY_SOCKET``: a filesystem path (``/run/systemd/notify``)
or an abstract address (``@name``, sent as a leading NUL byte). A notification is one
AF_UNIX datagram of ``KEY=value`` lines, e.g. ``READY=1\\nSTATUS=2 peers: ...``; the
kernel attaches our credentials, which is how ``NotifyAccess=main`` knows it is us.

Rules kept here:
- Without ``NOTIFY_SOCKET`` the notifier is a no-op, so callers never test for systemd.
- Nothing raises into the daemon: a failed send is counted (``errors``) and logged once
  at warning level, later ones at debug level. Sends never block (``MSG_DONTWAIT``): a
  full queue at the manager is a counted failure, not a stalled data plane.
- The watchdog is on only when ``WATCHDOG_USEC`` is a positive integer and
  ``WATCHDOG_PID``, if set, is our pid (a variable inherited from a parent is not ours).
  We ping every half period, as sd_watchdog_enabled(3) recommends.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("bridger")

#: The variables the service manager sets (systemd.exec(5), sd_notify(3)).
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

#: Longest STATUS= text we send; the rest is cut with an ellipsis.
STATUS_MAX = 1024

_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")


def socket_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value, or None if unusable.

    ``/path`` is a filesystem socket, ``@name`` an abstract one. Other forms
    (``vsock:`` of newer systemd versions, relative paths) are not supported.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


def watchdog_usec_from(environ: Mapping[str, str], pid: int) -> int | None:
    """``WATCHDOG_USEC`` if it is meant for process ``pid`` and valid, else None."""
    text = environ.get(WATCHDOG_USEC_ENV)
    if not text:
        return None
    owner = environ.get(WATCHDOG_PID_ENV)
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    if not text.isdigit() or int(text) <= 0:
        return None
    return int(text)


def _value(value: object) -> str:
    """One field value: a single line (a newline would start a forged field)."""
    if value is True:
        return "1"
    text = str(value).replace("\r", " ").replace("\n", " ")
    return text


class Notifier:
    """Sends notifications to the service manager; every method is safe to call always."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        #: Notifications sent, and sends that failed.
        self.sent = 0
        self.errors = 0
        self._sock: socket.socket | None = None
        self._connected = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier the environment asks for; a no-op one without ``NOTIFY_SOCKET``."""
        env = os.environ if environ is None else environ
        raw = env.get(NOTIFY_SOCKET_ENV)
        if not raw:
            return cls(None)
        address = socket_address(raw)
        if address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or @abstract name; not notifying", raw)
            return cls(None)
        return cls(address, watchdog_usec_from(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half ``WATCHDOG_USEC``), or None if off."""
        if self.address is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    # -- the messages ------------------------------------------------------

    def send(self, **fields: object) -> bool:
        """Send one notification of ``KEY=value`` fields; True if it went out.

        ``send(READY=1, STATUS="up")``; keys are upper case (sd_notify(3)).
        """
        if self.address is None:
            return False
        lines = []
        for key, value in fields.items():
            if not _KEY.match(key):
                raise ValueError(f"not a notification field name: {key!r}")
            lines.append(f"{key}={_value(value)}")
        return self._send(("\n".join(lines) + "\n").encode())

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (``READY=1``), optionally with a status line."""
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=_status_text(status))

    def reloading(self) -> bool:
        """A reload begins; send :meth:`ready` when it is done (or refused).

        ``MONOTONIC_USEC`` lets systemd >= 253 (Type=notify-reload) match the two.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=usec)

    def status(self, text: str) -> bool:
        """A one-line free-form status (``systemctl status`` shows it)."""
        return self.send(STATUS=_status_text(text))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (``STOPPING=1``)."""
        if status is None:
            return self.send(STOPPING=1)
        return self.send(STOPPING=1, STATUS=_status_text(status))

    def watchdog(self) -> bool:
        """One keep-alive ping (``WATCHDOG=1``)."""
        return self.send(WATCHDOG=1)

    def connect(self) -> None:
        """Connect to the manager's socket now, while its path can be reached
        (before the data plane gives up root: ``/run/systemd/notify`` is
        root's); later sends go over this connection. A failure is counted and
        logged once, as a send would be; sends then try ``sendto`` as before."""
        if self.address is None or self._connected:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.address)
        except OSError as exc:
            sock.close()
            self.errors += 1
            log.warning("cannot notify the service manager at %s: %s",
                        _printable(self.address), exc.strerror or exc)
            return
        self.close()
        self._sock, self._connected = sock, True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._connected = False

    # -- I/O ----------------------------------------------------------------

    def _send(self, data: bytes) -> bool:
        assert self.address is not None
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            if self._connected:
                self._sock.send(data, socket.MSG_DONTWAIT)
            else:
                self._sock.sendto(data, socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            self.errors += 1
            level = logging.WARNING if self.errors == 1 else logging.DEBUG
            log.log(level, "cannot notify the service manager at %s: %s (%d failed so far)",
                    _printable(self.address), exc.strerror or exc, self.errors)
            return False
        self.sent += 1
        return True


def _status_text(text: str) -> str:
    text = _value(text)
    if len(text) > STATUS_MAX:
        text = text[: STATUS_MAX - 1] + "…"
    return text


def _printable(address: str | bytes) -> str:
    if isinstance(address, bytes):
        return "@" + address[1:].decode(errors="replace")
    return address
