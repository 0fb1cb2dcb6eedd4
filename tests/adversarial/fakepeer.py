"""A hostile *authenticated* peer: holds site B's real key, completes a handshake
with gateway A's daemon using the protocol core, then sends never-completed
fragment trains (first piece of a 3-piece max-size frame, each a new frame id).

    ip netns exec <gwB ns> python3 -m tests.adversarial.fakepeer \\
        KEYFILE A_PUBKEY A_HOST:PORT COUNT

Prints one JSON line: {"sent": n, "elapsed": s}.  Only a key holder can reach
the reassembler, so this is how the daemon's reassembly bound is tested.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import time
from pathlib import Path

from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt

from bridger.keys import read_private_key_file
from bridger.protocol import Tunnel, TunnelConfig
from bridger.protocol.messages import FRAGMENT_HEADER, TRANSPORT_NONCE, InnerType, encode_transport


def main() -> int:
    key_file, peer_b64, target, count_text = sys.argv[1:5]
    host, port = target.rsplit(":", 1)
    addr = (host, int(port))
    cfg = TunnelConfig(read_private_key_file(Path(key_file)), base64.b64decode(peer_b64),
                       endpoint=addr, persistent_keepalive=0, pmtu_probing=False)
    tunnel = Tunnel(cfg, now=time.monotonic(), wall_clock=time.time())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 55555))
    sock.settimeout(0.5)
    out = tunnel.send_frame(bytes(60), time.monotonic())
    deadline = time.monotonic() + 20
    while tunnel.current is None:
        for data, dest in out.datagrams:
            sock.sendto(data, dest)
        if time.monotonic() > deadline:
            print(json.dumps({"error": "no handshake"}), flush=True)
            return 1
        try:
            data, src = sock.recvfrom(65536)
        except TimeoutError:
            out = tunnel.tick(time.monotonic() + 6, time.time())
            continue
        out = tunnel.receive_datagram(data, src, time.monotonic(), time.time())
    for data, dest in out.datagrams:
        sock.sendto(data, dest)
    kp = tunnel.current
    piece = bytes(700)
    start = time.monotonic()
    for i in range(int(count_text)):
        plaintext = FRAGMENT_HEADER.pack(InnerType.FRAGMENT, i, 0, 3, 1522) + piece
        counter = kp.send_counter
        kp.send_counter += 1
        sealed = crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, None, TRANSPORT_NONCE.pack(counter), kp.send_key)
        sock.sendto(encode_transport(kp.remote_index, counter, sealed), addr)
        if i % 64 == 63:
            time.sleep(0.002)  # stay under the receiver's socket buffer
    print(json.dumps({"sent": int(count_text), "elapsed": round(time.monotonic() - start, 2)}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
