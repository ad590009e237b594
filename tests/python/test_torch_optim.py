"""Training controls on remote tables: RemoteOptimizer lets
torch.optim.lr_scheduler schedulers set the server's learning rate (an SGD
step shows the lr exactly), and a gradient scaler's scale is divided out
of pushed gradients, with Inf/NaN steps skipped instead of raised."""

from __future__ import annotations

import copy
import pickle
import unittest
import warnings

import numpy as np
import torch

import cqrps
from cqrps.torch import (RemoteEmbedding, RemoteEmbeddingCollection,
                         RemoteOptimizer)
from server_proc import ServerTestCase

DIM = 4
HAS_UPDATE = hasattr(cqrps.Client, "update_optimizer")


class CpuScaler:
    """What the remote modules use of torch.cuda.amp.GradScaler, on CPU
    (torch 1.13's GradScaler only scales CUDA tensors; torch >= 2.3 has
    torch.amp.GradScaler("cpu") with the same methods)."""

    def __init__(self, scale: float) -> None:
        self._scale = scale

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return self._scale

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self._scale


class OptimTest(ServerTestCase):

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

    def rows(self, name: str, ids) -> np.ndarray:
        return self.c.lookup(name, ids)

    # ---- learning-rate schedules ----

    @unittest.skipUnless(HAS_UPDATE, "update_optimizer not in this client")
    def test_step_lr_drives_the_server(self) -> None:
        t = self.table("lr.t", optimizer="sgd", lr=1.0)
        emb = RemoteEmbedding(self.c, t)
        opt = RemoteOptimizer(emb)
        self.assertEqual(opt.param_groups[0]["lr"], 1.0)
        self.assertEqual(opt.param_groups[0]["tables"], [t])
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        ids = torch.tensor([3, 7])
        for step in range(4):
            lr = 0.5 ** step
            self.assertEqual(sched.get_last_lr(), [lr])
            self.assertEqual(self.c.describe_table(t).config.lr, lr)
            before = self.rows(t, [3, 7])
            emb(ids).sum().backward()  # gradient 1 everywhere
            # The server's SGD step w - lr * g, exactly.
            np.testing.assert_array_equal(self.rows(t, [3, 7]),
                                          before - np.float32(lr))
            opt.step()
            sched.step()
        opt.zero_grad()

    @unittest.skipUnless(HAS_UPDATE, "update_optimizer not in this client")
    def test_schedulers_and_groups(self) -> None:
        a = self.table("grp.a", optimizer="adam", lr=0.01)
        b = self.table("grp.b", optimizer="adam", lr=0.02)
        coll = RemoteEmbeddingCollection(self.c, {"a": a, "b": b})
        # Tables with different lrs need one given, or a group each.
        with self.assertRaisesRegex(cqrps.InvalidArgument, "lr"):
            RemoteOptimizer(coll)
        opt = RemoteOptimizer([{"params": [(self.c, a)]},
                               {"params": ["grp.b"], "lr": 0.1,
                                "weight_decay": 0.5}], client=self.c)
        self.assertEqual([g["lr"] for g in opt.param_groups], [0.01, 0.1])
        cfg = self.c.describe_table(b).config
        self.assertEqual((cfg.lr, cfg.weight_decay), (0.1, 0.5))
        lam = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: 1.0 / (1 + e))
        for _ in range(3):
            opt.step()
            lam.step()
        self.assertAlmostEqual(self.c.describe_table(a).config.lr, 0.01 / 4)
        self.assertAlmostEqual(self.c.describe_table(b).config.lr, 0.1 / 4)
        # OneCycleLR also moves Adam's beta1.
        one = RemoteOptimizer([(self.c, a)], lr=0.01)
        cyc = torch.optim.lr_scheduler.OneCycleLR(one, max_lr=0.1,
                                                  total_steps=10)
        one.step()
        cyc.step()
        cfg = self.c.describe_table(a).config
        self.assertAlmostEqual(cfg.lr, one.param_groups[0]["lr"], places=6)
        self.assertAlmostEqual(cfg.beta1, one.param_groups[0]["betas"][0],
                               places=6)
        # state_dict round trip sends the saved values back.
        sd = opt.state_dict()
        opt.param_groups[1]["lr"] = 0.5
        opt.load_state_dict(sd)
        self.assertAlmostEqual(self.c.describe_table(b).config.lr, 0.1 / 4)
        # Pickles (clients connect again) and copies.
        opt2 = pickle.loads(pickle.dumps(opt))
        opt2.param_groups[0]["lr"] = 0.003
        self.assertAlmostEqual(self.c.describe_table(a).config.lr, 0.003)
        copy.deepcopy(opt).sync()
        with self.assertRaises(cqrps.InvalidArgument):
            RemoteOptimizer([torch.zeros(1, requires_grad=True)])
        with self.assertRaises(cqrps.InvalidArgument):
            RemoteOptimizer([{"params": [(self.c, a)]},
                             {"params": [(self.c, a)]}])

    # ---- mixed precision ----

    def test_grad_scaler_unscales_and_skips(self) -> None:
        t = self.table("amp.t", optimizer="sgd", lr=1.0)
        g = self.table("amp.g", optimizer="sgd", lr=1.0)
        scaler = CpuScaler(1024.0)
        coll = RemoteEmbeddingCollection(self.c, {"t": t, "g": (g, "sum")},
                                         grad_scaler=scaler)
        w = torch.tensor([0.25, -1.5, 3.0, 0.125])
        batch = {"t": torch.tensor([1, 2, 1]),
                 "g": (torch.tensor([5, 6]), torch.tensor([0, 2]))}
        before_t = self.rows(t, [1, 2])
        before_g = self.rows(g, [5, 6])
        out = coll(batch)
        loss = (out["t"] * w).sum() + (out["g"] * w).sum()
        scaler.scale(loss).backward()
        self.assertFalse(coll.last_step_skipped)
        # Unscaled: ID 1 occurs twice (2w), ID 2 once (w); both bag IDs w.
        wn = w.numpy()
        np.testing.assert_array_equal(self.rows(t, [1, 2]),
                                      before_t - np.stack([2 * wn, wn]))
        np.testing.assert_array_equal(self.rows(g, [5, 6]),
                                      before_g - np.stack([wn, wn]))
        # An overflowing step is skipped: nothing pushed, nothing raised.
        d0 = (self.c.digest(t), self.c.digest(g))
        for bad in (float("inf"), float("nan")):
            out = coll(batch)
            loss = (out["t"] * w).sum() * bad + out["g"].sum()
            scaler.scale(loss).backward()
            self.assertTrue(coll.last_step_skipped)
            self.assertEqual((self.c.digest(t), self.c.digest(g)), d0)
        self.assertEqual(coll.skipped_steps, 2)
        # Without a scaler an Inf gradient is the server's NonFinite error.
        plain = RemoteEmbedding(self.c, t)
        with self.assertRaises(cqrps.NonFinite):
            (plain(torch.tensor([1])) * float("inf")).sum().backward()

    def test_disabled_grad_scaler(self) -> None:
        # torch's own GradScaler, disabled (as it is on a CPU-only
        # machine): gradients go as they are.
        t = self.table("amp.off", optimizer="sgd", lr=1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scaler = torch.cuda.amp.GradScaler(enabled=False)
        emb = RemoteEmbedding(self.c, t, grad_scaler=scaler)
        before = self.rows(t, [4])
        (emb(torch.tensor([4])) * 2.0).sum().backward()
        np.testing.assert_array_equal(self.rows(t, [4]), before - 2.0)


if __name__ == "__main__":
    unittest.main()
