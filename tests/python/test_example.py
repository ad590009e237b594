"""examples/python/train_gmf.py: its split of MovieLens-100k is the
reference's, its data and shuffles are the C trainer's, and it trains end
to end against a real server (and cleans up its tables)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import unittest
from typing import Dict, List

import numpy as np

import cqrps
from server_proc import ServerTestCase

SRC = os.environ.get("CQRPS_SOURCE_DIR",
                     os.path.join(os.path.dirname(__file__), "..", ".."))
EXAMPLE = os.path.join(SRC, "examples", "python", "train_gmf.py")
TIMEOUT = 120


def load_example():
    spec = importlib.util.spec_from_file_location("train_gmf", EXAMPLE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def ml100k() -> str:
    path = os.environ.get("CQRPS_ML100K") or \
        os.path.join(SRC, "..", "shared", "data", "ml-100k")
    if not os.path.exists(os.path.join(path, "u.data")):
        raise unittest.SkipTest(f"MovieLens-100k not found at {path}")
    return path


def run(argv: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True,
                          timeout=TIMEOUT)


def fields(line: str) -> Dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


class SplitTest(unittest.TestCase):
    """No server needed."""

    def test_reference_split(self) -> None:
        ex = load_example()
        d = ex.split(ex.read_udata(ml100k()))
        # ../shared/reference/README.md
        self.assertEqual((d.nusers, d.nitems), (943, 1642))
        self.assertEqual((len(d.train_user), len(d.valid_user)),
                         (70969, 1886))
        self.assertAlmostEqual(float(d.train_label.mean()), 0.7621, places=4)
        self.assertAlmostEqual(float(d.valid_label.mean()), 0.6840, places=4)
        self.assertTrue(np.all(np.bincount(d.valid_user) == 2))

    def test_metrics(self) -> None:
        ex = load_example()
        z = np.array([0.1, 0.4, 0.35, 0.8, 0.4], np.float32)
        y = np.array([0, 0, 1, 1, 1], np.float32)
        # Pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>both, 0.4>0.1, 0.4=0.4.
        self.assertAlmostEqual(ex.auc(z, y), 4.5 / 6)
        self.assertAlmostEqual(ex.logloss(np.zeros(4), np.array([0, 1, 0, 1])),
                               np.log(2))

    def test_rng_matches_c(self) -> None:
        # ml_rng_seed(0) then ml_rng_next: the xoshiro256** outputs that
        # splitmix64-seeding with 0 gives (computed by the C code).
        ex = load_example()
        r = ex.Rng(0)
        self.assertEqual(r.s[0], 0xE220A8397B1DCDAF)
        vals = [r.next() for _ in range(3)]
        self.assertEqual(len(set(vals)), 3)
        self.assertTrue(all(0 <= v < 2**64 for v in vals))
        r = ex.Rng(7)
        a = np.arange(10)
        r.shuffle(a)
        self.assertEqual(sorted(a.tolist()), list(range(10)))


class TrainTest(ServerTestCase):

    def example(self, *args: str) -> subprocess.CompletedProcess:
        return run([sys.executable, EXAMPLE, "--addr", self.server.addr,
                    *args])

    def test_train_cqr_synthetic(self) -> None:
        r = self.example("--synthetic", "--kind", "cqr", "--ppd", "64",
                         "--seed", "3", "--epochs", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.strip().splitlines()
        epochs = [fields(x) for x in lines if x.startswith("epoch=")]
        self.assertEqual([e["epoch"] for e in epochs], ["1/2", "2/2"])
        # floor(0.75 * 2) = 1 phase on each table, after epoch 1.
        clusters = [fields(x) for x in lines if x.startswith("cluster ")]
        self.assertEqual([c["epoch"] for c in clusters], ["1", "1"])
        self.assertEqual(sorted(int(c["ids"]) for c in clusters),
                         [1000, 1700])
        self.assertTrue(any(x.startswith("memory_total ") for x in lines))
        last = fields(lines[-1])
        self.assertEqual(set(last), {"best_auc", "best_logloss"})
        self.assertGreater(float(last["best_auc"]), 0.0)
        with cqrps.connect(self.server.addr) as c:  # dropped its tables
            self.assertEqual(
                [t.name for t in c.list_tables() if "gmf-py" in t.name], [])

    def test_learns_movielens(self) -> None:
        data = ml100k()
        r = self.example("--data", data, "--kind", "full", "--ppd", "1",
                         "--seed", "1", "--epochs", "3", "--lr", "0.01")
        self.assertEqual(r.returncode, 0, r.stderr)
        best = fields(r.stdout.strip().splitlines()[-1])
        self.assertGreater(float(best["best_auc"]), 0.6)

    def test_matches_c_trainer(self) -> None:
        c_bin = os.environ.get("CQRPS_TRAIN_GMF_BIN")
        if not c_bin or not os.access(c_bin, os.X_OK):
            self.skipTest("CQRPS_TRAIN_GMF_BIN not set (run through ctest)")
        args = ["--synthetic", "--kind", "hash", "--ppd", "256", "--seed",
                "5", "--epochs", "3", "--lr", "0.01"]
        rc = run([c_bin, "--addr", self.server.addr, *args])
        rp = self.example(*args)
        self.assertEqual(rc.returncode, 0, rc.stderr)
        self.assertEqual(rp.returncode, 0, rp.stderr)
        c_lines = rc.stdout.strip().splitlines()
        p_lines = rp.stdout.strip().splitlines()
        # The same data: generator, split and counts.
        self.assertEqual(c_lines[0], p_lines[0])
        # The same training up to float summation order.
        c_ep = [fields(x) for x in c_lines if x.startswith("epoch=")]
        p_ep = [fields(x) for x in p_lines if x.startswith("epoch=")]
        self.assertEqual(len(c_ep), 3)
        for a, b in zip(c_ep, p_ep):
            for k in ("train_loss", "val_logloss", "val_auc"):
                self.assertAlmostEqual(float(a[k]), float(b[k]), delta=2e-3,
                                       msg=f"{k}: C {a} vs Python {b}")

    def test_bad_usage(self) -> None:
        r = self.example("--synthetic", "--kind", "cqr", "--ppd", "1",
                         "--seed", "1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--ppd", r.stderr)


if __name__ == "__main__":
    unittest.main()
