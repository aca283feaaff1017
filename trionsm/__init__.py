"""trionsm: Network Service Mesh as a Trio actor system.

This module is a lazy facade (PEP 562): importing ``trionsm`` or ``trionsm.supervision`` loads
nothing heavy. grpclib, trio-asyncio (which changes asyncio process-wide) and pyroute2 are imported
only when a transport, the kernel data plane or an actor that needs them is first used.

Subpackages: ``trionsm.supervision`` (OTP on Trio), ``trionsm.transport`` (inproc, gRPC, ZeroMQ),
``trionsm.kernel`` (netns, veth, vxlan through pyroute2), ``trionsm.actors`` (nsmgr, forwarder,
registry, endpoint, client), ``trionsm.api`` (the NSM v1 messages), ``trionsm.errors``,
``trionsm.clock`` (Trio time <-> wire Timestamps), ``trionsm.identity`` (tokens),
``trionsm.scenario`` (the in-process mesh builder).

Top-level names (loaded on first use): :func:`open_connection` (a client, NSC),
:func:`serve_endpoint` (an NSE), :func:`serve_nsmgr`, :func:`serve_forwarder`,
:func:`serve_registry`, :func:`serve_lease`, :func:`open_mesh`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; filled in as the public API lands.
_LAZY: dict[str, str] = {
    "open_connection": "trionsm.actors.client",
    "serve_endpoint": "trionsm.actors.endpoint",
    "serve_forwarder": "trionsm.actors.forwarder",
    "serve_nsmgr": "trionsm.actors.nsmgr",
    "serve_registry": "trionsm.actors.registry",
    "serve_lease": "trionsm.actors.lease",
    "open_mesh": "trionsm.scenario",
}

_SUBMODULES = frozenset(
    {
        "actors",
        "api",
        "cli",
        "clock",
        "errors",
        "identity",
        "kernel",
        "scenario",
        "supervision",
        "transport",
    }
)

__all__ = [
    "__version__",
    "open_connection",
    "open_mesh",
    "serve_endpoint",
    "serve_forwarder",
    "serve_lease",
    "serve_nsmgr",
    "serve_registry",
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
