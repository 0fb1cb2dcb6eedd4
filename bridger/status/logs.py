"""Log output that the data plane never waits for.

1. :func:`setup_logging` gives the ``bridger`` logger one handler, a
   :class:`DroppingQueueHandler`: ``log.info`` from any thread (the trio
   forwarding loop included) only puts the record on a bounded queue.  When
   the queue is full the record is dropped and counted; the call never blocks.
2. One writer thread takes records off the queue and writes them: to stderr,
   or with the dashboard through its rich Console, whose lock the dashboard's
   drawing thread holds while it writes to the terminal.  A slow or stuck
   terminal stalls only that thread.
3. After records were dropped, the writer notes how many, once there is room.
4. :func:`shutdown_logging` (also run at interpreter exit) writes what is still
   queued, so the last lines ("down: host network restored") are not lost, and
   gives up after a bound if the terminal never takes them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import queue
import sys
import threading
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

#: Records waiting for the writer thread; beyond this they are dropped and counted.
QUEUE_SIZE = 1000
#: Seconds :func:`shutdown_logging` waits for the writer to finish the queue.
SHUTDOWN_TIMEOUT = 5.0

_STOP = None  # queue sentinel: the writer thread ends


class DroppingQueueHandler(logging.Handler):
    """Formats a record in the caller's thread and queues it without ever blocking."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__()
        self.queue = records
        self.dropped = 0  # records lost because the queue was full; read by the writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Merge args and exception text now: the writer may run much later and
            # the objects behind ``args`` may have changed by then.
            message = self.format(record)
            record = logging.makeLogRecord(record.__dict__)
            record.msg, record.args = message, None
            record.exc_info = record.exc_text = record.stack_info = None
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1  # one int add under the GIL; the writer only reads it
        except Exception:
            self.handleError(record)


class _Writer:
    """The thread that hands queued records to the real handler."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None],
                 source: DroppingQueueHandler, target: logging.Handler) -> None:
        self.records = records
        self.source = source
        self.target = target
        self.reported = 0
        self.thread = threading.Thread(target=self._run, name="bridger-log-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            record = self.records.get()
            if record is _STOP:
                self._report_drops()
                return
            self.target.handle(record)
            self._report_drops()

    def _report_drops(self) -> None:
        dropped = self.source.dropped
        if dropped > self.reported:
            note = logging.makeLogRecord({
                "name": "bridger", "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": f"{dropped - self.reported} log lines dropped: the terminal or log "
                       "reader was too slow",
            })
            self.reported = dropped
            self.target.handle(note)


_writer: _Writer | None = None


def setup_logging(dashboard: bool, *, stream: IO[str] | None = None) -> Console | None:
    """Log lines to ``stream`` (default stderr), or through the dashboard's console
    so they print above it; both from the writer thread, never from the caller's.

    Returns that shared rich Console (markup and emoji off: log lines and the
    dashboard's names are never markup), or None without a dashboard.
    Calling it again replaces the previous setup.
    """
    global _writer
    shutdown_logging()
    console = None
    target: logging.Handler
    if dashboard:
        from rich.console import Console  # only with the dashboard: rich costs memory
        from rich.logging import RichHandler

        console = Console(file=stream, markup=False, emoji=False, highlight=False)
        target = RichHandler(console=console, show_path=False, markup=False,
                             rich_tracebacks=False)
        target.setFormatter(logging.Formatter("%(message)s"))
    else:
        target = logging.StreamHandler(stream if stream is not None else sys.stderr)
        target.setFormatter(logging.Formatter("%(asctime)s bridger: %(message)s", "%H:%M:%S"))
    records: queue.Queue[logging.LogRecord | None] = queue.Queue(QUEUE_SIZE)
    handler = DroppingQueueHandler(records)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("bridger")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    _writer = _Writer(records, handler, target)
    return console


def shutdown_logging(timeout: float = SHUTDOWN_TIMEOUT) -> bool:
    """Write the queued records and stop the writer thread; idempotent.

    Once the writer is done, records go straight to the real handler (the data
    plane has stopped by then).  Returns False if the writer did not finish within
    ``timeout`` seconds (a stuck terminal); the process may then exit without
    those lines.
    """
    global _writer
    writer, _writer = _writer, None
    if writer is None:
        return True
    try:
        writer.records.put(_STOP, timeout=timeout)
    except queue.Full:
        return False
    writer.thread.join(timeout)
    if writer.thread.is_alive():
        return False
    root = logging.getLogger("bridger")
    root.handlers[:] = [writer.target if h is writer.source else h for h in root.handlers]
    with contextlib.suppress(Exception):
        writer.target.flush()
    return True


atexit.register(shutdown_logging)
