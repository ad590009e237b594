"""A real cqrps-server for the Python tests (the twin of tests/common).

The server binary comes from $CQRPS_SERVER_BIN (set by CMake). It is
started on 127.0.0.1:0; the real address is read from its ready line
("cqrps-server listening on HOST:PORT") within a deadline; it is stopped
by PID (SIGTERM, then SIGKILL after a deadline). It dies with the test
process (PR_SET_PDEATHSIG) if the test crashes or ctest kills it. Its
stderr goes to a temporary file so a test can check that no sanitizer
report appeared and print the log when something failed.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import tempfile
import time
import unittest
from typing import List, Optional, Sequence

READY = "cqrps-server listening on "
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "WARNING: ThreadSanitizer")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the server when the test process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def server_bin() -> str:
    """The server binary, or SkipTest when the environment lacks it."""
    path = os.environ.get("CQRPS_SERVER_BIN")
    if not path or not os.access(path, os.X_OK):
        raise unittest.SkipTest(
            "CQRPS_SERVER_BIN is not set to the cqrps-server binary "
            "(run the tests through ctest)")
    return path


class Server:
    """One cqrps-server process; use as a context manager or start/stop."""

    def __init__(self, args: Sequence[str] = (),
                 listen: str = "127.0.0.1:0") -> None:
        self.args: List[str] = list(args)
        self.listen = listen
        self.proc: Optional[subprocess.Popen] = None
        self.addr = ""
        self._err = tempfile.NamedTemporaryFile(
            prefix="cqrps-pytest-server-", suffix=".log", delete=False)

    def start(self, timeout: float = 10.0) -> "Server":
        """Starts the server and waits for its ready line."""
        self.proc = subprocess.Popen(
            [server_bin(), "--listen", self.listen, *self.args],
            stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent)
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.kill()
                raise RuntimeError(
                    f"cqrps-server did not become ready in {timeout} s:\n"
                    + self.log())
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    continue
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        if not line.startswith(READY):
            self.kill()
            raise RuntimeError(f"unexpected first line {line!r}")
        self.addr = line[len(READY):].strip()
        return self

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM by PID, wait up to timeout, then SIGKILL. Returns the
        exit code, or None if it had to be killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        rc = self.proc.returncode
        if self.proc.stdout:
            self.proc.stdout.close()
        return rc if rc >= 0 else None

    def pause(self, timeout: float = 10.0) -> None:
        """SIGSTOP, then waits until every thread of the server is stopped:
        kill() returns before a multi-threaded process has stopped, and a
        test that expects silence must not race the last replies."""
        os.kill(self.pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        task_dir = f"/proc/{self.pid}/task"
        while time.monotonic() < deadline:
            states = []
            for tid in os.listdir(task_dir):
                try:
                    with open(f"{task_dir}/{tid}/stat") as f:
                        # The state follows the parenthesised command name.
                        states.append(f.read().rsplit(")", 1)[1].split()[0])
                except OSError:
                    continue  # a thread that just exited
            if states and all(st in ("T", "t") for st in states):
                return
            time.sleep(0.005)
        raise RuntimeError("cqrps-server did not stop on SIGSTOP")

    def resume(self) -> None:
        """SIGCONT after pause()."""
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL by PID and reap."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log(self) -> str:
        """The server's stderr so far."""
        with open(self._err.name, "r", errors="replace") as f:
            return f.read()

    def clean(self) -> bool:
        """True if the log holds no sanitizer report."""
        text = self.log()
        return not any(m in text for m in SANITIZER_MARKS)

    def cleanup(self) -> None:
        """Kills the server if it still runs and removes its log."""
        self.kill()
        self._err.close()
        try:
            os.unlink(self._err.name)
        except OSError:
            pass

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.cleanup()


class ServerTestCase(unittest.TestCase):
    """One server for the whole class; tearDownClass checks that it exits
    0 on SIGTERM and that its log holds no sanitizer report."""

    server: Server
    server_args: Sequence[str] = ()

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = Server(cls.server_args).start()

    @classmethod
    def tearDownClass(cls) -> None:
        srv = cls.server
        try:
            rc = srv.stop()
            clean = srv.clean()
            if rc != 0 or not clean:
                raise AssertionError(
                    f"server exit code {rc}, clean={clean}:\n{srv.log()}")
        finally:
            srv.cleanup()
