"""Building the optional native path, and installing without it.

1. A clean tree (the checkout's files, no build output) installs into a fresh
   venv with the C compiler made to fail (CC=/bin/false): the install
   succeeds, ``bridger.native.lane`` is None with a reason, and the CLI works
   -- the pure-Python fallback of issue 16.
2. The sdist of that tree carries the C sources, and installing it builds the
   extension.
3. As root (how CI runs, after scripts/setup.sh installed the toolchain), the
   project venv's extension must import: there a missing one fails, never
   skips.

No network: the fresh venvs have no pip of their own but see the running
venv's packages (pip, setuptools, trio, ...) through a .pth file, minus its
install of bridger itself, and pip runs with --no-index --no-deps
--no-build-isolation.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest
import setuptools

import bridger.native

REPO = Path(__file__).resolve().parents[2]
NATIVE_SRC = "bridger/native/src"
# pyproject.toml's build-system (its PEP 639 license string needs 77).
MIN_SETUPTOOLS = 77


def must_build() -> bool:
    """True where the native path is required: as root (CI)."""
    return os.geteuid() == 0


def need_setuptools() -> None:
    if int(setuptools.__version__.split(".")[0]) >= MIN_SETUPTOOLS:
        return
    why = (f"setuptools {setuptools.__version__} in {sys.prefix} cannot build bridger "
           f"(needs >= {MIN_SETUPTOOLS}; scripts/setup.sh installs it)")
    if must_build():
        pytest.fail(why)
    pytest.skip(why)


def clean_tree(dest: Path) -> Path:
    """The checkout's files (tracked or not ignored) without build output."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        listed = ""
    names = [name for name in listed.split("\0") if name]
    if not names:
        pytest.skip("not a git checkout")
    for name in names:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def fresh_venv(path: Path) -> Path:
    """A new venv that borrows the running venv's packages but not bridger.

    Its site-packages gets a .pth naming a directory of links to everything
    in ours but bridger's own install (its dist-info and editable finder), so
    pip there neither sees nor touches the project's install.
    """
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    shelf = path / "borrowed"
    shelf.mkdir()
    for directory in site.getsitepackages():
        for entry in sorted(Path(directory).iterdir()):
            if (entry.name.lower().startswith(("bridger", "__editable__")) or entry.suffix == ".pth"
                    or (shelf / entry.name).exists()):
                continue
            (shelf / entry.name).symlink_to(entry)
    Path(purelib, "borrowed.pth").write_text(f"{shelf}\n")
    return python


def pip_install(python: Path, target: Path, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-v", "--no-index", "--no-deps",
         "--no-build-isolation", "--no-cache-dir", str(target)],
        cwd=target.parent if target.is_file() else target, capture_output=True, text=True,
        timeout=120, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **env})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def probe(python: Path, cwd: Path) -> list[str]:
    """Where bridger and its extension come from in that venv, and why not."""
    code = ("import bridger, bridger.native as n; print(bridger.__file__); "
            "print(getattr(n.lane, '__file__', None)); print(n.unavailable)")
    return subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True,
                          check=True, timeout=60).stdout.splitlines()


@pytest.mark.slow
def test_install_without_a_compiler_falls_back_to_python(tmp_path: Path) -> None:
    need_setuptools()
    tree = clean_tree(tmp_path / "src")
    env_dir = tmp_path / "venv"
    python = fresh_venv(env_dir)
    pip = pip_install(python, tree, CC="/bin/false")
    # setuptools tried, warned and went on (optional=True):
    assert 'building extension "bridger.native._lane" failed' in pip.stdout + pip.stderr

    bridger_file, lane_file, reason = probe(python, tmp_path)
    assert Path(bridger_file).is_relative_to(env_dir)
    assert lane_file == "None"
    assert "not built" in reason
    helped = subprocess.run([str(env_dir / "bin" / "bridger"), "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert "genkey" in helped.stdout
    key = subprocess.run([str(env_dir / "bin" / "bridger"), "genkey"], cwd=tmp_path,
                         capture_output=True, text=True, check=True, timeout=60)
    assert len(key.stdout.strip()) == 44


@pytest.mark.slow
def test_sdist_carries_the_c_sources_and_builds_the_extension(tmp_path: Path) -> None:
    need_setuptools()
    if bridger.native.lane is None and not must_build():
        pytest.skip(f"no native toolchain here ({bridger.native.unavailable})")
    tree = clean_tree(tmp_path / "src")
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-c",
         f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"],
        cwd=tree, capture_output=True, text=True, check=True, timeout=120)
    (sdist,) = dist.glob("bridger-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    sources = {p.relative_to(tree).as_posix() for p in (tree / NATIVE_SRC).iterdir()}
    assert sources, "no native sources in the tree"
    assert sources <= members, f"missing from the sdist: {sorted(sources - members)}"

    env_dir = tmp_path / "venv"
    python = fresh_venv(env_dir)
    pip_install(python, sdist)
    _, lane_file, reason = probe(python, tmp_path)
    assert lane_file != "None", f"the extension was not built from the sdist: {reason}"
    assert Path(lane_file).is_relative_to(env_dir)


def test_project_venv_has_the_native_path() -> None:
    if bridger.native.lane is None:
        why = f"bridger.native._lane not importable in {sys.prefix}: {bridger.native.unavailable}"
        if must_build():
            pytest.fail(f"{why} (as root, scripts/setup.sh must have built it)")
        pytest.skip(why)
    assert bridger.native.lane.__name__ == "bridger.native._lane"
    assert Path(str(bridger.native.lane.__file__)).is_file()
