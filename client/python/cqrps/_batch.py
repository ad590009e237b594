"""Batch de-duplication on numpy arrays, through libcqrps (no client).

The three calls of ``cqrps.h``'s "De-duplicating a batch" section:
:func:`dedup` finds the distinct IDs of a batch (a hash pass, in order of
first occurrence), :func:`expand` gives every occurrence its distinct
row, :func:`sum_rows` sums the gradients of repeated IDs. They release the
GIL (ctypes), so a prefetch thread can run them beside the training
thread.
"""

from __future__ import annotations

import threading
from ctypes import byref, c_size_t
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import _lib
from .errors import from_code


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise from_code(rc, f"{what}: invalid arguments")


class Pool:
    """Reusable arrays for the buffers of a step (distinct IDs, inverse
    indices, the probe table), so that a trainer does not touch fresh
    pages every step (a page fault costs about 20 us on the reference
    VM, and a step of 65,536 IDs needs 300 pages of them). Thread-safe:
    a prefetch thread takes and gives too."""

    #: arrays kept per dtype; more are dropped when given back
    KEEP = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: Dict[str, List[np.ndarray]] = {}

    def take(self, dtype: type, count: int) -> np.ndarray:
        """A 1-D array of at least ``count`` elements (not zeroed)."""
        key = np.dtype(dtype).str
        with self._lock:
            free = self._free.get(key, [])
            for i, a in enumerate(free):
                if a.size >= count:
                    return free.pop(i)
        return np.empty(max(count, 1), dtype=dtype)

    def give(self, *arrays: np.ndarray) -> None:
        """Returns arrays from :meth:`take` (nothing may use them after)."""
        with self._lock:
            for a in arrays:
                free = self._free.setdefault(a.dtype.str, [])
                if len(free) < self.KEEP:
                    free.append(a)


def dedup(ids: np.ndarray, pool: Optional[Pool] = None
          ) -> Tuple[np.ndarray, np.ndarray, int]:
    """The distinct IDs of a C-contiguous 1-D uint64 array.

    Returns ``(uniq, inverse, nuniq)``: ``uniq[:nuniq]`` are the distinct
    IDs in order of first occurrence and ``uniq[inverse[:n]] == ids``
    (``inverse`` is uint32). ``nuniq == len(ids)`` means no repeats, and
    then ``uniq[:n]`` equals ``ids`` and ``inverse[:n]`` is ``0..n-1``.
    With a ``pool``, the two arrays (possibly longer than n) come from it
    and go back to it with ``pool.give`` once the caller is done.
    """
    n = ids.shape[0]
    L = _lib.lib()
    if pool is None:
        uniq = np.empty(n, dtype=np.uint64)
        inverse = np.empty(n, dtype=np.uint32)
        work = None
    else:
        uniq = pool.take(np.uint64, n)
        inverse = pool.take(np.uint32, n)
        work = pool.take(np.uint8, L.cqrps_dedup_work_bytes(n))
    nuniq = c_size_t()
    try:
        if n:
            _check(L.cqrps_dedup(
                ids.ctypes.data, n, uniq.ctypes.data, inverse.ctypes.data,
                byref(nuniq), None if work is None else work.ctypes.data,
                0 if work is None else work.size), "cqrps_dedup")
    finally:
        if work is not None:
            pool.give(work)
    return uniq, inverse, nuniq.value


def expand(rows: np.ndarray, inverse: np.ndarray,
           out: Optional[np.ndarray] = None,
           nuniq: Optional[int] = None) -> np.ndarray:
    """``rows[inverse]`` for C-contiguous float32 (nuniq, dim) rows.

    ``out`` may be ``rows`` itself, holding the distinct rows in its first
    ``nuniq`` rows (then give ``nuniq``; ``inverse`` from :func:`dedup`):
    they spread in place.
    """
    dim = rows.shape[1]
    if nuniq is None:
        nuniq = rows.shape[0]
    n = inverse.shape[0]
    if out is None:
        out = np.empty((n, dim), dtype=np.float32)
    if n:
        _check(_lib.lib().cqrps_dedup_expand(
            rows.ctypes.data, nuniq, dim, inverse.ctypes.data, n,
            out.ctypes.data), "cqrps_dedup_expand")
    return out


def sum_rows(grads: np.ndarray, inverse: np.ndarray, nuniq: int,
             out: Optional[np.ndarray] = None) -> np.ndarray:
    """Row r of the result = the sum, in order, of the rows j of the
    C-contiguous float32 (n, dim) ``grads`` with ``inverse[j] == r``
    (``inverse`` as :func:`dedup` made it). ``out``: a C-contiguous
    float32 buffer of at least nuniq * dim floats to write into."""
    n, dim = grads.shape
    if out is None:
        out = np.empty((nuniq, dim), dtype=np.float32)
    else:
        out = out[:nuniq * dim].reshape(nuniq, dim)
    if n:
        _check(_lib.lib().cqrps_dedup_sum(
            grads.ctypes.data, n, dim, inverse.ctypes.data, nuniq,
            out.ctypes.data), "cqrps_dedup_sum")
    return out
