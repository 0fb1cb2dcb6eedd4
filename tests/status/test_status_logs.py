"""Logging never makes the caller wait for the terminal (issue 12 item 6), and the last
lines survive shutdown.

The story: log records from the forwarding task went through the dashboard's
Console, whose lock the drawing thread holds while it writes; with a slow
terminal, ``log.info`` in the data plane waited for it.  Now records are
queued and written by their own thread.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from bridger.status.logs import QUEUE_SIZE, setup_logging, shutdown_logging
from tests.status.samples import StuckTerminal


@pytest.fixture
def bridger_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger("bridger")
    saved = (root.handlers[:], root.level, root.propagate)
    yield logging.getLogger("bridger.test")
    shutdown_logging(timeout=5)
    root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]


@pytest.mark.parametrize("dashboard", [True, False], ids=["dashboard", "stderr"])
def test_log_calls_never_wait_for_a_stuck_terminal(
    dashboard: bool, bridger_logger: logging.Logger
) -> None:
    terminal = StuckTerminal()
    console = setup_logging(dashboard, stream=terminal)
    assert (console is not None) == dashboard
    log = bridger_logger
    total = QUEUE_SIZE * 3
    finished = threading.Event()

    def forwarding() -> None:
        """The data plane's logging: one line, then (the writer now stuck inside write(),
        holding the console's lock with the dashboard) a flood. Every call must return."""
        log.info("first line")
        if terminal.entered.wait(5):
            for i in range(total):
                log.info("line %d", i)
            finished.set()

    threading.Thread(target=forwarding, daemon=True).start()
    try:
        assert finished.wait(6.0), "log.info blocked while the terminal was stuck"
        assert not terminal.parts, "the stuck write completed?"
    finally:
        terminal.release.set()
    assert shutdown_logging(timeout=10)  # writes out everything still queued
    log.info("down: host network restored")  # after shutdown: written directly
    text = terminal.text()
    assert "first line" in text and "down: host network restored" in text
    # the queue held QUEUE_SIZE records while the writer was stuck; the rest were counted
    written = re.findall(r"line (\d+)", text)
    assert [int(n) for n in written] == list(range(QUEUE_SIZE))
    dropped = re.search(r"(\d+) log lines dropped", text)
    assert dropped is not None and int(dropped.group(1)) == total - QUEUE_SIZE


def test_markup_in_log_lines_is_printed_verbatim(bridger_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging(True, stream=out)
    bridger_logger.info("peer %s at %s", "[bold]x:smile:", "aa:cd:ef:00:00:01")
    assert shutdown_logging()
    assert "[bold]x:smile:" in out.getvalue() and "aa:cd:ef:00:00:01" in out.getvalue()


def test_last_lines_are_written_at_exit() -> None:
    """Without an explicit shutdown, the atexit hook still writes out the queue before
    the daemon thread dies with the interpreter."""
    program = (
        "import logging\n"
        "from bridger.status.logs import setup_logging\n"
        "setup_logging(False)\n"
        "log = logging.getLogger('bridger')\n"
        "for i in range(500):\n"
        "    log.info('line %d', i)\n"
        "log.info('down: host network restored')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=60, check=True)
    lines = result.stderr.splitlines()
    assert len(lines) == 501, result.stderr[-2000:]
    assert lines[-1].endswith("bridger: down: host network restored")
