"""The Python package installed as its README says, then used with no
environment variable set.

client/python/README.md's Install section gives two commands, run from
the source tree's root after the build:

    python3 -m venv --system-site-packages .venv
    .venv/bin/pip install --no-build-isolation client/python

The test reads them from the README (and checks that README.md shows the
same) and runs them literally, offline (pip gets --no-index through its
environment), in a scratch checkout: client/python copied, and the built
library where `cmake -S . -B build` puts it (build/client/). The
installed package must carry that library and work from another
directory with PYTHONPATH, CQRPS_LIBRARY and LD_LIBRARY_PATH unset.
Without a built library, the same install is pure Python and loads an
installed libcqrps through the dynamic loader's search path.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from typing import Dict, List

from server_proc import Server

SRC = os.environ.get("CQRPS_SOURCE_DIR",
                     os.path.join(os.path.dirname(__file__), "..", ".."))
TIMEOUT = 300
# What a user's shell would not have: everything that points the package
# at a library or a source tree. Sanitizer variables stay (an ASan build's
# library needs its runtime preloaded).
DROP = ("PYTHONPATH", "CQRPS_LIBRARY", "LD_LIBRARY_PATH", "PYTHONHOME",
        "VIRTUAL_ENV")

USE = (
    "import sys, cqrps, cqrps.torch, numpy as np\n"
    "import os\n"
    "c = cqrps.connect(sys.argv[1])\n"
    "c.create_table('pip', kind='cqr', dim=8, chunks=2, rows=16)\n"
    "print(c.lookup('pip', np.array([1, 2], np.uint64)).shape)\n"
    "print('package', cqrps.__file__)\n"
    "cqrps.library_path()\n"
    "maps = [ln.split()[-1] for ln in open('/proc/self/maps')\n"
    "        if 'libcqrps' in ln]\n"
    "print('library', maps[0])\n")


def have_venv_pip() -> bool:
    """python3-venv (ensurepip) and python3-pip are installed."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("ensurepip", "pip"))


def install_commands() -> List[str]:
    """The two install lines of client/python/README.md, which README.md
    must show too."""
    with open(os.path.join(SRC, "client", "python", "README.md"),
              encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Install", 1)[1].split("\n## ", 1)[0]
    cmds = [ln.strip() for ln in section.splitlines()
            if ln.startswith("    ") and ("venv" in ln or "pip " in ln)]
    if len(cmds) != 2:
        raise AssertionError(f"README Install section: {cmds}")
    with open(os.path.join(SRC, "README.md"), encoding="utf-8") as f:
        top = f.read()
    for c in cmds:
        if not re.search(rf"^    {re.escape(c)}$", top, re.M):
            raise AssertionError(f"README.md does not show: {c}")
    return cmds


def user_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROP}
    # "python3" is the interpreter the suite runs under (Debian's, as ctest
    # chose it), not whatever comes first on PATH (pyenv, a virtualenv).
    env["PATH"] = os.path.dirname(sys.executable) + ":" + env.get("PATH", "")
    env["PIP_NO_INDEX"] = "1"  # offline, as on a machine without PyPI
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


class PipInstallTest(unittest.TestCase):

    def setUp(self) -> None:
        if not have_venv_pip():
            self.skipTest("python3-venv / python3-pip missing "
                          "(.ci/install-deps.sh installs them)")
        self.lib = os.path.realpath(os.environ.get("CQRPS_LIBRARY", ""))
        if not os.path.isfile(self.lib):
            self.skipTest("CQRPS_LIBRARY (the built library) not set")
        self.tmp = tempfile.mkdtemp(prefix="cqrps-pip-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def checkout(self, with_build: bool) -> str:
        """A scratch source tree: client/python, and (with_build) the
        library where the README's build puts it."""
        root = os.path.join(self.tmp, "src")
        shutil.copytree(os.path.join(SRC, "client", "python"),
                        os.path.join(root, "client", "python"),
                        ignore=shutil.ignore_patterns(
                            "__pycache__", "*.egg-info", "build"))
        if with_build:
            d = os.path.join(root, "build", "client")
            os.makedirs(d)
            shutil.copy(self.lib, os.path.join(d, "libcqrps.so.0.1.0"))
            os.symlink("libcqrps.so.0.1.0", os.path.join(d, "libcqrps.so.0"))
            os.symlink("libcqrps.so.0", os.path.join(d, "libcqrps.so"))
        return root

    def install(self, root: str, readme: bool = True) -> str:
        """Runs the README's commands in root; returns the venv's python.
        readme=False: the same install, cheaper (no pip copied into the
        venv: Debian's pip runs in it)."""
        cmds = install_commands()
        if not readme:
            cmds = [f"{sys.executable} -m venv --system-site-packages "
                    "--without-pip .venv",
                    ".venv/bin/python -m pip install --no-build-isolation "
                    "client/python"]
        for cmd in cmds:
            r = subprocess.run(["bash", "-c", cmd], cwd=root, env=user_env(),
                               capture_output=True, text=True,
                               timeout=TIMEOUT)
            self.assertEqual(r.returncode, 0,
                             f"{cmd}\n{r.stdout}\n{r.stderr}")
        return os.path.join(root, ".venv", "bin", "python")

    def use(self, py: str, env: Dict[str, str]) -> Dict[str, str]:
        """Imports and uses the package from a directory outside the
        checkout; returns its 'package' and 'library' lines."""
        with Server() as srv:
            r = subprocess.run([py, "-c", USE, srv.addr], capture_output=True,
                               text=True, env=env, cwd=self.tmp,
                               timeout=TIMEOUT)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(srv.stop(), 0)
        self.assertIn("(2, 8)", r.stdout)
        return dict(ln.split(" ", 1) for ln in r.stdout.splitlines()[1:])

    def test_readme_install_ships_the_library(self) -> None:
        root = self.checkout(with_build=True)
        py = self.install(root)
        env = user_env()
        env.pop("PIP_NO_INDEX")
        out = self.use(py, env)
        site = subprocess.run([py, "-c", "import sysconfig; print("
                               "sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, env=env,
                              timeout=TIMEOUT).stdout.strip()
        self.assertTrue(out["package"].startswith(site), out)
        self.assertEqual(out["library"],
                         os.path.join(site, "cqrps", "libcqrps.so.0"))
        r = subprocess.run([py, "-m", "pip", "show", "-f", "cqrps"],
                           capture_output=True, text=True, env=env,
                           timeout=TIMEOUT)
        for f in ("cqrps/torch.py", "cqrps/py.typed", "cqrps/libcqrps.so.0"):
            self.assertIn(f, r.stdout)
        # A wheel with a shared library inside is not pure Python.
        wheel = [os.path.join(site, d, "WHEEL") for d in os.listdir(site)
                 if d.startswith("cqrps-") and d.endswith(".dist-info")]
        with open(wheel[0], encoding="utf-8") as f:
            self.assertIn("Root-Is-Purelib: false", f.read())

    def test_without_built_library_uses_installed_one(self) -> None:
        root = self.checkout(with_build=False)
        py = self.install(root, readme=False)
        # An installed libcqrps (as `cmake --install` lays it out) in a
        # directory of the dynamic loader's search path.
        libdir = os.path.join(self.tmp, "prefix", "lib")
        os.makedirs(libdir)
        shutil.copy(self.lib, os.path.join(libdir, "libcqrps.so.0.1.0"))
        os.symlink("libcqrps.so.0.1.0", os.path.join(libdir, "libcqrps.so.0"))
        env = user_env()
        env["LD_LIBRARY_PATH"] = libdir
        out = self.use(py, env)
        self.assertEqual(out["library"],
                         os.path.join(libdir, "libcqrps.so.0.1.0"))


if __name__ == "__main__":
    unittest.main()
