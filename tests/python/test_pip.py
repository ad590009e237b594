"""`pip install client/python` works offline with no compiler: into a
fresh virtual environment (seeing Debian's numpy and torch), from a copy
of the source (pip builds in-tree), and the installed package finds
libcqrps through $CQRPS_LIBRARY and talks to a real server."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from server_proc import Server

SRC = os.environ.get("CQRPS_SOURCE_DIR",
                     os.path.join(os.path.dirname(__file__), "..", ".."))
TIMEOUT = 180


def have_venv_pip() -> bool:
    """python3-venv (ensurepip) and python3-pip are installed."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("ensurepip", "pip"))


class PipInstallTest(unittest.TestCase):

    def test_install_and_use(self) -> None:
        if not have_venv_pip():
            self.skipTest("python3-venv / python3-pip missing "
                          "(.ci/install-deps.sh installs them)")
        with tempfile.TemporaryDirectory(prefix="cqrps-pip-") as tmp:
            src = os.path.join(tmp, "src")
            shutil.copytree(os.path.join(SRC, "client", "python"), src,
                            ignore=shutil.ignore_patterns(
                                "__pycache__", "*.egg-info", "build"))
            venv = os.path.join(tmp, "venv")
            subprocess.run([sys.executable, "-m", "venv",
                            "--system-site-packages", "--without-pip", venv],
                           check=True, timeout=TIMEOUT)
            py = os.path.join(venv, "bin", "python")
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
            r = subprocess.run(
                [py, "-m", "pip", "install", "--no-index",
                 "--no-build-isolation", src],
                capture_output=True, text=True, env=env, timeout=TIMEOUT)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            with Server() as srv:
                code = (
                    "import sys, cqrps, cqrps.torch, numpy as np\n"
                    "assert cqrps.__file__.startswith(sys.prefix), "
                    "cqrps.__file__\n"
                    f"c = cqrps.connect({srv.addr!r})\n"
                    "c.create_table('pip', kind='full', dim=4)\n"
                    "print(c.lookup('pip', [1, 2]).shape)\n"
                    "print(cqrps.library_path())\n")
                r = subprocess.run([py, "-c", code], capture_output=True,
                                   text=True, env=env, cwd=tmp,
                                   timeout=TIMEOUT)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("(2, 4)", r.stdout)
            if os.environ.get("CQRPS_LIBRARY"):
                self.assertIn(os.environ["CQRPS_LIBRARY"], r.stdout)
            r = subprocess.run([py, "-m", "pip", "show", "-f", "cqrps"],
                               capture_output=True, text=True, env=env,
                               timeout=TIMEOUT)
            self.assertIn("cqrps/torch.py", r.stdout)
            self.assertIn("cqrps/py.typed", r.stdout)


if __name__ == "__main__":
    unittest.main()
