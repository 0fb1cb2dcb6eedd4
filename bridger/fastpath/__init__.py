"""The throughput fast path: tap offloads, TCP segmentation, UDP GSO/GRO.

1. The tap is opened with IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6): the
   kernel hands whole TCP superframes (up to 64 KB) with a virtio-net header
   and leaves checksums partial (:mod:`.vnet`).
2. Superframes are cut into TCP segments small enough that each frame fits one
   WAN datagram (:func:`.segment.segment_tcp`); their checksums stay partial
   and travel as FRAME_CSUM, so nothing is summed in Python on the way out.
3. The datagrams of a batch leave in one ``sendmsg`` with UDP_SEGMENT and
   arrive in one ``recvmsg`` with UDP_GRO (:mod:`.udp`).
4. The far side re-joins consecutive segments of one TCP flow into a
   superframe (:func:`.segment.coalesce`) and writes it with gso_type set, so
   its kernel handles 64 KB per write instead of one frame.

Every step falls back (with one log line) when the kernel lacks the offload;
the protocol's guarantees (authentication, replay window, datagrams within the
path MTU) are the core's and do not change.
"""

from bridger.fastpath.segment import SegmentError, coalesce, segment_tcp
from bridger.fastpath.vnet import VNET_HDR_LEN, VnetHdr, decode_vnet_hdr_untrusted

__all__ = [
    "VNET_HDR_LEN",
    "SegmentError",
    "VnetHdr",
    "coalesce",
    "decode_vnet_hdr_untrusted",
    "segment_tcp",
]
