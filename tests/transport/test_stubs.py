"""The typed clients: every service's methods reach the right handler with the right types."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from trionsm.api.google.protobuf import Empty
from trionsm.api.grpc.health.v1 import (
    HealthCheckRequest,
    HealthCheckResponse,
    HealthCheckResponseServingStatus,
)
from trionsm.api.registry import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceQuery,
    NetworkServiceResponse,
)
from trionsm.errors import DeadlineExceeded
from trionsm.transport import (
    HEALTH,
    NS_REGISTRY,
    NSE_REGISTRY,
    CallContext,
    open_client,
    serve,
)


class Registry:
    """A toy store behind both registry services (the real one is the registry actor's job)."""

    def __init__(self) -> None:
        self.entries: dict[str, NetworkServiceEndpoint | NetworkService] = {}

    async def register(self, entry: Any, ctx: CallContext) -> Any:
        self.entries[entry.name] = entry
        return entry

    async def find(
        self, query: NetworkServiceEndpointQuery | NetworkServiceQuery, ctx: CallContext
    ) -> AsyncIterator[NetworkServiceEndpointResponse | NetworkServiceResponse]:
        for entry in list(self.entries.values()):
            if isinstance(query, NetworkServiceEndpointQuery):
                if isinstance(entry, NetworkServiceEndpoint):
                    yield NetworkServiceEndpointResponse(network_service_endpoint=entry)
            elif isinstance(entry, NetworkService):
                yield NetworkServiceResponse(network_service=entry)

    async def unregister(
        self, entry: NetworkServiceEndpoint | NetworkService, ctx: CallContext
    ) -> Empty:
        self.entries.pop(entry.name, None)
        return Empty()


class Health:
    async def check(self, request: HealthCheckRequest, ctx: CallContext) -> HealthCheckResponse:
        if request.service == "slow":
            await trio.sleep(10)
        return HealthCheckResponse(status=HealthCheckResponseServingStatus.SERVING)

    async def watch(
        self, request: HealthCheckRequest, ctx: CallContext
    ) -> AsyncIterator[HealthCheckResponse]:
        yield HealthCheckResponse(status=HealthCheckResponseServingStatus.SERVING)


async def test_registry_clients(nursery: trio.Nursery) -> None:
    registry = Registry()
    handlers = {NS_REGISTRY: registry, NSE_REGISTRY: registry, HEALTH: Health()}
    server = await nursery.start(
        lambda task_status: serve("inproc://stubs", handlers, task_status=task_status)
    )
    with trio.fail_after(10):
        async with open_client(server.url) as client:
            nse = NetworkServiceEndpoint(name="nse-1", network_service_names=["icmp"])
            assert await client.nse_registry.register(nse) == nse
            ns = NetworkService(name="icmp", payload="IP")
            assert await client.ns_registry.register(ns) == ns
            async with client.nse_registry.find(NetworkServiceEndpointQuery()) as found:
                endpoints = [r.network_service_endpoint async for r in found]
            async with client.ns_registry.find(NetworkServiceQuery()) as found_ns:
                services = [r.network_service async for r in found_ns]
            assert endpoints == [nse]
            assert services == [ns]
            assert await client.nse_registry.unregister(nse) == Empty()
            assert "nse-1" not in registry.entries
            health = await client.health.check(HealthCheckRequest())
            assert health.status is HealthCheckResponseServingStatus.SERVING
            async with client.health.watch(HealthCheckRequest()) as statuses:
                assert [s.status async for s in statuses] == [
                    HealthCheckResponseServingStatus.SERVING
                ]


async def test_default_timeout_applies_to_every_call(nursery: trio.Nursery) -> None:
    server = await nursery.start(
        lambda task_status: serve("inproc://timeouts", {HEALTH: Health()}, task_status=task_status)
    )
    with trio.fail_after(10):
        async with open_client(server.url, default_timeout=0.1) as client:
            with pytest.raises(DeadlineExceeded):
                await client.health.check(HealthCheckRequest(service="slow"))
            # an explicit timeout wins over the default
            with pytest.raises(DeadlineExceeded):
                await client.health.check(HealthCheckRequest(service="slow"), timeout=0.05)
