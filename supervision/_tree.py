"""Snapshots of a supervision tree, for status pages, the admin service and tests."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

import attrs

from ._spec import ChildType, Restart, Strategy

__all__ = ["ChildCount", "ChildInfo", "ChildNode", "ChildState", "SupervisorTree"]


class ChildState(enum.Enum):
    """Where a child is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    """Its restart failed; a try-again restart is queued on the supervisor's mailbox."""
    TERMINATING = "terminating"
    STOPPED = "stopped"
    """Its spec is kept but no incarnation runs (OTP's ``undefined`` pid)."""


@attrs.frozen
class ChildInfo:
    """One row of ``which_children``.

    ``value`` is what the running incarnation passed to ``started()``; ``restarts`` counts every
    start after the first (its own exit, a sibling's under ONE_FOR_ALL/REST_FOR_ONE, a try-again,
    or ``restart_child``).
    """

    id: str
    value: Any
    state: ChildState
    type: ChildType
    restart: Restart
    restarts: int


@attrs.frozen
class ChildCount:
    """``count_children``: ``specs`` children, ``active`` running, by type."""

    specs: int
    active: int
    supervisors: int
    workers: int


@attrs.frozen
class ChildNode:
    """A child in a :class:`SupervisorTree`; ``supervisor`` is set for a child supervisor."""

    id: str
    state: ChildState
    type: ChildType
    restart: Restart
    restarts: int
    last_exit: str | None
    value: str | None
    supervisor: SupervisorTree | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "type": self.type.value,
            "restart": self.restart.value,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "value": self.value,
            "supervisor": self.supervisor.to_dict() if self.supervisor is not None else None,
        }


@attrs.frozen
class SupervisorTree:
    """A supervisor and its children, recursively; ``recent_restarts`` counts the current window."""

    name: str
    strategy: Strategy
    intensity: int
    period: float
    recent_restarts: int
    children: tuple[ChildNode, ...]

    def walk(self, prefix: str = "") -> Iterator[tuple[str, ChildNode]]:
        """Every child below this supervisor, depth first in start order, with its path.

        A path is this supervisor's name, then child ids down the tree
        (``"<name>/<child>/<grandchild>"``): what :meth:`Supervisor.crash_child` takes.
        """
        yield from self._walk(f"{prefix}{self.name}")

    def _walk(self, base: str) -> Iterator[tuple[str, ChildNode]]:
        for child in self.children:
            path = f"{base}/{child.id}"
            yield path, child
            if child.supervisor is not None:
                yield from child.supervisor._walk(path)

    def find(self, path: str) -> ChildNode | None:
        """The child at ``path`` as produced by :meth:`walk`, or None."""
        return next((node for p, node in self.walk() if p == path), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "strategy": self.strategy.value,
            "intensity": self.intensity,
            "period": self.period,
            "recent_restarts": self.recent_restarts,
            "children": [child.to_dict() for child in self.children],
        }
