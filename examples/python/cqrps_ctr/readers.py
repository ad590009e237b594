"""Readers and splits of the CTR trainer's formats.

- ``movielens-1m``: a directory with ``ratings.dat``, ``users.dat`` and
  ``movies.dat`` (or the ratings file, the other two beside it). Ratings
  of 3 are dropped; label = rating >= 4; features user, movie, gender,
  age, occupation, zip (the full string) and genres (a bag of the movie's
  genres). Split: stable sort by (user, timestamp), ties in file order;
  each user's last 5 rows are validation (users with at most 5 rows: all
  train). ``valid`` (a ratings file) replaces the split: then every row
  of ``path`` trains.
- ``criteo``: label, 13 integer and 26 categorical columns, tab
  separated, empty = missing (log(1 + max(x, 0)), 0 when missing, for the
  integers; the empty value has its own ID per categorical feature). The
  last 10% of rows (floor) in file order are validation unless ``valid``.
- ``libfm``: ``label idx:val ...`` separated by single spaces, the same
  number of fields on every line (field f is feature f; its ID hashes f
  and idx; val is ignored); label > 0 is positive. Last 10% validation
  unless ``valid``.

Every reader parses with numpy (no Python loop per example), raises
:class:`~.data.BadData` for the first malformed row (file, line, what was
expected) or, with ``skip_bad``, drops and counts malformed rows.
:func:`load` caches the result (see :mod:`.data`).
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from .data import (BadData, Data, Part, cache_key, gather_csr, hash_bytes,
                   int_field, load_cache, mix64, raise_or_skip, salt,
                   read_delimited, save_cache, split_tail, vocabularies)

FORMATS = ("movielens-1m", "criteo", "libfm")
ML_VALID_PER_USER = 5
CRITEO_INTS = 13
CRITEO_CATS = 26
BLOCK_BYTES = 64 << 20


def hash_int(values: np.ndarray, feature: int) -> np.ndarray:
    """64-bit IDs of integer values of feature ``feature``."""
    v = np.asarray(values).astype(np.int64).view(np.uint64)
    return mix64(mix64(v) ^ salt(feature, 0x51ED))


# ---- MovieLens-1M -----------------------------------------------------------


def _ml_paths(path: str) -> Tuple[str, str, str]:
    if os.path.isdir(path):
        d, ratings = path, os.path.join(path, "ratings.dat")
    else:
        d, ratings = os.path.dirname(os.path.abspath(path)), path
    return ratings, os.path.join(d, "users.dat"), os.path.join(d, "movies.dat")


class _Users:
    """users.dat: ids and the per-user feature IDs (gender, age, ...)."""

    def __init__(self, path: str, skip_bad: bool) -> None:
        t = read_delimited(path, b"::", 5,
                           "UserID::Gender::Age::Occupation::Zip-code")
        uid, bad, _ = int_field(t.cols[0], allow_negative=False)
        keep, self.nbad = raise_or_skip(
            path, t.line, [(bad, "a numeric UserID", t.cols[0])], t.bad,
            skip_bad)
        order = np.argsort(uid[keep], kind="stable")
        self.ids = uid[keep][order]
        # features 2..5: gender, age, occupation, zip (raw strings)
        self.feat = [hash_bytes(t.cols[j][keep][order], j + 1)
                     for j in range(1, 5)]

    def rows(self, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(row of each id, mask of ids listed)."""
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return pos, (self.ids[pos] == ids) if len(self.ids) else \
            np.zeros(len(ids), bool)


class _Movies:
    """movies.dat: ids and each movie's genres as a CSR bag of IDs."""

    def __init__(self, path: str, skip_bad: bool) -> None:
        t = read_delimited(path, b"::", 3, "MovieID::Title::Genres")
        mid, bad, _ = int_field(t.cols[0], allow_negative=False)
        keep, self.nbad = raise_or_skip(
            path, t.line, [(bad, "a numeric MovieID", t.cols[0])], t.bad,
            skip_bad)
        order = np.argsort(mid[keep], kind="stable")
        self.ids = mid[keep][order]
        genres = t.cols[2][keep][order]
        # One movie per line, a few thousand lines: split the genre lists
        # in Python, hash them with numpy.
        lists = [g.split(b"|") if g else [] for g in genres.tolist()]
        lens = np.array([len(x) for x in lists], dtype=np.int64)
        self.ptr = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum(lens, out=self.ptr[1:])
        flat = np.array([g for x in lists for g in x] or [b""], dtype="S")
        self.vals = hash_bytes(flat[:int(self.ptr[-1])], 6)

    def rows(self, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return pos, (self.ids[pos] == ids) if len(self.ids) else \
            np.zeros(len(ids), bool)


def _ml_ratings(path: str, users: _Users, movies: _Movies, skip_bad: bool
                ) -> Tuple[np.ndarray, int]:
    """Kept rows (rating != 3) of a ratings file in file order:
    (user, movie, rating, timestamp, user row, movie row) columns."""
    t = read_delimited(path, b"::", 4, "UserID::MovieID::Rating::Timestamp")
    u, bu, _ = int_field(t.cols[0], allow_negative=False)
    m, bm, _ = int_field(t.cols[1], allow_negative=False)
    r, br, _ = int_field(t.cols[2], allow_negative=False)
    ts, bt, _ = int_field(t.cols[3])
    urow, uok = users.rows(u)
    mrow, mok = movies.rows(m)
    keep, nbad = raise_or_skip(path, t.line, [
        (bu, "a numeric UserID", t.cols[0]),
        (bm, "a numeric MovieID", t.cols[1]),
        (br | (r < 1) | (r > 5), "a rating of 1..5", t.cols[2]),
        (bt, "a numeric Timestamp", t.cols[3]),
        (~bu & ~uok, "a UserID listed in users.dat", t.cols[0]),
        (~bm & ~mok, "a MovieID listed in movies.dat", t.cols[1])],
        t.bad, skip_bad)
    keep &= r != 3
    rows = np.stack([u, m, r, ts, urow, mrow], axis=1)[keep]
    return rows, nbad


def _ml_part(rows: np.ndarray, users: _Users, movies: _Movies) -> Part:
    """A part of kept rating rows (in the order given)."""
    u, m, r, urow, mrow = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 4], \
        rows[:, 5]
    ids = np.stack([hash_int(u, 0), hash_int(m, 1)] +
                   [f[urow] for f in users.feat], axis=1)
    vals, offs = gather_csr(movies.vals, movies.ptr, mrow)
    ptr = np.append(offs.astype(np.int64), len(vals))
    return Part(label=(r >= 4).astype(np.float32), dense=None,
                ids=np.ascontiguousarray(ids), bags=[(vals, ptr)])


def ml_split(rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(train, valid) row indices of kept rows in file order: stable sort
    by (user, timestamp), each user's last 5 validation unless the user
    has at most 5 rows."""
    u, ts = rows[:, 0], rows[:, 3]
    order = np.lexsort((np.arange(len(u)), ts, u))
    us = u[order]
    first = np.concatenate(([True], us[1:] != us[:-1])) if len(us) else \
        np.zeros(0, bool)
    grp = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(us)))
    rank = np.arange(len(us)) - starts[grp]
    cnt = counts[grp]
    valid = (cnt > ML_VALID_PER_USER) & (rank >= cnt - ML_VALID_PER_USER)
    return order[~valid], order[valid]


def read_movielens(path: str, valid: Optional[str], skip_bad: bool) -> Data:
    ratings, upath, mpath = _ml_paths(path)
    for p in (ratings, upath, mpath):
        if not os.path.isfile(p):
            raise FileNotFoundError(
                f"{p}: not found (movielens-1m needs ratings.dat, users.dat "
                f"and movies.dat in one directory)")
    users = _Users(upath, skip_bad)
    movies = _Movies(mpath, skip_bad)
    rows, nbad = _ml_ratings(ratings, users, movies, skip_bad)
    notes = {}
    if valid:
        vrows, vbad = _ml_ratings(_ml_paths(valid)[0], users, movies,
                                  skip_bad)
        nbad += vbad
        tr, va = np.arange(len(rows)), None
        train, vpart = _ml_part(rows, users, movies), \
            _ml_part(vrows, users, movies)
        notes["split"] = f"validation from {valid}"
    else:
        tr, va = ml_split(rows)
        train, vpart = _ml_part(rows[tr], users, movies), \
            _ml_part(rows[va], users, movies)
        notes["split"] = "last 5 rows of each user (by timestamp)"
    names = ["user", "movie", "gender", "age", "occupation", "zip", "genres"]
    feats = vocabularies(names, [False] * 6 + [True], train, vpart)
    return Data("movielens-1m", feats, 0, train, vpart,
                nbad + users.nbad + movies.nbad, notes)


# ---- Criteo and libfm ----------------------------------------------------------


def _blocks(path: str) -> Iterator[Tuple[bytes, int]]:
    """The file in blocks of whole lines: (bytes, first line number)."""
    line = 1
    with open(path, "rb") as f:
        rest = b""
        while True:
            chunk = f.read(BLOCK_BYTES)
            if not chunk:
                break
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                rest = chunk
                continue
            block, rest = chunk[:cut], chunk[cut:]
            yield block, line
            line += block.count(b"\n")
        if rest:
            yield rest, line


def _concat_parts(parts: List[Part]) -> Part:
    if len(parts) == 1:
        return parts[0]
    dense = None if parts[0].dense is None else \
        np.concatenate([p.dense for p in parts])
    return Part(np.concatenate([p.label for p in parts]), dense,
                np.concatenate([p.ids for p in parts]), [])


def _criteo_block(path: str, block: bytes, line: int, skip_bad: bool
                  ) -> Tuple[Part, int]:
    nf = 1 + CRITEO_INTS + CRITEO_CATS
    t = read_delimited(path, b"\t", nf,
                       "label, 13 integers and 26 categorical values",
                       data=block, first_line=line)
    lab, bl, _ = int_field(t.cols[0], allow_negative=False)
    checks = [(bl | (lab > 1), "a label of 0 or 1", t.cols[0])]
    ints = []
    for j in range(CRITEO_INTS):
        v, b, _ = int_field(t.cols[1 + j], allow_empty=True)
        checks.append((b, f"an integer or nothing in column {2 + j} "
                          f"(I{1 + j})", t.cols[1 + j]))
        ints.append(v)
    keep, nbad = raise_or_skip(path, t.line, checks, t.bad, skip_bad)
    dense = np.log1p(np.maximum(np.stack(ints, axis=1)[keep], 0)
                     .astype(np.float64)).astype(np.float32) \
        if len(t) else np.zeros((0, CRITEO_INTS), np.float32)
    ids = np.stack([hash_bytes(t.cols[1 + CRITEO_INTS + j][keep], j)
                    for j in range(CRITEO_CATS)], axis=1) if len(t) else \
        np.zeros((0, CRITEO_CATS), np.uint64)
    return Part(lab[keep].astype(np.float32), dense, ids), nbad


def _float_field(col: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    try:
        v = col.astype(np.float64)
        return v, ~np.isfinite(v)
    except ValueError:  # some value is not a number: find which (slow)
        vals = np.zeros(len(col))
        bad = np.zeros(len(col), bool)
        for i, s in enumerate(col.tolist()):
            try:
                vals[i] = float(s)
            except ValueError:
                bad[i] = True
        return vals, bad | ~np.isfinite(vals)


def _libfm_fields(path: str) -> int:
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                return len(raw.rstrip(b"\r\n").split(b" ")) - 1
    return 0


def _libfm_block(path: str, block: bytes, line: int, nfeat: int,
                 skip_bad: bool) -> Tuple[Part, int]:
    t = read_delimited(path, b" ", nfeat + 1,
                       f"'label idx:val ...' with {nfeat} idx:val fields "
                       f"(as the first line)", data=block, first_line=line)
    lab, bl = _float_field(t.cols[0])
    checks = [(bl, "a numeric label", t.cols[0])]
    ids = []
    for f in range(nfeat):
        col = np.ascontiguousarray(t.cols[1 + f])
        n, w = len(col), col.dtype.itemsize
        u8 = col.view(np.uint8).reshape(n, w).copy()
        colon = u8 == 58
        ncolon = colon.sum(axis=1)
        at = np.argmax(colon, axis=1)
        checks.append(((ncolon != 1) | (at == 0),
                       f"idx:val in field {f + 1}", col))
        # The idx: the bytes before the colon (NULs are skipped by the
        # hash, so blank out the colon and what follows).
        u8[np.arange(w)[None, :] >= at[:, None]] = 0
        ids.append(hash_bytes(u8.reshape(-1).view(col.dtype), f))
    keep, nbad = raise_or_skip(path, t.line, checks, t.bad, skip_bad)
    idm = np.stack(ids, axis=1)[keep] if ids else \
        np.zeros((int(keep.sum()), 0), np.uint64)
    return Part((lab[keep] > 0).astype(np.float32), None, idm), nbad


def _read_blocks(path: str, fn: Callable[[bytes, int], Tuple[Part, int]]
                 ) -> Tuple[Part, int]:
    parts, nbad = [], 0
    for block, line in _blocks(path):
        p, b = fn(block, line)
        parts.append(p)
        nbad += b
    if not parts:
        raise BadData(f"{path}: no rows")
    return _concat_parts(parts), nbad


def _tail_split(name: str, path: str, valid: Optional[str],
                read: Callable[[str], Tuple[Part, int]], names: List[str],
                ndense: int) -> Data:
    part, nbad = read(path)
    if valid:
        vpart, vbad = read(valid)
        nbad += vbad
        train, note = part, f"validation from {valid}"
    else:
        tr, va = split_tail(len(part))
        train, vpart = part.subset(tr), part.subset(va)
        note = "last 10% of rows in file order"
    feats = vocabularies(names, [False] * len(names), train, vpart)
    return Data(name, feats, ndense, train, vpart, nbad, {"split": note})


def read_criteo(path: str, valid: Optional[str], skip_bad: bool) -> Data:
    def read(p: str) -> Tuple[Part, int]:
        return _read_blocks(p, lambda b, ln: _criteo_block(p, b, ln,
                                                           skip_bad))
    names = [f"C{j + 1}" for j in range(CRITEO_CATS)]
    return _tail_split("criteo", path, valid, read, names, CRITEO_INTS)


def read_libfm(path: str, valid: Optional[str], skip_bad: bool) -> Data:
    nfeat = _libfm_fields(path)
    if nfeat < 1:
        raise BadData(f"{path}:1: expected 'label idx:val ...' with at "
                      f"least one idx:val field")

    def read(p: str) -> Tuple[Part, int]:
        return _read_blocks(p, lambda b, ln: _libfm_block(p, b, ln, nfeat,
                                                          skip_bad))
    names = [f"f{j + 1}" for j in range(nfeat)]
    return _tail_split("libfm", path, valid, read, names, 0)


# ---- Entry point --------------------------------------------------------------

READERS = {"movielens-1m": read_movielens, "criteo": read_criteo,
           "libfm": read_libfm}


def input_files(fmt: str, path: str, valid: Optional[str]) -> List[str]:
    """The files a reader reads (for the cache key)."""
    files = list(_ml_paths(path)) if fmt == "movielens-1m" else [path]
    if valid:
        files.append(_ml_paths(valid)[0] if fmt == "movielens-1m" else valid)
    return files


def load(fmt: str, path: str, valid: Optional[str] = None,
         skip_bad: bool = False, cache_dir: Optional[str] = None
         ) -> Tuple[Data, bool]:
    """Reads a data set, from the cache when it holds it: (data, cached).
    ``cache_dir`` None reads the files every time."""
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}")
    key = None
    if cache_dir:
        key = cache_key(fmt, input_files(fmt, path, valid),
                        {"skip_bad": skip_bad, "valid": bool(valid)})
        d = load_cache(cache_dir, key)
        if d is not None:
            return d, True
    d = READERS[fmt](path, valid, skip_bad)
    if cache_dir and key:
        save_cache(cache_dir, key, d)
        cached = load_cache(cache_dir, key)
        if cached is not None:
            return cached, False
    return d, False
