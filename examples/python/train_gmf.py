#!/usr/bin/env python3
"""Trains GMF on MovieLens with its embeddings on a cqrps server (PyTorch).

The Python twin of ``cqrps-train-gmf`` (examples/train_gmf.c): the same
data split, model, settings, table seeds, shuffles and output lines, but
the model is written with PyTorch and ``cqrps.torch.RemoteEmbedding``:

    p = sigmoid(<user_emb(u), item_emb(i)>), mean BCE per batch.

``loss.backward()`` pushes the gradients of the looked-up rows to the
server, whose optimizer (lazy AdamW, lr 1e-3, weight decay 0.01 by
default) steps them; there is no local optimizer. For ``cqr`` tables a
cluster phase runs on both tables after each of the first
floor(0.75 * epochs) epochs, after that epoch's validation
(``cqrps.torch.ClusterSchedule``).

The split is the one of ../shared/reference/README.md: drop rating 3,
label = rating >= 4, ids renumbered by rank, stable sort by (user,
timestamp), the last 2 rows of every user are validation. The train rows
are reshuffled every epoch with the C trainer's generator (xoshiro256**
seeded by splitmix64), so for the same --seed both trainers see the
batches in the same order and start from the same tables; what differs is
float summation order (PyTorch float32 vs the C code's double dots).

MovieLens-100k is not shipped: download it from
https://grouplens.org/datasets/movielens/100k/ and pass the ml-100k
directory (or its u.data) as --data. --synthetic uses the C trainer's
planted-groups data instead.

Output (stdout): per-epoch lines, the cluster phases, the tables' memory
and, last, ``best_auc=A best_logloss=L``. Exit status 0 on success, 1 on
an error (the tables are dropped either way unless --keep), 2 on bad
usage.

Example:
    PYTHONPATH=client/python python3 examples/python/train_gmf.py \\
        --addr 127.0.0.1:7070 --data ../shared/data/ml-100k \\
        --kind cqr --ppd 512 --seed 1
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from bisect import bisect_left
from dataclasses import dataclass
from typing import List, Optional, TextIO, Tuple

import numpy as np
import torch
import torch.nn.functional as F

try:
    import cqrps
except ImportError:  # run from a source checkout without PYTHONPATH
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(
        __file__)), "..", "..", "client", "python"))
    import cqrps
from cqrps.torch import ClusterSchedule, RemoteEmbedding

M64 = (1 << 64) - 1
VALID_PER_USER = 2

# ---- The C trainer's random generator (examples/movielens.c) ---------------


class Rng:
    """splitmix64-seeded xoshiro256**, bit for bit as ml_rng_t."""

    def __init__(self, seed: int) -> None:
        x = seed & M64
        s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            s.append(z ^ (z >> 31))
        self.s = s

    def next(self) -> int:
        s = self.s
        r = (((s[1] * 5) & M64) << 7 | ((s[1] * 5) & M64) >> 57) & M64
        res = (r * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = ((s[3] << 45) | (s[3] >> 19)) & M64
        return res

    def unif(self) -> float:
        """Uniform in [0, 1)."""
        return (self.next() >> 11) * (1.0 / (1 << 53))

    def below(self, n: int) -> int:
        """Uniform in [0, n) without modulo bias."""
        lim = M64 - M64 % n
        while True:
            x = self.next()
            if x < lim:
                return x % n

    def shuffle(self, a: np.ndarray) -> None:
        """Fisher-Yates in place, the same swaps as ml_shuffle."""
        for i in range(len(a), 1, -1):
            j = self.below(i)
            a[i - 1], a[j] = a[j], a[i - 1]


# ---- Data ------------------------------------------------------------------


@dataclass
class Split:
    """The split: dense ids, 0/1 labels; train in (user, timestamp) order."""

    train_user: np.ndarray   # int64, rank of the original user id
    train_item: np.ndarray   # int64, rank of the original item id
    train_label: np.ndarray  # float32, 1 if rating >= 4
    valid_user: np.ndarray
    valid_item: np.ndarray
    valid_label: np.ndarray
    nusers: int
    nitems: int


def read_udata(path: str) -> np.ndarray:
    """u.data rows (user, item, rating, timestamp) in file order, int64."""
    if os.path.isdir(path):
        path = os.path.join(path, "u.data")
    try:
        raw = np.loadtxt(path, dtype=np.int64, ndmin=2, comments="#")
    except OSError as e:
        raise SystemExit(
            f"train_gmf.py: {e} (download MovieLens-100k and pass the ml-100k "
            f"directory or its u.data)")
    if raw.shape[1] != 4 or raw.size == 0 or raw[:, 2].min() < 1 or \
            raw[:, 2].max() > 5:
        raise SystemExit(f"train_gmf.py: {path}: expected rows of 'user item "
                         f"rating timestamp' with a rating of 1..5")
    return raw


def split(raw: np.ndarray) -> Split:
    """The reference split of raw rows (file order)."""
    keep = raw[:, 2] != 3
    if not keep.any():
        raise SystemExit("train_gmf.py: no ratings left after dropping 3")
    pos = np.nonzero(keep)[0]
    users, u = np.unique(raw[keep, 0], return_inverse=True)
    items, i = np.unique(raw[keep, 1], return_inverse=True)
    ts = raw[keep, 3]
    label = (raw[keep, 2] >= 4).astype(np.float32)
    # (user, timestamp, file position): a total order, so a stable sort.
    order = np.lexsort((pos, ts, u))
    u, i, label = u[order], i[order], label[order]
    counts = np.bincount(u, minlength=len(users))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank_in_user = np.arange(len(u)) - starts[u]
    valid = rank_in_user >= counts[u] - VALID_PER_USER
    tr = ~valid
    return Split(u[tr].astype(np.int64), i[tr].astype(np.int64), label[tr],
                 u[valid].astype(np.int64), i[valid].astype(np.int64),
                 label[valid], len(users), len(items))


def synthetic_raw(seed: int, users: int = 1000, items: int = 1700,
                  groups: int = 4, mean_per_user: int = 74,
                  p_match: float = 0.9, p_other: float = 0.15,
                  zipf: float = 0.6) -> np.ndarray:
    """The C trainer's planted-groups data (ml_synth_raw), row for row."""
    min_per_user = 20
    rng = Rng(seed ^ 0x5EED5EED5EED)
    ugroup = [rng.below(groups) for _ in range(users)]
    igroup = [rng.below(groups) for _ in range(items)]
    likes = [rng.unif() < 0.5 for _ in range(groups * groups)]
    cdf: List[float] = []
    acc = 0.0
    for it in range(items):
        acc += math.pow(it + 1.0, -zipf)
        cdf.append(acc)
    count = []
    for _ in range(users):
        c = min_per_user - math.log(1.0 - rng.unif()) * \
            (mean_per_user - min_per_user)
        count.append(int(min(c, items / 2.0)))
    seen = [0] * items
    rows: List[Tuple[int, int, int, int]] = []
    for u in range(users):
        ts = 874000000 + rng.below(1000000)
        for _ in range(count[u]):
            while True:
                x = rng.unif() * acc
                it = min(bisect_left(cdf, x), items - 1)
                if seen[it] != u + 1:
                    break
            seen[it] = u + 1
            like = likes[ugroup[u] * groups + igroup[it]]
            p = p_match if like else p_other
            ts += 1 + rng.below(3600)
            rows.append((u + 1, it + 1, 5 if rng.unif() < p else 1, ts))
    for k in range(len(rows), 1, -1):
        j = rng.below(k)
        rows[k - 1], rows[j] = rows[j], rows[k - 1]
    return np.array(rows, dtype=np.int64)


# ---- Metrics -------------------------------------------------------------


def logloss(z: np.ndarray, y: np.ndarray) -> float:
    """Mean BCE of logits z against 0/1 labels y, computed in double."""
    z = z.astype(np.float64)
    return float(np.mean(np.where(y > 0.5, np.logaddexp(0.0, -z),
                                  np.logaddexp(0.0, z))))


def auc(z: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC with tied scores given their mean rank (as metric_auc)."""
    pos = y > 0.5
    npos, nneg = int(pos.sum()), int((~pos).sum())
    if npos == 0 or nneg == 0:
        return 0.5
    _, inv, cnt = np.unique(z, return_inverse=True, return_counts=True)
    end = np.cumsum(cnt).astype(np.float64)
    mean_rank = end - (cnt - 1) / 2.0  # 1-based mean rank of each run
    rank_sum = float(mean_rank[inv][pos].sum())
    return (rank_sum - npos * (npos + 1) / 2.0) / (npos * nneg)


# ---- Training ------------------------------------------------------------


class GMF(torch.nn.Module):
    """p = sigmoid(<user, item>) with both tables on the server."""

    def __init__(self, client: cqrps.Client, utab: str, itab: str,
                 dim: int) -> None:
        super().__init__()
        self.user = RemoteEmbedding(client, utab, dim)
        self.item = RemoteEmbedding(client, itab, dim)

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Logits of the (user, item) pairs."""
        return (self.user(u) * self.item(i)).sum(-1)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Trains GMF on MovieLens through cqrps with PyTorch "
                    "(the Python twin of cqrps-train-gmf).")
    p.add_argument("--addr", required=True, help="server address list")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="the ml-100k directory or its u.data")
    src.add_argument("--synthetic", action="store_true",
                     help="the C trainer's planted-groups data")
    p.add_argument("--kind", required=True,
                   choices=["full", "hash", "ce", "cqr"])
    p.add_argument("--ppd", required=True, type=int,
                   help="parameters per dimension per table: hash has P "
                        "rows, ce/cqr P/2 per codebook, full ignores it")
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--cluster-frac", type=float, default=0.75)
    p.add_argument("--cluster-iters", type=int, default=0)
    p.add_argument("--cluster-sample", type=int, default=0)
    # None: the server's default (README, "Defaults").
    p.add_argument("--reset-optimizer", dest="reset_optimizer",
                   action="store_true", default=None,
                   help="zero the codebooks' optimizer state at each phase "
                   "(server default: on)")
    p.add_argument("--no-reset-optimizer", dest="reset_optimizer",
                   action="store_false",
                   help="keep it across phases (the published code)")
    p.add_argument("--cluster-tol", type=float, default=None,
                   help="k-means tolerance (server default; 0 = every "
                   "iteration)")
    p.add_argument("--init-scale", type=float, default=0.0,
                   help="initial values uniform in (-X, X) (server "
                   "default)")
    p.add_argument("--table-prefix")
    p.add_argument("--token-file", help="shared secret for Hello "
                   "(else $CQRPS_TOKEN)")
    p.add_argument("--admin-token-file", help="admin secret for cluster "
                   "and drop (else $CQRPS_ADMIN_TOKEN)")
    p.add_argument("--tsv", help="append per-epoch results to this file")
    p.add_argument("--keep", action="store_true",
                   help="keep the tables at the end")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.epochs < 1 or a.dim < 1 or a.batch < 1 or a.ppd < 1 or \
            a.chunks < 1 or a.seed < 0:
        p.error("--epochs, --dim, --batch, --ppd, --chunks must be >= 1, "
                "--seed >= 0")
    if not 0.0 <= a.cluster_frac <= 1.0:
        p.error("--cluster-frac must be within [0, 1]")
    if a.kind in ("ce", "cqr"):
        if a.ppd < 2:
            p.error("--ppd must be at least 2 for ce and cqr (P/2 rows)")
        if a.dim % a.chunks:
            p.error("--chunks must divide --dim")
    return a


def create_tables(c: cqrps.Client, a: argparse.Namespace, utab: str,
                  itab: str, created: List[str]) -> cqrps.TableInfo:
    """Both tables, configured as the C trainer does (seeds 2S+1, 2S+2)."""
    rows = {"hash": a.ppd, "ce": a.ppd // 2, "cqr": a.ppd // 2}.get(a.kind, 0)
    cfg = dict(kind=a.kind, dim=a.dim,
               chunks=a.chunks if a.kind in ("ce", "cqr") else 0, rows=rows,
               optimizer="adam", lr=a.lr, beta1=0.9, beta2=0.999, eps=1e-8,
               weight_decay=a.weight_decay, cluster_iters=a.cluster_iters,
               cluster_sample=a.cluster_sample,
               reset_optimizer=a.reset_optimizer, init_scale=a.init_scale,
               cluster_tol=a.cluster_tol)
    info = None
    for name, seed in ((utab, a.seed * 2 + 1), (itab, a.seed * 2 + 2)):
        info = c.create_table(name, seed=seed & M64, **cfg)
        created.append(name)
    assert info is not None
    return info


def validate(model: GMF, d: Split, batch: int) -> Tuple[float, float]:
    """(log-loss, AUC) of the validation rows with the current tables."""
    zs = []
    with torch.no_grad():
        for s in range(0, len(d.valid_user), batch):
            zs.append(model(torch.from_numpy(d.valid_user[s:s + batch]),
                            torch.from_numpy(d.valid_item[s:s + batch]))
                      .numpy())
    z = np.concatenate(zs)
    return logloss(z, d.valid_label), auc(z, d.valid_label)


def report_memory(c: cqrps.Client, name: str, role: str, nids: int,
                  dim: int) -> int:
    """Prints one table's memory line (as the C trainer); returns bytes."""
    t = c.describe_table(name)
    alloc = t.param_bytes + t.index_bytes
    if t.kind == "full":  # rows of known IDs; the server allocates blocks
        nbytes = t.known_ids * t.dim * 4 + t.index_bytes
    else:
        nbytes = alloc
    full = nids * dim * 4
    print(f"memory table={name} role={role} kind={t.kind} "
          f"rows={t.config.rows} ids={nids} known_ids={t.known_ids} "
          f"param_bytes={t.param_bytes} index_bytes={t.index_bytes} "
          f"optimizer_bytes={t.optimizer_bytes} alloc_bytes={alloc} "
          f"bytes={nbytes} bytes_per_id={nbytes / nids if nids else 0:.2f} "
          f"index_bytes_per_id={t.index_bytes / nids if nids else 0:.2f} "
          f"full_bytes={full} "
          f"compression={full / nbytes if nbytes else 0:.2f}x "
          f"phases={t.phases_done}")
    return nbytes


def train(c: cqrps.Client, a: argparse.Namespace, d: Split, utab: str,
          itab: str, tsv: Optional[TextIO]) -> None:
    """The run: epochs of training, validation, cluster phases, summary."""
    model = GMF(c, utab, itab, a.dim)
    sched = ClusterSchedule(c, [utab, itab], a.epochs, a.cluster_frac)
    rng = Rng(a.seed ^ 0x7261696E)
    order = np.arange(len(d.train_user))
    best_auc, best_ll = 0.0, math.inf
    for e in range(a.epochs):
        t0 = time.monotonic()
        rng.shuffle(order)  # cumulative, as the C trainer's in-place shuffle
        users = torch.from_numpy(d.train_user[order])
        items = torch.from_numpy(d.train_item[order])
        labels = torch.from_numpy(d.train_label[order])
        total = 0.0
        for s in range(0, len(order), a.batch):
            y = labels[s:s + a.batch]
            z = model(users[s:s + a.batch], items[s:s + a.batch])
            loss = F.binary_cross_entropy_with_logits(z, y)
            loss.backward()  # pushes both tables' gradients: the step
            total += loss.item() * len(y)
        ll, au = validate(model, d, a.batch)
        secs = time.monotonic() - t0
        best_auc, best_ll = max(best_auc, au), min(best_ll, ll)
        if not a.quiet:
            print(f"epoch={e + 1}/{a.epochs} "
                  f"train_loss={total / len(order):.4f} val_logloss={ll:.4f} "
                  f"val_auc={au:.4f} seconds={secs:.2f}", flush=True)
        if tsv:
            tsv.write(f"{a.kind}\t{a.ppd}\t{a.seed}\t{e + 1}\t"
                      f"{total / len(order):.6f}\t{ll:.6f}\t{au:.6f}\t"
                      f"{secs:.3f}\n")
            tsv.flush()
        for name, st in zip(sched.tables, sched(e)):
            if not a.quiet:
                print(f"cluster epoch={e + 1} table={name} "
                      f"phase={st.phase_id} seconds={st.seconds:.3f} "
                      f"inertia={st.inertia:.6g} ids={st.ids_assigned} "
                      f"replayed={st.replayed_pushes}", flush=True)
    total_bytes = report_memory(c, utab, "user", d.nusers, a.dim) + \
        report_memory(c, itab, "item", d.nitems, a.dim)
    full = (d.nusers + d.nitems) * a.dim * 4
    print(f"memory_total kind={a.kind} ppd={a.ppd} bytes={total_bytes} "
          f"bytes_per_id={total_bytes / (d.nusers + d.nitems):.2f} "
          f"full_bytes={full} "
          f"compression={full / total_bytes if total_bytes else 0:.2f}x")
    print(f"best_auc={best_auc:.6f} best_logloss={best_ll:.6f}", flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    raw = synthetic_raw(a.seed) if a.synthetic else read_udata(a.data)
    d = split(raw)
    if len(d.train_user) == 0 or len(d.valid_user) == 0:
        print("train_gmf.py: empty train or validation set", file=sys.stderr)
        return 1
    prefix = a.table_prefix or \
        f"gmf-py-{a.kind}-p{a.ppd}-s{a.seed}-{os.getpid()}"
    utab, itab = f"{prefix}.user", f"{prefix}.item"
    if not a.quiet:
        print(f"data {'synthetic' if a.synthetic else a.data} "
              f"users={d.nusers} items={d.nitems} train={len(d.train_user)} "
              f"valid={len(d.valid_user)} "
              f"train_pos={d.train_label.mean():.4f} "
              f"valid_pos={d.valid_label.mean():.4f}", flush=True)
    created: List[str] = []
    tsv = None
    try:
        # Files, else $CQRPS_TOKEN / $CQRPS_ADMIN_TOKEN (cqrps.connect).
        with cqrps.connect(a.addr, token_file=a.token_file,
                           admin_token_file=a.admin_token_file,
                           client_name="train_gmf.py") as c:
            try:
                if a.tsv:
                    new = not os.path.exists(a.tsv) or \
                        os.path.getsize(a.tsv) == 0
                    tsv = open(a.tsv, "a")
                    if new:
                        tsv.write("kind\tppd\tseed\tepoch\ttrain_loss\t"
                                  "val_logloss\tval_auc\tseconds\n")
                info = create_tables(c, a, utab, itab, created)
                if not a.quiet:
                    cf = info.config
                    print(f"tables {utab} {itab} kind={cf.kind} "
                          f"rows={cf.rows} dim={cf.dim} chunks={cf.chunks} "
                          f"init_scale={cf.init_scale:g} lr={cf.lr:g} "
                          f"wd={cf.weight_decay:g}", flush=True)
                train(c, a, d, utab, itab, tsv)
            finally:
                if not a.keep:
                    for name in created:  # also after an error or ^C
                        try:
                            c.drop_table(name)
                        except cqrps.Error as e:
                            print(f"train_gmf.py: drop {name}: {e}",
                                  file=sys.stderr)
    except cqrps.Error as e:
        print(f"train_gmf.py: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train_gmf.py: interrupted", file=sys.stderr)
        return 1
    finally:
        if tsv:
            tsv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
