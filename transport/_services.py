"""The NSM v1 services (and trionsm's admin service) as data: every method's path, message
types, cardinality and handler name.

One table drives every carrier: a server looks a method up by its gRPC path, decodes the request
type, calls ``getattr(handler, method.handler)`` and encodes the reply type; a client stub does the
reverse. The paths are NSM v1's exactly; a test checks this table
against the generated ``*Base`` classes.

Handler conventions (what a service object given to ``serve`` implements):

* unary: ``async def request(self, request, ctx: CallContext) -> reply``;
* server-streaming: ``def find(self, query, ctx) -> AsyncIterator[reply]`` (an async generator);
* bidi-streaming: ``def manage_prefixes(self, requests: AsyncIterator, ctx) -> AsyncIterator``.
"""

from __future__ import annotations

import enum

import attrs
import betterproto2

from trionsm.api.connection import Connection, ConnectionEvent, MonitorScopeSelector
from trionsm.api.google.protobuf import Empty
from trionsm.api.grpc.health.v1 import HealthCheckRequest, HealthCheckResponse
from trionsm.api.ipam import PrefixRequest, PrefixResponse
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

__all__ = [
    "ADMIN",
    "HEALTH",
    "IPAM",
    "METHODS",
    "MONITOR_CONNECTION",
    "NETWORK_SERVICE",
    "NSE_REGISTRY",
    "NS_REGISTRY",
    "SERVICES",
    "Cardinality",
    "MethodSpec",
    "ServiceSpec",
]


class Cardinality(enum.Enum):
    """How many messages go each way."""

    UNARY_UNARY = "unary"
    UNARY_STREAM = "server-streaming"
    STREAM_STREAM = "bidi-streaming"

    @property
    def server_streams(self) -> bool:
        return self is not Cardinality.UNARY_UNARY

    @property
    def client_streams(self) -> bool:
        return self is Cardinality.STREAM_STREAM


@attrs.frozen
class MethodSpec:
    """One RPC: ``/<service>/<name>``, its message classes and the handler attribute it calls."""

    service: str
    name: str
    request: type[betterproto2.Message]
    reply: type[betterproto2.Message]
    cardinality: Cardinality
    handler: str

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


@attrs.frozen
class ServiceSpec:
    """A gRPC service: its full name and its methods."""

    name: str
    methods: tuple[MethodSpec, ...]

    def method(self, handler: str) -> MethodSpec:
        """The method whose handler attribute is ``handler``."""
        for method in self.methods:
            if method.handler == handler:
                return method
        raise KeyError(f"{self.name} has no method {handler!r}")


def _service(name: str, *methods: tuple[str, type, type, Cardinality, str]) -> ServiceSpec:
    return ServiceSpec(name, tuple(MethodSpec(name, *m) for m in methods))


_UNARY = Cardinality.UNARY_UNARY
_STREAM = Cardinality.UNARY_STREAM

NETWORK_SERVICE = _service(
    "networkservice.NetworkService",
    ("Request", NetworkServiceRequest, Connection, _UNARY, "request"),
    ("Close", Connection, Empty, _UNARY, "close"),
)
MONITOR_CONNECTION = _service(
    "connection.MonitorConnection",
    ("MonitorConnections", MonitorScopeSelector, ConnectionEvent, _STREAM, "monitor_connections"),
)
NS_REGISTRY = _service(
    "registry.NetworkServiceRegistry",
    ("Register", NetworkService, NetworkService, _UNARY, "register"),
    ("Find", NetworkServiceQuery, NetworkServiceResponse, _STREAM, "find"),
    ("Unregister", NetworkService, Empty, _UNARY, "unregister"),
)
NSE_REGISTRY = _service(
    "registry.NetworkServiceEndpointRegistry",
    ("Register", NetworkServiceEndpoint, NetworkServiceEndpoint, _UNARY, "register"),
    ("Find", NetworkServiceEndpointQuery, NetworkServiceEndpointResponse, _STREAM, "find"),
    ("Unregister", NetworkServiceEndpoint, Empty, _UNARY, "unregister"),
)
IPAM = _service(
    "ipam.IPAM",
    (
        "ManagePrefixes",
        PrefixRequest,
        PrefixResponse,
        Cardinality.STREAM_STREAM,
        "manage_prefixes",
    ),
)
HEALTH = _service(
    "grpc.health.v1.Health",
    ("Check", HealthCheckRequest, HealthCheckResponse, _UNARY, "check"),
    ("Watch", HealthCheckRequest, HealthCheckResponse, _STREAM, "watch"),
)

ADMIN = _service(
    "trionsm.admin.v1.Admin",
    ("Tree", TreeRequest, TreeResponse, _UNARY, "tree"),
    ("Connections", ConnectionsRequest, ConnectionsResponse, _UNARY, "connections"),
    ("Crash", CrashRequest, CrashResponse, _UNARY, "crash"),
)
"""trionsm's own admin service (``trionsm node``): not part of NSM's API."""

SERVICES: tuple[ServiceSpec, ...] = (
    NETWORK_SERVICE,
    MONITOR_CONNECTION,
    NS_REGISTRY,
    NSE_REGISTRY,
    IPAM,
    HEALTH,
    ADMIN,
)
"""Every service trionsm speaks: NSM v1's, gRPC health, and trionsm's admin service."""

METHODS: dict[str, MethodSpec] = {m.path: m for s in SERVICES for m in s.methods}
"""Every method by its gRPC path."""
