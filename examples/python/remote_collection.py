#!/usr/bin/env python3
"""A click-through model with its sparse features on a cqrps server.

The smallest complete use of ``cqrps.torch.RemoteEmbeddingCollection``:

- three sparse features (a user ID, an item ID, a bag of tags), each on
  its own remote table, read in TorchRec's KeyedJaggedTensor layout (a
  real ``torchrec.sparse.jagged_tensor.KeyedJaggedTensor`` when torchrec
  is installed, else a small stand-in with the same methods);
- a dense tower on the concatenated embeddings, trained by a local Adam;
- one Lookup request per step for all three tables and one Push request
  in ``loss.backward()`` (the server's Adam steps the rows);
- the next batch's lookup prefetched while the current step computes;
- the tables' learning rate driven by a cosine schedule through
  ``RemoteOptimizer``;
- the model saved with ``torch.save`` and its ``state_dict`` checked
  against the server on load.

The data are synthetic: a click is likely when the item's group matches
the user's taste group, so the loss falls within a few hundred steps.

    PYTHONPATH=client/python python3 examples/python/remote_collection.py \\
        --addr 127.0.0.1:7070

Prints the loss every 50 steps and, last, ``first_loss=A last_loss=B``.
Drops its tables at the end (unless --keep). Exit status 0 on success.
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np
import torch

import cqrps
from cqrps.torch import RemoteEmbeddingCollection, RemoteOptimizer

DIM = 16
USERS, ITEMS, TAGS, GROUPS = 2000, 500, 64, 8

try:  # TorchRec's input type when it is installed; never required
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
except ImportError:
    class KeyedJaggedTensor:  # type: ignore[no-redef]
        """The part of TorchRec's KeyedJaggedTensor the module reads:
        values of every key, key-major, with B lengths per key."""

        def __init__(self, keys, values, lengths):
            self._keys, self._values, self._lengths = keys, values, lengths

        def keys(self):
            return self._keys

        def values(self):
            return self._values

        def lengths(self):
            return self._lengths


class Data:
    """Users and items in GROUPS taste groups; tags hint at the group."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.user_group = self.rng.integers(0, GROUPS, USERS)
        self.item_group = self.rng.integers(0, GROUPS, ITEMS)

    def batch(self, b: int):
        u = self.rng.integers(0, USERS, b)
        i = self.rng.integers(0, ITEMS, b)
        match = self.user_group[u] == self.item_group[i]
        y = (self.rng.random(b) < np.where(match, 0.8, 0.1)).astype(
            np.float32)
        ntags = self.rng.integers(0, 4, b)  # 0..3 tags per example
        tags = (self.item_group[np.repeat(i, ntags)] * (TAGS // GROUPS) +
                self.rng.integers(0, TAGS // GROUPS, int(ntags.sum())))
        kjt = KeyedJaggedTensor(
            keys=["user", "item", "tags"],
            values=torch.from_numpy(np.concatenate([u, i, tags])),
            lengths=torch.from_numpy(np.concatenate(
                [np.ones(b, np.int64), np.ones(b, np.int64), ntags])))
        return kjt, torch.from_numpy(y)


class CTR(torch.nn.Module):
    def __init__(self, client: cqrps.Client, prefix: str) -> None:
        super().__init__()
        self.sparse = RemoteEmbeddingCollection(client, {
            "user": f"{prefix}.user",
            "item": f"{prefix}.item",
            "tags": (f"{prefix}.tags", "mean"),
        })
        self.tower = torch.nn.Sequential(
            torch.nn.Linear(3 * DIM, 64), torch.nn.ReLU(),
            torch.nn.Linear(64, 1))

    def forward(self, kjt) -> torch.Tensor:
        e = self.sparse(kjt)
        x = torch.cat([e["user"], e["item"], e["tags"]], dim=1)
        return self.tower(x).squeeze(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", required=True, help="host:port[,host:port]")
    ap.add_argument("--prefix", default="example.ctr")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    client = cqrps.connect(args.addr)
    tables = [f"{args.prefix}.{f}" for f in ("user", "item", "tags")]
    for t in tables:
        client.create_table(t, kind="cqr", dim=DIM, chunks=4, rows=64,
                            optimizer="adam", lr=0.02, seed=args.seed)
    try:
        model = CTR(client, args.prefix)
        dense = torch.optim.Adam(model.tower.parameters(), lr=3e-3)
        sparse = RemoteOptimizer(model.sparse)  # the tables' lr, as groups
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            sparse, T_max=args.steps, eta_min=0.002)
        data = Data(args.seed)
        bce = torch.nn.BCEWithLogitsLoss()
        kjt, y = data.batch(args.batch)
        first = last = 0.0
        for step in range(args.steps):
            logits = model(kjt)
            nxt = data.batch(args.batch)
            model.sparse.prefetch(nxt[0])  # overlaps this step's work
            loss = bce(logits, y)
            dense.zero_grad()
            loss.backward()  # pushes: the server's Adam steps the rows
            dense.step()
            sparse.step()
            sched.step()  # the next step's lr goes to the server now
            kjt, y = nxt
            first = first or float(loss)
            last = 0.9 * last + 0.1 * float(loss) if step else float(loss)
            if step % 50 == 0:
                print(f"step={step} loss={float(loss):.4f} "
                      f"lr={sched.get_last_lr()[0]:.5f}", flush=True)

        # The whole model pickles: its client connects again on load.
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        again = torch.load(buf)
        with torch.no_grad():
            same = torch.equal(again(kjt), model(kjt))
        # The state dict holds the dense weights and, per remote table,
        # its address, config and checkpoint generation; loading checks
        # them against the server.
        state = model.state_dict()
        again.load_state_dict(state)
        print(f"reloaded_equal={same} tables="
              f"{sorted(state['sparse._extra_state']['tables'])}")
        print(f"first_loss={first:.4f} last_loss={last:.4f}")
        return 0 if same else 1
    finally:
        if not args.keep:
            for t in tables:
                client.drop_table(t)
        client.close()


if __name__ == "__main__":
    sys.exit(main())
