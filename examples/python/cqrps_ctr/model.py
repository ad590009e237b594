"""DLRM-lite: embedding front-ends and the dense part.

The model: every sparse feature an embedding of dim ``d`` (bags mean
pooled); the dense features (if any) through a bottom MLP
(``ndense -> 64 -> d``, ReLU); all pairwise dot products of the feature
vectors concatenated with the vectors; a top MLP ``-> 64 -> 32 -> 1``
(ReLU between); the logit. With the 7 features of movielens-1m that is
21 + 112 = 133 inputs to the top MLP, the reference's model.

Front-ends turn a :class:`~.data.Batch` into a ``(B, F, d)`` tensor in
feature order (plain features, then bags):

- :class:`RemoteFeatures`: tables on cqrps, through
  ``cqrps.torch.RemoteEmbeddingCollection``: one Lookup and one Push
  request per shard per step for all the tables.
- :class:`LocalFeatures`: the baseline, ``nn.EmbeddingBag`` tables in this
  process (sparse gradients for SparseAdam, or dense ones for Adam).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

import cqrps
from cqrps.torch import RemoteEmbeddingCollection

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


class RemoteFeatures(nn.Module):
    """Every feature's table on cqrps, through one
    :class:`cqrps.torch.RemoteEmbeddingCollection` (``tables`` in feature
    order: plain features, then bags, mean pooled on the server).

    A step is one Lookup request per shard in forward and one Push request
    per shard in backward, for all the tables together; repeated IDs of a
    plain feature are looked up and pushed once (the client de-duplicates
    them). ``bf16``: vectors and gradients as bfloat16 on the wire.
    """

    def __init__(self, client: cqrps.Client, features: Sequence[Feature],
                 tables: Sequence[str], bf16: bool = False) -> None:
        super().__init__()
        spec: Dict[str, object] = {
            f.name: (t, "mean") if f.bag else t
            for f, t in zip(features, tables)}
        self.coll = RemoteEmbeddingCollection(client, spec, bf16=bf16)
        self.plain = [f.name for f in features if not f.bag]
        self.bags = [f.name for f in features if f.bag]

    def inputs(self, batch: Batch) -> Dict[str, object]:
        """The collection's input for a batch: feature -> IDs or (IDs,
        offsets)."""
        inp: Dict[str, object] = {}
        for name, ids in zip(self.plain, batch.ids):
            inp[name] = torch.from_numpy(ids.view(np.int64))
        for name, (vals, offs) in zip(self.bags, batch.bags):
            o = np.empty(len(offs) + 1, dtype=np.int64)
            o[:-1] = offs
            o[-1] = len(vals)
            inp[name] = (torch.from_numpy(vals.view(np.int64)), o)
        return inp

    def prefetch(self, batch: Batch) -> None:
        """Sends the lookup of the next forward's batch once the push of
        the step in flight is acknowledged (the collection's prefetch
        with ``after_push``): the forward then gets exactly what it would
        have looked up itself, and the lookup overlaps the dense
        optimizer step and the preparation of that batch."""
        self.coll.prefetch(self.inputs(batch), after_push=True)

    def forward(self, batch: Batch) -> Tensor:
        out = self.coll(self.inputs(batch))
        return torch.stack([out[n] for n in self.plain + self.bags], dim=1)


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
