"""train_ctr.py's command line: arguments, workers, errors, the summary."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any, List, Optional, Tuple

import multiprocessing as mp

import cqrps

from . import PROG, RunError
from .data import BadData, default_cache_dir
from .readers import FORMATS, load

# torch and the training loop load in the workers only (.train): a parent
# that only starts workers stays light.

#: Exit status of a worker whose error another worker caused.
SECONDARY = 3

LOST = (cqrps.ConnectionFailed, cqrps.TimedOut, cqrps.ShuttingDown)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Trains a DLRM-style CTR model whose embedding tables "
                    "live on cqrps servers, from one or several workers.")
    p.add_argument("--addr", help="server address list (shards), h:p[,h:p]")
    p.add_argument("--data", help="data file or directory")
    p.add_argument("--format", required=True,
                   choices=list(FORMATS) + ["synthetic-ctr"])
    p.add_argument("--valid", help="validation file (replaces the split)")
    p.add_argument("--kind", required=True,
                   choices=["full", "hash", "ce", "cqr"])
    p.add_argument("--ppd", required=True, type=int,
                   help="parameters per dimension per table (the budget)")
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (torch.distributed, gloo)")
    p.add_argument("--batch", type=int, default=1024,
                   help="examples per step over all workers")
    p.add_argument("--tsv", help="append one line per epoch to this file")
    g = p.add_argument_group("synthetic-ctr")
    g.add_argument("--rows", type=int, default=1_000_000)
    g.add_argument("--vocab", type=int, default=1_000_000,
                   help="distinct IDs over the 26 features")
    g.add_argument("--zipf", type=float, default=1.05)
    g.add_argument("--data-seed", type=int, default=0)
    g = p.add_argument_group("model and training")
    g.add_argument("--dim", type=int, default=16)
    g.add_argument("--chunks", type=int, default=0,
                   help="ce/cqr chunks (0: the server's default)")
    g.add_argument("--lr", type=float, default=1e-3, help="MLPs' Adam lr")
    g.add_argument("--emb-lr", type=float, default=0.0,
                   help="the tables' Adam lr (0: the server's default)")
    g.add_argument("--cluster-frac", type=float, default=0.75)
    g.add_argument("--bf16", action="store_true",
                   help="vectors and gradients as bfloat16 on the wire")
    g.add_argument("--prefetch", action="store_true",
                   help="send the next batch's lookup as soon as the "
                        "step's push is acknowledged (same results; "
                        "slower on 2 cores, so off by default)")
    g.add_argument("--init-scale", type=float, default=0.0,
                   help="for experiments: the tables' initial scale (0: "
                        "the server's default, which a user gets)")
    g.add_argument("--reset-optimizer", choices=["on", "off"],
                   help="for experiments: cqr phases reset the optimizer "
                        "state (default: the server's)")
    g.add_argument("--admit-after", type=int, default=0,
                   help="--kind tables: an ID gets state of its own at its "
                        "N-th push (issue 19; default: the server's, 1)")
    g.add_argument("--evict-after-phases", type=int, default=0,
                   help="cqr tables: IDs not pushed for K phases go back to "
                        "their hashed pointers (default 0: never)")
    g.add_argument("--local", choices=["sparse_adam", "adam"],
                   help="baseline: full tables in this process "
                        "(nn.EmbeddingBag; SparseAdam or dense Adam)")
    g = p.add_argument_group("run")
    g.add_argument("--run-dir", help="checkpoints of the dense weights "
                   "(with the servers' checkpoint generation)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir after its last epoch")
    g.add_argument("--skip-bad", action="store_true",
                   help="drop malformed rows (counted) instead of stopping")
    g.add_argument("--cache-dir", default=default_cache_dir())
    g.add_argument("--no-cache", action="store_true")
    g.add_argument("--table-prefix")
    g.add_argument("--keep", action="store_true", help="keep the tables")
    g.add_argument("--max-steps", type=int, default=0,
                   help="at most this many steps per epoch (speed runs)")
    g.add_argument("--val-batch", type=int, default=8192)
    g.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker")
    g.add_argument("--progress", type=float, default=10.0,
                   help="seconds between progress lines (0: none)")
    g.add_argument("--request-timeout", type=float, default=60.0)
    g.add_argument("--phase-timeout", type=float, default=None)
    g.add_argument("--dist-timeout", type=float, default=3600.0)
    g.add_argument("--token-file")
    g.add_argument("--admin-token-file")
    g.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.format == "synthetic-ctr":
        if a.rows < 20 or a.vocab < 52:
            p.error("--rows must be >= 20 and --vocab >= 52")
    elif not a.data:
        p.error(f"--data is required for --format {a.format}")
    if not a.addr and not a.local:
        p.error("--addr is required (or --local for the baseline)")
    if a.epochs < 1 or a.ppd < 1 or a.batch < 1 or a.workers < 1 or \
            a.dim < 1 or a.seed < 0:
        p.error("--epochs, --ppd, --batch, --workers, --dim must be >= 1, "
                "--seed >= 0")
    if a.kind in ("ce", "cqr") and a.ppd < 2:
        p.error("--ppd must be at least 2 for ce and cqr (P/2 rows)")
    if a.batch < a.workers:
        p.error("--batch must be at least --workers")
    if a.local and a.workers > 1:
        p.error("--local runs in one process")
    if a.resume and not a.run_dir:
        p.error("--resume needs --run-dir")
    if not 0.0 <= a.cluster_frac <= 1.0:
        p.error("--cluster-frac must be within [0, 1]")
    return a


def describe_error(a: argparse.Namespace, e: BaseException
                   ) -> Tuple[int, str]:
    """(level, one-line message): level 0 a cause, 1 a consequence of
    another worker's failure, 2 an unexpected error (with traceback)."""
    hint = ""
    if a.run_dir:
        hint = (f"; the run can be resumed: rerun the same command with "
                f"--resume (checkpoints in {a.run_dir})")
    if isinstance(e, LOST):
        return 0, (f"lost the server at {a.addr} ({e.name}: {e.message})"
                   + (hint or "; rerun with --run-dir DIR to be able to "
                      "resume a run"))
    if isinstance(e, cqrps.Error):
        return 0, f"server error {e.name}: {e.message}"
    if isinstance(e, (RunError, BadData, FileNotFoundError)):
        return 0, str(e)
    if isinstance(e, RuntimeError) and world_error(e):
        return 1, f"another worker stopped ({str(e).splitlines()[0]})" + hint
    return 2, "".join(traceback.format_exception(type(e), e,
                                                 e.__traceback__)).rstrip()


def world_error(e: BaseException) -> bool:
    s = str(e)
    return any(k in s for k in ("Gloo", "gloo", "Connection closed by peer",
                                "Connection reset", "Broken pipe",
                                "Timed out", "NCCL"))


def spawned(rank: int, world: int, a: argparse.Namespace, prefix: str,
            errq: Any) -> None:
    """Entry of a worker process started by --workers."""
    try:
        from .train import run_rank
        run_rank(a, rank, world, prefix)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        level, msg = describe_error(a, e)
        errq.put((level, rank, msg))
        sys.exit(SECONDARY if level == 1 else 1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_workers(a: argparse.Namespace, prefix: str) -> int:
    """Starts --workers processes, waits; prints one error if any fails."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    ctx = mp.get_context("spawn")
    errq = ctx.SimpleQueue()
    procs = [ctx.Process(target=spawned, args=(r, a.workers, a, prefix, errq),
                         name=f"ctr-worker-{r}") for r in range(a.workers)]
    for p in procs:
        p.start()
    pids = " ".join(f"{r}:{p.pid}" for r, p in enumerate(procs))
    if not a.quiet:
        print(f"workers {pids}", file=sys.stderr, flush=True)
    if a.run_dir:
        os.makedirs(a.run_dir, exist_ok=True)
        with open(os.path.join(a.run_dir, "workers.txt"), "w") as f:
            f.write(pids + "\n")
    failed_at = None
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(0.2)
            bad = [p for p in procs if p.exitcode not in (None, 0)]
            if bad and failed_at is None:
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > 10:
                for p in procs:  # our own children, by pid
                    if p.is_alive():
                        os.kill(p.pid, signal.SIGTERM)
                for p in procs:
                    p.join(5)
                    if p.is_alive():
                        os.kill(p.pid, signal.SIGKILL)
                        p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.join(10)
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 1
    msgs = []
    while not errq.empty():
        msgs.append(errq.get())
    codes = [p.exitcode for p in procs]
    if all(c == 0 for c in codes):
        return 0
    msgs.sort()
    if msgs and msgs[0][0] != 1:
        level, rank, msg = msgs[0]
        others = sum(1 for m in msgs[1:] if m[2] != msg and m[0] != 1)
        print(f"{PROG}: worker {rank}: {msg}"
              + (f" (and {others} other error(s))" if others else ""),
              file=sys.stderr)
        return 1
    dead = [(r, c) for r, c in enumerate(codes) if c is not None and c < 0]
    hint = (f"; rerun the same command with --resume to continue from the "
            f"last epoch in {a.run_dir}" if a.run_dir else "")
    if dead:
        r, c = dead[0]
        print(f"{PROG}: worker {r} died (signal {-c}){hint}", file=sys.stderr)
    else:
        print(f"{PROG}: workers exited with {codes}"
              + (f": {msgs[0][2]}" if msgs else "") + hint, file=sys.stderr)
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    a = parse_args(argv)
    env_world = int(os.environ.get("WORLD_SIZE", "0") or 0)
    prefix = a.table_prefix or \
        f"ctr-{a.format}-{a.kind}-p{a.ppd}-s{a.seed}-{os.getpid()}"
    try:
        if env_world > 0 and "RANK" in os.environ:  # torchrun
            if a.workers not in (1, env_world):
                print(f"{PROG}: --workers {a.workers} under torchrun with "
                      f"WORLD_SIZE={env_world}: use one or the other",
                      file=sys.stderr)
                return 2
            a.workers = env_world
            rank = int(os.environ["RANK"])
            from .train import run_rank
            if env_world == 1:
                return run_rank(a, 0, 1, prefix)
            try:
                return run_rank(a, rank, env_world, prefix)
            except BaseException as e:  # noqa: BLE001
                level, msg = describe_error(a, e)
                print(f"{PROG}: worker {rank}: {msg}", file=sys.stderr)
                return SECONDARY if level == 1 else 1
        if a.workers > 1:
            if not a.no_cache and a.format != "synthetic-ctr":
                load(a.format, a.data, a.valid, a.skip_bad,
                     a.cache_dir)  # fill the cache once, for every worker
            return spawn_workers(a, prefix)
        from .train import run_rank
        return run_rank(a, 0, 1, prefix)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 1
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, SystemExit):
            raise
        _, msg = describe_error(a, e)
        print(f"{PROG}: {msg}", file=sys.stderr)
        return 1
