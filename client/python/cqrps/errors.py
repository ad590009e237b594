"""The exception hierarchy of cqrps.

Every failure of a libcqrps call raises a subclass of :class:`Error`
carrying the library's negative code (``.code``, e.g. ``-3``), the wire
status name (``.name``, e.g. ``"NOT_FOUND"``) and the message (the
server's own message for a server error, or the client's description of
a connect, timeout or connection failure). The codes mirror the server's
wire statuses one to one: wire status N is code -N.

Some classes also derive from the matching built-in exception, so generic
handlers keep working: :class:`InvalidArgument`, :class:`WrongDim` and
:class:`NonFinite` are ``ValueError``\\ s, :class:`TimedOut` is a
``TimeoutError`` and :class:`ConnectionFailed` a ``ConnectionError``.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

from . import _lib


class Error(Exception):
    """A failed cqrps call.

    Attributes:
        code: the negative libcqrps code (``cqrps_err_t``).
        name: the wire status name ("NOT_FOUND", "BUSY", ...).
        message: the server's or the client's description of the failure.
    """

    code: int = 0
    name: str = "UNKNOWN"

    def __init__(self, message: str, code: Optional[int] = None,
                 name: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if name is not None:
            self.name = name

    def __str__(self) -> str:
        return f"{self.message} [{self.name}]" if self.message else self.name

    def __reduce__(self):  # picklable despite the extra constructor args
        return (self.__class__, (self.message, self.code, self.name))


def _cls(name: str, code: int, wire: str, doc: str,
         *bases: Type[BaseException]) -> Type[Error]:
    return type(name, (Error,) + bases,
                {"code": code, "name": wire, "__doc__": doc,
                 "__module__": "cqrps"})


InvalidArgument = _cls("InvalidArgument", -1, "INVALID_ARGUMENT",
                       "Bad argument: shape, range, name or config.",
                       ValueError)
NoMemory = _cls("NoMemory", -2, "NO_MEMORY", "Out of memory.", MemoryError)
NotFound = _cls("NotFound", -3, "NOT_FOUND", "No such table.")
AlreadyExists = _cls("AlreadyExists", -4, "ALREADY_EXISTS",
                     "The table already exists.")
WrongDim = _cls("WrongDim", -5, "WRONG_DIM",
                "Vector length does not match the table's dim.", ValueError)
NonFinite = _cls("NonFinite", -6, "NON_FINITE",
                 "A gradient holds NaN or Inf (nothing of it was applied).",
                 ValueError)
LimitExceeded = _cls("LimitExceeded", -7, "LIMIT_EXCEEDED",
                     "A server limit (tables, memory, batch) was exceeded.")
Busy = _cls("Busy", -8, "BUSY",
            "Busy (e.g. a cluster phase already runs); retry later.")
Malformed = _cls("Malformed", -9, "MALFORMED", "Malformed request.")
Unauthenticated = _cls("Unauthenticated", -10, "UNAUTHENTICATED",
                       "Authentication required or failed.")
PermissionDenied = _cls("PermissionDenied", -11, "PERMISSION_DENIED",
                        "The admin token is required.")
StorageError = _cls("StorageError", -12, "IO_ERROR",
                    "Storage I/O error on the server.")
Corrupt = _cls("Corrupt", -13, "CORRUPT", "Data corrupt.")
BadVersion = _cls("BadVersion", -14, "BAD_VERSION",
                  "Unsupported protocol version.")
Unsupported = _cls("Unsupported", -15, "UNSUPPORTED",
                   "Not supported (by this table kind or this server).")
TimedOut = _cls("TimedOut", -16, "TIMED_OUT", "Timed out.", TimeoutError)
ConnectionFailed = _cls("ConnectionFailed", -17, "CONNECTION",
                        "Connection failed or lost.", ConnectionError)
ShuttingDown = _cls("ShuttingDown", -18, "SHUTTING_DOWN",
                    "The server is shutting down.")
Internal = _cls("Internal", -19, "INTERNAL",
                "Internal error (also: a cluster phase failed).")
NoSuchPhase = _cls("NoSuchPhase", -20, "NO_SUCH_PHASE",
                   "No such cluster phase.")
Cancelled = _cls("Cancelled", -21, "CANCELLED",
                 "Cancelled (a cluster phase, by request or shutdown).")
ReadOnly = _cls("ReadOnly", -22, "READ_ONLY",
                "The server serves exports read-only (--serve).")

BY_CODE: Dict[int, Type[Error]] = {
    cls.code: cls
    for cls in (InvalidArgument, NoMemory, NotFound, AlreadyExists, WrongDim,
                NonFinite, LimitExceeded, Busy, Malformed, Unauthenticated,
                PermissionDenied, StorageError, Corrupt, BadVersion,
                Unsupported, TimedOut, ConnectionFailed, ShuttingDown,
                Internal, NoSuchPhase, Cancelled, ReadOnly)
}
"""Negative code -> exception class."""

assert {c for c in BY_CODE} == {-n for _, n, _ in _lib.ERRORS}
assert all(BY_CODE[-n].name == w for _, n, w in _lib.ERRORS)


def from_code(code: int, message: str = "") -> Error:
    """The exception for a negative code; unknown codes give a bare Error."""
    cls = BY_CODE.get(code)
    if cls is not None:
        return cls(message)
    return Error(message, code=code, name="UNKNOWN")
