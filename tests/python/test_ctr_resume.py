"""examples/python/train_ctr.py stopped mid-run: a killed worker and a
lost server end the run with one clear error, and the same command with
--resume continues from the last epoch (the servers restore the tables
from their --data-dir)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import unittest
from typing import List, Optional

from server_proc import Server
from test_ctr_train import SYNTH, ckpt_epoch, fields, finish, trainer, \
    wait_epoch


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
