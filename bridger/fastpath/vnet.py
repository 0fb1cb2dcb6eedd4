"""struct virtio_net_hdr (include/uapi/linux/virtio_net.h), as tap hands it over.

A tap opened with IFF_VNET_HDR prefixes every frame it reads and expects every
frame written to it to be prefixed with this 10-byte header (native = little
endian on the machines we run on; TUNSETVNETLE is not needed there).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

#: flags u8, gso_type u8, hdr_len, gso_size, csum_start, csum_offset (u16 each).
VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10


class VnetFlag(IntFlag):
    #: Checksum is partial: sum from csum_start, store at csum_start + csum_offset.
    NEEDS_CSUM = 1
    #: The kernel already verified the checksum.
    DATA_VALID = 2


class GsoType(IntEnum):
    NONE = 0
    TCPV4 = 1
    UDP = 3
    TCPV6 = 4
    UDP_L4 = 5


#: Added to gso_type when the superframe's first segment carries CWR.
GSO_ECN = 0x80


class VnetError(Exception):
    """A frame from the tap too short for its virtio-net header."""


@dataclass(frozen=True, slots=True)
class VnetHdr:
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int

    def encode(self) -> bytes:
        return VNET_HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                             self.csum_start, self.csum_offset)


#: The header for a frame whose checksums are complete and that is not GSO.
PLAIN_HDR = bytes(VNET_HDR_LEN)


def decode_vnet_hdr_untrusted(data: bytes) -> VnetHdr:
    if len(data) < VNET_HDR_LEN:
        raise VnetError("frame shorter than its virtio-net header")
    return VnetHdr(*VNET_HDR.unpack_from(data, 0))


def csum_hdr(csum_start: int, csum_offset: int) -> bytes:
    """Header for one frame whose L4 checksum the kernel should complete."""
    return VNET_HDR.pack(VnetFlag.NEEDS_CSUM, GsoType.NONE, 0, 0, csum_start, csum_offset)
