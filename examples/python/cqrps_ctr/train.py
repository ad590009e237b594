"""One worker of the CTR trainer: tables, epochs, phases, checkpoints.

Every worker (rank r of N) trains on its share of each epoch's rows: the
epoch's permutation (the same on every rank) taken every N-th row from r,
cut into the same number of steps on every rank. ``--batch`` is the
global batch: a rank's steps hold batch / N rows, DistributedDataParallel
averages the dense gradients (so one step equals a one-worker step of
``batch`` rows), and each rank pushes its embedding gradients itself.

The end of an epoch, on every rank: wait for the rank's pushes, then an
all-reduce of the loss (which is also the barrier: every worker finished
the epoch and its pushes were acknowledged); rank 0 alone validates, runs
the cluster phases of the epoch (cqr tables, after epochs up to
``cluster_frac`` of them) and waits for them to commit, takes the
checkpoint, prints the epoch; a second barrier releases the others. So no
worker pushes while a phase runs (``replayed`` of every phase is 0): the
trainer does not depend on the server replaying pushes that arrive during
a phase, although the server would.

Checkpoints (``--run-dir``): after each epoch rank 0 asks the servers for
a checkpoint (their generation; servers without ``--data-dir`` keep none)
and writes ``ckpt.pt``: the epoch, the dense weights and their optimizer,
the generation, the tables and the figures so far. ``--resume`` continues
after that epoch with the same tables (which also hold the pushes made
after the checkpoint: asynchronous training tolerates that).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, TextIO, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import cqrps
from cqrps.torch import cluster_tables

from . import PROG, RunError
from .data import Data, Feature
from .model import DenseArch, LocalFeatures, RemoteFeatures, feature_vocabs
from .readers import load
from .synth import synthetic

# ---- Metrics -------------------------------------------------------------------


def logloss(z: np.ndarray, y: np.ndarray) -> float:
    """Mean BCE of logits z against 0/1 labels, in double."""
    z = z.astype(np.float64)
    return float(np.mean(np.where(y > 0.5, np.logaddexp(0.0, -z),
                                  np.logaddexp(0.0, z))))


def auc(z: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC, tied scores given their mean rank."""
    pos = y > 0.5
    npos, nneg = int(pos.sum()), int((~pos).sum())
    if npos == 0 or nneg == 0:
        return 0.5
    _, inv, cnt = np.unique(z, return_inverse=True, return_counts=True)
    end = np.cumsum(cnt).astype(np.float64)
    rank = end - (cnt - 1) / 2.0
    return (float(rank[inv][pos].sum()) - npos * (npos + 1) / 2.0) / \
        (npos * nneg)


# ---- Tables --------------------------------------------------------------------


@dataclass
class TableSpec:
    feature: Feature
    name: str
    kind: str
    rows: int


def table_plan(features: List[Feature], kind: str, ppd: int, prefix: str
               ) -> List[TableSpec]:
    """The budget rule: a feature whose vocabulary is at most P gets a
    full table, the others ``kind`` at P parameters per dimension (hash: P
    rows; ce, cqr: P/2 rows per codebook)."""
    out = []
    for f in features:
        k = "full" if kind == "full" or f.vocab <= ppd else kind
        rows = {"hash": ppd, "ce": ppd // 2, "cqr": ppd // 2}.get(k, 0)
        out.append(TableSpec(f, f"{prefix}.{f.name}", k, rows))
    return out


def create_tables(c: cqrps.Client, plan: List[TableSpec], a: Any,
                  resume: bool) -> None:
    """Creates the tables (the server's defaults for everything the issue
    does not fix: init, chunks, optimizer reset). On resume they must
    exist already, with the planned kind and rows."""
    for i, t in enumerate(plan):
        if resume:
            try:
                info = c.describe_table(t.name)
            except cqrps.NotFound:
                raise RunError(
                    f"resume: table {t.name} is not on the server any more "
                    f"(was the server restarted without its --data-dir?); "
                    f"start a new run") from None
            if info.kind != t.kind or info.config.rows != t.rows:
                raise RunError(f"resume: table {t.name} is {info.kind} with "
                               f"{info.config.rows} rows, the run planned "
                               f"{t.kind} with {t.rows}")
            continue
        kw: Dict[str, Any] = dict(kind=t.kind, dim=a.dim, rows=t.rows,
                                  seed=(a.seed * 1000 + i + 1) & (2**64 - 1),
                                  optimizer="adam")
        if t.kind in ("ce", "cqr") and a.chunks:
            kw["chunks"] = a.chunks
        if a.emb_lr:
            kw["lr"] = a.emb_lr
        # Experiments only: by default the server's own defaults apply.
        if a.init_scale:
            kw["init_scale"] = a.init_scale
        if a.reset_optimizer:
            kw["reset_optimizer"] = a.reset_optimizer == "on"
        # Memory per ID (issue 19), for the compressed features only: a
        # feature small enough for a full table has nothing to save.
        if t.kind == a.kind and t.kind in ("full", "cqr"):
            if getattr(a, "admit_after", 0):
                kw["admit_after"] = a.admit_after
            if t.kind == "cqr" and getattr(a, "evict_after_phases", 0):
                kw["evict_after_phases"] = a.evict_after_phases
        c.create_table(t.name, **kw)


def memory_report(c: cqrps.Client, plan: List[TableSpec], dim: int,
                  out: TextIO) -> None:
    """One line per table and the total (as train_gmf.py)."""
    tot = tot_full = tot_ids = tot_opt = 0
    for t in plan:
        d = c.describe_table(t.name)
        if d.kind == "full":  # rows of known IDs (the server allocates
            nbytes = d.known_ids * d.dim * 4 + d.index_bytes  # in blocks)
        else:
            nbytes = d.param_bytes + d.index_bytes
        n = t.feature.vocab
        full = n * dim * 4
        tot, tot_full, tot_ids = tot + nbytes, tot_full + full, tot_ids + n
        tot_opt += d.optimizer_bytes
        print(f"memory table={t.name} feature={t.feature.name} "
              f"kind={d.kind} rows={d.config.rows} ids={n} "
              f"known_ids={d.known_ids} param_bytes={d.param_bytes} "
              f"index_bytes={d.index_bytes} "
              f"optimizer_bytes={d.optimizer_bytes} bytes={nbytes} "
              f"bytes_per_id={nbytes / max(n, 1):.2f} full_bytes={full} "
              f"compression={full / max(nbytes, 1):.2f}x "
              f"phases={d.phases_done}", file=out)
    print(f"memory_total tables={len(plan)} ids={tot_ids} bytes={tot} "
          f"bytes_per_id={tot / max(tot_ids, 1):.2f} "
          f"optimizer_bytes={tot_opt} full_bytes={tot_full} "
          f"compression={tot_full / max(tot, 1):.2f}x", file=out, flush=True)


# ---- The worker ------------------------------------------------------------------


@dataclass
class State:
    """What a checkpoint holds besides the weights."""

    epoch: int = 0                 #: epochs done
    best_auc: float = 0.0
    best_ll: float = math.inf
    history: List[Dict[str, float]] = field(default_factory=list)
    generation: Optional[int] = None
    done: bool = False


class Worker:
    """One rank of the run (rank 0 of 1 without torch.distributed)."""

    def __init__(self, a: Any, data: Data, rank: int, world: int,
                 prefix: str) -> None:
        self.a, self.data, self.rank, self.world = a, data, rank, world
        self.out = sys.stdout
        self.plan = table_plan(data.features, a.kind, a.ppd, prefix)
        self.state = State()
        self.client: Optional[cqrps.Client] = None
        self.phases = int(math.floor(a.cluster_frac * a.epochs + 1e-9))
        self.ckpt = os.path.join(a.run_dir, "ckpt.pt") if a.run_dir else None
        # Steps of the last epoch whose lookup was prefetched (remote).
        self.prefetched: Optional[int] = None

    # -- setup --

    def say(self, msg: str) -> None:
        if self.rank == 0 and not self.a.quiet:
            print(msg, file=self.out, flush=True)

    def connect(self) -> None:
        a = self.a
        self.client = cqrps.connect(
            a.addr, token_file=a.token_file,
            admin_token_file=a.admin_token_file,
            request_timeout=a.request_timeout,
            client_name=f"{PROG} rank {self.rank}")

    def build(self, resume: bool) -> None:
        a, d = self.a, self.data
        torch.manual_seed(a.seed)
        self.dense = DenseArch(len(d.features), d.ndense, a.dim)
        self.opt_sparse: Optional[torch.optim.Optimizer] = None
        if a.local:
            vocabs = None
            if not hasattr(d.train, "gen"):
                vocabs = feature_vocabs(d.train.ids, d.valid.ids,
                                        d.train.bags, d.valid.bags)
            self.emb: torch.nn.Module = LocalFeatures(
                d.features, a.dim, vocabs, sparse=a.local == "sparse_adam",
                init_scale=1.0 / math.sqrt(a.dim))
            lr = a.emb_lr or 1e-3
            self.opt_sparse = torch.optim.SparseAdam(
                list(self.emb.parameters()), lr=lr) \
                if a.local == "sparse_adam" else \
                torch.optim.Adam(self.emb.parameters(), lr=lr)
        else:
            assert self.client is not None
            if self.rank == 0:
                create_tables(self.client, self.plan, a, resume)
            self.barrier()
            self.emb = RemoteFeatures(self.client, self.data.features,
                                      [t.name for t in self.plan], a.bf16)
        self.model: torch.nn.Module = self.dense
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.dense)
        self.opt = torch.optim.Adam(self.dense.parameters(), lr=a.lr)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    # -- checkpoints --

    def load_checkpoint(self) -> bool:
        """Restores ckpt.pt if there is one; True if it did."""
        if not self.ckpt or not os.path.exists(self.ckpt):
            return False
        ck = torch.load(self.ckpt, map_location="cpu")
        if ck["tables"] != [t.name for t in self.plan]:
            raise RunError(f"resume: {self.ckpt} was written for other "
                           f"tables ({ck['tables'][0]}, ...)")
        self.dense.load_state_dict(ck["dense"])
        self.opt.load_state_dict(ck["opt"])
        if self.opt_sparse is not None and ck.get("emb") is not None:
            self.emb.load_state_dict(ck["emb"])
            self.opt_sparse.load_state_dict(ck["opt_sparse"])
        self.state = State(**ck["state"])
        if isinstance(self.emb, RemoteFeatures) and ck.get("remote"):
            # The tables' own entry (address, configs, generation): a
            # mismatch is worth a note, not a stop (a server restored on
            # another port holds the same tables).
            res = self.emb.load_state_dict(ck["remote"], strict=False)
            for k in res.unexpected_keys:
                self.say(f"note: resume: {k}")
        gen = self.state.generation
        self.say(f"resume epoch={self.state.epoch} generation="
                 f"{gen if gen is not None else 'none'} from {self.ckpt}")
        return True

    def save_checkpoint(self) -> None:
        if not self.ckpt or self.rank != 0:
            return
        gen = None
        if self.client is not None:
            try:
                gen = self.client.checkpoint()
            except cqrps.Unsupported:
                if not getattr(self, "_warned_ckpt", False):
                    self._warned_ckpt = True
                    self.say("note: the server keeps no checkpoints (no "
                             "--data-dir): a resumed run needs the same "
                             "server process")
        self.state.generation = gen
        ck = {"tables": [t.name for t in self.plan],
              "dense": self.dense.state_dict(), "opt": self.opt.state_dict(),
              "emb": self.emb.state_dict() if self.opt_sparse else None,
              "remote": self.emb.state_dict()
              if isinstance(self.emb, RemoteFeatures) else None,
              "opt_sparse": self.opt_sparse.state_dict()
              if self.opt_sparse else None,
              "state": self.state.__dict__}
        tmp = self.ckpt + ".tmp"
        torch.save(ck, tmp)
        os.replace(tmp, self.ckpt)

    # -- epochs --

    def batches(self, epoch: int) -> List[np.ndarray]:
        """This rank's row indices of each step of the epoch."""
        n = len(self.data.train)
        if hasattr(self.data.train, "gen"):  # i.i.d. rows: no shuffle
            perm = np.arange(n, dtype=np.int64)
        else:
            perm = np.random.default_rng([self.a.seed, epoch]).permutation(n)
        per = max(1, self.a.batch // self.world)
        share = -(-n // self.world)
        steps = max(1, -(-share // per))
        if self.a.max_steps:
            steps = min(steps, self.a.max_steps)
            perm = perm[:steps * per * self.world]
        mine = perm[self.rank::self.world]
        return np.array_split(mine, steps)

    def counters(self) -> Dict[str, float]:
        if self.client is None or self.rank != 0:
            return {}
        cs = self.client.stats().counters
        return {k: cs.get(k, 0.0) for k in ("op.lookup", "op.push")}

    def train_epoch(self, epoch: int) -> Tuple[float, int, float, int]:
        """(loss sum, examples, seconds, steps) of this rank's share."""
        a = self.a
        self.model.train()
        steps = self.batches(epoch)
        total, seen = 0.0, 0
        t0 = last = time.monotonic()
        # --prefetch (remote tables): the next batch's lookup is sent as
        # soon as this step's push is acknowledged (RemoteFeatures.
        # prefetch), so it runs while the dense optimizer steps and the
        # batch is prepared; every forward still sees the tables after
        # the last push. Off by default: on the 2-core machine it measured
        # 0.92x of the plain loop (its thread and connection compete with
        # the step for the cores).
        remote = isinstance(self.emb, RemoteFeatures)
        ahead = remote and a.prefetch
        hits0 = self.emb.coll.prefetch_hits if remote else 0
        nxt = None  # the next batch, taken early when prefetching
        for s, rows in enumerate(steps):
            b = nxt if nxt is not None else self.data.train.take(rows)
            emb = self.emb(b)
            nxt = None
            if ahead and s + 1 < len(steps):
                nxt = self.data.train.take(steps[s + 1])
                self.emb.prefetch(nxt)
            dense = torch.from_numpy(b.dense) if b.dense is not None else None
            z = self.model(emb, dense)
            y = torch.from_numpy(b.label)
            loss = F.binary_cross_entropy_with_logits(z, y)
            self.opt.zero_grad(set_to_none=True)
            if self.opt_sparse is not None:
                self.opt_sparse.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.opt_sparse is not None:
                self.opt_sparse.step()
            total += float(loss.detach()) * len(b)
            seen += len(b)
            now = time.monotonic()
            if self.rank == 0 and a.progress and now - last >= a.progress \
                    and not a.quiet:
                last = now
                rate = seen * self.world / (now - t0)
                left = (len(steps) - s - 1) * (now - t0) / (s + 1)
                print(f"progress epoch={epoch + 1} step={s + 1}/{len(steps)}"
                      f" examples_per_s={rate:.0f} eta_s={left:.0f}",
                      file=sys.stderr, flush=True)
        if remote:
            self.prefetched = self.emb.coll.prefetch_hits - hits0
        return total, seen, time.monotonic() - t0, len(steps)

    def validate(self) -> Tuple[float, float]:
        """(logloss, AUC) over the validation part (rank 0)."""
        self.model.eval()
        v = self.data.valid
        zs, ys = [], []
        with torch.no_grad():
            for s in range(0, len(v), self.a.val_batch):
                rows = np.arange(s, min(s + self.a.val_batch, len(v)))
                b = v.take(rows)
                dense = torch.from_numpy(b.dense) if b.dense is not None \
                    else None
                zs.append(self.dense(self.emb(b), dense).numpy())
                ys.append(b.label)
        z, y = np.concatenate(zs), np.concatenate(ys)
        return logloss(z, y), auc(z, y)

    def cluster(self, epoch: int) -> Tuple[float, int]:
        """Rank 0: the phases after epoch ``epoch`` (0-based) if due;
        (seconds, pushes replayed). A phase already committed for this
        epoch (a resumed run that died after it) is not run again."""
        cqr = [t for t in self.plan if t.kind == "cqr"]
        if self.client is None or not cqr or epoch >= self.phases:
            return 0.0, 0
        c = self.client
        todo = []
        for t in cqr:
            info = c.describe_table(t.name)
            if info.phase_running:
                c.cluster_wait(t.name, 0, self.a.phase_timeout)
                info = c.describe_table(t.name)
            if info.phases_done < epoch + 1:
                todo.append(t.name)
        t0 = time.monotonic()
        replayed = 0
        for name, st in zip(todo, cluster_tables(
                c, todo, wait=True, timeout=self.a.phase_timeout)):
            replayed += st.replayed_pushes
            self.say(f"cluster epoch={epoch + 1} table={name} "
                     f"phase={st.phase_id} seconds={st.seconds:.3f} "
                     f"inertia={st.inertia:.6g} ids={st.ids_assigned} "
                     f"replayed={st.replayed_pushes}")
        return time.monotonic() - t0, replayed

    def run(self, tsv: Optional[TextIO]) -> State:
        a, st = self.a, self.state
        before = self.counters()
        self.barrier()
        for e in range(st.epoch, a.epochs):
            t_ep = time.monotonic()
            loss, seen, secs, nsteps = self.train_epoch(e)
            sums = torch.tensor([loss, float(seen), secs], dtype=torch.float64)
            if self.world > 1:  # also the barrier: every rank's pushes done
                dist.all_reduce(sums)
            loss, seen = float(sums[0]), int(sums[1])
            train_s = float(sums[2]) / self.world
            if self.rank == 0:
                after = self.counters()
                reqs = sum(after[k] - before.get(k, 0.0) for k in after)
                ll, au = self.validate()
                phase_s, replayed = self.cluster(e)
                st.best_auc, st.best_ll = max(st.best_auc, au), \
                    min(st.best_ll, ll)
                rec = dict(epoch=e + 1, train_loss=loss / max(seen, 1),
                           val_logloss=ll, val_auc=au,
                           examples_per_s=seen / max(train_s, 1e-9),
                           seconds=time.monotonic() - t_ep,
                           phase_seconds=phase_s, replayed=replayed,
                           requests_per_step=reqs / max(nsteps * self.world,
                                                        1))
                st.history.append(rec)
                st.epoch = e + 1
                self.save_checkpoint()
                self.print_epoch(rec, tsv)
                before = self.counters()
            self.barrier()  # rank 0 validated, clustered, checkpointed
        return st

    def print_epoch(self, r: Dict[str, float], tsv: Optional[TextIO]) -> None:
        a = self.a
        gen = self.state.generation
        self.say(f"epoch={r['epoch']}/{a.epochs} "
                 f"train_loss={r['train_loss']:.4f} "
                 f"val_logloss={r['val_logloss']:.4f} "
                 f"val_auc={r['val_auc']:.4f} "
                 f"examples_per_s={r['examples_per_s']:.0f} "
                 f"seconds={r['seconds']:.2f} "
                 f"phase_seconds={r['phase_seconds']:.2f} "
                 f"requests_per_step={r['requests_per_step']:.2f}"
                 + (f" prefetched={self.prefetched}"
                    if self.prefetched is not None else "")
                 + (f" generation={gen}" if gen is not None else ""))
        if tsv is not None:
            kind = f"local-{a.local}" if a.local else a.kind
            tsv.write("\t".join(str(x) for x in (
                self.data.name, kind, a.ppd, a.seed, self.world, a.epochs,
                r["epoch"], f"{r['train_loss']:.6f}",
                f"{r['val_logloss']:.6f}", f"{r['val_auc']:.6f}",
                f"{r['examples_per_s']:.1f}", f"{r['seconds']:.3f}",
                f"{r['phase_seconds']:.3f}",
                f"{r['requests_per_step']:.3f}")) + "\n")
            tsv.flush()


TSV_HEADER = ("data\tkind\tppd\tseed\tworkers\tepochs\tepoch\ttrain_loss\t"
              "val_logloss\tval_auc\texamples_per_s\tseconds\tphase_seconds\t"
              "requests_per_step\n")


def init_dist(rank: int, world: int, timeout_s: float) -> None:
    """gloo process group from MASTER_ADDR/MASTER_PORT (env://)."""
    dist.init_process_group(
        "gloo", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s))


def run_dir_meta(a: Any, prefix: str) -> str:
    """Rank 0: records (or checks) the run's identity in run.json; returns
    the table prefix to use (the recorded one on resume)."""
    os.makedirs(a.run_dir, exist_ok=True)
    path = os.path.join(a.run_dir, "run.json")
    ident = {k: getattr(a, k) for k in
             ("format", "kind", "ppd", "seed", "epochs", "dim", "batch",
              "rows", "vocab")}
    ident["data"] = os.path.abspath(a.data) if a.data else None
    if os.path.exists(path):
        with open(path) as f:
            meta = json.load(f)
        if not a.resume:
            raise RunError(f"{a.run_dir} holds a run already: add --resume "
                           f"to continue it, or use another --run-dir")
        diff = [k for k in ident if meta["ident"].get(k) != ident[k]]
        if diff:
            raise RunError(f"resume: {', '.join(diff)} differ from the run "
                           f"in {a.run_dir}")
        return str(meta["prefix"])
    with open(path + ".tmp", "w") as f:
        json.dump({"ident": ident, "prefix": prefix}, f)
    os.replace(path + ".tmp", path)
    return prefix


# ---- A worker from start to end ----------------------------------------------


def load_data(a: Any, verbose: bool) -> Data:
    t0 = time.monotonic()
    if a.format == "synthetic-ctr":
        d = synthetic(a.rows, a.vocab, a.data_seed, a.zipf)
        how = "generated on the fly"
    else:
        d, cached = load(a.format, a.data, a.valid, a.skip_bad,
                         None if a.no_cache else a.cache_dir)
        how = "from the cache" if cached else "read"
    if verbose:
        tr, va = d.train, d.valid
        pos = ""
        if hasattr(tr, "label"):
            pos = (f" train_pos={float(np.mean(tr.label)):.4f} "
                   f"valid_pos={float(np.mean(va.label)):.4f}")
        print(f"data {d.name} train={len(tr)} valid={len(va)}{pos} "
              f"dense={d.ndense} bad_rows={d.bad_rows} ({how} in "
              f"{time.monotonic() - t0:.2f} s; split: "
              f"{d.notes.get('split', '')})", flush=True)
        print("features " + " ".join(
            f"{f.name}={f.vocab}{'(bag)' if f.bag else ''}"
            for f in d.features), flush=True)
    return d


def run_rank(a: Any, rank: int, world: int,
             prefix: str) -> int:
    """One worker from start to end; raises on failure."""
    torch.set_num_threads(max(1, a.threads))
    if world > 1:
        init_dist(rank, world, a.dist_timeout)
    if rank == 0 and a.run_dir:
        prefix = run_dir_meta(a, prefix)
    if world > 1:
        box = [prefix]
        dist.broadcast_object_list(box, src=0)
        prefix = str(box[0])
        if rank != 0:
            dist.barrier()  # rank 0 fills the cache first
    data = load_data(a, verbose=rank == 0 and not a.quiet)
    if world > 1 and rank == 0:
        dist.barrier()
    w = Worker(a, data, rank, world, prefix)
    ok = False
    try:
        if not a.local:
            w.connect()
        resume = bool(a.resume and w.ckpt and os.path.exists(w.ckpt))
        w.build(resume)
        if resume:
            w.load_checkpoint()
        if rank == 0 and not a.quiet:
            kinds = " ".join(f"{t.feature.name}={t.kind}"
                             + (f"/{t.rows}" if t.rows else "")
                             for t in w.plan)
            print(f"tables prefix={prefix} workers={world} batch={a.batch} "
                  f"{'local=' + a.local if a.local else 'addr=' + a.addr} "
                  f"{kinds}", flush=True)
        tsv = None
        if rank == 0 and a.tsv:
            new = not os.path.exists(a.tsv) or os.path.getsize(a.tsv) == 0
            tsv = open(a.tsv, "a")
            if new:
                tsv.write(TSV_HEADER)
        try:
            st = w.run(tsv)
        finally:
            if tsv:
                tsv.close()
        if rank == 0:
            if w.client is not None:
                memory_report(w.client, w.plan, a.dim, sys.stdout)
            st.done = True
            w.save_checkpoint()
            print(f"best_auc={st.best_auc:.6f} best_logloss="
                  f"{st.best_ll:.6f}", flush=True)
        ok = True
    finally:
        drop = w.client is not None and rank == 0 and not a.keep and \
            (ok or not a.run_dir)
        if world > 1 and ok:
            dist.barrier()
        if drop:
            assert w.client is not None
            for t in w.plan:
                try:
                    w.client.drop_table(t.name)
                except cqrps.Error:
                    pass
        if w.client is not None:
            w.client.close()
    return 0
