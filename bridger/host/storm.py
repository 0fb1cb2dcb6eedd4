"""Storm control in the kernel: flooded frames cut before a peer's tap queue.

The guard (``bridger.guard``) decides precisely which flooded frames cross to
a peer, but only after bridger has read them from the peer's tap.  In a
broadcast storm the kernel queues the whole storm on the tap first; when the
daemon falls behind, the queue overflows and the unicast behind the storm is
dropped with it.  So a first, cheap cut happens in the kernel, in one nftables
table of the bridge family per bridge::

    table bridge bridger_<bridge>
      map taps: tap name -> jump tap_<tap>
      set peers: tap names
      chain postrouting (hook postrouting): group destination -> oifname vmap @taps
      chain forward (hook forward): loop probe from a tap to a tap -> drop
      chain tap_<tap>: (1) ARP, 802.1Q-tagged ARP, IPv6 ND   -> limit nd_<tap>
                       (2) loop probes, IEEE link-local (BPDU) -> limit ctl_<tap>
                       (3) any other group frame             -> limit flood_<tap>
                       over a limit: counter storm_<tap>, drop

1. The hook is **postrouting**: it sees every frame the bridge sends out of a
   port, forwarded from the LAN (the storm) and sent by the gateway itself,
   once per port, before the frame is queued on the tap.  (``forward`` sees
   only the forwarded ones.)
2. Only frames with the group bit (broadcast, multicast) go further: unicast
   costs one compare.  Unknown unicast, which the bridge floods too, cannot be
   told from known unicast here (nftables has no view of the bridge's FDB): it
   stays with the guard.
3. Each class has the guard's budget for it, times :data:`MARGIN`: ARP/ND the
   whole ``flood_rate`` (the guard gives them their share and then the general
   budget), control frames the guard's control bucket, the rest the general
   budget.  Ordinary flooding is therefore decided by the guard alone; only a
   storm meets the kernel's limit.  A broadcast storm does not eat ARP's
   budget: hosts keep resolving each other.
4. The table is host state: created through the journal (undo: delete the
   table) before the taps, one chain per tap added and removed with the tap,
   deleted on stop.  ``nft`` runs as a subprocess (``nft -f -``, one atomic
   transaction per change; at start the table and the chains of every planned
   tap are one: a hub of a hundred spokes starts with one ``nft`` run, not a
   hundred and one).  Without ``nft``, or when it fails, one line is
   logged and the guard alone does storm control, as before.
5. Other sites' loop probes never cross the bridge from one tap to another
   (hook ``forward``, both ports in ``@peers``): in mode hub the bridge would
   flood every spoke's probes to every other spoke, a cost that grows with
   the square of the spokes (issue 26; docs/guard.md, loop protection 5.).
   The guard drops those copies too where this table is missing.
6. The drop counters are read in the slow path only (:meth:`KernelStorm.read`,
   at most once a second) and shown as the drop reason ``storm_kernel``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from bridger.errors import HostError
from bridger.guard.constants import CONTROL_BURST, CONTROL_RATE
from bridger.host.journal import Record
from bridger.host.tap import _in_netns

log = logging.getLogger("bridger")

#: Each kernel limit is the guard's budget for its class times this: the guard
#: decides ordinary flooding, the kernel cuts only what is clearly a storm.
MARGIN = 1.25
#: Seconds an ``nft`` run may take before it counts as failed.
NFT_TIMEOUT = 10.0
#: The journal record's operation.
UNDO_OP = "del_nft_table"

_ND_TYPES = ("nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
             "nd-neighbor-advert, nd-redirect")
_LINK_LOCAL = "ether daddr & ff:ff:ff:ff:ff:f0 == 01:80:c2:00:00:00"
_PROBE = "ether type 0x88b5"
_PROBE_TAGGED = "vlan type 0x88b5"
_NAME_OK = re.compile(r"[A-Za-z0-9_.-]+")


class NftError(HostError):
    """``nft`` is missing or refused a change."""


@dataclass(frozen=True)
class StormBudget:
    """The guard's flood budget for one peer, in frames per second and frames.

    ``nd_share``: the part of ``rate`` (and ``burst``) kept for ARP/ND; the rest
    is the general budget (docs/guard.md, storm control).
    """

    rate: int
    burst: int
    nd_share: float = 0.25

    def __post_init__(self) -> None:
        if self.rate < 1 or self.burst < 1 or not 0 <= self.nd_share < 1:
            raise ValueError("storm budget: rate and burst must be >= 1, nd_share in [0, 1)")

    @classmethod
    def of(cls, flood_rate: int, burst: int, nd_share: float) -> StormBudget | None:
        """The budget of a guard config (``flood_rate = 0``: storm control off, None)."""
        if flood_rate <= 0:
            return None
        return cls(flood_rate, burst or flood_rate, nd_share)

    def limits(self) -> dict[str, tuple[int, int]]:
        """Kernel limit per class: name -> (frames per second, burst frames)."""
        general = 1.0 - self.nd_share

        def scaled(rate: float, burst: float) -> tuple[int, int]:
            return max(1, math.ceil(rate * MARGIN)), max(1, math.ceil(burst * MARGIN))

        return {
            "nd": scaled(self.rate, self.burst),
            "ctl": scaled(CONTROL_RATE, CONTROL_BURST),
            "flood": scaled(self.rate * general, self.burst * general),
        }


def nft_ident(name: str) -> str:
    """An nftables identifier for an interface name (table, chain and object names
    cannot be quoted): kept as it is when it is made of letters, digits, ``_.-``,
    else those characters plus a checksum of the name (never two taps on one)."""
    if _NAME_OK.fullmatch(name):
        return name
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + f"_{zlib.crc32(name.encode()):08x}"


def table_name(bridge: str) -> str:
    return f"bridger_{nft_ident(bridge)}"


def _quoted(ifname: str) -> str:
    """An interface name as an nft string (ifnames hold no quote or whitespace
    the kernel accepts, but be exact anyway)."""
    if '"' in ifname or "\\" in ifname or any(c.isspace() for c in ifname):
        raise NftError(f"interface name {ifname!r} cannot be written for nft")
    return f'"{ifname}"'


# -- scripts (pure: tested without a kernel) -------------------------------------------------------


def table_script(table: str) -> str:
    """A fresh table (an old one of that name is replaced): the hook and the empty map."""
    return (
        f"add table bridge {table}\n"
        f"delete table bridge {table}\n"
        f"table bridge {table} {{\n"
        "  map taps { type ifname : verdict; }\n"
        "  set peers { type ifname; }\n"
        "  chain postrouting {\n"
        "    type filter hook postrouting priority 0; policy accept;\n"
        "    ether daddr & 01:00:00:00:00:00 == 01:00:00:00:00:00 oifname vmap @taps\n"
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f"    {_PROBE} iifname @peers oifname @peers drop\n"
        f"    {_PROBE_TAGGED} iifname @peers oifname @peers drop\n"
        "  }\n"
        "}\n"
    )


def delete_script(table: str) -> str:
    """Delete the table; a table that is already gone is not an error."""
    return f"add table bridge {table}\ndelete table bridge {table}\n"


def tap_script(table: str, tap: str, budget: StormBudget) -> str:
    """The chain, limits and counter of one tap (idempotent: replaces its rules)."""
    t, at = nft_ident(tap), f"bridge {table}"
    chain = f"tap_{t}"
    lines = [f"add counter {at} storm_{t}"]
    for cls, (rate, burst) in budget.limits().items():
        lines.append(f"add limit {at} {cls}_{t} "
                     f"{{ rate over {rate}/second burst {burst} packets }}")
    lines += [f"add chain {at} {chain}", f"flush chain {at} {chain}"]
    classes = (
        ("ether type arp", "nd"),
        ("vlan type arp", "nd"),
        (f"icmpv6 type {{ {_ND_TYPES} }}", "nd"),
        (_PROBE, "ctl"),
        (_LINK_LOCAL, "ctl"),
    )
    for match, cls in classes:
        lines.append(f"add rule {at} {chain} {match} limit name {cls}_{t} "
                     f"counter name storm_{t} drop")
        lines.append(f"add rule {at} {chain} {match} accept")
    lines.append(f"add rule {at} {chain} limit name flood_{t} counter name storm_{t} drop")
    lines.append(f"add element {at} taps {{ {_quoted(tap)} : jump {chain} }}")
    lines.append(f"add element {at} peers {{ {_quoted(tap)} }}")
    return "\n".join(lines) + "\n"


def untap_script(table: str, tap: str) -> str:
    """Remove one tap's chain, limits and counter."""
    t, at = nft_ident(tap), f"bridge {table}"
    return "\n".join([
        f"delete element {at} taps {{ {_quoted(tap)} }}",
        f"delete element {at} peers {{ {_quoted(tap)} }}",
        f"flush chain {at} tap_{t}",
        f"delete chain {at} tap_{t}",
        f"delete counter {at} storm_{t}",
        *(f"delete limit {at} {cls}_{t}" for cls in ("nd", "ctl", "flood")),
    ]) + "\n"


def counters_untrusted(text: str, table: str) -> dict[str, int]:
    """``nft -j list counters table bridge TABLE`` -> counter name -> packets.

    Raises only ``ValueError`` (a document of another shape).
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"nft output is not JSON: {exc}") from None
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ValueError("nft output has no nftables list")
    found: dict[str, int] = {}
    for item in items:
        counter = item.get("counter") if isinstance(item, dict) else None
        if not isinstance(counter, dict) or counter.get("table") != table:
            continue
        name, packets = counter.get("name"), counter.get("packets")
        if isinstance(name, str) and type(packets) is int and packets >= 0:
            found[name] = packets
    return found


# -- running nft -----------------------------------------------------------------------------------


def nft_path() -> str | None:
    return shutil.which("nft")


def run_nft(args: list[str], script: str | None, netns: str | None) -> str:
    """Run ``nft ARGS`` (with ``script`` on stdin), in ``netns`` if given; its stdout.

    Every failure is one :class:`NftError` line.
    """
    nft = nft_path()
    if nft is None:
        raise NftError("nft not found")
    try:
        with _in_netns(netns):
            done = subprocess.run([nft, *args], input=script, capture_output=True, text=True,
                                  timeout=NFT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NftError(f"nft did not finish within {NFT_TIMEOUT:.0f} s") from exc
    except OSError as exc:
        raise NftError(f"cannot run nft: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        first = next((line for line in done.stderr.splitlines() if line.strip()), "")
        raise NftError(f"nft failed: {first or f'exit code {done.returncode}'}")
    return done.stdout


def undo_record(table: str, netns: str | None) -> Record:
    return {"op": UNDO_OP, "table": table, "netns": netns}


def apply_undo(rec: Record) -> None:
    """Delete the table of a journal record (already gone: success)."""
    netns = rec.get("netns")
    run_nft(["-f", "-"], delete_script(str(rec["table"])),
            netns if isinstance(netns, str) else None)


class KernelStorm:
    """The kernel's storm cut of one bridge: its table, one chain per tap, the counters.

    Made by the host session (journaled); :meth:`read` is for the daemon's slow
    path.  ``drops`` maps tap name -> frames the kernel dropped, as of the last
    :meth:`read` (monotonic while the tap exists).
    """

    def __init__(self, bridge: str, budget: StormBudget, netns: str | None = None) -> None:
        self.table = table_name(bridge)
        self.budget = budget
        self.netns = netns
        self.taps: set[str] = set()
        self.drops: dict[str, int] = {}

    def create(self, taps: Collection[str] = ()) -> None:
        """The table, with the chains of ``taps`` (the planned ones: they police
        the taps by name, from the moment each appears) in the same transaction.
        If nft refuses that, the table alone (raises :class:`NftError` if that
        fails too): the taps are then added one by one (:meth:`add_tap`)."""
        try:
            chains = "".join(tap_script(self.table, tap, self.budget) for tap in taps)
        except NftError:  # a name nft cannot take: add_tap says which
            chains = ""
        if chains:
            try:
                run_nft(["-f", "-"], table_script(self.table) + chains, self.netns)
            except NftError:
                pass
            else:
                self.taps.update(taps)
                return
        run_nft(["-f", "-"], table_script(self.table), self.netns)

    def delete(self) -> None:
        run_nft(["-f", "-"], delete_script(self.table), self.netns)
        self.taps.clear()

    def add_tap(self, tap: str) -> bool:
        """Police ``tap``; False (one line logged) if nft refused."""
        try:
            run_nft(["-f", "-"], tap_script(self.table, tap, self.budget), self.netns)
        except NftError as exc:
            log.warning("storm control in the kernel: not for tap %s (%s); the guard alone "
                        "limits its flooding", tap, exc)
            return False
        self.taps.add(tap)
        return True

    def remove_tap(self, tap: str) -> None:
        """Stop policing ``tap`` (its counter goes); an nft failure is logged only
        (the rules name a tap that is gone: they match nothing)."""
        if tap not in self.taps:
            return
        self.taps.discard(tap)
        self.drops.pop(tap, None)
        try:
            run_nft(["-f", "-"], untap_script(self.table, tap), self.netns)
        except NftError as exc:
            log.warning("storm control in the kernel: tap %s's rules stay until stop (%s)",
                        tap, exc)

    def read(self) -> Mapping[str, int]:
        """Read the counters (slow path: an ``nft`` run); returns and keeps ``drops``.

        A failure keeps the last values (raises :class:`NftError`)."""
        out = run_nft(["-j", "list", "counters", "table", "bridge", self.table], None,
                      self.netns)
        try:
            counts = counters_untrusted(out, self.table)
        except ValueError as exc:
            raise NftError(str(exc)) from exc
        taps = list(self.taps)  # the daemon's thread may add or remove one meanwhile
        self.drops = {tap: counts.get(f"storm_{nft_ident(tap)}", 0) for tap in taps}
        return self.drops

    def describe(self) -> str:
        limits = self.budget.limits()
        return ", ".join(f"{cls} {rate}/s burst {burst}" for cls, (rate, burst) in limits.items())

