"""trionsm: Network Service Mesh as a Trio actor system.

This module is a lazy facade (PEP 562): importing ``trionsm`` or ``trionsm.supervision`` loads
nothing heavy. grpclib, trio-asyncio (which changes asyncio process-wide) and pyroute2 are imported
only when a transport, the kernel data plane or an actor that needs them is first used.

Subpackages: ``trionsm.supervision`` (OTP on Trio), ``trionsm.transport`` (inproc, gRPC, ZeroMQ),
``trionsm.kernel`` (netns, veth, vxlan through pyroute2), ``trionsm.actors`` (nsmgr, forwarder,
registry, endpoint, client), ``trionsm.api`` (the NSM v1 messages), ``trionsm.errors``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; filled in as the public API lands.
_LAZY: dict[str, str] = {}

_SUBMODULES = frozenset({"actors", "api", "cli", "errors", "kernel", "supervision", "transport"})

__all__ = ["__version__"]


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
