"""Batch de-duplication on numpy arrays, through libcqrps (no client).

The three calls of ``cqrps.h``'s "De-duplicating a batch" section:
:func:`dedup` finds the distinct IDs of a batch (a hash pass, in order of
first occurrence), :func:`expand` gives every occurrence its distinct
row, :func:`sum_rows` sums the gradients of repeated IDs. They release the
GIL (ctypes), so a prefetch thread can run them beside the training
thread.
"""

from __future__ import annotations

from ctypes import byref, c_size_t
from typing import Optional, Tuple

import numpy as np

from . import _lib
from .errors import from_code


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise from_code(rc, f"{what}: invalid arguments")


def dedup(ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """The distinct IDs of a C-contiguous 1-D uint64 array.

    Returns ``(uniq, inverse, nuniq)``: ``uniq[:nuniq]`` are the distinct
    IDs in order of first occurrence and ``uniq[inverse] == ids``
    (``inverse`` is uint32). ``nuniq == len(ids)`` means no repeats, and
    then ``uniq`` equals ``ids`` and ``inverse`` is ``0..n-1``.
    """
    n = ids.shape[0]
    uniq = np.empty(n, dtype=np.uint64)
    inverse = np.empty(n, dtype=np.uint32)
    nuniq = c_size_t()
    if n:
        _check(_lib.lib().cqrps_dedup(ids.ctypes.data, n, uniq.ctypes.data,
                                      inverse.ctypes.data, byref(nuniq)),
               "cqrps_dedup")
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
