"""The method table that drives every carrier matches the generated services exactly."""

from __future__ import annotations

import pytest
from betterproto2.grpclib import ServiceBase
from grpclib.const import Cardinality as GrpcCardinality

from trionsm.api.connection import MonitorConnectionBase
from trionsm.api.grpc.health.v1 import HealthBase
from trionsm.api.ipam import IpamBase
from trionsm.api.networkservice import NetworkServiceBase
from trionsm.api.registry import NetworkServiceEndpointRegistryBase, NetworkServiceRegistryBase
from trionsm.api.trionsm.admin.v1 import AdminBase
from trionsm.transport import METHODS, SERVICES, Cardinality, Dispatcher

BASES: list[type[ServiceBase]] = [
    NetworkServiceBase,
    MonitorConnectionBase,
    NetworkServiceRegistryBase,
    NetworkServiceEndpointRegistryBase,
    IpamBase,
    HealthBase,
    AdminBase,
]
CARDINALITY = {
    GrpcCardinality.UNARY_UNARY: Cardinality.UNARY_UNARY,
    GrpcCardinality.UNARY_STREAM: Cardinality.UNARY_STREAM,
    GrpcCardinality.STREAM_STREAM: Cardinality.STREAM_STREAM,
}


def test_the_table_is_the_generated_services() -> None:
    generated = {path: handler for base in BASES for path, handler in base().__mapping__().items()}
    assert set(METHODS) == set(generated)
    for path, handler in generated.items():
        method = METHODS[path]
        assert method.request is handler.request_type, path
        assert method.reply is handler.reply_type, path
        assert method.cardinality is CARDINALITY[handler.cardinality], path
        # the handler attribute is the generated Python method name
        assert callable(getattr(type(handler.func.__self__), method.handler)), path


def test_a_handler_missing_a_method_is_refused_up_front() -> None:
    class HalfService:
        async def request(self, request: object, ctx: object) -> object:
            return request

    network_service = next(s for s in SERVICES if s.name == "networkservice.NetworkService")
    with pytest.raises(ValueError, match=r"no close\(\)"):
        Dispatcher({network_service: HalfService()}, hop="test")
