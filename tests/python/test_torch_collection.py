"""RemoteEmbeddingCollection against a real server: it equals per-table
modules bit for bit (outputs and the tables' digests), its gradients are
PyTorch's (local nn.Embedding / EmbeddingBag with SGD), it takes TorchRec's
KeyedJaggedTensor layout and dicts, a step is one Lookup and one Push
request per shard, and prefetch returns what its documentation says."""

from __future__ import annotations

import os
import subprocess
import sys
import unittest

import numpy as np
import torch

import cqrps
from cqrps.torch import (RemoteEmbedding, RemoteEmbeddingBag,
                         RemoteEmbeddingCollection)
from server_proc import Server, ServerTestCase

DIM = 8
NIDS = 30
TOL = 1e-6


class FakeKJT:
    """TorchRec's KeyedJaggedTensor layout without torchrec: key-major
    values, B lengths per key."""

    def __init__(self, keys, values, lengths, stride=None, weights=None):
        self._keys = list(keys)
        self._values = torch.as_tensor(values)
        self._lengths = torch.as_tensor(lengths)
        self._stride = stride
        self._weights = weights

    def keys(self):
        return self._keys

    def values(self):
        return self._values

    def lengths(self):
        return self._lengths

    def weights_or_none(self):
        return self._weights


class FakeKJTOffsets(FakeKJT):
    """The same with offsets() and stride(), as torchrec has them."""

    def offsets(self):
        return torch.cat([torch.zeros(1, dtype=torch.int64),
                          torch.cumsum(self._lengths, 0)])

    def stride(self):
        return len(self._lengths) // len(self._keys)


def rand_batch(gen: torch.Generator, b: int = 6):
    """A dict batch: a plain user ID, plain item IDs (B, 2) with repeats,
    tags as bags (values, KJT offsets) with an empty bag."""
    lengths = torch.randint(0, 4, (b,), generator=gen)
    lengths[1] = 0
    offs = torch.cat([torch.zeros(1, dtype=torch.int64),
                      torch.cumsum(lengths, 0)])
    return {
        "user": torch.randint(0, NIDS, (b,), generator=gen),
        "item": torch.randint(0, 5, (b, 2), generator=gen),
        "tags": (torch.randint(0, NIDS, (int(offs[-1]),), generator=gen),
                 offs),
    }


class CollectionTest(ServerTestCase):

    def setUp(self) -> None:
        torch.manual_seed(0)
        self.c = cqrps.connect(self.server.addr)
        self.made: list = []

    def tearDown(self) -> None:
        for name in self.made:
            self.c.drop_table(name)
        self.c.close()

    def table(self, name: str, **kw) -> str:
        kw.setdefault("kind", "full")
        kw.setdefault("dim", DIM)
        self.c.create_table(name, **kw)
        self.made.append(name)
        return name

    def three_tables(self, prefix: str):
        """A cqr table with Adam, a hash table with Adagrad, a full table
        with SGD: the same seeds for twins of the same prefix suffix."""
        return {
            "user": self.table(f"{prefix}.user", kind="cqr", chunks=2,
                               rows=16, optimizer="adam", lr=0.01, seed=3),
            "item": self.table(f"{prefix}.item", kind="hash", rows=8,
                               optimizer="adagrad", lr=0.1, seed=4),
            "tags": self.table(f"{prefix}.tags", optimizer="sgd", lr=0.1,
                               seed=5),
        }

    def test_equals_per_table_modules(self) -> None:
        a = self.three_tables("eq.a")
        b = self.three_tables("eq.b")
        coll = RemoteEmbeddingCollection(
            self.c, {"user": a["user"], "item": a["item"],
                     "tags": (a["tags"], "mean")})
        user = RemoteEmbedding(self.c, b["user"])
        item = RemoteEmbedding(self.c, b["item"])
        tags = RemoteEmbeddingBag(self.c, b["tags"], mode="mean",
                                  include_last_offset=True)
        gen = torch.Generator().manual_seed(1)
        w = torch.randn(3 * DIM, generator=gen)
        for step in range(4):
            batch = rand_batch(gen)
            out = coll(batch)
            ref = {"user": user(batch["user"]), "item": item(batch["item"]),
                   "tags": tags(*batch["tags"])}
            for k in ref:
                self.assertTrue(torch.equal(out[k], ref[k]), f"{k} {step}")
            self.assertEqual(list(out), ["user", "item", "tags"])

            def loss(o):
                x = torch.cat([o["user"], o["item"].sum(1), o["tags"]], 1)
                return ((x @ w) ** 2).mean()

            loss(out).backward()
            loss(ref).backward()
            for f in ("user", "item", "tags"):
                self.assertEqual(self.c.digest(a[f]), self.c.digest(b[f]),
                                 f"{f} step {step}")

    def test_gradients_match_local_sgd(self) -> None:
        t = {f: self.table(f"sgd.{f}", optimizer="sgd", lr=0.1)
             for f in ("user", "item", "tags")}
        coll = RemoteEmbeddingCollection(
            self.c, {"user": t["user"], "item": t["item"],
                     "tags": (t["tags"], "sum")})
        local = {}
        for f in t:
            w = torch.from_numpy(self.c.lookup(t[f], np.arange(NIDS)))
            m = (torch.nn.EmbeddingBag(NIDS, DIM, mode="sum",
                                       include_last_offset=True)
                 if f == "tags" else torch.nn.Embedding(NIDS, DIM))
            with torch.no_grad():
                m.weight.copy_(w)
            local[f] = m
        opt = torch.optim.SGD([p for m in local.values()
                               for p in m.parameters()], lr=0.1)
        gen = torch.Generator().manual_seed(2)
        for step in range(3):
            batch = rand_batch(gen)
            tgt = torch.randn(6, DIM, generator=gen)

            def loss(o):
                return ((o["user"] + o["item"].mean(1) * o["tags"] - tgt)
                        ** 2).sum()

            opt.zero_grad()
            loss({"user": local["user"](batch["user"]),
                  "item": local["item"](batch["item"]),
                  "tags": local["tags"](*batch["tags"])}).backward()
            opt.step()
            loss(coll(batch)).backward()
            for f in t:
                rows = torch.from_numpy(self.c.lookup(t[f],
                                                      np.arange(NIDS)))
                self.assertLessEqual(
                    float((rows - local[f].weight).abs().max()), TOL,
                    f"{f} step {step}")

    def test_kjt_input(self) -> None:
        u = self.table("kjt.u")
        g = self.table("kjt.g")
        coll = RemoteEmbeddingCollection(self.c, {"user": u,
                                                  "genres": (g, "mean")})
        # B = 3: user has one ID per example, genres 2, 0 and 3 IDs.
        keys = ["user", "genres"]
        values = torch.tensor([4, 5, 6, 10, 11, 12, 13, 10])
        lengths = torch.tensor([1, 1, 1, 2, 0, 3])
        for kjt in (FakeKJT(keys, values, lengths),
                    FakeKJTOffsets(keys, values, lengths)):
            out = coll(kjt)
            self.assertEqual(out["user"].shape, (3, DIM))
            self.assertEqual(out["genres"].shape, (3, DIM))
            np.testing.assert_array_equal(out["user"].detach().numpy(),
                                          self.c.lookup(u, [4, 5, 6]))
            want = self.c.lookup_pooled(g, [10, 11, 12, 13, 10], [0, 2, 2],
                                        "mean")
            np.testing.assert_array_equal(out["genres"].detach().numpy(),
                                          want)
            same = coll({"user": values[:3],
                         "genres": (values[3:], torch.tensor([0, 2, 2, 5]))})
            for k in keys:
                self.assertTrue(torch.equal(out[k], same[k]))
        with self.assertRaises(NotImplementedError):
            coll(FakeKJT(keys, values, lengths, weights=torch.ones(8)))
        with self.assertRaises(cqrps.InvalidArgument):
            coll(FakeKJT(["user"], values[:3], lengths[:3]))  # genres missing
        with self.assertRaises(cqrps.InvalidArgument):
            coll({"user": values[:3], "genres": values[3:].reshape(1, 5),
                  "other": values})

    def test_input_forms_and_empty(self) -> None:
        u = self.table("forms.u", optimizer="sgd", lr=0.1)
        g = self.table("forms.g", optimizer="sgd", lr=0.1)
        coll = RemoteEmbeddingCollection(self.c, [("user", u),
                                                  ("tags", {"table": g,
                                                            "pooling": "sum"})])
        self.assertEqual(coll.feature_names, ["user", "tags"])
        self.assertEqual(coll.tables, [u, g])
        self.assertIn("tags='forms.g'/sum", repr(coll))
        out = coll({"user": torch.tensor([[1, 2], [3, 1]]),
                    "tags": torch.tensor([[1, 2, 3], [4, 5, 6]])})
        self.assertEqual(out["user"].shape, (2, 2, DIM))
        np.testing.assert_array_equal(
            out["tags"].detach().numpy(),
            self.c.lookup_pooled(g, [1, 2, 3, 4, 5, 6], [0, 3], "sum"))
        # No IDs at all: zeros, nothing pushed, no request needed.
        d0 = (self.c.digest(u), self.c.digest(g))
        empty = coll({"user": torch.zeros(0, dtype=torch.int64),
                      "tags": (torch.zeros(0, dtype=torch.int64),
                               torch.zeros(3, dtype=torch.int64))})
        self.assertEqual(empty["user"].shape, (0, DIM))
        self.assertTrue(torch.equal(empty["tags"], torch.zeros(2, DIM)))
        (empty["user"].sum() + empty["tags"].sum()).backward()
        self.assertEqual((self.c.digest(u), self.c.digest(g)), d0)
        # A feature left out of the loss is not pushed.
        out = coll({"user": torch.tensor([1]), "tags": torch.tensor([[2]])})
        out["tags"].sum().backward()
        self.assertEqual(self.c.digest(u), d0[0])
        self.assertNotEqual(self.c.digest(g), d0[1])
        for bad in ({"user": torch.tensor([1]),
                     "tags": (torch.tensor([1, 2]), torch.tensor([0, 1]))},
                    {"user": torch.tensor([1]),
                     "tags": (torch.tensor([1, 2]), torch.tensor([1, 2]))},
                    {"user": torch.tensor([1]), "tags": torch.tensor([1, 2])},
                    {"user": torch.tensor([1.5]), "tags": torch.tensor([[1]])}):
            with self.assertRaises(cqrps.InvalidArgument):
                coll(bad)
        with self.assertRaises(cqrps.InvalidArgument):
            RemoteEmbeddingCollection(self.c, {"x": (u, "max")})
        with self.assertRaises(cqrps.NotFound):
            RemoteEmbeddingCollection(self.c, {"x": "forms.missing"})

    def test_ids_changed_in_place_before_backward(self) -> None:
        u = self.table("inplace.u")
        coll = RemoteEmbeddingCollection(self.c, {"user": u})
        ids = torch.tensor([1, 2, 3])
        out = coll({"user": ids})
        ids.add_(1)
        with self.assertRaises(RuntimeError):
            out["user"].sum().backward()

    def test_prefetch(self) -> None:
        u = self.table("pf.u", optimizer="sgd", lr=0.5)
        coll = RemoteEmbeddingCollection(self.c, {"user": u})
        b1 = {"user": torch.tensor([1, 2, 3, 1])}
        b2 = {"user": torch.tensor([3, 4, 1])}
        # Default: sent at once, so the IDs the step in flight pushes (1
        # and 3) come back as they were before that push.
        before = self.c.lookup(u, [3, 4, 1])
        out = coll(b1)
        coll.prefetch(b2)
        out["user"].sum().backward()
        after = self.c.lookup(u, [3, 4, 1])
        got = coll(b2)["user"].detach().numpy()
        np.testing.assert_array_equal(got, before)
        self.assertFalse(np.array_equal(got, after))
        # after_push=True: exactly a synchronous lookup after the push.
        out = coll(b1)
        coll.prefetch(b2, after_push=True)
        out["user"].sum().backward()
        np.testing.assert_array_equal(coll(b2)["user"].detach().numpy(),
                                      self.c.lookup(u, [3, 4, 1]))
        # A forward with other input drops the prefetch and looks up.
        coll.prefetch(b2)
        np.testing.assert_array_equal(
            coll(b1)["user"].detach().numpy(),
            self.c.lookup(u, [1, 2, 3, 1]))
        # after_push with no backward to wait for: the next forward
        # releases it (no hang), and it equals a lookup at that point.
        with torch.no_grad():
            coll(b1)
        out = coll(b1)  # never backpropagated
        coll.prefetch(b2, after_push=True)
        del out
        np.testing.assert_array_equal(coll(b2)["user"].detach().numpy(),
                                      self.c.lookup(u, [3, 4, 1]))

    @unittest.skipUnless(getattr(cqrps.Client, "_MULTI_PART_REQUESTS",
                                 True),
                         "multi-table requests not in this client yet")
    def test_one_request_per_shard(self) -> None:
        with Server() as s2:
            c = cqrps.connect(f"{self.server.addr},{s2.addr}")
            names = [f"shard.t{i}" for i in range(4)]
            for n in names:
                c.create_table(n, kind="full", dim=DIM)
            try:
                coll = RemoteEmbeddingCollection(
                    c, {"a": names[0], "b": names[1],
                        "c": (names[2], "sum"), "d": (names[3], "mean")})
                gen = torch.Generator().manual_seed(3)
                ids = torch.randint(0, 10**9, (64,), generator=gen)
                offs = torch.arange(0, 65, 8)
                batch = {"a": ids, "b": ids[:20], "c": (ids, offs),
                         "d": (ids.flip(0), offs)}

                def ops():
                    st = c.stats().counters
                    return st["op.lookup"], st["op.push"]

                for _ in range(2):
                    l0, p0 = ops()
                    out = coll(batch)
                    l1, p1 = ops()
                    sum(o.sum() for o in out.values()).backward()
                    l2, p2 = ops()
                    self.assertEqual((l1 - l0, p1 - p0), (2, 0))
                    self.assertEqual((l2 - l1, p2 - p1), (0, 2))
                # Sharded, the rows are the single-table calls' rows.
                with torch.no_grad():
                    out = coll(batch)
                np.testing.assert_array_equal(out["a"].numpy(),
                                              c.lookup(names[0], ids))
                np.testing.assert_array_equal(
                    out["d"].numpy(), c.lookup_pooled(
                        names[3], ids.flip(0), offs[:-1], "mean"))
            finally:
                for n in names:
                    c.drop_table(n)
                c.close()


class Bf16Test(ServerTestCase):
    """bf16=True: vectors and gradients travel as bfloat16."""

    @unittest.skipUnless(hasattr(cqrps.Client, "lookup_many"),
                         "multi-table requests not in this client yet")
    def test_bf16_wire(self) -> None:
        c = cqrps.connect(self.server.addr)
        for n in ("bf.a", "bf.b"):
            c.create_table(n, kind="full", dim=DIM, optimizer="sgd", lr=1.0)
        try:
            coll = RemoteEmbeddingCollection(c, {"a": "bf.a",
                                                 "b": ("bf.b", "sum")},
                                             bf16=True)
            ids = torch.tensor([1, 2, 3, 2])
            want = c.lookup("bf.a", ids.numpy())
            out = coll({"a": ids, "b": ids.reshape(2, 2)})
            got = out["a"].detach().numpy()
            # Rounded to bfloat16: 8 significant bits.
            np.testing.assert_allclose(got, want, rtol=2.0 ** -8, atol=0)
            self.assertFalse(np.array_equal(got, want))
            before = c.lookup("bf.a", [1])
            g = torch.full((4, DIM), 0.5)
            torch.autograd.backward([out["a"], out["b"]],
                                    [g, torch.zeros(2, DIM)])
            # 0.5 is exact in bfloat16: the step is exact too.
            np.testing.assert_array_equal(c.lookup("bf.a", [1]),
                                          before - np.float32(0.5))
        finally:
            for n in ("bf.a", "bf.b"):
                c.drop_table(n)
            c.close()


class ExampleTest(ServerTestCase):
    """examples/python/remote_collection.py runs end to end."""

    @unittest.skipUnless(hasattr(cqrps.Client, "update_optimizer"),
                         "update_optimizer not in this client yet")
    def test_example_runs(self) -> None:
        src = os.environ.get("CQRPS_SOURCE_DIR",
                             os.path.join(os.path.dirname(__file__), "..",
                                          ".."))
        ex = os.path.join(src, "examples", "python", "remote_collection.py")
        r = subprocess.run([sys.executable, ex, "--addr", self.server.addr,
                            "--steps", "60", "--batch", "256"],
                           capture_output=True, text=True, timeout=240)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        last = r.stdout.strip().splitlines()[-1]
        fields = dict(kv.split("=") for kv in last.split())
        self.assertLess(float(fields["last_loss"]),
                        float(fields["first_loss"]))
        self.assertIn("reloaded_equal=True", r.stdout)
        c = cqrps.connect(self.server.addr)
        self.assertEqual(c.list_tables(), [])  # it dropped its tables
        c.close()


if __name__ == "__main__":
    unittest.main()
