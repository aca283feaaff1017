"""The registry role: network services and endpoints with expiry. Not built yet."""

from __future__ import annotations

__all__: list[str] = []
