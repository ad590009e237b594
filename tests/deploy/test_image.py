"""deploy/Dockerfile built and run with podman, as deploy/README.md says.

The image is built from the shipped Dockerfile and build context exactly
as the README's `docker build -f deploy/Dockerfile -t cqrps:0.1.0 .`
(podman reads deploy/Dockerfile.dockerignore the same way), with one
build argument: BASE_IMAGE. Without a registry the base is a Debian 12
image made here with debootstrap from the Debian mirror (kept in podman's
storage as localhost/cqrps-test-base:bookworm, so later runs skip it);
$CQR_IMAGE_BASE names another (e.g. debian:12-slim where Docker Hub is
reachable). Then the README's `docker run` (host ports picked by podman,
loopback only, a named volume for the data dir):

1. the image's HEALTHCHECK reports healthy and /readyz answers 200;
2. `cqrps-server --version` and `cqrps --version` run in the image, and
   the CLI on the host creates a table through the published port;
3. `stop -t 600` ends it with exit status 0 after the shutdown
   checkpoint, and a new container on the same volume restores the table.

Skipped (exit 77 under ctest) when podman is missing, or when no base
image exists and debootstrap is missing. On hosts with cgroup v1 mounted
beside v2 ("hybrid") crun refuses to start containers: runc is used when
installed. Container limits stay within this process's hard limits
(podman's default nofile exceeds them when CAP_SYS_RESOURCE is missing).

Environment (from ctest): CQRPS_SOURCE_DIR, CQRPS_CLI_BIN, CQRPS_VERSION.
"""

from __future__ import annotations

import http.client
import os
import resource
import shutil
import subprocess
import tempfile
import time
import unittest

from deploy_files import run_tests

SRC = os.environ.get("CQRPS_SOURCE_DIR", "")
CLI = os.environ.get("CQRPS_CLI_BIN", "")
VERSION = os.environ.get("CQRPS_VERSION", "")
BASE_TAG = "localhost/cqrps-test-base:bookworm"
MIRROR = os.environ.get("CQR_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def podman_global() -> list:
    """podman's global options for this host."""
    opts = ["podman"]
    if shutil.which("runc"):
        opts += ["--runtime", "runc"]
    return opts


def limits() -> list:
    """--ulimit options within our own hard limits."""
    out = []
    for name, res, cap in (("nofile", resource.RLIMIT_NOFILE, 65536),
                           ("nproc", resource.RLIMIT_NPROC, 32768)):
        hard = resource.getrlimit(res)[1]
        n = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        out += ["--ulimit", f"{name}={n}:{n}"]
    return out


def run(cmd, timeout=900, check=True, **kw) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       **kw)
    print(f"image: {' '.join(cmd[:6])}... {time.monotonic() - t0:.0f} s",
          flush=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}:\n"
                             f"{p.stderr[-3000:]}\n{p.stdout[-3000:]}")
    return p


def pm(*args, **kw) -> subprocess.CompletedProcess:
    return run(podman_global() + list(args), **kw)


def base_image() -> str:
    """The BASE_IMAGE to build from, made with debootstrap if need be."""
    if os.environ.get("CQR_IMAGE_BASE"):
        return os.environ["CQR_IMAGE_BASE"]
    if pm("image", "exists", BASE_TAG, check=False).returncode == 0:
        return BASE_TAG
    if not shutil.which("debootstrap"):
        raise unittest.SkipTest("no base image and no debootstrap "
                                "(.ci/install-deps.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="cqrps-rootfs-") as tmp:
        root = os.path.join(tmp, "rootfs")
        run(["debootstrap", "--variant=minbase", "bookworm", root, MIRROR],
            timeout=1200)
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."],
                               stdout=subprocess.PIPE)
        p = subprocess.run(podman_global() + ["import", "-", BASE_TAG],
                           stdin=tar.stdout, capture_output=True, text=True,
                           timeout=600)
        tar.stdout.close()
        tar.wait()
        if p.returncode != 0 or tar.returncode != 0:
            raise AssertionError(f"podman import: {p.stderr}")
    return BASE_TAG


def http_status(port: int, path: str) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", path)
    return c.getresponse().status


class ImageTest(unittest.TestCase):

    def setUp(self) -> None:
        if not shutil.which("podman"):
            self.skipTest("podman missing (.ci/install-deps.sh installs it)")
        if os.geteuid() != 0:
            self.skipTest("rootful podman: run as root")
        if not (SRC and CLI):
            self.skipTest("run through ctest (CQRPS_SOURCE_DIR)")
        self.tag = f"localhost/cqrps-test:{os.getpid()}"
        self.volume = f"cqrps-test-data-{os.getpid()}"
        self.names = []

    def tearDown(self) -> None:
        for n in self.names:
            pm("rm", "-f", "-t", "0", n, check=False, timeout=120)
        pm("volume", "rm", "-f", self.volume, check=False, timeout=120)
        pm("rmi", "-f", self.tag, check=False, timeout=120)

    def start(self) -> tuple:
        """The README's `docker run`, on ports podman picks; returns the
        container's name and host ports (server, metrics)."""
        name = f"cqrps-test-{os.getpid()}-{len(self.names)}"
        self.names.append(name)
        pm("run", "-d", "--name", name, *limits(),
           "-p", "127.0.0.1::7070", "-p", "127.0.0.1::7071",
           "-v", f"{self.volume}:/var/lib/cqrps", self.tag, timeout=120)
        ports = []
        for p in ("7070/tcp", "7071/tcp"):
            out = pm("port", name, p, timeout=60).stdout.strip()
            ports.append(int(out.rsplit(":", 1)[1]))
        # The HEALTHCHECK, as the engine runs it (start period 30 s).
        deadline = time.monotonic() + 60
        while pm("healthcheck", "run", name, check=False,
                 timeout=60).returncode != 0:
            if time.monotonic() > deadline:
                logs = pm("logs", name, check=False).stdout
                raise AssertionError(f"never healthy:\n{logs}")
            time.sleep(1)
        return name, ports[0], ports[1]

    def cli(self, port: int, *args: str) -> str:
        return run([CLI, "--addr", f"127.0.0.1:{port}", *args],
                   timeout=60).stdout

    def stop(self, name: str) -> str:
        pm("stop", "-t", "600", name, timeout=660)
        rc = pm("inspect", name, "--format", "{{.State.ExitCode}}",
                timeout=60).stdout.strip()
        logs = pm("logs", name, timeout=60)
        self.assertEqual(rc, "0", logs.stdout + logs.stderr)
        return logs.stdout + logs.stderr

    def test_build_and_run(self) -> None:
        base = base_image()
        # deploy/README.md, "Docker": docker build -f deploy/Dockerfile
        # -t cqrps:0.1.0 .  (from the repository root)
        pm("build", "--format", "docker", "--layers=false", *limits(),
           "--build-arg", f"BASE_IMAGE={base}",
           "-f", "deploy/Dockerfile", "-t", self.tag, ".",
           cwd=SRC, timeout=1500)
        out = pm("run", "--rm", *limits(), "--entrypoint", "cqrps-server",
                 self.tag, "--version", timeout=120).stdout
        self.assertIn(f"cqrps-server {VERSION}", out)
        out = pm("run", "--rm", *limits(), "--entrypoint", "cqrps",
                 self.tag, "--version", timeout=120).stdout
        self.assertIn(f"cqrps {VERSION}", out)

        name, port, mport = self.start()
        self.assertEqual(http_status(mport, "/readyz"), 200)
        self.cli(port, "create", "img", "--kind", "cqr", "--dim", "8",
                 "--rows", "16")
        logs = self.stop(name)
        self.assertIn("shutdown checkpoint", logs)
        user = pm("image", "inspect", self.tag, "--format",
                  "{{.Config.User}}", timeout=60).stdout.strip()
        self.assertEqual(user, "cqrps:cqrps")

        # A new container on the same volume restores the table.
        name, port, _ = self.start()
        self.assertIn("kind:           cqr", self.cli(port, "describe", "img"))
        self.stop(name)


if __name__ == "__main__":
    run_tests()
