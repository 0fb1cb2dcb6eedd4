"""Runs of UDP datagrams joined into UDP_L4 superframes (segment.coalesce(udp=True)).

The C twin against the Python reference on generated sequences, and the
reference against the kernel: a joined superframe written to a real tap comes
out of it as exactly the datagrams that went in (headers included: lengths,
IPv4 ids, checksums).
"""

from __future__ import annotations

import os
import random
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridger.fastpath import segment as seg
from bridger.fastpath.vnet import decode_vnet_hdr_untrusted
from bridger.native import lane
from bridger.protocol.checksum import ones_sum

MAC = bytes.fromhex("020000000002" "020000000001")
SRC4, DST4 = bytes([10, 77, 0, 2]), bytes([10, 77, 0, 1])
SRC6, DST6 = bytes.fromhex("fd00" + "00" * 13 + "02"), bytes.fromhex("fd00" + "00" * 13 + "01")


def _fold(x: int) -> int:
    while x > 0xFFFF:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def datagram(payload: bytes, *, ident: int = 7, v4: bool = True, tags: int = 0,
             sport: int = 5555, dport: int = 9999, dst_mac: bytes = MAC[:6]) -> bytes:
    """A UDP frame as a sender's kernel hands it to tap: checksum partial (the
    pseudo-header sum in the field), csum_start at the UDP header."""
    length = 8 + len(payload)
    src, dst = (SRC4, DST4) if v4 else (SRC6, DST6)
    udp = struct.pack(">HHHH", sport, dport, length,
                      _fold(ones_sum(src + dst) + 17 + length)) + payload
    head = dst_mac + MAC[6:] + b"".join(struct.pack(">HH", 0x8100, 5 + i) for i in range(tags))
    if v4:
        ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF,
                                   0x4000, 64, 17, 0, src, dst))
        struct.pack_into(">H", ip, 10, ~ones_sum(bytes(ip)) & 0xFFFF)
        return head + b"\x08\x00" + bytes(ip) + udp
    ip6 = struct.pack(">IHBB16s16s", 0x60000000, len(udp), 17, 64, src, dst)
    return head + b"\x86\xdd" + ip6 + udp


def l4_of(frame: bytes) -> int:
    l3, _ = seg.l3_offset_untrusted(frame)
    return l3 + (20 if frame[l3] >> 4 == 4 else 40)


Written = list[tuple[bytes, bytes, int, int]]


def py(frames: list[bytes], csum: dict[int, tuple[int, int]]) -> Written:
    return [(h, bytes(f), c, n) for h, f, c, n in seg.coalesce(frames, csum, udp=True)]


@st.composite
def udp_sequences(draw: st.DrawFn) -> tuple[list[bytes], dict[int, tuple[int, int]]]:
    frames: list[bytes] = []
    csum: dict[int, tuple[int, int]] = {}
    for _ in range(draw(st.integers(1, 6))):
        v4 = draw(st.booleans())
        tags = draw(st.integers(0, 2))
        size = draw(st.integers(0, 300))
        ident = draw(st.integers(0, 0xFFFF))
        for i in range(draw(st.integers(1, 70))):
            n = size if draw(st.integers(0, 9)) else draw(st.integers(0, 400))
            skip = draw(st.sampled_from([0, 0, 0, 1]))
            f = datagram(bytes([i & 0xFF]) * n, ident=ident + i + skip, v4=v4, tags=tags,
                         sport=draw(st.sampled_from([5555, 5555, 5555, 1])))
            if draw(st.integers(0, 30)) == 0:  # a mangled header byte
                b = bytearray(f)
                b[draw(st.integers(0, min(len(b), 70) - 1))] ^= 0xFF
                f = bytes(b)
            k = len(frames)
            frames.append(f)
            meta = draw(st.sampled_from(["udp", "udp", "udp", "none", "tcp", "odd"]))
            if meta == "udp":
                csum[k] = (l4_of(f) if draw(st.integers(0, 20)) else draw(st.integers(0, 80)), 6)
            elif meta == "tcp":
                csum[k] = (l4_of(f), 16)
            elif meta == "odd":
                csum[k] = (draw(st.integers(0, 100)), draw(st.integers(0, 20)))
    return frames, csum


needs_lane = pytest.mark.skipif(lane is None, reason="bridger.native._lane is not built")


#: Generated runs per test session: every example also goes through a real tap, so
#: CI takes 100 (about a minute on 2 cores); COALESCE_EXAMPLES=2000 for a long run.
COALESCE_EXAMPLES = int(os.environ.get("COALESCE_EXAMPLES", "100"))


@needs_lane
@settings(max_examples=COALESCE_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(udp_sequences())
def test_c_joins_udp_runs_as_python_does(
    case: tuple[list[bytes], dict[int, tuple[int, int]]],
) -> None:
    frames, csum = case
    assert lane is not None
    c = [(h, bytes(f), n, b) for h, f, n, b in lane.coalesce(frames, csum, True)]
    assert c == py(frames, csum)
    # without udp, nothing changes for UDP frames
    assert ([(h, bytes(f), n, b) for h, f, n, b in lane.coalesce(frames, csum)]
            == [(h, bytes(f), n, b) for h, f, n, b in seg.coalesce(frames, csum)])


def test_a_run_is_joined_and_its_counts_add_up() -> None:
    frames = [datagram(bytes([i]) * 50, ident=100 + i) for i in range(10)]
    frames.append(datagram(b"x" * 20, ident=110))  # a shorter last one
    csum = {i: (l4_of(f), 6) for i, f in enumerate(frames)}
    out = py(frames, csum)
    assert len(out) == 1
    hdr, joined, count, nbytes = out[0]
    assert count == 11 and nbytes == sum(map(len, frames))
    assert len(joined) == 42 + sum(len(f) - 42 for f in frames)
    v = decode_vnet_hdr_untrusted(hdr)
    assert (v.gso_type, v.gso_size, v.csum_start, v.csum_offset) == (5, 50, 34, 6)
    # a gap in the ids ends a run: 0-3, then 4 (id 999), then 5-10 (ids 105-110)
    frames[4] = datagram(bytes([4]) * 50, ident=999)
    assert [c for _h, _f, c, _n in py(frames, csum)] == [4, 1, 6]


def _in_namespace(name: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


@pytest.mark.netns
@pytest.mark.parametrize("v4", [True, False])
def test_the_kernel_cuts_a_joined_run_into_the_datagrams_that_went_in(v4: bool) -> None:
    """Write the superframe into a real tap (in a throwaway namespace) whose
    address a UDP socket listens on: the socket receives exactly the datagrams
    that went in, one by one, in order (the headers' arithmetic is checked
    against a model of the kernel's cut in the next test)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"bn-uso-{os.getpid()}-{int(v4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    dst, family, bind = (("10.77.0.1/24", "socket.AF_INET", "10.77.0.1") if v4 else
                         ("fd00::1/64", "socket.AF_INET6", "fd00::1"))
    code = f"""
import os, socket, struct, subprocess, sys, time
sys.path.insert(0, {os.getcwd()!r})
from tests.native.test_coalesce_udp import _in_namespace, datagram, l4_of, py
from bridger.host.tap import enable_offloads, open_tap, takes_udp_superframes
from bridger.protocol.checksum import complete_checksum
_in_namespace({name!r})
fd, tap = open_tap("bnuso0", vnet=True)
granted = enable_offloads(fd)
if not takes_udp_superframes(fd, granted):
    print("NO-USO"); sys.exit(0)
subprocess.run(["ip", "link", "set", tap, "up"], check=True)
out = subprocess.run(["ip", "-o", "link", "show", tap], capture_output=True, text=True).stdout
mac = bytes.fromhex(out.split("link/ether ")[1].split()[0].replace(":", ""))
subprocess.run(["ip", "addr", "add", {dst!r}, "dev", tap] + ([] if {v4} else ["nodad"]),
               check=True)
srv = socket.socket({family}, socket.SOCK_DGRAM)
srv.bind(({bind!r}, 9999))
srv.setblocking(False)
payloads = [bytes([i]) * 64 for i in range(20)] + [b"z" * 9]
frames = [datagram(p, ident=40000 + i, v4={v4}, dst_mac=mac) for i, p in enumerate(payloads)]
csum = {{i: (l4_of(f), 6) for i, f in enumerate(frames)}}
(hdr, frame, count, _n), = py(frames, csum)
assert count == len(frames)
os.writev(fd, [hdr, frame])
time.sleep(0.3)
got = []
while True:
    try:
        got.append(srv.recv(4096))
    except BlockingIOError:
        break
print("OK" if got == payloads else f"DIFF {{len(got)}} {{[len(g) for g in got]}}")
"""
    try:
        run = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    out = run.stdout.strip()
    assert run.returncode == 0, run.stderr[-3000:]
    if out == "NO-USO":
        pytest.skip("this kernel's tap takes no UDP superframes")
    assert out == "OK", out


def test_random_payloads_roundtrip_in_python() -> None:
    """Cut the joined superframe the way the kernel does (by gso_size, ids
    counting up) and get the originals back (pure Python, no kernel)."""
    rng = random.Random(5)
    frames = [datagram(rng.randbytes(33), ident=65530 + i) for i in range(12)]  # ids wrap
    csum = {i: (l4_of(f), 6) for i, f in enumerate(frames)}
    (hdr, frame, count, _n), = py(frames, csum)
    v = decode_vnet_hdr_untrusted(hdr)
    head, payload = frame[:v.hdr_len], frame[v.hdr_len:]
    for i in range(count):
        part = payload[i * v.gso_size:(i + 1) * v.gso_size]
        h = bytearray(head)
        struct.pack_into(">H", h, 16, 20 + 8 + len(part))
        struct.pack_into(">H", h, 18, (65530 + i) & 0xFFFF)
        h[24:26] = b"\0\0"
        struct.pack_into(">H", h, 24, ~ones_sum(bytes(h[14:34])) & 0xFFFF)
        struct.pack_into(">H", h, 38, 8 + len(part))
        struct.pack_into(">H", h, 40, _fold(ones_sum(SRC4 + DST4) + 17 + 8 + len(part)))
        assert bytes(h) + part == frames[i]
