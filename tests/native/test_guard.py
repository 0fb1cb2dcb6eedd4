"""The C twins of the guards' hot path and the frame-kind counters (bn_guard.c)
against their Python references.

* ``guard_fast_out`` / ``guard_fast_in`` say 1 ("the lane may forward it
  itself") exactly when :class:`~bridger.guard.policy.Guard`'s ``outbound`` /
  ``inbound`` returns None without reaching ``_look`` or ``_blocked`` (a spy on
  the instance tells); the property runs every generated frame through a dozen
  GuardConfigs.
* On a mix of ordinary traffic (unicast TCP/UDP over IPv4/IPv6, ARP, to a known
  MAC, on an allowed VLAN) the C fast share is 100%.
* ``account`` adds what ``accounting.account`` adds to a fresh ``Direction``.
"""

from __future__ import annotations

import dataclasses
import os
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridger.dataplane.accounting import KINDS, Direction, MacTable, account
from bridger.guard import Guard, GuardConfig, LoopDetector, MacFlaps
from bridger.guard.classify import NEIGHBOUR_KINDS, FrameKind, look_untrusted
from bridger.guard.constants import PROBE_MAGIC, PROBE_VERSION
from bridger.native import lane, unavailable
from tests.guard import frames as f

needs_lane = pytest.mark.skipif(lane is None, reason=f"native lane not built: {unavailable}")


def test_the_extension_is_there_for_root() -> None:
    """As root (how CI runs) a missing extension is a failure, not a skip."""
    if os.geteuid() == 0:
        assert lane is not None, f"bridger.native._lane did not import: {unavailable}"


if lane is not None:
    from bridger.native.guardcfg import guard_cfg

#: The settings the differential property runs each frame through.
CONFIGS = [
    GuardConfig(),
    GuardConfig(flood_rate=0),
    GuardConfig(dhcp="local"),
    GuardConfig(ra="local"),
    GuardConfig(dhcp="local", ra="local", flood_rate=0),
    GuardConfig(vlans=(10, 20)),
    GuardConfig(vlans=(10, 20), untagged=False),
    GuardConfig(vlans=(), flood_rate=0),
    GuardConfig(vlans=(1, 100, 4094), untagged=False, dhcp="local", flood_rate=0),
    GuardConfig(vlans=(100,), ra="local"),
    GuardConfig(loop_protection=False, flood_rate=5),
    GuardConfig(dhcp="local", ra="local", vlans=(20,), untagged=False),
]
NOW = 100.0


# --- frames from parts ---------------------------------------------------------

DSTS = st.one_of(
    st.sampled_from([
        f.HOST_B, f.BROADCAST, f.ALL_NODES, bytes.fromhex("01005e000001"),
        bytes.fromhex("0180c2000000"), bytes.fromhex("0180c200000e"),
        bytes.fromhex("0180c2000010"), bytes.fromhex("ffffffffff7f"),
    ]),
    st.binary(min_size=6, max_size=6),
)
VIDS = st.one_of(st.sampled_from([0, 1, 10, 20, 100, 4094, 4095]), st.integers(0, 4095))
#: (TPID, TCI): priority/DEI bits on top of the VLAN id.
TAGS = st.lists(
    st.tuples(st.sampled_from([0x8100, 0x88A8, 0x9100]), VIDS, st.integers(0, 15)).map(
        lambda t: (t[0], t[2] << 12 | t[1])),
    max_size=3,
).map(tuple)
PORTS = st.one_of(st.sampled_from([67, 68, 546, 547]), st.integers(0, 65535))
ICMP6_TYPES = st.one_of(st.sampled_from([128, 129, 133, 134, 135, 136, 137]),
                        st.integers(0, 255))


@st.composite
def upper(draw: st.DrawFn, proto: int) -> bytes:
    if proto == 17:
        return f.udp(draw(PORTS), draw(PORTS), draw(st.binary(max_size=8)))
    if proto == 6:
        return f.tcp(draw(PORTS), draw(PORTS))
    if proto == 58:
        return f.icmp6(draw(ICMP6_TYPES))
    return draw(st.binary(max_size=20))


@st.composite
def ipv4_packets(draw: st.DrawFn) -> bytes:
    proto = draw(st.one_of(st.sampled_from([6, 17, 17, 1]), st.integers(0, 255)))
    options = bytes(4 * draw(st.integers(0, 3)))
    packet = f.ipv4(proto, draw(upper(proto)), options, draw(st.sampled_from([0, 0, 1, 185])),
                    draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:  # a wrong version / IHL byte
        packet = bytes([draw(st.integers(0, 255))]) + packet[1:]
    return packet


def _ah(next_header: int) -> bytes:
    return bytes([next_header, 1]) + bytes(10)  # (1 + 2) * 4 bytes


@st.composite
def ipv6_packets(draw: st.DrawFn) -> bytes:
    chain = draw(st.lists(st.sampled_from([0, 43, 60, 44, 51]), max_size=9))
    last = draw(st.one_of(st.sampled_from([6, 17, 58, 59, 50]), st.integers(0, 255)))
    body = b""
    for i, kind in enumerate(chain):
        nh = chain[i + 1] if i + 1 < len(chain) else last
        if kind == 44:
            body += f.frag6(nh, draw(st.sampled_from([0, 0, 1])), draw(st.booleans()))
        elif kind == 51:
            body += _ah(nh)
        else:
            body += f.ext(nh, draw(st.sampled_from([6, 14])))
    first = chain[0] if chain else last
    return f.ipv6(first, body + draw(upper(last)))


def arp_body(op: int = 1) -> bytes:
    return struct.pack(">HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, f.HOST_A, f.IP_A, bytes(6), f.IP_B)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[int, bytes]:
    """(EtherType, payload)."""
    which = draw(st.integers(0, 5))
    if which == 0:
        return 0x0800, draw(ipv4_packets())
    if which == 1:
        return 0x86DD, draw(ipv6_packets())
    if which == 2:
        return 0x0806, arp_body(draw(st.sampled_from([1, 2])))
    if which == 3:
        if draw(st.booleans()):  # a well-formed body: ours or another site's, relayed or not
            site = draw(st.sampled_from([OUR_SITE, b"\x01" * 8, bytes(7) + b"\x01"]))
            flags = draw(st.sampled_from([0, 1, 2, 3, 0xFF]))
            body = (PROBE_MAGIC + bytes([PROBE_VERSION, flags]) + bytes(2) + site
                    + draw(st.binary(min_size=8, max_size=8)))
            return 0x88B5, body + draw(st.binary(max_size=24))
        head = PROBE_MAGIC + bytes([PROBE_VERSION]) if draw(st.booleans()) else b""
        return 0x88B5, head + draw(st.binary(max_size=30))
    if which == 4:  # an EtherType the tags' loop may still see as a tag
        return draw(st.sampled_from([0x8100, 0x88A8, 0x9100])), draw(st.binary(max_size=30))
    return draw(st.integers(0, 0xFFFF)), draw(st.binary(max_size=40))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    ethertype, payload = draw(payloads())
    src = draw(st.sampled_from([f.HOST_A, bytes.fromhex("020000000099")]))
    frame = f.eth(draw(DSTS), ethertype, payload, draw(TAGS), src)
    if draw(st.integers(0, 2)) == 0:
        frame = frame[:draw(st.integers(0, len(frame)))]
    return frame


# --- the Python side, spied on ---------------------------------------------------


#: The loop detectors the inbound property runs each frame through: (tap_cut, hub).
#: With tap_cut another site's probe from the tunnel needs no look (unless we
#: relay it); the C side gets the same as ``guard_cfg(config, guard.free_probes)``.
DETECTORS = [(False, False), (True, False), (True, True)]
OUR_SITE = bytes(8)


def spied_guard(config: GuardConfig, known: set[bytes] | None, tap_cut: bool = False,
                hub: bool = False) -> tuple[Guard, list[str]]:
    """A Guard whose ``_look`` / ``_blocked`` note each call in the list."""
    detector = LoopDetector(site_id=OUR_SITE, rng=random.Random(1), tap_cut=tap_cut, hub=hub)
    guard = Guard(config, "peer", loop=detector, known=known, flaps=MacFlaps())
    calls: list[str] = []

    def spy(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            calls.append(name)
            return method(*args)
        return wrapper

    guard._look = spy("look", guard._look)  # type: ignore[method-assign]
    guard._blocked = spy("blocked", guard._blocked)  # type: ignore[method-assign]
    return guard, calls


def python_fast_out(config: GuardConfig, frame: bytes, known: set[bytes] | None) -> bool:
    guard, calls = spied_guard(config, known)
    return guard.outbound(frame, NOW) is None and not calls


def python_fast_in(config: GuardConfig, frame: bytes, tap_cut: bool = False,
                   hub: bool = False) -> bool:
    guard, calls = spied_guard(config, None, tap_cut, hub)
    single = guard.inbound(frame, NOW) is None and not calls
    guard, calls = spied_guard(config, None, tap_cut, hub)
    batch = not guard.inbound_batch([frame], NOW) and not calls
    assert single == batch
    return single


def native_cfg(config: GuardConfig, tap_cut: bool = False, hub: bool = False) -> bytes:
    """``guard_cfg`` as the lane's add_port builds it for spied_guard's Guard."""
    return guard_cfg(config, spied_guard(config, None, tap_cut, hub)[0].free_probes)


# --- the guards -------------------------------------------------------------------


@needs_lane
@settings(max_examples=700, deadline=None)
@given(frames(), st.booleans(), st.booleans())
def test_fast_out_is_the_python_hot_path(frame: bytes, dst_known: bool, no_known: bool) -> None:
    """guard_fast_out == 1 implies Guard.outbound passes the frame without a look;
    the twin is exact, so the converse holds too (relax that half only if the C
    is ever made deliberately more conservative)."""
    assert lane is not None
    known = None if no_known else ({frame[:6]} if dst_known else set())
    for config in CONFIGS:
        fast = lane.guard_fast_out(guard_cfg(config), frame, dst_known or no_known)
        python = python_fast_out(config, frame, known)
        if fast:
            assert python, (config, frame.hex())
        assert fast == python, (config, frame.hex())
    assert lane.guard_fast_out(guard_cfg(None), frame, dst_known) is True


@needs_lane
@settings(max_examples=700, deadline=None)
@given(frames())
def test_fast_in_is_the_python_hot_path(frame: bytes) -> None:
    assert lane is not None
    for config in CONFIGS:
        for tap_cut, hub in DETECTORS:
            fast = lane.guard_fast_in(native_cfg(config, tap_cut, hub), frame)
            python = python_fast_in(config, frame, tap_cut, hub)
            if fast:
                assert python, (config, tap_cut, hub, frame.hex())
            assert fast == python, (config, tap_cut, hub, frame.hex())
    assert lane.guard_fast_in(guard_cfg(None), frame) is True


@needs_lane
@given(st.binary(max_size=64), st.booleans())
def test_any_bytes_any_config(frame: bytes, dst_known: bool) -> None:
    """Raw bytes (runts, empty reads) too."""
    assert lane is not None
    for config in CONFIGS:
        cfg = guard_cfg(config)
        assert lane.guard_fast_out(cfg, frame, dst_known) == python_fast_out(
            config, frame, {frame[:6]} if dst_known else set())
        assert lane.guard_fast_in(cfg, frame) == python_fast_in(config, frame)


TEMPLATES = [
    f.eth(f.HOST_B, 0x0800, f.ipv4(17, f.udp(67, 68))),
    f.eth(f.HOST_B, 0x0800, f.ipv4(17, f.udp(67, 68)), ((0x8100, 10),)),
    f.eth(f.HOST_B, 0x0800, f.ipv4(17, f.udp(67, 68)), ((0x88A8, 20), (0x8100, 10))),
    f.eth(f.HOST_B, 0x86DD, f.ipv6(58, f.icmp6(134))),
    f.eth(f.HOST_B, 0x86DD, f.ipv6(0, f.ext(17) + f.udp(547, 546)), ((0x9100, 10),)),
    f.eth(f.HOST_B, 0x86DD, f.ipv6(44, f.frag6(58) + f.icmp6(134)), ((0x8100, 10), (0x8100, 1))),
    f.eth(f.HOST_B, 0x0806, arp_body(), ((0x8100, 20),)),
    f.eth(f.HOST_B, 0x88B5, PROBE_MAGIC + bytes([PROBE_VERSION, 0])),
    f.eth(f.HOST_B, 0x0800, f.ipv4(6, f.tcp()), ((0x8100, 10), (0x88A8, 20), (0x8100, 1))),
    # Another site's probe, untagged and in VLAN 20: free inbound with tap_cut.
    f.eth(f.HOST_B, 0x88B5, PROBE_MAGIC + bytes([PROBE_VERSION, 0, 0, 0]) + b"\x01" * 16),
    f.eth(f.HOST_B, 0x88B5, PROBE_MAGIC + bytes([PROBE_VERSION, 1, 0, 20]) + b"\x01" * 16,
          ((0x8100, 20),)),
]


@needs_lane
def test_every_truncation() -> None:
    """Each prefix of frames whose deciding byte sits at every depth (a read one
    past the end would show here)."""
    assert lane is not None
    for config in CONFIGS:
        cfg = guard_cfg(config)
        for template in TEMPLATES:
            for cut in range(len(template) + 1):
                frame = template[:cut]
                for dst_known in (False, True):
                    known = {frame[:6]} if dst_known else set()
                    assert lane.guard_fast_out(cfg, frame, dst_known) == python_fast_out(
                        config, frame, known), (config, frame.hex())
                for tap_cut, hub in DETECTORS:
                    assert lane.guard_fast_in(native_cfg(config, tap_cut, hub), frame) == (
                        python_fast_in(config, frame, tap_cut, hub)), (config, frame.hex())
                assert lane.account(frame, 1, cut) == python_account(frame, 1, cut)


HERE = Path(__file__).parent
FUZZ_FILES = sorted(
    [*(HERE / "corpus" / "guard").iterdir(), *(HERE / "crashes" / "guard").iterdir()])


def fuzz_input(data: bytes) -> tuple[GuardConfig | None, bool, int, bytes]:
    """fuzz_guard.c's input layout as (config, dst_known, count, frame); the
    harness's VLAN ids 0 and 4095 (not valid in a GuardConfig) are left out."""
    flags, at = data[0], 1
    vlans: tuple[int, ...] | None = None
    if flags & 0x10:
        k, at = data[at] & 0x0F, at + 1
        ids = [int.from_bytes(data[at + 2 * i:at + 2 * i + 2], "big") & 0xFFF for i in range(k)
               if at + 2 * i + 2 <= len(data)]
        at += 2 * len(ids)
        vlans = tuple(sorted({v for v in ids if 1 <= v <= 4094}))
    untagged = bool(flags & 0x20) or vlans is None or not vlans
    config = GuardConfig(dhcp="local" if flags & 2 else "shared",
                         ra="local" if flags & 4 else "shared", vlans=vlans, untagged=untagged,
                         flood_rate=1000 if flags & 8 else 0) if flags & 1 else None
    return config, bool(flags & 0x40), 1 + data[at], data[at + 1:]


@needs_lane
@pytest.mark.parametrize("path", FUZZ_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzz_files(path: Path) -> None:
    """The fuzz target's seed corpus and crash files, held to Python."""
    assert lane is not None
    config, dst_known, count, frame = fuzz_input(path.read_bytes())
    known = {frame[:6]} if dst_known else set()
    for conf in [config] if config is None else [config, *CONFIGS]:
        cfg = guard_cfg(conf)
        if conf is None:
            assert lane.guard_fast_out(cfg, frame, dst_known) and lane.guard_fast_in(cfg, frame)
            continue
        assert lane.guard_fast_out(cfg, frame, dst_known) == python_fast_out(conf, frame, known)
        assert lane.guard_fast_in(cfg, frame) == python_fast_in(conf, frame)
    assert lane.account(frame, count, count * len(frame)) == python_account(
        frame, count, count * len(frame))


def ordinary_mix(config: GuardConfig, rng: random.Random, n: int) -> list[bytes]:
    """Unicast TCP/UDP (IPv4, IPv6) and ARP to a known MAC on a VLAN the config
    lets cross.  With dhcp = "local" Python itself looks at every UDP frame
    (any may be DHCP), so the mix holds no UDP then."""
    kinds = ["tcp4", "tcp6", "arp"] + ([] if config.dhcp == "local" else ["udp4", "udp6"])
    vids: list[int | None] = [None, 5, 300] if config.vlans is None else (
        ([None] if config.untagged else []) + list(config.vlans))
    out = []
    for _ in range(n):
        kind = rng.choice(kinds)
        dst = bytes([rng.randrange(256) & 0xFE]) + rng.randbytes(5)
        sport, dport = rng.randrange(1024, 65536), rng.choice([22, 53, 80, 443, 5201, 51820])
        if kind == "arp":
            ethertype, payload = 0x0806, arp_body(rng.choice([1, 2]))
        elif kind.endswith("4"):
            l4 = f.tcp(sport, dport) if kind == "tcp4" else f.udp(sport, dport, rng.randbytes(20))
            ethertype, payload = 0x0800, f.ipv4(6 if kind == "tcp4" else 17, l4)
        else:
            l4 = f.tcp(sport, dport) if kind == "tcp6" else f.udp(sport, dport, rng.randbytes(20))
            ethertype, payload = 0x86DD, f.ipv6(6 if kind == "tcp6" else 17, l4)
        vid = rng.choice(vids)
        tags = () if vid is None else ((0x8100, rng.randrange(8) << 13 | vid),)
        out.append(f.eth(dst, ethertype, payload + rng.randbytes(rng.randrange(64)), tags))
    return out


@needs_lane
def test_ordinary_traffic_is_all_fast() -> None:
    """The lane forwards all of ordinary traffic itself, both ways, whatever the
    settings (and Python agrees that none of it needs a look)."""
    assert lane is not None
    rng = random.Random(16)
    for config in CONFIGS:
        cfg = guard_cfg(config)
        mix = ordinary_mix(config, rng, 300)
        fast_out = sum(lane.guard_fast_out(cfg, frame, True) for frame in mix)
        fast_in = sum(lane.guard_fast_in(cfg, frame) for frame in mix)
        assert (fast_out, fast_in) == (len(mix), len(mix)), config
        assert all(python_fast_out(config, frame, {frame[:6]}) for frame in mix[:50])
        assert all(python_fast_in(config, frame) for frame in mix[:50])


@needs_lane
def test_vectors() -> None:
    """A few by hand: what each guard sends to Python."""
    assert lane is not None
    tcp = f.eth(f.HOST_B, 0x0800, f.ipv4(6, f.tcp()))
    offer = f.eth(f.BROADCAST, 0x0800, f.ipv4(17, f.dhcp_offer()))
    ra = f.eth(f.ALL_NODES, 0x86DD, f.ipv6(58, f.icmp6(134)))
    tagged = f.eth(f.HOST_B, 0x0800, f.ipv4(6, f.tcp()), ((0x8100, 20),))
    default, vlans = guard_cfg(GuardConfig()), guard_cfg(GuardConfig(vlans=(10,), untagged=False))
    assert lane.guard_fast_out(default, tcp, True)
    assert not lane.guard_fast_out(default, tcp, False)  # flooded: storm control looks
    assert lane.guard_fast_out(guard_cfg(GuardConfig(flood_rate=0)), tcp, False)
    assert not lane.guard_fast_out(default, offer, True)  # broadcast: flooded
    assert lane.guard_fast_in(default, offer)
    assert not lane.guard_fast_in(guard_cfg(GuardConfig(dhcp="local")), offer)
    assert not lane.guard_fast_in(guard_cfg(GuardConfig(ra="local")), ra)
    assert not lane.guard_fast_in(vlans, tcp)  # untagged not allowed
    assert not lane.guard_fast_in(vlans, tagged)  # VLAN 20 not listed
    assert lane.guard_fast_in(guard_cfg(GuardConfig(vlans=(20,), untagged=False)), tagged)
    assert lane.guard_fast_in(guard_cfg(GuardConfig()), b"")
    assert lane.guard_fast_out(guard_cfg(GuardConfig()), b"", False)  # an empty read


@needs_lane
def test_bad_arguments_raise() -> None:
    assert lane is not None
    cfg = guard_cfg(GuardConfig())
    with pytest.raises(ValueError):
        lane.guard_fast_out(cfg[:-1], b"", True)
    with pytest.raises(ValueError):
        lane.guard_fast_in(cfg + b"\0", b"")
    with pytest.raises(TypeError):
        lane.guard_fast_in("x" * len(cfg), b"")
    with pytest.raises(TypeError):
        lane.guard_fast_out(cfg, 5, True)
    with pytest.raises(TypeError):
        lane.guard_fast_out(cfg, b"")
    for vlans in [(0,), (4095,), (2**70,), (-1,)]:
        with pytest.raises(ValueError):
            lane.guard_config(vlans=vlans)
    with pytest.raises(TypeError):
        lane.guard_config(vlans=("10",))
    with pytest.raises(TypeError):
        lane.guard_config(vlans=10)
    with pytest.raises(ValueError):
        lane.guard_config(flood_rate=-1)
    with pytest.raises(TypeError):
        lane.guard_config(flood_rate=1.5)
    with pytest.raises(TypeError):
        lane.guard_config(True)  # keyword-only
    for count, nbytes in [(-1, 0), (0, -1), (2**64, 0)]:
        with pytest.raises(ValueError):
            lane.account(b"", count, nbytes)
    with pytest.raises(TypeError):
        lane.account(b"", 1.0, 0)
    assert lane.guard_config(flood_rate=2**80) == lane.guard_config(flood_rate=1)
    assert len(cfg) == lane.GUARD_CFG_SIZE


# --- the counters -----------------------------------------------------------------


def python_account(frame: bytes | memoryview, count: int, nbytes: int) -> tuple[int, ...]:
    d = Direction()
    account(d, MacTable(4), frame, NOW, count, nbytes)
    return (d.frames, d.bytes, *(getattr(d, kind) for kind in KINDS))


@needs_lane
@settings(max_examples=400, deadline=None)
@given(st.one_of(frames(), st.binary(max_size=30)), st.integers(0, 2**40), st.integers(0, 2**50))
def test_account_is_counters_account(frame: bytes, count: int, nbytes: int) -> None:
    assert lane is not None
    assert lane.account(frame, count, nbytes) == python_account(frame, count, nbytes)
    view = memoryview(b"\0" + frame)[1:]
    assert lane.account(view, 1, len(frame)) == python_account(view, 1, len(frame))


@needs_lane
def test_account_partitions() -> None:
    """Kind vectors by hand, in KINDS order after frames and bytes."""
    assert lane is not None
    qinq_v6 = f.eth(f.BROADCAST, 0x86DD, bytes(40), ((0x88A8, 5), (0x8100, 6)))
    assert lane.account(qinq_v6, 2, 3000) == (2, 3000, 0, 2, 0, 0, 0, 2, 2, 0, 0)
    old_qinq = f.eth(f.HOST_B, 0x0800, bytes(20), ((0x9100, 5),))  # 0x9100: not a tag here
    assert lane.account(old_qinq, 1, 60) == (1, 60, 1, 0, 0, 0, 0, 0, 0, 1, 0)
    assert lane.account(b"\x01" * 13, 4, 52) == (4, 52, 0, 0, 0, 0, 0, 0, 0, 0, 4)


@needs_lane
def test_another_sites_probe_from_the_tunnel_needs_no_look_where_the_kernel_cuts_probes() -> None:
    """Issue 26: other sites' probes are written into the bridge by the lane
    itself once the kernel keeps them from crossing between taps (tap_cut);
    ours, a hub's (noted, and relayed by a hub) and any probe without tap_cut
    still go to Python's detector."""
    assert lane is not None

    def probe(site: bytes, flags: int = 0, vid: int = 0) -> bytes:
        body = PROBE_MAGIC + bytes([PROBE_VERSION, flags]) + vid.to_bytes(2, "big") + site
        return f.eth(bytes.fromhex("0f6272646772"), 0x88B5, body + bytes(8),
                     ((0x8100, vid),) if vid else ())

    spoke, hub_probe, ours = probe(b"\x01" * 8), probe(b"\x01" * 8, flags=1), probe(OUR_SITE)
    tagged = probe(b"\x01" * 8, vid=20)
    for config in (GuardConfig(), GuardConfig(vlans=(20,))):
        assert lane.guard_fast_in(native_cfg(config, tap_cut=True, hub=True), spoke)
        for hub in (False, True):  # a hub's probe: noted (a spoke stops probing it), relayed
            assert not lane.guard_fast_in(native_cfg(config, tap_cut=True, hub=hub), hub_probe)
        assert not lane.guard_fast_in(native_cfg(config, tap_cut=True, hub=True), ours)
        assert not lane.guard_fast_in(native_cfg(config, tap_cut=False, hub=True), spoke)
        assert lane.guard_fast_in(native_cfg(config, tap_cut=True), tagged)
    # a VLAN the allow-list leaves out is still refused (Python says why)
    assert not lane.guard_fast_in(native_cfg(GuardConfig(vlans=(10,), untagged=False), True),
                                  tagged)
    # the detector notes nothing for them, so nothing is lost by not telling it
    detector = LoopDetector(site_id=OUR_SITE, tap_cut=True, hub=True)
    guard = Guard(GuardConfig(), "spoke", loop=detector, flaps=MacFlaps())
    assert guard.inbound(spoke, NOW) is None
    assert not detector._delivered


def python_flood_class(config: GuardConfig, frame: bytes, dst_known: bool) -> int:
    """Which storm bucket Guard._look takes a token from for a frame that only
    storm control keeps from the fast path: 1 the ND share, 2 the general
    budget, 0 none (not flooded, refused or looked at for another reason, a
    control frame or probe)."""
    if config.flood_rate == 0 or len(frame) < 14 or (not frame[0] & 1 and dst_known):
        return 0
    if not python_fast_out(dataclasses.replace(config, flood_rate=0), frame, None):
        return 0
    kind = look_untrusted(frame)[0]
    if kind in NEIGHBOUR_KINDS:
        return 1
    return 0 if kind in (FrameKind.LINK_LOCAL, FrameKind.LOOP_PROBE) else 2


@needs_lane
@settings(max_examples=700, deadline=None)
@given(frames(), st.booleans())
def test_the_lanes_flood_class_is_the_bucket_python_would_charge(frame: bytes,
                                                                 dst_known: bool) -> None:
    """bn_guard_flood_class (the lane passes a flooded frame on a lent token of
    that bucket) names the bucket Guard._look would take from, or leaves the
    frame to Python (0: it may be more careful than Python, never different)."""
    assert lane is not None
    for config in CONFIGS:
        native = lane.guard_flood_class(guard_cfg(config), frame, dst_known)
        assert native in (0, python_flood_class(config, frame, dst_known)), (config, frame.hex())
        if native:
            assert not lane.guard_fast_out(guard_cfg(config), frame, dst_known)


@needs_lane
def test_ordinary_lan_multicast_is_classed_for_the_lane() -> None:
    """What a quiet LAN floods (ARP, IPv6 ND and MLD, IPv4 multicast) has a
    class, so a hub's lane passes it to every spoke without Python."""
    assert lane is not None
    cfg = guard_cfg(GuardConfig())
    ns = f.eth(f.ALL_NODES, 0x86DD, f.ipv6(58, f.icmp6(135) + bytes(20)))
    mld = f.eth(bytes.fromhex("333300000016"), 0x86DD, f.ipv6(58, f.icmp6(143) + bytes(20)))
    arp = f.eth(f.BROADCAST, 0x0806, arp_body())
    mdns = f.eth(bytes.fromhex("01005e0000fb"), 0x0800, f.ipv4(17, f.udp(5353, 5353, bytes(30))))
    assert [lane.guard_flood_class(cfg, x, False) for x in (ns, arp, mld, mdns)] == [1, 1, 2, 2]
    bpdu = f.eth(bytes.fromhex("0180c2000000"), 0x0027, bytes(40))
    assert lane.guard_flood_class(cfg, bpdu, False) == 0
    assert lane.guard_flood_class(guard_cfg(GuardConfig(flood_rate=0)), arp, False) == 0
