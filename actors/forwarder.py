"""The forwarder role: programs the data plane for each connection. Not built yet."""

from __future__ import annotations

__all__: list[str] = []
