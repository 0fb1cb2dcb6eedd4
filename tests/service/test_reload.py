"""The reload plan: which peers are added, removed, changed or kept, and what is refused.

The configs are built with the real ``bridger.config`` classes when they have
the multi-peer fields, and with a stand-in of the same contract otherwise.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from bridger import config as config_module
from bridger.errors import ConfigError
from bridger.service.reload import plan_reload, refused_line


@dataclass(frozen=True)
class StandInPeer:
    name: str
    public_key: bytes
    host: str | None = None
    port: int = 55555
    psk_file: Path | None = None
    persistent_keepalive: float = 25.0
    tap: str = "bridger-tap0"


@dataclass(frozen=True)
class StandInConfig:
    lan: str
    key_file: Path
    peers: tuple[StandInPeer, ...]
    mode: str = "mesh"
    listen: int = 55555
    bridge: str = "bridger0"
    state_dir: Path = field(default_factory=lambda: Path("/run/bridger/bridger0"))
    wan_mtu: int = 1500
    stp: bool = False
    dashboard: bool = True
    metrics: str | None = None
    offload: bool = True


REAL = hasattr(config_module, "PeerSettings")
KINDS = ["stand-in", "real"] if REAL else ["stand-in"]


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest) -> Any:
    if request.param == "real":
        peer_cls: Any = config_module.PeerSettings  # type: ignore[attr-defined]
        config_cls: Any = config_module.UpConfig
    else:
        peer_cls, config_cls = StandInPeer, StandInConfig

    def build(*peers: dict[str, Any], **local: Any) -> Any:
        made = tuple(peer_cls(**{"public_key": key(p["name"]), "tap": p["name"], **p})
                     for p in peers)
        return config_cls(lan="eth1", key_file=Path("/etc/bridger/private.key"),
                          peers=made, **local)

    return build


def key(name: str) -> bytes:
    return name.encode().ljust(32, b".")


PRIVATE = bytes(32)
BERLIN = {"name": "berlin", "host": "berlin.example", "port": 55555}
PARIS = {"name": "paris", "host": "192.0.2.2"}
ROME = {"name": "rome"}  # waits to be contacted


def names(peers: Any) -> list[str]:
    return [p.name for p in peers]


def test_same_config_is_an_empty_plan(make: Any) -> None:
    old = make(BERLIN, PARIS, ROME)
    plan = plan_reload(old, make(BERLIN, PARIS, ROME), PRIVATE, PRIVATE)
    assert plan.empty
    assert names(plan.unchanged) == ["berlin", "paris", "rome"]
    assert plan.describe() == "reload: no change (3 peers unchanged)"


def test_added_and_removed(make: Any) -> None:
    plan = plan_reload(make(BERLIN, PARIS), make(BERLIN, ROME), PRIVATE, PRIVATE)
    assert names(plan.added) == ["rome"]
    assert names(plan.removed) == ["paris"]
    assert names(plan.unchanged) == ["berlin"]
    assert plan.changed == ()
    assert (plan.taps_added, plan.taps_removed) == (("rome",), ("paris",))
    assert plan.describe() == "reload: added rome; removed paris; 1 unchanged"


@pytest.mark.parametrize(("edit", "fields"), [
    ({"host": "berlin2.example"}, ("host",)),
    ({"port": 4000}, ("port",)),
    ({"host": None}, ("host",)),  # now only waits to be contacted
    ({"psk_file": Path("/etc/bridger/berlin.psk")}, ("psk_file",)),
    ({"persistent_keepalive": 0.0}, ("persistent_keepalive",)),
    ({"host": "10.0.0.1", "persistent_keepalive": 5.0}, ("host", "persistent_keepalive")),
])
def test_changed_peer_keeps_name_key_and_tap(
    make: Any, edit: dict[str, Any], fields: tuple[str, ...]
) -> None:
    plan = plan_reload(make(BERLIN, PARIS), make({**BERLIN, **edit}, PARIS), PRIVATE, PRIVATE)
    assert [(c.name, c.fields) for c in plan.changed] == [("berlin", fields)]
    change = plan.changed[0]
    assert change.old.tap == change.new.tap == "berlin"
    assert (plan.added, plan.removed) == ((), ())
    assert names(plan.unchanged) == ["paris"]
    assert not plan.empty


@pytest.mark.parametrize("edit", [{"public_key": key("other")}, {"tap": "br-berlin"}])
def test_new_key_or_tap_is_a_different_peer(make: Any, edit: dict[str, Any]) -> None:
    plan = plan_reload(make(BERLIN, PARIS), make({**BERLIN, **edit}, PARIS), PRIVATE, PRIVATE)
    assert names(plan.removed) == ["berlin"] and names(plan.added) == ["berlin"]
    what = "public key" if "public_key" in edit else "tap"
    assert plan.describe() == f"reload: replaced berlin ({what}); 1 unchanged"
    assert plan.changed == ()
    assert plan.removed[0].public_key != plan.added[0].public_key or \
        plan.removed[0].tap != plan.added[0].tap


def test_renamed_peer_is_removed_then_added(make: Any) -> None:
    # Same key and tap under a new name: removal first frees both for the addition.
    plan = plan_reload(make(BERLIN), make({**BERLIN, "name": "spree", "tap": "berlin",
                                                 "public_key": key("berlin")}),
                       PRIVATE, PRIVATE)
    assert names(plan.removed) == ["berlin"] and names(plan.added) == ["spree"]
    assert plan.removed[0].public_key == plan.added[0].public_key


def test_psk_rewritten_in_place_counts_when_the_keys_are_given(make: Any) -> None:
    psk = {**BERLIN, "psk_file": Path("/etc/bridger/berlin.psk")}
    old, new = make(psk, PARIS), make(psk, PARIS)
    assert plan_reload(old, new, PRIVATE, PRIVATE).empty  # paths alone: same
    plan = plan_reload(old, new, PRIVATE, PRIVATE,
                       old_psks={"berlin": b"a" * 32, "paris": None},
                       new_psks={"berlin": b"b" * 32, "paris": None})
    assert [(c.name, c.fields) for c in plan.changed] == [("berlin", ("psk",))]
    assert plan.describe() == "reload: changed berlin (psk); 1 unchanged"


def test_new_private_key_rekeys_all(make: Any) -> None:
    plan = plan_reload(make(BERLIN, PARIS), make(BERLIN, PARIS), PRIVATE, b"\x01" * 32)
    assert plan.rekey_all and not plan.empty
    assert names(plan.unchanged) == ["berlin", "paris"]
    assert plan.describe().startswith("reload: new private key: every peer handshakes again")
    # The key file's path may change; only the key matters.
    moved = dataclasses.replace(make(BERLIN, PARIS), key_file=Path("/etc/bridger/new.key"))
    assert plan_reload(make(BERLIN, PARIS), moved, PRIVATE, PRIVATE).empty


def test_everything_at_once(make: Any) -> None:
    old = make(BERLIN, PARIS, ROME)
    new = make({**BERLIN, "port": 1}, {**PARIS, "public_key": key("paris2")},
               {"name": "oslo", "host": "192.0.2.9"})
    plan = plan_reload(old, new, PRIVATE, b"\x02" * 32)
    assert names(plan.removed) == ["paris", "rome"]
    assert names(plan.added) == ["paris", "oslo"]
    assert [(c.name, c.fields) for c in plan.changed] == [("berlin", ("port",))]
    assert plan.unchanged == ()
    assert plan.rekey_all


@pytest.mark.parametrize(("edit", "message"), [
    ({"flood_rate": 10}, "local.flood_rate cannot change while running"),
    ({"vlans": (10, 20)}, "local.vlans cannot change while running (None -> (10, 20))"),
    ({"loop_protection": False}, "local.loop_protection cannot change while running"),
])
def test_guard_settings_are_refused_by_their_own_key(
    edit: dict[str, Any], message: str
) -> None:
    from bridger.guard import GuardConfig

    peer = config_module.PeerSettings(name="berlin", public_key=key("berlin"))
    old = config_module.UpConfig(lan="eth1", key_file=Path("/k"), peers=(peer,))
    new = replace(old, guard=GuardConfig(**edit))
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_reload(old, new, PRIVATE, PRIVATE)


def test_a_setting_added_later_is_fixed_too() -> None:
    # Any UpConfig field but the peers and the key file is fixed, named after it.
    @dataclass(frozen=True)
    class Later(StandInConfig):
        newfangled: int = 1

    peers = (StandInPeer("berlin", key("berlin")),)
    old = Later(lan="eth1", key_file=Path("/k"), peers=peers)
    with pytest.raises(ConfigError, match=r"^local\.newfangled cannot change while running"):
        plan_reload(old, replace(old, newfangled=2), PRIVATE, PRIVATE)
    moved = replace(old, key_file=Path("/other"), peers=())
    assert names(plan_reload(old, moved, PRIVATE, PRIVATE).removed) == ["berlin"]


@pytest.mark.parametrize(("local", "message"), [
    ({"lan": "eth2"}, "local.lan cannot change while running ('eth1' -> 'eth2'); "
                      "restart bridger"),
    ({"listen": 4000}, "local.listen cannot change while running (55555 -> 4000); "
                       "restart bridger"),
    ({"bridge": "br1"}, "local.bridge cannot change while running"),
    ({"state_dir": Path("/run/x")}, "local.state_dir cannot change while running "
                                    "('/run/bridger/bridger0' -> '/run/x')"),
    ({"mode": "hub"}, "local.mode cannot change while running"),
    ({"wan_mtu": 1400}, "local.wan_mtu cannot change while running"),
    ({"stp": True}, "local.stp cannot change while running"),
    ({"offload": False}, "local.offload cannot change while running"),
    ({"metrics": ":9555"}, "local.metrics cannot change while running"),
])
def test_fixed_settings_are_refused_in_one_line(
    make: Any, local: dict[str, Any], message: str
) -> None:
    old = make(BERLIN)
    new = replace(old, **local)
    with pytest.raises(ConfigError) as info:
        plan_reload(old, new, PRIVATE, b"\x01" * 32)
    text = str(info.value)
    assert text.startswith(message)
    assert text.endswith("; restart bridger") and "\n" not in text
    assert refused_line(info.value) == f"reload refused, running configuration kept: {text}"
