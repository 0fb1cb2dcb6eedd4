"""Netlink primitives over pyroute2: link facts, address/route records, journal ops.

Addresses and routes are turned into plain JSON-able dicts ("records") that
name interfaces by name, so the journal can be replayed by a fresh process.
Every journal op is tolerant of already being done (deleting what is gone,
adding what exists), which makes replay idempotent.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from bridger.errors import HostError
from bridger.host.journal import Record
from bridger.host.pyroute import IPRoute, NetlinkError

AF_INET = 2
AF_INET6 = 10
ARPHRD_ETHER = 1
IFF_UP = 0x1
IFF_LOOPBACK = 0x8

# rtm_protocol values the kernel owns: it recreates these routes itself.
RTPROT_KERNEL = 2
RTPROT_RA = 9
# ifa_proto values (Linux >= 6.3) for addresses the kernel made itself.
IFAPROT_KERNEL_LO = 1
IFAPROT_KERNEL_RA = 2
IFAPROT_KERNEL_LL = 3

IFA_F_SECONDARY = 0x01
IFA_F_TEMPORARY = 0x01  # same bit, IPv6 meaning: privacy address
IFA_F_NODAD = 0x02
# Address flags that are configuration (kept when re-adding); the rest is state.
IFA_CONFIG_FLAGS = 0x02 | 0x10 | 0x100 | 0x200 | 0x400
RTNH_F_ONLINK = 0x04
INFINITY_LIFE = 0xFFFFFFFF

# Route attributes we cannot move faithfully; such a route makes setup refuse.
UNSUPPORTED_ROUTE_ATTRS = ("RTA_NH_ID", "RTA_ENCAP", "RTA_VIA", "RTA_NEWDST")


@dataclass(frozen=True)
class Link:
    """The facts about one interface that setup and checks need."""

    index: int
    name: str
    kind: str | None
    ifi_type: int
    flags: int
    mtu: int
    address: str | None
    master: int

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


def open_ipr(netns: str | None) -> IPRoute:
    """An IPRoute socket in ``netns`` (never creating the namespace)."""
    try:
        if netns is None:
            return IPRoute()
        return IPRoute(netns=netns, flags=0)
    except OSError as exc:
        where = f"network namespace {netns}" if netns else "the current namespace"
        raise HostError(f"cannot open netlink in {where}: {exc}") from exc


def dump(what: str, request: Callable[[], Iterable[Any]]) -> list[Any]:
    """Run a netlink dump to the end; a failure is a one-line HostError naming ``what``."""
    try:
        return list(request())
    except NetlinkError as exc:
        raise HostError(f"cannot list {what}: {exc}") from exc
    except OSError as exc:
        raise HostError(f"cannot list {what}: {exc.strerror or exc}") from exc


def _link_from_msg(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind,
        ifi_type=msg["ifi_type"],
        flags=msg["flags"],
        mtu=msg.get_attr("IFLA_MTU"),
        address=msg.get_attr("IFLA_ADDRESS"),
        master=msg.get_attr("IFLA_MASTER") or 0,
    )


def get_link(ipr: IPRoute, name: str | None = None, index: int | None = None) -> Link | None:
    """The interface called ``name`` (or with ``index``), or None if there is none."""
    try:
        key = {"index": index} if index is not None else {"ifname": name}
        msgs = ipr.link("get", **key)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
            return None
        raise HostError(f"cannot query interface {name or index}: {exc}") from exc
    return _link_from_msg(msgs[0])


def require_link(ipr: IPRoute, name: str) -> Link:
    link = get_link(ipr, name)
    if link is None:
        raise HostError(f"interface {name} disappeared")
    return link


# --- addresses ---------------------------------------------------------------


def is_kernel_address(msg: Any) -> bool:
    """True for addresses the kernel makes per link (fe80 link-local, SLAAC, privacy)."""
    if msg["family"] != AF_INET6:
        return False
    proto = msg.get_attr("IFA_PROTO")
    if proto in (IFAPROT_KERNEL_LO, IFAPROT_KERNEL_RA, IFAPROT_KERNEL_LL):
        return True
    flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
    if flags & IFA_F_TEMPORARY:
        return True
    address = msg.get_attr("IFA_ADDRESS") or ""
    # Kernels before 6.3 have no IFA_PROTO: treat every fe80::/10 as per-link.
    return proto is None and address.lower().startswith(("fe8", "fe9", "fea", "feb"))


def address_records(ipr: IPRoute, link: Link) -> list[Record]:
    """The movable addresses of ``link`` in kernel order (IPv4 primaries first)."""
    records = []
    for family in (AF_INET, AF_INET6):
        msgs = dump(f"the addresses of {link.name}",
                    partial(ipr.addr, "dump", family=family, index=link.index))
        for msg in msgs:
            if msg["index"] != link.index or is_kernel_address(msg):
                continue
            flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
            cache = msg.get_attr("IFA_CACHEINFO") or {}
            rec: Record = {
                "family": family,
                "address": msg.get_attr("IFA_ADDRESS"),
                "local": msg.get_attr("IFA_LOCAL"),
                "prefixlen": msg["prefixlen"],
                "scope": msg["scope"],
                "flags": flags & IFA_CONFIG_FLAGS,
                "broadcast": msg.get_attr("IFA_BROADCAST"),
                "label": msg.get_attr("IFA_LABEL"),
                "valid": cache.get("ifa_valid", INFINITY_LIFE),
                "preferred": cache.get("ifa_preferred", INFINITY_LIFE),
                "proto": msg.get_attr("IFA_PROTO"),
            }
            records.append(rec)
    return records


def relabel(label: str | None, old: str, new: str) -> str | None:
    """Map an IPv4 alias label ``eth1:0`` to ``br0:0`` (labels must start with the device)."""
    if label is None or not label.startswith(old):
        return None
    mapped = new + label[len(old) :]
    return mapped if len(mapped) < 16 else None


def _addr_kwargs(ipr: IPRoute, ifname: str, rec: Record) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "index": require_link(ipr, ifname).index,
        "family": rec["family"],
        "prefixlen": rec["prefixlen"],
        "scope": rec["scope"],
        "flags": rec["flags"],
    }
    kw["address"] = rec["address"]
    if rec["family"] == AF_INET and rec.get("local"):
        kw["local"] = rec["local"]  # differs from address only on point-to-point links
    if rec.get("broadcast"):
        kw["broadcast"] = rec["broadcast"]
    if rec.get("label"):
        kw["label"] = rec["label"]
    if rec.get("proto") is not None:
        kw["proto"] = rec["proto"]
    if rec["valid"] != INFINITY_LIFE or rec["preferred"] != INFINITY_LIFE:
        kw["IFA_CACHEINFO"] = {
            "ifa_valid": rec["valid"],
            "ifa_preferred": rec["preferred"],
            "cstamp": 0,
            "tstamp": 0,
        }
    return kw


def add_address(ipr: IPRoute, ifname: str, rec: Record) -> None:
    try:
        ipr.addr("add", **_addr_kwargs(ipr, ifname, rec))
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise HostError(
                f"cannot add address {rec['address']}/{rec['prefixlen']} to {ifname}: {exc}"
            ) from exc


def del_address(ipr: IPRoute, ifname: str, rec: Record) -> None:
    link = get_link(ipr, ifname)
    if link is None:
        return
    kw = _addr_kwargs(ipr, ifname, rec)
    kw.pop("IFA_CACHEINFO", None)
    kw.pop("flags", None)
    kw.pop("proto", None)
    try:
        ipr.addr("del", **kw)
    except NetlinkError as exc:
        if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
            raise HostError(
                f"cannot remove address {rec['address']}/{rec['prefixlen']} from {ifname}: {exc}"
            ) from exc


# --- routes ------------------------------------------------------------------


def _uses(msg: Any, index: int) -> bool:
    if msg.get_attr("RTA_OIF") == index:
        return True
    return any(nh.get("oif") == index for nh in msg.get_attr("RTA_MULTIPATH") or [])


def route_records(ipr: IPRoute, link: Link) -> list[Record]:
    """The routes (all tables, both families) that go out of ``link``, minus kernel-made ones.

    Raises HostError for routes we cannot move faithfully (nexthop objects,
    encapsulation), before anything is changed.
    """
    names = {}
    records = []
    for family in (AF_INET, AF_INET6):
        msgs = dump("the routes", partial(ipr.route, "dump", family=family))
        for msg in msgs:
            if not _uses(msg, link.index) or msg["proto"] in (RTPROT_KERNEL, RTPROT_RA):
                continue
            dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == AF_INET else "::")
            desc = f"{dst}/{msg['dst_len']} (table {msg.get_attr('RTA_TABLE') or msg['table']})"
            for attr in UNSUPPORTED_ROUTE_ATTRS:
                if msg.get_attr(attr) is not None:
                    raise HostError(
                        f"route {desc} via {link.name} uses {attr}, which bridger cannot move"
                    )
            metrics = msg.get_attr("RTA_METRICS")
            multipath = []
            for nh in msg.get_attr("RTA_MULTIPATH") or []:
                oif = nh.get("oif")
                if oif not in names:
                    other = get_link(ipr, index=oif)
                    names[oif] = other.name if other else None
                gw = dict(nh.get("attrs") or []).get("RTA_GATEWAY")
                multipath.append(
                    {"oif": names[oif], "gateway": gw, "hops": nh.get("hops", 0),
                     "flags": nh.get("flags", 0) & RTNH_F_ONLINK}
                )
            rec: Record = {
                "family": family,
                "dst": msg.get_attr("RTA_DST"),
                "dst_len": msg["dst_len"],
                "src": msg.get_attr("RTA_SRC"),
                "src_len": msg["src_len"],
                "tos": msg["tos"],
                "table": msg.get_attr("RTA_TABLE") or msg["table"],
                "proto": msg["proto"],
                "scope": msg["scope"],
                "type": msg["type"],
                "flags": msg["flags"] & RTNH_F_ONLINK,
                "priority": msg.get_attr("RTA_PRIORITY"),
                "gateway": msg.get_attr("RTA_GATEWAY"),
                "prefsrc": msg.get_attr("RTA_PREFSRC"),
                "oif": link.name if msg.get_attr("RTA_OIF") == link.index else None,
                "pref": msg.get_attr("RTA_PREF"),
                "metrics": {
                    name[len("RTAX_") :].lower(): value
                    for name, value in (metrics.get("attrs") if metrics else [])
                },
                "multipath": multipath,
            }
            records.append(rec)
    # Routes through a gateway need the on-link routes first: add those first.
    records.sort(key=lambda r: r["gateway"] is not None or bool(r["multipath"]))
    return records


def move_route(rec: Record, old: str, new: str) -> Record:
    """The same route with interface ``old`` replaced by ``new``."""
    moved = dict(rec)
    if moved["oif"] == old:
        moved["oif"] = new
    moved["multipath"] = [
        {**nh, "oif": new if nh["oif"] == old else nh["oif"]} for nh in rec["multipath"]
    ]
    return moved


def describe_route(rec: Record) -> str:
    dst = rec["dst"] or ("default" if rec["dst_len"] == 0 else "?")
    via = f" via {rec['gateway']}" if rec["gateway"] else ""
    dev = f" dev {rec['oif']}" if rec["oif"] else ""
    return f"{dst}/{rec['dst_len']}{via}{dev} table {rec['table']}"


def _route_kwargs(ipr: IPRoute, rec: Record) -> dict[str, Any]:
    kw: dict[str, Any] = {
        key: rec[key]
        for key in ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type")
    }
    kw["flags"] = rec["flags"]
    for key in ("dst", "src", "priority", "gateway", "prefsrc", "pref"):
        if rec.get(key) is not None:
            kw[key] = rec[key]
    if rec["oif"]:
        kw["oif"] = require_link(ipr, rec["oif"]).index
    if rec["metrics"]:
        kw["metrics"] = dict(rec["metrics"])
    if rec["multipath"]:
        hops = []
        for nh in rec["multipath"]:
            hop: dict[str, Any] = {"hops": nh["hops"], "flags": nh["flags"]}
            if nh["oif"]:
                hop["oif"] = require_link(ipr, nh["oif"]).index
            if nh["gateway"]:
                hop["gateway"] = nh["gateway"]
            hops.append(hop)
        kw["multipath"] = hops
    return kw


def add_route(ipr: IPRoute, rec: Record) -> None:
    try:
        ipr.route("add", **_route_kwargs(ipr, rec))
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise HostError(f"cannot add route {describe_route(rec)}: {exc}") from exc


def del_route(ipr: IPRoute, rec: Record) -> None:
    try:
        kw = _route_kwargs(ipr, rec)
    except HostError:
        return  # its interface is gone, and the route with it
    kw.pop("metrics", None)
    kw.pop("pref", None)
    try:
        ipr.route("del", **kw)
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
            raise HostError(f"cannot remove route {describe_route(rec)}: {exc}") from exc


# --- links -------------------------------------------------------------------


def del_link(ipr: IPRoute, ifname: str, kind: str) -> None:
    """Delete ``ifname`` if it exists and is still of ``kind`` (never someone else's device)."""
    link = get_link(ipr, ifname)
    if link is None:
        return
    if link.kind != kind:
        raise HostError(f"not deleting {ifname}: it is now a {link.kind or 'plain'} device")
    try:
        ipr.link("del", index=link.index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise HostError(f"cannot delete {ifname}: {exc}") from exc


def set_link(ipr: IPRoute, ifname: str, rec: Record) -> None:
    """Set the attributes present in ``rec``: master (name or None), mtu, txqlen, address,
    up, stp."""
    link = get_link(ipr, ifname)
    if link is None:
        raise HostError(f"interface {ifname} is gone; cannot restore it")
    try:
        if "master" in rec:
            master = 0 if rec["master"] is None else require_link(ipr, rec["master"]).index
            if master != link.master:
                ipr.link("set", index=link.index, master=master)
        if "stp" in rec:
            ipr.link("set", index=link.index, kind="bridge", br_stp_state=rec["stp"])
        if "mtu" in rec and rec["mtu"] != link.mtu:
            ipr.link("set", index=link.index, mtu=rec["mtu"])
        if "txqlen" in rec:
            ipr.link("set", index=link.index, txqlen=rec["txqlen"])
        if rec.get("address") and rec["address"] != link.address:
            ipr.link("set", index=link.index, address=rec["address"])
        if "up" in rec:
            ipr.link("set", index=link.index, state="up" if rec["up"] else "down")
    except NetlinkError as exc:
        raise HostError(f"cannot configure {ifname}: {exc}") from exc


def set_new_port(ipr: IPRoute, ifname: str, index: int, *, master: int, mtu: int,
                 txqlen: int, isolated: bool) -> None:
    """Make the new interface ``ifname`` (``index``, down) a port of the bridge
    with index ``master``: MTU, queue length and master in one request (the
    kernel sets the MTU before it enslaves), the port's isolated flag in a
    second if asked. A tap at start-up or reload; a hub makes one per spoke."""
    try:
        ipr.link("set", index=index, mtu=mtu, txqlen=txqlen, master=master)
    except NetlinkError as exc:
        raise HostError(f"cannot configure {ifname}: {exc}") from exc
    if isolated:
        try:
            ipr.brport("set", index=index, isolated=1)
        except NetlinkError as exc:
            raise HostError(f"cannot mark bridge port {ifname} isolated: {exc}") from exc


def set_up(ipr: IPRoute, ifname: str, index: int) -> None:
    """Bring interface ``ifname`` (``index``) up."""
    try:
        ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise HostError(f"cannot configure {ifname}: {exc}") from exc


def bridge_stp_state(ipr: IPRoute, link: Link) -> int:
    msgs = dump(f"the settings of bridge {link.name}", lambda: ipr.link("get", index=link.index))
    msg = msgs[0]
    data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    return int(data.get_attr("IFLA_BR_STP_STATE") or 0) if data is not None else 0
