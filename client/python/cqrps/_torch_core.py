"""What cqrps.torch's modules share: a step's parts, the autograd
function, the prefetch, gradient unscaling, pickling and state dicts.

A *step* is one forward of a remote module: one part per feature (a
table, its IDs, bag offsets for a bag feature). Forward de-duplicates the
IDs of every plain part (libcqrps, :mod:`cqrps._batch`), looks every part
up in one ``Client.lookup_many`` call (one Lookup request per shard) and
gives every occurrence its row. Backward sums the gradients of repeated
IDs, unscales them if a gradient scaler is attached, and pushes every
part in one ``Client.push_many`` call (one Push request per shard).
RemoteEmbedding, RemoteEmbeddingBag and RemoteEmbeddingCollection are
thin front ends over :class:`RemoteModule`, so one table behaves the same
in any of them, bit for bit.
"""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from . import _batch
from . import _torch_state
from .client import Client
from .errors import InvalidArgument


class Feature(NamedTuple):
    """One feature of a remote module: its table and how it is read."""

    name: str               #: the key of the feature in inputs and outputs
    table: str              #: the remote table
    dim: int                #: the table's dim
    pooling: Optional[str]  #: None (one row per ID), "sum" or "mean"


class Part:
    """One feature's share of a step (see the module docstring)."""

    __slots__ = ("feat", "ids", "offsets", "shape", "uniq", "inverse",
                 "nuniq", "rows", "bufs")

    def __init__(self, feat: Feature, ids: np.ndarray,
                 offsets: Optional[np.ndarray], shape: Tuple[int, ...]
                 ) -> None:
        self.feat = feat
        self.ids = ids            # flat C-contiguous uint64 (may view input)
        self.offsets = offsets    # bags: uint32 bag starts; else None
        self.shape = shape        # output shape without the dim
        self.uniq: Optional[np.ndarray] = None     # our copy of the IDs
        self.inverse: Optional[np.ndarray] = None  # set when IDs repeat
        self.nuniq = 0
        self.rows: Optional[np.ndarray] = None     # the lookup's answer
        self.bufs: List[np.ndarray] = []  # pooled arrays uniq/inverse view

    @property
    def empty(self) -> bool:
        """Nothing to ask the server (no IDs, or no bags)."""
        return self.ids.size == 0 or (self.offsets is not None and
                                      self.offsets.size == 0)

    def same_input(self, other: "Part") -> bool:
        return (self.feat == other.feat and self.shape == other.shape and
                np.array_equal(self.ids, other.ids) and
                (self.offsets is None) == (other.offsets is None) and
                (self.offsets is None or
                 np.array_equal(self.offsets, other.offsets)))


def _lookup_many(client: Client, reqs: List[tuple], outs: List[np.ndarray],
                 bf16: bool) -> None:
    client.lookup_many(reqs, bf16=bf16, out=outs)


def _push_many(client: Client, reqs: List[tuple], bf16: bool) -> None:
    client.push_many(reqs, bf16=bf16)


def prepare(parts: Sequence[Part], dedup: bool, pool: _batch.Pool) -> None:
    """De-duplicates the IDs of the plain parts (thread-safe)."""
    for p in parts:
        if p.feat.pooling is not None or not dedup or p.empty:
            continue
        n = p.ids.size
        uniq, inverse, nuniq = _batch.dedup(p.ids, pool)
        p.bufs = [uniq, inverse]
        p.uniq = uniq[:nuniq]
        p.nuniq = nuniq
        # Without repeats uniq equals ids: no row moves either way.
        p.inverse = inverse[:n] if nuniq < n else None


def release(parts: Sequence[Part], pool: _batch.Pool) -> None:
    """Gives the parts' pooled arrays back (nothing may use them after)."""
    for p in parts:
        if p.bufs:
            pool.give(*p.bufs)
            p.bufs = []
            p.uniq = p.inverse = None


def lookup(client: Client, parts: Sequence[Part], bf16: bool) -> None:
    """One lookup_many for every non-empty part. Each part's answer goes
    straight into the array its output will be (``p.rows``): a plain
    part's distinct rows into its first ``nuniq`` rows, spread in place
    by :func:`outputs`."""
    live = [p for p in parts if not p.empty]
    if not live:
        return
    reqs: List[tuple] = []
    outs: List[np.ndarray] = []
    for p in live:
        dim = p.feat.dim
        if p.feat.pooling is None:
            p.rows = np.empty((p.ids.size, dim), dtype=np.float32)
            if p.uniq is not None:
                reqs.append((p.feat.table, p.uniq))
                outs.append(p.rows[:p.nuniq])
            else:
                reqs.append((p.feat.table, p.ids))
                outs.append(p.rows)
        else:
            p.rows = np.empty((p.offsets.size, dim), dtype=np.float32)
            reqs.append((p.feat.table, p.ids, p.offsets, p.feat.pooling))
            outs.append(p.rows)
    _lookup_many(client, reqs, outs, bf16)


def outputs(parts: Sequence[Part], device: torch.device) -> List[Tensor]:
    """The forward's tensors: every occurrence gets its row, in place
    (nothing moves when the IDs did not repeat)."""
    outs = []
    for p in parts:
        dim = p.feat.dim
        if p.rows is None:
            a = np.zeros(p.shape + (dim,), dtype=np.float32)
        else:
            if p.inverse is not None:
                _batch.expand(p.rows, p.inverse, out=p.rows, nuniq=p.nuniq)
            a = p.rows.reshape(p.shape + (dim,))
        t = torch.from_numpy(a)
        outs.append(t if device.type == "cpu" else t.to(device))
    return outs


def _grad_array(g: Tensor, dim: int) -> np.ndarray:
    """A gradient as C-contiguous float32 (n, dim), a view when it is."""
    g = g.detach()
    if g.device.type != "cpu":
        g = g.cpu()
    if g.dtype != torch.float32:
        g = g.to(torch.float32)
    return g.contiguous().numpy().reshape(-1, dim)


def push(client: Client, parts: Sequence[Part], grads: Sequence[Any],
         bf16: bool, pool: _batch.Pool, scale: Optional[float]) -> bool:
    """Sums, unscales and pushes the gradients of a step in one
    push_many. Returns False (and pushes nothing) when ``scale`` is set
    and a gradient is Inf or NaN."""
    reqs: List[tuple] = []
    arrays: List[Tuple[np.ndarray, bool]] = []  # (gradient, ours)
    taken: List[np.ndarray] = []
    try:
        for p, g in zip(parts, grads):
            if g is None or p.empty:
                continue  # the output did not reach the loss, or no IDs
            a = _grad_array(g, p.feat.dim)
            ours = False
            if p.feat.pooling is None and p.inverse is not None:
                buf = pool.take(np.float32, p.nuniq * p.feat.dim)
                taken.append(buf)
                a = _batch.sum_rows(a, p.inverse, p.nuniq, out=buf)
                ours = True
            arrays.append((a, ours))
            if p.feat.pooling is None:
                ids = p.uniq if p.uniq is not None else p.ids
                reqs.append((p.feat.table, ids, a))
            else:
                reqs.append((p.feat.table, p.ids, a, p.offsets,
                             p.feat.pooling))
        if not reqs:
            return True
        if scale is not None:
            # As GradScaler.unscale_ does for dense gradients: multiply by
            # the float32 reciprocal of the scale (exact for its powers of
            # two).
            inv = np.float32(1.0) / np.float32(scale)
            for k, (a, ours) in enumerate(arrays):
                if not bool(torch.isfinite(torch.from_numpy(a)).all()):
                    return False
                if ours:
                    np.multiply(a, inv, out=a)
                else:
                    r = reqs[k]
                    reqs[k] = r[:2] + (a * inv,) + r[3:]
        _push_many(client, reqs, bf16)
        return True
    finally:
        pool.give(*taken)


class _Prefetch:
    """A lookup started ahead of its forward, on a thread with its own
    client (a clone of the module's; it connects at its first use)."""

    def __init__(self, parts: List[Part], gate: Optional[threading.Event]
                 ) -> None:
        self.parts = parts
        self.gate = gate  # wait for this step's push before looking up
        self.error: Optional[BaseException] = None
        self.thread: Optional[threading.Thread] = None

    def run(self, client: Client, dedup: bool, bf16: bool,
            pool: _batch.Pool) -> None:
        try:
            if self.gate is not None:
                self.gate.wait()
            prepare(self.parts, dedup, pool)
            lookup(client, self.parts, bf16)
        except BaseException as e:  # handed to the forward that takes it
            self.error = e

    def finish(self) -> None:
        """Releases the gate (the push it waits for may never come) and
        waits for the lookup."""
        if self.gate is not None:
            self.gate.set()
        if self.thread is not None:
            self.thread.join()


class _Lookup(torch.autograd.Function):
    """Forward hands out the rows looked up for ``step``; backward pushes
    their gradients. ``anchor`` (an empty tensor that requires grad) puts
    the outputs into the autograd graph although the module has no local
    parameters; ``sources`` (the input ID tensors) are saved so that an
    in-place change to them before backward is an error, as for
    nn.Embedding."""

    @staticmethod
    def forward(ctx, anchor: Tensor, step: "_Step",  # type: ignore[override]
                *sources: Tensor):
        ctx.step = step
        ctx.save_for_backward(*sources)
        ctx.set_materialize_grads(False)
        # The outputs will hold this node as grad_fn: the step must not
        # hold them, or step, outputs and node form a cycle that only the
        # garbage collector frees (with the step's buffers, late).
        outs, step.outs = step.outs, None
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        ctx.saved_tensors  # raises if an input was modified in place
        step: _Step = ctx.step
        step.module._backward(step, grads)
        return (None, None) + (None,) * len(ctx.saved_tensors)


class _Step:
    __slots__ = ("module", "parts", "outs", "gate", "__weakref__")

    def __init__(self, module: "RemoteModule", parts: List[Part],
                 outs: Optional[List[Tensor]], gate: threading.Event) -> None:
        self.module = module
        self.parts = parts
        self.outs = outs
        self.gate = gate  # set once the step pushed (prefetch after_push)


class RemoteModule(nn.Module):
    """The base of the remote modules: features on tables of one client.

    Subclasses parse their forward's input into parts (``_parts``) and
    call ``_run``. Attributes every remote module has:

    - ``client``: the :class:`cqrps.Client` forward and backward use;
    - ``dedup``, ``bf16``: de-duplicate plain IDs; bfloat16 on the wire;
    - ``grad_scaler``: a GradScaler (or anything with ``is_enabled()``
      and ``get_scale()``) whose scale backward divides out; with it, a
      step whose gradients hold Inf or NaN is skipped, not pushed;
    - ``skipped_steps``, ``last_step_skipped``: what the scaler skipped;
    - ``prefetch_hits``: forwards that took a prefetched lookup
      (:meth:`prefetch`) instead of looking up themselves.
    """

    def __init__(self, client: Client, features: Sequence[Feature], *,
                 dedup: bool = True, bf16: bool = False,
                 grad_scaler: Any = None) -> None:
        super().__init__()
        if not isinstance(client, Client):
            raise InvalidArgument(
                f"client: expected a cqrps.Client, got {client!r}")
        self.client = client
        self.features = list(features)
        self.dedup = bool(dedup)
        self.bf16 = bool(bf16)
        self.grad_scaler = grad_scaler
        self.skipped_steps = 0
        self.last_step_skipped = False
        self.prefetch_hits = 0
        # Not a Parameter: no optimizer must see it, nothing is stored.
        self._anchor = torch.zeros(0, requires_grad=True)
        self._init_transient()

    def _init_transient(self) -> None:
        self._pool = _batch.Pool()
        self._gate: Optional[threading.Event] = None
        self._prefetched: Optional[_Prefetch] = None
        self._prefetch_client: Optional[Client] = None

    @property
    def tables(self) -> List[str]:
        """The remote tables of the module, in feature order, distinct."""
        return list(dict.fromkeys(f.table for f in self.features))

    # -- forward and backward --

    def _parts(self, *args, **kwargs) -> Tuple[List[Part], List[Tensor]]:
        raise NotImplementedError

    def _run(self, parts: List[Part], sources: List[Tensor],
             device: torch.device) -> List[Tensor]:
        pf = self._take_prefetch(parts)
        if pf is not None:
            parts = pf.parts
            self.prefetch_hits += 1
        else:
            try:
                prepare(parts, self.dedup, self._pool)
                lookup(self.client, parts, self.bf16)
            except BaseException:
                release(parts, self._pool)
                raise
        outs = outputs(parts, device)
        if not torch.is_grad_enabled():
            release(parts, self._pool)  # no backward will push them
            return outs
        self._gate = threading.Event()
        step = _Step(self, parts, outs, self._gate)
        # The step's pooled arrays go back once autograd lets go of it
        # (after backward, or when the graph is dropped).
        weakref.finalize(step, release, parts, self._pool)
        return list(_Lookup.apply(self._anchor, step, *sources))

    def _backward(self, step: _Step, grads: Sequence[Any]) -> None:
        try:
            pf = self._prefetched
            if pf is not None and pf.gate is None and pf.thread is not None:
                pf.thread.join()  # it promised the rows before this push
            scale = None
            gs = self.grad_scaler
            if gs is not None and gs.is_enabled():
                scale = float(gs.get_scale())
            pushed = push(self.client, step.parts, grads, self.bf16,
                          self._pool, scale)
            self.last_step_skipped = not pushed
            if not pushed:
                self.skipped_steps += 1
        finally:
            step.gate.set()

    # -- prefetch --

    def prefetch(self, *args, after_push: bool = False, **kwargs) -> None:
        """Starts the lookup of a later forward's input (the same
        arguments as forward) on a background thread with its own
        connection, so that it overlaps the current step's work. The
        forward given equal input takes the result; any other forward
        drops it.

        What it sees, exactly: by default the lookup runs *before* the
        push of the step in flight (the last forward whose backward has
        not run; that backward waits for the prefetch to be answered
        before it pushes). The result is what a synchronous lookup just
        before that push returns: IDs the step pushes come back one
        update old, as in pipelined training. ``after_push=True`` sends
        the lookup only once that push is acknowledged (or when the next
        forward starts, if no backward comes): the result is what a
        synchronous lookup after the push returns, and the lookup
        overlaps only what follows the backward (the dense optimizer
        step, loading the next batch). Pushes of other workers may land
        before or after it, as they may for any lookup.
        """
        parts, _ = self._parts(*args, **kwargs)
        self._drop_prefetch()
        gate = self._gate if after_push else None
        pf = _Prefetch(parts, gate)
        if self._prefetch_client is None:
            self._prefetch_client = copy.copy(self.client)
        pf.thread = threading.Thread(
            target=pf.run, args=(self._prefetch_client, self.dedup,
                                 self.bf16, self._pool),
            name="cqrps-prefetch", daemon=True)
        pf.thread.start()
        self._prefetched = pf

    def _drop_prefetch(self) -> None:
        pf, self._prefetched = self._prefetched, None
        if pf is not None:
            pf.finish()
            release(pf.parts, self._pool)

    def _take_prefetch(self, parts: List[Part]) -> Optional[_Prefetch]:
        pf, self._prefetched = self._prefetched, None
        if pf is None:
            return None
        pf.finish()
        same = len(pf.parts) == len(parts) and all(
            a.same_input(b) for a, b in zip(pf.parts, parts))
        if pf.error is not None or not same:
            release(pf.parts, self._pool)
            if same:  # the lookup this forward wanted failed
                raise pf.error  # type: ignore[misc]
            return None
        return pf

    # -- pickling: connections and threads stay behind --

    def __getstate__(self) -> Dict[str, Any]:
        self._drop_prefetch()
        state = dict(self.__dict__)
        for k in ("_pool", "_gate", "_prefetched", "_prefetch_client"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self._init_transient()

    def __del__(self) -> None:
        pc = getattr(self, "_prefetch_client", None)
        try:
            self._drop_prefetch()
            if pc is not None:
                pc.close()
        except Exception:  # interpreter shutdown
            pass

    # -- state dict: what the tables are, where they live --

    def get_extra_state(self) -> Dict[str, Any]:
        """The remote tables' address, names, configs and checkpoint
        generation (see cqrps.torch's module docs)."""
        return _torch_state.describe(self.client, self.tables)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # torch calls this with strict=True whatever the caller passed, and
        # applies the caller's strict to the key lists afterwards. So a
        # mismatch goes in as an unexpected key that carries its reason:
        # an error under strict=True, returned under strict=False.
        key = prefix + "_extra_state"
        if key in state_dict:
            problems = _torch_state.check(self.client, self.tables,
                                          state_dict.pop(key))
            if problems:
                unexpected_keys.append(f"{key} ({'; '.join(problems)})")
        else:
            missing_keys.append(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
