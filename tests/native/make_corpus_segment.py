"""Write the seed corpora of the segment and coalesce fuzz targets.

    python -m tests.native.make_corpus_segment

tests/native/corpus/segment/: real TSO superframes (IPv4, IPv6, VLAN tags,
options, ECN, FIN/PSH), SYNs with an MSS option and a few non-TCP frames, in
fuzz_segment.c's input layout.  tests/native/corpus/coalesce/: the segments
segment_tcp cuts from such superframes, some shuffled or mixed with other
frames, in fuzz_coalesce.c's record layout.  Deterministic (seeded).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

from bridger.fastpath.segment import segment_tcp
from bridger.fastpath.vnet import VNET_HDR, decode_vnet_hdr_untrusted
from tests.native.test_segment import ACK, CWR, FIN, MSS, PSH, SYN, TAGS, l4_of, tcp_frame, vnet

HERE = Path(__file__).parent / "corpus"
ARP = bytes(12) + b"\x08\x06" + bytes(28)
UDP = bytes(12) + b"\x08\x00" + bytes([0x45]) + bytes(8) + b"\x11" + bytes(30)


def segment_input(hdr: bytes, max_frame: int, frame: bytes, *, room: int = 1400, mode: int = 0,
                  csum: tuple[int, int] = (34, 16)) -> bytes:
    return hdr + struct.pack("<HHBHH", max_frame + 64, room, mode, *csum) + frame


def coalesce_input(frames: list[bytes], metas: dict[int, tuple[int, int]]) -> bytes:
    out = b""
    for i, frame in enumerate(frames):
        start, offset = metas.get(i, (0, 0))
        out += struct.pack("<HBHH", len(frame), int(i in metas), start, offset) + frame
    return out


def main() -> None:
    rng = random.Random(16)
    seg_dir, co_dir = HERE / "segment", HERE / "coalesce"
    for d in (seg_dir, co_dir):
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
    seeds: list[tuple[str, bytes]] = []
    batches: list[tuple[str, bytes]] = []
    for v4 in (True, False):
        for tags in (0, 1, 2):
            for flags, name in ((ACK, "ack"), (ACK | PSH | FIN, "fin"), (ACK | CWR, "cwr")):
                size = rng.choice((0, 1, 999, 1448, 2501))
                frame = tcp_frame(rng.randbytes(size), v4=v4, tags=TAGS[tags], flags=flags)
                start = l4_of(v4, tags)
                hdr = vnet(start, 536, v4=v4)
                ip = "v4" if v4 else "v6"
                mode = rng.randrange(256)
                seeds.append((f"{ip}-tags{tags}-{name}", segment_input(
                    hdr, 600, frame, mode=mode & 0x3F, csum=(start, 16))))
                segments, cs = segment_tcp(frame, decode_vnet_hdr_untrusted(hdr), 600)
                metas = dict.fromkeys(range(len(segments)), (cs, 16))
                batches.append((f"{ip}-tags{tags}-{name}", coalesce_input(segments, metas)))
            syn = tcp_frame(b"", v4=v4, tags=TAGS[tags], flags=SYN,
                            options=bytes([1, 1]) + MSS(1460) + bytes([1, 1]))
            seeds.append((f"syn-{'v4' if v4 else 'v6'}-tags{tags}",
                          segment_input(vnet(0, 0, flags=0), 1514, syn, room=1400, mode=1)))
    frame = tcp_frame(rng.randbytes(3000), ip_options=bytes([1] * 8), options=bytes(40))
    seeds.append(("v4-options", segment_input(vnet(42, 1000), 1514, frame, csum=(42, 16))))
    seeds.append(("v4-tiny-max", segment_input(vnet(34, 0), 14 + 20 + 32 + 1, tcp_frame(b"abcde"))))
    ext = bytes([6, 0, 1, 4, 0, 0, 0, 0])
    frame = tcp_frame(rng.randbytes(1200), v4=False, ext=ext)
    seeds.append(("v6-ext", segment_input(vnet(62, 500, v4=False), 1280, frame, csum=(62, 16))))
    seeds.append(("arp", segment_input(VNET_HDR.pack(0, 0, 0, 0, 0, 0), 1514, ARP)))
    seeds.append(("udp", segment_input(VNET_HDR.pack(1, 0, 0, 0, 34, 6), 1514, UDP, csum=(34, 6))))
    # Coalesce: two flows interleaved, a shuffled run, runs mixed with other frames.
    a = tcp_frame(rng.randbytes(2000), sport=1)
    b = tcp_frame(rng.randbytes(2000), sport=2, v4=False)
    sa, ca = segment_tcp(a, decode_vnet_hdr_untrusted(vnet(34, 500)), 600)
    sb, cb = segment_tcp(b, decode_vnet_hdr_untrusted(vnet(54, 500, v4=False)), 600)
    mixed = [x for pair in zip(sa, sb, strict=False) for x in pair]
    metas = {i: (ca if i % 2 == 0 else cb, 16) for i in range(len(mixed))}
    batches.append(("interleaved", coalesce_input(mixed, metas)))
    shuffled = sa[:]
    rng.shuffle(shuffled)
    batches.append(("shuffled", coalesce_input(shuffled, dict.fromkeys(range(len(sa)), (ca, 16)))))
    other = [ARP, *sa[:2], UDP, *sa[2:]]
    metas = {1: (ca, 16), 2: (ca, 16), 3: (34, 6), 4: (ca, 16), 5: (ca, 16)}
    batches.append(("with-others", coalesce_input(other, metas)))
    for name, data in seeds:
        (seg_dir / name).write_bytes(data)
    for name, data in batches:
        (co_dir / name).write_bytes(data)
    print(f"{len(seeds)} segment seeds, {len(batches)} coalesce seeds")


if __name__ == "__main__":
    main()
