"""A small executor for kernel work: per-namespace netlink handles on dedicated threads.

Theory of operation. pyroute2 0.9.7's sync ``IPRoute`` is thread-affine: it keeps its netlink
socket and an asyncio loop per calling thread (``threading.local``), and ``IPRoute(netns=...)`` /
``NetNS`` obtain each thread's socket by forking a helper process that ``setns``-es and passes the
descriptor back (about 10 ms, more as the process grows, and a fork of a threaded process). Shared
across Trio's cached worker threads, one handle would fork once per thread and keep a socket for
every thread that ever touched it, for as long as the handle lives. So a *handle* here is one
dedicated OS thread that entered its namespace once with setns(2) and owns a plain ``IPRoute()``
created inside it: one socket, one loop, no fork, and sockets for pings made in the same thread
land in the same namespace. Trio's own threads never change namespace.

A namespace has a small pool of handles, grown on demand and shrunk when idle. A handle's thread
and its socket each keep the namespace alive, and with it every interface in it: a pod's
namespace deleted while we hold it would live on, and the other end of its wire would keep
answering the client's liveness pings. So we let go of a namespace in three ways. A handle idle
for ``idle_timeout`` seconds (1 s) closes its socket and exits. While a namespace has idle
handles, one of them looks every ``watch_interval`` seconds (0.1 s) whether the path the
namespace was last reached by still names it (one stat(2): ``ip netns del`` unmounts
``/run/netns/<name>``, a ``/proc/<pid>`` path goes with its process), and if not, the namespace
is forgotten: its idle handles close at once, busy ones when their job ends. And every job first
checks the same of the path it was given (one stat(2)). A path can go stale while its namespace
lives on: a pod's namespace recorded as ``/proc/<pid>/ns/net`` of an NSC that has since died,
and with it the wire end we made there. So a stale path is not taken for a deleted namespace:
the namespace is looked for again by its inode (:func:`~trionsm.kernel._netns.find_again`: the
pool's last path, then a scan of ``/run/netns`` and other processes) and the job runs there. Only
when no path names the inode any more is the namespace gone: the pool is forgotten, so an old
handle never serves a namespace deleted (or made again under its name) since, and NotFound names
the namespace.
:meth:`Netlink.forget` lets go of a namespace on request. Reopening a handle costs a thread, a
setns(2) and a socket (about a millisecond).

Work goes through *lanes*: ``SETUP`` (create and configure), ``TEARDOWN`` (remove) and ``PROBE``
(sockets for pings, listings), each with its own capacity per namespace and per executor. A new
request therefore waits only behind other requests, never behind a backlog of teardowns in our
queues. The kernel still serialises every link change on one lock (rtnl), which a veth deletion
holds through an RCU wait, so the teardown lane stays narrow: with
200 removals under way, a create+ping took p50 27 ms / p90 43 ms at 4 concurrent teardowns
(200 done in 1.7 s) against p50 51-59 ms / p90 101-360 ms at 8-32 (done in 1.0-1.3 s), and
20 ms per removal one at a time.

Jobs are plain functions of a :class:`Handle`, run to completion once started (a kernel change is
never abandoned half-way, so callers can always roll back what they know was made). Netlink and
OS errors raised inside a job under :func:`step` come back as :class:`KernelFailure` and are
translated at the boundary into :mod:`trionsm.errors` with the hop and the step named.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import attrs
import trio

from trionsm.errors import TrionsmError, Unavailable

from ._handles import Handle, KernelFailure, Lane, Pool, Worker, call_on, step
from ._netns import Namespace, check_named, find_again, is_named

__all__ = [
    "Lane",
    "Netlink",
    "NetlinkLimits",
    "NetlinkStatistics",
    "current_netlink",
    "open_netlink",
]

T = TypeVar("T")

_JOIN_BOUND = 10.0
"""Seconds :meth:`Netlink.aclose` waits for stopped handle threads to exit (closing a netlink
socket takes microseconds; only a thread stuck in the kernel takes longer)."""


@attrs.frozen
class NetlinkLimits:
    """Capacities of an executor. Jobs running at once, per lane, across all namespaces and per
    namespace; handles idle for ``idle_timeout`` seconds close and release their namespace, and
    while a namespace has idle handles it is looked at every ``watch_interval`` seconds and let go
    of once its name is gone (see the module docstring). ``teardown`` trades removal throughput
    against request latency."""

    setup: int = 16
    teardown: int = 4
    probe: int = 16
    setup_per_namespace: int = 4
    teardown_per_namespace: int = 4
    probe_per_namespace: int = 4
    idle_timeout: float = 1.0
    watch_interval: float = 0.1

    def total(self, lane: Lane) -> int:
        return {Lane.SETUP: self.setup, Lane.TEARDOWN: self.teardown, Lane.PROBE: self.probe}[lane]

    def per_namespace(self, lane: Lane) -> int:
        return {
            Lane.SETUP: self.setup_per_namespace,
            Lane.TEARDOWN: self.teardown_per_namespace,
            Lane.PROBE: self.probe_per_namespace,
        }[lane]


@attrs.frozen
class NetlinkStatistics:
    """A snapshot: namespaces with a pool, live handle threads, idle ones, jobs running/queued."""

    namespaces: int
    handles: int
    idle_handles: int
    jobs: int


class Netlink:
    """The executor: made by :func:`open_netlink` (or :func:`current_netlink`), used from one Trio
    run. Jobs run at most ``limits.total(lane)`` at once per lane and
    ``limits.per_namespace(lane)`` per namespace; the rest wait in FIFO order within their lane.
    """

    def __init__(self, limits: NetlinkLimits) -> None:
        self.limits = limits
        self._pools: dict[tuple[int, int], Pool] = {}
        self._limiters = {lane: trio.CapacityLimiter(limits.total(lane)) for lane in Lane}
        self._calls = itertools.count()
        self._threads: list[threading.Thread] = []  # every handle thread not known to be done
        self._prune_at = 64
        self._jobs = 0
        self._closed = False
        self._quiet = trio.Event()
        self._quiet.set()

    async def run(
        self,
        namespace: Namespace,
        job: Callable[[Handle], T],
        *,
        lane: Lane = Lane.SETUP,
        hop: str | None = None,
    ) -> T:
        """Run ``job(handle)`` on a handle thread inside ``namespace`` and return its result.

        Waits for capacity in ``lane`` (cancellable while waiting); once the job has started it
        runs to completion and this call returns or raises only then (a cancellation arriving
        meanwhile is delivered at the caller's next checkpoint).

        ``namespace`` is its inode: when its path no longer names it (a ``/proc/<pid>`` path
        whose process exited) the job runs wherever another path names it now (a scan of the
        host, in a worker thread, cancellable), and the job's ``handle.namespace`` then carries
        that path.

        Raises:
            TrionsmError: the translated :class:`KernelFailure` of a step, naming ``hop``; the
                namespace cannot be entered (PermissionDenied, InvalidArgument), or NotFound:
                no path on this host names it any more.
            Unavailable: the executor is closed.
        """
        if self._closed:
            raise Unavailable("the kernel executor is closed", hop=hop)
        pool = self._pool_for(namespace)
        self._jobs += 1
        self._quiet = trio.Event() if self._quiet.is_set() else self._quiet
        try:
            async with pool.limiters[lane], self._limiters[lane]:
                worker = await self._checkout(pool, namespace, hop)
                healthy = False
                try:
                    handle = worker.handle
                    assert handle is not None
                    result = await call_on(worker, lambda: job(handle))
                    healthy = True
                    return result
                except (KernelFailure, TrionsmError):
                    healthy = True
                    raise
                finally:
                    self._checkin(worker, healthy=healthy)
        except KernelFailure as exc:
            raise exc.typed(hop) from exc
        finally:
            self._jobs -= 1
            if self._jobs == 0:
                self._quiet.set()

    async def socket(
        self, namespace: Namespace, family: int, kind: int, proto: int = 0, *, hop: str | None
    ) -> socket.socket:
        """A new stdlib socket created inside ``namespace`` (``PROBE`` lane); the caller owns it."""

        def make(handle: Handle) -> socket.socket:
            with step(f"opening a socket in {handle.namespace.url}"):
                return socket.socket(family, kind, proto)

        return await self.run(namespace, make, lane=Lane.PROBE, hop=hop)

    def forget(self, namespace: Namespace) -> None:
        """Let go of ``namespace`` now: its idle handles close at once, busy ones when their job
        ends; later jobs open new handles. For a namespace about to be deleted or no longer
        needed (one already deleted is let go of within ``watch_interval`` anyway). Never
        blocks; the threads exit on their own (:meth:`aclose` joins them)."""
        pool = self._pools.get(namespace.key)
        if pool is not None:
            pool.forget()

    def statistics(self) -> NetlinkStatistics:
        """Counts for tests and status pages."""
        handles = idle = 0
        for pool in self._pools.values():
            with pool.lock:
                handles += pool.size
                idle += len(pool.idle)
        return NetlinkStatistics(len(self._pools), handles, idle, self._jobs)

    async def aclose(self) -> None:
        """Refuse new jobs, wait for running ones, then stop every handle thread and join it:
        the idle ones and those already retired (forgotten, idle too long, or stopped after an
        unexpected failure) that may still be closing their socket.

        Returns once every netlink socket is closed and no thread holds a namespace, unless a
        thread is still stuck in the kernel after ``_JOIN_BOUND`` seconds of joining (it is left
        behind, a daemon). Cancellable while waiting for running jobs; the join runs in a worker
        thread and is not.
        """
        self._closed = True
        await self._quiet.wait()
        workers: list[Worker] = []
        for pool in self._pools.values():
            with pool.lock:
                workers += pool.idle
                pool.idle, pool.size = [], 0
        self._pools.clear()
        for worker in workers:
            worker.stop()
        threads, self._threads = self._threads, []
        await trio.to_thread.run_sync(_join, threads, _JOIN_BOUND)  # waited for if cancelled

    def _pool_for(self, namespace: Namespace) -> Pool:
        if next(self._calls) % 64 == 63:  # drop pools of namespaces nobody used lately
            for key in [key for key, pool in self._pools.items() if not pool.in_use()]:
                del self._pools[key]
        pool = self._pools.get(namespace.key)
        if pool is None:
            pool = self._pools[namespace.key] = Pool(
                namespace, {lane: self.limits.per_namespace(lane) for lane in Lane}
            )
        return pool

    async def _locate(self, pool: Pool, namespace: Namespace, hop: str | None) -> Namespace:
        """``namespace`` by a path that names it now: its own (one stat(2), the common case),
        the one the pool last reached it by, or one a scan of the host finds by its inode.

        Raises:
            NotFound: no path names it any more (its pool is forgotten); PermissionDenied.
        """
        if is_named(namespace):
            return namespace
        if is_named(pool.namespace):  # the same inode (pools are keyed by it), found before
            return pool.namespace
        found = await trio.to_thread.run_sync(find_again, namespace, abandon_on_cancel=True)
        if found is not None:
            return found
        pool.forget()  # else an idle handle would serve a deleted namespace
        check_named(namespace, hop=hop)  # raises, naming the namespace and its path
        return namespace  # named again meanwhile

    async def _checkout(self, pool: Pool, namespace: Namespace, hop: str | None) -> Worker:
        namespace = pool.namespace = await self._locate(pool, namespace, hop)
        with pool.lock:
            if pool.idle:
                worker = pool.idle.pop()
                worker.busy = True
                return worker
            pool.size += 1
        try:
            worker = Worker(pool, self.limits.idle_timeout, self.limits.watch_interval)
        except BaseException:
            with pool.lock:
                pool.size -= 1
            raise
        self._track(worker.thread)
        try:
            await call_on(worker, lambda: worker.enter(namespace, hop))
        except BaseException:
            self._checkin(worker, healthy=False)
            raise
        return worker

    def _track(self, thread: threading.Thread) -> None:
        """Remember ``thread`` for :meth:`aclose`; drop the finished ones now and then (when the
        list has doubled since), so the list stays about as long as the live threads."""
        self._threads.append(thread)
        if len(self._threads) >= self._prune_at:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._prune_at = max(2 * len(self._threads), 64)

    def _checkin(self, worker: Worker, *, healthy: bool) -> None:
        pool = worker.pool
        with pool.lock:
            worker.busy = False
            if healthy and not self._closed and worker.generation == pool.generation:
                pool.idle.append(worker)
                return
            pool.size -= 1
        worker.stop()  # not reused: its job failed unexpectedly, or its pool was forgotten


def _join(threads: list[threading.Thread], bound: float) -> None:
    """Join ``threads``, within ``bound`` seconds for all of them (blocking)."""
    deadline = time.monotonic() + bound
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))


_DEFAULT: trio.lowlevel.RunVar[Netlink] = trio.lowlevel.RunVar("trionsm_netlink")


def current_netlink() -> Netlink:
    """This Trio run's shared executor (default limits), made on first use.

    It is never closed explicitly: its handle threads retire after ``idle_timeout`` of quiet (or
    once their namespace is gone, see :class:`NetlinkLimits`). Use
    :func:`open_netlink` to own one with a bounded life instead.
    """
    try:
        return _DEFAULT.get()
    except LookupError:
        netlink = Netlink(NetlinkLimits())
        _DEFAULT.set(netlink)
        return netlink


@asynccontextmanager
async def open_netlink(limits: NetlinkLimits | None = None) -> AsyncIterator[Netlink]:
    """An executor that lives for the block; on exit (shielded) it waits for running jobs, closes
    every handle and joins their threads, so no namespace is held afterwards."""
    netlink = Netlink(limits or NetlinkLimits())
    try:
        yield netlink
    finally:
        with trio.CancelScope(shield=True):
            await netlink.aclose()
