"""Control socket: round trip, permissions, peer-uid check, stale/live sockets, `bridger status`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from bridger.dataplane.accounting import Counters
from bridger.errors import AlreadyRunning, BridgerError, HostError
from bridger.status.control import control_path, query_status, serve_control, status_main
from bridger.status.document import status_document
from bridger.status.schema import validate
from tests.status.samples import (
    BERLIN,
    DEVICE,
    LOCAL,
    PARIS,
    REMOTE,
    arp_broadcast,
    ipv4,
    peer,
)

PEERS = [BERLIN, PARIS]


def make_counters() -> Counters:
    c = Counters()
    for _ in range(5):
        c.peer("berlin").lan_to_wan(ipv4(REMOTE, LOCAL, 60), 1.0)
    c.peer("berlin").wan_to_lan(arp_broadcast(), 1.0)
    return c


def snapshot_of(c: Counters) -> Callable[[], dict[str, Any]]:
    return lambda: status_document(c.snapshot(2.0), DEVICE, PEERS)


def with_server(path: Path, get_snapshot: Callable[[], dict[str, Any]],
                client: Callable[[], Any]) -> Any:
    """Run the control server on ``path`` while ``client`` runs in a thread; return its result."""
    result: list[Any] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, path, get_snapshot)
            try:
                result.append(await trio.to_thread.run_sync(client))
            finally:
                nursery.cancel_scope.cancel()

    trio.run(main)
    return result[0]


def test_round_trip_mode_and_cleanup(tmp_path: Path) -> None:
    path = control_path(tmp_path)
    counters = make_counters()

    def client() -> tuple[dict[str, Any], int]:
        return query_status(path), stat.S_IMODE(os.lstat(path).st_mode)

    doc, mode = with_server(path, snapshot_of(counters), client)
    validate(doc)
    assert doc["frames"] == {"tx": 5, "rx": 1}
    assert doc["bytes"] == {"tx": 5 * 60, "rx": 42}
    assert doc["drops"]["auth_failed"] == 12
    assert doc["peers"][0]["endpoint"] == "203.0.113.5:55555"
    assert mode == 0o600
    assert not path.exists()  # removed on exit


def test_no_daemon_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BridgerError, match=f"no bridger running with state dir {tmp_path}$"):
        query_status(control_path(tmp_path))
    with pytest.raises(BridgerError, match="no bridger running"):
        query_status(tmp_path / "missing-dir" / "control.sock")


def test_refuses_when_live_socket_present(tmp_path: Path) -> None:
    path = control_path(tmp_path)

    def second_server() -> Exception | None:
        try:
            trio.run(serve_control, path, lambda: {})
        except AlreadyRunning as exc:
            return exc
        return None

    exc = with_server(path, snapshot_of(make_counters()), second_server)
    assert isinstance(exc, AlreadyRunning)
    assert str(path) in str(exc)


def test_replaces_stale_socket(tmp_path: Path) -> None:
    path = control_path(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # file left behind, nobody listening: as after a crash
    doc = with_server(path, snapshot_of(make_counters()),
                      lambda: query_status(path))
    assert doc["frames"]["tx"] == 5


def test_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    path = control_path(tmp_path)
    path.write_text("not a socket")
    with pytest.raises(HostError, match="is not a socket"):
        trio.run(serve_control, path, lambda: {})
    assert path.read_text() == "not a socket"


def raw_exchange(path: Path, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_bad_clients_do_not_disturb_server(tmp_path: Path) -> None:
    path = control_path(tmp_path)

    def overlong() -> dict[str, Any]:
        """The server stops reading after 256 bytes; closing with unread data may reset."""
        try:
            return json.loads(raw_exchange(path, b"\xff" * 10_000))
        except ConnectionResetError:
            return {"error": "unknown request (reset)"}

    def clients() -> list[Any]:
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.connect(str(path))  # connects and says nothing, held open meanwhile
        try:
            return [
                json.loads(raw_exchange(path, b"reboot\n")),
                raw_exchange(path, b""),  # hangs up without a request
                overlong(),
                query_status(path)["frames"],
            ]
        finally:
            silent.close()

    garbage, empty, huge, frames = with_server(
        path, snapshot_of(make_counters()), clients)
    assert "unknown request" in garbage["error"]
    assert "unknown request" in json.loads(empty)["error"]
    assert "unknown request" in huge["error"]
    assert frames == {"tx": 5, "rx": 1}


def test_snapshot_failure_is_an_error_reply(tmp_path: Path) -> None:
    path = control_path(tmp_path)

    def broken() -> dict[str, Any]:
        raise RuntimeError("bug")

    def client() -> str:
        with pytest.raises(BridgerError, match="internal error") as info:
            query_status(path)
        return str(info.value)

    assert "refused" in with_server(path, broken, client)


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("socat") is None,
                    reason="needs root and socat to run a client as another uid")
@pytest.mark.parametrize("widen_mode", [False, True])
def test_other_uids_are_refused(widen_mode: bool) -> None:
    """The 0600 mode stops other users; if it were widened, SO_PEERCRED still does."""
    state_dir = Path(tempfile.mkdtemp(prefix="bridger-status-"))
    try:
        state_dir.chmod(0o755)
        path = control_path(state_dir)

        def client() -> str:
            if widen_mode:
                path.chmod(0o666)
            # socat: our interpreter may live where other users cannot execute it
            out = subprocess.run(["socat", "-t5", "-", f"UNIX-CONNECT:{path}"], user=NOBODY,
                                 group=NOBODY, input="status\n", capture_output=True, text=True,
                                 timeout=20, cwd="/", check=False)
            return out.stdout.strip() or out.stderr.strip()

        reply = with_server(path, snapshot_of(make_counters()), client)
        if widen_mode:
            assert json.loads(reply) == {"error": "permission denied (root only)"}
        else:
            assert "Permission denied" in reply
    finally:
        for child in state_dir.iterdir():
            child.unlink()
        state_dir.rmdir()


def test_status_main_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = control_path(tmp_path)
    counters = make_counters()

    def client() -> tuple[int, str, int, str]:
        rc_json = status_main(tmp_path, as_json=True, watch=False)
        out_json = capsys.readouterr().out
        rc_table = status_main(tmp_path, as_json=False, watch=False)
        return rc_json, out_json, rc_table, capsys.readouterr().out

    rc_json, out_json, rc_table, out_table = with_server(
        path, snapshot_of(counters), client)
    assert rc_json == 0 and rc_table == 0
    doc = json.loads(out_json)
    validate(doc)
    assert doc["frames"]["tx"] == 5
    for expected in ("1 UP 1 DOWN", "berlin", "paris", "203.0.113.5:55555", "LAN→WAN",
                     "WAN→LAN", "auth_failed 12", "02:00:00:00:00:01", "02:00:00:00:00:02"):
        assert expected in out_table, f"{expected!r} missing from\n{out_table}"


def test_status_table_shows_every_peer_and_names_verbatim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One-shot `bridger status` gives every peer a row, however many, and prints
    names and MACs as they are (never as markup or emoji)."""
    path = control_path(tmp_path)
    c = make_counters()
    c.peer("odd").wan_to_lan(ipv4(LOCAL, bytes.fromhex("aacdef000001"), 60), 1.0)
    peers = [*PEERS, *(peer(f"site{i:02d}") for i in range(20)),
             peer("odd", host="[bold]h:smile:", endpoint="[red]e:cd:1")]

    def client() -> str:
        assert status_main(tmp_path, as_json=False, watch=False) == 0
        return capsys.readouterr().out

    out = with_server(path, lambda: status_document(c.snapshot(2.0), DEVICE, peers), client)
    rows = [line.split()[0] for line in out.splitlines() if line.startswith("site")]
    assert len(set(rows)) == 20, out
    assert "more peers" not in out
    assert "[red]e:cd:1" in out and "aa:cd:ef:00:00:01" in out, out


def test_status_table_refuses_other_versions_but_json_prints_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = control_path(tmp_path)
    old = {"version": 1, "link": {"state": "up"}}

    def client() -> tuple[str, str]:
        with pytest.raises(BridgerError, match=r"status version 1.*use --json"):
            status_main(tmp_path, as_json=False, watch=False)
        assert status_main(tmp_path, as_json=True, watch=False) == 0
        return capsys.readouterr().out, ""

    out, _ = with_server(path, lambda: old, client)
    assert json.loads(out) == old


def test_status_watch_json_lines_until_daemon_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = control_path(tmp_path)
    counters = make_counters()
    outcome: list[BaseException] = []

    def watcher() -> None:
        try:
            status_main(tmp_path, as_json=True, watch=True, interval=0.05)
        except BridgerError as exc:
            outcome.append(exc)

    async def main() -> None:
        async with trio.open_nursery() as outer, trio.open_nursery() as server:
            await server.start(serve_control, path, snapshot_of(counters))
            outer.start_soon(trio.to_thread.run_sync, watcher)
            await trio.sleep(0.5)
            server.cancel_scope.cancel()

    trio.run(main)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 3
    for line in lines:
        validate(json.loads(line))
    assert len(outcome) == 1 and "no bridger running" in str(outcome[0])
