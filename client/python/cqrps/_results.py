"""The results of cqrps.Client calls: frozen dataclasses mirroring the C
structs of ``cqrps.h`` (kinds, optimizers and states as lower-case
names). Re-exported by :mod:`cqrps.client` and :mod:`cqrps`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Union

import numpy as np

from . import _lib

# ---- Results ---------------------------------------------------------------


def _s(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _f32(x: float) -> float:
    """A C float as the shortest Python float that rounds to it (0.001,
    not 0.0010000000474974513)."""
    return float(str(np.float32(x)))


@dataclass(frozen=True)
class TableConfig:
    """A table's effective configuration (defaults filled by the server)."""

    kind: str                 #: "full", "hash", "ce" or "cqr"
    dim: int                  #: floats per embedding
    chunks: int               #: ce/cqr chunks (divides dim)
    rows: int                 #: rows per codebook (0 for full)
    seed: int                 #: seeds hashing, init and cluster phases
    optimizer: str            #: "sgd", "adagrad" or "adam"
    lr: float                 #: learning rate
    beta1: float              #: Adam
    beta2: float              #: Adam
    eps: float                #: Adam / Adagrad
    weight_decay: float       #: decoupled, applied to touched rows
    schedule_every: int       #: cqr: a phase every N pushed examples (0 off)
    schedule_max_phases: int  #: stop scheduling after this many (0 no limit)
    cluster_iters: int        #: k-means iterations
    cluster_sample: int       #: sample points per centroid
    reset_optimizer: bool     #: zero optimizer state at each phase
    init_scale: float         #: initial values uniform in (-s, s)
    cluster_tol: float        #: k-means relative inertia tolerance (-1: none)
    admit_after: int = 0      #: state of its own at the N-th push (0: first)
    evict_after_phases: int = 0  #: cqr: evict after K phases unpushed (0 off)
    max_ids: int = 0          #: full: at most N rows (0: no limit)
    ttl_seconds: int = 0      #: full: free rows unpushed for T s (0: never)
    compact: bool = False     #: cqr: compact after the first phase

    @classmethod
    def _from_c(cls, c: _lib.TableConfig) -> "TableConfig":
        return cls(
            kind=_lib.KIND_NAMES[c.kind] if 0 <= c.kind < 4 else str(c.kind),
            dim=c.dim, chunks=c.chunks, rows=c.rows, seed=c.seed,
            optimizer=(_lib.OPTIMIZER_NAMES[c.optimizer]
                       if 0 <= c.optimizer < 3 else str(c.optimizer)),
            lr=_f32(c.lr), beta1=_f32(c.beta1), beta2=_f32(c.beta2),
            eps=_f32(c.eps), weight_decay=_f32(c.weight_decay),
            schedule_every=c.schedule_every,
            schedule_max_phases=c.schedule_max_phases,
            cluster_iters=c.cluster_iters, cluster_sample=c.cluster_sample,
            reset_optimizer=c.reset_optimizer == 1,  # CQRPS_ON
            init_scale=_f32(c.init_scale), cluster_tol=_f32(c.cluster_tol),
            admit_after=c.admit_after,
            evict_after_phases=c.evict_after_phases, max_ids=c.max_ids,
            ttl_seconds=c.ttl_seconds, compact=bool(c.compact))


@dataclass(frozen=True)
class TableInfo:
    """A table's config and figures (summed over shards when sharded)."""

    name: str                   #: table name
    config: TableConfig         #: effective config
    known_ids: int              #: IDs that received a gradient
    param_bytes: int            #: codebooks / rows
    optimizer_bytes: int        #: optimizer state
    index_bytes: int            #: known-ID map (pointers)
    bytes_per_known_id: float   #: index_bytes / known_ids
    phases_done: int            #: committed cluster phases
    phase_running: bool         #: a cluster phase runs now
    lookups: int                #: IDs looked up
    pushes: int                 #: IDs pushed
    examples_pushed: int        #: rows of plain pushes + bags
    last_inertia: float         #: k-means inertia of the last phase
    last_phase_seconds: float   #: wall time of the last phase
    ids_admitted: int = 0       #: IDs given state of their own
    ids_evicted: int = 0        #: IDs whose state was freed
    sketch_bytes: int = 0       #: the admission sketch
    serving_generation: int = 0  #: --serve: the export generation served
    compacted: bool = False     #: cqr: compacted (static set of known IDs)
    static_ids: int = 0         #: known IDs in the static set
    compacting: bool = False    #: a compaction runs now

    @property
    def kind(self) -> str:
        """The table's kind (shortcut for ``config.kind``)."""
        return self.config.kind

    @property
    def dim(self) -> int:
        """The table's dim (shortcut for ``config.dim``)."""
        return self.config.dim

    @classmethod
    def _from_c(cls, t: _lib.TableInfo) -> "TableInfo":
        return cls(
            name=_s(t.name), config=TableConfig._from_c(t.config),
            known_ids=t.known_ids, param_bytes=t.param_bytes,
            optimizer_bytes=t.optimizer_bytes, index_bytes=t.index_bytes,
            bytes_per_known_id=t.bytes_per_known_id,
            phases_done=t.phases_done, phase_running=bool(t.phase_running),
            lookups=t.lookups, pushes=t.pushes,
            examples_pushed=t.examples_pushed,
            last_inertia=t.last_inertia,
            last_phase_seconds=t.last_phase_seconds,
            ids_admitted=t.ids_admitted, ids_evicted=t.ids_evicted,
            sketch_bytes=t.sketch_bytes,
            serving_generation=t.serving_generation,
            compacted=bool(t.compacted), static_ids=t.static_ids,
            compacting=bool(t.compacting))


@dataclass(frozen=True)
class PhaseStatus:
    """Status of a cluster phase."""

    phase_id: int         #: the phase reported on
    state: str            #: "queued", "running", "done" or "failed"
    stage: str            #: "kmeans", "assign", ...
    fraction: float       #: progress, 0..1
    inertia: float        #: mean k-means inertia
    seconds: float        #: wall time so far or in total
    ids_assigned: int     #: known IDs given learned pointers
    replayed_pushes: int  #: pushes logged during the phase and replayed
    error: str            #: why a failed phase failed ("" otherwise)
    chunk: int = 0        #: chunk in progress, 1-based (0: none yet)
    chunks: int = 0       #: chunks of the table
    iter: int = 0         #: k-means iterations done in this chunk
    iters: int = 0        #: k-means iterations at most
    eta_seconds: float = -1.0  #: estimated time left (-1: unknown)
    kmeans_iters: int = 0  #: when done: most iterations a chunk used
    cancelled: bool = False  #: failed because it was cancelled

    @property
    def done(self) -> bool:
        """True once the phase committed."""
        return self.state == "done"

    @property
    def failed(self) -> bool:
        """True if the phase failed (see ``error``)."""
        return self.state == "failed"

    @classmethod
    def _from_c(cls, p: _lib.PhaseStatus) -> "PhaseStatus":
        return cls(
            phase_id=p.phase_id,
            state=(_lib.PHASE_STATE_NAMES[p.state]
                   if 0 <= p.state < 4 else str(p.state)),
            stage=_s(p.stage), fraction=p.fraction, inertia=p.inertia,
            seconds=p.seconds, ids_assigned=p.ids_assigned,
            replayed_pushes=p.replayed_pushes, error=_s(p.error),
            chunk=p.chunk, chunks=p.chunks, iter=p.iter, iters=p.iters,
            eta_seconds=p.eta_seconds, kmeans_iters=p.kmeans_iters,
            cancelled=bool(p.cancelled))


@dataclass(frozen=True)
class Stats:
    """Server statistics (summed over shards when sharded)."""

    server_version: str            #: the first shard's version
    uptime_seconds: float          #: since the server started
    connections: int               #: open connections
    requests: int                  #: requests served
    errors: int                    #: error replies sent
    bytes_in: int                  #: bytes received
    bytes_out: int                 #: bytes sent
    tables: List[TableInfo] = field(default_factory=list)  #: by name
    #: by name; whole-number counts are ints, exact
    counters: Dict[str, Union[int, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerInfo:
    """What the server said in Hello (limits: the smallest over shards)."""

    server_version: str    #: e.g. "0.1.0"
    protocol_version: int  #: 1
    admin: bool            #: the admin token was accepted
    max_frame_bytes: int   #: the server's frame limit
    max_batch: int         #: the server's IDs-per-request limit
    max_parts: int = 0     #: table parts per request (0: none)


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint of one shard."""

    generation: int  #: increasing per server
    unix_time: int   #: when it was taken
    bytes: int       #: size on disk
    tables: int      #: tables it holds
    shard: int       #: index of the address it lives on
