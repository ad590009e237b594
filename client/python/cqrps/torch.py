"""PyTorch modules whose embedding tables live on a cqrps server.

:class:`RemoteEmbedding` is used like ``torch.nn.Embedding``,
:class:`RemoteEmbeddingBag` like ``torch.nn.EmbeddingBag`` and
:class:`RemoteEmbeddingCollection` like TorchRec's embedding collections
(several features, plain and bags, in one module, fed a KeyedJaggedTensor
or a dict). They hold no parameters: forward looks the rows up on the
server, and backward *pushes* the gradient of those rows to the server,
whose optimizer (the table's: SGD, Adagrad or Adam) applies it at once.
So:

- no local optimizer steps these embeddings: give the local optimizer the
  model's other parameters only; the remote rows have changed by the time
  ``loss.backward()`` returns. :class:`RemoteOptimizer` is the
  optimizer-like handle of the server-side hyperparameters, so that
  ``torch.optim.lr_scheduler`` schedulers drive the tables' learning rate;
- every backward is one server-side step: gradient accumulation over
  several backward calls and gradient clipping do not apply to remote
  rows, and backward through the same graph twice (``retain_graph=True``)
  pushes twice. Under mixed precision, give the module the GradScaler
  (``grad_scaler=``): backward divides its scale out of the gradients and
  skips (does not push, does not raise) a step whose gradients hold Inf
  or NaN, as ``GradScaler.step`` skips the dense optimizer;
- under ``torch.no_grad()`` (evaluation) forward only looks up.

One forward of a module is one Lookup request per shard for all its
tables, one backward one Push request per shard (``Client.lookup_many`` /
``push_many``). IDs are arbitrary 64-bit integers (int64 tensors are
reinterpreted as unsigned, so negative hashed IDs are valid). Within one
forward the distinct IDs of a plain feature are looked up once, and
backward sums the gradients of repeated IDs and pushes each distinct ID
once (``dedup=True``, the default; libcqrps does it with a hash pass);
bags are pooled on the server, one gradient per bag. ``prefetch`` starts
the lookup of the next batch while the current step computes.

Modules (and their clients) pickle: the copy connects again at its first
call, so ``torch.save(model)``, ``copy.deepcopy``, ``mp.spawn`` and
DataLoader workers work. ``state_dict()`` records each remote table's
address, name, config and checkpoint generation, and ``load_state_dict``
checks them (:mod:`cqrps._torch_state`).

Threads: a module calls its client in forward and backward; like the
client, use it from one thread at a time (PyTorch runs the backward of CPU
tensors on the thread that calls ``backward()``). A prefetch runs on its
own thread with its own connection.

:func:`cluster_tables` and :class:`ClusterSchedule` run the cluster phases
of ``cqr`` tables between epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import (Any, Dict, Iterable, List, Optional, Sequence, Tuple,
                    Union)

import numpy as np
import torch
from torch import Tensor, nn

from ._torch_core import Feature, Part, RemoteModule
from ._torch_optim import RemoteOptimizer
from .client import Client, PhaseStatus, Pooling, _enum
from .errors import InvalidArgument, WrongDim

__all__ = ["RemoteEmbedding", "RemoteEmbeddingBag",
           "RemoteEmbeddingCollection", "RemoteOptimizer", "checkpoint",
           "cluster_tables", "ClusterSchedule"]


def _as_tensor(x: Any, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{what}: {e}") from None


def _ids_u64(ids: Tensor) -> np.ndarray:
    """A tensor's IDs as flat C-contiguous np.uint64, sharing memory with
    a contiguous CPU int64 tensor."""
    t = ids.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype != torch.int64:
        if t.dtype.is_floating_point or t.dtype == torch.bool or \
                t.dtype.is_complex:
            raise InvalidArgument(
                f"ids: expected an integer tensor, got {t.dtype}")
        t = t.to(torch.int64)
    return t.contiguous().numpy().reshape(-1).view(np.uint64)


def _offsets_np(offsets: Tensor) -> np.ndarray:
    o = offsets.detach()
    if o.device.type != "cpu":
        o = o.cpu()
    if o.dtype.is_floating_point or o.dtype == torch.bool:
        raise InvalidArgument(f"offsets: expected integers, got {o.dtype}")
    return o.to(torch.int64).numpy().reshape(-1)


def _bag_starts(ends: np.ndarray, n: int, what: str) -> np.ndarray:
    """KJT-style offsets (B + 1 entries, 0 .. n) as uint32 bag starts."""
    if ends.size == 0 or int(ends[0]) != 0 or int(ends[-1]) != n or (
            ends.size > 1 and bool(np.any(np.diff(ends) < 0))):
        raise InvalidArgument(
            f"{what}: offsets must hold B + 1 entries, start at 0, not "
            f"decrease and end at len(values) ({n})")
    if n > 0xFFFFFFFF:
        raise InvalidArgument(f"{what}: at most 2**32-1 IDs per bag feature")
    return ends[:-1].astype(np.uint32)


def _check_dim(client: Client, table: str, dim: Optional[int]) -> int:
    actual = client.table_dim(table)
    if dim is not None and dim != actual:
        raise WrongDim(f"table {table} has dim {actual}, the module was "
                       f"given dim={dim}")
    return actual


class RemoteEmbedding(RemoteModule):
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
        bf16: vectors and gradients as bfloat16 on the wire.
        grad_scaler: a ``GradScaler`` to unscale gradients with (see the
            module docs).

    forward(ids) takes an integer tensor of any shape and returns a
    float32 tensor of shape ``ids.shape + (dim,)`` on ids' device. Its
    backward pushes the gradient to the server (see the module docs).
    """

    def __init__(self, client: Client, table: str, dim: Optional[int] = None,
                 *, dedup: bool = True, bf16: bool = False,
                 grad_scaler: Any = None) -> None:
        d = _check_dim(client, table, dim)
        super().__init__(client, [Feature(table, table, d, None)],
                         dedup=dedup, bf16=bf16, grad_scaler=grad_scaler)
        self.table = table
        self.dim = d

    def _parts(self, ids: Any) -> Tuple[List[Part], List[Tensor]]:
        t = _as_tensor(ids, "ids")
        return [Part(self.features[0], _ids_u64(t), None,
                     tuple(t.shape))], [t]

    def forward(self, ids: Any) -> Tensor:
        parts, sources = self._parts(ids)
        device = sources[0].device
        return self._run(parts, sources, device)[0]

    def extra_repr(self) -> str:
        return f"table={self.table!r}, dim={self.dim}"


class RemoteEmbeddingBag(RemoteModule):
    """``nn.EmbeddingBag`` (sum or mean) whose table lives on cqrps.

    Pooling runs on the server (the pooled lookup and push), so only one
    vector per bag crosses the network each way.

    Args:
        client, table, dim, bf16, grad_scaler: as for
            :class:`RemoteEmbedding`.
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
                 mode: str = "mean", *, include_last_offset: bool = False,
                 bf16: bool = False, grad_scaler: Any = None) -> None:
        d = _check_dim(client, table, dim)
        if mode == "max":
            raise InvalidArgument("mode='max' is not supported by cqrps; "
                                  "use 'sum' or 'mean'")
        m = _enum(Pooling, mode, "mode").name.lower()
        super().__init__(client, [Feature(table, table, d, m)], dedup=False,
                         bf16=bf16, grad_scaler=grad_scaler)
        self.table = table
        self.dim = d
        self.mode = m
        self.include_last_offset = include_last_offset

    def _parts(self, input: Any, offsets: Any = None,
               per_sample_weights: Optional[Tensor] = None
               ) -> Tuple[List[Part], List[Tensor]]:
        if per_sample_weights is not None:
            raise NotImplementedError(
                "RemoteEmbeddingBag does not support per_sample_weights")
        inp = _as_tensor(input, "input")
        if inp.dim() == 2:
            if offsets is not None:
                raise InvalidArgument(
                    "offsets must be None when input is 2-D (B, N)")
            b, n = inp.shape
            ids = _ids_u64(inp)
            offs = (np.arange(0, b * n, n, dtype=np.uint32) if n else
                    np.zeros(b, dtype=np.uint32))
            return [Part(self.features[0], ids, offs, (b,))], [inp]
        if inp.dim() != 1 or offsets is None:
            raise InvalidArgument(
                "expected 2-D input (B, N), or 1-D input with 1-D offsets")
        o = _offsets_np(_as_tensor(offsets, "offsets"))
        ids = _ids_u64(inp)
        if self.include_last_offset:
            if o.size == 0 or int(o[-1]) != ids.size:
                raise InvalidArgument("include_last_offset: the last offset "
                                      "must equal len(input)")
            o = o[:-1]
        if o.size == 0:
            raise InvalidArgument("offsets: at least one bag")
        if int(o[0]) != 0 or (o.size > 1 and bool(np.any(np.diff(o) < 0))) \
                or int(o[-1]) > ids.size:
            raise InvalidArgument("offsets: must start at 0, not decrease "
                                  "and stay within len(input)")
        offs = np.ascontiguousarray(o, dtype=np.uint32)
        return [Part(self.features[0], ids, offs, (o.size,))], [inp]

    def forward(self, input: Any, offsets: Any = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        parts, sources = self._parts(input, offsets, per_sample_weights)
        return self._run(parts, sources, sources[0].device)[0]

    def extra_repr(self) -> str:
        return f"table={self.table!r}, dim={self.dim}, mode={self.mode!r}"


FeatureSpec = Union[str, Tuple[str], Tuple[str, Optional[str]],
                    Dict[str, Any]]


def _feature_spec(name: str, spec: FeatureSpec) -> Tuple[str, Optional[str]]:
    """(table, pooling) of one feature's spec."""
    if isinstance(spec, str):
        return spec, None
    if isinstance(spec, Mapping):
        table, pooling = spec.get("table"), spec.get("pooling")
    elif isinstance(spec, (tuple, list)) and 1 <= len(spec) <= 2:
        table = spec[0]
        pooling = spec[1] if len(spec) == 2 else None
    else:
        raise InvalidArgument(f"feature {name!r}: expected 'table', "
                              f"(table, pooling) or a dict, got {spec!r}")
    if not isinstance(table, str):
        raise InvalidArgument(f"feature {name!r}: table must be a str")
    if pooling is not None:
        if pooling == "max":
            raise InvalidArgument(f"feature {name!r}: pooling 'max' is not "
                                  "supported by cqrps; use 'sum' or 'mean'")
        pooling = _enum(Pooling, pooling, f"feature {name!r}: pooling"
                        ).name.lower()
    return table, pooling


def _is_kjt(x: Any) -> bool:
    """Duck-typed TorchRec KeyedJaggedTensor: keys(), values() and
    offsets() or lengths(); torchrec itself is never imported."""
    return (not isinstance(x, Mapping) and callable(getattr(x, "keys", None))
            and callable(getattr(x, "values", None))
            and (callable(getattr(x, "offsets", None)) or
                 callable(getattr(x, "lengths", None))))


def _jagged_offsets(x: Any) -> Tensor:
    off = getattr(x, "offsets", None)
    if callable(off):
        return _as_tensor(off(), "offsets")
    lengths = _as_tensor(x.lengths(), "lengths").to(torch.int64)
    return torch.cat([torch.zeros(1, dtype=torch.int64),
                      torch.cumsum(lengths.reshape(-1), 0)])


def _split_kjt(kjt: Any) -> Dict[str, Tuple[Tensor, np.ndarray]]:
    """Per key: (values slice, KJT-style offsets of its bags)."""
    w = getattr(kjt, "weights_or_none", None)
    if callable(w) and w() is not None:
        raise NotImplementedError(
            "RemoteEmbeddingCollection does not support weighted "
            "KeyedJaggedTensors")
    keys = list(kjt.keys())
    values = _as_tensor(kjt.values(), "values").reshape(-1)
    offs = _offsets_np(_jagged_offsets(kjt))
    if not keys:
        return {}
    stride = kjt.stride() if callable(getattr(kjt, "stride", None)) else \
        (offs.size - 1) // len(keys)
    if offs.size != len(keys) * stride + 1:
        raise InvalidArgument(f"KeyedJaggedTensor: {offs.size} offsets for "
                              f"{len(keys)} keys of batch size {stride}")
    out = {}
    for k, key in enumerate(keys):
        seg = offs[k * stride:(k + 1) * stride + 1]
        lo, hi = int(seg[0]), int(seg[-1])
        out[key] = (values[lo:hi], seg - lo)
    return out


class RemoteEmbeddingCollection(RemoteModule):
    """Several features, each on its remote table, in one module: one
    Lookup request per shard in forward, one Push per shard in backward.

    Args:
        client: a connected :class:`cqrps.Client`.
        features: feature name -> spec, where a spec is a table name (a
            plain feature: one row per ID), ``(table, pooling)`` or
            ``{"table": ..., "pooling": ...}`` with pooling None, "sum"
            or "mean" (a bag feature, pooled on the server). Features may
            share a table.
        dedup, bf16, grad_scaler: as for :class:`RemoteEmbedding`.

    ``forward(batch)`` returns a dict feature -> float32 tensor, in the
    order of ``features``. ``batch`` is either

    - a TorchRec ``KeyedJaggedTensor`` (or any object with ``keys()``,
      ``values()`` and ``offsets()`` or ``lengths()``, laid out as a KJT:
      key-major, B entries per key): a plain feature gives (n, dim), one
      row per value of that key; a bag feature gives (B, dim);
    - or a dict feature -> input, an input being a tensor of IDs (plain:
      any shape, giving ``shape + (dim,)``; bag: 2-D (B, N), B bags of N
      IDs), a pair ``(values, offsets)`` with KJT-style offsets (B + 1
      entries from 0 to ``len(values)``), or a jagged tensor with
      ``values()`` and ``offsets()``.

    Every feature of the module must be in the batch, and nothing else.
    """

    def __init__(self, client: Client,
                 features: Union[Mapping, Sequence[Tuple[str, FeatureSpec]]],
                 *, dedup: bool = True, bf16: bool = False,
                 grad_scaler: Any = None) -> None:
        items = list(features.items() if isinstance(features, Mapping)
                     else features)
        if not items:
            raise InvalidArgument("features: at least one")
        feats: List[Feature] = []
        for name, spec in items:
            if not isinstance(name, str):
                raise InvalidArgument(f"feature names are str, got {name!r}")
            table, pooling = _feature_spec(name, spec)
            feats.append(Feature(name, table, _check_dim(client, table, None),
                                 pooling))
        if len({f.name for f in feats}) != len(feats):
            raise InvalidArgument("features: names must be distinct")
        super().__init__(client, feats, dedup=dedup, bf16=bf16,
                         grad_scaler=grad_scaler)

    @property
    def feature_names(self) -> List[str]:
        """The features, in output order."""
        return [f.name for f in self.features]

    def _inputs(self, batch: Any) -> Dict[str, Any]:
        if isinstance(batch, Mapping):
            per = dict(batch)
        elif _is_kjt(batch):
            per = _split_kjt(batch)
        else:
            raise InvalidArgument(
                "batch: expected a KeyedJaggedTensor or a dict feature -> "
                f"input, got {type(batch).__name__}")
        names = set(self.feature_names)
        if set(per) != names:
            missing = sorted(names - set(per))
            extra = sorted(set(per) - names)
            raise InvalidArgument(f"batch: features missing {missing}, "
                                  f"unknown {extra}")
        return per

    def _part(self, feat: Feature, x: Any) -> Tuple[Part, Tensor]:
        offsets: Optional[np.ndarray] = None
        if isinstance(x, (tuple, list)) and len(x) == 2 and not isinstance(
                x[0], (int, np.integer)):
            values = _as_tensor(x[0], f"{feat.name}: values")
            offsets = x[1] if isinstance(x[1], np.ndarray) else \
                _offsets_np(_as_tensor(x[1], f"{feat.name}: offsets"))
        elif not isinstance(x, Tensor) and callable(
                getattr(x, "values", None)) and callable(
                getattr(x, "offsets", None)):
            values = _as_tensor(x.values(), f"{feat.name}: values")
            offsets = _offsets_np(_jagged_offsets(x))
        else:
            values = _as_tensor(x, feat.name)
        if feat.pooling is None:
            return Part(feat, _ids_u64(values), None,
                        tuple(values.shape)), values
        if offsets is None:
            if values.dim() != 2:
                raise InvalidArgument(
                    f"{feat.name}: a bag feature takes (values, offsets) or "
                    f"a 2-D (B, N) tensor")
            b, n = values.shape
            starts = np.arange(0, b * n, n, dtype=np.uint32) if n else \
                np.zeros(b, dtype=np.uint32)
            return Part(feat, _ids_u64(values), starts, (b,)), values
        ids = _ids_u64(values)
        starts = _bag_starts(offsets, ids.size, feat.name)
        return Part(feat, ids, starts, (starts.size,)), values

    def _parts(self, batch: Any) -> Tuple[List[Part], List[Tensor]]:
        per = self._inputs(batch)
        parts, sources = [], []
        for f in self.features:
            p, src = self._part(f, per[f.name])
            parts.append(p)
            sources.append(src)
        return parts, sources

    def forward(self, batch: Any) -> Dict[str, Tensor]:
        parts, sources = self._parts(batch)
        outs = self._run(parts, sources, sources[0].device)
        return {f.name: o for f, o in zip(self.features, outs)}

    def extra_repr(self) -> str:
        return ", ".join(
            f"{f.name}={f.table!r}" + (f"/{f.pooling}" if f.pooling else "")
            for f in self.features)


def _remote_modules(model: Any) -> List[RemoteModule]:
    if isinstance(model, nn.Module):
        return [m for m in model.modules() if isinstance(m, RemoteModule)]
    out: List[RemoteModule] = []
    for m in model:
        out.extend(_remote_modules(m))
    return out


def checkpoint(model: Any) -> Dict[str, int]:
    """Takes a server checkpoint for every client the remote modules of
    ``model`` (a module, or an iterable of modules) use, and returns
    address list -> generation. Call it right before ``state_dict()``, so
    that the state dict names the checkpoint made for it. Unsupported on
    servers without ``--data-dir``."""
    done: Dict[int, Tuple[str, int]] = {}
    for m in _remote_modules(model):
        if id(m.client) not in done:
            done[id(m.client)] = (m.client.addrs, m.client.checkpoint())
    return dict(done.values())


TableRef = Union[str, RemoteModule]


def _table_names(tables: Iterable[TableRef]) -> List[str]:
    """Table names of names and remote modules (every table of a
    collection), each once, in order."""
    names: List[str] = []
    for t in tables:
        names.extend([t] if isinstance(t, str) else t.tables)
    return list(dict.fromkeys(names))


def cluster_tables(client: Client, tables: Iterable[TableRef],
                   wait: bool = True,
                   timeout: Optional[float] = None) -> List[PhaseStatus]:
    """Runs a cluster phase on each table (names or remote modules).

    All phases are started first and then waited for, so the server may
    run them side by side (up to its --cluster-workers). Returns one
    status per table, in order. The tables must be ``cqr`` (others raise
    Unsupported); Busy if a phase already runs on one.
    """
    names = _table_names(tables)
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
        names = _table_names(tables)
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
