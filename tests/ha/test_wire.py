"""The group's frames as bytes: literal vectors, announcements, the nftables rule."""

from __future__ import annotations

import pytest

from bridger.ha import wire
from bridger.ha.runner import containment_script

KEY = wire.auth_key(bytes(32), "london")


def test_hello_layout() -> None:
    msg = wire.Message(wire.Kind.HELLO, wire.Flag.ACTIVE, 100, bytes(8), b"N" * 8, b"O" * 8, 1,
                       (b"E" * 8,))
    payload = wire.encode(msg, KEY)
    assert payload[:8] == b"BRHA" + bytes([1, 1, 1, 100])
    assert payload[8:41] == bytes(8) + b"N" * 8 + b"O" * 8 + (1).to_bytes(8, "big") + b"\x01"
    assert payload[41:49] == b"E" * 8 and len(payload) == 49 + wire.TAG_LEN
    frame = wire.frame(b"\x02" * 6, payload)
    assert frame[:14] == wire.GROUP_DST + b"\x02" * 6 + b"\x88\xb6" and len(frame) >= 60
    assert wire.decode_untrusted(frame[14:], KEY) == msg  # Ethernet padding is ignored


def test_wan_lost_flag_round_trips_and_unknown_flag_bits_are_ignored() -> None:
    msg = wire.Message(wire.Kind.HELLO, wire.Flag.ACTIVE | wire.Flag.WAN_LOST, 100, bytes(8),
                       b"N" * 8, b"O" * 8, 1, ())
    payload = wire.encode(msg, KEY)
    assert payload[6] == 0x05
    assert wire.decode_untrusted(payload, KEY) == msg
    future = wire.Message(wire.Kind.HELLO, wire.Flag(0xF1), 100, bytes(8), b"N" * 8, b"O" * 8,
                          1, ())
    assert wire.decode_untrusted(wire.encode(future, KEY), KEY).flags == wire.Flag.ACTIVE


@pytest.mark.parametrize("kind", [wire.Kind.HELLO, wire.Kind.BYE, wire.Kind.MACS])
def test_every_bit_of_a_frame_is_covered_by_the_tag(kind: wire.Kind) -> None:
    msg = wire.Message(kind, wire.Flag.NONE, 7, bytes(8), b"N" * 8, b"O" * 8, 9, (),
                       (b"L" * 6,) if kind is wire.Kind.MACS else (),
                       (b"R" * 6,) if kind is wire.Kind.MACS else ())
    payload = wire.encode(msg, KEY)
    for i in range(len(payload)):
        bad = bytearray(payload)
        bad[i] ^= 0x01
        with pytest.raises(wire.BadFrame):
            wire.decode_untrusted(bytes(bad), KEY)


def test_announcement_has_the_mac_as_source_and_destination() -> None:
    mac = bytes.fromhex("020000000042")
    frame = wire.announcement(mac)
    assert frame[:6] == frame[6:12] == mac and frame[12:14] == b"\x88\xb6"
    with pytest.raises(wire.BadFrame):
        wire.decode_untrusted(frame[14:], KEY)  # never taken for a group frame


def test_containment_rule_drops_only_group_frames_in_the_forward_hook() -> None:
    script = containment_script("bridger0", True)
    assert "hook forward" in script and "ether type 0x88b6" in script and "drop" in script
    assert containment_script("bridger0", False).splitlines() == [
        "add table bridge bridger_ha_bridger0", "delete table bridge bridger_ha_bridger0"]
