"""Server-side dispatch shared by every carrier: method lookup, deadlines and error translation.

A carrier decodes bytes (or receives objects), then asks the :class:`Dispatcher` to run the call.
The dispatcher guarantees, whatever the carrier:

* an unknown method is :class:`Unimplemented` naming the path;
* the handler runs under the call's deadline; running past it is :class:`DeadlineExceeded`;
* a :class:`TrionsmError` raised by a handler goes back to the caller as itself (hop, service and
  reason intact); any other exception is logged and goes back as :class:`Internal` naming the hop
  and the method, and the server keeps serving;
* a handler that returns the wrong message type is an :class:`Internal` error, not a wire crash.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import aclosing
from typing import Any

import betterproto2
import trio

from trionsm.errors import DeadlineExceeded, Internal, TrionsmError, Unimplemented

from ._context import CallContext
from ._services import Cardinality, MethodSpec, ServiceSpec

__all__ = ["Dispatcher", "Handlers"]

log = logging.getLogger("trionsm.transport")

Handlers = Mapping[ServiceSpec, object] | Iterable[tuple[ServiceSpec, object]]


class Dispatcher:
    """The handler table of one server.

    Args:
        handlers: ``{SERVICE_SPEC: handler_object, ...}``; every method of each given service
            must exist on its handler object (checked now: ValueError naming what is missing).
        hop: this server's name in errors (``registry``, ``nsmgr@node-1``...).
    """

    def __init__(self, handlers: Handlers, *, hop: str) -> None:
        items = handlers.items() if isinstance(handlers, Mapping) else handlers
        self.hop = hop
        self._table: dict[str, tuple[MethodSpec, Any]] = {}
        for service, handler in items:
            if not isinstance(service, ServiceSpec):
                raise ValueError(f"handlers: keys must be ServiceSpec, got {service!r}")
            for method in service.methods:
                bound = getattr(handler, method.handler, None)
                if not callable(bound):
                    raise ValueError(
                        f"handlers: {type(handler).__name__} serves {service.name} but has no "
                        f"{method.handler}() for {method.path}"
                    )
                self._table[method.path] = (method, bound)

    @property
    def paths(self) -> list[str]:
        return sorted(self._table)

    def lookup(self, path: str) -> tuple[MethodSpec, Any]:
        """The method and bound handler for ``path``; raises :class:`Unimplemented`."""
        found = self._table.get(path)
        if found is None:
            raise Unimplemented(f"method {path!r} is not served here", hop=self.hop)
        return found

    def translate(self, exc: BaseException, method: MethodSpec) -> TrionsmError:
        """The error to send back for an exception a handler raised."""
        if isinstance(exc, TrionsmError):
            return exc
        log.error("%s: handler for %s crashed", self.hop, method.path, exc_info=exc)
        return Internal(
            f"handler for {method.path} failed: {type(exc).__name__}: {exc}", hop=self.hop
        )

    def _check_reply(self, method: MethodSpec, reply: object) -> betterproto2.Message:
        if not isinstance(reply, method.reply):
            raise Internal(
                f"handler for {method.path} returned {type(reply).__name__}, "
                f"not {method.reply.__name__}",
                hop=self.hop,
            )
        return reply

    async def unary(
        self, method: MethodSpec, handler: Any, request: betterproto2.Message, ctx: CallContext
    ) -> betterproto2.Message:
        """Run a unary handler; raises the :class:`TrionsmError` to send back on failure."""
        assert method.cardinality is Cardinality.UNARY_UNARY
        self._check_deadline(method, ctx)
        try:
            with trio.move_on_at(ctx.deadline) as scope:
                reply = await handler(request, ctx)
        except Exception as exc:
            raise self.translate(exc, method) from exc
        if scope.cancelled_caught:  # the call's deadline, not a timeout of the handler's own
            raise DeadlineExceeded(f"{method.path} ran past its deadline", hop=self.hop)
        return self._check_reply(method, reply)

    def _check_deadline(self, method: MethodSpec, ctx: CallContext) -> None:
        if ctx.deadline <= trio.current_time():
            raise DeadlineExceeded(f"{method.path} arrived after its deadline", hop=self.hop)

    async def stream(
        self,
        method: MethodSpec,
        handler: Any,
        request: betterproto2.Message | AsyncIterator[betterproto2.Message],
        ctx: CallContext,
        send: Any,
    ) -> None:
        """Run a streaming handler, awaiting ``send(reply)`` for each reply it yields.

        Returns when the handler's stream ends; raises the :class:`TrionsmError` to send back as
        the stream's final status. Cancelled when the caller goes away.
        """
        assert method.cardinality.server_streams
        self._check_deadline(method, ctx)
        try:
            with trio.move_on_at(ctx.deadline) as scope:
                async with aclosing(handler(request, ctx)) as replies:
                    async for reply in replies:
                        await send(self._check_reply(method, reply))
        except (TrionsmError, trio.BrokenResourceError, trio.ClosedResourceError):
            raise  # an error to send back as is, or the caller went away (nothing to send)
        except Exception as exc:
            raise self.translate(exc, method) from exc
        if scope.cancelled_caught:  # the call's deadline, not a timeout of the handler's own
            raise DeadlineExceeded(f"{method.path} stream ran past its deadline", hop=self.hop)
