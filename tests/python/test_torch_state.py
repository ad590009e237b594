"""Remote modules as PyTorch objects: clients and modules pickle (and
connect again lazily), so torch.save / torch.load, copy.deepcopy, spawned
processes and forked DataLoader workers work; state_dict() describes the
remote tables and load_state_dict() checks them."""

from __future__ import annotations

import copy
import io
import os
import pickle
import tempfile
import unittest

import numpy as np
import torch
import torch.multiprocessing as mp

import cqrps
from cqrps.torch import (RemoteEmbedding, RemoteEmbeddingBag,
                         RemoteEmbeddingCollection, checkpoint)
from server_proc import Server, ServerTestCase

DIM = 4


class Model(torch.nn.Module):
    """A remote collection beside a dense layer."""

    def __init__(self, client, user: str, tags: str) -> None:
        super().__init__()
        self.sparse = RemoteEmbeddingCollection(
            client, {"user": user, "tags": (tags, "sum")})
        self.head = torch.nn.Linear(2 * DIM, 1)

    def forward(self, batch):
        o = self.sparse(batch)
        return self.head(torch.cat([o["user"], o["tags"]], 1)).squeeze(1)


BATCH = {"user": torch.tensor([1, 2, 3]),
         "tags": (torch.tensor([4, 5, 6, 7]), torch.tensor([0, 1, 3, 4]))}


def child_lookup(rank, module, batch, queue) -> None:
    """Runs in a process of mp.spawn: the unpickled module connects anew."""
    with torch.no_grad():
        out = module(batch)
    queue.put({k: v.numpy() for k, v in out.items()}
              if isinstance(out, dict) else out.numpy())


class LookupDataset(torch.utils.data.Dataset):
    """A dataset whose items come from a remote table (in the workers)."""

    def __init__(self, emb: RemoteEmbedding) -> None:
        self.emb = emb

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        with torch.no_grad():
            return self.emb(torch.tensor([i]))[0]


class StateTest(ServerTestCase):

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
        kw.setdefault("optimizer", "sgd")
        self.c.create_table(name, **kw)
        self.made.append(name)
        return name

    def model(self, prefix: str) -> Model:
        return Model(self.c, self.table(f"{prefix}.user"),
                     self.table(f"{prefix}.tags"))

    # ---- pickling ----

    def test_client_pickles_and_connects_lazily(self) -> None:
        c2 = pickle.loads(pickle.dumps(self.c))
        self.assertFalse(c2.connected)
        self.assertIn("not connected", repr(c2))
        self.table("pk.t")
        np.testing.assert_array_equal(c2.lookup("pk.t", [1, 2]),
                                      self.c.lookup("pk.t", [1, 2]))
        self.assertTrue(c2.connected)
        c3 = copy.deepcopy(c2)
        self.assertFalse(c3.connected)
        self.assertEqual(c3.shard_count, 1)
        c2.close()
        self.assertTrue(c2.closed)
        with self.assertRaises(cqrps.Error):
            c2.lookup("pk.t", [1])
        self.assertTrue(pickle.loads(pickle.dumps(c2)).closed)
        c3.close()

    def test_literal_tokens_stay_out_of_pickles(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            tok = os.path.join(d, "token")
            with open(tok, "w") as f:
                f.write("s3cret-token\n")
            os.chmod(tok, 0o600)
            with Server(["--auth-token-file", tok]) as srv:
                c = cqrps.connect(srv.addr, token="s3cret-token")
                data = pickle.dumps(c)
                self.assertNotIn(b"s3cret", data)
                # In memory, a copy keeps the literal.
                copy.deepcopy(c).server_info()
                old = os.environ.pop("CQRPS_TOKEN", None)
                try:
                    with self.assertRaises(cqrps.Unauthenticated):
                        pickle.loads(data).server_info()
                    os.environ["CQRPS_TOKEN"] = "s3cret-token"
                    pickle.loads(data).server_info()
                finally:
                    os.environ.pop("CQRPS_TOKEN", None)
                    if old is not None:
                        os.environ["CQRPS_TOKEN"] = old
                # A token file is read again by the unpickled client.
                cf = cqrps.connect(srv.addr, token_file=tok)
                pickle.loads(pickle.dumps(cf)).server_info()
                for x in (c, cf):
                    x.close()

    def test_torch_save_load_and_deepcopy(self) -> None:
        m = self.model("save")
        with torch.no_grad():
            want = m(BATCH)
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        m2 = torch.load(buf)
        self.assertIsNot(m2.sparse.client, self.c)
        with torch.no_grad():
            self.assertTrue(torch.equal(m2(BATCH), want))
        m3 = copy.deepcopy(m)
        self.assertIsNot(m3.sparse.client, self.c)
        d0 = self.c.digest("save.user")
        m3(BATCH).sum().backward()  # the copy trains the same tables
        self.assertNotEqual(self.c.digest("save.user"), d0)
        # Modules that share a client share its copy.
        pair = torch.nn.ModuleList([RemoteEmbedding(self.c, "save.user"),
                                    RemoteEmbeddingBag(self.c, "save.tags")])
        pc = copy.deepcopy(pair)
        self.assertIs(pc[0].client, pc[1].client)
        # A module with a prefetch in flight pickles (the prefetch stays).
        m.sparse.prefetch(BATCH)
        pickle.loads(pickle.dumps(m))

    def test_spawned_process(self) -> None:
        m = self.model("spawn")
        with torch.no_grad():
            want = m.sparse(BATCH)
        q = mp.get_context("spawn").SimpleQueue()
        mp.spawn(child_lookup, args=(m.sparse, BATCH, q), nprocs=1,
                 join=True)
        got = q.get()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k].numpy())

    def test_forked_dataloader_workers(self) -> None:
        t = self.table("dl.t")
        emb = RemoteEmbedding(self.c, t)
        with torch.no_grad():
            emb(torch.tensor([0]))  # the parent is connected before fork
        loader = torch.utils.data.DataLoader(
            LookupDataset(emb), batch_size=4, num_workers=2,
            multiprocessing_context="fork")
        rows = torch.cat(list(loader))
        np.testing.assert_array_equal(rows.numpy(),
                                      self.c.lookup(t, np.arange(8)))
        # The parent's connection survived its children.
        emb(torch.tensor([1, 2])).sum().backward()

    # ---- state dicts ----

    def test_state_dict_describes_tables(self) -> None:
        m = self.model("sd")
        sd = m.state_dict()
        self.assertEqual(sorted(sd), ["head.bias", "head.weight",
                                      "sparse._extra_state"])
        e = sd["sparse._extra_state"]
        self.assertEqual(e["address"], self.server.addr)
        self.assertEqual(sorted(e["tables"]), ["sd.tags", "sd.user"])
        self.assertEqual(e["tables"]["sd.user"]["kind"], "full")
        self.assertEqual(e["tables"]["sd.user"]["dim"], DIM)
        self.assertFalse(e["checkpoint"]["persistence"])
        self.assertIn("--data-dir", e["checkpoint"]["note"])
        # Loading into an equal model checks and passes; the dense part
        # loads as usual.
        m2 = Model(self.c, "sd.user", "sd.tags")
        m2.load_state_dict(sd)
        self.assertTrue(torch.equal(m2.head.weight, m.head.weight))
        buf = io.BytesIO()
        torch.save(sd, buf)
        buf.seek(0)
        m2.load_state_dict(torch.load(buf))

    def test_load_state_dict_mismatch(self) -> None:
        sd = self.model("mm").state_dict()
        other = Model(self.c, self.table("mm2.user", dim=DIM, seed=9),
                      self.table("mm2.tags"))
        with self.assertRaisesRegex(RuntimeError, "mm2.user"):
            other.load_state_dict(sd)
        res = other.load_state_dict(sd, strict=False)
        self.assertEqual(res.missing_keys, [])
        self.assertEqual(len(res.unexpected_keys), 1)
        self.assertRegex(res.unexpected_keys[0],
                         r"^sparse\._extra_state \(.*mm2\.user")
        # Same tables, different structure: the field is named.
        self.c.drop_table("mm.user")
        self.c.create_table("mm.user", kind="hash", dim=DIM, rows=8)
        same = Model(self.c, "mm.user", "mm.tags")
        with self.assertRaisesRegex(RuntimeError, "kind 'full' != 'hash'"):
            same.load_state_dict(sd)
        # A state dict without the entry: a missing key under strict.
        del sd["sparse._extra_state"]
        with self.assertRaisesRegex(RuntimeError, "_extra_state"):
            same.load_state_dict(sd)
        same.load_state_dict(sd, strict=False)
        # Another server with the same tables: the address differs.
        with Server() as s2:
            c2 = cqrps.connect(s2.addr)
            for n in ("mm.user", "mm.tags"):
                c2.create_table(n, kind="full", dim=DIM, optimizer="sgd")
            m = Model(c2, "mm.user", "mm.tags")
            with self.assertRaisesRegex(RuntimeError, "live at"):
                m.load_state_dict(self.model("mm3").state_dict(),
                                  strict=True)
            c2.close()

    def test_checkpoint_generation(self) -> None:
        with tempfile.TemporaryDirectory() as d, \
                Server(["--data-dir", d]) as srv:
            c = cqrps.connect(srv.addr)
            for n in ("ck.user", "ck.tags"):
                c.create_table(n, kind="full", dim=DIM)
            m = Model(c, "ck.user", "ck.tags")
            gens = checkpoint(m)
            self.assertEqual(list(gens), [srv.addr])
            sd = m.state_dict()
            e = sd["sparse._extra_state"]["checkpoint"]
            self.assertEqual(e, {"persistence": True,
                                 "generations": [gens[srv.addr]]})
            m.load_state_dict(sd)
            e["generations"] = [gens[srv.addr] + 5]
            with self.assertRaisesRegex(RuntimeError, "older than"):
                m.load_state_dict(sd)
            c.close()
        with self.assertRaises(cqrps.Unsupported):
            checkpoint(self.model("nock"))


if __name__ == "__main__":
    unittest.main()
