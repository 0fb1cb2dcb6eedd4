"""UDP GSO grouping and GRO splitting, and both offloads on a real socket pair."""

from __future__ import annotations

import socket
import struct

import pytest

from bridger.fastpath import udp

A, B = ("192.0.2.1", 1), ("192.0.2.2", 2)


def test_batches_group_equal_sizes_to_one_address() -> None:
    d = [(b"x" * 100, A)] * 3 + [(b"y" * 40, A), (b"z" * 100, A), (b"w" * 100, B)]
    out = [(len(g), addr, size) for g, addr, size in udp.gso_batches(d)]
    # the shorter datagram closes a group; a new address starts one
    assert out == [(4, A, 100), (1, A, 100), (1, B, 100)]


def test_batches_respect_segment_and_byte_limits() -> None:
    d = [(b"x" * 100, A)] * 150
    sizes = [len(g) for g, _, _ in udp.gso_batches(d)]
    assert sizes == [64, 64, 22]
    big = [(b"x" * 1400, A)] * 100
    for group, _, _ in udp.gso_batches(big):
        assert sum(map(len, group)) <= udp.MAX_GSO_BYTES


def test_split_gro_cuts_at_the_reported_size() -> None:
    cmsg = [(udp.SOL_UDP, udp.UDP_GRO, struct.pack("=i", 4))]
    assert udp.split_gro(b"aaaabbbbcc", cmsg) == [b"aaaa", b"bbbb", b"cc"]
    assert udp.split_gro(b"aaaa", []) == [b"aaaa"]
    assert udp.split_gro(b"aaaa", [(udp.SOL_UDP, udp.UDP_GRO, b"\0")]) == [b"aaaa"]


def test_gso_send_arrives_as_separate_datagrams() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        if not udp.gso_supported(tx):
            pytest.skip("kernel without UDP_SEGMENT")
        parts = [bytes([i]) * 1000 for i in range(5)] + [b"end"]
        tx.sendmsg(parts, udp.gso_cmsg(1000), 0, rx.getsockname())
        got = [rx.recv(2000) for _ in parts]
        assert got == parts
    finally:
        rx.close()
        tx.close()
