"""cqrps: the Python client of the cqrps embedding parameter server.

A thin layer over the C client library libcqrps (through ctypes), with
numpy arrays in and out::

    import cqrps

    with cqrps.connect("127.0.0.1:7070") as c:
        c.create_table("items", kind="cqr", dim=32, rows=256, lr=1e-3)
        vecs = c.lookup("items", [1, 2, 3])          # (3, 32) float32
        c.push("items", [1, 2, 3], grads)            # server-side optimizer
        c.cluster("items")                           # a cluster phase

``cqrps.torch`` adds PyTorch modules (RemoteEmbedding, RemoteEmbeddingBag)
whose backward pushes gradients to the server.

The C library is found through ``$CQRPS_LIBRARY``, the system's library
search path, or a build tree of the source checkout (see
:mod:`cqrps._lib`). Failures raise :class:`cqrps.Error` subclasses carrying
the library's code and the server's message. A client is used by one
thread at a time: open one per thread.
"""

from __future__ import annotations

from . import _lib
from .client import (CheckpointInfo, Client, Kind, Optimizer, PhaseStatus,
                     Pooling, ServerInfo, Stats, TableConfig, TableInfo,
                     Ticket, as_ids, connect, read_token_file, shard_of,
                     strerror)
from .errors import (AlreadyExists, BadVersion, Busy, Cancelled,
                     ConnectionFailed,
                     Corrupt, Error, Internal, InvalidArgument, LimitExceeded,
                     Malformed, NoMemory, NonFinite, NoSuchPhase, NotFound,
                     PermissionDenied, ReadOnly, ShuttingDown, StorageError,
                     TimedOut,
                     Unauthenticated, Unsupported, WrongDim, from_code)

__version__ = "0.1.0"
PROTOCOL_VERSION = 1


def library_path() -> str:
    """Path (or name) of the libcqrps the package loaded; loads it if needed."""
    return _lib.library_path()


__all__ = [
    "AlreadyExists", "BadVersion", "Busy", "Cancelled", "CheckpointInfo",
    "Client",
    "ConnectionFailed", "Corrupt", "Error", "Internal", "InvalidArgument",
    "Kind", "LimitExceeded", "Malformed", "NoMemory", "NonFinite",
    "NoSuchPhase", "NotFound", "Optimizer", "PROTOCOL_VERSION",
    "PermissionDenied", "PhaseStatus", "Pooling", "ReadOnly", "ServerInfo",
    "ShuttingDown", "Stats", "StorageError", "TableConfig", "TableInfo",
    "Ticket", "TimedOut", "Unauthenticated", "Unsupported", "WrongDim",
    "as_ids", "connect", "from_code", "library_path", "read_token_file",
    "shard_of", "strerror", "__version__",
]
