"""How status views show a peer's path (issue 23): the dashboard's path column
and the NAT demo's path lines, from status documents."""

from __future__ import annotations

import io
from typing import Any

import pytest

from bridger.demo import Gateway, demo_console, nat_path_lines
from bridger.status.dashboard import peer_path


@pytest.mark.parametrize("peer, shown", [
    ({"path": "direct", "endpoint_source": "introduced"}, "direct intro"),
    ({"path": "direct", "endpoint_source": "configured"}, "direct conf"),
    ({"path": "direct", "endpoint_source": "learnt"}, "direct learnt"),
    ({"path": "relayed", "via": "site-a"}, "via site-a"),
    ({"path": "none"}, "—"),
    ({}, "—"),  # a document from before issue 23
])
def test_dashboard_path_column(peer: dict[str, Any], shown: str) -> None:
    assert peer_path(peer) == shown


class _Snap(Gateway):
    def __init__(self, site: str, doc: dict[str, Any]) -> None:
        self.site = site
        self._doc = doc

    def snapshot(self) -> dict[str, Any] | None:
        return self._doc


def test_nat_demo_path_lines_print_names_as_they_are() -> None:
    gateways = [_Snap("B", {"peers": [
        {"name": "site-c", "path": "relayed", "via": "[bold]a[/bold]"},
        {"name": "site-d", "path": "direct", "endpoint": "10.100.4.2:55555",
         "endpoint_source": "introduced"},
        {"name": "site-e", "path": "none"},
    ]})]
    out = io.StringIO()
    console = demo_console(file=out, width=200, color_system=None)
    for line in nat_path_lines(gateways):
        console.print(line)
    assert out.getvalue().splitlines() == [
        "  site B -> site-c: relayed via [bold]a[/bold]",
        "  site B -> site-d: direct to 10.100.4.2:55555 (introduced)",
        "  site B -> site-e: no path",
    ]
