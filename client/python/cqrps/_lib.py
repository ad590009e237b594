"""ctypes bindings of libcqrps: finding the library, its structs, its calls.

This module mirrors ``client/include/cqrps.h`` and nothing more: the
Pythonic API is in :mod:`cqrps.client`. Struct layouts here must match the
header field for field; ``tests/python`` checks them against the C
compiler's ``sizeof``/``offsetof``.

Finding the library (first match wins):

1. ``$CQRPS_LIBRARY``: the path of ``libcqrps.so`` (or a directory holding
   it). When set, nothing else is tried, so a wrong path is an error rather
   than a silent fallback to another copy.
2. The copy inside the installed package (``cqrps/libcqrps.so.0``), which
   ``pip install client/python`` ships when the library was built first
   (setup.py says where it looks).
3. ``ctypes.util.find_library("cqrps")`` (the linker cache, ``ldconfig``).
4. ``libcqrps.so.0`` through the dynamic loader (``LD_LIBRARY_PATH``,
   ``/etc/ld.so.conf``; ``cmake --install`` puts it in ``/usr/local/lib``).
5. The build trees of a source checkout next to this package
   (``build/client/libcqrps.so`` and similar), then ``/usr/local/lib``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pathlib
import sys
from ctypes import (
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_double,
    c_float,
    c_int,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import List, Optional

if sys.byteorder != "little":  # the library moves raw little-endian floats
    raise ImportError("cqrps: libcqrps only supports little-endian hosts")

NAME_MAX = 255
"""Longest table name the library accepts, in bytes (CQRPS_NAME_MAX)."""

# ---- Enums (C enums are ints on every ABI the library builds on) ----------

c_enum = c_int

KIND_NAMES = ("full", "hash", "ce", "cqr")
OPTIMIZER_NAMES = ("sgd", "adagrad", "adam")
POOLING_NAMES = ("sum", "mean")
PHASE_STATE_NAMES = ("queued", "running", "done", "failed")

# X(NAME, number, wire status name) of CQRPS_ERRNO_MAP; the code is -number.
ERRORS = (
    ("INVAL", 1, "INVALID_ARGUMENT"),
    ("NOMEM", 2, "NO_MEMORY"),
    ("NOTFOUND", 3, "NOT_FOUND"),
    ("EXIST", 4, "ALREADY_EXISTS"),
    ("DIM", 5, "WRONG_DIM"),
    ("NONFINITE", 6, "NON_FINITE"),
    ("LIMIT", 7, "LIMIT_EXCEEDED"),
    ("BUSY", 8, "BUSY"),
    ("PROTO", 9, "MALFORMED"),
    ("AUTH", 10, "UNAUTHENTICATED"),
    ("PERM", 11, "PERMISSION_DENIED"),
    ("IO", 12, "IO_ERROR"),
    ("CORRUPT", 13, "CORRUPT"),
    ("VERSION", 14, "BAD_VERSION"),
    ("UNSUPPORTED", 15, "UNSUPPORTED"),
    ("TIMEDOUT", 16, "TIMED_OUT"),
    ("CONN", 17, "CONNECTION"),
    ("SHUTDOWN", 18, "SHUTTING_DOWN"),
    ("INTERNAL", 19, "INTERNAL"),
    ("NOPHASE", 20, "NO_SUCH_PHASE"),
    ("CANCELED", 21, "CANCELLED"),
    ("READONLY", 22, "READ_ONLY"),
)

EINVAL = -1
ENOTFOUND = -3
EDIM = -5


# ---- Structs ---------------------------------------------------------------


class Options(Structure):
    """cqrps_options_t."""

    _fields_ = [
        ("connect_timeout_ms", c_uint32),
        ("request_timeout_ms", c_uint32),
        ("token", c_void_p),
        ("token_len", c_size_t),
        ("admin_token", c_void_p),
        ("admin_token_len", c_size_t),
        ("client_name", c_char_p),
        ("reconnect", c_int),
        ("max_batch", c_uint32),
    ]


class ServerInfo(Structure):
    """cqrps_server_info_t."""

    _fields_ = [
        ("server_version", c_char * 64),
        ("protocol_version", c_uint32),
        ("admin", c_int),
        ("max_frame_bytes", c_uint32),
        ("max_batch", c_uint32),
        ("max_parts", c_uint32),
    ]


class Part(Structure):
    """cqrps_part_t: one table's share of a multi-table call."""

    _fields_ = [
        ("table", c_char_p),
        ("ids", c_void_p),
        ("n", c_size_t),
        ("offsets", c_void_p),
        ("nbags", c_size_t),
        ("pooling", c_enum),
        ("out", c_void_p),
        ("grads", c_void_p),
    ]


BF16 = 1
"""CQRPS_BF16: vectors or gradients travel as bfloat16."""


class OptimizerUpdate(Structure):
    """cqrps_optimizer_update_t."""

    _fields_ = [
        ("set", c_uint32),
        ("lr", c_float),
        ("beta1", c_float),
        ("beta2", c_float),
        ("eps", c_float),
        ("weight_decay", c_float),
    ]


#: CQRPS_OPT_* bits of OptimizerUpdate.set, by field name.
OPT_BITS = {"lr": 1, "beta1": 2, "beta2": 4, "eps": 8, "weight_decay": 16}


class TableConfig(Structure):
    """cqrps_table_config_t."""

    _fields_ = [
        ("kind", c_enum),
        ("dim", c_uint32),
        ("chunks", c_uint32),
        ("rows", c_uint32),
        ("seed", c_uint64),
        ("optimizer", c_enum),
        ("lr", c_float),
        ("beta1", c_float),
        ("beta2", c_float),
        ("eps", c_float),
        ("weight_decay", c_float),
        ("schedule_every", c_uint64),
        ("schedule_max_phases", c_uint32),
        ("cluster_iters", c_uint32),
        ("cluster_sample", c_uint32),
        ("reset_optimizer", c_int),
        ("init_scale", c_float),
        ("cluster_tol", c_float),
        ("admit_after", c_uint32),
        ("evict_after_phases", c_uint32),
        ("max_ids", c_uint64),
        ("ttl_seconds", c_uint32),
        ("compact", c_int),
    ]


class TableInfo(Structure):
    """cqrps_table_info_t."""

    _fields_ = [
        ("name", c_char * (NAME_MAX + 1)),
        ("config", TableConfig),
        ("known_ids", c_uint64),
        ("param_bytes", c_uint64),
        ("optimizer_bytes", c_uint64),
        ("index_bytes", c_uint64),
        ("bytes_per_known_id", c_double),
        ("phases_done", c_uint32),
        ("phase_running", c_int),
        ("lookups", c_uint64),
        ("pushes", c_uint64),
        ("examples_pushed", c_uint64),
        ("last_inertia", c_double),
        ("last_phase_seconds", c_double),
        ("ids_admitted", c_uint64),
        ("ids_evicted", c_uint64),
        ("sketch_bytes", c_uint64),
        ("serving_generation", c_uint64),
        ("compacted", c_int),
        ("static_ids", c_uint64),
        ("compacting", c_int),
    ]


class PhaseStatus(Structure):
    """cqrps_phase_status_t."""

    _fields_ = [
        ("phase_id", c_uint64),
        ("state", c_enum),
        ("stage", c_char * 32),
        ("fraction", c_double),
        ("inertia", c_double),
        ("seconds", c_double),
        ("ids_assigned", c_uint64),
        ("replayed_pushes", c_uint64),
        ("error", c_char * 256),
        ("chunk", c_uint32),
        ("chunks", c_uint32),
        ("iter", c_uint32),
        ("iters", c_uint32),
        ("eta_seconds", c_double),
        ("kmeans_iters", c_uint32),
        ("cancelled", c_int),
    ]


class Counter(Structure):
    """cqrps_counter_t."""

    _fields_ = [
        ("name", c_char_p),
        ("value", c_double),
        ("count", c_uint64),
        ("is_count", c_int),
    ]


class Stats(Structure):
    """cqrps_stats_t (release with cqrps_stats_free)."""

    _fields_ = [
        ("server_version", c_char * 64),
        ("uptime_seconds", c_double),
        ("connections", c_uint64),
        ("requests", c_uint64),
        ("errors", c_uint64),
        ("bytes_in", c_uint64),
        ("bytes_out", c_uint64),
        ("tables", POINTER(TableInfo)),
        ("ntables", c_size_t),
        ("counters", POINTER(Counter)),
        ("ncounters", c_size_t),
    ]


class CheckpointInfo(Structure):
    """cqrps_checkpoint_info_t."""

    _fields_ = [
        ("generation", c_uint64),
        ("unix_time", c_uint64),
        ("bytes", c_uint64),
        ("tables", c_uint32),
        ("shard", c_uint32),
    ]


STRUCTS = {
    "cqrps_options_t": Options,
    "cqrps_server_info_t": ServerInfo,
    "cqrps_table_config_t": TableConfig,
    "cqrps_table_info_t": TableInfo,
    "cqrps_phase_status_t": PhaseStatus,
    "cqrps_counter_t": Counter,
    "cqrps_stats_t": Stats,
    "cqrps_checkpoint_info_t": CheckpointInfo,
    "cqrps_part_t": Part,
    "cqrps_optimizer_update_t": OptimizerUpdate,
}
"""C type name -> ctypes mirror, for the layout test."""

EXPORT_PROGRESS = ctypes.CFUNCTYPE(c_int, c_void_p, c_uint64, c_uint64)
"""cqrps_export_progress_fn."""


class ExportOpts(Structure):
    """cqrps_export_opts_t."""

    _fields_ = [("generation", c_uint64), ("since", c_uint64),
                ("dtype", c_char_p), ("progress", c_void_p),
                ("progress_ud", c_void_p)]


class ExportInfo(Structure):
    """cqrps_export_info_t."""

    _fields_ = [("generation", c_uint64), ("base_generation", c_uint64),
                ("bytes", c_uint64), ("ids", c_uint64),
                ("build_seconds", c_double), ("file", c_char * 320)]


STRUCTS["cqrps_export_opts_t"] = ExportOpts
STRUCTS["cqrps_export_info_t"] = ExportInfo


class CompactInfo(Structure):
    """cqrps_compact_info_t."""

    _fields_ = [("moved_ids", c_uint64), ("known_ids", c_uint64),
                ("static_ids", c_uint64), ("index_bytes", c_uint64),
                ("seconds", c_double)]


STRUCTS["cqrps_compact_info_t"] = CompactInfo


# ---- Finding and loading the library -----------------------------------------

_SONAMES = ("libcqrps.so", "libcqrps.so.0")


def _candidates() -> List[str]:
    """Paths or names to try, in order, when $CQRPS_LIBRARY is not set."""
    out: List[str] = []
    here = pathlib.Path(__file__).resolve().parent
    shipped = here / "libcqrps.so.0"
    if shipped.exists():
        out.append(str(shipped))
    found = ctypes.util.find_library("cqrps")
    if found:
        out.append(found)
    out.append("libcqrps.so.0")
    # A source checkout: client/python/cqrps/_lib.py -> the project root.
    root = here.parent.parent.parent
    for build in ("build", "build-client", "build-release", "build-debug"):
        out.append(str(root / build / "client" / "libcqrps.so"))
    out.append("/usr/local/lib/libcqrps.so")
    return out


def _load_env(path: str) -> ctypes.CDLL:
    p = pathlib.Path(path)
    if p.is_dir():
        for name in _SONAMES:
            if (p / name).exists():
                p = p / name
                break
    try:
        return ctypes.CDLL(str(p))
    except OSError as e:
        raise ImportError(
            f"cqrps: cannot load CQRPS_LIBRARY={path!r}: {e}") from e


def load_library() -> ctypes.CDLL:
    """Loads libcqrps as described in the module docstring.

    Raises ImportError naming every place tried when none works.
    """
    env = os.environ.get("CQRPS_LIBRARY")
    if env:
        return _load_env(env)
    tried: List[str] = []
    for cand in _candidates():
        if os.sep in cand and not os.path.exists(cand):
            tried.append(f"{cand} (absent)")
            continue
        try:
            return ctypes.CDLL(cand)
        except OSError as e:
            tried.append(f"{cand} ({e})")
    raise ImportError(
        "cqrps: cannot find libcqrps. Build it (cmake --build build builds "
        "build/client/libcqrps.so), install it, or set CQRPS_LIBRARY to its "
        "path. Tried: " + "; ".join(tried))


def _declare(lib: ctypes.CDLL) -> None:
    """Sets argtypes/restype of every function the package calls."""
    u64p = POINTER(c_uint64)
    u32p = POINTER(c_uint32)
    f32p = POINTER(c_float)
    client = c_void_p
    sigs = {
        "cqrps_strerror": (c_char_p, [c_int]),
        "cqrps_errname": (c_char_p, [c_int]),
        "cqrps_options_init": (None, [POINTER(Options)]),
        "cqrps_connect": (c_int, [c_char_p, POINTER(Options),
                                  POINTER(c_void_p)]),
        "cqrps_close": (None, [client]),
        "cqrps_last_error": (c_char_p, [client]),
        "cqrps_shard_count": (c_uint32, [client]),
        "cqrps_shard_of": (c_uint32, [c_uint64, c_uint32]),
        "cqrps_server_info": (c_int, [client, POINTER(ServerInfo)]),
        "cqrps_table_config_init": (None, [POINTER(TableConfig), c_enum,
                                           c_uint32]),
        "cqrps_create_table": (c_int, [client, c_char_p,
                                       POINTER(TableConfig),
                                       POINTER(TableInfo)]),
        "cqrps_drop_table": (c_int, [client, c_char_p]),
        "cqrps_list_tables": (c_int, [client, POINTER(POINTER(TableInfo)),
                                      POINTER(c_size_t)]),
        "cqrps_table_list_free": (None, [POINTER(TableInfo)]),
        "cqrps_describe_table": (c_int, [client, c_char_p,
                                         POINTER(TableInfo)]),
        "cqrps_table_dim": (c_int, [client, c_char_p, u32p]),
        "cqrps_lookup": (c_int, [client, c_char_p, u64p, c_size_t, f32p]),
        "cqrps_push": (c_int, [client, c_char_p, u64p, f32p, c_size_t]),
        "cqrps_lookup_pooled": (c_int, [client, c_char_p, u64p, c_size_t,
                                        u32p, c_size_t, c_enum, f32p]),
        "cqrps_push_pooled": (c_int, [client, c_char_p, u64p, c_size_t,
                                      u32p, c_size_t, c_enum, f32p]),
        "cqrps_lookup_start": (c_int, [client, c_char_p, u64p, c_size_t,
                                       f32p, u64p]),
        "cqrps_push_start": (c_int, [client, c_char_p, u64p, f32p, c_size_t,
                                     u64p]),
        "cqrps_lookup_pooled_start": (c_int, [client, c_char_p, u64p,
                                              c_size_t, u32p, c_size_t,
                                              c_enum, f32p, u64p]),
        "cqrps_push_pooled_start": (c_int, [client, c_char_p, u64p,
                                            c_size_t, u32p, c_size_t,
                                            c_enum, f32p, u64p]),
        "cqrps_wait": (c_int, [client, c_uint64]),
        "cqrps_lookup_multi": (c_int, [client, POINTER(Part), c_size_t,
                                       c_uint32]),
        "cqrps_push_multi": (c_int, [client, POINTER(Part), c_size_t,
                                     c_uint32]),
        "cqrps_lookup_multi_start": (c_int, [client, POINTER(Part),
                                             c_size_t, c_uint32, u64p]),
        "cqrps_push_multi_start": (c_int, [client, POINTER(Part), c_size_t,
                                           c_uint32, u64p]),
        "cqrps_update_optimizer": (c_int, [client, c_char_p,
                                           POINTER(OptimizerUpdate),
                                           POINTER(TableInfo)]),
        "cqrps_cluster": (c_int, [client, c_char_p, u64p]),
        "cqrps_cluster_status": (c_int, [client, c_char_p, c_uint64,
                                         POINTER(PhaseStatus)]),
        "cqrps_cluster_wait": (c_int, [client, c_char_p, c_uint64, c_uint32,
                                       POINTER(PhaseStatus)]),
        "cqrps_cluster_cancel": (c_int, [client, c_char_p, c_uint64,
                                         POINTER(PhaseStatus)]),
        "cqrps_stats": (c_int, [client, POINTER(Stats)]),
        "cqrps_stats_free": (None, [POINTER(Stats)]),
        "cqrps_digest": (c_int, [client, c_char_p, c_char_p]),
        "cqrps_checkpoint": (c_int, [client, u64p]),
        "cqrps_compact": (c_int, [client, c_char_p, POINTER(CompactInfo)]),
        "cqrps_list_checkpoints": (c_int, [client,
                                           POINTER(POINTER(CheckpointInfo)),
                                           POINTER(c_size_t)]),
        "cqrps_checkpoint_list_free": (None, [POINTER(CheckpointInfo)]),
        "cqrps_export": (c_int, [client, c_char_p, POINTER(ExportOpts),
                                 c_char_p, POINTER(ExportInfo)]),
        # Batch de-duplication (no client); pointers as plain addresses,
        # since cqrps.torch calls them on every step.
        "cqrps_dedup": (c_int, [c_void_p, c_size_t, c_void_p, c_void_p,
                                POINTER(c_size_t), c_void_p, c_size_t]),
        "cqrps_dedup_work_bytes": (c_size_t, [c_size_t]),
        "cqrps_dedup_expand": (c_int, [c_void_p, c_size_t, c_size_t,
                                       c_void_p, c_size_t, c_void_p]),
        "cqrps_dedup_sum": (c_int, [c_void_p, c_size_t, c_size_t, c_void_p,
                                    c_size_t, c_void_p]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


_lib: Optional[ctypes.CDLL] = None


def lib() -> ctypes.CDLL:
    """The loaded, declared library (loaded at the first call)."""
    global _lib
    if _lib is None:
        loaded = load_library()
        _declare(loaded)
        _lib = loaded
    return _lib


def library_path() -> str:
    """The file name the library was loaded from (as given to dlopen)."""
    return str(lib()._name)
