"""The remembered endpoints: round trip, damaged files, permissions, bounds."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from bridger.keys import encode_key
from bridger.service import endpoints
from bridger.service.endpoints import (
    ENDPOINTS_NAME,
    MAX_ENTRIES,
    EndpointBook,
    load,
    remember_task,
    save,
)

KEY_A = encode_key(bytes(range(32)))
KEY_B = encode_key(bytes(range(1, 33)))


def test_round_trip(tmp_path: Path) -> None:
    mapping = {KEY_A: ("192.0.2.7", 55555), KEY_B: ("2001:db8::1", 4242)}
    assert save(tmp_path, mapping)
    assert load(tmp_path) == mapping


def test_file_is_0600_and_atomic(tmp_path: Path) -> None:
    (tmp_path / (ENDPOINTS_NAME + ".tmp")).write_text("left over")
    os.chmod(tmp_path / (ENDPOINTS_NAME + ".tmp"), 0o644)
    old = os.umask(0)  # whatever the umask and the old tmp file's mode, the file is 0600
    try:
        assert save(tmp_path, {KEY_A: ("192.0.2.7", 1)})
    finally:
        os.umask(old)
    path = tmp_path / ENDPOINTS_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / (ENDPOINTS_NAME + ".tmp")).exists()
    assert json.loads(path.read_text()) == {
        "version": 1, "endpoints": {KEY_A: ["192.0.2.7", 1]}}


def test_missing_file_is_empty_and_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bridger"):
        assert load(tmp_path) == {}
        assert load(tmp_path / "no-such-dir") == {}
    assert caplog.records == []


@pytest.mark.parametrize("content", [
    b"",
    b"{not json",
    b"\xff\xfe\x00",
    b"[]",
    b'{"version": 2, "endpoints": {}}',
    b'{"version": 1, "endpoints": []}',
    b'{"version": 1}',
])
def test_damaged_file_is_empty_with_one_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / ENDPOINTS_NAME).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="bridger"):
        assert load(tmp_path) == {}
    assert len(caplog.records) == 1 and "not used" in caplog.records[0].getMessage()


def test_bad_entries_are_skipped_good_ones_kept(tmp_path: Path) -> None:
    data = {"version": 1, "endpoints": {
        KEY_A: ["192.0.2.7", 55555],
        KEY_B: ["fe80::1%eth0", 55555],               # link-local with a zone: kept
        "not-base64!": ["192.0.2.8", 1],
        encode_key(b"short"): ["192.0.2.9", 1],
        encode_key(bytes(range(2, 34))): ["gateway.example", 1],  # a name, not an address
        encode_key(bytes(range(3, 35))): ["192.0.2.10", 0],
        encode_key(bytes(range(4, 36))): ["192.0.2.11", True],
        encode_key(bytes(range(5, 37))): ["192.0.2.12"],
        encode_key(bytes(range(6, 38))): "192.0.2.13:1",
    }}
    (tmp_path / ENDPOINTS_NAME).write_text(json.dumps(data))
    assert load(tmp_path) == {KEY_A: ("192.0.2.7", 55555), KEY_B: ("fe80::1%eth0", 55555)}


def test_oversized_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / ENDPOINTS_NAME).write_bytes(b" " * (endpoints.MAX_FILE_BYTES + 1))
    with caplog.at_level(logging.WARNING, logger="bridger"):
        assert load(tmp_path) == {}
    assert "larger than" in caplog.text


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"version": 1, "endpoints": {KEY_A: ["192.0.2.7", 1]}}))
    (tmp_path / ENDPOINTS_NAME).symlink_to(target)
    assert load(tmp_path) == {}


def test_save_failure_is_false_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bridger"):
        assert save(tmp_path / "missing-dir", {KEY_A: ("192.0.2.7", 1)}) is False
    assert "cannot remember endpoints" in caplog.text


def test_size_is_bounded(tmp_path: Path) -> None:
    many = {encode_key(i.to_bytes(32, "big")): ("192.0.2.1", 1 + i % 60000)
            for i in range(MAX_ENTRIES + 50)}
    assert save(tmp_path, many)
    loaded = load(tmp_path)
    assert len(loaded) == MAX_ENTRIES
    assert list(loaded) == list(many)[:MAX_ENTRIES]


def test_book_writes_at_most_every_interval_and_flushes(tmp_path: Path) -> None:
    a, b = bytes(range(32)), bytes(range(1, 33))
    book = EndpointBook(tmp_path, interval=10.0)
    assert book.endpoints == {}
    assert book.note(a, ("192.0.2.7", 55555))
    assert not book.note(a, ("192.0.2.7", 55555))  # no news
    assert book.save_due(100.0)
    assert load(tmp_path) == {KEY_A: ("192.0.2.7", 55555)}
    book.note(a, ("192.0.2.7", 40000))  # NAT rebinding
    assert not book.save_due(105.0)  # too soon
    assert load(tmp_path)[KEY_A] == ("192.0.2.7", 55555)
    assert book.save_due(110.0)
    assert load(tmp_path)[KEY_A] == ("192.0.2.7", 40000)
    assert not book.save_due(200.0)  # nothing new
    book.note(b, ("198.51.100.1", 55555))
    assert book.flush()
    assert EndpointBook(tmp_path).get(b) == ("198.51.100.1", 55555)


def test_book_keeps_only_configured_peers(tmp_path: Path) -> None:
    a, b = bytes(range(32)), bytes(range(1, 33))
    save(tmp_path, {KEY_A: ("192.0.2.7", 1), KEY_B: ("192.0.2.8", 2)})
    book = EndpointBook(tmp_path, keep=[b])
    assert book.get(a) is None and book.get(b) == ("192.0.2.8", 2)
    assert book.flush()
    assert load(tmp_path) == {KEY_B: ("192.0.2.8", 2)}
    book.forget(b)
    assert book.flush() and load(tmp_path) == {}


def test_remember_task_notes_peers_that_are_up_and_writes_when_due(tmp_path: Path) -> None:
    a, b = bytes(range(32)), bytes(range(1, 33))
    book = EndpointBook(tmp_path, interval=10.0)
    current: list[tuple[bytes, tuple[str, int] | None]] = [(a, None)]
    seen: list[dict[str, tuple[str, int]]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(remember_task, book, lambda: current, 1.0)
            await trio.sleep(2.5)
            seen.append(load(tmp_path))  # nothing up yet: no file
            current[:] = [(a, ("192.0.2.7", 55555)), (b, None)]
            await trio.sleep(1.0)
            seen.append(load(tmp_path))  # written at once: the first write
            current[:] = [(a, ("192.0.2.7", 40000)), (b, ("198.51.100.1", 1))]
            await trio.sleep(5.0)
            seen.append(load(tmp_path))  # not yet: 10 s between writes
            await trio.sleep(6.0)
            seen.append(load(tmp_path))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen == [
        {},
        {KEY_A: ("192.0.2.7", 55555)},
        {KEY_A: ("192.0.2.7", 55555)},
        {KEY_A: ("192.0.2.7", 40000), KEY_B: ("198.51.100.1", 1)},
    ]
