#!/usr/bin/env python3
"""Trains a DLRM-style click-through-rate model whose embeddings live on
cqrps servers, from one or several PyTorch worker processes.

    train_ctr.py --addr A[,B,...] --data PATH
                 --format movielens-1m|criteo|libfm|synthetic-ctr
                 [--valid PATH] --kind full|hash|ce|cqr --ppd P --seed S
                 --epochs E [--workers N] [--batch 1024] [--tsv FILE]
                 [--rows N --vocab V]  (synthetic-ctr)
                 [--skip-bad] [--run-dir DIR [--resume]] [--local ...]

Model (DLRM-lite): every sparse feature an embedding of dim 16 (bags mean
pooled, on the server); dense features (Criteo's 13 integers, log(1+x))
through a bottom MLP to dim 16; all pairwise dot products of the feature
vectors concatenated with the vectors; top MLP 64-32-1; BCE. Adam lr
1e-3 for the MLPs (local), the tables' own server-side Adam for the
embeddings (the server's defaults; lr 1e-3). Budget: a feature whose
vocabulary is at most P gets a ``full`` table, the others ``--kind`` at P
parameters per dimension (hash P rows, ce/cqr P/2 per codebook).

Workers: ``--workers N`` starts N processes (gloo on 127.0.0.1); under
``torchrun`` the trainer reads RANK and WORLD_SIZE instead. ``--batch`` is
the global batch (each worker takes batch/N rows per step); the MLPs are
averaged with DistributedDataParallel, the embeddings are pushed by each
worker. Cluster phases (cqr) run after epochs up to 75% of them, started
once by rank 0 after every worker finished the epoch; training continues
when they committed. Validation runs on rank 0.

Output: the data and tables, one line per epoch (train loss, validation
logloss and AUC, examples/s, seconds, requests per step), progress lines
on stderr, the memory of every table, and last
``best_auc=A best_logloss=L``. Exit status 0 on success, 1 on an error
(one line: the file and line of a malformed row, a lost server, ...), 2
on bad usage.

Examples (a server on 127.0.0.1:7070):
    examples/python/train_ctr.py --addr 127.0.0.1:7070 \\
        --data ../shared/data/ml-1m-partial --format movielens-1m \\
        --kind cqr --ppd 256 --seed 1 --epochs 10 --workers 2
    examples/python/train_ctr.py --addr 127.0.0.1:7070 \\
        --format synthetic-ctr --rows 1000000 --vocab 1000000 \\
        --kind cqr --ppd 1024 --seed 1 --epochs 1 --batch 4096
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _blas_threads(argv) -> None:
    """OpenBLAS sizes its thread pool when it loads (with torch): small
    matrices on a shared machine run best on --threads (default 1)."""
    n = "1"
    for i, x in enumerate(argv):
        if x == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif x.startswith("--threads="):
            n = x.split("=", 1)[1]
    os.environ.setdefault("OPENBLAS_NUM_THREADS", n)
    os.environ.setdefault("OMP_NUM_THREADS", n)


_blas_threads(sys.argv[1:])
sys.path.insert(0, HERE)
try:
    import cqrps  # noqa: F401
except ImportError:  # a source checkout without PYTHONPATH
    sys.path.insert(0, os.path.join(HERE, "..", "..", "client", "python"))

from cqrps_ctr.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
