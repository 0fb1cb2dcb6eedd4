"""Prepared-taps mode: the administrator made the taps; bridger changes nothing.

For sites that keep every privilege away from bridger: the taps are made
persistent and owned by the service user, and enslaved, by hand or by the
system's network configuration::

    ip tuntap add mode tap user bridger name berlin
    ip link set berlin master br0 up

and ``bridger up --prepared-taps`` runs as that user with no capability at
all. It attaches to each tap (TUNSETIFF on a tap the user owns needs no
privilege; it never creates one), takes the state-directory lock, and on stop
only closes its fds: the taps stay, as prepared. A reload that adds a peer
attaches to that peer's tap, which must be prepared first; a removed peer's
tap is only let go. No journal is written (there is nothing to undo) and
the kernel's storm table is off (it needs ``nft`` as root; the guard alone
limits flooding).
"""

from __future__ import annotations

import contextlib
import logging
import os
from types import TracebackType

from bridger.errors import HostError
from bridger.host.checks import check_name
from bridger.host.journal import StateLock
from bridger.host.setup import HostPlan, TapPlan
from bridger.host.tap import attach_tap, tap_master

log = logging.getLogger("bridger")


class PreparedHost:
    """The taps of a prepared host, held until :meth:`restore` (which restores nothing)."""

    def __init__(self, plan: HostPlan) -> None:
        self.plan = plan
        self.taps: dict[str, int] = {}
        self.bridge_name = plan.bridge
        self.storm = None
        self.restored = False
        self._lock = StateLock(plan.state_dir)
        try:
            for tap in plan.taps:
                self.add_tap(tap)
        except BaseException:
            self.restore()
            raise
        masters = {tap_master(name) for name in self.taps}
        if len(masters) == 1 and None not in masters:
            self.bridge_name = str(masters.pop())

    def flush_lan(self) -> None:
        """Nothing: a prepared host changes nothing (the learnt entries age out)."""

    def add_tap(self, tap: TapPlan) -> int:
        check_name(tap.name, "tap")
        if tap.name in self.taps:
            raise HostError(f"tap {tap.name} already exists in this session")
        fd, actual = attach_tap(tap.name, vnet=self.plan.offload)
        self.taps[actual] = fd
        if tap_master(actual) is None:
            log.warning("tap %s is in no bridge: its frames reach no LAN until it is "
                        "enslaved (ip link set %s master BRIDGE up)", actual, actual)
        return fd

    def remove_tap(self, name: str) -> None:
        fd = self.taps.pop(name, -1)
        if fd < 0:
            raise HostError(f"tap {name} is not one of this session's taps")
        os.close(fd)  # the tap stays, as the administrator made it

    def restore(self) -> None:
        for fd in self.taps.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.taps.clear()
        self._lock.release()
        self.restored = True

    def __enter__(self) -> PreparedHost:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()
