"""`pip install .` in a brand-new venv gives a working `bridger` console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_pip_install_in_new_venv_gives_working_genkey_pubkey(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    bridger = env_dir / "bin" / "bridger"
    private = subprocess.run([str(bridger), "genkey"], capture_output=True, text=True, check=True)
    public = subprocess.run([str(bridger), "pubkey"], input=private.stdout, capture_output=True,
                            text=True, check=True)
    expected = subprocess.run([sys.executable, "-m", "bridger", "pubkey"], input=private.stdout,
                              capture_output=True, text=True, check=True)
    assert public.stdout == expected.stdout
    assert len(public.stdout.strip()) == 44
