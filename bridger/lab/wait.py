"""Polling for the labs: wait for a condition, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], within: float, step: float = 0.1) -> float | None:
    """Seconds until ``condition()`` held (0.0 if it already did), or None once
    ``within`` seconds passed without it.  Test ``is not None`` for a yes/no."""
    began = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - began
        if time.monotonic() - began >= within:
            return None
        time.sleep(step)
