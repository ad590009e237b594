"""The state-dict entry of a remote module: where its tables live, what
they are, and which checkpoint of the server they belong to.

A remote module holds no weights; its ``state_dict()`` holds, under the
usual ``_extra_state`` key, a description of its tables instead::

    {"format": "cqrps.remote/1",
     "address": "127.0.0.1:7070",          # the client's address list
     "shards": 1,
     "tables": {"items": {"kind": "cqr", "dim": 32, ..., "lr": 0.001}},
     "checkpoint": {"persistence": True, "generations": [12]}}

``generations`` holds, per shard, the newest checkpoint the server had
taken when ``state_dict()`` ran (None for a shard without one); the
table's rows are at least that new. :func:`cqrps.torch.checkpoint` takes
a checkpoint first, so that the state dict names the generation made for
it. A server without ``--data-dir`` keeps its tables in memory only:
``{"persistence": False, "note": ...}`` says so.

``load_state_dict`` checks the entry against the server: the same
address list, every table present with the same structure (kind, dim,
chunks, rows, seed, optimizer, cluster and init settings; the optimizer's
hyperparameters may differ, since schedulers change them), and no shard
whose newest checkpoint is older than the recorded one (a server restored
from an older checkpoint, or another server). A mismatch is reported as
an unexpected key that carries the reasons
(``"emb._extra_state (table 'items' differs ...: kind 'cqr' != 'hash')"``):
with ``strict=True`` (the default) ``load_state_dict`` raises it, with
``strict=False`` it returns it in ``unexpected_keys``, as PyTorch does for
keys that do not fit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence

from .client import Client
from .errors import Error, Unsupported

FORMAT = "cqrps.remote/1"

#: Config fields an update_optimizer call (an LR scheduler) may change.
MUTABLE = ("lr", "beta1", "beta2", "eps", "weight_decay")


def _normal_addrs(addrs: str) -> str:
    return ",".join(a.strip() for a in addrs.split(","))


def _generations(client: Client) -> Dict[str, Any]:
    try:
        cps = client.list_checkpoints()
    except Unsupported:
        return {"persistence": False,
                "note": "the server runs without --data-dir: the tables "
                        "live in its memory only, no checkpoint holds them"}
    gens: List[Any] = [None] * client.shard_count
    for cp in cps:
        if 0 <= cp.shard < len(gens):
            g = gens[cp.shard]
            gens[cp.shard] = cp.generation if g is None else max(
                g, cp.generation)
    return {"persistence": True, "generations": gens}


def describe(client: Client, tables: Sequence[str]) -> Dict[str, Any]:
    """The entry for ``tables`` on ``client`` (asks the server)."""
    return {
        "format": FORMAT,
        "address": client.addrs,
        "shards": client.shard_count,
        "tables": {t: dataclasses.asdict(client.describe_table(t).config)
                   for t in tables},
        "checkpoint": _generations(client),
    }


def check(client: Client, tables: Sequence[str], saved: Any) -> List[str]:
    """What differs between a saved entry and the server (empty: nothing)."""
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        return [f"not a cqrps remote-table entry: {saved!r:.80}"]
    problems: List[str] = []
    here = client.addrs
    if _normal_addrs(saved.get("address", "")) != _normal_addrs(here):
        problems.append(f"the state dict's tables live at "
                        f"{saved.get('address')!r}, this module's client "
                        f"talks to {here!r}")
    saved_tables = saved.get("tables", {})
    if sorted(saved_tables) != sorted(tables):
        problems.append(f"the state dict holds tables "
                        f"{sorted(saved_tables)}, the module has "
                        f"{sorted(tables)}")
    for t in tables:
        want = saved_tables.get(t)
        if want is None:
            continue
        try:
            have = dataclasses.asdict(client.describe_table(t).config)
        except Error as e:
            problems.append(f"table {t!r}: {e.name}: {e.message}")
            continue
        diff = [f"{k} {want.get(k)!r} != {have[k]!r}" for k in have
                if k not in MUTABLE and want.get(k) != have[k]]
        if diff:
            problems.append(f"table {t!r} differs from the state dict's "
                            f"(saved != server): " + ", ".join(diff))
    old = saved.get("checkpoint", {})
    if old.get("persistence"):
        now = _generations(client)
        if not now.get("persistence"):
            problems.append("the state dict was saved from a server with "
                            "checkpoints; this one runs without --data-dir")
        else:
            for i, (g0, g1) in enumerate(zip(old.get("generations", []),
                                             now["generations"])):
                if g0 is not None and (g1 is None or g1 < g0):
                    problems.append(
                        f"shard {i}: the server's newest checkpoint "
                        f"({g1}) is older than the state dict's ({g0}): "
                        f"it restored an older state or is another server")
    return problems
