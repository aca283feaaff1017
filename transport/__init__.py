"""How calls travel: one interface, several carriers, chosen by URL scheme.

| scheme | carrier |
|---|---|
| ``inproc://name`` | direct calls in one Trio run (tests, scenarios, embedded nodes) |
| ``unix:///path``, ``tcp://host:port`` | gRPC over grpclib on trio-asyncio (NSM's wire format) |
| ``zmq+tcp://host:port``, ``zmq+ipc:///path`` | ZeroMQ ROUTER/DEALER, msgpack envelopes |
| ``inode://dev/ino`` | NSM's out-of-band fd reference: parsed and passed on, never dialed |

Map:

* :func:`serve` runs a server for a set of handlers (``{NETWORK_SERVICE: obj, ...}``) until
  cancelled; :func:`open_client` yields a :class:`Client` with typed stubs for every service.
* :data:`METHODS`, :class:`ServiceSpec`, :class:`MethodSpec`: the NSM v1 services as data
  (and :data:`ADMIN`, trionsm's own admin service, with its :class:`AdminClient`).
* :class:`CallContext` (deadline, metadata, peer) reaches every handler; :class:`CallOptions`
  carries a client's deadline and metadata.
* :func:`parse_url` and :class:`Address`: the project's one URL parser.
* :class:`CurveKeys`: CurveZMQ keys for the ZeroMQ carrier (``serve(..., curve=...)``); loaded
  lazily, like the gRPC and ZeroMQ carriers themselves, so an inproc-only program never imports
  trio-asyncio (which changes asyncio process-wide) or pyzmq.
* :func:`open_etcd` yields an :class:`EtcdClient` for etcd's v3 API (put/get/prefix reads,
  create-if-absent, leases, prefix watches of :class:`WatchEvent`), returning :class:`KeyValue`
  and :class:`Lease` values; loaded lazily too (it runs grpclib on trio-asyncio). It is the
  registry's etcd store, not a carrier.

Guarantees, on every carrier: the same typed errors from :mod:`trionsm.errors` (hop, service and
reason survive the trip); handlers run under the caller's deadline; a handler bug is
``Internal`` for that caller while the server keeps serving; leaving a stream's context cancels
it on the server; a server that goes away is ``Unavailable`` to its clients.
"""

from __future__ import annotations

from typing import Any

from ._channel import CallOptions, Channel, ClientStream
from ._context import CLIENT_TOKEN, CLIENT_TOKEN_EXPIRES, REGISTRY_PATH, CallContext, Peer
from ._dispatch import Dispatcher, Handlers
from ._entry import open_client, serve
from ._inproc import InprocChannel, InprocFaults, InprocServer, serve_inproc
from ._services import (
    ADMIN,
    HEALTH,
    IPAM,
    METHODS,
    MONITOR_CONNECTION,
    NETWORK_SERVICE,
    NS_REGISTRY,
    NSE_REGISTRY,
    SERVICES,
    Cardinality,
    MethodSpec,
    ServiceSpec,
)
from ._stubs import (
    AdminClient,
    Client,
    HealthClient,
    IpamClient,
    MonitorConnectionClient,
    NetworkServiceClient,
    NetworkServiceEndpointRegistryClient,
    NetworkServiceRegistryClient,
)
from ._url import Address, Scheme, parse_url


def __getattr__(name: str) -> Any:
    if name == "CurveKeys":
        from ._zmq_curve import CurveKeys

        return CurveKeys
    if name in {"EtcdClient", "open_etcd"}:
        from . import _etcd_client

        return getattr(_etcd_client, name)
    if name in {"KeyValue", "Lease", "WatchEvent", "WatchEventKind"}:
        from . import _etcd_common

        return getattr(_etcd_common, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ADMIN",
    "CLIENT_TOKEN",
    "CLIENT_TOKEN_EXPIRES",
    "HEALTH",
    "IPAM",
    "METHODS",
    "MONITOR_CONNECTION",
    "NETWORK_SERVICE",
    "NSE_REGISTRY",
    "NS_REGISTRY",
    "REGISTRY_PATH",
    "SERVICES",
    "Address",
    "AdminClient",
    "CallContext",
    "CallOptions",
    "Cardinality",
    "Channel",
    "Client",
    "ClientStream",
    "CurveKeys",
    "Dispatcher",
    "EtcdClient",
    "Handlers",
    "HealthClient",
    "InprocChannel",
    "InprocFaults",
    "InprocServer",
    "IpamClient",
    "KeyValue",
    "Lease",
    "MethodSpec",
    "MonitorConnectionClient",
    "NetworkServiceClient",
    "NetworkServiceEndpointRegistryClient",
    "NetworkServiceRegistryClient",
    "Peer",
    "Scheme",
    "ServiceSpec",
    "WatchEvent",
    "WatchEventKind",
    "open_client",
    "open_etcd",
    "parse_url",
    "serve",
    "serve_inproc",
]
