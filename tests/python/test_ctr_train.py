"""examples/python/train_ctr.py against a real server: two workers reach
the stated AUC on a small synthetic-ctr set, and no worker pushes during a
phase (test_ctr_resume: stopped runs resume)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from typing import Dict, List

import torch

import cqrps
from server_proc import ServerTestCase

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

    def test_admission_keeps_rare_ids_out(self) -> None:
        """--admit-after 3 reaches the cqr tables: IDs pushed fewer than 3
        times get no learned pointer, so they know fewer IDs than the same
        run without it."""
        known = {}
        for flags in ([], ["--admit-after", "3"]):
            r = finish(trainer(["--addr", self.server.addr, "--kind", "cqr",
                                "--epochs", "1", "--rows", "4000", *SYNTH,
                                *flags]))
            self.assertEqual(r.returncode, 0, r.stderr)
            tables = [fields(ln) for ln in r.stdout.splitlines()
                      if ln.startswith("memory table")]
            known[bool(flags)] = sum(int(t["known_ids"]) for t in tables
                                     if t["kind"] == "cqr")
        self.assertGreater(known[False], 0)
        self.assertLess(known[True], known[False] * 0.8, known)

    def test_prefetch_gives_the_same_run(self) -> None:
        """The next batch's lookup, sent once the step's push is
        acknowledged (--prefetch), returns what the forward would have
        looked up itself: one worker with and without it gives the same
        losses and AUCs (6 digits) over 2 epochs with a phase between
        them."""
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        runs, hits = [], []
        for i, flags in enumerate((["--prefetch"], [])):
            tsv = os.path.join(tmp, f"run{i}.tsv")
            r = finish(trainer(["--addr", self.server.addr, "--kind", "cqr",
                                "--epochs", "2", "--rows", "6000", *SYNTH,
                                "--tsv", tsv, *flags]))
            self.assertEqual(r.returncode, 0, r.stderr)
            eps = [fields(ln) for ln in r.stdout.splitlines()
                   if ln.startswith("epoch=")]
            self.assertEqual(len(eps), 2, r.stdout)
            hits.append([int(e["prefetched"]) for e in eps])
            with open(tsv) as f:
                rows = [ln.rstrip("\n").split("\t") for ln in f]
            col = {k: rows[0].index(k) for k in
                   ("train_loss", "val_logloss", "val_auc",
                    "requests_per_step")}
            runs.append([{k: row[j] for k, j in col.items()}
                         for row in rows[1:]])
        # 5,400 training rows in batches of 512: 11 steps an epoch, all
        # but the first prefetched; none without.
        self.assertEqual(hits, [[10, 10], [0, 0]])
        self.assertEqual(len(runs[0]), 2, runs)
        self.assertEqual(runs[0], runs[1])


if __name__ == "__main__":
    unittest.main()
