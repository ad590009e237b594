"""examples/python/train_ctr.py against real servers: two workers reach
the stated AUC on a small synthetic-ctr set with no push during a phase;
a killed worker and a lost server end the run with one clear error and
the run resumes from its last epoch."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from typing import Dict, List, Optional

import torch

import cqrps
from server_proc import Server, ServerTestCase

SRC = os.environ.get("CQRPS_SOURCE_DIR",
                     os.path.join(os.path.dirname(__file__), "..", ".."))
TRAINER = os.path.join(SRC, "examples", "python", "train_ctr.py")
TIMEOUT = 150

# A small synthetic-ctr set: 26 features (5 of them over P=64, so cqr),
# 13 dense ones. Two workers reach about 0.80 in 3 epochs of 14,400 rows.
SYNTH = ["--format", "synthetic-ctr", "--vocab", "3000", "--batch", "512",
         "--ppd", "64", "--seed", "1", "--progress", "0"]
STATED_AUC = 0.77


def fields(line: str) -> Dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def trainer(args: List[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, TRAINER, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def finish(p: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = p.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def ckpt_epoch(run_dir: str) -> int:
    path = os.path.join(run_dir, "ckpt.pt")
    if not os.path.exists(path):
        return 0
    return int(torch.load(path)["state"]["epoch"])


def wait_epoch(run_dir: str, p: subprocess.Popen, epoch: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while ckpt_epoch(run_dir) < epoch:
        if p.poll() is not None or time.monotonic() > deadline:
            out, err = p.communicate()
            raise AssertionError(f"no checkpoint of epoch {epoch}:\n{out}\n"
                                 f"{err}")
        time.sleep(0.05)


class TwoWorkersTest(ServerTestCase):
    def test_two_workers_reach_auc_with_phases_between_epochs(self) -> None:
        r = finish(trainer(["--addr", self.server.addr, "--kind", "cqr",
                            "--epochs", "3", "--workers", "2",
                            "--rows", "16000", *SYNTH]))
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        best = fields(lines[-1])
        self.assertGreaterEqual(float(best["best_auc"]), STATED_AUC,
                                r.stdout)
        epochs = [fields(ln) for ln in lines if ln.startswith("epoch=")]
        self.assertEqual([e["epoch"] for e in epochs], ["1/3", "2/3", "3/3"])
        # Phases after epochs 1 and 2 (75% of 3 is 2.25), 5 cqr tables
        # each, and no worker pushed while one ran: the workers wait at
        # the barrier, so the server replayed nothing.
        phases = [fields(ln) for ln in lines if ln.startswith("cluster ")]
        self.assertEqual(len(phases), 10, r.stdout)
        self.assertEqual({p["epoch"] for p in phases}, {"1", "2"})
        self.assertTrue(all(p["replayed"] == "0" for p in phases))
        tables = [fields(ln) for ln in lines if ln.startswith("memory table")]
        self.assertEqual(len(tables), 26)
        self.assertEqual(sorted(t["phases"] for t in tables
                                if t["kind"] == "cqr"), ["2"] * 5)
        # The run dropped its tables.
        with cqrps.connect(self.server.addr) as c:
            self.assertEqual([t.name for t in c.list_tables()
                              if t.name.startswith("ctr-")], [])


class ResumeTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="cqrps-ctr-resume-")
        self.data_dir = os.path.join(self.tmp, "db")
        self.run_dir = os.path.join(self.tmp, "run")
        self.servers: List[Server] = []

    def tearDown(self) -> None:
        for s in self.servers:
            try:
                s.stop()
            finally:
                s.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def server(self) -> Server:
        s = Server(["--data-dir", self.data_dir]).start()
        self.servers.append(s)
        return s

    def args(self, srv: Server, extra: Optional[List[str]] = None
             ) -> List[str]:
        return ["--addr", srv.addr, "--kind", "cqr", "--epochs", "3",
                "--rows", "6000", "--run-dir", self.run_dir, "--resume",
                *SYNTH, *(extra or [])]

    def resume_and_finish(self, srv: Server, after: int,
                          extra: Optional[List[str]] = None) -> None:
        r = finish(trainer(self.args(srv, extra)))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        lines = r.stdout.splitlines()
        resume = [fields(ln) for ln in lines if ln.startswith("resume ")]
        self.assertEqual(len(resume), 1, r.stdout)
        start = int(resume[0]["epoch"])
        self.assertGreaterEqual(start, after)
        self.assertNotEqual(resume[0]["generation"], "none")
        epochs = [fields(ln)["epoch"] for ln in lines
                  if ln.startswith("epoch=")]
        self.assertEqual(epochs, [f"{e}/3" for e in range(start + 1, 4)])
        self.assertTrue(lines[-1].startswith("best_auc="), r.stdout)
        self.assertGreaterEqual(ckpt_epoch(self.run_dir), 3)

    def test_killed_worker_resumes(self) -> None:
        srv = self.server()
        p = trainer(self.args(srv, ["--workers", "2"]))
        wait_epoch(self.run_dir, p, 1)
        # Hold the server so the run cannot move on, kill worker 1.
        srv.pause()
        with open(os.path.join(self.run_dir, "workers.txt")) as f:
            pids = dict(x.split(":") for x in f.read().split())
        os.kill(int(pids["1"]), signal.SIGKILL)
        srv.resume()
        r = finish(p)
        self.assertEqual(r.returncode, 1)
        err = [ln for ln in r.stderr.splitlines()
               if ln.startswith("train_ctr.py:")]
        self.assertEqual(len(err), 1, r.stderr)
        self.assertIn("worker 1 died (signal 9)", err[0])
        self.assertIn("--resume", err[0])
        self.resume_and_finish(srv, 1, ["--workers", "2"])

    def test_lost_server_then_resume(self) -> None:
        srv = self.server()
        p = trainer(self.args(srv))
        wait_epoch(self.run_dir, p, 1)
        srv.pause()
        srv.kill()
        r = finish(p)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(len(r.stderr.splitlines()), 1, r.stderr)
        self.assertRegex(r.stderr, r"^train_ctr.py: lost the server at "
                                   r"127\.0\.0\.1:\d+ \(CONNECTION: ")
        self.assertIn("rerun the same command with --resume", r.stderr)
        # A new server restores the checkpoints of the data dir.
        self.resume_and_finish(self.server(), 1)


if __name__ == "__main__":
    unittest.main()
