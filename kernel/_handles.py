"""Handles: dedicated threads that sit in one network namespace and run netlink jobs there.

A :class:`Worker` is an OS thread of its own (never one of Trio's): its first job enters the
namespace with setns(2) and opens a plain pyroute2 ``IPRoute()`` there, later jobs get that
:class:`Handle`. It runs queued jobs one at a time and retires after ``idle_timeout`` seconds
without work, closing its socket (and so releasing the namespace). A :class:`Pool` holds one
namespace's workers; :func:`call_on` runs a function on a worker and waits for it from Trio
without abandoning it. Errors raised in a job under :func:`step` become :class:`KernelFailure`,
which :meth:`KernelFailure.typed` turns into :mod:`trionsm.errors` with the hop named.

A thread in a namespace and a socket made in it each keep the namespace alive, with every
interface in it. So while a pool has idle workers, one of them looks every ``watch_interval``
seconds whether the path the pool was last reached by still names its namespace (a stat(2));
once it does not (``ip netns del``, the pod's process exited) the pool is *forgotten*: its idle
workers stop at once and the busy ones when their job ends (:meth:`Pool.forget`).

A job is never abandoned once started (:func:`call_on` waits for it, shielded), and a pyroute2
call has no timeout of its own: 0.9.7's sync API waits on an asyncio queue fed by a
non-blocking datagram transport, so a socket receive timeout (``SO_RCVTIMEO``) has no effect,
and cutting a request short would leave a kernel change in an unknown state. A call that never
returns therefore holds its worker, its caller and ``Netlink.aclose`` until the process's own
shutdown bound (a node's ``shutdown_timeout``) ends the process; the kernel answers rtnetlink
requests, so this takes a kernel bug.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import trio
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from trionsm.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TrionsmError,
)

from ._netns import Namespace, enter_namespace_in_this_thread, is_named

__all__ = ["Handle", "KernelFailure", "Lane", "Pool", "Worker", "call_on", "step"]

T = TypeVar("T")


class Lane(enum.Enum):
    """Which queue a job waits in: each lane has its own capacity."""

    SETUP = "setup"
    TEARDOWN = "teardown"
    PROBE = "probe"


class KernelFailure(Exception):
    """A kernel call failed inside a job: ``code`` is the errno, ``what`` the step that failed."""

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        self.what = what
        super().__init__(code, what)

    def typed(self, hop: str | None) -> TrionsmError:
        """The :mod:`trionsm.errors` class for the errno, naming the step and the cause."""
        name = errno.errorcode.get(self.code, str(self.code))
        reason = f"{self.what}: {os.strerror(self.code)} ({name})"
        return _ERRNO_CLASSES.get(self.code, Internal)(reason, hop=hop)


_ERRNO_CLASSES: dict[int, type[TrionsmError]] = {
    errno.EEXIST: AlreadyExists,
    errno.EADDRINUSE: AlreadyExists,
    errno.ENOENT: NotFound,
    errno.ENODEV: NotFound,
    errno.ESRCH: NotFound,
    errno.ENXIO: NotFound,
    errno.EPERM: PermissionDenied,
    errno.EACCES: PermissionDenied,
    errno.EINVAL: InvalidArgument,
    errno.ERANGE: InvalidArgument,
    errno.EADDRNOTAVAIL: InvalidArgument,
    errno.ENETUNREACH: InvalidArgument,
    errno.EAFNOSUPPORT: InvalidArgument,
    errno.EOPNOTSUPP: InvalidArgument,
    errno.EBUSY: FailedPrecondition,
    errno.ENOBUFS: ResourceExhausted,
    errno.ENOMEM: ResourceExhausted,
    errno.ENOSPC: ResourceExhausted,
}


@contextmanager
def step(what: str) -> Iterator[None]:
    """Inside a job: turn a netlink or OS error in the block into a :class:`KernelFailure`."""
    try:
        yield
    except NetlinkError as exc:
        raise KernelFailure(exc.code, what) from exc
    except OSError as exc:
        raise KernelFailure(exc.errno or errno.EIO, what) from exc


@attrs.frozen
class Handle:
    """What a job receives. Valid only inside the job, on the handle's own thread.

    Attributes:
        namespace: the namespace the thread sits in.
        ipr: a pyroute2 ``IPRoute`` bound to that namespace (never leaves kernel/).
        lock: one lock per namespace, for check-then-act sequences (an address not yet in use,
            a free routing table) that other handles of the same namespace could race with.
    """

    namespace: Namespace
    ipr: Any
    lock: threading.Lock


class Pool:
    """The handles of one namespace. ``lock`` guards ``idle``, ``size``, ``generation`` and
    ``checked`` (handle threads retire themselves and watch the namespace); ``namespace`` (the
    name it was last reached by, which the watch reads) and the limiters are set and used from
    the Trio thread only."""

    def __init__(self, namespace: Namespace, capacity: Mapping[Lane, int]) -> None:
        self.namespace = namespace
        self.lock = threading.Lock()
        self.kernel_lock = threading.Lock()
        self.idle: list[Worker] = []
        self.size = 0
        self.generation = 0  # bumped by forget(): workers of older generations never idle again
        self.checked = time.monotonic()
        self.limiters = {lane: trio.CapacityLimiter(n) for lane, n in capacity.items()}

    def in_use(self) -> bool:
        busy = any(
            limiter.borrowed_tokens or limiter.statistics().tasks_waiting
            for limiter in self.limiters.values()
        )
        return busy or self.size > 0

    def forget(self) -> None:
        """Stop the idle workers now; busy ones stop when their job ends. Any thread; no wait."""
        with self.lock:
            self.generation += 1
            idle, self.idle = self.idle, []
            self.size -= len(idle)
        for worker in idle:
            worker.stop()

    def watch(self, interval: float) -> None:
        """From an idle worker: at most once per ``interval`` per pool, forget the pool if its
        namespace lost its name. A stat(2); never blocks on other workers."""
        now = time.monotonic()
        with self.lock:
            if now - self.checked < interval:
                return
            self.checked = now
        if not is_named(self.namespace):
            self.forget()


class Worker:
    """One handle: a dedicated thread running queued jobs in one namespace, retiring when idle
    for ``idle_timeout`` seconds and watching its namespace every ``watch_interval`` meanwhile."""

    def __init__(self, pool: Pool, idle_timeout: float, watch_interval: float) -> None:
        self.pool = pool
        self.busy = True  # made for a caller; set under pool.lock
        self.generation = pool.generation  # a forget() after this retires it at checkin
        self.handle: Handle | None = None
        self._idle_timeout = idle_timeout
        self._watch_interval = watch_interval
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=self._main, name=f"trionsm-netns-{pool.namespace.ino}", daemon=True
        )
        self.thread.start()

    def enter(self, namespace: Namespace, hop: str | None) -> None:
        """First job of every worker: move into the namespace, open the netlink socket there."""
        enter_namespace_in_this_thread(namespace, hop=hop)
        with step(f"opening a netlink socket in {namespace.url}"):
            ipr = IPRoute()
        self.handle = Handle(namespace=namespace, ipr=ipr, lock=self.pool.kernel_lock)

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)

    def _main(self) -> None:
        try:
            retire_at = time.monotonic() + self._idle_timeout
            while True:
                wait = min(self._watch_interval, retire_at - time.monotonic())
                try:
                    job = self._jobs.get(timeout=max(wait, 0.0))
                except queue.Empty:
                    self.pool.watch(self._watch_interval)  # may stop us: None is queued then
                    if time.monotonic() >= retire_at:
                        if self._retire_if_idle():
                            return
                        retire_at = time.monotonic() + self._idle_timeout  # a job is coming
                    continue
                if job is None:
                    return
                job()
                retire_at = time.monotonic() + self._idle_timeout
        finally:
            if self.handle is not None:
                self.handle.ipr.close()

    def _retire_if_idle(self) -> bool:
        with self.pool.lock:
            if self.busy or not self._jobs.empty():
                return False
            if self in self.pool.idle:  # else forget() or aclose() took it and counted it out
                self.pool.idle.remove(self)
                self.pool.size -= 1
            return True


async def call_on(worker: Worker, fn: Callable[[], T]) -> T:
    """Run ``fn`` on ``worker``'s thread; wait for it without abandoning it."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    results: list[T] = []
    errors: list[BaseException] = []

    def job() -> None:
        try:
            results.append(fn())
        except BaseException as exc:  # handed to the waiting task, raised there
            errors.append(exc)
        with contextlib.suppress(trio.RunFinishedError):  # cannot end while we wait
            token.run_sync_soon(done.set)

    worker.submit(job)
    with trio.CancelScope(shield=True):
        await done.wait()
    if errors:
        raise errors[0]
    return results[0]
