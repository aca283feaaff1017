"""The errors trionsm reports: a small flat hierarchy, one class per kind of failure.

Every error names *where* it happened (the hop: ``nsmgr@node-1``, ``forwarder``, ``registry``...),
*what* was asked for (the network service) and *why*, so that an operator reading one line knows
whose fault it is. Expected failures travel as values: error replies inside a process, gRPC status
codes on the wire (each class has its :class:`StatusCode`), and come out on the far side as the same
class with the same hop, service and reason. Only broken invariants crash an actor. Backend
exceptions (grpclib, zmq, pyroute2) are translated at the boundary with ``raise ... from exc``.

Whose fault, by class:

* the caller's: :class:`InvalidArgument`, :class:`NotFound`, :class:`AlreadyExists`,
  :class:`FailedPrecondition`, :class:`PermissionDenied`, :class:`Unauthenticated`,
  :class:`Unimplemented`;
* the path's (retry, heal or reselect): :class:`Unavailable`, :class:`DeadlineExceeded`,
  :class:`ResourceExhausted`, :class:`CallCancelled`;
* ours: :class:`Internal`, :class:`Unknown`.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "AlreadyExists",
    "CallCancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "StatusCode",
    "TrionsmError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "error_for_status",
]


class StatusCode(enum.IntEnum):
    """gRPC status codes (the numbers are the wire values)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class TrionsmError(Exception):
    """Base class. ``hop``, ``service`` and ``reason`` are kept as attributes and in the message.

    Args:
        reason: why, in a few words an operator understands.
        hop: where it happened (``nsmgr@node-1``, ``registry``, ``grpc://10.0.0.1:5001``...).
        service: the network service (or registry entry) the call was about.
    """

    status: ClassVar[StatusCode] = StatusCode.UNKNOWN

    def __init__(self, reason: str, *, hop: str | None = None, service: str | None = None) -> None:
        self.reason = reason
        self.hop = hop
        self.service = service
        super().__init__(self._format())

    def _format(self) -> str:
        where = f"[{self.hop}] " if self.hop else ""
        what = f"service {self.service!r}: " if self.service else ""
        return f"{where}{what}{self.reason}"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.reason, self.hop, self.service))


def _rebuild(
    cls: type[TrionsmError], reason: str, hop: str | None, service: str | None
) -> TrionsmError:
    return cls(reason, hop=hop, service=service)


class Unknown(TrionsmError):
    """The peer failed without saying why (gRPC UNKNOWN), or sent a status we do not map."""


class InvalidArgument(TrionsmError, ValueError):
    """The caller sent something malformed or out of range (the caller's fault)."""

    status = StatusCode.INVALID_ARGUMENT


class NotFound(TrionsmError, LookupError):
    """What was asked for does not exist: no such network service, endpoint or connection."""

    status = StatusCode.NOT_FOUND


class AlreadyExists(TrionsmError):
    """A name is taken (an interface, a registration)."""

    status = StatusCode.ALREADY_EXISTS


class PermissionDenied(TrionsmError, PermissionError):
    """The caller's identity may not do this (a foreign name, a kernel permission)."""

    status = StatusCode.PERMISSION_DENIED


class Unauthenticated(TrionsmError):
    """No usable identity: a missing, expired or badly signed token or certificate."""

    status = StatusCode.UNAUTHENTICATED


class ResourceExhausted(TrionsmError):
    """A bound was hit: a full mailbox, too many streams, an exhausted address pool."""

    status = StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(TrionsmError):
    """The request is valid but the state does not allow it (e.g. a missing netns)."""

    status = StatusCode.FAILED_PRECONDITION


class Unimplemented(TrionsmError):
    """The peer does not serve that method or mechanism."""

    status = StatusCode.UNIMPLEMENTED


class Unavailable(TrionsmError, ConnectionError):
    """The next hop cannot be reached or went away (retry, heal or reselect)."""

    status = StatusCode.UNAVAILABLE


class DeadlineExceeded(TrionsmError, TimeoutError):
    """The call's deadline passed before a reply."""

    status = StatusCode.DEADLINE_EXCEEDED


class CallCancelled(TrionsmError):
    """The peer cancelled the call (gRPC CANCELLED)."""

    status = StatusCode.CANCELLED


class Internal(TrionsmError):
    """A broken invariant on the serving side (a bug): the server keeps serving other calls."""

    status = StatusCode.INTERNAL


_BY_STATUS: dict[StatusCode, type[TrionsmError]] = {
    cls.status: cls
    for cls in (
        Unknown,
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        FailedPrecondition,
        Unimplemented,
        Unavailable,
        DeadlineExceeded,
        CallCancelled,
        Internal,
    )
}
_BY_STATUS[StatusCode.ABORTED] = Unavailable
_BY_STATUS[StatusCode.OUT_OF_RANGE] = InvalidArgument
_BY_STATUS[StatusCode.DATA_LOSS] = Internal


def error_for_status(
    status: int, reason: str, *, hop: str | None = None, service: str | None = None
) -> TrionsmError:
    """The error class for a gRPC status code (UNKNOWN for codes we do not know)."""
    try:
        cls = _BY_STATUS[StatusCode(status)]
    except (ValueError, KeyError):
        cls = Unknown
    return cls(reason, hop=hop, service=service)
