"""`bridger lab demo` prints data as it is: rich must not read it as markup or emoji.

Issue 12 item 5: strings from the network, the hosts or the configs went to rich
as plain ``str``, so an IPv6 endpoint in brackets (``[fd00:100:2::2]:55555``)
vanished as if it were a style tag and ``:smile:`` became an emoji. The demo now
builds ``Text`` and prints through a console with markup and emoji off.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from bridger.demo import add_demo_arguments, demo_console, mesh_plan_lines, pair_table
from bridger.lab.gateways import GatewayFiles, PeerEntry
from bridger.lab.ping import PingResult, parse_ping_output

HOSTILE = "[fd00:100:2::2]:55555 [bold]x[/bold] :smile: [link=http://e]y[/link]"


def printed(*renderables: object, console: str = "demo") -> str:
    """What the demo's console (or, to check the renderables alone, a default one) prints."""
    from rich.console import Console

    out = io.StringIO()
    make = demo_console if console == "demo" else Console
    printer = make(file=out, width=400, color_system=None)
    for r in renderables:
        printer.print(r)
    return out.getvalue()


def test_the_demo_console_prints_plain_strings_verbatim() -> None:
    assert printed(HOSTILE) == HOSTILE + "\n"


# Both layers hold on their own: the renderables are Text, and the console is plain.
CONSOLES = pytest.mark.parametrize("console", ["demo", "default"])


@CONSOLES
def test_ping_rows_show_hostile_strings_verbatim(console: str) -> None:
    results = [
        PingResult(HOSTILE, "hostB1", 4, "192.168.1.21", 3, 3, 0.5),
        PingResult(HOSTILE, "hostB1", 6, HOSTILE, 3, 0, None),
    ]
    text = printed(pair_table(results), console=console)
    assert text.count(HOSTILE) == 2, text
    assert "\N{SMILING FACE WITH SMILING EYES}" not in text and "😄" not in text
    assert "3/3 0.50 ms" in text and "0/3 no answer" in text


@CONSOLES
def test_plan_lines_show_hostile_config_strings_verbatim(console: str) -> None:
    lab = SimpleNamespace(
        prefix="bl[red]x",
        options=SimpleNamespace(nat_b=False),
        gateway_wan_address=lambda site: f"[{site}]:smile:",
    )
    peer = PeerEntry("site-b", bytes(32), HOSTILE)
    files = {
        "A": GatewayFiles(
            "A", "site-a", "mesh", bytes(32), Path("/k"), Path("/c"), Path("/s"), (peer,)
        )
    }
    text = printed(*mesh_plan_lines(lab, files), console=console)
    assert "lab bl[red]x:" in text
    assert "gateway [A]:smile:," in text
    assert f"peers site-b ({HOSTILE})" in text


def test_a_default_console_would_have_eaten_them() -> None:
    """The premise of the two tests above: rich's defaults do mangle these strings."""
    assert HOSTILE not in printed(HOSTILE, console="default")


@pytest.mark.parametrize(
    ("argv", "sites", "hub"),
    [([], 2, False), (["--sites", "4"], 4, False), (["--sites", "3", "--hub"], 3, True)],
)
def test_demo_options(argv: list[str], sites: int, hub: bool) -> None:
    parser = argparse.ArgumentParser()
    add_demo_arguments(parser)
    args = parser.parse_args([*argv, "--duration", "60"])
    assert (args.sites, args.hub, args.duration) == (sites, hub, 60.0)


@pytest.mark.parametrize("bad", ["1", "9", "x", "-2"])
def test_demo_refuses_site_counts_it_cannot_build(bad: str) -> None:
    parser = argparse.ArgumentParser()
    add_demo_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--sites", bad])


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            "3 packets transmitted, 3 received, 0% packet loss, time 402ms\n"
            "rtt min/avg/max/mdev = 0.041/0.052/0.061/0.008 ms\n",
            (3, 3, 0.052),
        ),
        ("3 packets transmitted, 0 received, 100% packet loss, time 2040ms\n", (3, 0, None)),
        ("3 packets transmitted, 2 packets received, 33% packet loss\n"
         "round-trip min/avg/max = 0.1/0.25/0.4 ms\n", (3, 2, 0.25)),
        ("ping: connect: Network is unreachable\n", (0, 0, None)),
    ],
)
def test_ping_summaries(output: str, expected: tuple[int, int, float | None]) -> None:
    assert parse_ping_output(output) == expected
