"""Keep a peer's endpoint current for a configured DNS name, off the data path.

The name is resolved at start (retried until it resolves). After that it is
re-resolved only while the peer is silent (not ``up``), and an answer is only
applied to a peer that is not ``up``: the endpoint of a live
peer is the address its authenticated packets come from, which a NAT that
rewrites ports or a roaming peer may have moved away from the DNS answer, and
must not be overwritten. A silent peer may have a new address (dynamic DNS).
"""

from __future__ import annotations

import logging
import socket

import trio

from bridger.config import is_ip_literal
from bridger.protocol import Output, Peer
from bridger.shell.forward import Forwarder
from bridger.shell.udp import format_address, normalise_address

log = logging.getLogger("bridger")

#: Seconds between attempts while the name does not resolve.
RESOLVE_RETRY = (2.0, 5.0, 10.0)
#: Seconds between checks whether the peer went silent (then: re-resolve).
SILENT_CHECK = 10.0


async def resolve_peer(fwd: Forwarder, peer: Peer, host: str, port: int) -> None:
    family = 0 if fwd.udp.dual_stack else socket.AF_INET
    who = f"peer {peer.name} ({host})" if peer.name else f"peer {host}"
    failures = 0
    resolved_once = False
    while True:
        try:
            infos = await trio.socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
        except (socket.gaierror, OSError) as exc:
            delay = RESOLVE_RETRY[min(failures, len(RESOLVE_RETRY) - 1)]
            log.warning("%s does not resolve (%s); retrying in %.0fs", who, exc, delay)
            failures += 1
            await trio.sleep(delay)
            continue
        failures = 0
        addrs = [normalise_address(info[4]) for info in infos]
        # A live peer's endpoint is where its authenticated packets come from.
        if addrs and peer.endpoint not in addrs and peer.stats().state != "up":
            if resolved_once:
                log.info("%s now resolves to %s", who, format_address(addrs[0]))
            now = fwd.now()
            out = Output()
            peer.set_endpoint(addrs[0], now, out)
            fwd.handle(out, now)
        resolved_once = True
        if is_ip_literal(host):
            return
        # Only a silent peer is re-resolved.
        while True:
            await trio.sleep(SILENT_CHECK)
            if peer.stats().state != "up":
                break
