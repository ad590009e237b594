"""synthetic-ctr: data of Criteo's shape from a planted model, any size.

13 dense and 26 sparse features. Feature f draws the rank of its value
from a Zipf law (exponent ``zipf``) over ``vocab_f`` values; the 26
vocabularies are Criteo Kaggle's cardinalities scaled to ``vocab`` IDs in
all (at least 2 each). The ID of rank k is a hash of (f, k), so popular
IDs are spread over the 64-bit space.

The planted model: every ID belongs to one of ``clusters`` clusters per
feature (a hash of the ID) and has a latent vector (dim 4) = its
cluster's centre + small per-ID noise. The label's logit adds a linear
term of each feature's latent vector, dot products of 20 fixed feature
pairs and a linear term of the dense features, scaled to a fixed spread
and shifted to about 25% positives. So a table that tells the clusters
apart (full; cqr whose learned pointers find them) beats one that mixes
them up (hash collisions), and the quality ordering of the kinds means
something.

Nothing is stored: row r of the data set is a pure function of (seed, r)
(counter-based hashing, no generator state), so any rows come out in any
order, workers generate their own shares and ``rows`` may exceed memory.
Rows [0, rows - floor(rows / 10)) train, the rest validate.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np

from .data import Batch, Data, Feature, mix64, salt

#: Criteo Kaggle's categorical cardinalities (C1..C26), the shape to scale.
CRITEO_CARD = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145,
               5683, 8351593, 3194, 27, 14992, 5461306, 10, 5652, 2173, 4,
               7046547, 18, 15, 286181, 105, 142572]
NDENSE = 13
LATENT = 4
NPAIRS = 20
POS_RATE = 0.25
LOGIT_STD = 2.0
U53 = 1.0 / (1 << 53)


def vocab_sizes(vocab: int) -> List[int]:
    """Per-feature vocabularies: Criteo's proportions, ``vocab`` in all."""
    total = float(sum(CRITEO_CARD))
    return [max(2, int(round(c * vocab / total))) for c in CRITEO_CARD]


def _unif(h: np.ndarray) -> np.ndarray:
    """Uniform (0, 1) doubles from uint64 hashes."""
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * U53


def zipf_rank(u: np.ndarray, n: int, s: float) -> np.ndarray:
    """Ranks 0..n-1 from uniforms by the inverse of the continuous Zipf
    CDF on [1, n + 1) (exponent s > 0)."""
    if abs(s - 1.0) < 1e-9:
        x = np.exp(u * math.log(n + 1.0))
    else:
        a = 1.0 - s
        x = (1.0 + u * ((n + 1.0) ** a - 1.0)) ** (1.0 / a)
    return np.clip(np.floor(x).astype(np.int64) - 1, 0, n - 1)


class Planted:
    """The generator: the planted model's constants for one seed."""

    def __init__(self, seed: int, vocab: int, zipf: float = 1.05,
                 clusters: int = 16) -> None:
        self.seed = seed
        self.zipf = zipf
        self.vocab = vocab_sizes(vocab)
        self.nsparse = len(self.vocab)
        rng = np.random.default_rng(seed ^ 0xC7)
        self.k = [min(clusters, v) for v in self.vocab]
        self.centre = rng.standard_normal((self.nsparse, clusters, LATENT))
        w = rng.standard_normal((self.nsparse, LATENT))
        self.w = w / np.linalg.norm(w, axis=1, keepdims=True)
        self.a = rng.uniform(0.3, 1.0, self.nsparse)
        pairs = set()
        while len(pairs) < NPAIRS:
            i, j = sorted(rng.choice(self.nsparse, 2, replace=False))
            pairs.add((int(i), int(j)))
        self.pairs = sorted(pairs)
        self.b = rng.uniform(0.2, 0.6, NPAIRS) * rng.choice([-1, 1], NPAIRS)
        self.dmu = rng.uniform(0.0, 4.0, NDENSE)
        self.g = rng.standard_normal(NDENSE) * 0.4
        self.scale, self.shift = 1.0, 0.0
        z = self._logit(*self._rows(np.arange(20000, dtype=np.uint64))[:3])
        self.scale = LOGIT_STD / max(float(z.std()), 1e-9)
        z = z * self.scale
        self.shift = float(np.quantile(z, 1.0 - POS_RATE * 0.8))

    def _rows(self, r: np.ndarray) -> Tuple[np.ndarray, List[np.ndarray],
                                             np.ndarray, List[np.ndarray]]:
        """(dense log1p values, per-feature IDs, latents (n, F, 4),
        per-feature ranks)."""
        n = r.shape[0]
        ids, lat, ranks = [], [], []
        for f in range(self.nsparse):
            u = _unif(mix64(r ^ salt(f, self.seed)))
            rk = zipf_rank(u, self.vocab[f], self.zipf)
            ranks.append(rk)
            idf = mix64(rk.astype(np.uint64) ^ salt(f, self.seed + 1))
            h = mix64(idf ^ salt(f, self.seed + 2))
            c = (h % np.uint64(self.k[f])).astype(np.int64)
            h2 = mix64(h)
            # 4 noise values from 16-bit fields of one hash, in [-1, 1).
            fields = np.stack([(h2 >> np.uint64(16 * i)) & np.uint64(0xFFFF)
                               for i in range(LATENT)], axis=1)
            noise = fields.astype(np.float64) / 32768.0 - 1.0
            lat.append(self.centre[f, c] + 0.3 * noise)
            ids.append(idf)
        dn = np.empty((n, NDENSE), np.float32)
        for j in range(NDENSE):
            h = mix64(r ^ salt(100 + j, self.seed))
            u1, u2 = _unif(h), _unif(mix64(h))
            gauss = np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * math.pi * u2)
            cnt = np.floor(np.exp(self.dmu[j] + gauss)) - 1.0
            dn[:, j] = np.log1p(np.maximum(cnt, 0.0))
        return dn, ids, np.stack(lat, axis=1), ranks

    def _logit(self, dense: np.ndarray, ids: List[np.ndarray],
               lat: np.ndarray) -> np.ndarray:
        z = np.einsum("nfl,fl->n", lat, self.w * self.a[:, None])
        for (i, j), b in zip(self.pairs, self.b):
            z += b * np.einsum("nl,nl->n", lat[:, i], lat[:, j])
        z += ((dense - 1.5) * self.g).sum(axis=1)
        return z * self.scale - self.shift

    def take(self, rows: np.ndarray) -> Batch:
        r = np.asarray(rows, dtype=np.int64).astype(np.uint64)
        dense, ids, lat, ranks = self._rows(r)
        p = 1.0 / (1.0 + np.exp(-self._logit(dense, ids, lat)))
        u = _unif(mix64(r ^ salt(999, self.seed)))
        return Batch((u < p).astype(np.float32), dense, ids, [],
                     index=ranks)


class SynthPart:
    """Rows [start, start + n) of the generator, as a part (``take``)."""

    def __init__(self, gen: Planted, start: int, n: int) -> None:
        self.gen, self.start, self.n = gen, start, n

    def __len__(self) -> int:
        return self.n

    def take(self, rows: np.ndarray) -> Batch:
        return self.gen.take(np.asarray(rows, dtype=np.int64) + self.start)


def synthetic(rows: int, vocab: int, seed: int = 0, zipf: float = 1.05
              ) -> Data:
    """The synthetic-ctr data set: ``rows`` rows, ``vocab`` IDs in all.
    The generator's seed is fixed by ``seed`` (default 0: the same data
    for every training seed)."""
    gen = Planted(seed, vocab, zipf)
    nvalid = rows // 10
    feats = [Feature(f"C{j + 1}", False, v) for j, v in enumerate(gen.vocab)]
    return Data("synthetic-ctr", feats, NDENSE,
                SynthPart(gen, 0, rows - nvalid),  # type: ignore[arg-type]
                SynthPart(gen, rows - nvalid, nvalid),  # type: ignore
                0, {"split": "last 10% of rows",
                    "vocab": "declared by the generator (Zipf ranges)"})
