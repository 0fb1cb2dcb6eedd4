"""Issue 12 item 7: a failing address or route dump is a one-line HostError, not a traceback.

Before the fix ``address_records``/``route_records`` let pyroute2's
NetlinkError or OSError escape from `bridger up` as a raw traceback.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bridger.errors import HostError
from bridger.host import netlink as nl


class RefusingIPRoute:
    """The netlink seam with every dump refused by the kernel (failure injection)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def addr(self, *args: Any, **kwargs: Any) -> Any:
        raise NetlinkError(self.code, "refused")

    route = link = addr


def loopback() -> nl.Link:
    with IPRoute() as ipr:
        link = nl.get_link(ipr, "lo")
    assert link is not None
    return link


@pytest.mark.parametrize(("records", "what"), [
    (nl.address_records, "cannot list the addresses of lo"),
    (nl.route_records, "cannot list the routes"),
])
def test_dump_on_a_closed_socket_is_one_line(records: Any, what: str) -> None:
    ipr = IPRoute()
    ipr.close()  # a real error: the kernel answers EBADF
    with pytest.raises(HostError) as info:
        records(ipr, loopback())
    assert str(info.value) == f"{what}: Bad file descriptor"
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.parametrize(("records", "what"), [
    (nl.address_records, "cannot list the addresses of lo"),
    (nl.route_records, "cannot list the routes"),
    (nl.bridge_stp_state, "cannot list the settings of bridge lo"),
])
def test_dump_refused_by_netlink_is_one_line(records: Any, what: str) -> None:
    with pytest.raises(HostError) as info:
        records(RefusingIPRoute(errno.EPERM), loopback())
    assert str(info.value).startswith(what) and "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, NetlinkError)
