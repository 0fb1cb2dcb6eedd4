#!/usr/bin/env python3
"""A WAN attacker for the namespace lab: sprays a bridger listening port and
records everything the gateway sends back.

Run it inside the lab's WAN router namespace (it needs root: it adds addresses
and uses raw sockets)::

    ip netns exec <prefix>-wan python3 scripts/attack.py \\
        --iface wA --target 10.100.1.2:55555 --peer 10.100.2.2 \\
        --target-key <gwA public key> --capture cap.pcap --duration 30 --rate 4000

1. Each class of attack is sent from its own source address (added to
   ``--iface``), so any answer can be traced to what provoked it:

   ==========  ================================================================
   junk        random bytes, random lengths, all four type words and others
   flip        captured transport datagrams (peer -> target) with bits flipped
   replay      captured transport datagrams replayed unchanged
   hs_replay   captured handshake messages, replayed and bit-flipped
   hs_badmac   initiations made by the core for a random key (mac1 wrong) and
               initiations with a random mac1
   hs_valid    initiations with a *valid* mac1 from a non-key-holder (knows
               the target's public key only), new sender index each time
   spoofed     valid-mac1 initiations and junk from ``--spoof`` random source
               addresses in 10.66.0.0/16 (raw socket, forged IP headers)
   ==========  ================================================================

2. ``tcpdump`` on ``--iface`` records every UDP datagram the target sends from
   its port to anyone but ``--peer``; they are attributed to a class by
   destination address.

3. One JSON document on stdout (and ``--json FILE``): per class the datagrams
   and bytes sent, and the answers seen by message type and bytes.

SIGINT/SIGTERM end the spray early and still print the summary.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridger.protocol import Tunnel, TunnelConfig
from bridger.protocol.constants import MAC_LEN
from bridger.protocol.cookie import CookieGenerator
from bridger.protocol.messages import INITIATION_MAC1_OFFSET

CLASSES = ("junk", "flip", "replay", "hs_replay", "hs_badmac", "hs_valid", "spoofed")
SPOOF_NET = "10.66"
_PCAP_HEADER = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")


# --- pcap (what tcpdump -w writes) --------------------------------------------------------

def read_pcap_udp(path: Path) -> list[tuple[str, int, str, int, bytes]]:
    """(src, sport, dst, dport, payload) of every IPv4 UDP datagram in an Ethernet pcap."""
    data = path.read_bytes()
    if len(data) < _PCAP_HEADER.size:
        return []
    magic = _PCAP_HEADER.unpack_from(data, 0)[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        raise ValueError(f"{path}: not a little-endian pcap file")
    out = []
    off = _PCAP_HEADER.size
    while off + _PCAP_RECORD.size <= len(data):
        _sec, _frac, caplen, _wirelen = _PCAP_RECORD.unpack_from(data, off)
        off += _PCAP_RECORD.size
        frame = data[off:off + caplen]
        off += caplen
        if len(frame) < 42 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17 or len(ip) < ihl + 8:
            continue
        total = struct.unpack_from(">H", ip, 2)[0]
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        sport, dport, ulen = struct.unpack_from(">HHH", ip, ihl)
        payload = ip[ihl + 8:min(total, ihl + ulen)]
        out.append((src, sport, dst, dport, bytes(payload)))
    return out


def gso_segments(payload: bytes) -> list[bytes]:
    """The transport datagrams a captured UDP payload stands for.

    tcpdump on a veth sees a sender's UDP_SEGMENT batch as one datagram, before
    the kernel cuts it: its payload is a run of transport messages of one size
    (the last may be shorter), each with the same type and receiver index and
    the next counter.  Replaying such a payload sent one 30-60 KB datagram (IP
    fragments on the wire) where the peer sent one of at most the path MTU.
    """
    if len(payload) < 16 or payload[:4] != b"\x04\x00\x00\x00":
        return [payload]
    head, counter = payload[:8], int.from_bytes(payload[8:16], "little")
    at = payload.find(head, 1)
    while at > 0:
        if payload[at + 8:at + 16] == (counter + 1).to_bytes(8, "little"):
            return [payload[i:i + at] for i in range(0, len(payload), at)]
        at = payload.find(head, at + 1)
    return [payload]


# --- crafting -------------------------------------------------------------------------------

def core_initiation(target_public: bytes, rng: random.Random) -> bytes:
    """An initiation made by the protocol core for ``target_public`` with a random static key."""
    cfg = TunnelConfig(rng.randbytes(32), target_public, endpoint=("192.0.2.1", 1),
                       persistent_keepalive=0, pmtu_probing=False)
    tunnel = Tunnel(cfg, now=0.0, wall_clock=time.time(), random_bytes=rng.randbytes)
    return tunnel.send_frame(bytes(60), 0.0).datagrams[0][0]


def with_sender(template: bytes, sender: int, gen: CookieGenerator) -> bytes:
    """``template`` with a new sender index and a valid mac1 (mac2 zero)."""
    body = template[:4] + struct.pack("<I", sender) + template[8:INITIATION_MAC1_OFFSET]
    return gen.add_macs(body + bytes(2 * MAC_LEN), 0.0)


def flip(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        bit = rng.randrange(len(buf) * 8)
        buf[bit // 8] ^= 1 << (bit % 8)
    return bytes(buf)


def junk(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, 4, 16, 32, 64, 92, 148, rng.randrange(1400)])
    kind = rng.choice([1, 2, 3, 4, rng.randrange(256)])
    return (bytes([kind, 0, 0, 0]) + rng.randbytes(max(0, size - 4)))[:size]


def ip_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4+UDP packet for a raw socket (kernel fills the IP checksum; UDP checksum 0)."""
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp


class Attacker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        host, port = args.target.rsplit(":", 1)
        self.target = (host, int(port))
        self.target_key = base64.b64decode(args.target_key)
        base = args.source_base.rsplit(".", 1)
        self.sources = {c: f"{base[0]}.{int(base[1]) + i}" for i, c in enumerate(CLASSES[:-1])}
        self.sent = {c: 0 for c in CLASSES}
        self.sent_bytes = {c: 0 for c in CLASSES}
        self.socks: dict[str, socket.socket] = {}
        self.raw: socket.socket | None = None
        self.stop = False
        self.gen = CookieGenerator(self.target_key)
        self.valid_template = core_initiation(self.target_key, self.rng)
        self.badmac = [core_initiation(self.rng.randbytes(32), self.rng) for _ in range(8)]
        captured = read_pcap_udp(Path(args.capture)) if args.capture else []
        to_target = [seg for s, _sp, d, dp, p in captured
                     if s == args.peer and (d, dp) == self.target and p
                     for seg in gso_segments(p)]
        from_either = [p for _s, _sp, _d, _dp, p in captured if p]
        self.transport = [p for p in to_target if p[0] == 4] or [junk(self.rng)]
        self.handshakes = [p for p in from_either if p[0] in (1, 2, 3)] or [self.valid_template]
        self.captured = {"transport": len(self.transport), "handshake": len(self.handshakes)}

    def setup(self) -> None:
        for cls, addr in self.sources.items():
            subprocess.run(["ip", "addr", "add", f"{addr}/32", "dev", self.args.iface],
                           capture_output=True, check=False)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            sock.bind((addr, 0))
            sock.setblocking(False)
            self.socks[cls] = sock
        if self.args.spoof:
            self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def payload(self, cls: str) -> bytes:
        rng = self.rng
        if cls == "junk":
            return junk(rng)
        if cls == "flip":
            return flip(rng.choice(self.transport), rng)
        if cls == "replay":
            return rng.choice(self.transport)
        if cls == "hs_replay":
            msg = rng.choice(self.handshakes)
            return msg if rng.random() < 0.5 else flip(msg, rng)
        if cls == "hs_badmac":
            if rng.random() < 0.5:
                return rng.choice(self.badmac)
            bad = bytearray(with_sender(self.valid_template, rng.getrandbits(32), self.gen))
            bad[INITIATION_MAC1_OFFSET:INITIATION_MAC1_OFFSET + MAC_LEN] = rng.randbytes(MAC_LEN)
            return bytes(bad)
        if cls in ("hs_valid", "spoofed"):
            if cls == "spoofed" and rng.random() < 0.5:
                return junk(rng)
            return with_sender(self.valid_template, rng.getrandbits(32) | 1, self.gen)
        raise AssertionError(cls)

    def send_one(self, cls: str) -> None:
        data = self.payload(cls)
        try:
            if cls == "spoofed":
                assert self.raw is not None
                n = self.rng.randrange(self.args.spoof)
                src = f"{SPOOF_NET}.{n >> 8 & 255}.{n & 255 or 1}"
                packet = ip_udp(src, self.target[0], self.rng.randrange(1024, 65535),
                                self.target[1], data)
                self.raw.sendto(packet, (self.target[0], 0))
            else:
                self.socks[cls].sendto(data, self.target)
        except OSError:  # full buffer: that is the point of a flood
            return
        self.sent[cls] += 1
        self.sent_bytes[cls] += len(data)

    def spray(self, duration: float, rate: float) -> float:
        classes = [c for c in CLASSES if c != "spoofed" or self.args.spoof]
        start = time.monotonic()
        sent = 0
        i = 0
        while not self.stop and (now := time.monotonic()) - start < duration:
            due = int((now - start) * rate)
            while sent < due and not self.stop:
                self.send_one(classes[i % len(classes)])
                i += 1
                sent += 1
            time.sleep(0.002)
        return time.monotonic() - start


def classify(answers: list[tuple[str, int, str, int, bytes]],
             sources: dict[str, str]) -> dict[str, dict[str, int]]:
    by_addr = {addr: cls for cls, addr in sources.items()}
    out: dict[str, dict[str, int]] = {}
    for _s, _sp, dst, _dp, payload in answers:
        cls = by_addr.get(dst, "spoofed" if dst.startswith(SPOOF_NET + ".") else "other")
        row = out.setdefault(cls, {"datagrams": 0, "bytes": 0})
        kind = f"type{payload[0]}_len{len(payload)}" if payload else "empty"
        row[kind] = row.get(kind, 0) + 1
        row["datagrams"] += 1
        row["bytes"] += len(payload)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iface", required=True, help="attacker interface (router side, e.g. wA)")
    p.add_argument("--target", required=True, help="IP:PORT of the attacked gateway")
    p.add_argument("--peer", required=True, help="the target's real peer address (not answers)")
    p.add_argument("--target-key", required=True, help="target's public key (base64)")
    p.add_argument("--capture", help="pcap of real tunnel traffic to replay and bit-flip")
    p.add_argument("--source-base", default="10.100.1.200",
                   help="first of the per-class source addresses added to --iface")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=4000.0, help="datagrams per second, all classes")
    p.add_argument("--spoof", type=int, default=4096, help="distinct spoofed sources (0: none)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the summary here")
    args = p.parse_args(argv)

    attacker = Attacker(args)
    attacker.setup()
    host, port = attacker.target
    pcap = Path(args.json or "/tmp/attack").with_suffix(".answers.pcap")
    watch = subprocess.Popen(
        ["tcpdump", "-i", args.iface, "-nn", "-U", "-w", str(pcap),
         f"udp and src host {host} and src port {port} and not dst host {args.peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(_sig: int, _frame: Any) -> None:
        attacker.stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    time.sleep(1.0)  # tcpdump attached
    print("spraying", flush=True)
    elapsed = attacker.spray(args.duration, args.rate)
    time.sleep(1.5)  # late answers
    watch.send_signal(signal.SIGINT)
    watch.wait(10)
    answers = read_pcap_udp(pcap)
    summary = {
        "elapsed": round(elapsed, 2),
        "rate": round(sum(attacker.sent.values()) / max(elapsed, 1e-9)),
        "captured": attacker.captured,
        "sources": attacker.sources,
        "sent": attacker.sent,
        "sent_bytes": attacker.sent_bytes,
        "answers": classify(answers, attacker.sources),
    }
    text = json.dumps(summary, sort_keys=True)
    print(text, flush=True)
    if args.json:
        Path(args.json).write_text(text + "\n")
    os.unlink(pcap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
