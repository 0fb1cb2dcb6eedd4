"""The daemon's Unix control socket and the ``bridger status`` client.

Protocol (one request per connection, line based, UTF-8):

1. The client connects to ``<state dir>/control.sock`` and sends ``status\\n``.
2. The server checks the peer's uid with ``SO_PEERCRED``: only root and the
   daemon's own uid are served; others get an error line.
3. The server answers one JSON line, the snapshot document of
   ``docs/status.md`` (or ``{"error": "..."}``), and closes.

The socket file is created mode 0600 (``fchmod`` before ``bind``, so there is
no window where it is wider), is refused if another daemon is listening on
it, replaces a stale one left by a crash, and is removed on exit.

The client's drawing (rich, the dashboard's layout) is imported by
:func:`status_main` only: the daemon serves the socket without loading it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bridger.errors import AlreadyRunning, BridgerError, HostError
from bridger.status.document import SCHEMA_VERSION

log = logging.getLogger("bridger.status.control")

CONTROL_SOCKET_NAME = "control.sock"
REQUEST_STATUS = b"status"
MAX_REQUEST = 256  # bytes; requests are one short word
MAX_REPLY = 16 * 1024 * 1024  # bytes; a status document is a few kB
STATIC_HEIGHT = 60  # lines for a one-shot `bridger status`: everything, top talkers included
REQUEST_TIMEOUT = 2.0  # seconds a client may take to send its request
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def control_path(state_dir: Path) -> Path:
    """Where the daemon with state directory ``state_dir`` listens."""
    return Path(state_dir) / CONTROL_SOCKET_NAME


def peer_uid(sock: socket.socket | trio.socket.SocketType) -> int:
    """The uid of the process at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _pid, uid, _gid = _PEERCRED.unpack(raw)
    return int(uid)


def _is_live(path: Path) -> bool:
    """Is some process accepting connections on the socket at ``path``?"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _claim_path(path: Path) -> None:
    """Make ``path`` free for a new socket, refusing to replace a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise HostError(f"{path} exists and is not a socket; remove it or use another state dir")
    if _is_live(path):
        raise AlreadyRunning(f"a bridger daemon is already running with control socket {path}")
    log.info("removing stale control socket %s", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _bind(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Linux creates the socket file with the socket inode's mode (minus umask),
        # so this makes the file 0600 from the moment it exists.
        os.fchmod(sock.fileno(), 0o600)
        _claim_path(path)
        try:
            sock.bind(str(path))
        except OSError as exc:
            raise HostError(f"cannot create control socket {path}: {exc.strerror or exc}") from exc
        os.chmod(path, 0o600)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_if_ours(path: Path, inode: int) -> None:
    """Unlink the socket file unless someone already replaced it."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


async def _read_request(stream: trio.SocketStream) -> bytes:
    buf = b""
    while b"\n" not in buf and len(buf) < MAX_REQUEST:
        chunk = await stream.receive_some(MAX_REQUEST)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].strip()


async def serve_control(
    path: Path,
    get_snapshot: Callable[[], dict[str, Any]],
    *,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve status requests on ``path`` until cancelled, then remove the socket.

    Raises :class:`AlreadyRunning` if a live daemon owns ``path`` and
    :class:`HostError` if the socket cannot be created.  Misbehaving clients
    (wrong uid, slow, garbage, hanging up) never disturb the daemon.
    """
    path = Path(path)
    sock = _bind(path)
    inode = os.lstat(path).st_ino
    allowed = {0, os.geteuid()}

    async def handle(stream: trio.SocketStream) -> None:
        try:
            async with stream:
                with trio.move_on_after(REQUEST_TIMEOUT * 5):
                    # Read the request even from a client about to be refused: closing with
                    # its bytes unread would reset the connection and lose our error line.
                    request = b""
                    with trio.move_on_after(REQUEST_TIMEOUT):
                        request = await _read_request(stream)
                    uid = peer_uid(stream.socket)
                    reply: dict[str, Any]
                    if uid not in allowed:
                        log.warning("control socket: refused a client with uid %d", uid)
                        reply = {"error": "permission denied (root only)"}
                    elif request == REQUEST_STATUS:
                        try:
                            reply = get_snapshot()
                        except Exception:
                            log.exception("control socket: taking a snapshot failed")
                            reply = {"error": "internal error taking a snapshot; see daemon log"}
                    else:
                        reply = {"error": f"unknown request {request[:32]!r}; expected 'status'"}
                    await stream.send_all(_line(reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("control socket: client went away: %s", exc)

    try:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handle, [listener])
            task_status.started(path)
    finally:
        sock.close()
        _remove_if_ours(path, inode)


# -- client ----------------------------------------------------------------------------------------

def query_status(path: Path, timeout: float = 2.0) -> dict[str, Any]:
    """Ask the daemon listening on ``path`` for its status document (blocking)."""
    path = Path(path)
    no_daemon = f"no bridger running with state dir {path.parent}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise BridgerError(no_daemon) from exc
        except PermissionError as exc:
            raise BridgerError(f"permission denied on {path}; run bridger status as root") from exc
        sock.sendall(REQUEST_STATUS + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REPLY:
                raise BridgerError(f"reply from {path} is too large")
    except TimeoutError as exc:
        raise BridgerError(f"bridger at {path} did not answer within {timeout:g}s") from exc
    except OSError as exc:
        raise BridgerError(f"cannot query bridger at {path}: {exc.strerror or exc}") from exc
    finally:
        sock.close()
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise BridgerError(f"malformed reply from {path}") from exc
    if not isinstance(doc, dict):
        raise BridgerError(f"malformed reply from {path}")
    if "error" in doc:
        raise BridgerError(f"bridger refused the query: {doc['error']}")
    return doc


def _renderable(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """``doc`` if this version of bridger can draw it (``--json`` prints any version)."""
    if doc.get("version") != SCHEMA_VERSION:
        raise BridgerError(f"bridger at {path} sends status version {doc.get('version')!r}, "
                           f"this bridger shows version {SCHEMA_VERSION}; use --json")
    return doc


def static_height(doc: dict[str, Any]) -> int:
    """Lines for printing ``doc`` whole: every peer gets its rows, top talkers included."""
    return STATIC_HEIGHT + 2 * len(doc.get("peers", ()))


def status_main(state_dir: Path, as_json: bool, watch: bool, *, interval: float = 1.0) -> int:
    """``bridger status``: print the daemon's status once, or every ``interval`` with --watch.

    JSON mode prints the document (indented once; one line per sample when
    watching).  Errors are :class:`BridgerError` for the CLI to print.
    """
    path = control_path(state_dir)
    try:
        if as_json:  # (rich is not even imported: a script polling 100 peers stays cheap)
            if not watch:
                print(json.dumps(query_status(path), indent=2))
                return 0
            while True:
                print(json.dumps(query_status(path)), flush=True)
                time.sleep(interval)
        return _draw(path, watch, interval)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `bridger status --json --watch | head`
        with contextlib.suppress(OSError):
            sys.stdout.close()
        return 0


def _draw(path: Path, watch: bool, interval: float) -> int:
    """The dashboard's drawing of the status, once or every ``interval``."""
    from rich.console import Console
    from rich.live import Live

    from bridger.status.dashboard import History, render

    # Nothing printed here is markup: names and addresses must show verbatim.
    console = Console(markup=False, emoji=False, highlight=False)
    history = History()
    if not watch:
        doc = _renderable(query_status(path), path)
        console.print(render(doc, history, console.width, static_height(doc)))
        return 0
    if not console.is_terminal:
        while True:
            doc = _renderable(query_status(path), path)
            history.sample(doc, time.monotonic())
            console.print(render(doc, history, console.width, static_height(doc)))
            console.print()
            time.sleep(interval)
    with Live(console=console, auto_refresh=False) as live:
        while True:
            doc = _renderable(query_status(path), path)
            history.sample(doc, time.monotonic())
            width, height = console.size
            live.update(render(doc, history, width, height - 1), refresh=True)
            time.sleep(interval)
