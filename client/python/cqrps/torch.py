"""PyTorch modules whose embedding tables live on a cqrps server.

:class:`RemoteEmbedding` is used like ``torch.nn.Embedding`` and
:class:`RemoteEmbeddingBag` like ``torch.nn.EmbeddingBag``, but they hold
no parameters: forward looks the rows up on the server, and backward
*pushes* the gradient of those rows to the server, whose optimizer (the
one the table was created with: SGD, Adagrad or Adam) applies it at once.
So:

- no local optimizer step is needed (or possible) for these embeddings:
  give the local optimizer the model's other parameters only; the remote
  rows have changed by the time ``loss.backward()`` returns;
- every backward is one server-side step: gradient accumulation over
  several backward calls, gradient clipping and AMP loss scaling do not
  apply to remote rows, and backward through the same graph twice
  (``retain_graph=True``) pushes twice;
- under ``torch.no_grad()`` (evaluation) forward only looks up.

IDs are arbitrary 64-bit integers (int64 tensors are reinterpreted as
unsigned, so negative hashed IDs are valid); there is no ``num_embeddings``.
Within one forward the distinct IDs are looked up once, and backward sums
the gradients of repeated IDs locally and pushes each distinct ID once
(``dedup=True``, the default), which is what ``nn.Embedding`` plus a
sparse optimizer would do.

Threads: a module calls its client in forward and backward; like the
client, use it from one thread at a time (PyTorch runs the backward of CPU
tensors on the thread that calls ``backward()``).

:func:`cluster_tables` and :class:`ClusterSchedule` run the cluster phases
of ``cqr`` tables between epochs.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .client import Client, PhaseStatus, Pooling, _enum
from .errors import InvalidArgument, WrongDim

__all__ = ["RemoteEmbedding", "RemoteEmbeddingBag", "cluster_tables",
           "ClusterSchedule"]


def _ids_u64(ids: Tensor) -> np.ndarray:
    """A CPU int64 tensor's IDs as np.uint64, sharing memory when it can."""
    t = ids.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype != torch.int64:
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise InvalidArgument(
                f"ids: expected an integer tensor, got {t.dtype}")
        t = t.to(torch.int64)
    return t.contiguous().numpy().view(np.uint64)


def _grad_f32(grad: Tensor) -> np.ndarray:
    g = grad.detach()
    if g.device.type != "cpu":
        g = g.cpu()
    return g.to(torch.float32).contiguous().numpy()


class _Lookup(torch.autograd.Function):
    """Forward: lookup; backward: push. ``anchor`` is an empty tensor that
    requires grad, so the output is part of the autograd graph although
    the module has no local parameters."""

    @staticmethod
    def forward(ctx, anchor: Tensor, ids: Tensor,  # type: ignore[override]
                mod: "RemoteEmbedding") -> Tensor:
        flat = ids.reshape(-1)
        if mod.dedup and flat.numel() > 1:
            uniq, inverse = torch.unique(flat.detach().cpu(), sorted=True,
                                         return_inverse=True)
            u = _ids_u64(uniq)
            rows = torch.from_numpy(mod.client.lookup(mod.table, u))
            out = rows.index_select(0, inverse)
        else:
            u = _ids_u64(flat)
            inverse = None
            out = torch.from_numpy(mod.client.lookup(mod.table, u))
        ctx.mod = mod
        ctx.ids = u
        ctx.inverse = inverse
        ctx.nrows = u.shape[0]
        return out.view(tuple(ids.shape) + (mod.dim,)).to(ids.device)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        mod: RemoteEmbedding = ctx.mod
        g = grad.reshape(-1, mod.dim)
        if g.device.type != "cpu":
            g = g.cpu()
        g = g.to(torch.float32)
        if ctx.inverse is not None:
            acc = torch.zeros(ctx.nrows, mod.dim, dtype=torch.float32)
            acc.index_add_(0, ctx.inverse, g)
            g = acc
        mod.client.push(mod.table, ctx.ids, _grad_f32(g))
        return None, None, None


class _LookupPooled(torch.autograd.Function):
    """Pooled lookup forward; pooled push backward (see _Lookup)."""

    @staticmethod
    def forward(ctx, anchor: Tensor, ids: np.ndarray,  # type: ignore[override]
                offsets: np.ndarray, mod: "RemoteEmbeddingBag",
                device: torch.device) -> Tensor:
        out = mod.client.lookup_pooled(mod.table, ids, offsets, mod.mode)
        ctx.mod = mod
        ctx.ids = ids
        ctx.offsets = offsets
        return torch.from_numpy(out).to(device)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        mod: RemoteEmbeddingBag = ctx.mod
        mod.client.push_pooled(mod.table, ctx.ids, ctx.offsets,
                               _grad_f32(grad), mod.mode)
        return None, None, None, None, None


def _check_dim(client: Client, table: str, dim: Optional[int]) -> int:
    actual = client.table_dim(table)
    if dim is not None and dim != actual:
        raise WrongDim(f"table {table} has dim {actual}, the module was "
                       f"given dim={dim}")
    return actual


class RemoteEmbedding(nn.Module):
    """``nn.Embedding`` whose table lives on a cqrps server.

    Args:
        client: a connected :class:`cqrps.Client` (the module uses it in
            forward and backward).
        table: name of an existing table (create it with
            ``client.create_table``; its optimizer and learning rate are
            the ones that train it).
        dim: expected embedding dim; checked against the table (WrongDim
            on a mismatch). None takes the table's.
        dedup: look up and push each distinct ID of a batch once
            (default); False sends every ID as given (the server still
            sums repeated IDs of one push).

    forward(ids) takes an integer tensor of any shape and returns a
    float32 tensor of shape ``ids.shape + (dim,)`` on ids' device. Its
    backward pushes the gradient to the server (see the module docs).
    """

    def __init__(self, client: Client, table: str, dim: Optional[int] = None,
                 *, dedup: bool = True) -> None:
        super().__init__()
        self.client = client
        self.table = table
        self.dim = _check_dim(client, table, dim)
        self.dedup = dedup
        # Not a Parameter: no optimizer must see it, nothing is stored.
        self._anchor = torch.zeros(0, requires_grad=True)

    def forward(self, ids: Tensor) -> Tensor:
        if not isinstance(ids, Tensor):
            ids = torch.as_tensor(ids)
        return _Lookup.apply(self._anchor, ids, self)

    def extra_repr(self) -> str:
        return f"table={self.table!r}, dim={self.dim}"


class RemoteEmbeddingBag(nn.Module):
    """``nn.EmbeddingBag`` (sum or mean) whose table lives on cqrps.

    Pooling runs on the server (the pooled lookup and push calls), so only
    one vector per bag crosses the network each way.

    Args:
        client, table, dim: as for :class:`RemoteEmbedding`.
        mode: "sum" or "mean" ("max" is not offered by the server).
        include_last_offset: as in ``nn.EmbeddingBag``: offsets has one
            more entry, the end of the last bag.

    forward(input, offsets=None): ``input`` 2-D (B, N) is B bags of N IDs
    (offsets must be None); 1-D ``input`` with 1-D ``offsets`` (bag
    starts, offsets[0] == 0, non-decreasing) is ``len(offsets)`` bags, the
    last running to the end. Returns (B, dim) float32; an empty bag gives
    zeros. per_sample_weights is not supported.
    """

    def __init__(self, client: Client, table: str, dim: Optional[int] = None,
                 mode: str = "mean", *,
                 include_last_offset: bool = False) -> None:
        super().__init__()
        self.client = client
        self.table = table
        self.dim = _check_dim(client, table, dim)
        if mode == "max":
            raise InvalidArgument("mode='max' is not supported by cqrps; "
                                  "use 'sum' or 'mean'")
        self.mode = _enum(Pooling, mode, "mode").name.lower()
        self.include_last_offset = include_last_offset
        self._anchor = torch.zeros(0, requires_grad=True)

    def _bags(self, input: Tensor, offsets: Optional[Tensor]
              ) -> Tuple[np.ndarray, np.ndarray]:
        if input.dim() == 2:
            if offsets is not None:
                raise InvalidArgument(
                    "offsets must be None when input is 2-D (B, N)")
            b, n = input.shape
            ids = _ids_u64(input.reshape(-1))
            offs = np.arange(0, b * n, n, dtype=np.uint32) if n else \
                np.zeros(b, dtype=np.uint32)
            return ids, offs
        if input.dim() != 1 or offsets is None or offsets.dim() != 1:
            raise InvalidArgument(
                "expected 2-D input (B, N), or 1-D input with 1-D offsets")
        ids = _ids_u64(input)
        o = offsets.detach().cpu().to(torch.int64).numpy()
        if self.include_last_offset:
            if o.size == 0 or int(o[-1]) != ids.size:
                raise InvalidArgument("include_last_offset: the last offset "
                                      "must equal len(input)")
            o = o[:-1]
        if o.size == 0:
            raise InvalidArgument("offsets: at least one bag")
        if int(o[0]) != 0 or (o.size > 1 and np.any(np.diff(o) < 0)) or \
                int(o[-1]) > ids.size:
            raise InvalidArgument("offsets: must start at 0, not decrease "
                                  "and stay within len(input)")
        return ids, np.ascontiguousarray(o, dtype=np.uint32)

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        if per_sample_weights is not None:
            raise NotImplementedError(
                "RemoteEmbeddingBag does not support per_sample_weights")
        if not isinstance(input, Tensor):
            input = torch.as_tensor(input)
        if offsets is not None and not isinstance(offsets, Tensor):
            offsets = torch.as_tensor(offsets)
        ids, offs = self._bags(input, offsets)
        return _LookupPooled.apply(self._anchor, ids, offs, self,
                                   input.device)

    def extra_repr(self) -> str:
        return f"table={self.table!r}, dim={self.dim}, mode={self.mode!r}"


TableRef = Union[str, RemoteEmbedding, RemoteEmbeddingBag]


def _table_name(t: TableRef) -> str:
    return t if isinstance(t, str) else t.table


def cluster_tables(client: Client, tables: Iterable[TableRef],
                   wait: bool = True,
                   timeout: Optional[float] = None) -> List[PhaseStatus]:
    """Runs a cluster phase on each table (names or remote modules).

    All phases are started first and then waited for, so the server may
    run them side by side (up to its --cluster-workers). Returns one
    status per table, in order. The tables must be ``cqr`` (others raise
    Unsupported); Busy if a phase already runs on one.
    """
    names = [_table_name(t) for t in tables]
    started: List[PhaseStatus] = []
    try:
        for n in names:
            started.append(client.cluster(n, wait=False))
    finally:
        if wait and len(started) < len(names):
            # A start failed: let the phases already started finish before
            # the error propagates, so the tables are not left mid-phase.
            for n, st in zip(names, started):
                try:
                    client.cluster_wait(n, st.phase_id, timeout)
                except Exception:
                    pass
    if not wait:
        return started
    return [client.cluster_wait(n, st.phase_id, timeout)
            for n, st in zip(names, started)]


class ClusterSchedule:
    """The epoch-end hook of CQR training: a cluster phase on every ``cqr``
    table after each of the first ``floor(fraction * epochs)`` epochs
    (the published protocol uses 0.75). Tables of other kinds are skipped,
    so the same training loop serves every kind.

    Call it at the end of each epoch (0-based index), after validation::

        sched = ClusterSchedule(client, [user_emb, item_emb], epochs=10)
        for epoch in range(10):
            train(...); validate(...)
            for st in sched(epoch):
                print(st.phase_id, st.seconds)
    """

    def __init__(self, client: Client, tables: Sequence[TableRef],
                 epochs: int, fraction: float = 0.75,
                 timeout: Optional[float] = None) -> None:
        if epochs < 0 or not 0.0 <= fraction <= 1.0:
            raise InvalidArgument("epochs >= 0 and 0 <= fraction <= 1")
        self.client = client
        self.epochs = epochs
        self.fraction = fraction
        self.timeout = timeout
        self.phases = int(math.floor(fraction * epochs + 1e-9))
        names = [_table_name(t) for t in tables]
        self.tables = [n for n in names
                       if client.describe_table(n).kind == "cqr"]

    def should_cluster(self, epoch: int) -> bool:
        """True if a phase follows epoch ``epoch`` (0-based)."""
        return bool(self.tables) and 0 <= epoch < self.phases

    def __call__(self, epoch: int) -> List[PhaseStatus]:
        """Clusters if this epoch is scheduled; returns the final phase
        statuses (empty when nothing ran)."""
        if not self.should_cluster(epoch):
            return []
        return cluster_tables(self.client, self.tables, wait=True,
                              timeout=self.timeout)

    on_epoch_end = __call__
