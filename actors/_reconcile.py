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

The :class:`Reconciler` is pure (no I/O, time passed in), so its rules are tested without a
kernel; :func:`serve_reconcile` owns the I/O and the timer (``trio.current_time()``, so a
``MockClock`` drives it).

The grace must outlast the clients' way back: a heal after a forwarder restart arrives within
seconds (the broken monitor stream makes the client re-request), and a client that saw nothing
still refreshes within a fifth of its token lifetime (2 minutes with NSM's 10-minute tokens).
:data:`DEFAULT_RECONCILE_GRACE` covers both. Every successful Request claims (refreshes too), so
a scan started again later (the task restarted along with the forwarder's other children) only
removes what no live connection uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from trionsm.kernel import Interface, Netlink

__all__ = ["DEFAULT_RECONCILE_GRACE", "Reconciler", "serve_reconcile"]

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
    """

    owner: str
    grace: float = DEFAULT_RECONCILE_GRACE
    leftovers: dict[Key, Interface] = attrs.field(factory=dict)
    claims: dict[str, frozenset[Key] | None] = attrs.field(factory=dict)
    scanned: bool = False
    done: bool = False
    finished: bool = False  # the sweep's removals are through (set by serve_reconcile)
    deadline: float = math.inf

    def begin(self) -> None:
        """A scan starts (again): until it is through, every alias may have a leftover and
        every claim counts; claims made so far are kept."""
        self.leftovers = {}
        self.scanned = self.done = self.finished = False
        self.deadline = math.inf

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

    def sweep(self, now: float) -> list[Interface]:
        """When the grace is over: the leftovers to remove; the reconciler is then done (its
        inventory and claims are dropped). Before that: nothing."""
        if not self.scanned or self.done or now < self.deadline:
            return []
        stale = self.unclaimed
        self.leftovers.clear()
        self.claims.clear()
        self.done = True
        return stale


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
    meanwhile). Cancellable at any point: a removal under way finishes first.

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
    stale = reconciler.sweep(trio.current_time())
    if stale:
        await remove_interfaces(stale, hop=hop, netlink=netlink)
    reconciler.finished = True
