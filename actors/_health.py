"""``grpc.health.v1.Health`` for every role: SERVING while the role serves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import trio

from trionsm.api.grpc.health.v1 import HealthCheckRequest, HealthCheckResponse
from trionsm.api.grpc.health.v1 import HealthCheckResponseServingStatus as ServingStatus
from trionsm.transport import CallContext

__all__ = ["Health"]


class Health:
    """Answers SERVING for the overall server (``""``) and the named services, else UNKNOWN.

    Args:
        services: the gRPC service names this server serves (None: any name is SERVING).
    """

    def __init__(self, services: Iterable[str] | None = None) -> None:
        self._served = None if services is None else frozenset({"", *services})

    def _status(self, request: HealthCheckRequest) -> HealthCheckResponse:
        known = self._served is None or request.service in self._served
        status = ServingStatus.SERVING if known else ServingStatus.SERVICE_UNKNOWN
        return HealthCheckResponse(status=status)

    async def check(self, request: HealthCheckRequest, ctx: CallContext) -> HealthCheckResponse:
        return self._status(request)

    async def watch(
        self, request: HealthCheckRequest, ctx: CallContext
    ) -> AsyncIterator[HealthCheckResponse]:
        yield self._status(request)
        await trio.sleep_forever()
