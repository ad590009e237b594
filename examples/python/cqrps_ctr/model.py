"""DLRM-lite: embedding front-ends and the dense part.

The model: every sparse feature an embedding of dim ``d`` (bags mean
pooled); the dense features (if any) through a bottom MLP
(``ndense -> 64 -> d``, ReLU); all pairwise dot products of the feature
vectors concatenated with the vectors; a top MLP ``-> 64 -> 32 -> 1``
(ReLU between); the logit. With the 7 features of movielens-1m that is
21 + 112 = 133 inputs to the top MLP, the reference's model.

Front-ends turn a :class:`~.data.Batch` into a ``(B, F, d)`` tensor in
feature order (plain features, then bags):

- :class:`RemoteFeatures`: tables on cqrps. One forward starts the lookup
  of every table (pipelined on the client's connections) and waits for
  them; backward starts the push of every table and returns, and the next
  forward (or :meth:`RemoteFeatures.flush`) waits for those pushes first.
  So pushes overlap the dense optimizer step and the next batch's
  preparation, and a lookup never overtakes the push before it. Distinct
  IDs of a plain feature are looked up and pushed once (gradients summed).
- :class:`LocalFeatures`: the baseline, ``nn.EmbeddingBag`` tables in this
  process (sparse gradients for SparseAdam, or dense ones for Adam).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

import cqrps

from .data import Batch, Feature


class DenseArch(nn.Module):
    """Bottom MLP, pairwise interactions and top MLP of DLRM-lite."""

    def __init__(self, nsparse: int, ndense: int, dim: int,
                 bottom: Sequence[int] = (64,),
                 top: Sequence[int] = (64, 32)) -> None:
        super().__init__()
        self.dim = dim
        layers: List[nn.Module] = []
        if ndense:
            prev = ndense
            for h in list(bottom) + [dim]:
                layers += [nn.Linear(prev, h), nn.ReLU()]
                prev = h
        self.bottom = nn.Sequential(*layers) if layers else None
        nvec = nsparse + (1 if ndense else 0)
        iu = torch.triu_indices(nvec, nvec, offset=1)
        self.register_buffer("li", iu[0], persistent=False)
        self.register_buffer("lj", iu[1], persistent=False)
        prev = nvec * dim + iu.shape[1]
        tl: List[nn.Module] = []
        for h in top:
            tl += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        tl.append(nn.Linear(prev, 1))
        self.top = nn.Sequential(*tl)

    def forward(self, emb: Tensor, dense: Optional[Tensor]) -> Tensor:
        """Logits (B,) of embeddings (B, F, dim) and dense (B, ndense)."""
        vecs = emb
        if self.bottom is not None:
            assert dense is not None
            vecs = torch.cat([self.bottom(dense).unsqueeze(1), emb], dim=1)
        z = torch.bmm(vecs, vecs.transpose(1, 2))
        dots = z[:, self.li, self.lj]
        x = torch.cat([vecs.flatten(1), dots], dim=1)
        return self.top(x).squeeze(-1)


# ---- Remote tables -------------------------------------------------------------


class _Remote(torch.autograd.Function):
    """Forward: one lookup per table, pipelined; backward: pushes."""

    @staticmethod
    def forward(ctx, anchor: Tensor, batch: Batch,  # type: ignore[override]
                mod: "RemoteFeatures") -> Tensor:
        mod.flush()
        c, dim = mod.client, mod.dim
        b = len(batch)
        nplain = len(batch.ids)
        out = np.empty((b, nplain + len(batch.bags), dim), np.float32)
        tickets = []
        uniq: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for j, ids in enumerate(batch.ids):
            u, inv = np.unique(ids, return_inverse=True)
            rows = np.empty((len(u), dim), np.float32)
            tickets.append(c.lookup_start(mod.tables[j], u, rows))
            uniq.append((u, inv, rows))
        bag_out = []
        for k, (vals, offs) in enumerate(batch.bags):
            rows = np.empty((len(offs), dim), np.float32)
            tickets.append(c.lookup_pooled_start(
                mod.tables[nplain + k], vals, offs, "mean", rows))
            bag_out.append(rows)
        for t in tickets:
            t.wait()
        for j, (_, inv, rows) in enumerate(uniq):
            out[:, j] = rows[inv]
        for k, rows in enumerate(bag_out):
            out[:, nplain + k] = rows
        ctx.mod = mod
        ctx.plain = [(u, inv) for u, inv, _ in uniq]
        ctx.bags = batch.bags
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        mod: RemoteFeatures = ctx.mod
        g = grad.detach().to(torch.float32).contiguous()
        nplain = len(ctx.plain)
        for j, (u, inv) in enumerate(ctx.plain):
            acc = torch.zeros(len(u), mod.dim, dtype=torch.float32)
            acc.index_add_(0, torch.from_numpy(inv.astype(np.int64)), g[:, j])
            mod.pending.append(mod.client.push_start(
                mod.tables[j], u, acc.numpy()))
        for k, (vals, offs) in enumerate(ctx.bags):
            mod.pending.append(mod.client.push_pooled_start(
                mod.tables[nplain + k], vals, offs,
                np.ascontiguousarray(g[:, nplain + k].numpy()), "mean"))
        return None, None, None


class RemoteFeatures(nn.Module):
    """Every feature's table on cqrps (``tables`` in feature order: plain
    features, then bags). Holds no parameters; see the module docs."""

    def __init__(self, client: cqrps.Client, tables: Sequence[str],
                 dim: int) -> None:
        super().__init__()
        self.client = client
        self.tables = list(tables)
        self.dim = dim
        self.pending: List[cqrps.Ticket] = []
        self._anchor = torch.zeros(0, requires_grad=True)

    def flush(self) -> None:
        """Waits for the pushes in flight (raises their first error)."""
        pending, self.pending = self.pending, []
        err: Optional[BaseException] = None
        for t in pending:
            try:
                t.wait()
            except cqrps.Error as e:  # wait for all, then raise the first
                err = err or e
        if err is not None:
            raise err

    def forward(self, batch: Batch) -> Tensor:
        return _Remote.apply(self._anchor, batch, self)


# ---- Local tables (the baseline) -------------------------------------------------


class LocalFeatures(nn.Module):
    """The same front-end with ``nn.EmbeddingBag`` tables in this process.

    IDs are mapped to rows through each feature's sorted vocabulary
    (``vocabs``, from the data set) by binary search; a batch that carries
    row indices (``Batch.index``, the synthetic generator's ranks) is used
    as it is. ``sparse``: sparse gradients (for SparseAdam), else dense
    (for Adam, the published code's setting).
    """

    def __init__(self, features: Sequence[Feature], dim: int,
                 vocabs: Optional[Sequence[np.ndarray]], sparse: bool,
                 init_scale: float) -> None:
        super().__init__()
        self.vocabs = list(vocabs) if vocabs is not None else None
        self.bags = nn.ModuleList()
        for f in features:
            e = nn.EmbeddingBag(max(1, f.vocab), dim, mode="mean",
                                sparse=sparse)
            nn.init.uniform_(e.weight, -init_scale, init_scale)
            self.bags.append(e)

    def _rows(self, j: int, ids: np.ndarray,
              index: Optional[List[np.ndarray]]) -> Tensor:
        if index is not None:
            return torch.from_numpy(index[j].astype(np.int64))
        assert self.vocabs is not None
        v = self.vocabs[j]
        pos = np.minimum(np.searchsorted(v, ids), len(v) - 1)
        return torch.from_numpy(pos.astype(np.int64))

    def forward(self, batch: Batch) -> Tensor:
        b = len(batch)
        outs = []
        index = batch.index
        offs0 = torch.arange(b, dtype=torch.int64)
        for j, ids in enumerate(batch.ids):
            outs.append(self.bags[j](self._rows(j, ids, index), offs0))
        nplain = len(batch.ids)
        for k, (vals, offs) in enumerate(batch.bags):
            rows = self._rows(nplain + k, vals, None)
            outs.append(self.bags[nplain + k](
                rows, torch.from_numpy(offs.astype(np.int64))))
        return torch.stack(outs, dim=1)


def feature_vocabs(train_ids: np.ndarray, valid_ids: np.ndarray,
                   bags: Sequence[Tuple[np.ndarray, np.ndarray]],
                   vbags: Sequence[Tuple[np.ndarray, np.ndarray]]
                   ) -> List[np.ndarray]:
    """Sorted distinct IDs per feature (plain columns, then bags)."""
    out = [np.unique(np.concatenate([train_ids[:, j], valid_ids[:, j]]))
           for j in range(train_ids.shape[1])]
    out += [np.unique(np.concatenate([t[0], v[0]]))
            for t, v in zip(bags, vbags)]
    return out


def state_sizes(model: nn.Module) -> Dict[str, int]:
    """Parameter counts of a model's parts (for the log)."""
    return {n: sum(p.numel() for p in m.parameters())
            for n, m in model.named_children()}
