"""The nsmgr's registry front: both registry APIs, relayed upstream with NSM's ``localbypass``.

Theory of operation. Endpoints and forwarders on a node register with their nsmgr, not with the
registry. The nsmgr remembers each local registration's real URL (a unix socket, an inproc name,
a pod address) and registers it upstream under the nsmgr's own public URL, so remote nodes reach
local endpoints through this nsmgr. On Find it swaps the real URL back for its own local entries,
and hides entries that carry its URL but that it does not know (left over from before an nsmgr
restart). Network services pass straight through.

Upstream is another registry reached over a transport URL, or, when the node has none, an
embedded in-memory :class:`~trionsm.actors.registry.Registry` (NSM's ``memory`` + ``localbypass``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import trio

from trionsm.api.google.protobuf import Empty
from trionsm.api.registry import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceQuery,
    NetworkServiceResponse,
)
from trionsm.errors import InvalidArgument
from trionsm.transport import NS_REGISTRY, NSE_REGISTRY, CallContext, Client, Handlers

__all__ = ["LocalBypass", "localbypass_handlers"]


def _timeout(ctx: CallContext) -> float | None:
    remaining = ctx.remaining()
    return None if remaining == float("inf") else max(remaining, 0.0)


class LocalBypass:
    """Relays both registry APIs upstream, rewriting local endpoints' URLs.

    Args:
        public_url: the nsmgr's URL as remote nodes dial it (registered upstream).
        upstream: the registry client (``client.nse_registry``/``client.ns_registry`` are used).
        hop: the nsmgr's name in errors.
    """

    def __init__(self, public_url: str, upstream: Client, *, hop: str) -> None:
        self.public_url = public_url
        self.hop = hop
        self._upstream = upstream
        self._local: dict[str, str] = {}  # endpoint name -> its real URL
        self._registered = trio.Event()  # set (and replaced) at each local registration

    def local_url(self, name: str) -> str | None:
        """The real URL of a local endpoint (or forwarder) registered here."""
        return self._local.get(name)

    async def wait_local(self, name: str, grace: float) -> str | None:
        """:meth:`local_url` once ``name`` registers here, waiting at most ``grace`` seconds."""
        with trio.move_on_after(grace):
            while name not in self._local:
                await self._registered.wait()
        return self._local.get(name)

    def _inward(self, nse: NetworkServiceEndpoint) -> NetworkServiceEndpoint | None:
        """An upstream entry as local callers must see it (None: hide it)."""
        if nse.url != self.public_url:
            return nse
        real = self._local.get(nse.name)
        if real is None:
            return None  # carries our URL but is not ours (any more): stale
        return dataclasses.replace(nse, url=real)

    # -- NetworkServiceEndpointRegistry ----------------------------------------------------------

    async def register(
        self, request: NetworkServiceEndpoint, ctx: CallContext
    ) -> NetworkServiceEndpoint:
        if not request.url:
            raise InvalidArgument(
                f"network_service_endpoint.url: empty for {request.name!r}; "
                "a local endpoint registers the URL it serves on",
                hop=self.hop,
            )
        outward = dataclasses.replace(request, url=self.public_url)
        # Known locally before upstream stores it: watchers see the entry the moment it lands,
        # and must already be able to map it back to its real URL.
        previous = self._local.get(request.name)
        self._local[request.name] = request.url
        try:
            stored = await self._upstream.nse_registry.register(
                outward, timeout=_timeout(ctx), metadata=dict(ctx.metadata)
            )
        except BaseException:
            if previous is None:
                self._local.pop(request.name, None)
            else:
                self._local[request.name] = previous
            raise
        self._registered.set()
        self._registered = trio.Event()
        return dataclasses.replace(stored, url=request.url)

    async def find(
        self, query: NetworkServiceEndpointQuery, ctx: CallContext
    ) -> AsyncIterator[NetworkServiceEndpointResponse]:
        async with self._upstream.nse_registry.find(
            query, timeout=None if query.watch else _timeout(ctx), metadata=dict(ctx.metadata)
        ) as stream:
            async for response in stream:
                nse = response.network_service_endpoint
                if nse is None:
                    continue
                inward = self._inward(nse)
                if inward is None:
                    continue
                if inward is not nse:
                    response = NetworkServiceEndpointResponse(
                        network_service_endpoint=inward, deleted=response.deleted
                    )
                yield response

    async def unregister(self, request: NetworkServiceEndpoint, ctx: CallContext) -> Empty:
        outward = dataclasses.replace(request, url=self.public_url)
        await self._upstream.nse_registry.unregister(
            outward, timeout=_timeout(ctx), metadata=dict(ctx.metadata)
        )
        self._local.pop(request.name, None)
        return Empty()


class _Services:
    """NetworkServiceRegistry: straight through to upstream."""

    def __init__(self, upstream: Client) -> None:
        self._upstream = upstream

    async def register(self, request: NetworkService, ctx: CallContext) -> NetworkService:
        return await self._upstream.ns_registry.register(
            request, timeout=_timeout(ctx), metadata=dict(ctx.metadata)
        )

    async def find(
        self, query: NetworkServiceQuery, ctx: CallContext
    ) -> AsyncIterator[NetworkServiceResponse]:
        async with self._upstream.ns_registry.find(
            query, timeout=None if query.watch else _timeout(ctx), metadata=dict(ctx.metadata)
        ) as stream:
            async for response in stream:
                yield response

    async def unregister(self, request: NetworkService, ctx: CallContext) -> Empty:
        await self._upstream.ns_registry.unregister(
            request, timeout=_timeout(ctx), metadata=dict(ctx.metadata)
        )
        return Empty()


def localbypass_handlers(bypass: LocalBypass, upstream: Client) -> Handlers:
    """Both registry services as the nsmgr serves them."""
    handlers: dict[Any, Any] = {NSE_REGISTRY: bypass, NS_REGISTRY: _Services(upstream)}
    return handlers
