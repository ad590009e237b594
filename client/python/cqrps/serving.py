"""Serving from exports, without a server.

``cqrps export TABLE --out FILE`` (or :meth:`cqrps.Client.export`) writes
a table of a checkpoint generation as one file holding what lookups need:
seeds, codebooks and the known IDs' pointers (cqr) or rows (full). This
module reads it through libcqrps (``cqrps_model.h``)::

    import cqrps.serving

    m = cqrps.serving.load("items.cqrm")
    vecs = m.lookup([1, 2, 3])                 # (3, dim) float32
    m = m.apply_delta("items.g8.from7.cqrm")   # a newer generation
    emb = cqrps.serving.Embedding(m)           # a torch.nn.Module

A float32 export looks up bit for bit what the training server returned at
that generation, for every kind, for IDs it never saw too; float16 and
int8 exports are within the bounds of README.md ("Serving"). The file is
mapped and verified at load (a damaged one raises :class:`cqrps.Corrupt`).
A model is immutable: lookups from many threads at once are safe (ctypes
releases the GIL during the call).
"""

from __future__ import annotations

import ctypes
from ctypes import (POINTER, Structure, byref, c_char_p, c_float, c_int,
                    c_size_t, c_uint32, c_uint64, c_void_p)
from typing import Any, Optional, Sequence, Union

import numpy as np

from . import _lib
from .client import as_ids
from .errors import InvalidArgument, from_code

KIND_NAMES = _lib.KIND_NAMES


class _ModelInfo(Structure):
    """cqrps_model_info_t."""

    _fields_ = [
        ("kind", c_int),
        ("dim", c_uint32),
        ("chunks", c_uint32),
        ("rows", c_uint32),
        ("dtype", c_char_p),
        ("is_delta", c_int),
        ("generation", c_uint64),
        ("base_generation", c_uint64),
        ("ids", c_uint64),
        ("bytes", c_uint64),
    ]


_declared: Optional[ctypes.CDLL] = None


def _L() -> ctypes.CDLL:
    """The library with the model functions declared."""
    global _declared
    if _declared is None:
        lib = _lib.lib()
        u64p, u32p, f32p = POINTER(c_uint64), POINTER(c_uint32), POINTER(c_float)
        sigs = {
            "cqrps_model_open": (c_int, [c_char_p, POINTER(c_void_p)]),
            "cqrps_model_close": (None, [c_void_p]),
            "cqrps_model_last_error": (c_char_p, []),
            "cqrps_model_info": (c_int, [c_void_p, POINTER(_ModelInfo)]),
            "cqrps_model_lookup": (c_int, [c_void_p, u64p, c_size_t, f32p]),
            "cqrps_model_lookup_pooled": (c_int, [c_void_p, u64p, c_size_t,
                                                  u32p, c_size_t, c_int,
                                                  f32p]),
            "cqrps_model_apply_delta": (c_int, [c_void_p, c_char_p,
                                                POINTER(c_void_p)]),
            "cqrps_model_save": (c_int, [c_void_p, c_char_p]),
        }
        for name, (res, args) in sigs.items():
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        _declared = lib
    return _declared


def _raise(rc: int, what: str) -> None:
    if rc != 0:
        msg = (_L().cqrps_model_last_error() or b"").decode(errors="replace")
        raise from_code(rc, f"{what}: {msg}" if msg else what)


def _path(p: Any) -> bytes:
    return str(p).encode()


class Model:
    """An open export (see the module's docstring). Close it, or use it
    as a context manager; it also closes when collected."""

    def __init__(self, handle: c_void_p, path: str):
        self._h = handle
        self.path = path
        info = _ModelInfo()
        _raise(_L().cqrps_model_info(self._h, byref(info)), "model info")
        self.kind = KIND_NAMES[info.kind]
        self.dim = int(info.dim)
        self.chunks = int(info.chunks)
        self.rows = int(info.rows)
        self.dtype = info.dtype.decode()
        self.is_delta = bool(info.is_delta)
        self.generation = int(info.generation)
        self.base_generation = int(info.base_generation)
        self.ids = int(info.ids)
        self.bytes = int(info.bytes)

    def close(self) -> None:
        if self._h:
            _L().cqrps_model_close(self._h)
            self._h = c_void_p()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"cqrps.serving.Model({self.path!r}, kind={self.kind}, "
                f"dim={self.dim}, generation={self.generation}, "
                f"dtype={self.dtype}, ids={self.ids})")

    def _live(self) -> c_void_p:
        if not self._h:
            raise InvalidArgument("the model is closed")
        return self._h

    def lookup(self, ids: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Embeddings of ids (any shape): an array of shape ids.shape +
        (dim,), float32."""
        a = as_ids(ids)
        flat = a.reshape(-1)
        n = flat.size
        if out is None:
            out = np.empty((n, self.dim), dtype=np.float32)
        elif (out.dtype != np.float32 or not out.flags.c_contiguous or
              out.size != n * self.dim):
            raise InvalidArgument("out must be C-contiguous float32 of "
                                  "ids.size x dim")
        rc = _L().cqrps_model_lookup(
            self._live(), flat.ctypes.data_as(POINTER(c_uint64)), n,
            out.ctypes.data_as(POINTER(c_float)))
        _raise(rc, "lookup")
        return out.reshape(a.shape + (self.dim,))

    def lookup_pooled(self, ids: Any, offsets: Sequence[int],
                      pooling: str = "sum") -> np.ndarray:
        """Pooled bags (as Client.lookup_pooled): bag b is
        ids[offsets[b]:offsets[b+1]]; (len(offsets), dim) float32."""
        a = as_ids(ids).reshape(-1)
        off = np.ascontiguousarray(offsets, dtype=np.uint32)
        if pooling not in ("sum", "mean"):
            raise InvalidArgument("pooling must be 'sum' or 'mean'")
        out = np.empty((off.size, self.dim), dtype=np.float32)
        rc = _L().cqrps_model_lookup_pooled(
            self._live(), a.ctypes.data_as(POINTER(c_uint64)), a.size,
            off.ctypes.data_as(POINTER(c_uint32)), off.size,
            0 if pooling == "sum" else 1,
            out.ctypes.data_as(POINTER(c_float)))
        _raise(rc, "lookup_pooled")
        return out

    def apply_delta(self, path: Any) -> "Model":
        """A new model: this one with the delta export at path applied
        (this one is unchanged)."""
        h = c_void_p()
        _raise(_L().cqrps_model_apply_delta(self._live(), _path(path),
                                            byref(h)), f"apply {path}")
        return Model(h, f"{self.path}+{path}")

    def save(self, path: Any) -> None:
        """Writes the model as an export file (atomically)."""
        _raise(_L().cqrps_model_save(self._live(), _path(path)),
               f"save {path}")


def load(path: Any) -> Model:
    """Opens and verifies the export at path."""
    h = c_void_p()
    _raise(_L().cqrps_model_open(_path(path), byref(h)), f"load {path}")
    return Model(h, str(path))


def Embedding(model: Union[Model, str], pooling: Optional[str] = None) -> Any:
    """A torch.nn.Module serving one feature from an export: forward(ids)
    gives ids.shape + (dim,) float32 (like torch.nn.Embedding), or, with
    `pooling` ("sum" or "mean"), forward(ids, offsets) gives one pooled
    row per bag (like torch.nn.EmbeddingBag). No gradients: the values are
    the export's. Needs PyTorch."""
    import torch

    m = load(model) if not isinstance(model, Model) else model

    class _Serving(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = m
            self.pooling = pooling
            self.embedding_dim = m.dim

        def forward(self, ids: "torch.Tensor",
                    offsets: Optional["torch.Tensor"] = None
                    ) -> "torch.Tensor":
            a = ids.detach().cpu().numpy().astype(np.int64, copy=False)
            if self.pooling is None:
                out = self.model.lookup(a)
            else:
                if offsets is None:
                    raise InvalidArgument("pooled serving needs offsets")
                out = self.model.lookup_pooled(
                    a.reshape(-1), offsets.detach().cpu().numpy(),
                    self.pooling)
            return torch.from_numpy(out).to(ids.device)

        def extra_repr(self) -> str:
            return (f"{m.path!r}, kind={m.kind}, dim={m.dim}, "
                    f"generation={m.generation}, pooling={self.pooling}")

    return _Serving()
