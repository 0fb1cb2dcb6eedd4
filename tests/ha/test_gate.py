"""The gate's netlink messages as bytes (no kernel needed)."""

from __future__ import annotations

import contextlib
import struct

import pytest

from bridger.ha.gate import (
    AF_BRIDGE,
    RTM_SETLINK,
    fdb_request,
    parse_fdb_untrusted,
    setlink_request,
)


def test_setlink_request_is_what_bridge_link_set_sends() -> None:
    msg = setlink_request(7, 0, 42)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), RTM_SETLINK, 0x5, 42)
    family, ifindex = struct.unpack_from("=BxHi", msg, 16)[0], struct.unpack_from("=i", msg, 20)[0]
    assert (family, ifindex) == (AF_BRIDGE, 7)
    # IFLA_PROTINFO (nested) holding IFLA_BRPORT_STATE = 0
    assert msg[32:] == struct.pack("=HH", 12, 12 | 0x8000) + struct.pack("=HH", 5, 1) + b"\0" * 4
    flush = setlink_request(7, None, 1)
    assert flush[32:] == struct.pack("=HH", 8, 12 | 0x8000) + struct.pack("=HH", 4, 24)


def _neigh(seq: int, ifindex: int, state: int, mac: bytes, master: int) -> bytes:
    body = struct.pack("=BxxxiHBB", AF_BRIDGE, ifindex, state, 0, 0)
    body += struct.pack("=HH", 10, 2) + mac + b"\0\0"
    body += struct.pack("=HHI", 8, 9, master)
    return struct.pack("=IHHII", 16 + len(body), 28, 2, seq, 0) + body


def test_fdb_dump_parsing_keeps_learnt_unicast_entries() -> None:
    learnt = bytes.fromhex("020000000001")
    data = (_neigh(1, 4, 0x02, learnt, 3) + _neigh(1, 4, 0x80, bytes(6), 3)
            + _neigh(1, 5, 0x02, bytes.fromhex("333300000001"), 3)
            + _neigh(9, 4, 0x02, learnt, 3))  # another dump's
    entries, done = parse_fdb_untrusted(data, 1)
    assert entries == [(4, 3, learnt)] and not done
    assert parse_fdb_untrusted(struct.pack("=IHHII", 20, 3, 2, 1, 0) + bytes(4), 1) == ([], True)
    assert fdb_request(5)[4:6] == struct.pack("=H", 30)


@pytest.mark.parametrize("cut", range(1, 40))
def test_fdb_dump_parsing_of_cut_messages_raises_only_value_error(cut: int) -> None:
    data = _neigh(1, 4, 0x02, bytes.fromhex("020000000001"), 3)[:cut]
    with contextlib.suppress(ValueError):
        parse_fdb_untrusted(data, 1)
