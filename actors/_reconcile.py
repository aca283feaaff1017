"""Reconcile: a restarted forwarder adopts the wires its clients re-request and removes the rest.

Theory of operation. A forwarder keeps no state across a restart; the kernel does: every
interface it made carries the alias ``trionsm:<forwarder>:<client connection id>``. When a
forwarder starts, :func:`serve_reconcile` scans the host's namespaces for interfaces carrying its
name (``trionsm.kernel``'s reconcile scan) and hands them to a :class:`Reconciler`, which holds
them as *unclaimed* for ``grace`` seconds. Meanwhile the clients' refreshes and heals re-request
their connections: the data plane adopts a leftover that is exactly the wire the request
describes (same interfaces, no flap) or replaces it, and the forwarder *claims* the connection's
alias with the interfaces it now uses. When the grace ends, every leftover whose alias nobody
claimed, or that its claim did not keep (an old end the new wire replaced), is removed, exactly
(namespace, index and alias). Then the reconciler is done; later connections never meet it.

A request and the sweep meet on one alias under one lock (:meth:`Reconciler.serving`, held by
:func:`ensure_wire` from the look for a leftover until the claim): the sweep decides what of an
alias to remove only under that lock, so an adoption in flight when the grace ends is claimed
before the sweep looks, and a request arriving while the sweep removes its alias's leftovers
waits, then creates its wire anew.

The :class:`Reconciler`'s rules are pure (no I/O, time passed in; only :meth:`~Reconciler.serving`
awaits, for the lock), so they are tested without a kernel; :func:`serve_reconcile` owns the
I/O and the timer (``trio.current_time()``, so a ``MockClock`` drives it).

The grace must outlast the clients' way back: a heal after a forwarder restart arrives within
seconds (the broken monitor stream makes the client re-request), and a client that saw nothing
still refreshes within a fifth of its token lifetime (2 minutes with NSM's 10-minute tokens).
:data:`DEFAULT_RECONCILE_GRACE` covers both.

A scan may run again while the forwarder's connections live on: the task is restarted along
with the forwarder's other children (a crash of its peers, server or lease, or of the task
itself mid-scan), long after its first sweep dropped every claim. Those connections need not
re-request within the grace (an hour-long token refreshes every twelve minutes), so the
reconciler does not wait for them: it asks the forwarder for the wires its live connections hold
(``live``) and claims each exactly (alias and interfaces) when a scan begins and again when the
grace ends, before the sweep looks; a connection serving meanwhile claims as usual. A scan thus
only ever removes what no live connection holds.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from trionsm.errors import TrionsmError

from ._locks import KeyedLock
from ._mechanisms import KERNEL

if TYPE_CHECKING:
    from trionsm.api.connection import Mechanism
    from trionsm.kernel import Interface, Netlink

    from ._dataplane import DataPlane, VxlanSpec, Wire, WireSpec

__all__ = [
    "DEFAULT_RECONCILE_GRACE",
    "Reconciler",
    "ensure_wire",
    "leftover_vni",
    "serve_reconcile",
    "wire_keys",
]

DEFAULT_RECONCILE_GRACE = 180.0
"""Seconds a restarted forwarder keeps unclaimed leftovers: well above a heal (seconds) and a
refresh at NSM's defaults (2 minutes), so every client still there has claimed its wire."""

Key = tuple[tuple[int, int], int]
"""An interface host-wide: ``(namespace (dev, ino), ifindex)``."""


@attrs.define
class Reconciler:
    """The leftovers of one forwarder and the claims on them (pure; see the module docstring).

    Args:
        owner: the forwarder's name (the owner its aliases carry).
        grace: seconds from :meth:`found` until unclaimed leftovers are removed.
        live: the wires the forwarder's live connections hold now (claimed by :meth:`seed`);
            None: no connection holds any.
    """

    owner: str
    grace: float = DEFAULT_RECONCILE_GRACE
    live: Callable[[], Iterable[Wire]] | None = attrs.field(default=None, eq=False, repr=False)
    leftovers: dict[Key, Interface] = attrs.field(factory=dict)
    claims: dict[str, frozenset[Key] | None] = attrs.field(factory=dict)
    scanned: bool = False
    done: bool = False
    finished: bool = False  # the sweep's removals are through (set by serve_reconcile)
    deadline: float = math.inf
    _locks: KeyedLock = attrs.field(factory=KeyedLock, init=False, repr=False, eq=False)

    def begin(self) -> None:
        """A scan starts (again): until it is through, every alias may have a leftover and
        every claim counts; claims made so far are kept, and the live connections' wires are
        claimed (:meth:`seed`)."""
        self.leftovers = {}
        self.scanned = self.done = self.finished = False
        self.deadline = math.inf
        self.seed()

    def seed(self) -> None:
        """Claim the interfaces of every wire a live connection holds now (``live``), on top
        of the claims made so far: whatever a scan finds of them is never removed."""
        if self.live is None:
            return
        for wire in self.live():
            alias = wire.spec.alias
            kept = self.claims.get(alias, frozenset())
            if kept is not None:  # None keeps every leftover of the alias already
                self.claims[alias] = kept | frozenset(wire_keys(wire))

    def found(self, interfaces: Iterable[Interface], now: float) -> None:
        """The scan's result: these are held, unclaimed, until ``now + grace``."""
        self.leftovers = {interface.key: interface for interface in interfaces}
        self.scanned = True
        self.done = False
        self.deadline = now + self.grace

    def may_hold(self, alias: str) -> bool:
        """Whether a leftover may carry ``alias``: the scan is not through yet, or found one.
        The data plane then looks before it creates (to adopt instead of flapping)."""
        if self.done:
            return False
        if not self.scanned:
            return True
        return any(leftover.alias == alias for leftover in self.leftovers.values())

    def claim(self, alias: str, keep: Iterable[Key] | None = None) -> None:
        """A connection with ``alias`` is served again: its leftovers are not to be removed.

        Args:
            keep: the interfaces the connection now uses; leftovers of the alias that are not
                among them are still removed when the grace ends (the old ends of a replaced
                wire). None: keep every leftover of the alias (a wire whose ends are unknown).
        """
        if self.done:
            return
        self.claims[alias] = None if keep is None else frozenset(keep)

    def claimed(self, interface: Interface) -> bool:
        """Whether a claim keeps ``interface``."""
        if interface.alias not in self.claims:
            return False
        keep = self.claims[interface.alias]
        return keep is None or interface.key in keep

    @property
    def unclaimed(self) -> list[Interface]:
        """The leftovers no claim keeps (so far)."""
        return [leftover for leftover in self.leftovers.values() if not self.claimed(leftover)]

    def over(self, now: float) -> bool:
        """Whether the grace is over at ``now`` (the scan through, the sweep not done yet)."""
        return self.scanned and not self.done and now >= self.deadline

    def due(self, now: float) -> list[str]:
        """When the grace is over: the aliases of the leftovers, for :meth:`take_stale` one by
        one. Before that: none."""
        if not self.over(now):
            return []
        return sorted({leftover.alias for leftover in self.leftovers.values()})

    def take_stale(self, alias: str) -> list[Interface]:
        """The leftovers of ``alias`` that no claim keeps, to remove now. Every leftover of the
        alias leaves the inventory: a later request for it creates as usual."""
        mine = [key for key, leftover in self.leftovers.items() if leftover.alias == alias]
        taken = [self.leftovers.pop(key) for key in mine]
        return [leftover for leftover in taken if not self.claimed(leftover)]

    def finish(self) -> None:
        """The sweep is through: the reconciler is done (inventory and claims dropped)."""
        self.leftovers.clear()
        self.claims.clear()
        self.done = True

    def sweep(self, now: float) -> list[Interface]:
        """When the grace is over: every leftover to remove, and the reconciler is done (its
        inventory and claims are dropped). Before that: nothing. (:func:`serve_reconcile` does
        the same alias by alias, each under :meth:`serving`'s lock.)"""
        if not self.over(now):
            return []
        self.seed()
        stale = [leftover for alias in self.due(now) for leftover in self.take_stale(alias)]
        self.finish()
        return stale

    @asynccontextmanager
    async def serving(self, alias: str) -> AsyncIterator[bool]:
        """Hold ``alias`` while a request makes or adopts its wire and claims it; yields
        whether a leftover may carry it (:meth:`may_hold`). The sweep takes the same lock
        before it decides what of the alias to remove, so an adoption in flight when the grace
        ends is claimed before the sweep looks, and a request that comes while the sweep
        removes the alias's leftovers waits, then creates. Blocks while the alias is held."""
        async with self._locks.hold(alias):
            yield self.may_hold(alias)


async def ensure_wire(
    dataplane: DataPlane,
    current: Wire | None,
    spec: WireSpec | VxlanSpec,
    *,
    reconciler: Reconciler | None,
    hop: str,
    service: str,
    forget: Callable[[Wire], None] | None = None,
) -> Wire:
    """``dataplane.ensure`` for a forwarder that may hold leftovers: with a reconciler, under
    its lock for the spec's alias (:meth:`Reconciler.serving`), looking for a leftover to adopt
    when one may exist, then claiming the interfaces the wire uses, before the lock is let go.
    ``forget`` as :meth:`DataPlane.ensure` (called once ``current`` is removed).

    Raises:
        TrionsmError: as :meth:`DataPlane.ensure`.
    """
    if reconciler is None:
        return await dataplane.ensure(current, spec, hop=hop, service=service, forget=forget)
    async with reconciler.serving(spec.alias) as adopt:
        wire = await dataplane.ensure(
            current, spec, hop=hop, service=service, adopt=adopt, forget=forget
        )
        # The leftovers this wire uses are claimed, not stale.
        reconciler.claim(wire.spec.alias, wire_keys(wire))
    return wire


def wire_keys(wire: Wire) -> list[Key]:
    """The interfaces of ``wire``, host-wide (what a claim keeps)."""
    return [(end.namespace.key, end.index) for end in wire.kernel.ends]


async def leftover_vni(
    dataplane: DataPlane | None,
    reconciler: Reconciler | None,
    incoming: Mechanism,
    connection_id: str,
    *,
    hop: str,
) -> int | None:
    """The VNI a restarted client-side forwarder asks the far side for: its leftover vxlan end's
    for this connection (while a leftover may carry the alias), so the far side keeps that VNI
    and both nodes' ends are adopted as they are. None otherwise (the far side picks).
    """
    if dataplane is None or reconciler is None or incoming.type != KERNEL:
        return None
    if not reconciler.may_hold(_alias(connection_id, reconciler.owner)):
        return None
    return await dataplane.leftover_vni(incoming, connection_id, owner=reconciler.owner, hop=hop)


def _alias(connection_id: str, owner: str) -> str:
    from trionsm.kernel import alias_for

    return alias_for(connection_id, owner)


async def serve_reconcile(
    reconciler: Reconciler,
    *,
    hop: str,
    netlink: Netlink | None = None,
    namespaces: Sequence[str] | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Scan, wait out the grace, remove the unclaimed leftovers; returns when done.

    Started at once (the scan runs after ``task_status.started()``, so the forwarder serves
    meanwhile). The sweep goes alias by alias, concurrently, each under the alias's lock
    (:meth:`Reconciler.serving`): what a request adopts is never removed under it, nor is a
    wire a live connection holds (:meth:`Reconciler.seed`, when the scan begins and when the
    grace ends). Cancellable at any point: a removal under way finishes first.

    Args:
        namespaces: where to look (default: every network namespace on the host).

    Raises:
        TrionsmError: the kernel refused a removal (the supervisor runs it again: a new scan).
    """
    from trionsm.kernel import remove_interfaces, scan_namespaces

    reconciler.begin()
    task_status.started(reconciler)
    found = await scan_namespaces(reconciler.owner, namespaces=namespaces, hop=hop, netlink=netlink)
    reconciler.found(found, trio.current_time())
    await trio.sleep_until(reconciler.deadline)
    reconciler.seed()  # the wires connections came to hold since the scan began

    failures: list[TrionsmError] = []

    async def sweep(alias: str) -> None:
        async with reconciler.serving(alias):
            stale = reconciler.take_stale(alias)
            if stale:
                try:
                    await remove_interfaces(stale, hop=hop, netlink=netlink)
                except TrionsmError as exc:  # the others go on; the first is reported
                    failures.append(exc)

    async with trio.open_nursery() as nursery:
        for alias in reconciler.due(trio.current_time()):
            nursery.start_soon(sweep, alias)
    if failures:
        raise failures[0]
    reconciler.finish()
    reconciler.finished = True
