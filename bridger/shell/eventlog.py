"""One log line per meaningful protocol event (retries and cookies stay quiet)."""

from __future__ import annotations

import logging

from bridger.protocol import (
    Address,
    EndpointChanged,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    HandshakeInitiated,
    InternalError,
    PathChanged,
    PathMtuChanged,
    PeerUnreachable,
    SessionExpired,
)
from bridger.protocol.relay import via_relay
from bridger.shell.udp import format_address

log = logging.getLogger("bridger")


def _where(addr: Address | None) -> str | None:
    """An endpoint as people read it: "203.0.113.5:55555", "via site-a"."""
    relay = via_relay(addr)
    return f"via {relay}" if relay is not None else format_address(addr)


def log_event(event: Event) -> None:
    who = f"peer {event.peer}: " if event.peer else ""
    match event:
        case HandshakeCompleted(rekey=True):
            log.debug("%srekeyed", who)
        case HandshakeCompleted(rtt=rtt):
            rtt_text = "" if rtt is None else f" (rtt {rtt * 1000:.1f} ms)"
            log.info("%shandshake complete: link up%s", who, rtt_text)
        case HandshakeInitiated(retry=False):
            log.info("%shandshake: contacting peer", who)
        case HandshakeGaveUp(after=after, frames_dropped=n):
            log.warning("%sunreachable: no handshake answer for %.0fs (%d frames dropped)",
                        who, after, n)
        case EndpointChanged(old=old, new=new) if via_relay(old) is None and via_relay(
                new) is None:  # to or from a relay: the PathChanged line says it
            log.info("%sendpoint %s -> %s", who, _where(old) or "unknown", _where(new))
        case PeerUnreachable(silent_for=silent):
            log.warning("%ssilent for %.0fs: re-handshaking", who, silent)
        case SessionExpired():
            log.warning("%ssession expired after long silence: link down", who)
        case PathChanged(old=old_path, kind=kind, via=via, endpoint=endpoint, how=how):
            where = f"relayed via {via}" if via else kind
            at = "" if via or endpoint is None else f" {format_address(endpoint)} ({how})"
            log.info("%spath %s -> %s%s", who, old_path, where, at)
        case PathMtuChanged(old=old_mtu, new=new_mtu):
            log.info("%spath MTU %d -> %d", who, old_mtu, new_mtu)
        case InternalError(detail=detail, suppressed=suppressed):
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            log.error("%sbug: a datagram raised in the protocol core, dropped%s\n%s",
                      who, more, detail.rstrip())
        case _:
            log.debug("%s", event)
