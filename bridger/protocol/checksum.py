"""The Internet checksum (RFC 1071), for completing partial L4 checksums.

The ones' complement sum of 16-bit big-endian words equals the whole buffer
read as one big-endian integer modulo 0xFFFF (2**16 == 1 mod 0xFFFF), which
CPython computes in C: no per-word Python loop.
"""

from __future__ import annotations


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Ones' complement sum of ``data`` (zero-padded to even length), folded to 16 bits."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    value = int.from_bytes(data, "big")
    total = value % 0xFFFF
    # A nonzero sum congruent to 0 is 0xFFFF in ones' complement; only all-zero data sums to 0.
    return 0xFFFF if total == 0 and value else total


def complete_checksum(frame: bytes, csum_start: int, csum_offset: int) -> bytes:
    """``frame`` with the partial checksum at csum_start+csum_offset completed.

    The field holds the pseudo-header sum; the result is the complement of the
    sum over frame[csum_start:] (field included), as a NIC would compute it.
    """
    total = ones_sum(memoryview(frame)[csum_start:])
    # As the kernel does (CSUM_MANGLED_0): a computed 0 goes out as 0xFFFF, which
    # verifies the same for TCP and keeps UDP's "0 = no checksum" meaning free.
    check = ((~total) & 0xFFFF) or 0xFFFF
    at = csum_start + csum_offset
    return frame[:at] + check.to_bytes(2, "big") + frame[at + 2:]
