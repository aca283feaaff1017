"""The NSM roles as supervised actors: nsmgr, forwarder, registry, endpoint, client, proxy.

Each connection, endpoint lease and registry entry is its own actor under a supervisor; see
DESIGN.md §5 for the node tree. The roles land issue by issue; this package is empty until then.
"""

from __future__ import annotations

__all__: list[str] = []
