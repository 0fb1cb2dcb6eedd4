"""The libFuzzer targets of the native code, bounded for CI (scripts/fuzz.sh).

``BRIDGER_FUZZ_SECONDS`` sets the seconds per target (default 15); the long
run is in docs/native.md.  Where clang is missing the fuzz runs are skipped,
except as root (how CI runs, after scripts/setup.sh installed it): there they
fail.  The script itself is checked on throwaway harnesses: a clean one
passes and leaves its seed corpus as it was; a heap overflow, a leak,
undefined behaviour and a crash regression that still crashes each fail the
run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FUZZ_SH = REPO / "scripts" / "fuzz.sh"
HARNESSES = REPO / "bridger" / "native" / "fuzz"
CORPORA = REPO / "tests" / "native" / "corpus"
CRASHES = REPO / "tests" / "native" / "crashes"
SECONDS = int(os.environ.get("BRIDGER_FUZZ_SECONDS", "15"))
# "Small, a few dozen files at most" (checked in by hand, never grown by runs).
MAX_SEEDS = 100


def targets() -> list[str]:
    return sorted(p.stem.removeprefix("fuzz_") for p in HARNESSES.glob("fuzz_*.c"))


def need_fuzzer() -> None:
    missing = [tool for tool in ("clang",) if shutil.which(tool) is None]
    if not Path("/usr/include/sodium.h").exists():
        missing.append("libsodium headers")
    if not missing:
        return
    why = f"no {' or '.join(missing)} for libFuzzer (scripts/setup.sh installs them)"
    if os.geteuid() == 0:
        pytest.fail(f"{why}; as root (CI) the fuzz targets must run")
    pytest.skip(why)


def fuzz_sh(*args: str | Path | int, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(FUZZ_SH), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_every_target_has_a_seed_corpus_and_every_regression_a_target() -> None:
    for name in targets():
        seeds = [p for p in (CORPORA / name).glob("**/*") if p.is_file()]
        assert seeds, f"fuzz_{name}.c has no seeds in {(CORPORA / name).relative_to(REPO)}/"
        assert len(seeds) <= MAX_SEEDS, f"{name}: {len(seeds)} seeds; keep a few dozen"
    for kind in (CORPORA, CRASHES):
        orphans = sorted(p.name for p in kind.glob("*") if p.is_dir()
                         and p.name not in targets())
        assert not orphans, f"{kind.relative_to(REPO)}/ has dirs for no target: {orphans}"


def test_every_target_uses_the_shared_helper() -> None:
    """The input reader, CHECK and the lane's setup live once, in fuzz_common.h."""
    for name in targets():
        text = (HARNESSES / f"fuzz_{name}.c").read_text()
        assert '#include "fuzz_common.h"' in text, f"fuzz_{name}.c"
        for copy in ("#define CHECK", "rd_u8(rd *r) {", "rd_u16(rd *r) {"):
            assert copy not in text, f"fuzz_{name}.c has its own {copy!r}"


def test_fuzz_targets_bounded_run() -> None:
    need_fuzzer()
    names = targets()
    run = fuzz_sh("--seconds", SECONDS, timeout=60 + len(names) * (SECONDS + 60))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-6000:]
    if not names:
        assert "nothing to do" in run.stdout
    for name in names:
        assert f"  {name}: ok, " in run.stdout, run.stdout


# Throwaway harnesses for checking the script itself.
CLEAN = r"""
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "bn.h"
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t out[8];
    if (size >= 8) {
        bn_put_le64(out, bn_le64(data));
        if (memcmp(out, data, 8) != 0)
            __builtin_trap();
    }
    return 0;
}
"""
BUGS = {
    "overflow": r"""
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size >= 2 && data[0] == 'B' && data[1] == 'U') {
        uint8_t *copy = malloc(size);
        memcpy(copy, data, size);
        volatile uint8_t past = copy[size];
        (void)past;
        free(copy);
    }
    return 0;
}
""",
    "leak": r"""
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size >= 1 && data[0] == 'L') {
        volatile char *lost = malloc(16);
        lost[0] = 1;
    }
    return 0;
}
""",
    "shift": r"""
#include <stdint.h>
#include <stddef.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size >= 2 && data[0] == 'S') {
        volatile int shifted = 1 << data[1];
        (void)shifted;
    }
    return 0;
}
""",
}


def test_fuzz_sh_passes_a_clean_target_and_leaves_its_seeds(tmp_path: Path) -> None:
    need_fuzzer()
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "fuzz_clean.c").write_text(CLEAN)
    seeds = tmp_path / "corpus" / "clean"
    seeds.mkdir(parents=True)
    (seeds / "eight").write_bytes(b"12345678")
    (tmp_path / "crashes" / "clean").mkdir(parents=True)
    (tmp_path / "crashes" / "clean" / "fixed").write_bytes(b"\xff" * 9)
    run = fuzz_sh("--seconds", 2, "--harnesses", tmp_path / "h", "--corpora", tmp_path / "corpus",
                  "--crashes", tmp_path / "crashes", "--out", tmp_path / "out", timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "replaying 1 crash regression" in run.stdout
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("  clean: ok, ")]
    assert " DONE " in line and "cov: " in line
    assert int(line.split()[2]) > 1000  # executions
    assert [p.name for p in seeds.iterdir()] == ["eight"]
    assert (tmp_path / "out" / "corpus" / "clean" / "eight").exists()


def test_fuzz_sh_fails_on_a_crash_a_leak_ub_and_a_regression(tmp_path: Path) -> None:
    need_fuzzer()
    (tmp_path / "h").mkdir()
    for name, source in BUGS.items():
        (tmp_path / "h" / f"fuzz_{name}.c").write_text(source)
    (tmp_path / "h" / "fuzz_regressed.c").write_text(BUGS["overflow"])
    (tmp_path / "crashes" / "regressed").mkdir(parents=True)
    (tmp_path / "crashes" / "regressed" / "crash-bu").write_bytes(b"BUG")
    run = fuzz_sh("--seconds", 30, "--harnesses", tmp_path / "h", "--corpora", tmp_path / "corpus",
                  "--crashes", tmp_path / "crashes", "--out", tmp_path / "out", timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    for name in BUGS:
        assert f"  {name}: FAILED after " in run.stdout, run.stdout
        assert list((tmp_path / "out" / "artifacts" / name).iterdir()), f"{name}: no input kept"
    assert "  regressed: REGRESSION FAILED" in run.stdout
    assert "heap-buffer-overflow" in run.stderr
    assert "LeakSanitizer" in run.stderr or "leaked in" in run.stderr
    assert "runtime error: shift exponent" in run.stderr


def test_fuzz_sh_with_no_targets_has_nothing_to_do(tmp_path: Path) -> None:
    need_fuzzer()
    run = fuzz_sh("--harnesses", tmp_path, "--out", tmp_path / "out", timeout=60)
    assert run.returncode == 0, run.stderr
    assert "nothing to do" in run.stdout
    unknown = fuzz_sh("--harnesses", tmp_path, "nosuch", timeout=60)
    assert unknown.returncode == 2
    assert "no such target" in unknown.stderr
