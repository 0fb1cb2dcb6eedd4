"""Userspace impairing wire: the I/O adapter around :mod:`bridger.lab.impair`.

Used when the kernel has no ``netem``. Runs inside the lab's WAN namespace as
``python3 -m bridger.lab.wire run --pair GW_SIDE:ROUTER_SIDE ...``:

1. one AF_PACKET socket per interface; frames the kernel sent itself
   (PACKET_OUTGOING) are ignored;
2. frames from the gateway side go to the router side untouched;
3. frames from the router side (the router's egress towards the gateway, where
   netem would sit) go through an :class:`ImpairedLink` and leave when due;
4. stdin carries one JSON object per line with new knobs; EOF (the lab process
   died) ends the wire, so a killed lab never leaves a forwarder behind;
5. an interface that disappears (its gateway's namespace was deleted) ends its
   own pair only, as a cable pulled from a switch: the other sites keep their
   WAN.  The wire ends when no pair is left.

``python3 -m bridger.lab.wire offload-off IF...`` turns off checksum and
segmentation offloads, so frames seen by a packet socket are complete and can be
re-sent as they are (a veth otherwise hands over partial checksums and 64 KiB
TSO frames).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import random
import select
import socket
import sys
import time
from dataclasses import dataclass

from bridger.lab.impair import ImpairedLink, Impairment, ImpairmentError

ETH_P_ALL = 0x0003
SIOCETHTOOL = 0x8946
#: Legacy ethtool "set" commands (include/uapi/linux/ethtool.h); still honoured.
ETHTOOL_STXCSUM = 0x00000017
ETHTOOL_SSG = 0x00000019
ETHTOOL_STSO = 0x0000001F
ETHTOOL_SGSO = 0x00000024
ETHTOOL_SGRO = 0x0000002C

#: Frames read from one socket before looking at the others (fairness).
RECV_BATCH = 64
#: Errors that mean our interface is gone (namespace being deleted).
GONE_ERRNOS = {errno.ENETDOWN, errno.ENXIO, errno.ENODEV}


class _EthtoolValue(ctypes.Structure):
    _fields_ = (("cmd", ctypes.c_uint32), ("data", ctypes.c_uint32))


class _IfReq(ctypes.Structure):
    _fields_ = (
        ("ifr_name", ctypes.c_char * 16),
        ("ifr_data", ctypes.c_void_p),
        ("pad", ctypes.c_char * 16),
    )


def disable_offloads(ifname: str) -> None:
    """Turn off tx checksum, SG, TSO, GSO and GRO on ``ifname`` (current netns)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for cmd in (ETHTOOL_SGRO, ETHTOOL_SGSO, ETHTOOL_STSO, ETHTOOL_SSG, ETHTOOL_STXCSUM):
            value = _EthtoolValue(cmd, 0)
            req = _IfReq(ifname.encode(), ctypes.addressof(value))
            try:
                fcntl.ioctl(sock.fileno(), SIOCETHTOOL, req)
            except OSError as exc:
                # A feature the device cannot toggle is already in its fixed state.
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise


@dataclass
class _Port:
    name: str
    sock: socket.socket


@dataclass
class _Pair:
    gw: _Port
    router: _Port
    link: ImpairedLink[bytes]  # router -> gateway direction
    send_errors: int = 0
    passed: int = 0  # frames forwarded without impairment (either direction)


class _PairGone(Exception):
    """An interface of the pair being served no longer exists."""


def _exists(port: _Port) -> bool:
    try:
        socket.if_nametoindex(port.name)
    except OSError:
        return False
    return True


def _failed(pair: _Pair, exc: OSError) -> None:
    """An error on one of ``pair``'s sockets: raise :class:`_PairGone` if an
    interface vanished; otherwise (a port set down, which reports ENETDOWN once)
    count it and go on."""
    if exc.errno in GONE_ERRNOS and not (_exists(pair.gw) and _exists(pair.router)):
        raise _PairGone(pair.gw.name) from exc
    pair.send_errors += 1


def _open(ifname: str) -> _Port:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return _Port(ifname, sock)


def _send(pair: _Pair, port: _Port, frame: bytes) -> None:
    try:
        port.sock.send(frame)
    except OSError as exc:  # EMSGSIZE, ENOBUFS: counted, like a lossy wire
        _failed(pair, exc)


def _drain(pair: _Pair, port: _Port, now: float) -> None:
    for _ in range(RECV_BATCH):
        try:
            frame, addr = port.sock.recvfrom(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            _failed(pair, exc)
            return
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        if port is pair.gw:
            pair.passed += 1
            _send(pair, pair.router, frame)
        elif pair.link.impairment.is_noop and not pair.link:
            pair.passed += 1
            _send(pair, pair.gw, frame)
        else:
            pair.link.submit(frame, now)


def _stats(pairs: list[_Pair]) -> str:
    return json.dumps(
        {
            p.gw.name: {
                **vars(p.link.counters),
                "passed": p.passed,
                "send_errors": p.send_errors,
                "queued": len(p.link),
            }
            for p in pairs
        }
    )


def _command(line: bytes, pairs: list[_Pair]) -> None:
    """Apply one control line; a bad one is reported on stderr, never fatal."""
    try:
        msg = json.loads(line)
        if msg.get("cmd") == "stats":
            print(_stats(pairs), flush=True)
            return
        knobs = Impairment(**msg["impairment"])
    except (ValueError, KeyError, TypeError, ImpairmentError) as exc:
        print(f"wire: ignoring control line: {exc}", file=sys.stderr, flush=True)
        return
    for pair in pairs:
        pair.link.impairment = knobs


def _end(pair: _Pair, pairs: list[_Pair], by_fd: dict[int, tuple[_Pair, _Port]]) -> None:
    """``pair`` lost an interface: stop serving it (the other pairs go on)."""
    pairs.remove(pair)
    for port in (pair.gw, pair.router):
        by_fd.pop(port.sock.fileno(), None)
        port.sock.close()
    print(f"wire: {pair.gw.name} or {pair.router.name} is gone; that pair ends",
          file=sys.stderr, flush=True)


def run(pair_specs: list[tuple[str, str]], seed: int, knobs: Impairment) -> int:
    """Forward until stdin closes or every pair has lost an interface."""
    rng = random.Random(seed)
    pairs = [
        _Pair(_open(gw), _open(rt), ImpairedLink(knobs, random.Random(rng.random())))
        for gw, rt in pair_specs
    ]
    by_fd = {}
    for pair in pairs:
        by_fd[pair.gw.sock.fileno()] = (pair, pair.gw)
        by_fd[pair.router.sock.fileno()] = (pair, pair.router)
    stdin = sys.stdin.buffer.fileno()
    pending = b""
    print("ready", flush=True)
    while pairs:
        deadlines = [d for p in pairs if (d := p.link.next_deadline()) is not None]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        readable, _, _ = select.select([stdin, *by_fd], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            if fd == stdin:
                chunk = os.read(stdin, 65536)
                if not chunk:
                    return 0
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        _command(line, pairs)
            elif fd in by_fd:  # not of a pair that ended in this round
                pair, port = by_fd[fd]
                try:
                    _drain(pair, port, now)
                except _PairGone:
                    _end(pair, pairs, by_fd)
        now = time.monotonic()
        for pair in list(pairs):
            try:
                for frame in pair.link.pop_due(now):
                    _send(pair, pair.gw, frame)
            except _PairGone:
                _end(pair, pairs, by_fd)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bridger.lab.wire")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="forward frames between interface pairs")
    p_run.add_argument("--pair", action="append", required=True, metavar="GW_IF:ROUTER_IF")
    p_run.add_argument("--seed", type=int, default=0)
    p_run.add_argument("--impairment", default="{}", help="initial knobs as JSON")
    p_off = sub.add_parser("offload-off", help="disable checksum/segmentation offloads")
    p_off.add_argument("ifnames", nargs="+")
    args = parser.parse_args(argv)
    if args.cmd == "offload-off":
        for name in args.ifnames:
            disable_offloads(name)
        return 0
    specs = []
    for spec in args.pair:
        gw, sep, rt = spec.partition(":")
        if not sep or not gw or not rt:
            parser.error(f"--pair wants GW_IF:ROUTER_IF, got {spec!r}")
        specs.append((gw, rt))
    try:
        knobs = Impairment(**json.loads(args.impairment))
    except (ValueError, TypeError) as exc:
        parser.error(f"--impairment: {exc}")
    return run(specs, args.seed, knobs)


if __name__ == "__main__":
    raise SystemExit(main())
