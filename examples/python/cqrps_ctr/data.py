"""The data model of the CTR trainer, ID hashing, the cache and text parsing.

A data set is a :class:`Data`: feature specs and two :class:`Part` s
(train, validation). A part holds, for ``n`` examples, the 0/1 labels,
the dense features (``n x ndense`` float32, already ``log(1 + x)``), one
column of 64-bit IDs per plain feature and one CSR bag (values, row
pointers) per bag feature. :meth:`Part.take` gathers any rows into a
:class:`Batch` with numpy only (no Python loop per example).

IDs: a feature's raw value (its bytes as written in the file) is hashed
with the feature's number (:func:`hash_bytes`: FNV-1a over the bytes,
then the splitmix64 finaliser), so no vocabulary is built in advance; the
vocabulary sizes are counted (:func:`count_distinct`).

Cache: a parsed data set is stored as one ``.npy`` per array under
``<cache dir>/<key>/`` (written to a temporary directory and renamed, so
readers never see half a cache); the key covers the reader version, the
format, the options and every input file's path, size and mtime. Workers
open large arrays memory-mapped, so N workers share one copy.

Errors: a malformed row raises :class:`BadData` with the file, the line
number and what was expected; with ``skip_bad`` such rows are dropped and
counted instead (:attr:`Data.bad_rows`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Bump when a reader's output changes, so stale caches are not used.
READER_VERSION = 3
#: Cached data sets larger than this are memory-mapped, not read.
MMAP_BYTES = 256 << 20

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


class BadData(Exception):
    """A malformed input row: ``str(e)`` is ``FILE:LINE: what was expected,
    what was found``."""


# ---- Hashing ----------------------------------------------------------------


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (a bijection)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping is the point
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def salt(feature: int, tag: int = 0) -> np.uint64:
    """A per-feature constant (Python ints: no numpy overflow warning)."""
    return np.uint64(int(mix64(np.uint64(
        ((feature + 1) * 0x9E3779B97F4A7C15 + tag) & 0xFFFFFFFFFFFFFFFF))))


def hash_bytes(values: np.ndarray, feature: int) -> np.ndarray:
    """64-bit IDs of raw values (a 1-D ``S`` array) of feature ``feature``.

    FNV-1a over the value's bytes, started from a basis that depends on
    the feature number, then mixed; NUL bytes (numpy's padding) are
    skipped, so a value hashes the same whatever the array's width. The
    empty value (a missing field) gets its own ID per feature.
    """
    v = np.ascontiguousarray(values)
    if v.dtype.kind != "S":
        v = v.astype("S")
    n, w = v.shape[0], v.dtype.itemsize
    basis = FNV_OFFSET ^ salt(feature)
    h = np.full(n, basis, dtype=np.uint64)
    if n and w:
        u8 = v.view(np.uint8).reshape(n, w)
        for j in range(w):
            b = u8[:, j].astype(np.uint64)
            h = np.where(b != 0, (h ^ b) * FNV_PRIME, h)
    return mix64(h)


def count_distinct(*arrays: np.ndarray) -> int:
    """Distinct values over the arrays together."""
    arrs = [np.asarray(a).ravel() for a in arrays if np.asarray(a).size]
    if not arrs:
        return 0
    return int(np.unique(np.concatenate(arrs)).size)


# ---- The data model ---------------------------------------------------------


@dataclass(frozen=True)
class Feature:
    """One sparse feature: a table of its own on the server."""

    name: str     #: table suffix and column name
    bag: bool     #: several IDs per example, mean pooled
    vocab: int    #: distinct IDs counted over train and validation


@dataclass
class Batch:
    """Rows of a part: what one training or validation step consumes."""

    label: np.ndarray                  #: float32 (b,)
    dense: Optional[np.ndarray]        #: float32 (b, ndense) or None
    ids: List[np.ndarray]              #: per plain feature, uint64 (b,)
    bags: List[Tuple[np.ndarray, np.ndarray]]  #: per bag: values, offsets
    #: per plain feature, row numbers 0..vocab-1 when the source knows
    #: them (the synthetic generator), for the local baseline
    index: Optional[List[np.ndarray]] = None

    def __len__(self) -> int:
        return int(self.label.shape[0])


def gather_csr(values: np.ndarray, ptr: np.ndarray, rows: np.ndarray
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Bags ``rows`` of a CSR array: (values, uint32 start offsets)."""
    starts = ptr[rows]
    lens = ptr[rows + 1] - starts
    offs = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lens, out=offs[1:])
    total = int(offs[-1])
    # Position k of the output lies in bag b = the one whose run holds k:
    # source = starts[b] + (k - offs[b]).
    src = np.repeat(starts - offs[:-1], lens) + np.arange(total)
    return values[src], offs[:-1].astype(np.uint32)


@dataclass
class Part:
    """n examples: labels, dense features, plain ID columns, bags."""

    label: np.ndarray                          #: float32 (n,)
    dense: Optional[np.ndarray]                #: float32 (n, ndense)
    ids: np.ndarray                            #: uint64 (n, nplain)
    bags: List[Tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    #: per bag feature: values uint64 (m,), row pointers int64 (n + 1,)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def take(self, rows: np.ndarray) -> Batch:
        """The batch of ``rows`` (int64 indices, any order)."""
        rows = np.asarray(rows, dtype=np.int64)
        ids = self.ids[rows]
        return Batch(
            label=np.ascontiguousarray(self.label[rows]),
            dense=None if self.dense is None else
            np.ascontiguousarray(self.dense[rows]),
            ids=[np.ascontiguousarray(ids[:, j]) for j in range(ids.shape[1])],
            bags=[gather_csr(v, p, rows) for v, p in self.bags])

    def subset(self, rows: np.ndarray) -> "Part":
        """A part of the given rows (a copy, in their order)."""
        rows = np.asarray(rows, dtype=np.int64)
        bags = []
        for v, p in self.bags:
            vals, offs = gather_csr(v, p, rows)
            ptr = np.append(offs.astype(np.int64), len(vals))
            bags.append((vals, ptr))
        return Part(self.label[rows], None if self.dense is None else
                    self.dense[rows], self.ids[rows], bags)


@dataclass
class Data:
    """A data set: feature specs (plain features first, in ``ids`` column
    order, then bags in ``bags`` order), train and validation parts."""

    name: str
    features: List[Feature]
    ndense: int
    train: Part
    valid: Part
    bad_rows: int = 0        #: rows skipped by skip_bad
    notes: Dict[str, str] = field(default_factory=dict)

    @property
    def plain(self) -> List[Feature]:
        return [f for f in self.features if not f.bag]

    @property
    def bagged(self) -> List[Feature]:
        return [f for f in self.features if f.bag]


def split_tail(n: int, frac: float = 0.1) -> Tuple[np.ndarray, np.ndarray]:
    """Rows [0, n - floor(frac n)) train, the last floor(frac n) valid."""
    nvalid = int(n * frac)
    return np.arange(n - nvalid), np.arange(n - nvalid, n)


def vocabularies(names: Sequence[str], bag: Sequence[bool], train: Part,
                 valid: Part) -> List[Feature]:
    """Feature specs with vocabularies counted over both parts."""
    feats = []
    j = b = 0
    for name, isbag in zip(names, bag):
        if isbag:
            v = count_distinct(train.bags[b][0], valid.bags[b][0])
            b += 1
        else:
            v = count_distinct(train.ids[:, j], valid.ids[:, j])
            j += 1
        feats.append(Feature(name, isbag, v))
    return feats


# ---- Cache ------------------------------------------------------------------


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or \
        os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cqrps-ctr")


def cache_key(fmt: str, paths: Sequence[str], opts: Dict[str, object]
              ) -> str:
    """A name for the cache entry of these inputs and options."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": READER_VERSION, "fmt": fmt, "opts": opts},
                        sort_keys=True).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\0"
                 .encode())
    return f"{fmt}-{h.hexdigest()[:16]}"


def _part_arrays(prefix: str, p: Part) -> Dict[str, np.ndarray]:
    out = {f"{prefix}.label": p.label, f"{prefix}.ids": p.ids}
    if p.dense is not None:
        out[f"{prefix}.dense"] = p.dense
    for i, (v, ptr) in enumerate(p.bags):
        out[f"{prefix}.bag{i}.values"] = v
        out[f"{prefix}.bag{i}.ptr"] = ptr
    return out


def save_cache(root: str, key: str, d: Data) -> None:
    """Writes the data set under root/key atomically (rename)."""
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{key}.", dir=root)
    try:
        arrays = {**_part_arrays("train", d.train),
                  **_part_arrays("valid", d.valid)}
        for name, a in arrays.items():
            np.save(os.path.join(tmp, name + ".npy"), np.ascontiguousarray(a))
        meta = {"name": d.name, "ndense": d.ndense, "bad_rows": d.bad_rows,
                "notes": d.notes, "nbags": len(d.train.bags),
                "features": [[f.name, f.bag, f.vocab] for f in d.features]}
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
        try:
            os.rename(tmp, os.path.join(root, key))
        except OSError:  # another process won the race: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_cache(root: str, key: str) -> Optional[Data]:
    """The cached data set (arrays memory-mapped), or None."""
    d = os.path.join(root, key)
    try:
        with open(os.path.join(d, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None

    # Small sets are read into memory (gathers from a map are slower);
    # large ones are mapped, so the workers share the page cache.
    size = sum(e.stat().st_size for e in os.scandir(d))
    mode = "r" if size > MMAP_BYTES else None

    def arr(name: str) -> np.ndarray:
        return np.load(os.path.join(d, name + ".npy"), mmap_mode=mode)

    def part(prefix: str) -> Part:
        dense = arr(f"{prefix}.dense") if meta["ndense"] else None
        bags = [(arr(f"{prefix}.bag{i}.values"), arr(f"{prefix}.bag{i}.ptr"))
                for i in range(meta["nbags"])]
        return Part(arr(f"{prefix}.label"), dense, arr(f"{prefix}.ids"), bags)

    try:
        return Data(meta["name"],
                    [Feature(n, bool(b), int(v)) for n, b, v in
                     meta["features"]],
                    int(meta["ndense"]), part("train"), part("valid"),
                    int(meta["bad_rows"]), dict(meta["notes"]))
    except (OSError, ValueError, KeyError):
        return None


# ---- Text parsing -------------------------------------------------------------


class Table:
    """Rows of a delimited text file that have the expected number of
    fields: ``cols[j]`` is field j of every kept row (an ``S`` array),
    ``line`` their 1-based line numbers. Blank lines are ignored."""

    def __init__(self, path: str, cols: List[np.ndarray], line: np.ndarray,
                 bad: List[Tuple[int, str]]) -> None:
        self.path = path
        self.cols = cols
        self.line = line
        self.bad = bad  # (line, reason) of rows dropped for their shape

    def __len__(self) -> int:
        return int(self.line.shape[0])


def read_delimited(path: str, sep: bytes, nfields: int, expected: str,
                   data: Optional[bytes] = None, first_line: int = 1
                   ) -> Table:
    """Splits a file (or ``data``, whose first line is ``first_line``) into
    fields without a Python loop per line.

    Rows with another number of fields are not kept; the table lists them
    (line, reason) so the caller can raise or skip them.
    """
    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    nlines = nl.size
    if nlines == 0:
        return Table(path, [np.empty(0, "S1")] * nfields,
                     np.empty(0, np.int64), [])
    starts = np.concatenate(([0], nl[:-1] + 1))
    blank = nl == starts
    if len(sep) == 1:
        seppos = np.flatnonzero(buf == sep[0])
    else:  # "::"
        seppos = np.flatnonzero((buf[:-1] == sep[0]) & (buf[1:] == sep[1]))
    nsep = np.bincount(np.searchsorted(nl, seppos), minlength=nlines)
    good = (nsep == nfields - 1) & ~blank
    bad_lines = np.flatnonzero(~good & ~blank)
    bad = [(first_line + int(i),
            f"expected {expected} ({nfields} fields separated by "
            f"{sep.decode()!r}), got {int(nsep[i]) + 1} field(s): "
            f"{_show(data[starts[i]:nl[i]])}") for i in bad_lines[:1]]
    bad += [(first_line + int(i), "") for i in bad_lines[1:]]
    flat = data.replace(b"\n", sep).split(sep) if sep != b"\n" else \
        data.split(b"\n")
    if len(flat) != int(nsep.sum()) + nlines + 1:
        # Separator runs such as ":::" count differently in numpy and in
        # bytes.split: split line by line instead (rare, slow, correct).
        return _read_delimited_slow(path, data, sep, nfields, expected,
                                    first_line)
    tok = np.array(flat, dtype="S")
    first_tok = np.zeros(nlines, dtype=np.int64)
    np.cumsum(nsep[:-1] + 1, out=first_tok[1:])
    keep = np.flatnonzero(good)
    cols = [tok[first_tok[keep] + j] for j in range(nfields)]
    return Table(path, cols, keep + first_line, bad)


def _read_delimited_slow(path: str, data: bytes, sep: bytes, nfields: int,
                         expected: str, first_line: int) -> Table:
    rows: List[List[bytes]] = []
    lines: List[int] = []
    bad: List[Tuple[int, str]] = []
    for i, raw in enumerate(data.split(b"\n")[:-1]):
        if not raw:
            continue
        f = raw.split(sep)
        if len(f) == nfields:
            rows.append(f)
            lines.append(first_line + i)
        else:
            bad.append((first_line + i, "" if bad else
                        f"expected {expected} ({nfields} fields separated "
                        f"by {sep.decode()!r}), got {len(f)} field(s): "
                        f"{_show(raw)}"))
    cols = [np.array([r[j] for r in rows], dtype="S") if rows else
            np.empty(0, "S1") for j in range(nfields)]
    return Table(path, cols, np.array(lines, dtype=np.int64), bad)


def _show(raw: bytes, limit: int = 60) -> str:
    s = raw.decode("utf-8", "replace")
    return repr(s if len(s) <= limit else s[:limit] + "...")


def int_field(col: np.ndarray, allow_empty: bool = False,
              allow_negative: bool = True
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parses decimal integers of an ``S`` column: (values int64, bad
    mask, empty mask). Empty fields are bad unless allowed (then 0)."""
    n = col.shape[0]
    w = col.dtype.itemsize
    if n == 0:
        z = np.zeros(0, bool)
        return np.zeros(0, np.int64), z, z
    u8 = np.ascontiguousarray(col).view(np.uint8).reshape(n, w)
    digit = (u8 >= 48) & (u8 <= 57)
    pad = u8 == 0
    minus = np.zeros_like(digit)
    if allow_negative:
        minus[:, 0] = u8[:, 0] == 45
    empty = pad[:, 0]
    ndig = digit.sum(axis=1)
    ok = np.all(digit | pad | minus, axis=1) & (ndig > 0) & (ndig <= 18)
    # Digits must be contiguous up to the padding: no NUL inside (cannot
    # happen in text) and no sign after the first byte (checked above).
    bad = ~ok & ~(empty & allow_empty)
    src = np.where(ok, col, b"0")
    vals = src.astype(np.int64)
    return vals, bad, empty


def raise_or_skip(path: str, rows_line: np.ndarray,
                  checks: Sequence[Tuple[np.ndarray, str, np.ndarray]],
                  shape_bad: Sequence[Tuple[int, str]], skip_bad: bool
                  ) -> Tuple[np.ndarray, int]:
    """Combines the bad-row masks of several checks of a file's rows.

    ``checks``: (mask over the kept rows, what was expected, the column
    checked). Without skip_bad raises BadData for the first bad line of
    the file (shape or value); with it returns (mask of rows to keep,
    number of bad rows, those of the wrong shape included).
    """
    n = rows_line.shape[0]
    keep = np.ones(n, dtype=bool)
    first: Optional[Tuple[int, str]] = shape_bad[0] if shape_bad else None
    for mask, what, col in checks:
        keep &= ~mask
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            line = int(rows_line[i])
            if first is None or line < first[0]:
                first = (line, f"expected {what}, got {_show(bytes(col[i]))}")
    nbad = len(shape_bad) + int(n - keep.sum())
    if first is not None and not skip_bad:
        raise BadData(f"{path}:{first[0]}: {first[1]} "
                      f"(--skip-bad drops such rows and counts them)")
    return keep, nbad
