"""SIGINT/SIGTERM during `bridger up`: recorded, never raised at a random bytecode.

A default-action SIGTERM kills the process wherever it is, and a SIGINT raises
``KeyboardInterrupt`` between any two bytecodes -- in the middle of a journal
write or half-way through a restore. :class:`StopSignals` is installed for the
whole of `up` instead. Its handler only records the signal (and wakes whoever
waits); the code acts on it at points where acting is safe:

1. during host set-up, :meth:`StopSignals.check` runs before every journaled
   step and raises :class:`Interrupted`, so ``bring_up`` rolls back;
2. while the daemon runs, an event loop's own signal receiver takes over (Trio
   puts our handler back when it closes); a signal that came before that
   receiver existed is in :attr:`StopSignals.received`, and a callback
   registered with :meth:`StopSignals.notify` is told at once;
3. the restore runs with both signals blocked, so a second Ctrl-C waits until
   the host is given back.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any

from bridger.errors import HostError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(HostError):
    """A stop signal arrived while the host was being set up (exit code 128 + signal)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """Context manager: SIGINT/SIGTERM are recorded in :attr:`received` until exit.

    Only the main thread may enter it (Python's rule for signal handlers). On
    exit the previous handlers are put back.
    """

    def __init__(self) -> None:
        #: The stop signals received so far, oldest first.
        self.received: list[signal.Signals] = []
        self._callbacks: list[Callable[[], object]] = []
        self._old: dict[int, Any] = {}
        self._rfd = self._wfd = -1

    # -- the handler: record, wake, never raise ------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum))
        with contextlib.suppress(OSError):
            os.write(self._wfd, b"!")
        for callback in list(self._callbacks):
            with contextlib.suppress(Exception):  # a handler that raises is the bug we fix
                callback()

    # -- what the code asks ----------------------------------------------------

    @property
    def first(self) -> signal.Signals | None:
        """The first stop signal received, or None."""
        return self.received[0] if self.received else None

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop signal has arrived (a safe point)."""
        sig = self.first
        if sig is not None:
            raise Interrupted(f"interrupted by {sig.name}", sig)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop signal arrives (or ``timeout`` passes); True if one did."""
        import select

        while not self.received:
            ready, _, _ = select.select([self._rfd], [], [], timeout)
            if not ready:
                break
            with contextlib.suppress(BlockingIOError):
                os.read(self._rfd, 512)
        return bool(self.received)

    @contextlib.contextmanager
    def notify(self, callback: Callable[[], object]) -> Iterator[None]:
        """Call ``callback()`` from the handler on each stop signal, inside the body.

        The callback must be safe to call from a signal handler, e.g. Trio's
        ``TrioToken.run_sync_soon``. Register first, then test :attr:`received`,
        so a signal in between is never missed.
        """
        self._callbacks.append(callback)
        try:
            yield
        finally:
            self._callbacks.remove(callback)

    # -- installation ------------------------------------------------------------

    def __enter__(self) -> StopSignals:
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._on_signal)
        except BaseException:
            self._uninstall()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._uninstall()

    def _uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old.clear()
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                os.close(fd)
        self._rfd = self._wfd = -1


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM in the body (they are delivered, once, after it)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
