"""sd_notify against a real AF_UNIX datagram listener (path and abstract addresses)."""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridger.service.notify import STATUS_MAX, Notifier, socket_address, watchdog_usec_from
from tests.service.listener import NotifyListener, parse


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(tmp_path, abstract=request.param == "abstract")
    yield lst
    lst.close()


def notifier_for(listener: NotifyListener, **env: str) -> Notifier:
    return Notifier.from_env({"NOTIFY_SOCKET": listener.env_value, **env})


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    n = Notifier.from_env({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled
    assert n.ready("up") is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert n.watchdog_interval() is None
    assert (n.sent, n.errors) == (0, 0)


def test_ready_status_stopping_watchdog_reach_the_listener(listener: NotifyListener) -> None:
    n = notifier_for(listener)
    assert n.enabled
    assert n.ready("2 peers: berlin up, paris handshaking")
    assert listener.recv() == {"READY": "1", "STATUS": "2 peers: berlin up, paris handshaking"}
    assert n.status("3 peers: berlin up")
    assert listener.recv() == {"STATUS": "3 peers: berlin up"}
    assert n.watchdog()
    assert listener.recv() == {"WATCHDOG": "1"}
    assert n.stopping()
    assert listener.recv() == {"STOPPING": "1"}
    assert n.send(READY=1, ERRNO=5) and listener.recv() == {"READY": "1", "ERRNO": "5"}
    assert (n.sent, n.errors) == (5, 0)
    n.close()


def test_reloading_carries_the_monotonic_clock(listener: NotifyListener) -> None:
    n = notifier_for(listener)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    fields = listener.recv()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_datagram_carries_our_pid_for_notify_access_main(listener: NotifyListener) -> None:
    listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    n = notifier_for(listener)
    n.ready()
    ucred = struct.calcsize("3i")
    data, ancdata, _flags, _addr = listener.sock.recvmsg(4096, socket.CMSG_SPACE(ucred))
    assert parse(data) == {"READY": "1"}
    creds = [struct.unpack("3i", d[:ucred]) for level, kind, d in ancdata
             if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    assert creds and creds[0][0] == os.getpid()


def test_a_newline_in_status_cannot_forge_a_field(listener: NotifyListener) -> None:
    n = notifier_for(listener)
    n.status("berlin\nREADY=1\rSTOPPING=1")
    assert listener.recv() == {"STATUS": "berlin READY=1 STOPPING=1"}


def test_long_status_is_cut(listener: NotifyListener) -> None:
    n = notifier_for(listener)
    n.status("x" * 5000)
    text = listener.recv()["STATUS"]
    assert len(text) == STATUS_MAX and text.endswith("…")


def test_bad_field_name_is_a_programming_error(listener: NotifyListener) -> None:
    with pytest.raises(ValueError):
        notifier_for(listener).send(ready=1)


@pytest.mark.parametrize(("value", "address"), [
    ("/run/systemd/notify", "/run/systemd/notify"),
    ("@bridger/notify", b"\0bridger/notify"),
    ("@", None),
    ("run/relative", None),
    ("vsock:2:1234", None),
])
def test_socket_address_forms(value: str, address: str | bytes | None) -> None:
    assert socket_address(value) == address


@pytest.mark.parametrize(("env", "usec"), [
    ({"WATCHDOG_USEC": "30000000"}, 30_000_000),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "OURS"}, 30_000_000),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "1e6"}, None),
    ({"WATCHDOG_USEC": ""}, None),
    ({}, None),
])
def test_watchdog_usec(env: dict[str, str], usec: int | None) -> None:
    pid = os.getpid()
    env = {k: str(pid) if v == "OURS" else v for k, v in env.items()}
    assert watchdog_usec_from(env, pid) == usec


def test_watchdog_interval_is_half_the_period(listener: NotifyListener) -> None:
    n = notifier_for(listener, WATCHDOG_USEC="3000000", WATCHDOG_PID=str(os.getpid()))
    assert n.watchdog_interval() == 1.5
    assert notifier_for(listener, WATCHDOG_USEC="3000000", WATCHDOG_PID="1") \
        .watchdog_interval() is None


def test_unreachable_socket_is_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.DEBUG, logger="bridger"):
        results = [n.ready(), n.watchdog(), n.stopping()]
    assert results == [False, False, False]
    assert (n.sent, n.errors) == (0, 3)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "nobody-listens" in warnings[0].getMessage()


def test_full_queue_fails_at_once_instead_of_blocking(listener: NotifyListener) -> None:
    n = notifier_for(listener)
    start = time.monotonic()
    results = [n.watchdog() for _ in range(200)]  # the listener never reads
    assert time.monotonic() - start < 1.0
    assert results[0] is True and results[-1] is False
    assert n.errors == results.count(False) > 0
    assert len(listener.pending()) == n.sent


def test_garbage_notify_socket_is_disabled_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="bridger"):
        n = Notifier.from_env({"NOTIFY_SOCKET": "not-a-socket"})
    assert not n.enabled and n.ready() is False
    assert "NOTIFY_SOCKET" in caplog.text
