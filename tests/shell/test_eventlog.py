"""One log line per meaningful protocol event: its level and words; retries,
cookies and rekeys stay out of the operator's log."""

from __future__ import annotations

import logging

import pytest

from bridger.protocol import (
    CookieReceived,
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    HandshakeInitiated,
    InternalError,
    PathMtuChanged,
    PeerUnreachable,
    SessionExpired,
)
from bridger.shell.eventlog import log_event

CASES: list[tuple[Event, int, str]] = [
    (HandshakeCompleted(False, True, 0.0123, "berlin"), logging.INFO,
     "peer berlin: handshake complete: link up (rtt 12.3 ms)"),
    (HandshakeCompleted(True, True, 0.01, "berlin"), logging.DEBUG, "peer berlin: rekeyed"),
    (HandshakeInitiated(False, "berlin"), logging.INFO, "peer berlin: handshake: contacting peer"),
    (HandshakeGaveUp(90.0, 7, "berlin"), logging.WARNING,
     "peer berlin: unreachable: no handshake answer for 90s (7 frames dropped)"),
    (EndpointChanged(None, ("192.0.2.1", 55555), "berlin"), logging.INFO,
     "peer berlin: endpoint unknown -> 192.0.2.1:55555"),
    (PeerUnreachable(15.0, "berlin"), logging.WARNING,
     "peer berlin: silent for 15s: re-handshaking"),
    (SessionExpired("berlin"), logging.WARNING,
     "peer berlin: session expired after long silence: link down"),
    (PathMtuChanged(1280, 1452, "berlin", "probe"), logging.INFO,
     "peer berlin: path MTU 1280 -> 1452"),
    (InternalError("Traceback ...\nRuntimeError: boom\n", 3, ""), logging.ERROR,
     "bug: a datagram raised in the protocol core, dropped (3 more since the last report)\n"
     "Traceback ...\nRuntimeError: boom"),
]


@pytest.mark.parametrize(("event", "level", "line"), CASES,
                         ids=[type(c[0]).__name__ for c in CASES])
def test_each_event_makes_one_line(
    event: Event, level: int, line: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="bridger"):
        log_event(event)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(level, line)]


@pytest.mark.parametrize("event", [HandshakeInitiated(True, "berlin"), CookieReceived("berlin")])
def test_retries_and_cookies_stay_quiet(event: Event, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bridger"):
        log_event(event)
    assert caplog.records == []
