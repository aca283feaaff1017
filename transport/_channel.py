"""The carrier interface: what a client-side channel must do, whatever carries the bytes.

A carrier (inproc, gRPC, ZeroMQ) implements :class:`Channel`; the typed stubs in ``_stubs`` sit on
top of it, so callers never see which carrier is in use. Every carrier raises the same
:mod:`trionsm.errors` classes: an unreachable or vanished server is :class:`Unavailable`, a passed
deadline :class:`DeadlineExceeded`, a method the server lacks :class:`Unimplemented`.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import attrs
import betterproto2
import trio

from trionsm.errors import DeadlineExceeded, TrionsmError, Unavailable

from ._context import _freeze
from ._services import MethodSpec

__all__ = [
    "CallOptions",
    "Channel",
    "ClientStream",
    "ReplyQueue",
    "StreamEnd",
    "as_caller_sees_it",
    "deadline_exceeded",
]


@attrs.frozen(eq=False)
class CallOptions:
    """Per-call options: an absolute deadline (``trio.current_time()`` seconds) and metadata."""

    deadline: float = math.inf
    metadata: Mapping[str, str] = attrs.field(default=None, converter=_freeze)


@attrs.frozen
class StreamEnd:
    """The last item a carrier queues for a stream: how it ended (``error`` None: cleanly)."""

    error: TrionsmError | None


def deadline_exceeded(method: MethodSpec, target: str) -> DeadlineExceeded:
    """The error of a call whose own deadline passed: every carrier names the hop it called.

    The caller's clock enforces a call's deadline, so the caller reports it, naming the hop where
    the call was when its time ran out (the server it called, as the URL it dialed): a server's
    own ``DeadlineExceeded`` for the same deadline may arrive later or, from a dead or partitioned
    server, never.
    """
    return DeadlineExceeded(f"{method.path}: no reply before the deadline", hop=target)


def as_caller_sees_it(
    error: TrionsmError, method: MethodSpec, target: str, deadline: float
) -> TrionsmError:
    """``error`` as the caller reports it: :func:`deadline_exceeded` once the deadline passed."""
    if isinstance(error, DeadlineExceeded) and trio.current_time() >= deadline:
        return deadline_exceeded(method, target)
    return error


class ReplyQueue:
    """The client's end of a stream's replies: a memory channel closed by a :class:`StreamEnd`.

    Carriers queue replies and then one ``StreamEnd``; a channel that closes without one means
    the server went away (``Unavailable`` with ``gone`` as the reason). A ``DeadlineExceeded`` end
    after the call's ``deadline`` is reported as :func:`deadline_exceeded`, as every carrier's
    client reports its own deadline.
    """

    def __init__(
        self,
        replies: trio.MemoryReceiveChannel[Any],
        method: MethodSpec,
        target: str,
        gone: str,
        deadline: float = math.inf,
    ) -> None:
        self._replies = replies
        self._method = method
        self._target = target
        self._gone = gone
        self._deadline = deadline
        self._done = False

    async def next(self) -> betterproto2.Message:
        """The next reply; StopAsyncIteration after a clean end, else the stream's error."""
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._replies.receive()
        except trio.EndOfChannel:
            self._done = True
            raise Unavailable(f"{self._method.path}: {self._gone}", hop=self._target) from None
        if isinstance(item, StreamEnd):
            self._done = True
            if item.error is not None:
                raise as_caller_sees_it(item.error, self._method, self._target, self._deadline)
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]


class ClientStream(Protocol):
    """One streaming call as seen by the client.

    ``send``/``end`` feed a client-streaming (bidi) call; iterate for the replies. Iteration ends
    when the server ends the stream cleanly and raises the server's error otherwise.
    """

    async def send(self, message: betterproto2.Message) -> None: ...

    async def end(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[betterproto2.Message]: ...


class Channel(Protocol):
    """A client's connection to one server URL."""

    @property
    def target(self) -> str:
        """The server's URL (for error messages and ``CallContext.peer``)."""
        ...

    async def unary(
        self, method: MethodSpec, request: betterproto2.Message, options: CallOptions
    ) -> betterproto2.Message:
        """One request, one reply."""
        ...

    def stream(
        self, method: MethodSpec, request: betterproto2.Message | None, options: CallOptions
    ) -> AbstractAsyncContextManager[ClientStream]:
        """Open a streaming call; ``request`` is sent first (None for bidi: use ``send``).

        Leaving the context cancels the call on the server.
        """
        ...

    async def aclose(self) -> None:
        """Close the connection; calls in flight fail with Unavailable."""
        ...
