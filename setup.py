"""The optional native per-packet path (bridger.native._lane, C).

Everything else is in pyproject.toml.  The extension is optional: where no C
compiler, Python headers or libsodium headers are found, the build of it
fails with a warning and bridger installs without it (the pure-Python data
path runs, and says so in its log and in ``bridger status``).  See
docs/native.md.
"""

import shlex
import subprocess
from pathlib import Path

from setuptools import Extension, setup

SRC = Path("bridger/native/src")


def sodium_flags() -> dict[str, list[str]]:
    """libsodium's compile and link flags from pkg-config, else plain -lsodium."""
    flags: dict[str, list[str]] = {"include_dirs": [], "library_dirs": [], "libraries": [],
                                   "extra_compile_args": [], "extra_link_args": []}
    try:
        cflags, libs = (
            shlex.split(subprocess.run(["pkg-config", option, "libsodium"], check=True,
                                       capture_output=True, text=True).stdout)
            for option in ("--cflags", "--libs"))
    except (OSError, subprocess.CalledProcessError):
        flags["libraries"] = ["sodium"]
        return flags
    for flag in cflags:
        if flag.startswith("-I"):
            flags["include_dirs"].append(flag[2:])
        else:
            flags["extra_compile_args"].append(flag)
    for flag in libs:
        if flag.startswith("-l"):
            flags["libraries"].append(flag[2:])
        elif flag.startswith("-L"):
            flags["library_dirs"].append(flag[2:])
        else:
            flags["extra_link_args"].append(flag)
    if "sodium" not in flags["libraries"]:
        flags["libraries"].append("sodium")
    return flags


sodium = sodium_flags()

setup(
    ext_modules=[
        Extension(
            "bridger.native._lane",
            sources=sorted(str(p) for p in SRC.glob("*.c")),
            depends=sorted(str(p) for p in SRC.glob("*.h")),
            include_dirs=sodium["include_dirs"],
            library_dirs=sodium["library_dirs"],
            libraries=sodium["libraries"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-fno-strict-aliasing", *sodium["extra_compile_args"]],
            extra_link_args=sodium["extra_link_args"],
            optional=True,
        )
    ],
)
