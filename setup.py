"""The optional native per-packet path (bridger.native._lane, C).

Everything else is in pyproject.toml.  The extension is optional: where no C
compiler, Python headers or libsodium headers are found, the build of it
fails with a warning and bridger installs without it (the pure-Python data
path runs, and says so in its log and in ``bridger status``).
"""

from pathlib import Path

from setuptools import Extension, setup

SRC = Path("bridger/native/src")

setup(
    ext_modules=[
        Extension(
            "bridger.native._lane",
            sources=sorted(str(p) for p in SRC.glob("*.c")),
            depends=sorted(str(p) for p in SRC.glob("*.h")),
            libraries=["sodium"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-fno-strict-aliasing"],
            optional=True,
        )
    ],
)
