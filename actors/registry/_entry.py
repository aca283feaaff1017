"""EntryActor: one registration, alive until its deadline.

Theory of operation. Each registered endpoint or service is one TEMPORARY child of the registry's
entry supervisor (SIMPLE_ONE_FOR_ONE). Its cancel-scope deadline IS the registration's expiry: a
re-Register moves ``scope.deadline``; an Unregister (or another replica taking the entry over)
ends it at once. When the deadline passes the entry takes its name's lock, looks again (a
re-Register may have moved the deadline while it woke up) and, if it really expired, asks the
registry to remove it, which tells every watcher. Services never expire (deadline ``inf``).

Registrations of one name are serialised by a :class:`KeyedLock`, so Register, Unregister and
expiry of one name never interleave while different names proceed concurrently.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from trionsm.actors._locks import KeyedLock

__all__ = ["Entry", "KeyedLock", "run_entry"]


@attrs.define(eq=False)
class Entry:
    """The live state of one registration in this registry replica.

    Attributes:
        kind: ``"endpoint"`` or ``"service"``.
        name: the registered name.
        deadline: expiry in ``trio.current_time()`` seconds (``inf`` for services).
        token: what the store needs to remove exactly this registration (etcd: the lease and
            revision it wrote), or None.
        ended: set by Unregister or a take-over; the entry then stops without removing anything.
    """

    kind: str
    name: str
    deadline: float = math.inf
    token: Any = attrs.field(default=None, repr=False)
    ended: bool = False
    scope: trio.CancelScope | None = attrs.field(default=None, repr=False)
    done: trio.Event = attrs.field(factory=trio.Event, repr=False)

    def move(self, deadline: float) -> None:
        """Set a new expiry (a re-Register)."""
        self.deadline = deadline
        if self.scope is not None:
            self.scope.deadline = deadline

    def end(self) -> None:
        """Stop without removing the registration from the store (already removed or not ours)."""
        self.ended = True
        if self.scope is not None:
            self.scope.cancel()


async def run_entry(
    entry: Entry,
    expire: Callable[[Entry], Awaitable[bool]],
    *,
    task_status: trio.TaskStatus[Entry] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one entry until it ends or expires; ``expire(entry)`` removes it (True when done).

    ``expire`` runs under the entry's own deadline check: it returns False when a re-Register
    moved the deadline meanwhile, and the entry goes on.
    """
    try:
        started = False
        while not entry.ended:
            with trio.CancelScope(deadline=entry.deadline) as scope:
                entry.scope = scope
                if not started:
                    started = True
                    task_status.started(entry)
                await trio.sleep_forever()
            entry.scope = None
            if entry.ended or trio.current_time() < entry.deadline:
                continue
            if await expire(entry):
                return
    finally:
        entry.done.set()
