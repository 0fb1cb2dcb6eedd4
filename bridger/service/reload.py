"""What a configuration reload (SIGHUP, ``systemctl reload``) changes: a pure diff.

``plan_reload(old, new, old_private, new_private)`` compares the running
configuration with a freshly read and validated one and says, per peer, what
the daemon must do. It touches nothing; the daemon applies the plan in this
order, so a tap name or key that moves from one peer to another is free
before it is taken again:

1. ``removed``: stop the peer's tasks, ``live.retire_peer`` (its native
   sessions' keys zeroed; the core's ``bytes`` copies only dropped), remove
   its tap from the bridge;
2. ``changed``: the same name, public key and tap with a new psk, host, port
   or keepalive: the core peer is replaced (a new handshake, the old one
   retired the same way); the tap and its bridge port stay;
3. ``added``: add the tap (with its storm rules in the kernel, when on), the
   core peer and its tasks;
4. ``rekey_all``: this site's private key changed: a new identity, so every
   peer that stays handshakes again (with the new key), none restarts.

Peers are matched by name. A peer whose public key or tap changed is a
different peer on a different port: it is removed and added, not changed.
``unchanged`` peers keep their sessions and lose no frame (unless
``rekey_all``).

Only the peers and the private key change in a running daemon
(:data:`RELOADABLE`). Every other setting (the LAN, bridge, port, state
directory, mode, MTU, guard settings, ... and any setting added later) must
stay as it is: a new value is refused with one line naming the key, and the
running configuration stays. :func:`refused_line` is the log line for any
refusal (this one, or the config's own validation error).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from bridger.errors import ConfigError


class PeerLike(Protocol):
    """The fields of ``bridger.config.PeerSettings`` a reload compares."""

    @property
    def name(self) -> str: ...
    @property
    def public_key(self) -> bytes: ...
    @property
    def host(self) -> str | None: ...
    @property
    def port(self) -> int: ...
    @property
    def psk_file(self) -> Path | None: ...
    @property
    def persistent_keepalive(self) -> float: ...
    @property
    def tap(self) -> str: ...


P = TypeVar("P", bound=PeerLike)
P_co = TypeVar("P_co", bound=PeerLike, covariant=True)


class ConfigLike(Protocol[P_co]):
    """The fields of ``bridger.config.UpConfig`` a reload compares."""

    @property
    def peers(self) -> Sequence[P_co]: ...


#: The UpConfig fields a reload may change: the peers, and the key file (its key
#: is compared, see ``rekey_all``). All other fields are fixed while running.
RELOADABLE = frozenset({"peers", "key_file"})
#: Names of the fixed settings compared when a config is not a dataclass.
FIXED_FALLBACK = ("lan", "bridge", "listen", "state_dir", "mode", "wan_mtu", "stp", "offload",
                  "metrics", "dashboard")

#: Peer fields that a changed peer may differ in ("psk" is the key read from psk_file).
PEER_FIELDS = ("host", "port", "psk_file", "psk", "persistent_keepalive")


@dataclass(frozen=True)
class PeerChange(Generic[P]):
    """A peer with the same name, public key and tap, and other settings."""

    old: P
    new: P
    #: Which of :data:`PEER_FIELDS` differ, in that order.
    fields: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.new.name


@dataclass(frozen=True)
class ReloadPlan(Generic[P]):
    """The steps of one reload (apply in the order of the module docstring)."""

    removed: tuple[P, ...]
    changed: tuple[PeerChange[P], ...]
    added: tuple[P, ...]
    unchanged: tuple[P, ...]
    #: This site's private key changed: every remaining peer handshakes again.
    rekey_all: bool

    @property
    def empty(self) -> bool:
        return not (self.removed or self.changed or self.added or self.rekey_all)

    @property
    def taps_removed(self) -> tuple[str, ...]:
        return tuple(p.tap for p in self.removed)

    @property
    def taps_added(self) -> tuple[str, ...]:
        return tuple(p.tap for p in self.added)

    def describe(self) -> str:
        """One log line, e.g. ``reload: added rome; removed paris; changed berlin (psk);
        1 unchanged``."""
        if self.empty:
            return f"reload: no change ({len(self.unchanged)} peers unchanged)"
        parts = []
        if self.rekey_all:
            parts.append("new private key: every peer handshakes again")
        before = {p.name: p for p in self.removed}
        replaced = [p for p in self.added if p.name in before]
        added = [p.name for p in self.added if p.name not in before]
        removed = [p.name for p in self.removed if p.name not in {r.name for r in replaced}]
        if added:
            parts.append("added " + ", ".join(added))
        if removed:
            parts.append("removed " + ", ".join(removed))
        if replaced:
            parts.append("replaced " + ", ".join(
                f"{p.name} ({'public key' if p.public_key != before[p.name].public_key else 'tap'})"
                for p in replaced))
        if self.changed:
            parts.append("changed " + ", ".join(
                f"{c.name} ({', '.join(c.fields)})" for c in self.changed))
        parts.append(f"{len(self.unchanged)} unchanged")
        return "reload: " + "; ".join(parts)


def refused_line(error: BaseException) -> str:
    """The one log line for a refused reload: the error ``bridger up`` would print."""
    return f"reload refused, running configuration kept: {error}"


def _fixed_differences(old: object, new: object) -> Iterator[tuple[str, object, object]]:
    """(``local.KEY``, old value, new value) for each fixed setting that differs.

    A setting that is itself a record of settings (``guard``) is compared key by
    key, its keys being ``[local]`` keys too.
    """
    if dataclasses.is_dataclass(old) and not isinstance(old, type):
        names = [f.name for f in dataclasses.fields(old) if f.name not in RELOADABLE]
    else:
        names = list(FIXED_FALLBACK)
    for name in names:
        before, after = getattr(old, name, None), getattr(new, name, None)
        if before == after:
            continue
        if (dataclasses.is_dataclass(before) and not isinstance(before, type)
                and type(before) is type(after)):
            record: Any = before
            for inner in dataclasses.fields(record):
                b, a = getattr(before, inner.name), getattr(after, inner.name)
                if b != a:
                    yield f"local.{inner.name}", b, a
            continue
        yield f"local.{name}", before, after


def _shown(value: object) -> str:
    return repr(str(value)) if isinstance(value, Path | str) else repr(value)


def plan_reload(
    old: ConfigLike[P],
    new: ConfigLike[P],
    old_private: bytes,
    new_private: bytes,
    *,
    old_psks: Mapping[str, bytes | None] | None = None,
    new_psks: Mapping[str, bytes | None] | None = None,
) -> ReloadPlan[P]:
    """The plan from the running config ``old`` to the validated ``new`` one.

    ``old_psks``/``new_psks`` (peer name -> PSK read from its file) let a PSK
    whose file was rewritten in place count as a change; without them only the
    ``psk_file`` paths are compared. Raises :class:`ConfigError` (one line
    naming the key) for a setting that cannot change while running.
    """
    for key, before, after in _fixed_differences(old, new):
        raise ConfigError(
            f"{key} cannot change while running ({_shown(before)} -> "
            f"{_shown(after)}); restart bridger"
        )
    before_by_name = {p.name: p for p in old.peers}
    after_by_name = {p.name: p for p in new.peers}
    removed: list[P] = []
    changed: list[PeerChange[P]] = []
    added: list[P] = []
    unchanged: list[P] = []
    for name, was in before_by_name.items():
        now = after_by_name.get(name)
        if now is None or now.public_key != was.public_key or now.tap != was.tap:
            removed.append(was)
    for name, now in after_by_name.items():
        was_or_none = before_by_name.get(name)
        if (was_or_none is None or now.public_key != was_or_none.public_key
                or now.tap != was_or_none.tap):
            added.append(now)
            continue
        was = was_or_none
        fields = []
        for fld in PEER_FIELDS:
            if fld == "psk":
                if old_psks is not None and new_psks is not None and \
                        old_psks.get(name) != new_psks.get(name):
                    fields.append(fld)
            elif getattr(was, fld) != getattr(now, fld):
                fields.append(fld)
        if fields:
            changed.append(PeerChange(was, now, tuple(fields)))
        else:
            unchanged.append(now)
    return ReloadPlan(
        removed=tuple(removed), changed=tuple(changed), added=tuple(added),
        unchanged=tuple(unchanged), rekey_all=old_private != new_private,
    )
