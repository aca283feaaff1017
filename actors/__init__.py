"""The NSM roles as supervised actors: nsmgr, forwarder, registry, endpoint, client, proxy.

Each connection, endpoint lease and registry entry is its own actor under a supervisor; see
the node tree in the README. The roles land one by one; this package is empty until then.
"""

from __future__ import annotations

__all__: list[str] = []
