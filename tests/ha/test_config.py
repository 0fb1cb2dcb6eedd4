"""The group's settings in [local]: site, priority, group_key, ha_follow (one-line errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridger.config import HaSettings, build_up_config
from bridger.errors import ConfigError
from bridger.keys import encode_key, generate_private_key, public_key, write_private_key_file

PEER = encode_key(public_key(generate_private_key()))


def write(tmp_path: Path, local: str) -> Path:
    own = tmp_path / "own.key"
    write_private_key_file(own, generate_private_key())
    write_private_key_file(tmp_path / "group.key", generate_private_key())
    path = tmp_path / "gw.toml"
    path.write_text(f'[local]\nlan = "eth1"\nkey = "own.key"\n{local}\n'
                    f'[[peers]]\nname = "berlin"\npublic_key = "{PEER}"\n')
    return path


def load(tmp_path: Path, local: str) -> HaSettings | None:
    return build_up_config({}, write(tmp_path, local), etc=tmp_path).ha


def test_no_site_no_group(tmp_path: Path) -> None:
    assert load(tmp_path, "") is None


def test_site_with_key_and_priority(tmp_path: Path) -> None:
    ha = load(tmp_path, 'site = "london"\ngroup_key = "group.key"\npriority = 150')
    assert ha == HaSettings(site="london", priority=150, group_key=tmp_path / "group.key")


def test_follow_needs_no_key(tmp_path: Path) -> None:
    ha = load(tmp_path, 'ha_follow = "/run/bridger/x.state"')
    assert ha is not None and ha.follow == Path("/run/bridger/x.state") and ha.site is None


@pytest.mark.parametrize(("local", "words"), [
    ('site = "london"', "local.site: needs local.group_key"),
    ('site = "lon don"\ngroup_key = "group.key"', "local.site: must be a name"),
    ('site = "london"\ngroup_key = "group.key"\npriority = 256', "local.priority: must be 0..255"),
    ('site = "london"\ngroup_key = "group.key"\npriority = true', "local.priority: must be 0..255"),
    ('priority = 5', "local.priority: needs local.site"),
    ('site = "london"\ngroup_key = "nope.key"', "nope.key"),
    ('site = "london"\ngroup_key = "group.key"\nstp = true', "local.stp: must be off"),
])
def test_bad_settings_are_one_line(tmp_path: Path, local: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, local)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_command_line_options(tmp_path: Path) -> None:
    from bridger.cli import build_parser, up_values

    path = write(tmp_path, "")
    args = build_parser().parse_args(["up", "--config", str(path), "--site", "paris",
                                      "--group-key", str(tmp_path / "group.key"),
                                      "--priority", "7"])
    ha = build_up_config(up_values(args), path, etc=tmp_path).ha
    assert ha is not None and (ha.site, ha.priority) == ("paris", 7)
