"""The pieces of examples/python/train_ctr.py, a DLRM-style click-through
rate trainer whose embeddings live on cqrps servers.

- :mod:`.data`: the data model (features, parts, batches), ID hashing, the
  on-disk cache and the text parsing shared by the readers;
- :mod:`.readers`: the movielens-1m, criteo and libfm readers and splits;
- :mod:`.synth`: the synthetic-ctr generator (Criteo's shape, planted model);
- :mod:`.model`: DLRM-lite's dense part and the embedding front-ends
  (remote tables on cqrps, or local ``nn.EmbeddingBag`` as the baseline);
- :mod:`.train`: tables, the training loop, phases, checkpoints, and
  :func:`~.train.run_rank` (one worker from start to end);
- :mod:`.cli`: arguments, starting workers, errors (no torch import: a
  parent that only starts workers stays light).

Nothing here is imported by the ``cqrps`` package itself.
"""

#: The trainer's name in messages.
PROG = "train_ctr.py"


class RunError(Exception):
    """A failure to report in one line (no traceback)."""
