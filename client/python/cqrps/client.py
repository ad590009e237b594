"""The cqrps client: tables, lookups and pushes on numpy arrays.

A :class:`Client` wraps one ``cqrps_client_t`` of libcqrps. Arrays cross
into C by pointer with no copy when they already have the library's
layout: IDs as C-contiguous ``np.uint64`` (``np.int64`` is reinterpreted
bit for bit, so negative hashed IDs are fine), vectors as C-contiguous
``np.float32``, bag offsets as ``np.uint32``. Anything else is converted
once (a copy) before the call.

Threads: like the C library, a client is used by one thread at a time.
Open one client per thread (connections are cheap). Calls release the GIL
while they wait for the server, so clients in different threads run in
parallel. Using one client from two threads at once raises RuntimeError
instead of corrupting the connection.
"""

from __future__ import annotations

import ctypes
import os
import stat
import threading
import warnings
from ctypes import POINTER, byref, c_float, c_size_t, c_uint32, c_uint64
from enum import IntEnum
from typing import (Callable, Dict, Iterable, List, Optional, Sequence,
                    Tuple, Union)

import numpy as np

from . import _lib
# The result types live in _results; importable from here as before.
from ._results import (CheckpointInfo, PhaseStatus, ServerInfo, Stats,  # noqa: F401
                       TableConfig, TableInfo, _s)
from .errors import Error, InvalidArgument, from_code

# ---- Enums -----------------------------------------------------------------


class Kind(IntEnum):
    """Table kind (cqrps_kind_t)."""

    FULL = 0  #: one row per ID: a plain parameter server
    HASH = 1  #: hashing trick: one codebook of ``rows`` rows
    CE = 2    #: compositional: two hashed codebooks, chunked
    CQR = 3   #: clustered quotient-remainder (learned pointers)


class Optimizer(IntEnum):
    """Server-side optimizer (cqrps_optimizer_t)."""

    SGD = 0      #: w -= lr * g
    ADAGRAD = 1  #: row-wise Adagrad
    ADAM = 2     #: lazy Adam with decoupled weight decay (AdamW)


class Pooling(IntEnum):
    """Pooling of a bag (cqrps_pooling_t)."""

    SUM = 0
    MEAN = 1


def _enum(cls, value, what: str):
    """An IntEnum member from a member, an int or a case-insensitive name."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            return cls[value.upper()]
        except KeyError:
            pass
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        try:
            return cls(int(value))
        except ValueError:
            pass
    names = ", ".join(m.name.lower() for m in cls)
    raise InvalidArgument(f"{what}: expected one of {names}, got {value!r}")


# ---- Array conversion --------------------------------------------------------

IdsLike = Union[np.ndarray, Sequence[int], Iterable[int]]
Secret = Union[str, bytes, None]


def as_ids(ids: IdsLike) -> np.ndarray:
    """IDs as a C-contiguous np.uint64 array of the same shape.

    No copy for C-contiguous uint64 or int64 input (int64 is reinterpreted
    bit for bit: -1 is 2**64 - 1). Other integer types are converted;
    floats, bools and objects are rejected (InvalidArgument).
    """
    if isinstance(ids, np.ndarray):
        a = ids
    else:
        try:
            a = np.asarray(ids)
        except OverflowError as e:
            raise InvalidArgument(f"ids: {e}") from None
        if a.dtype == object:  # Python ints beyond int64, mixed with others
            try:
                a = np.array([int(x) & 0xFFFFFFFFFFFFFFFF for x in a.ravel()],
                             dtype=np.uint64).reshape(a.shape)
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"ids: {e}") from None
        elif a.size == 0 and a.dtype == np.float64:  # e.g. ids=[]
            a = a.astype(np.uint64)
    if a.dtype == np.uint64:
        return np.ascontiguousarray(a)
    if a.dtype == np.int64:
        return np.ascontiguousarray(a).view(np.uint64)
    if a.dtype.kind in "iu":
        return np.ascontiguousarray(a.astype(np.int64)).view(np.uint64)
    raise InvalidArgument(f"ids: expected integers, got dtype {a.dtype}")


def _as_f32(a, what: str) -> np.ndarray:
    """A C-contiguous float32 array (no copy when it already is one)."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise InvalidArgument(f"{what}: expected numbers, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _as_offsets(offsets, n: int) -> np.ndarray:
    o = np.asarray(offsets)
    if o.ndim != 1 or (o.size and o.dtype.kind not in "iu"):
        raise InvalidArgument("offsets: expected a 1-D array of integers")
    if o.size and (int(o.min()) < 0 or int(o.max()) > n):
        raise InvalidArgument(f"offsets: values must be within [0, {n}]")
    if n > 0xFFFFFFFF:
        raise InvalidArgument("pooled calls take at most 2**32-1 IDs")
    return np.ascontiguousarray(o, dtype=np.uint32)


def _p64(a: np.ndarray):
    return a.ctypes.data_as(POINTER(c_uint64))


def _p32(a: np.ndarray):
    return a.ctypes.data_as(POINTER(c_uint32))


def _pf(a: np.ndarray):
    return a.ctypes.data_as(POINTER(c_float))


def _name(name: str) -> bytes:
    if not isinstance(name, str):
        raise InvalidArgument(f"table name: expected str, got {name!r}")
    b = name.encode("utf-8")
    if not b or len(b) > _lib.NAME_MAX or b"\0" in b:
        raise InvalidArgument(
            f"table name: 1..{_lib.NAME_MAX} bytes without NUL, got {name!r}")
    return b


def _secret(s: Secret, what: str) -> Optional[bytes]:
    if s is None:
        return None
    if isinstance(s, str):
        return s.encode("utf-8")
    if isinstance(s, (bytes, bytearray)):
        return bytes(s)
    raise InvalidArgument(f"{what}: expected str or bytes")


#: Longest token a file or variable may hold (CQRPS_SECRET_MAX).
SECRET_MAX = 4096


def read_token_file(path: str) -> bytes:
    """A token from a file, as every cqrps tool reads it: the file's bytes
    less one trailing newline ("\\n" or "\\r\\n").

    Warns (``UserWarning``) when other users may read the file. Raises
    InvalidArgument for an empty or overlong file or one that is not a
    regular file, OSError when it cannot be read.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"token file '{path}' is not a regular "
                                  "file")
        data = f.read(SECRET_MAX + 3)
    if data.endswith(b"\n"):
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
    if not data:
        raise InvalidArgument(f"token file '{path}' is empty")
    if len(data) > SECRET_MAX:
        raise InvalidArgument(f"token file '{path}' holds more than "
                              f"{SECRET_MAX} bytes")
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        warnings.warn(f"token file '{path}' is accessible by other users "
                      f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it",
                      stacklevel=3)
    return data


def _resolve_secret(value: Secret, path: Optional[str], env: str,
                    what: str) -> Optional[bytes]:
    """The token to send: the value given, else the file, else $env."""
    if value is not None and path is not None:
        raise InvalidArgument(f"give {what} or {what}_file, not both")
    if value is not None:
        return _secret(value, what)
    if path is not None:
        return read_token_file(path)
    v = os.environ.get(env)
    return v.encode("utf-8") if v else None


def _ms(seconds: Optional[float], what: str) -> int:
    """Seconds as the library's milliseconds; None and 0 mean no limit
    (0). A positive time rounds up to at least 1 ms."""
    if seconds is None:
        return 0
    if not seconds >= 0:
        raise InvalidArgument(f"{what}: must be >= 0 seconds or None")
    ms = int(round(seconds * 1000))
    if seconds > 0:
        ms = max(ms, 1)
    return min(ms, 0xFFFFFFFF)


# ---- Asynchronous calls ------------------------------------------------------


class Ticket:
    """A lookup or push in flight (from a ``*_start`` call).

    ``wait()`` returns the lookup's array (or None for a push) and raises
    the call's error. Wait for every ticket, on the client's thread; the
    client keeps the output array alive until then.
    """

    __slots__ = ("_client", "_id", "_out", "_done")

    def __init__(self, client: "Client", tid: int,
                 out: Optional[np.ndarray]) -> None:
        self._client = client
        self._id = tid
        self._out = out
        self._done = False

    def wait(self) -> Optional[np.ndarray]:
        """Waits for every reply; returns the looked-up array or None."""
        if self._done:
            raise InvalidArgument("ticket already waited for")
        self._done = True
        self._client._wait(self._id)
        return self._out


# ---- The client --------------------------------------------------------------


class Client:
    """A connection (or one per shard) to cqrps servers; see :func:`connect`.

    Use it as a context manager or call :meth:`close`. Not for concurrent
    use from several threads (see the module docstring).
    """

    def __init__(self, addrs: str, token: Secret = None, *,
                 admin_token: Secret = None,
                 token_file: Optional[str] = None,
                 admin_token_file: Optional[str] = None,
                 connect_timeout: Optional[float] = 5.0,
                 request_timeout: Optional[float] = 30.0,
                 client_name: Optional[str] = "cqrps-python",
                 reconnect: bool = True,
                 max_batch: Optional[int] = None) -> None:
        if not isinstance(addrs, str):
            addrs = ",".join(addrs)
        self._init_state(addrs)
        self._params = {"connect_timeout": connect_timeout,
                        "request_timeout": request_timeout,
                        "client_name": client_name, "reconnect": reconnect,
                        "max_batch": max_batch}
        # Where the secrets come from, kept so that a copy or an unpickled
        # client can connect again: literals stay in memory only (never in
        # a pickle); files and $CQRPS_TOKEN are read again at each connect.
        self._token = (_secret(token, "token"), token_file)
        self._admin_token = (_secret(admin_token, "admin_token"),
                             admin_token_file)
        self._open()

    def _init_state(self, addrs: str) -> None:
        self._L = _lib.lib()
        self._c: Optional[int] = None
        self._closed = False
        self._pid = os.getpid()  # the process that owns self._c
        self._busy = threading.Lock()
        self._pending: Dict[int, Optional[np.ndarray]] = {}
        self.addrs = addrs

    def _open(self) -> None:
        """Connects with the stored parameters; sets self._c."""
        p = self._params
        opt = _lib.Options()
        self._L.cqrps_options_init(byref(opt))
        if p["connect_timeout"] is not None:  # None: the library's 5 s
            if not p["connect_timeout"] > 0:
                raise InvalidArgument("connect_timeout: must be > 0 seconds")
            opt.connect_timeout_ms = _ms(p["connect_timeout"],
                                         "connect_timeout")
        opt.request_timeout_ms = _ms(p["request_timeout"], "request_timeout")
        tok = _resolve_secret(*self._token, "CQRPS_TOKEN", "token")
        atok = _resolve_secret(*self._admin_token, "CQRPS_ADMIN_TOKEN",
                               "admin_token")
        # The library copies tokens and names during cqrps_connect.
        tbuf = ctypes.create_string_buffer(tok, len(tok)) if tok else None
        abuf = ctypes.create_string_buffer(atok, len(atok)) if atok else None
        if tbuf is not None:
            opt.token = ctypes.cast(tbuf, ctypes.c_void_p)
            opt.token_len = len(tok)
        if abuf is not None:
            opt.admin_token = ctypes.cast(abuf, ctypes.c_void_p)
            opt.admin_token_len = len(atok)
        if p["client_name"]:
            opt.client_name = p["client_name"].encode("utf-8")
        opt.reconnect = 1 if p["reconnect"] else 0
        if p["max_batch"] is not None:
            if not 0 < p["max_batch"] <= 0xFFFFFFFF:
                raise InvalidArgument("max_batch: 1 .. 2**32-1")
            opt.max_batch = p["max_batch"]
        handle = ctypes.c_void_p()
        rc = self._L.cqrps_connect(self.addrs.encode("utf-8"), byref(opt),
                                   byref(handle))
        if rc != 0:
            msg = self._L.cqrps_last_error(None) or b""
            raise from_code(rc, _s(msg))
        self._c = handle.value
        self._pid = os.getpid()

    # -- copies, pickles and forks --
    #
    # A client is a connection, which cannot cross a process boundary. A
    # copy or an unpickled client holds the connection parameters and
    # connects at its first call ("lazily"), so modules that hold a client
    # survive torch.save / torch.load, copy.deepcopy, mp.spawn and
    # DataLoader workers. A client used in a forked child (fork start
    # method) drops the parent's sockets there and connects anew.

    def __getstate__(self) -> dict:
        # Literal tokens are not written into pickles (which end up in
        # model files): the unpickled client reads token_file again, or
        # $CQRPS_TOKEN / $CQRPS_ADMIN_TOKEN.
        return {"addrs": self.addrs, "params": dict(self._params),
                "token_file": self._token[1],
                "admin_token_file": self._admin_token[1],
                "closed": self._closed}

    def __setstate__(self, state: dict) -> None:
        self._init_state(state["addrs"])
        self._params = dict(state["params"])
        self._token = (None, state["token_file"])
        self._admin_token = (None, state["admin_token_file"])
        self._closed = bool(state["closed"])

    def __deepcopy__(self, memo: dict) -> "Client":
        new = Client.__new__(Client)
        new.__setstate__(self.__getstate__())
        new._token = self._token  # in memory: literals may come along
        new._admin_token = self._admin_token
        return new

    def __copy__(self) -> "Client":
        return self.__deepcopy__({})

    # -- plumbing --

    def _handle(self) -> int:
        if self._c is None or self._pid != os.getpid():
            if self._closed:
                raise Error("client is closed", code=_lib.EINVAL,
                            name="INVALID_ARGUMENT")
            if self._c is not None:
                # Inherited through fork: the descriptors are copies of
                # the parent's. Closing them here leaves the parent's
                # connection alone (no shutdown is sent).
                self._L.cqrps_close(self._c)
                self._c = None
                self._pending.clear()
            self._open()
        assert self._c is not None
        return self._c

    def _call(self, fn, *args) -> None:
        """Calls fn(handle, *args) under the one-thread guard; raises on
        a negative result with the library's last error message."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                "cqrps.Client used from two threads at once; open one "
                "client per thread")
        try:
            h = self._handle()
            rc = fn(h, *args)
            if rc != 0:
                raise from_code(rc, _s(self._L.cqrps_last_error(h) or b""))
        finally:
            self._busy.release()

    def _dim(self, name: str) -> int:
        # Always ask the library: it caches the dim per client (no round
        # trip) and sizes replies by that same cache, so an output buffer
        # sized here can never be smaller than what it writes, even after
        # the table was dropped and created again with another dim.
        return self.table_dim(name)

    # -- lifecycle --

    def close(self) -> None:
        """Closes every connection; in-flight tickets are dropped. Idempotent."""
        with self._busy:
            self._closed = True
            if self._c is not None:
                self._L.cqrps_close(self._c)
                self._c = None
                self._pending.clear()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def connected(self) -> bool:
        """True while this process holds the connections (a copy or an
        unpickled client connects at its first call)."""
        return self._c is not None and self._pid == os.getpid()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        c = getattr(self, "_c", None)
        if c is not None:
            try:
                self._L.cqrps_close(c)
            except Exception:  # interpreter shutdown
                pass
            self._c = None

    def __repr__(self) -> str:
        state = ("closed" if self._closed else
                 "open" if self.connected else "not connected")
        return f"<cqrps.Client {self.addrs!r} {state}>"

    # -- server --

    @property
    def shard_count(self) -> int:
        """Number of shards (addresses) of this client."""
        return int(self._L.cqrps_shard_count(self._handle()))

    def server_info(self) -> ServerInfo:
        """What the (first) server said in Hello."""
        si = _lib.ServerInfo()
        self._call(self._L.cqrps_server_info, byref(si))
        return ServerInfo(_s(si.server_version), si.protocol_version,
                          bool(si.admin), si.max_frame_bytes, si.max_batch,
                          si.max_parts)

    def stats(self) -> Stats:
        """Server statistics, with every table's figures and counters."""
        st = _lib.Stats()
        try:
            self._call(self._L.cqrps_stats, byref(st))
            tables = [TableInfo._from_c(st.tables[i])
                      for i in range(st.ntables)]
            # Counts are exact Python ints (doubles stop at 2^53).
            counters = {_s(k.name or b""): k.count if k.is_count else k.value
                        for k in (st.counters[i] for i in range(st.ncounters))}
            return Stats(_s(st.server_version), st.uptime_seconds,
                         st.connections, st.requests, st.errors, st.bytes_in,
                         st.bytes_out, tables, counters)
        finally:
            self._L.cqrps_stats_free(byref(st))

    # -- tables --

    def create_table(self, name: str, *, kind: Union[str, Kind],
                     dim: int, chunks: int = 0, rows: int = 0,
                     seed: int = 0,
                     optimizer: Union[str, Optimizer] = "adam",
                     lr: float = 0.0, beta1: float = 0.0, beta2: float = 0.0,
                     eps: float = 0.0, weight_decay: float = 0.0,
                     schedule_every: int = 0, schedule_max_phases: int = 0,
                     cluster_iters: int = 0, cluster_sample: int = 0,
                     reset_optimizer: Optional[bool] = None,
                     init_scale: float = 0.0,
                     cluster_tol: Optional[float] = None,
                     admit_after: int = 0, evict_after_phases: int = 0,
                     max_ids: int = 0, ttl_seconds: int = 0,
                     compact: bool = False) -> TableInfo:
        """Creates a table on every shard; returns its effective config.

        Every field of ``cqrps_table_config_t`` is a keyword; 0 (or None)
        asks for the server's default (chunks 4, rows 1024, lr 0.01 SGD /
        0.1 Adagrad / 0.001 Adam, betas 0.9/0.999, eps 1e-8, at most 25
        k-means iterations with tolerance 1e-3, 200 samples per centroid;
        the init scale and whether cqr phases reset the optimizer state:
        the README's "Defaults").
        ``reset_optimizer=False`` keeps the optimizer state across phases
        (the published code's behaviour); ``cluster_tol=0`` runs every
        k-means iteration. Memory per ID (0 = off): ``admit_after=N``
        (full, cqr) gives an ID state of its own only at its N-th push;
        ``evict_after_phases=K`` (cqr) drops the learned pointers of IDs
        not pushed during the last K phases; ``max_ids=N`` and
        ``ttl_seconds=T`` (full) free rows beyond N (least recently pushed
        of a sample) or not pushed for T seconds. ``compact=True`` (cqr
        without eviction) compacts the table once its first phase commits
        (see :meth:`compact`). Raises AlreadyExists if the table exists,
        InvalidArgument for a bad config.
        """
        if not (isinstance(dim, (int, np.integer)) and 0 < dim <= 0xFFFFFFFF):
            raise InvalidArgument(f"dim: expected a positive int, got {dim!r}")
        cfg = _lib.TableConfig()
        self._L.cqrps_table_config_init(byref(cfg),
                                        _enum(Kind, kind, "kind"), int(dim))
        cfg.optimizer = _enum(Optimizer, optimizer, "optimizer")
        ints = {"chunks": chunks, "rows": rows,
                "schedule_max_phases": schedule_max_phases,
                "cluster_iters": cluster_iters,
                "cluster_sample": cluster_sample,
                "admit_after": admit_after,
                "evict_after_phases": evict_after_phases,
                "ttl_seconds": ttl_seconds}
        for k, v in ints.items():
            if not 0 <= int(v) <= 0xFFFFFFFF:
                raise InvalidArgument(f"{k}: expected 0 .. 2**32-1")
            setattr(cfg, k, int(v))
        for k, v in {"seed": seed, "schedule_every": schedule_every,
                     "max_ids": max_ids}.items():
            if not 0 <= int(v) <= 0xFFFFFFFFFFFFFFFF:
                raise InvalidArgument(f"{k}: expected 0 .. 2**64-1")
            setattr(cfg, k, int(v))
        cfg.lr = float(lr)
        cfg.beta1 = float(beta1)
        cfg.beta2 = float(beta2)
        cfg.eps = float(eps)
        cfg.weight_decay = float(weight_decay)
        # CQRPS_DEFAULT / CQRPS_ON / CQRPS_OFF
        cfg.reset_optimizer = (0 if reset_optimizer is None
                               else 1 if reset_optimizer else 2)
        cfg.init_scale = float(init_scale)
        cfg.compact = 1 if compact else 0
        if cluster_tol is not None:
            if not 0 <= float(cluster_tol) < 1:
                raise InvalidArgument("cluster_tol: expected 0 <= tol < 1")
            # 0 means every iteration here; on the wire that is < 0.
            cfg.cluster_tol = float(cluster_tol) if cluster_tol else -1.0
        info = _lib.TableInfo()
        self._call(self._L.cqrps_create_table, _name(name), byref(cfg),
                   byref(info))
        return TableInfo._from_c(info)

    def drop_table(self, name: str) -> None:
        """Drops a table on every shard. NotFound if it does not exist."""
        self._call(self._L.cqrps_drop_table, _name(name))

    def list_tables(self) -> List[TableInfo]:
        """Every table, sorted by name."""
        arr = POINTER(_lib.TableInfo)()
        n = c_size_t()
        self._call(self._L.cqrps_list_tables, byref(arr), byref(n))
        try:
            return [TableInfo._from_c(arr[i]) for i in range(n.value)]
        finally:
            self._L.cqrps_table_list_free(arr)

    def describe_table(self, name: str) -> TableInfo:
        """One table's config and figures. NotFound if it does not exist."""
        info = _lib.TableInfo()
        self._call(self._L.cqrps_describe_table, _name(name), byref(info))
        return TableInfo._from_c(info)

    def table_dim(self, name: str) -> int:
        """The table's dim (cached by the library after the first call)."""
        d = c_uint32()
        self._call(self._L.cqrps_table_dim, _name(name), byref(d))
        return d.value

    # -- lookups and pushes --

    def _out(self, out: Optional[np.ndarray], shape: Tuple[int, ...]
             ) -> np.ndarray:
        if out is None:
            return np.empty(shape, dtype=np.float32)
        if (not isinstance(out, np.ndarray) or out.dtype != np.float32
                or not out.flags.c_contiguous or not out.flags.writeable
                or out.size != int(np.prod(shape))):
            raise InvalidArgument(
                f"out: expected a writable C-contiguous float32 array of "
                f"{int(np.prod(shape))} elements (shape {shape})")
        return out

    def _grads(self, grads, n: int, dim: int) -> np.ndarray:
        g = _as_f32(grads, "grads")
        if g.size != n * dim:
            raise InvalidArgument(
                f"grads: expected {n} x {dim} floats, got shape {g.shape}")
        return g

    def lookup(self, name: str, ids: IdsLike,
               out: Optional[np.ndarray] = None) -> np.ndarray:
        """Embeddings of ``ids``: float32 of shape ``ids.shape + (dim,)``
        ((n, dim) for a 1-D list).

        ``out`` (optional) is filled in place and returned: a writable
        C-contiguous float32 array with as many elements.
        """
        bname = _name(name)
        a = as_ids(ids)
        dim = self._dim(name)
        res = self._out(out, a.shape + (dim,))
        self._call(self._L.cqrps_lookup, bname, _p64(a), a.size, _pf(res))
        return res

    def push(self, name: str, ids: IdsLike, grads) -> None:
        """Pushes one gradient row per ID (``grads``: ``ids.shape +
        (dim,)`` or (n, dim) floats). The server's optimizer applies it;
        gradients of the same row within one push are summed first.
        NonFinite if a gradient holds NaN or Inf.
        """
        bname = _name(name)
        a = as_ids(ids)
        g = self._grads(grads, a.size, self._dim(name))
        self._call(self._L.cqrps_push, bname, _p64(a), _pf(g), a.size)

    def lookup_pooled(self, name: str, ids: IdsLike, offsets,
                      pooling: Union[str, Pooling] = "sum",
                      out: Optional[np.ndarray] = None) -> np.ndarray:
        """Pooled (embedding-bag) lookup: (nbags, dim) float32.

        Bag b is ``ids[offsets[b]:offsets[b+1]]`` and the last bag runs to
        the end (as ``torch.nn.EmbeddingBag`` with include_last_offset
        False); offsets[0] must be 0 and offsets must not decrease. An
        empty bag gives zeros. ``pooling`` is "sum" or "mean".
        """
        bname = _name(name)
        a = as_ids(ids).ravel()
        o = _as_offsets(offsets, a.size)
        pool = _enum(Pooling, pooling, "pooling")
        res = self._out(out, (o.size, self._dim(name)))
        self._call(self._L.cqrps_lookup_pooled, bname, _p64(a), a.size,
                   _p32(o), o.size, pool, _pf(res))
        return res

    def push_pooled(self, name: str, ids: IdsLike, offsets, grads,
                    pooling: Union[str, Pooling] = "sum") -> None:
        """Pushes (nbags, dim) gradients of pooled outputs: every ID of bag
        b receives g_b ("sum") or g_b / len(bag) ("mean")."""
        bname = _name(name)
        a = as_ids(ids).ravel()
        o = _as_offsets(offsets, a.size)
        pool = _enum(Pooling, pooling, "pooling")
        g = self._grads(grads, o.size, self._dim(name))
        self._call(self._L.cqrps_push_pooled, bname, _p64(a), a.size,
                   _p32(o), o.size, pool, _pf(g))

    # -- several tables in one request --

    # FIRST VERSION of lookup_many / push_many: libcqrps still sends one
    # request per part (tests that count requests skip until it is True).
    _MULTI_PART_REQUESTS = False

    def _part(self, p, push: bool, keep: list) -> Tuple[_lib.Part, int,
                                                        Tuple[int, ...]]:
        """One cqrps_part_t from a tuple; the arrays it points to are
        appended to ``keep``. Returns the part, its table's dim and the
        shape of its rows (without dim)."""
        if not isinstance(p, (tuple, list)):
            raise InvalidArgument(f"part: expected a tuple, got {p!r}")
        k = len(p)
        if push and k not in (3, 5) or not push and k not in (2, 4):
            want = ("(table, ids, grads) or (table, ids, grads, offsets, "
                    "pooling)" if push else
                    "(table, ids) or (table, ids, offsets, pooling)")
            raise InvalidArgument(f"part: expected {want}, got {k} items")
        name = p[0]
        bname = _name(name)
        offs = p[3] if push and k == 5 else (p[2] if not push and k == 4
                                              else None)
        c = _lib.Part()
        c.table = bname
        a = as_ids(p[1])
        if offs is None:
            shape = a.shape
        else:
            a = a.ravel()
            o = _as_offsets(offs, a.size)
            keep.append(o)
            c.offsets = o.ctypes.data
            c.nbags = o.size
            c.pooling = _enum(Pooling, p[4] if push else p[3], "pooling")
            shape = (o.size,)
        keep.append(bname)
        keep.append(a)
        c.ids = a.ctypes.data
        c.n = a.size
        return c, self._dim(name), shape

    def lookup_many(self, parts, bf16: bool = False,
                    out: Optional[Sequence[np.ndarray]] = None
                    ) -> List[np.ndarray]:
        """Looks up several tables in one request per shard.

        ``parts``: ``(table, ids)`` (plain: one row per ID) or ``(table,
        ids, offsets, pooling)`` tuples (pooled as :meth:`lookup_pooled`;
        ``offsets`` None means plain). Returns one float32 array per part,
        in part order, shaped as :meth:`lookup` / :meth:`lookup_pooled`
        shape theirs, bit for bit what they return. ``bf16``: the vectors
        travel as bfloat16 (half the bytes) and come back rounded to it.
        ``out`` (optional): one array per part to fill in place, as
        :meth:`lookup`'s ``out``.
        """
        parts = list(parts)
        if out is not None and len(out) != len(parts):
            raise InvalidArgument(f"out: expected {len(parts)} arrays, got "
                                  f"{len(out)}")
        arr = (_lib.Part * max(len(parts), 1))()
        keep: list = []
        res: List[np.ndarray] = []
        for i, p in enumerate(parts):
            if isinstance(p, (tuple, list)) and len(p) == 4 and p[2] is None:
                p = p[:2]
            c, dim, shape = self._part(p, False, keep)
            r = self._out(out[i] if out is not None else None, shape + (dim,))
            c.out = r.ctypes.data
            arr[i] = c
            res.append(r)
        self._call(self._L.cqrps_lookup_multi, arr, len(parts),
                   _lib.BF16 if bf16 else 0)
        return res

    def push_many(self, parts, bf16: bool = False) -> None:
        """Pushes to several tables in one request per shard.

        ``parts``: ``(table, ids, grads)`` or ``(table, ids, grads,
        offsets, pooling)`` tuples (``offsets`` None means plain), with
        the gradients :meth:`push` / :meth:`push_pooled` take. Applied as
        those calls one after the other would be; a request the server
        refuses (any bad part: its index is in the message) applies
        nothing of any part. ``bf16``: the gradients travel as bfloat16
        (rounded to nearest even).
        """
        parts = list(parts)
        arr = (_lib.Part * max(len(parts), 1))()
        keep: list = []
        for i, p in enumerate(parts):
            if isinstance(p, (tuple, list)) and len(p) == 5 and p[3] is None:
                p = p[:3]
            c, dim, shape = self._part(p, True, keep)
            rows = int(np.prod(shape)) if len(shape) else 1
            g = self._grads(p[2], rows, dim)
            keep.append(g)
            c.grads = g.ctypes.data
            arr[i] = c
        self._call(self._L.cqrps_push_multi, arr, len(parts),
                   _lib.BF16 if bf16 else 0)

    def update_optimizer(self, table: str, lr: Optional[float] = None,
                         beta1: Optional[float] = None,
                         beta2: Optional[float] = None,
                         eps: Optional[float] = None,
                         weight_decay: Optional[float] = None) -> None:
        """Changes hyperparameters of a table's optimizer while it trains
        (what an LR scheduler does); None leaves a value as it is. The
        optimizer's kind and state stay; pushes after the call use the new
        values; describe shows them and checkpoints keep them.
        InvalidArgument for a value out of range (nothing changes)."""
        u = _lib.OptimizerUpdate()
        for key, v in (("lr", lr), ("beta1", beta1), ("beta2", beta2),
                       ("eps", eps), ("weight_decay", weight_decay)):
            if v is None:
                continue
            try:
                setattr(u, key, float(v))
            except (TypeError, ValueError):
                raise InvalidArgument(f"{key}: expected a number, got "
                                      f"{v!r}") from None
            u.set |= _lib.OPT_BITS[key]
        self._call(self._L.cqrps_update_optimizer, _name(table), byref(u),
                   None)

    # -- asynchronous variants --

    def _start(self, fn, out: Optional[np.ndarray], *args) -> Ticket:
        t = c_uint64()
        self._call(fn, *args, byref(t))
        self._pending[t.value] = out  # keeps `out` alive until waited
        return Ticket(self, t.value, out)

    def _wait(self, tid: int) -> None:
        if tid not in self._pending:
            raise InvalidArgument("unknown ticket (client closed?)")
        try:
            self._call(self._L.cqrps_wait, tid)
        finally:
            self._pending.pop(tid, None)

    def lookup_start(self, name: str, ids: IdsLike,
                     out: Optional[np.ndarray] = None) -> Ticket:
        """Sends a lookup and returns at once; ``ticket.wait()`` returns
        the array. Overlaps several requests or the caller's own work."""
        bname = _name(name)
        a = as_ids(ids)
        res = self._out(out, a.shape + (self._dim(name),))
        return self._start(self._L.cqrps_lookup_start, res, bname, _p64(a),
                           a.size, _pf(res))

    def push_start(self, name: str, ids: IdsLike, grads) -> Ticket:
        """Sends a push and returns at once; ``ticket.wait()`` returns
        None once the server acknowledged it (or raises its error)."""
        bname = _name(name)
        a = as_ids(ids)
        g = self._grads(grads, a.size, self._dim(name))
        return self._start(self._L.cqrps_push_start, None, bname, _p64(a),
                           _pf(g), a.size)

    def lookup_pooled_start(self, name: str, ids: IdsLike, offsets,
                            pooling: Union[str, Pooling] = "sum",
                            out: Optional[np.ndarray] = None) -> Ticket:
        """Asynchronous :meth:`lookup_pooled`."""
        bname = _name(name)
        a = as_ids(ids).ravel()
        o = _as_offsets(offsets, a.size)
        pool = _enum(Pooling, pooling, "pooling")
        res = self._out(out, (o.size, self._dim(name)))
        return self._start(self._L.cqrps_lookup_pooled_start, res, bname,
                           _p64(a), a.size, _p32(o), o.size, pool, _pf(res))

    def push_pooled_start(self, name: str, ids: IdsLike, offsets, grads,
                          pooling: Union[str, Pooling] = "sum") -> Ticket:
        """Asynchronous :meth:`push_pooled`."""
        bname = _name(name)
        a = as_ids(ids).ravel()
        o = _as_offsets(offsets, a.size)
        pool = _enum(Pooling, pooling, "pooling")
        g = self._grads(grads, o.size, self._dim(name))
        return self._start(self._L.cqrps_push_pooled_start, None, bname,
                           _p64(a), a.size, _p32(o), o.size, pool, _pf(g))

    # -- cluster phases --

    def cluster(self, name: str, wait: bool = True,
                timeout: Optional[float] = None) -> PhaseStatus:
        """Runs a cluster-and-rehash phase on a cqr table.

        With ``wait`` (the default) returns the final status once the
        phase is done; a failed phase raises Internal with its reason and
        ``timeout`` seconds without an end raise TimedOut (the phase goes
        on). Without ``wait`` returns the status right after the start.
        Unsupported for other kinds, Busy if a phase already runs.
        """
        bname = _name(name)
        pid = c_uint64()
        self._call(self._L.cqrps_cluster, bname, byref(pid))
        if wait:
            return self.cluster_wait(name, pid.value, timeout)
        return self.cluster_status(name, pid.value)

    def cluster_status(self, name: str, phase_id: int = 0) -> PhaseStatus:
        """Status of a phase (phase_id 0: the latest). NoSuchPhase if none."""
        st = _lib.PhaseStatus()
        self._call(self._L.cqrps_cluster_status, _name(name), int(phase_id),
                   byref(st))
        return PhaseStatus._from_c(st)

    def cluster_wait(self, name: str, phase_id: int = 0,
                     timeout: Optional[float] = None) -> PhaseStatus:
        """Waits for a phase to end (polling 10 ms .. 500 ms); see
        :meth:`cluster` for errors (a cancelled phase raises Cancelled).
        ``timeout`` None waits forever."""
        st = _lib.PhaseStatus()
        self._call(self._L.cqrps_cluster_wait, _name(name), int(phase_id),
                   _ms(timeout, "timeout"), byref(st))
        return PhaseStatus._from_c(st)

    def cluster_cancel(self, name: str, phase_id: int = 0) -> PhaseStatus:
        """Cancels the table's queued or running phase (phase_id 0: whichever
        it is): the table keeps its state as if the phase never ran, and
        pushes made meanwhile stay applied. Returns the phase's status when
        the server took the request; a running phase ends within about a
        second (``cluster_wait`` then raises Cancelled). NoSuchPhase if
        nothing is queued or running."""
        st = _lib.PhaseStatus()
        self._call(self._L.cqrps_cluster_cancel, _name(name), int(phase_id),
                   byref(st))
        return PhaseStatus._from_c(st)

    # -- state --

    def digest(self, name: str) -> str:
        """The table's state digest (16 hex digits): equal digests mean
        equal tables."""
        buf = ctypes.create_string_buffer(17)
        self._call(self._L.cqrps_digest, _name(name), buf)
        return _s(buf.value)

    def export(self, table: str, out: str, since: int = 0,
               generation: int = 0, dtype: str = "f32",
               progress: Optional[Callable[[int, int], object]] = None
               ) -> dict:
        """Writes a serving export of `table` at a checkpoint generation
        (0: the newest; with `since`, the delta from that generation) to
        the local file `out` (read it with cqrps.serving.load). Needs a
        server with --data-dir and admin rights. `progress(done, total)`,
        if given, is called after each fetched chunk (bytes); a true
        return stops the fetch (Cancelled, no file is left). Returns the
        export's figures (generation, base_generation, bytes, ids,
        build_seconds)."""
        opts = _lib.ExportOpts(generation, since, dtype.encode())
        if progress is not None:
            def _progress(_ud, done, total):
                return 1 if progress(int(done), int(total)) else 0
            cb = _lib.EXPORT_PROGRESS(_progress)
            opts.progress = ctypes.cast(cb, ctypes.c_void_p)
        info = _lib.ExportInfo()
        self._call(self._L.cqrps_export, table.encode(), byref(opts),
                   str(out).encode(), byref(info))
        return {"generation": info.generation,
                "base_generation": info.base_generation,
                "bytes": info.bytes, "ids": info.ids,
                "build_seconds": info.build_seconds,
                "file": info.file.decode()}

    def compact(self, table: str) -> dict:
        """Compacts a cqr table: its known IDs move from the map (about
        20 bytes an ID) into a static set (about 9 bytes an ID); lookups
        of known IDs and the digest stay as they were. The server runs it
        on a thread of its own and keeps serving lookups and pushes; this
        call returns when it is done (it waits without the request
        timeout). Needs admin rights. Unsupported for other kinds and
        tables with eviction, Busy while a phase or a compaction of the
        table runs. Sharded: every shard, the counts summed, seconds the
        longest. Returns moved_ids, known_ids, static_ids, index_bytes
        and seconds."""
        info = _lib.CompactInfo()
        self._call(self._L.cqrps_compact, _name(table), byref(info))
        return {"moved_ids": info.moved_ids, "known_ids": info.known_ids,
                "static_ids": info.static_ids,
                "index_bytes": info.index_bytes, "seconds": info.seconds}

    def checkpoint(self) -> int:
        """Takes a checkpoint on every shard; returns the first shard's
        generation. Unsupported on servers without persistence."""
        gen = c_uint64()
        self._call(self._L.cqrps_checkpoint, byref(gen))
        return gen.value

    def list_checkpoints(self) -> List[CheckpointInfo]:
        """Checkpoints of every shard, in shard order."""
        arr = POINTER(_lib.CheckpointInfo)()
        n = c_size_t()
        self._call(self._L.cqrps_list_checkpoints, byref(arr), byref(n))
        try:
            return [CheckpointInfo(arr[i].generation, arr[i].unix_time,
                                   arr[i].bytes, arr[i].tables, arr[i].shard)
                    for i in range(n.value)]
        finally:
            self._L.cqrps_checkpoint_list_free(arr)


def connect(addrs: Union[str, Sequence[str]], token: Secret = None, *,
            admin_token: Secret = None,
            token_file: Optional[str] = None,
            admin_token_file: Optional[str] = None,
            connect_timeout: Optional[float] = 5.0,
            request_timeout: Optional[float] = 30.0,
            client_name: Optional[str] = "cqrps-python",
            reconnect: bool = True,
            max_batch: Optional[int] = None) -> Client:
    """Connects to a cqrps server, or to a sharded deployment.

    Args:
        addrs: "host:port", or several comma-separated (or a list): one
            shard per address; every client must list them in the same
            order.
        token: shared secret sent in Hello (str or bytes), if the server
            requires one. Without it (and without token_file) the
            ``CQRPS_TOKEN`` environment variable is used when set.
        admin_token: admin secret, needed for drop, cluster and
            checkpoint on servers that set one; else ``admin_token_file``,
            else ``CQRPS_ADMIN_TOKEN``.
        token_file, admin_token_file: read the token from this file
            instead (:func:`read_token_file`: one trailing newline is
            stripped). Prefer files or the environment to literals, which
            end up in scripts and command lines.
        connect_timeout: seconds per address (None: the library's 5 s).
        request_timeout: longest silence of a server while a call waits
            for it, in seconds; None or 0 waits forever.
        client_name: shown in the server's logs.
        reconnect: reconnect once per call to a server that dropped the
            connection (a lookup is retried, a push is not).
        max_batch: IDs per sub-batch of large lookups and pushes (the
            server's own limit wins when smaller).

    Raises:
        ConnectionFailed, Unauthenticated, InvalidArgument (bad address
        list), ImportError if libcqrps cannot be found.
    """
    return Client(addrs, token, admin_token=admin_token,
                  token_file=token_file, admin_token_file=admin_token_file,
                  connect_timeout=connect_timeout,
                  request_timeout=request_timeout, client_name=client_name,
                  reconnect=reconnect, max_batch=max_batch)


def shard_of(id: int, nshards: int) -> int:
    """The shard an ID lives on among nshards (jump consistent hash)."""
    if nshards < 1:
        raise InvalidArgument("nshards must be >= 1")
    return int(_lib.lib().cqrps_shard_of(int(id) & 0xFFFFFFFFFFFFFFFF,
                                         nshards))


def strerror(code: int) -> str:
    """The library's message for a code."""
    return _s(_lib.lib().cqrps_strerror(int(code)))
