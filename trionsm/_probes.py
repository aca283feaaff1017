"""What the demo watches: a continuous ping through a wire, and an NSC process's JSON events.

:class:`Pinger` sends one ICMP echo from inside a namespace every ``interval`` to its current
:attr:`Pinger.target` (which may change: a reselect gives the wire new addresses) and keeps the
time of every reply, so :meth:`Pinger.longest_gap` says how long the wire went unanswered over
any window. :class:`EventLog` reads an ``trionsm nsc --json`` process's lines as they come,
stamping each with the time it was read, and :meth:`EventLog.wait_for` waits for the first
event after a point that matches. Times are ``trio.current_time()`` seconds.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import attrs
import trio

from trionsm._processes import RoleProcess
from trionsm.errors import TrionsmError
from trionsm.kernel import Netlink, open_netlink, ping

__all__ = ["Event", "EventLog", "Pinger"]


@attrs.define(eq=False)
class Pinger:
    """Pings :attr:`target` from namespace ``netns`` (a ``file://`` URL) until cancelled.

    Attributes:
        interval: seconds between echoes (one at a time); timeout: how long one echo may take
            before it counts as lost; replies: the time of each reply, in order; sent: echoes
            sent; target: the address pinged (None: paused).
    """

    netns: str
    interval: float = 0.05
    timeout: float = 0.2
    target: str | None = None
    replies: list[tuple[float, str]] = attrs.field(factory=list)
    sent: int = 0
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ping until cancelled, through a netlink executor of its own (its threads, which sit
        in the namespace, are joined on the way out)."""
        async with open_netlink() as netlink:
            task_status.started()
            while True:
                tick = trio.current_time()
                if self.target is not None:
                    await self._echo(netlink, self.target)
                await trio.sleep_until(tick + self.interval)

    async def _echo(self, netlink: Netlink, target: str) -> None:
        self.sent += 1
        try:
            answered = await ping(self.netns, target, timeout=self.timeout, netlink=netlink)
        except (OSError, TrionsmError):  # the wire's interface is being replaced
            answered = False
        if answered:
            self.replies.append((trio.current_time(), target))
            self._changed.set()
            self._changed = trio.Event()

    async def wait_reply(self, *, after: float, target: str | None = None) -> float:
        """The time of the first reply later than ``after`` (from ``target``, when given)."""
        while True:
            for at, source in reversed(self.replies):
                if at <= after:
                    break
                if target is None or source == target:
                    return at
            await self._changed.wait()

    def longest_gap(self, start: float | None = None, end: float | None = None) -> float:
        """The longest time between consecutive replies within ``[start, end]`` (the whole run
        by default), counting from the last reply before ``start`` and up to ``end`` when the
        wire is still silent there. 0 with fewer than two replies."""
        times = [at for at, _ in self.replies]
        if start is not None:
            before = [at for at in times if at <= start]
            times = before[-1:] + [at for at in times if at > start]
        if end is not None:
            times = [at for at in times if at <= end]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        if end is not None and times and start is not None:
            gaps.append(end - times[-1])
        return max(gaps, default=0.0)


@attrs.frozen
class Event:
    """One NSC event as printed by ``trionsm nsc --json``, and when the demo read it."""

    at: float
    kind: str
    endpoint: str
    src: tuple[str, ...]
    dst: tuple[str, ...]
    path: tuple[str, ...]
    interface: str
    reason: str

    @classmethod
    def parse(cls, at: float, data: dict[str, Any]) -> Event:
        return cls(
            at,
            str(data.get("event", "")),
            str(data.get("endpoint", "")),
            tuple(data.get("src", ())),
            tuple(data.get("dst", ())),
            tuple(data.get("path", ())),
            str(data.get("interface", "")),
            str(data.get("reason", "")),
        )

    @property
    def target(self) -> str:
        """The endpoint's first IPv4 address on the wire (else its first), without the prefix."""
        return self.new_target(())

    def new_target(self, old: tuple[str, ...]) -> str:
        """:attr:`target`, preferring an address that is not in ``old`` (an earlier ``dst``)."""
        fresh = [a for a in self.dst if a not in old] or list(self.dst)
        addresses = [a.split("/")[0] for a in fresh]
        return next((a for a in addresses if ":" not in a), addresses[0] if addresses else "")


@attrs.define(eq=False)
class EventLog:
    """The events of an NSC process (``--json``), stamped as read (see :meth:`serve`)."""

    role: RoleProcess
    events: list[Event] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the process's stdout lines as they arrive until it closes or this is cancelled."""
        output, seen = self.role.output, 0
        task_status.started()
        while True:
            for line in output.lines[seen:]:
                seen += 1
                if line.startswith("{"):
                    self.events.append(Event.parse(trio.current_time(), json.loads(line)))
                    self._changed.set()
                    self._changed = trio.Event()
            if output.eof:
                return
            await output.changed.wait()

    async def wait_for(self, matches: Callable[[Event], bool], *, after: float) -> Event:
        """The first event read later than ``after`` that ``matches`` (blocks until there is)."""
        while True:
            for event in self.events:
                if event.at > after and matches(event):
                    return event
            await self._changed.wait()
