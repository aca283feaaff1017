"""The registry role (shared/DESIGN.md §5); its actors land with the issue that builds it."""

from __future__ import annotations

__all__: list[str] = []
