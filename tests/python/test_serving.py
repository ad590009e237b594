"""cqrps.serving: exports fetched with Client.export and read without a
server give the server's lookups bit for bit (numpy and the torch module),
deltas apply, and damaged files raise Corrupt."""

from __future__ import annotations

import os
import shutil
import tempfile
import unittest

import numpy as np

import cqrps
import cqrps.serving
from server_proc import Server, ServerTestCase

DIM = 8


class ServingTest(ServerTestCase):
    tmp = tempfile.mkdtemp(prefix="cqrps-pytest-serving-")
    server_args = ("--data-dir", os.path.join(tmp, "data"),
                   "--checkpoint-keep", "0")

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self) -> None:
        self.c = cqrps.connect(self.server.addr, request_timeout=60)
        self.rng = np.random.default_rng(5)

    def tearDown(self) -> None:
        self.c.close()

    def train(self, name: str, steps: int) -> None:
        for _ in range(steps):
            ids = self.rng.integers(0, 2000, size=300, dtype=np.uint64)
            g = self.rng.standard_normal((300, DIM)).astype(np.float32)
            self.c.push(name, ids, g)

    def test_lookups_equal_server(self) -> None:
        probe = np.concatenate([np.arange(0, 2000, 7, dtype=np.uint64),
                                np.arange(1 << 40, (1 << 40) + 50,
                                          dtype=np.uint64)])
        offsets = np.arange(0, probe.size, 5, dtype=np.uint32)
        for kind in ("full", "hash", "ce", "cqr"):
            name = "s_" + kind
            kw = {} if kind == "full" else {"rows": 64}
            self.c.create_table(name, kind=kind, dim=DIM, **kw)
            self.train(name, 4)
            if kind == "cqr":
                self.c.cluster(name, wait=True)
                self.train(name, 2)
            g1 = self.c.checkpoint()
            want = self.c.lookup(name, probe)
            want_bags = self.c.lookup_pooled(name, probe, offsets, "mean")
            self.train(name, 2)
            g2 = self.c.checkpoint()
            want2 = self.c.lookup(name, probe)
            p1 = os.path.join(self.tmp, name + ".1.cqrm")
            pd = os.path.join(self.tmp, name + ".d.cqrm")
            info = self.c.export(name, p1, generation=g1)
            self.assertEqual(info["generation"], g1)
            self.c.export(name, pd, since=g1)
            with cqrps.serving.load(p1) as m:
                self.assertEqual((m.kind, m.dim, m.generation),
                                 (kind, DIM, g1))
                np.testing.assert_array_equal(m.lookup(probe), want)
                np.testing.assert_array_equal(
                    m.lookup_pooled(probe, offsets, "mean"), want_bags)
                self.assertEqual(m.lookup(probe.reshape(-1, 2)).shape,
                                 (probe.size // 2, 2, DIM))
                with m.apply_delta(pd) as m2:
                    self.assertEqual(m2.generation, g2)
                    np.testing.assert_array_equal(m2.lookup(probe), want2)

    def test_serve_reports_generation(self) -> None:
        self.c.create_table("g_cqr", kind="cqr", dim=DIM, rows=64)
        self.train("g_cqr", 2)
        g = self.c.checkpoint()
        path = os.path.join(self.tmp, "g_cqr.cqrm")
        self.c.export("g_cqr", path, generation=g)
        self.assertEqual(self.c.describe_table("g_cqr").serving_generation, 0)
        with Server(("--serve", path)) as sv:
            with cqrps.connect(sv.addr) as r:
                info = r.describe_table("g_cqr")
                self.assertEqual(info.serving_generation, g)
                self.assertEqual(info.kind, "cqr")

    def test_export_progress_and_stop(self) -> None:
        self.c.create_table("p_full", kind="full", dim=DIM)
        self.train("p_full", 2)
        self.c.checkpoint()
        path = os.path.join(self.tmp, "p_full.cqrm")
        seen = []
        info = self.c.export("p_full", path,
                             progress=lambda d, t: seen.append((d, t)))
        self.assertTrue(seen)
        self.assertEqual(seen[-1], (info["bytes"], info["bytes"]))
        os.unlink(path)
        with self.assertRaises(cqrps.Cancelled) as cm:
            self.c.export("p_full", path, progress=lambda d, t: True)
        self.assertIn("stopped", str(cm.exception))
        self.assertFalse(os.path.exists(path))
        self.assertFalse(os.path.exists(path + ".tmp"))

    def test_torch_module(self) -> None:
        try:
            import torch
        except ImportError:
            self.skipTest("no torch")
        self.c.create_table("s_t", kind="cqr", dim=DIM, rows=32)
        self.train("s_t", 3)
        self.c.checkpoint()
        ids = np.arange(0, 100, dtype=np.uint64)
        want = self.c.lookup("s_t", ids)
        p = os.path.join(self.tmp, "s_t.cqrm")
        self.c.export("s_t", p)
        emb = cqrps.serving.Embedding(p)
        got = emb(torch.arange(0, 100).reshape(10, 10))
        self.assertEqual(tuple(got.shape), (10, 10, DIM))
        np.testing.assert_array_equal(got.reshape(100, DIM).numpy(), want)
        bag = cqrps.serving.Embedding(p, pooling="sum")
        out = bag(torch.arange(0, 100), torch.tensor([0, 10, 50]))
        self.assertEqual(tuple(out.shape), (3, DIM))

    def test_damaged_file(self) -> None:
        self.c.create_table("s_d", kind="hash", dim=DIM, rows=16)
        self.c.checkpoint()
        p = os.path.join(self.tmp, "s_d.cqrm")
        self.c.export("s_d", p, dtype="f16")
        with open(p, "r+b") as f:
            f.seek(400)
            b = f.read(1)
            f.seek(400)
            f.write(bytes([b[0] ^ 1]))
        with self.assertRaises(cqrps.Corrupt) as cm:
            cqrps.serving.load(p)
        self.assertIn("checksum", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
