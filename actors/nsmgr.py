"""The nsmgr role: the node's network service manager. Its actors are not built yet."""

from __future__ import annotations

__all__: list[str] = []
