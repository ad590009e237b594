"""Builds the cqrps package with libcqrps inside it when one was built.

The metadata is in pyproject.toml; this file only adds the C library to
the package. At build time (`pip install --no-build-isolation
client/python`) it looks for libcqrps.so, first match wins:

1. $CQRPS_LIBRARY (the file, or a directory holding libcqrps.so.0);
2. the build trees of the source checkout around this directory
   (build/client/, as `cmake -S . -B build` makes it, and the
   build-release/ and build-debug/ variants).

The library found is copied into the package as cqrps/libcqrps.so.0 and
the wheel is tagged for this platform; cqrps/_lib.py loads that copy
first. Without one the package is pure Python and finds an installed
libcqrps (`cmake --install`) through the dynamic loader's search path.
"""

import os
import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = pathlib.Path(__file__).resolve().parent
SONAME = "libcqrps.so.0"


def built_library():
    """The libcqrps to ship, or None."""
    env = os.environ.get("CQRPS_LIBRARY")
    if env:
        p = pathlib.Path(env)
        p = p / SONAME if p.is_dir() else p
        if not p.is_file():
            raise SystemExit(f"CQRPS_LIBRARY={env}: no such library")
        return p
    root = HERE.parent.parent
    for tree in ("build", "build-release", "build-debug"):
        p = root / tree / "client" / SONAME
        if p.is_file():
            return p
    return None


LIBRARY = built_library()


class BuildWithLibrary(build_py):
    """build_py, plus the library copied into the built package."""

    def run(self):
        super().run()
        if LIBRARY is not None:
            dest = pathlib.Path(self.build_lib) / "cqrps" / SONAME
            shutil.copyfile(LIBRARY.resolve(), dest)
            os.chmod(dest, 0o755)
            print(f"cqrps: shipping {LIBRARY} as {dest}")
        else:
            print("cqrps: no built libcqrps found; the package will use an "
                  "installed one")


class PlatformDistribution(Distribution):
    """A package that carries a shared library is not pure Python."""

    def has_ext_modules(self):
        return LIBRARY is not None


setup(cmdclass={"build_py": BuildWithLibrary}, distclass=PlatformDistribution)
