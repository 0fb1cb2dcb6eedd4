"""Privilege separation: a small root monitor, an unprivileged data plane.

`bridger up` run as root sets the host up (``bridger.host.setup``) and then
splits in two, in the manner of OpenSSH's privilege separation:

1. Before the split: the service user's directory ``STATE_DIR/worker`` is
   made (owned by that user; the control socket and the remembered endpoints
   live there, and ``STATE_DIR/control.sock`` links to it for ``bridger
   status``). The taps already belong to the service user (TUNSETOWNER).
2. ``fork``. The parent is the **monitor**: it keeps root, the journal, the
   lock and the netlink socket, drops every capability but CAP_NET_ADMIN, and
   from then on only answers the requests of :class:`Request` (each checked
   against the configuration it read itself) and waits for the child.
3. The child is the **worker**, which handles all traffic: it gives up the
   netlink socket and the lock (:meth:`HostSession.detach`), moves into its
   directory, and :func:`enter_sandbox` makes it the service user with no
   capabilities, no_new_privs, a Landlock rule (writes only in its directory)
   and the seccomp filter (``bridger.host.seccomp``); only then does it start
   threads, parse a datagram or serve the control socket.
4. The worker asks the monitor over a ``SOCK_SEQPACKET`` socket pair, one JSON
   request per message, one reply each (a new tap's fd rides along as
   ``SCM_RIGHTS``). The monitor never unpickles or evaluates what the worker
   sends; it validates the operation, its arguments and their sizes.
5. The end: whatever way the worker ends (exit, crash, SIGKILL, the
   watchdog's abort) the monitor sees its pidfd become readable, restores the
   host from its journal and exits with the worker's status. SIGTERM, SIGINT
   and SIGHUP sent to the monitor (systemd sends them to the main process)
   are passed to the worker. If the monitor dies, the worker gets SIGTERM
   (PR_SET_PDEATHSIG) and stops; the journal is still on disk for
   `bridger down` (the unit's ExecStopPost) or the next start.
"""

from __future__ import annotations

import array
import contextlib
import enum
import errno
import gc
import json
import logging
import os
import pickle
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

from bridger.errors import BridgerError, ConfigError, HostError
from bridger.ha.gate import PORT_STATES, FdbEntry, GateError, PortGate, read_fdb, read_follow
from bridger.host import landlock, seccomp
from bridger.host.checks import check_name
from bridger.host.privileges import (
    CAP_KILL,
    CAP_NET_ADMIN,
    ServiceUser,
    die_with_parent,
    drop_privileges,
    drop_to_user,
)
from bridger.host.setup import HostSession, TapPlan
from bridger.host.storm import NftError, nft_path
from bridger.host.tap import TUN_PATH

log = logging.getLogger("bridger")

#: The worker's own directory below the state directory.
WORKER_DIR = "worker"
CONTROL_LINK = "control.sock"
#: Largest request the monitor reads; anything longer is refused unread.
MAX_REQUEST = 512
#: Largest reply (a reread configuration with its keys).
MAX_REPLY = 1 << 20
#: Most taps a worker may hold (one per peer).
MAX_TAPS = 256
#: Seconds the monitor waits for a worker that hung up its socket to exit.
HANGUP_GRACE = 10.0
#: Where the monitor writes a new tap's IPv6 switch (``bridger.host.tap.silence_ipv6``).
PROC_SYS_NET = "/proc/sys/net"
#: The signals the monitor passes on to the worker.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Request(enum.Enum):
    """What the worker may ask; nothing else is ever done for it."""

    #: ``{"op": "add_tap", "name": TAP}``: create tap TAP for the service user,
    #: enslave it to our bridge (journaled); TAP must be a tap of the
    #: configuration the monitor itself last read. Reply: its fd.
    ADD_TAP = "add_tap"
    #: ``{"op": "remove_tap", "name": TAP}``: delete one of this run's taps.
    REMOVE_TAP = "remove_tap"
    #: ``{"op": "storm_counters"}``: the kernel storm table's drops per tap.
    STORM_COUNTERS = "storm_counters"
    #: ``{"op": "reread"}``: read the configuration and the keys again (the
    #: files are root's); reply: the validated config and keys, or the error line.
    REREAD = "reread"
    #: Two gateways per site only (``bridger.ha``):
    #: ``{"op": "port_state", "name": TAP, "state": "disabled" | "forwarding"}``:
    #: the bridge-port state of TAP, one of this run's taps.
    PORT_STATE = "port_state"
    #: ``{"op": "flush_lan"}``: forget what our bridge learnt on the LAN port.
    FLUSH_LAN = "flush_lan"
    #: ``{"op": "fdb"}``: the learnt unicast FDB entries of our bridge.
    FDB = "fdb"
    #: ``{"op": "follow_state"}``: the start of keepalived's state file, the
    #: one the monitor's configuration names (``ha_follow``; it may be root's).
    FOLLOW_STATE = "follow_state"


#: The requests only a gateway of a two-gateway site may make.  (FLUSH_LAN
#: any gateway may: loop protection flushes when it releases a peer.)
GROUP_REQUESTS = frozenset({Request.PORT_STATE, Request.FDB, Request.FOLLOW_STATE})


class Asked(NamedTuple):
    """A validated request: the operation and its arguments (None: not taken)."""

    op: Request
    name: str | None = None
    state: str | None = None


class MonitorGone(HostError):
    """The monitor does not answer (it died): nothing privileged can be done."""


def worker_dir(state_dir: Path) -> Path:
    return state_dir / WORKER_DIR


def prepare_worker_dir(state_dir: Path, user: ServiceUser) -> Path:
    """``STATE_DIR/worker`` owned by the service user (mode 0700), and the
    ``control.sock`` link to it; the state directory itself stays root's
    (0755: the link can be followed, the journal and lock are 0600)."""
    path = worker_dir(state_dir)
    try:
        os.chmod(state_dir, 0o755)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
        if not os.path.isdir(path) or os.path.islink(path):
            raise HostError(f"{path} is not a directory")
        if st.st_uid != user.uid or st.st_gid != user.gid:
            os.chown(path, user.uid, user.gid, follow_symlinks=False)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise HostError(f"cannot prepare {path} for user {user.name}: {exc.strerror}") from exc
    link = state_dir / CONTROL_LINK
    target = f"{WORKER_DIR}/{CONTROL_LINK}"
    try:
        if not (link.is_symlink() and os.readlink(link) == target):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            os.symlink(target, link)
    except OSError as exc:
        raise HostError(f"cannot link the control socket {link} to {target}: "
                        f"{exc.strerror}") from exc
    return path


# -- the wire --------------------------------------------------------------------


def _send(sock: socket.socket, data: bytes, fds: tuple[int, ...] = ()) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] \
        if fds else []
    sock.sendmsg([data], ancillary)


def _receive(sock: socket.socket, limit: int) -> tuple[bytes, list[int]]:
    """One message and the fds that came with it; b"" at end of file."""
    fds = array.array("i")
    data, ancdata, flags, _addr = sock.recvmsg(limit, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise ValueError("message too long")
    return data, list(fds)


def parse_request_untrusted(data: bytes) -> Asked:
    """A worker's request, validated; raises only ``ValueError``."""
    if len(data) > MAX_REQUEST:
        raise ValueError("request too long")
    try:
        message = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError("request is not JSON") from exc
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ValueError("request has no op")
    try:
        op = Request(message["op"])
    except ValueError:
        raise ValueError(f"unknown op {message['op'][:32]!r}") from None
    if op in (Request.ADD_TAP, Request.REMOVE_TAP, Request.PORT_STATE):
        keys = {"op", "name", "state"} if op is Request.PORT_STATE else {"op", "name"}
        if set(message) != keys or not all(isinstance(message[k], str) for k in keys):
            raise ValueError(f"{op.value}: needs exactly {' and '.join(sorted(keys - {'op'}))}")
        name = message["name"]
        try:
            check_name(name, "tap")
        except HostError as exc:
            raise ValueError(str(exc)) from None
        if op is not Request.PORT_STATE:
            return Asked(op, name)
        if message["state"] not in PORT_STATES:
            raise ValueError(f"port_state: state must be one of {', '.join(PORT_STATES)}")
        return Asked(op, name, message["state"])
    if set(message) != {"op"}:
        raise ValueError(f"{op.value}: takes no arguments")
    return Asked(op)


# -- the monitor (root) -----------------------------------------------------------

def taps_of(config: Any) -> tuple[frozenset[str], bool]:
    """(tap names, isolated) of an ``UpConfig``."""
    return frozenset(p.tap for p in config.peers), config.mode == "mesh"


class Monitor:
    """The root half after the split (module docstring, steps 2, 4, 5)."""

    def __init__(self, host: HostSession, sock: socket.socket, worker: int, config: Any,
                 reread: Callable[[], Any] | None, read_keys: Callable[[Any], Any]) -> None:
        self.host = host
        self.sock = sock
        self.worker = worker
        self.reread = reread
        self.read_keys = read_keys
        self.allowed, self.isolated = taps_of(config)
        #: The port gate (its netlink socket opened now, before any filter): the
        #: LAN port's flush for every gateway, the group's requests for two
        #: gateways per site (refused without ``ha``).
        self.gate = PortGate()
        self.group = config.ha is not None
        self.follow: Path | None = None if config.ha is None else config.ha.follow
        self.refused = 0  # requests refused as invalid (counted, one log line each)
        self._stopping = False  # a stop signal was passed on
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def drop(self) -> None:
        """Keep CAP_NET_ADMIN (the host network) and CAP_KILL (to pass signals
        to a process of another user), with no_new_privs. Capabilities are per
        thread: call it while this is the only thread (the log writer stopped)."""
        drop_privileges(keep=(CAP_NET_ADMIN, CAP_KILL))

    def sandbox(self) -> list[str]:
        """The monitor's own confinement (:func:`enter_monitor_sandbox`), after
        :meth:`drop` and while it is the only thread."""
        return enter_monitor_sandbox(self.host.plan.state_dir)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    def run(self, received: list[signal.Signals] | None = None) -> int:
        """Serve the worker until it exits; its wait status. ``received``: stop
        signals that came after the fork and before this (``StopSignals``
        recorded them): passed on first, so none is lost."""
        old = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}
        for sig in received or ():
            self._on_signal(sig, None)
        pidfd = os.pidfd_open(self.worker)
        try:
            return self._loop(pidfd)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            os.close(pidfd)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.sock.close()
            self.gate.close()

    def _loop(self, pidfd: int) -> int:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        poller.register(self.sock, select.POLLIN)
        hung_up = False
        while True:
            ready = dict(poller.poll(HANGUP_GRACE * 1000 if hung_up else None))
            if pidfd in ready:
                _pid, status = os.waitpid(self.worker, 0)
                return status
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 64)
                while self._signals:
                    sig = self._signals.pop(0)
                    if sig == signal.SIGHUP or not self._stopping:
                        self._stopping = self._stopping or sig != signal.SIGHUP
                        self._kill(sig)
                    # A second SIGTERM/SIGINT is not passed on: the data plane is
                    # stopping already, and the host is restored once it has.
            if self.sock.fileno() in ready and not hung_up:
                if not self._serve_one():
                    hung_up = True
                    poller.unregister(self.sock)
            elif hung_up and not ready:
                log.warning("monitor: the data plane hung up but did not exit; killing it")
                self._kill(signal.SIGKILL)

    def _kill(self, sig: int) -> None:
        try:
            os.kill(self.worker, sig)
        except ProcessLookupError:
            pass  # it is exiting: the pidfd says so next
        except OSError as exc:
            log.warning("monitor: cannot pass signal %d to the data plane: %s", sig, exc.strerror)

    def _serve_one(self) -> bool:
        """Answer one request; False once the worker hung up."""
        try:
            data, fds = _receive(self.sock, MAX_REQUEST + 1)
        except ValueError:
            self._reply_error("request too long")
            return True
        except OSError:
            return False
        for fd in fds:  # the worker has nothing to hand the monitor
            os.close(fd)
        if not data:
            return False
        try:
            reply, out_fds = self._do(parse_request_untrusted(data))
        except (ValueError, BridgerError) as exc:
            self.refused += 1
            log.warning("monitor: refused a request of the data plane: %s", exc)
            self._reply_error(str(exc))
            return True
        except Exception as exc:  # the monitor must outlive any one request
            log.warning("monitor: a request of the data plane failed: %s: %s",
                        type(exc).__name__, exc)
            self._reply_error(f"{type(exc).__name__}: {exc}")
            return True
        with contextlib.suppress(OSError):
            _send(self.sock, reply, out_fds)
        return True

    def _reply_error(self, message: str) -> None:
        with contextlib.suppress(OSError):
            _send(self.sock, pickle.dumps(("error", message[:400])))

    def _do(self, asked: Asked) -> tuple[bytes, tuple[int, ...]]:
        host = self.host
        op, name = asked.op, asked.name
        if op in GROUP_REQUESTS:
            return self._do_group(asked), ()
        if op is Request.FLUSH_LAN:
            try:
                self.gate.flush(self.host.plan.lan)
            except GateError as exc:
                raise HostError(str(exc)) from exc
            return pickle.dumps(("ok", None)), ()
        if op is Request.ADD_TAP:
            assert name is not None
            if name not in self.allowed:
                raise ValueError(f"tap {name} is not in the configuration")
            if len(host.taps) >= MAX_TAPS:
                raise ValueError(f"more than {MAX_TAPS} taps")
            fd = host.add_tap(TapPlan(name, isolated=self.isolated))
            return pickle.dumps(("ok", name)), (fd,)
        if op is Request.REMOVE_TAP:
            assert name is not None
            host.remove_tap(name)  # refuses a tap that is not this run's
            return pickle.dumps(("ok", name)), ()
        if op is Request.STORM_COUNTERS:
            drops: dict[str, int] = {}
            if host.storm is not None:
                try:
                    host.storm.read()
                except NftError as exc:
                    raise HostError(str(exc)) from exc
                drops = dict(host.storm.drops)
            return pickle.dumps(("ok", drops)), ()
        assert op is Request.REREAD
        if self.reread is None:
            raise ConfigError("bridger was started without a way to read its config again")
        config = self.reread()
        private, psks = self.read_keys(config)
        # Only taps of the configuration now in force may be made (removing
        # checks the session's own taps instead).
        self.allowed, _ = taps_of(config)
        return pickle.dumps(("ok", (config, private, psks))), ()

    def _do_group(self, asked: Asked) -> bytes:
        """The group's four requests (``bridger.ha.gate``): our taps, bridge and files only."""
        if not self.group:
            raise ValueError(f"{asked.op.value}: this gateway is not one of a site's group")
        try:
            if asked.op is Request.PORT_STATE:
                assert asked.name is not None and asked.state is not None
                if asked.name not in self.host.taps:
                    raise ValueError(f"port_state: {asked.name} is not one of this run's taps")
                self.gate.set_state(asked.name, PORT_STATES[asked.state])
                return pickle.dumps(("ok", None))
            if asked.op is Request.FOLLOW_STATE:
                if self.follow is None:
                    raise ValueError("follow_state: this gateway does not follow keepalived")
                try:
                    return pickle.dumps(("ok", read_follow(self.follow)))
                except OSError:
                    return pickle.dumps(("ok", None))  # no state yet: not a refusal
            assert asked.op is Request.FDB
            bridge = socket.if_nametoindex(self.host.bridge_name)
            entries = [e for e in read_fdb() if e[1] == bridge]
            return pickle.dumps(("ok", entries))
        except OSError as exc:  # GateError included: the kernel's answer, not a refusal
            raise HostError(f"{asked.op.value}: {exc.strerror or exc}") from exc

    def outcome(self, status: int) -> int:
        """The monitor's exit code for the worker's wait status (it is restoring
        next), or the error for a data plane killed by a signal."""
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        # `bridger up` adds "; host network restored" once it is.
        raise HostError(f"the data plane (pid {self.worker}) was killed by {name}")


# -- the worker (unprivileged) ------------------------------------------------------


class MonitorClient:
    """The worker's end: one request at a time (a lock: the trio thread and the
    storm-counter thread both ask)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def call(self, op: Request, name: str | None = None,
             state: str | None = None) -> tuple[Any, list[int]]:
        message: dict[str, str] = {"op": op.value}
        if name is not None:
            message["name"] = name
        if state is not None:
            message["state"] = state
        with self._lock:
            try:
                _send(self.sock, json.dumps(message).encode())
                data, fds = _receive(self.sock, MAX_REPLY)
            except (OSError, ValueError) as exc:
                raise MonitorGone(f"the privileged monitor does not answer ({exc})") from exc
        if not data:
            raise MonitorGone("the privileged monitor is gone")
        status, value = pickle.loads(data)
        if status != "ok":
            for fd in fds:
                os.close(fd)
            if op is Request.REREAD:
                raise ConfigError(value)
            raise HostError(value)
        return value, fds


class StormCounters:
    """The kernel's storm drops per tap, read by the monitor (``nft`` needs root)."""

    def __init__(self, client: MonitorClient) -> None:
        self.client = client
        self.drops: dict[str, int] = {}

    def read(self) -> None:
        try:
            drops, _ = self.client.call(Request.STORM_COUNTERS)
        except HostError as exc:
            raise NftError(str(exc)) from exc
        self.drops = dict(drops)


class MonitorGroupHost:
    """The group's host actions (``bridger.ha.gate.GroupHost``) asked of the
    monitor: this process holds no CAP_NET_ADMIN and may open no netlink socket."""

    def __init__(self, client: MonitorClient) -> None:
        self.client = client
        self._names = {value: key for key, value in PORT_STATES.items()}

    def set_port_state(self, tap: str, state: int) -> None:
        """Asked only if the kernel's state differs (the runner re-applies every
        tap's state each second: a sysfs read instead of a round trip)."""
        with contextlib.suppress(OSError, ValueError):
            if int(Path(f"/sys/class/net/{tap}/brport/state").read_text()) == state:
                return
        self._ask(Request.PORT_STATE, tap, self._names[state])

    def flush_lan(self) -> None:
        self._ask(Request.FLUSH_LAN)

    def read_fdb(self) -> list[FdbEntry]:
        try:
            entries, _ = self.client.call(Request.FDB)
        except HostError as exc:
            raise OSError(errno.EIO, str(exc)) from exc
        return list(entries)

    def read_follow(self, path: Path) -> str:
        """(``path`` is the monitor's configured one: it reads that file alone.)"""
        try:
            text, _ = self.client.call(Request.FOLLOW_STATE)
        except HostError as exc:
            raise OSError(errno.EIO, str(exc)) from exc
        if text is None:
            raise FileNotFoundError(errno.ENOENT, "no state yet", str(path))
        return str(text)

    def close(self) -> None:
        pass  # the socket is the worker's

    def _ask(self, op: Request, name: str | None = None, state: str | None = None) -> None:
        try:
            self.client.call(op, name, state)
        except HostError as exc:
            raise GateError(errno.EIO, str(exc)) from exc


class WorkerHost:
    """The worker's stand-in for :class:`HostSession`: the same verbs, each
    asked of the monitor."""

    def __init__(self, client: MonitorClient, taps: dict[str, int], bridge_name: str,
                 storm: bool) -> None:
        self.client = client
        self.taps = taps
        self.bridge_name = bridge_name
        self.storm: StormCounters | None = StormCounters(client) if storm else None
        self.restored = False
        self._keys: tuple[Any, Any, Any] | None = None

    def add_tap(self, tap: TapPlan) -> int:
        _name, fds = self.client.call(Request.ADD_TAP, tap.name)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise HostError(f"cannot add tap {tap.name}: the monitor sent no fd")
        os.set_blocking(fds[0], False)
        self.taps[tap.name] = fds[0]
        return fds[0]

    def flush_lan(self) -> None:
        """Forget what the bridge learnt on the LAN port (asked of the monitor)."""
        self.client.call(Request.FLUSH_LAN)

    def remove_tap(self, name: str) -> None:
        fd = self.taps.pop(name, -1)
        if fd >= 0:
            os.close(fd)
        self.client.call(Request.REMOVE_TAP, name)

    def reread(self) -> Any:
        """The configuration as the monitor read it (keys kept for :meth:`read_keys`)."""
        self._keys = None
        value, _ = self.client.call(Request.REREAD)
        config, private, psks = value
        self._keys = (config, private, psks)
        return config

    def read_keys(self, config: Any) -> tuple[bytes, dict[str, bytes | None]]:
        """The keys read with ``config`` by the monitor (this process cannot read them)."""
        if self._keys is None or self._keys[0] is not config:
            raise ConfigError("the keys of this configuration were not read")
        return self._keys[1], self._keys[2]

    def group_host(self) -> MonitorGroupHost:
        """The group's port gate, flush, FDB and keepalived state, asked of the monitor."""
        return MonitorGroupHost(self.client)

    def restore(self) -> None:
        """The monitor restores; here only the fds close."""
        for fd in self.taps.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.taps.clear()
        self.restored = True


@dataclass
class Split:
    """One side of the split: the monitor's (``monitor``) or the worker's (``host``)."""

    monitor: Monitor | None = None
    host: WorkerHost | None = None
    monitor_pid: int = 0


def split(host: HostSession, user: ServiceUser, config: Any,
          reread: Callable[[], Any] | None, read_keys: Callable[[Any], Any]) -> Split:
    """Fork (module docstring, steps 1-3 up to the sandbox)."""
    run_dir = prepare_worker_dir(host.plan.state_dir, user)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    monitor_pid = os.getpid()
    # What the halves share is frozen: no collection in either ever scans those
    # objects again or rewrites their headers, so their pages stay shared (the
    # gc module's advice for a fork without exec). A full collection here or
    # after the fork would cost ~20 ms of a start's CPU and free a few hundred
    # objects (the young collections during the start took the rest): only
    # the young generations are collected first.
    gc.collect(1)
    gc.freeze()
    pid = os.fork()
    if pid:
        theirs.close()
        return Split(monitor=Monitor(host, mine, pid, config, reread, read_keys))
    mine.close()
    # Its own process group: a terminal's Ctrl-C reaches the monitor alone,
    # which passes it on once.
    os.setpgid(0, 0)
    taps = host.detach()
    os.chdir(run_dir)
    worker = WorkerHost(MonitorClient(theirs), taps, host.bridge_name, host.storm is not None)
    return Split(host=worker, monitor_pid=monitor_pid)


def enter_monitor_sandbox(state_dir: Path) -> list[str]:
    """The root monitor's confinement, after its drop (no_new_privs set) and
    before any other thread exists (Landlock binds the calling thread): writes
    only in ``state_dir``, to ``/dev/net/tun`` and beneath ``/proc/sys/net``;
    nothing but ``nft`` (and its ELF interpreter) may be executed; the seccomp
    filter ``seccomp.MONITOR``. Notes for the log (a protection this kernel
    lacks); raises HostError if the filter cannot be installed."""
    notes = []
    nft = nft_path()
    executables = () if nft is None else \
        tuple(p for p in (nft, landlock.interpreter_of(nft)) if p is not None)
    try:
        landlock.restrict_writes(state_dir, (TUN_PATH, PROC_SYS_NET), executables=executables)
    except HostError as exc:
        notes.append(f"writes and programs not confined ({exc})")
    if seccomp.supported():
        seccomp.install(seccomp.MONITOR)
    else:
        notes.append("no system-call filter on this architecture")
    return notes


def enter_sandbox(user: ServiceUser | None, monitor_pid: int = 0,
                  write_dir: Path = Path(".")) -> list[str]:
    """Become ``user`` (None: already unprivileged, only lock down), then the
    Landlock rule and the seccomp filter. Before any thread starts. Returns
    notes for the log (a protection this kernel lacks); raises HostError if
    the drop itself fails."""
    from bridger.host.privileges import lock_down

    if user is not None:
        drop_to_user(user)
        die_with_parent()
        if monitor_pid and os.getppid() != monitor_pid:
            os._exit(1)  # the monitor died before we asked for its death signal
    else:
        lock_down()
    notes = []
    # Prepared taps are attached at reload through /dev/net/tun; the split data
    # plane is handed its taps' fds and never opens it.
    files = () if user is not None else (TUN_PATH,)
    try:
        landlock.restrict_writes(write_dir, files)
    except HostError as exc:
        notes.append(f"writes not confined to {write_dir.resolve()} ({exc})")
    if seccomp.supported():
        seccomp.install()
    else:
        notes.append("no system-call filter on this architecture")
    return notes


#: Modules the data plane may import lazily, loaded before the drop: after it,
#: Python's own files may be out of the service user's reach (an interpreter
#: under /root, say), and Landlock or a read error must not surface as a
#: ModuleNotFoundError in the middle of a reload or a DNS lookup.
PRELOAD = (
    "encodings.idna", "encodings.punycode", "encodings.ascii", "encodings.latin_1",
    "stringprep", "unicodedata", "json", "json.decoder", "json.encoder", "pickle",
    "bridger.config", "bridger.keys", "bridger.status.control", "bridger.status.counters",
    "bridger.status.dashboard", "bridger.status.logs", "bridger.service.reload",
    "bridger.shell.resolver", "bridger.native.contract",
)
DASHBOARD_PRELOAD = (
    "rich", "rich.console", "rich.live", "rich.table", "rich.text", "rich.box", "rich.logging",
    "rich.markup", "rich.emoji", "rich.cells", "rich.segment", "rich.style", "rich.color",
    "rich.padding", "rich.panel", "rich.rule", "rich.measure", "rich.align", "rich.containers",
    "rich.control", "rich.highlighter", "rich.jupyter", "rich.live_render", "rich.pretty",
    "rich.protocol", "rich.region", "rich.screen", "rich.scope", "rich.styled",
    "rich.terminal_theme",
    "rich.theme", "rich._loop", "rich._wrap", "rich._ratio", "rich._pick", "rich.constrain",
    "rich.file_proxy", "rich._log_render", "rich.traceback", "rich.syntax", "rich._emoji_codes",
    "rich._unicode_data", "rich.ansi", "rich.columns", "rich.default_styles",
    "rich.errors", "rich.filesize", "rich.repr", "rich.progress_bar", "rich.spinner", "rich.status",
    "rich._spinners", "rich._null_file", "rich._fileno", "rich._timer", "rich._export_format",
)
METRICS_PRELOAD = ("bridger.status.metrics",)
#: Two gateways per site (the runner is built after the drop, at assembly).
HA_PRELOAD = ("secrets", "bridger.ha.runner", "bridger.ha.election")


def preload(config: Any) -> list[str]:
    """Import what the data plane of ``config`` may import later; the names
    that failed (absent optional parts) are returned, not raised."""
    import importlib

    names = list(PRELOAD)
    if getattr(config, "dashboard", False):
        names += DASHBOARD_PRELOAD
    if getattr(config, "metrics", None):
        names += METRICS_PRELOAD
    if getattr(config, "ha", None) is not None:
        names += HA_PRELOAD
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    with contextlib.suppress(LookupError):
        "bridger.example".encode("idna")  # the codec registry caches its lookups
    return missing
