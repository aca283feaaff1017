"""Typed clients for every NSM service, over any :class:`Channel`.

Each method takes the request plus ``timeout`` (seconds, relative) and ``metadata`` and raises
:mod:`trionsm.errors` classes. Streaming methods return an async context manager: leaving it
cancels the call on the server::

    async with client.nse_registry.find(query) as responses:
        async for response in responses:
            ...
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Generic, TypeVar, cast

import betterproto2
import trio

from trionsm.api.connection import Connection, ConnectionEvent, MonitorScopeSelector
from trionsm.api.google.protobuf import Empty
from trionsm.api.grpc.health.v1 import HealthCheckRequest, HealthCheckResponse
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.api.registry import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceQuery,
    NetworkServiceResponse,
)
from trionsm.api.trionsm.admin.v1 import (
    ConnectionsRequest,
    ConnectionsResponse,
    CrashRequest,
    CrashResponse,
    TreeRequest,
    TreeResponse,
)

from ._channel import CallOptions, Channel, ClientStream
from ._services import (
    ADMIN,
    HEALTH,
    IPAM,
    MONITOR_CONNECTION,
    NETWORK_SERVICE,
    NS_REGISTRY,
    NSE_REGISTRY,
    ServiceSpec,
)

__all__ = [
    "AdminClient",
    "Client",
    "HealthClient",
    "IpamClient",
    "MonitorConnectionClient",
    "NetworkServiceClient",
    "NetworkServiceEndpointRegistryClient",
    "NetworkServiceRegistryClient",
]

R = TypeVar("R", bound=betterproto2.Message)
Meta = Mapping[str, str] | None


class _Stub:
    _service: ServiceSpec

    def __init__(self, channel: Channel, default_timeout: float | None) -> None:
        self._channel = channel
        self._default_timeout = default_timeout

    def _options(self, timeout: float | None, metadata: Meta) -> CallOptions:
        timeout = self._default_timeout if timeout is None else timeout
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        return CallOptions(deadline, metadata)

    async def _unary(
        self,
        handler: str,
        request: betterproto2.Message,
        reply: type[R],
        timeout: float | None,
        metadata: Meta,
    ) -> R:
        method = self._service.method(handler)
        result = await self._channel.unary(method, request, self._options(timeout, metadata))
        return cast(R, result)

    @asynccontextmanager
    async def _stream(
        self,
        handler: str,
        request: betterproto2.Message,
        reply: type[R],
        timeout: float | None,
        metadata: Meta,
    ) -> AsyncIterator[AsyncIterator[R]]:
        method = self._service.method(handler)
        async with self._channel.stream(method, request, self._options(timeout, metadata)) as s:
            yield cast(AsyncIterator[R], s.__aiter__())


class NetworkServiceClient(_Stub):
    """``networkservice.NetworkService``: Request and Close a connection."""

    _service = NETWORK_SERVICE

    async def request(
        self, request: NetworkServiceRequest, *, timeout: float | None = None, metadata: Meta = None
    ) -> Connection:
        return await self._unary("request", request, Connection, timeout, metadata)

    async def close(
        self, connection: Connection, *, timeout: float | None = None, metadata: Meta = None
    ) -> Empty:
        return await self._unary("close", connection, Empty, timeout, metadata)


class MonitorConnectionClient(_Stub):
    """``connection.MonitorConnection``: a stream of connection events."""

    _service = MONITOR_CONNECTION

    def monitor_connections(
        self, selector: MonitorScopeSelector, *, timeout: float | None = None, metadata: Meta = None
    ) -> AbstractAsyncContextManager[AsyncIterator[ConnectionEvent]]:
        return self._stream("monitor_connections", selector, ConnectionEvent, timeout, metadata)


E = TypeVar("E", bound=betterproto2.Message)
Q = TypeVar("Q", bound=betterproto2.Message)


class _RegistryClient(_Stub, Generic[E, Q, R]):
    """Register, Find (a stream) and Unregister, shared by both registry services."""

    _entry: type[E]
    _response: type[R]

    async def register(self, entry: E, *, timeout: float | None = None, metadata: Meta = None) -> E:
        return await self._unary("register", entry, self._entry, timeout, metadata)

    def find(
        self, query: Q, *, timeout: float | None = None, metadata: Meta = None
    ) -> AbstractAsyncContextManager[AsyncIterator[R]]:
        return self._stream("find", query, self._response, timeout, metadata)

    async def unregister(
        self, entry: E, *, timeout: float | None = None, metadata: Meta = None
    ) -> Empty:
        return await self._unary("unregister", entry, Empty, timeout, metadata)


class NetworkServiceRegistryClient(
    _RegistryClient[NetworkService, NetworkServiceQuery, NetworkServiceResponse]
):
    """``registry.NetworkServiceRegistry``."""

    _service = NS_REGISTRY
    _entry = NetworkService
    _response = NetworkServiceResponse


class NetworkServiceEndpointRegistryClient(
    _RegistryClient[
        NetworkServiceEndpoint, NetworkServiceEndpointQuery, NetworkServiceEndpointResponse
    ]
):
    """``registry.NetworkServiceEndpointRegistry``."""

    _service = NSE_REGISTRY
    _entry = NetworkServiceEndpoint
    _response = NetworkServiceEndpointResponse


class IpamClient(_Stub):
    """``ipam.IPAM``: a bidirectional stream of prefix requests and responses."""

    _service = IPAM

    def manage_prefixes(
        self, *, timeout: float | None = None, metadata: Meta = None
    ) -> AbstractAsyncContextManager[ClientStream]:
        method = self._service.method("manage_prefixes")
        return self._channel.stream(method, None, self._options(timeout, metadata))


class HealthClient(_Stub):
    """``grpc.health.v1.Health``."""

    _service = HEALTH

    async def check(
        self, request: HealthCheckRequest, *, timeout: float | None = None, metadata: Meta = None
    ) -> HealthCheckResponse:
        return await self._unary("check", request, HealthCheckResponse, timeout, metadata)

    def watch(
        self, request: HealthCheckRequest, *, timeout: float | None = None, metadata: Meta = None
    ) -> AbstractAsyncContextManager[AsyncIterator[HealthCheckResponse]]:
        return self._stream("watch", request, HealthCheckResponse, timeout, metadata)


class AdminClient(_Stub):
    """``trionsm.admin.v1.Admin``: a node's supervision tree, its connections, Crash."""

    _service = ADMIN

    async def tree(
        self, request: TreeRequest, *, timeout: float | None = None, metadata: Meta = None
    ) -> TreeResponse:
        return await self._unary("tree", request, TreeResponse, timeout, metadata)

    async def connections(
        self, request: ConnectionsRequest, *, timeout: float | None = None, metadata: Meta = None
    ) -> ConnectionsResponse:
        return await self._unary("connections", request, ConnectionsResponse, timeout, metadata)

    async def crash(
        self, request: CrashRequest, *, timeout: float | None = None, metadata: Meta = None
    ) -> CrashResponse:
        return await self._unary("crash", request, CrashResponse, timeout, metadata)


class Client:
    """Typed clients for every service on one channel (what ``open_client`` yields).

    Attributes:
        network_service, monitor_connection, ns_registry, nse_registry, ipam, health, admin: the
            stubs.
        channel: the carrier's channel underneath.
    """

    def __init__(self, channel: Channel, *, default_timeout: float | None = None) -> None:
        self.channel = channel
        self.network_service = NetworkServiceClient(channel, default_timeout)
        self.monitor_connection = MonitorConnectionClient(channel, default_timeout)
        self.ns_registry = NetworkServiceRegistryClient(channel, default_timeout)
        self.nse_registry = NetworkServiceEndpointRegistryClient(channel, default_timeout)
        self.ipam = IpamClient(channel, default_timeout)
        self.health = HealthClient(channel, default_timeout)
        self.admin = AdminClient(channel, default_timeout)

    @property
    def target(self) -> str:
        return self.channel.target

    def __repr__(self) -> str:
        return f"<Client {self.target}>"
