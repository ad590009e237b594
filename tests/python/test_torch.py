"""cqrps.torch against a real server: the gradients RemoteEmbedding and
RemoteEmbeddingBag push are the ones PyTorch computes for a local
nn.Embedding / nn.EmbeddingBag with the same weights (checked on `full`
tables with SGD: after each step the server's rows equal the local
weights after torch.optim.SGD), and the cluster helpers."""

from __future__ import annotations

import numpy as np
import torch

import cqrps
from cqrps.torch import (ClusterSchedule, RemoteEmbedding,
                         RemoteEmbeddingBag, cluster_tables)
from server_proc import ServerTestCase

DIM = 6
LR = 0.1
NIDS = 20
TOL = 1e-6


class TorchTest(ServerTestCase):

    def setUp(self) -> None:
        torch.manual_seed(0)
        self.c = cqrps.connect(self.server.addr)
        self.made: list = []

    def tearDown(self) -> None:
        for name in self.made:
            self.c.drop_table(name)
        self.c.close()

    def sgd_table(self, name: str) -> None:
        self.c.create_table(name, kind="full", dim=DIM, optimizer="sgd",
                            lr=LR)
        self.made.append(name)

    def local_copy(self, name: str, bag_mode: str = ""):
        """A local module with the server's current rows 0..NIDS-1."""
        w = torch.from_numpy(self.c.lookup(name, np.arange(NIDS)))
        if bag_mode:
            m = torch.nn.EmbeddingBag(NIDS, DIM, mode=bag_mode)
        else:
            m = torch.nn.Embedding(NIDS, DIM)
        with torch.no_grad():
            m.weight.copy_(w)
        return m

    def server_rows(self, name: str) -> torch.Tensor:
        return torch.from_numpy(self.c.lookup(name, np.arange(NIDS)))

    # ---- RemoteEmbedding ----

    def test_forward(self) -> None:
        self.sgd_table("pt.fwd")
        emb = RemoteEmbedding(self.c, "pt.fwd", DIM)
        ids = torch.tensor([[1, 2, 3], [3, 3, 9]])
        out = emb(ids)
        self.assertEqual(out.shape, (2, 3, DIM))
        self.assertEqual(out.dtype, torch.float32)
        self.assertTrue(out.requires_grad)
        want = self.c.lookup("pt.fwd", ids.numpy())
        np.testing.assert_array_equal(out.detach().numpy(), want)
        self.assertEqual(list(emb.parameters()), [])
        self.assertIn("pt.fwd", repr(emb))
        # dim is checked against the table, and taken from it when None.
        self.assertEqual(RemoteEmbedding(self.c, "pt.fwd").dim, DIM)
        with self.assertRaises(cqrps.WrongDim):
            RemoteEmbedding(self.c, "pt.fwd", DIM + 1)
        with self.assertRaises(cqrps.NotFound):
            RemoteEmbedding(self.c, "pt.missing", DIM)
        # Negative int64 IDs are 64-bit IDs like any other.
        neg = emb(torch.tensor([-1, -5]))
        np.testing.assert_array_equal(
            neg.detach().numpy(),
            self.c.lookup("pt.fwd", [2**64 - 1, 2**64 - 5]))
        # Under no_grad, forward only looks up.
        d0 = self.c.digest("pt.fwd")
        with torch.no_grad():
            self.assertFalse(emb(ids).requires_grad)
        self.assertEqual(self.c.digest("pt.fwd"), d0)

    def check_embedding_steps(self, dedup: bool) -> None:
        name = f"pt.grad.{dedup}"
        self.sgd_table(name)
        emb = RemoteEmbedding(self.c, name, DIM, dedup=dedup)
        local = self.local_copy(name)
        opt = torch.optim.SGD(local.parameters(), lr=LR)
        proj = torch.randn(DIM, 3)
        for step in range(3):
            ids = torch.randint(0, NIDS, (8, 5))  # repeats within a batch
            target = torch.randn(8, 5, 3)

            def loss_of(e: torch.Tensor) -> torch.Tensor:
                return ((e @ proj - target) ** 2).mean() + e.sum(1).pow(2).mean()

            opt.zero_grad()
            loss_of(local(ids)).backward()
            opt.step()
            loss_of(emb(ids)).backward()  # pushes: the server steps
            diff = (self.server_rows(name) - local.weight.detach()).abs().max()
            self.assertLessEqual(float(diff), TOL, f"step {step}")

    def test_gradients_match_local_sgd(self) -> None:
        self.check_embedding_steps(dedup=True)

    def test_gradients_match_local_sgd_without_dedup(self) -> None:
        self.check_embedding_steps(dedup=False)

    def test_adam_matches_local_adamw(self) -> None:
        # The server's lazy AdamW equals torch.optim.AdamW for rows that
        # receive a gradient at every step (lazy only skips other rows).
        self.c.create_table("pt.adam", kind="full", dim=DIM, optimizer="adam",
                            lr=0.01, weight_decay=0.1)
        self.made.append("pt.adam")
        emb = RemoteEmbedding(self.c, "pt.adam", DIM)
        local = self.local_copy("pt.adam")
        opt = torch.optim.AdamW(local.parameters(), lr=0.01, betas=(0.9, 0.999),
                                eps=1e-8, weight_decay=0.1)
        ids = torch.tensor([1, 2, 3, 1, 5])
        rows = [1, 2, 3, 5]
        for step in range(5):
            target = torch.randn(5, DIM)
            opt.zero_grad()
            ((local(ids) - target) ** 2).sum().backward()
            opt.step()
            ((emb(ids) - target) ** 2).sum().backward()
            diff = (self.server_rows("pt.adam")[rows] -
                    local.weight.detach()[rows]).abs().max()
            self.assertLessEqual(float(diff), TOL, f"step {step}")

    def test_mixed_model(self) -> None:
        # Remote rows step in backward; local parameters with a local
        # optimizer; the two together equal an all-local model.
        self.sgd_table("pt.mix")
        emb = RemoteEmbedding(self.c, "pt.mix", DIM)
        local = self.local_copy("pt.mix")
        head = torch.nn.Linear(DIM, 1)
        head_l = torch.nn.Linear(DIM, 1)
        head_l.load_state_dict(head.state_dict())
        opt = torch.optim.SGD(head.parameters(), lr=LR)
        opt_l = torch.optim.SGD(list(local.parameters()) +
                                list(head_l.parameters()), lr=LR)
        ids = torch.randint(0, NIDS, (32,))
        y = torch.rand(32)
        for model_emb, model_head, o in ((emb, head, opt),
                                         (local, head_l, opt_l)):
            o.zero_grad()
            z = model_head(model_emb(ids)).squeeze(-1)
            torch.nn.functional.binary_cross_entropy_with_logits(
                z, y).backward()
            o.step()
        self.assertLessEqual(
            float((self.server_rows("pt.mix") - local.weight).abs().max()),
            TOL)
        self.assertLessEqual(
            float((head.weight - head_l.weight).abs().max()), TOL)

    # ---- RemoteEmbeddingBag ----

    def check_bag_steps(self, mode: str) -> None:
        name = f"pt.bag.{mode}"
        self.sgd_table(name)
        bag = RemoteEmbeddingBag(self.c, name, DIM, mode=mode)
        local = self.local_copy(name, bag_mode=mode)
        opt = torch.optim.SGD(local.parameters(), lr=LR)
        # 1-D input with offsets (bags of 3, 0, 4 and 2 IDs, repeats).
        inp = torch.tensor([1, 2, 2, 5, 6, 7, 1, 9, 9])
        offsets = torch.tensor([0, 3, 3, 7])
        # 2-D input: fixed-size bags.
        inp2 = torch.randint(0, NIDS, (5, 4))
        for step, (x, o) in enumerate(((inp, offsets), (inp2, None),
                                       (inp, offsets))):
            w = torch.randn(DIM)
            opt.zero_grad()
            out_l = local(x, o)
            ((out_l * w).sum() ** 2).backward()
            opt.step()
            out_r = bag(x, o)
            self.assertEqual(out_r.shape, out_l.shape)
            self.assertTrue(out_r.requires_grad)
            ((out_r * w).sum() ** 2).backward()
            diff = (self.server_rows(name) - local.weight.detach()).abs().max()
            self.assertLessEqual(float(diff), TOL, f"{mode} step {step}")

    def test_bag_sum_matches_local_sgd(self) -> None:
        self.check_bag_steps("sum")

    def test_bag_mean_matches_local_sgd(self) -> None:
        self.check_bag_steps("mean")

    def test_bag_forward_options(self) -> None:
        self.sgd_table("pt.bagopt")
        bag = RemoteEmbeddingBag(self.c, "pt.bagopt", DIM, mode="sum",
                                 include_last_offset=True)
        local = self.local_copy("pt.bagopt", bag_mode="sum")
        local.include_last_offset = True
        inp = torch.tensor([1, 2, 3, 4])
        offs = torch.tensor([0, 1, 4])
        np.testing.assert_allclose(bag(inp, offs).detach().numpy(),
                                   local(inp, offs).detach().numpy(),
                                   atol=TOL)
        with self.assertRaises(cqrps.InvalidArgument):
            bag(inp, torch.tensor([0, 1, 3]))  # last offset != len(input)
        plain = RemoteEmbeddingBag(self.c, "pt.bagopt", DIM)
        self.assertEqual(plain.mode, "mean")
        with self.assertRaises(cqrps.InvalidArgument):
            plain(inp, torch.tensor([1, 2]))  # offsets[0] != 0
        with self.assertRaises(cqrps.InvalidArgument):
            plain(inp, torch.tensor([0, 3, 2]))  # decreasing
        with self.assertRaises(cqrps.InvalidArgument):
            plain(inp)  # 1-D input needs offsets
        with self.assertRaises(NotImplementedError):
            plain(inp, torch.tensor([0]), per_sample_weights=torch.ones(4))
        with self.assertRaises(cqrps.InvalidArgument):
            RemoteEmbeddingBag(self.c, "pt.bagopt", DIM, mode="max")

    # ---- cluster phases ----

    def test_cluster_helpers(self) -> None:
        for name in ("pt.cq.a", "pt.cq.b"):
            self.c.create_table(name, kind="cqr", dim=DIM, chunks=2, rows=8,
                                cluster_iters=3)
            self.made.append(name)
        self.c.create_table("pt.cq.full", kind="full", dim=DIM)
        self.made.append("pt.cq.full")
        a = RemoteEmbedding(self.c, "pt.cq.a", DIM)
        (a(torch.arange(100)).sum() + RemoteEmbedding(
            self.c, "pt.cq.b")(torch.arange(50)).sum()).backward()

        sts = cluster_tables(self.c, [a, "pt.cq.b"])
        self.assertEqual([s.state for s in sts], ["done", "done"])
        self.assertEqual([s.ids_assigned for s in sts], [100, 50])
        started = cluster_tables(self.c, ["pt.cq.a"], wait=False)
        self.assertEqual(self.c.cluster_wait(
            "pt.cq.a", started[0].phase_id, timeout=60).state, "done")

        sched = ClusterSchedule(self.c, [a, "pt.cq.b", "pt.cq.full"],
                                epochs=4, fraction=0.75)
        self.assertEqual(sched.tables, ["pt.cq.a", "pt.cq.b"])
        self.assertEqual([sched.should_cluster(e) for e in range(4)],
                         [True, True, True, False])
        self.assertEqual(len(sched(0)), 2)
        self.assertEqual(sched.on_epoch_end(3), [])
        self.assertEqual(self.c.describe_table("pt.cq.a").phases_done, 3)
        self.assertEqual(self.c.describe_table("pt.cq.b").phases_done, 2)
        self.assertEqual(ClusterSchedule(self.c, ["pt.cq.full"], 4)(0), [])
        with self.assertRaises(cqrps.Unsupported):
            cluster_tables(self.c, ["pt.cq.full"])


if __name__ == "__main__":
    import unittest
    unittest.main()
