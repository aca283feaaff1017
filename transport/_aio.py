"""The one door between Trio and asyncio: trio-asyncio islands for the gRPC carrier.

Theory of operation. grpclib is asyncio code and trionsm is Trio code. trio-asyncio runs an asyncio
event loop *inside* the Trio run, on the same thread. An :class:`Island` is one such loop. It is
opened with :func:`open_island` by the one object that owns it (a gRPC server or a client channel)
and closed with that object; closing it cancels whatever asyncio work still runs in it and waits
for that work to end. Islands are coarse: nothing crosses per HTTP/2 frame, only per call or per
streamed message.

Crossing the border happens here only, in three ways:

* Trio calls asyncio: :meth:`Island.run` awaits an asyncio coroutine function in a new asyncio
  task. Cancelling the Trio caller cancels the task and *waits for it to finish*: trio-asyncio's
  future path keeps the Trio task parked until the asyncio side has really stopped, so no asyncio
  work outlives the call that started it.
* Trio starts asyncio work that outlives one call: :meth:`Island.spawn` returns an
  :class:`AsyncioTask` to cancel and wait for. This is how a stream is consumed: one asyncio
  coroutine reads the whole stream and hands items to Trio through a memory channel. trionsm never
  wraps an asyncio async *iterator* with ``aio_as_trio``: cancelling such a wrapper can crash Trio
  with ``TrioInternalError`` (trio-asyncio reschedules a Trio task that has already finished).
* asyncio calls Trio: :meth:`Island.trio` (awaited from asyncio) runs a Trio function in a new
  Trio task of the island. Cancelling the awaiting asyncio task (grpclib does it when a stream is
  reset, its deadline passes or the server closes) cancels the Trio task and waits for it.

Each crossing costs about 100 µs, which is why the gRPC carrier crosses once per unary call on
each side and once per streamed message.

Why one loop per server and per channel rather than one shared loop: the owner's lifetime bounds
everything that runs in its loop (structured concurrency), and leaving the owner's ``async with``
is a complete cleanup; a shared loop would need a process-wide owner outside every nursery. A loop
costs a few Trio tasks and no threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import trio_asyncio

__all__ = ["AsyncioTask", "Island", "open_island"]

P = ParamSpec("P")
T = TypeVar("T")


async def _call(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    # Create the coroutine inside the asyncio task, as trio_asyncio.aio_as_trio does.
    return await fn(*args, **kwargs)


class AsyncioTask:
    """An asyncio task started from Trio with :meth:`Island.spawn`."""

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self._cancelled = False

    def done(self) -> bool:
        return self._task.done()

    def cancel(self) -> None:
        """Ask the task to stop (it sees ``asyncio.CancelledError``); does not wait."""
        self._cancelled = True
        self._task.cancel()

    async def wait(self) -> None:
        """Wait until the task has finished; re-raise its exception, if any.

        A task stopped by :meth:`cancel` finishes without error. Cancelling the waiting Trio task
        cancels the asyncio task too, and still waits for it to end.
        """
        try:
            await trio_asyncio.run_aio_future(self._task)
        except asyncio.CancelledError:
            if not self._cancelled:
                raise


class Island:
    """One asyncio event loop running inside the Trio run (see the module docstring)."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop

    async def run(
        self, fn: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Trio-flavoured: ``await fn(*args, **kwargs)`` in a new asyncio task of this island.

        Works from any Trio task of the run. Cancelling the caller cancels the asyncio task and
        waits for it to end before raising ``trio.Cancelled``.
        """
        return await self._loop.run_aio_coroutine(_call(fn, *args, **kwargs))  # type: ignore[no-any-return]

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> AsyncioTask:
        """Start ``fn(*args)`` as an asyncio task of this island; never blocks.

        The caller must cancel and wait for the returned task (leaving the island does it for
        any task still running).
        """
        return AsyncioTask(self._loop.create_task(_call(fn, *args)))

    def trio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> asyncio.Future[T]:
        """asyncio-flavoured: a future for ``await fn(*args)`` run in a new Trio task.

        Await it from asyncio code. Cancelling the awaiting asyncio task cancels the Trio task,
        and the future resolves only once that task has ended.
        """
        return self._loop.trio_as_future(fn, *args)  # type: ignore[no-any-return]


@asynccontextmanager
async def open_island() -> AsyncIterator[Island]:
    """Open an asyncio loop for the duration of the block.

    Leaving the block cancels every asyncio task and every Trio task started by :meth:`Island.trio`
    that is still running, and waits for them. An exception raised in the block leaves it as
    itself, not wrapped in the exception group of trio-asyncio's internal nurseries.
    """
    error: Exception | None = None
    async with trio_asyncio.open_loop() as loop:
        try:
            yield Island(loop)
        except Exception as exc:  # never Cancelled: that must reach its own cancel scope
            error = exc
    if error is not None:
        raise error
