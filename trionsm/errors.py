"""The errors trionsm reports: a small flat hierarchy, one class per kind of failure.

Every error names *where* it happened (the hop: ``nsmgr@node-1``, ``forwarder``, ``registry``...),
*what* was asked for (the network service) and *why*, so that an operator reading one line knows
whose fault it is. Expected failures travel as values (error replies, gRPC status codes on the
wire); only broken invariants crash an actor. Backend exceptions (grpclib, zmq, pyroute2) are
translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = ["InvalidArgument", "NotFound", "TrionsmError"]


class TrionsmError(Exception):
    """Base class. ``hop``, ``service`` and ``reason`` are kept as attributes and in the message."""

    def __init__(self, reason: str, *, hop: str | None = None, service: str | None = None) -> None:
        self.reason = reason
        self.hop = hop
        self.service = service
        where = f"[{hop}] " if hop else ""
        what = f"service {service!r}: " if service else ""
        super().__init__(f"{where}{what}{reason}")


class InvalidArgument(TrionsmError, ValueError):
    """The caller sent something malformed or out of range (the caller's fault)."""


class NotFound(TrionsmError, LookupError):
    """What was asked for does not exist: no such network service, endpoint or connection."""
