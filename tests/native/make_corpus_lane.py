"""Write the seed corpora of the lane fuzz targets (fuzz_lane_rx.c, fuzz_lane_tx.c).

    python -m tests.native.make_corpus_lane

tests/native/corpus/lane_rx/: UDP receives in fuzz_lane_rx.c's record layout:
sealed FRAME and FRAME_CSUM datagrams of ordinary frames (IPv4/IPv6 TCP and
UDP, ARP, VLAN-tagged, DHCP and RA that the guard looks at), keepalives,
handshake-like raw datagrams, replays, wrong sources, tampered tags, GRO
batches of TCP segments.  tests/native/corpus/lane_tx/: tap reads in
fuzz_lane_tx.c's layout: plain frames, partial-checksum frames, SYNs with an
MSS option, TCP superframes (IPv4/IPv6, VLAN tags, options), bad vnet
headers.  Deterministic.
"""

from __future__ import annotations

import struct
from pathlib import Path

from bridger.fastpath.segment import segment_tcp
from bridger.fastpath.vnet import VnetHdr

HERE = Path(__file__).parent / "corpus"
DST = bytes.fromhex("020000000001")
SRC = bytes.fromhex("020000000002")


def eth(ethertype: int, body: bytes, tags: int = 0, dst: bytes = DST) -> bytes:
    head = dst + SRC
    for i in range(tags):
        head += struct.pack("!HH", 0x8100, 1 + i)
    return head + struct.pack("!H", ethertype) + body


def ipv4(proto: int, l4: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0,
                       bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])) + l4


def ipv6(nh: int, l4: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), nh, 64,
                       bytes.fromhex("20010db8" + "00" * 11 + "01"),
                       bytes.fromhex("20010db8" + "00" * 11 + "02")) + l4


def tcp(payload: bytes, flags: int = 0x18, options: bytes = b"") -> bytes:
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", 40000, 5201, 1, 2, doff << 4, flags, 65535, 0, 0) \
        + options + payload


def udp(payload: bytes, sport: int = 4000, dport: int = 5000) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


ARP = eth(0x0806, bytes(28))
TCP4 = eth(0x0800, ipv4(6, tcp(b"x" * 100)))
TCP6 = eth(0x86DD, ipv6(6, tcp(b"y" * 60)))
UDP4 = eth(0x0800, ipv4(17, udp(b"u" * 30)))
DHCP = eth(0x0800, ipv4(17, udp(bytes(240), 68, 67)), dst=b"\xff" * 6)
RA = eth(0x86DD, ipv6(58, bytes([134, 0]) + bytes(14)), dst=bytes.fromhex("333300000001"))
VLAN1 = eth(0x0800, ipv4(6, tcp(b"v" * 40)), tags=1)
VLAN2 = eth(0x86DD, ipv6(6, tcp(b"w" * 40)), tags=2)
BIG = eth(0x0800, ipv4(6, tcp(b"z" * 1400)))


# ---- lane_rx ----------------------------------------------------------------

def raw_seg(data: bytes) -> bytes:
    return struct.pack("<BH", 0, len(data)) + data


def sealed(frame: bytes, *, peer: int = 0, ctr: int = 0, mode: int = 0, inner: int = 1,
           csum: tuple[int, int] = (34, 16), tamper: int = 0) -> bytes:
    kind = 1 | (4 | tamper << 3 if tamper else 0)
    out = struct.pack("<BBBHB", kind, peer, mode, ctr, inner)
    if inner == 5:
        out += struct.pack("<HH", *csum)
    return out + struct.pack("<H", len(frame)) + frame


def train(frame: bytes, reps: int, ctr: int = 0) -> bytes:
    """A sealed FRAME and 8 * reps copies of it under the next counters."""
    return struct.pack("<BBBHB", 2, 0, 0, ctr, 1) + struct.pack("<H", len(frame)) + frame \
        + bytes([reps])


def receive(src: int, segs: list[bytes], gso: int = 0) -> bytes:
    return struct.pack("<BBH", src, len(segs) - 1, gso) + b"".join(segs)


def rx_seeds() -> dict[str, bytes]:
    s: dict[str, bytes] = {}
    frames = {"tcp4": TCP4, "tcp6": TCP6, "udp4": UDP4, "arp": ARP, "vlan1": VLAN1,
              "vlan2": VLAN2, "dhcp": DHCP, "ra": RA, "big": BIG}
    for i, (name, f) in enumerate(frames.items()):
        port = i % 3
        s[f"frame-{name}"] = bytes([i & 7, 0]) + receive(port, [sealed(f, peer=port, ctr=i)])
    s["csum-tcp4"] = bytes([1, 0]) + receive(0, [sealed(TCP4, inner=5, csum=(34, 16))])
    s["csum-tcp6-vnet"] = bytes([3, 0]) + receive(
        1, [sealed(TCP6, peer=1, inner=5, csum=(54, 16))])
    s["csum-bad"] = bytes([1, 0]) + receive(0, [sealed(TCP4, inner=5, csum=(4, 9000))])
    s["keepalive"] = bytes([0, 0]) + receive(0, [sealed(b"", mode=8)])
    s["payload-probe"] = bytes([0, 0]) + receive(0, [sealed(b"\x00" * 12, inner=3)])
    s["replay"] = bytes([0, 1]) + receive(0, [sealed(TCP4, ctr=7)]) + receive(
        0, [sealed(TCP4, ctr=7)]) + receive(0, [sealed(TCP4, ctr=7, mode=1)])
    s["too-old"] = bytes([0, 0]) + receive(0, [sealed(TCP4, ctr=500, mode=1)]) + receive(
        0, [sealed(TCP4, ctr=3)])
    s["near-limit"] = bytes([0, 0]) + receive(0, [sealed(TCP4, ctr=0, mode=2)]) + receive(
        0, [sealed(TCP4, ctr=0, mode=3)])
    s["expired"] = bytes([0, 0]) + receive(0, [sealed(TCP4, peer=3)])
    s["unknown-index"] = bytes([0, 0]) + receive(0, [sealed(TCP4, peer=4)])
    s["wrong-key"] = bytes([0, 0]) + receive(0, [sealed(TCP4, peer=5)])
    s["tampered"] = bytes([0, 0]) + receive(0, [sealed(TCP4, tamper=5)])
    s["wrong-source"] = bytes([0, 0]) + b"".join(
        receive(src, [sealed(TCP4, ctr=src)]) for src in (3, 4, 5, 6, 7))
    s["handshake"] = bytes([0, 0]) + receive(0, [raw_seg(struct.pack("<I", 1) + bytes(144))])
    s["cookie"] = bytes([0, 0]) + receive(3, [raw_seg(struct.pack("<I", 3) + bytes(60))])
    s["short"] = bytes([0, 0]) + receive(0, [raw_seg(b"\x04\x00\x00\x00")])
    s["too-big"] = bytes([0x40, 0]) + receive(0, [sealed(BIG)])
    s["blocked"] = bytes([0x20, 0]) + receive(1, [sealed(TCP6, peer=1)])
    s["port2-ro"] = bytes([0x84, 0]) + receive(2, [sealed(UDP4, peer=2)])
    s["guard-all"] = bytes([0x17, 0]) + b"".join(
        receive(p, [sealed(f, peer=p, ctr=i)]) for i, (p, f) in
        enumerate([(0, DHCP), (1, RA), (2, VLAN1), (0, VLAN2), (1, TCP6)]))
    seg = eth(0x0800, ipv4(6, tcp(b"s" * 1000)))
    pt = 1 + len(seg)
    size = pt + 32
    s["gro-frames"] = bytes([1, 0]) + receive(
        0, [sealed(seg, ctr=i) for i in range(6)], gso=size)
    s["gro-csum-vnet"] = bytes([1, 0]) + receive(
        0, [sealed(seg, ctr=i, inner=5, csum=(34, 16)) for i in range(5)], gso=size + 4)
    s["gro-mixed"] = bytes([3, 0]) + receive(
        1, [sealed(seg, peer=1, ctr=0), raw_seg(bytes(size)), sealed(seg, peer=1, ctr=1)],
        gso=size)
    s["gro-payload-mid"] = bytes([0, 0]) + receive(
        0, [sealed(seg, ctr=0), sealed(seg, ctr=1, inner=3), sealed(seg, ctr=2)], gso=size)
    s["gro-garbage-size"] = bytes([0, 2]) + receive(0x80, [sealed(seg, ctr=9)], gso=100)
    s["many"] = bytes([7, 0]) + b"".join(
        receive(i % 3, [sealed(TCP4, peer=i % 3, ctr=i)]) for i in range(30))
    sup = eth(0x0800, ipv4(6, tcp(bytes(range(256)) * 16)))
    segs, start = segment_tcp(sup, VnetHdr(1, 1, 54, 1000, 34, 16), 1100)
    size = 32 + 5 + len(segs[0])
    for cfg, name in ((1, "gro-tcp-run-vnet"), (0, "gro-tcp-run-plain")):
        s[name] = bytes([cfg, 0]) + receive(
            0, [sealed(g, ctr=i, inner=5, csum=(start, 16)) for i, g in enumerate(segs)],
            gso=size)
    tiny = ARP[:14]
    # Three receives: the third pushes the pending frames past MAX_PEND (a
    # fourth landing on them is tests/native/crashes/lane_rx/).
    s["gro-train"] = bytes([0, 0]) + b"".join(
        receive(0, [train(tiny, 150, ctr=2000 * i), sealed(tiny, ctr=2000 * i + 1999)],
                gso=32 + 1 + len(tiny)) for i in range(3))
    return s


# ---- lane_tx ----------------------------------------------------------------

def tx_raw(data: bytes) -> bytes:
    return struct.pack("<BH", 0, len(data)) + data


def tx_hdr(frame: bytes, flags: int = 0, gso_type: int = 0, hdr_len: int = 0,
           gso_size: int = 0, cs: int = 0, co: int = 0) -> bytes:
    return struct.pack("<BBBHHHHH", 1, flags, gso_type, hdr_len, gso_size, cs, co,
                       len(frame)) + frame


def tx_tcp(opts: int, payload: int, gso: int = 1448, ipw: int = 0, tcpw: int = 0,
           flags: int = 0x18, csum: tuple[int, int] | None = None, pattern: bytes = b"ab") -> bytes:
    if csum is not None:
        opts |= 0x40
    out = struct.pack("<BBBBHHB", 2, opts, ipw, tcpw, payload, gso, flags)
    if csum is not None:
        out += struct.pack("<HH", *csum)
    return out + bytes([len(pattern)]) + pattern


def tx_seeds() -> dict[str, bytes]:
    s: dict[str, bytes] = {}
    for name, f in {"tcp4": TCP4, "tcp6": TCP6, "udp4": UDP4, "arp": ARP, "vlan1": VLAN1,
                    "vlan2": VLAN2, "dhcp": DHCP, "ra": RA, "big": BIG}.items():
        s[f"plain-{name}"] = bytes([0, 0]) + tx_raw(f)
        s[f"vnet-{name}"] = bytes([1, 0]) + tx_hdr(f)
    s["partial-tcp4"] = bytes([1, 0]) + tx_hdr(TCP4, flags=1, cs=34, co=16)
    s["partial-udp6"] = bytes([1, 0]) + tx_hdr(
        eth(0x86DD, ipv6(17, udp(b"q" * 50))), flags=1, cs=54, co=6)
    s["partial-bad"] = bytes([1, 0]) + tx_hdr(TCP4, flags=1, cs=4, co=3000)
    syn = eth(0x0800, ipv4(6, tcp(b"", 0x02, bytes([2, 4, 0x05, 0xB4]))))
    s["syn-mss"] = bytes([1, 0]) + tx_hdr(syn, flags=1, cs=34, co=16) + tx_hdr(syn)
    s["super4"] = bytes([1, 0]) + tx_tcp(0, 8000)
    s["super6"] = bytes([1, 0]) + tx_tcp(1, 8000)
    s["super4-vlan"] = bytes([1, 0x10]) + tx_tcp(2, 5000, ipw=2, tcpw=3)
    s["super6-qinq"] = bytes([1, 0]) + tx_tcp(1 | 6, 4000, tcpw=10)
    s["super4-ecn-fin"] = bytes([1, 0]) + tx_tcp(8, 3000, flags=0x99)
    s["super-64k"] = bytes([1, 0]) + tx_tcp(0, 64000, gso=1448)
    s["super-tiny-mss"] = bytes([1, 0]) + tx_tcp(0, 4000, gso=10)
    s["super-small-room"] = bytes([1, 1]) + tx_tcp(1, 3000)
    s["super-jumbo"] = bytes([1, 2]) + tx_tcp(0, 30000, gso=8900)
    s["super-wrong-family"] = bytes([1, 0]) + tx_tcp(0x10, 3000)
    s["super-no-csum"] = bytes([1, 0]) + tx_tcp(0x20, 3000)
    s["super-csum-front"] = bytes([1, 0]) + tx_tcp(1, 3000, csum=(0, 16))
    s["super-empty"] = bytes([1, 0]) + tx_tcp(0, 0)
    s["partial-built"] = bytes([1, 0]) + tx_tcp(0x80, 600)
    s["gso-udp"] = bytes([1, 0]) + tx_hdr(UDP4, flags=1, gso_type=5, gso_size=1000, cs=34, co=6)
    s["gso-garbage"] = bytes([1, 0]) + tx_hdr(TCP4, gso_type=0x33, gso_size=1)
    s["short-vnet"] = bytes([1, 0]) + tx_raw(b"\x01\x00\x00")
    s["runt"] = bytes([0, 0]) + tx_raw(bytes(8))
    s["batch"] = bytes([0x41, 0]) + b"".join(tx_hdr(TCP4) for _ in range(10)) \
        + tx_tcp(0, 9000) + tx_hdr(TCP4, flags=1, cs=34, co=16)
    s["v6-port"] = bytes([0x21, 0]) + tx_tcp(1, 2000) + tx_hdr(TCP6)
    s["guarded"] = bytes([0x07, 0x10]) + tx_hdr(DHCP) + tx_hdr(VLAN1) + tx_tcp(2, 3000)
    s["storm"] = bytes([0x09, 0]) + tx_hdr(ARP) + tx_hdr(eth(0x0800, ipv4(6, tcp(b"")),
                                                             dst=b"\xff" * 6))
    s["blocked"] = bytes([0x11, 0]) + tx_hdr(TCP4)
    for i, name in enumerate(("expired", "near-limit", "no-endpoint", "no-session")):
        s[f"state-{name}"] = bytes([0x81, i << 2]) + tx_hdr(TCP4) + tx_tcp(0, 3000)
    return s


def main() -> None:
    for name, seeds in (("lane_rx", rx_seeds()), ("lane_tx", tx_seeds())):
        d = HERE / name
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
        for key, data in seeds.items():
            (d / key).write_bytes(data)
        print(f"{d}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
