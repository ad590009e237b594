"""`cmake --install` as a user runs it, and a program built against it.

- `cmake --install BUILD --prefix TMP` installs the server, the CLI, the
  shared library, the one header, cqrps.pc, the CMake package and the
  document the systemd unit's Documentation= names -- and nothing that
  was not asked for (the example trainer is a component of its own).
- The README's C example is examples/quickstart.c, verbatim; it compiles
  with `cc quickstart.c $(pkg-config --cflags --libs cqrps)` against the
  temporary prefix, and through find_package(cqrps) in a CMake project,
  and both programs run against a real server.

Environment (set by ctest): CQRPS_BUILD_DIR, CQRPS_SOURCE_DIR,
CQRPS_SERVER_BIN, CQRPS_VERSION.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest

from server_proc import Server

SRC = os.environ.get("CQRPS_SOURCE_DIR", "")
BUILD = os.environ.get("CQRPS_BUILD_DIR", "")
VERSION = os.environ.get("CQRPS_VERSION", "")
TIMEOUT = 300


def run(cmd, **kw) -> subprocess.CompletedProcess:
    """Runs cmd; a failure raises with its output."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                       **kw)
    if p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}:\n"
                             f"{p.stdout}\n{p.stderr}")
    return p


def readme_c_example() -> str:
    """The README's ```c block (the C client library section)."""
    with open(os.path.join(SRC, "README.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"^```c\n(.*?)^```$", text, re.M | re.S)
    if len(blocks) != 1:
        raise AssertionError(f"README.md has {len(blocks)} C blocks, not 1")
    return blocks[0]


class InstallTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls) -> None:
        if not (SRC and BUILD):
            raise unittest.SkipTest("run through ctest (CQRPS_BUILD_DIR)")
        cls.tmp = tempfile.mkdtemp(prefix="cqrps-install-")
        cls.prefix = os.path.join(cls.tmp, "prefix")
        run(["cmake", "--install", BUILD, "--prefix", cls.prefix])

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, rel: str) -> str:
        return os.path.join(self.prefix, rel)

    def test_installed_files(self) -> None:
        for rel in ("bin/cqrps-server", "bin/cqrps"):
            self.assertTrue(os.access(self.path(rel), os.X_OK), rel)
        for rel in ("include/cqrps.h", "lib/libcqrps.so",
                    f"lib/libcqrps.so.{VERSION}", "lib/pkgconfig/cqrps.pc",
                    "lib/cmake/cqrps/cqrpsConfig.cmake",
                    "lib/cmake/cqrps/cqrpsConfigVersion.cmake",
                    "share/doc/cqrps/README.md",
                    "share/doc/cqrps/docs/SECURITY.md",
                    "share/doc/cqrps/deploy/cqrps.conf.example",
                    "share/doc/cqrps/deploy/systemd/cqrps.service"):
            self.assertTrue(os.path.isfile(self.path(rel)), rel)
        # Asked for by name only: cmake --install --component examples.
        self.assertFalse(os.path.exists(self.path("bin/cqrps-train-gmf")))
        p = run([self.path("bin/cqrps-server"), "--help"])
        self.assertIn("--listen", p.stdout)

    def test_unit_documentation_is_installed(self) -> None:
        """Documentation=file:///usr/local/... names a file that
        `cmake --install` (prefix /usr/local) puts there."""
        unit = os.path.join(SRC, "deploy", "systemd", "cqrps.service")
        with open(unit, encoding="utf-8") as f:
            docs = re.findall(r"^Documentation=(.*)$", f.read(), re.M)
        self.assertTrue(docs, "the unit has no Documentation=")
        for url in docs[0].split():
            if not url.startswith("file://"):
                continue
            rel = os.path.relpath(url[len("file://"):], "/usr/local")
            self.assertFalse(rel.startswith(".."), url)
            self.assertTrue(os.path.isfile(self.path(rel)),
                            f"{url}: not installed")

    def test_readme_example_is_the_file(self) -> None:
        with open(os.path.join(SRC, "examples", "quickstart.c"),
                  encoding="utf-8") as f:
            self.assertEqual(readme_c_example(), f.read())

    def pkg_config(self, *args: str) -> str:
        env = dict(os.environ,
                   PKG_CONFIG_PATH=self.path("lib/pkgconfig"))
        return run(["pkg-config", *args, "cqrps"], env=env).stdout.strip()

    def run_example(self, exe: str) -> None:
        """Runs a quickstart build against a fresh server (twice: the
        second run finds the table)."""
        env = dict(os.environ, LD_LIBRARY_PATH=self.path("lib"))
        ldd = run(["ldd", exe], env=env).stdout
        self.assertIn(self.path("lib/libcqrps.so.0"), ldd)
        with Server() as srv:
            for _ in range(2):
                p = run([exe, srv.addr], env=env)
                self.assertRegex(p.stdout,
                                 r"cluster phase \d+ done: 2 ids assigned")
            self.assertEqual(srv.stop(), 0)
            self.assertTrue(srv.clean(), srv.log())

    def test_pkg_config_build(self) -> None:
        self.assertEqual(self.pkg_config("--modversion"), VERSION)
        flags = self.pkg_config("--cflags", "--libs")
        exe = os.path.join(self.tmp, "quickstart-pc")
        src = os.path.join(SRC, "examples", "quickstart.c")
        # As the file's comment says: cc FILE $(pkg-config ...) -o EXE,
        # with warnings on, and no include path of the source tree.
        run(["cc", "-Wall", "-Wextra", "-Werror", src, *shlex.split(flags),
             "-o", exe], cwd=self.tmp)
        self.run_example(exe)

    def test_find_package_build(self) -> None:
        proj = os.path.join(self.tmp, "cmake-user")
        os.makedirs(proj)
        with open(os.path.join(proj, "CMakeLists.txt"), "w") as f:
            f.write("cmake_minimum_required(VERSION 3.16)\n"
                    "project(user LANGUAGES C)\n"
                    f"find_package(cqrps {VERSION} REQUIRED)\n"
                    "add_executable(quickstart "
                    f"{os.path.join(SRC, 'examples', 'quickstart.c')})\n"
                    "target_link_libraries(quickstart PRIVATE cqrps::cqrps)\n")
        bdir = os.path.join(proj, "build")
        run(["cmake", "-S", proj, "-B", bdir,
             f"-DCMAKE_PREFIX_PATH={self.prefix}"])
        run(["cmake", "--build", bdir])
        self.run_example(os.path.join(bdir, "quickstart"))


if __name__ == "__main__":
    unittest.main()
