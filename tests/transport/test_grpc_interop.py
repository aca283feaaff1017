"""Wire compatibility of the gRPC carrier with grpcio, both ways.

grpcio's stubs are generated here from proto/ (``grpc_tools.protoc --python_out
--grpc_python_out``) into a temporary directory and loaded by file location: the directory is
never put on ``sys.path``, so its ``grpc/`` folder cannot shadow grpcio. grpcio is blocking, so
its calls run in worker threads (``trio.to_thread``); its server runs its own thread pool.
"""

from __future__ import annotations

import datetime
import importlib.util
import subprocess
import sys
import threading
import types
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, TypeVar

import attrs
import grpc
import pytest
import trio

from trionsm.api.connection import Connection, ConnectionEvent, MonitorScopeSelector
from trionsm.api.google.protobuf import Empty
from trionsm.api.grpc.health.v1 import (
    HealthCheckRequest,
    HealthCheckResponse,
    HealthCheckResponseServingStatus,
)
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.api.registry import (
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceLabels,
)
from trionsm.errors import NotFound, Unimplemented
from trionsm.transport import (
    HEALTH,
    MONITOR_CONNECTION,
    NETWORK_SERVICE,
    NSE_REGISTRY,
    CallContext,
    CallOptions,
    open_client,
    serve,
)

ROOT = Path(__file__).resolve().parents[2]
INCLUDES = ["proto/networkservice", "proto/registry", "proto/ipam", "proto"]  # as proto/generate.sh
HANG = 20  # seconds: a hang catcher, not a speed test
NO_PROXY = [("grpc.enable_http_proxy", 0)]
T = TypeVar("T")


def _load(mp: pytest.MonkeyPatch, name: str, path: Path) -> ModuleType:
    """Load a generated module; it stays in ``sys.modules`` (where the others import it by
    name) only until ``mp`` is undone."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    mp.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """grpcio messages and stubs for proto/, generated now and loaded by file location."""
    out = tmp_path_factory.mktemp("grpcio")
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto").rglob("*.proto"))
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        *(f"-I{include}" for include in INCLUDES),
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"protoc failed:\n{result.stderr}"
    health_dir = out / "grpc" / "health" / "v1"
    modules: dict[str, ModuleType] = {}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("connectioncontext", "connection", "networkservice", "registry"):
            modules[name] = _load(mp, f"{name}_pb2", out / f"{name}_pb2.py")
        health = _load(mp, "interop_health_pb2", health_dir / "health_pb2.py")
        # health_pb2_grpc does `from grpc.health.v1 import health_pb2`: serve it our module
        # under those names for the duration of the load, without touching grpcio's package.
        for package in ("grpc.health", "grpc.health.v1"):
            mp.setitem(sys.modules, package, types.ModuleType(package))
        mp.setattr(sys.modules["grpc.health.v1"], "health_pb2", health, raising=False)
        mp.setitem(sys.modules, "grpc.health.v1.health_pb2", health)
        modules["health"] = health
        for name in ("connection", "networkservice", "registry"):
            modules[f"{name}_grpc"] = _load(mp, f"{name}_pb2_grpc", out / f"{name}_pb2_grpc.py")
        health_grpc = health_dir / "health_pb2_grpc.py"
        modules["health_grpc"] = _load(mp, "interop_health_pb2_grpc", health_grpc)
    return SimpleNamespace(**modules)


class Service:
    """NetworkService, MonitorConnection, the NSE registry and health, recording contexts."""

    def __init__(self) -> None:
        self.seen: list[CallContext] = []
        self.endpoints: dict[str, NetworkServiceEndpoint] = {}

    async def request(self, request: NetworkServiceRequest, ctx: CallContext) -> Connection:
        self.seen.append(ctx)
        connection = request.connection or Connection()
        if connection.network_service == "missing":
            raise NotFound("no such network service", hop="nse-1", service="missing")
        return Connection(
            id=connection.id,
            network_service=connection.network_service,
            labels={**connection.labels, "served": "trionsm"},
        )

    async def close(self, connection: Connection, ctx: CallContext) -> Empty:
        return Empty()

    async def monitor_connections(
        self, selector: MonitorScopeSelector, ctx: CallContext
    ) -> AsyncIterator[ConnectionEvent]:
        for n in range(int(selector.network_services[0])):
            yield ConnectionEvent(connections={str(n): Connection(id=str(n))})

    async def register(
        self, endpoint: NetworkServiceEndpoint, ctx: CallContext
    ) -> NetworkServiceEndpoint:
        self.endpoints[endpoint.name] = endpoint
        return endpoint

    async def find(
        self, query: NetworkServiceEndpointQuery, ctx: CallContext
    ) -> AsyncIterator[NetworkServiceEndpointResponse]:
        for endpoint in list(self.endpoints.values()):
            yield NetworkServiceEndpointResponse(network_service_endpoint=endpoint)

    async def unregister(self, endpoint: NetworkServiceEndpoint, ctx: CallContext) -> Empty:
        del self.endpoints[endpoint.name]
        return Empty()

    async def check(self, request: HealthCheckRequest, ctx: CallContext) -> HealthCheckResponse:
        return HealthCheckResponse(status=HealthCheckResponseServingStatus.SERVING)

    async def watch(
        self, request: HealthCheckRequest, ctx: CallContext
    ) -> AsyncIterator[HealthCheckResponse]:
        yield HealthCheckResponse(status=HealthCheckResponseServingStatus.SERVING)


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


@pytest.fixture(params=["tcp", "unix"])
async def our_server(
    request: pytest.FixtureRequest, nursery: trio.Nursery, tmp_path: Path
) -> tuple[Service, str]:
    """Our server, and the target grpcio dials to reach it."""
    service = Service()
    handlers = {NETWORK_SERVICE: service, MONITOR_CONNECTION: service}
    handlers |= {NSE_REGISTRY: service, HEALTH: service}
    url = "tcp://127.0.0.1:0" if request.param == "tcp" else f"unix://{tmp_path}/nsm.sock"
    server = await nursery.start(
        lambda task_status: serve(url, handlers, hop="nse-1", task_status=task_status)
    )
    return service, f"127.0.0.1:{server.address.port}" if request.param == "tcp" else server.url


@pytest.fixture
def grpcio_channel(our_server: tuple[Service, str]) -> Iterator[grpc.Channel]:
    channel = grpc.insecure_channel(our_server[1], options=NO_PROXY)
    yield channel
    channel.close()


async def test_grpcio_calls_the_network_service(
    pb: SimpleNamespace, our_server: tuple[Service, str], grpcio_channel: grpc.Channel
) -> None:
    service = our_server[0]
    stub = pb.networkservice_grpc.NetworkServiceStub(grpcio_channel)
    labels = {"app": "nsc"}
    request = pb.networkservice.NetworkServiceRequest(
        connection=pb.connection.Connection(id="c-1", network_service="icmp", labels=labels)
    )
    with trio.fail_after(HANG):
        reply = await in_thread(
            lambda: stub.Request(request, timeout=10, metadata=[("nsm-client-token", "jwt")])
        )
        empty = await in_thread(lambda: stub.Close(reply, timeout=10))
    assert (reply.id, reply.network_service) == ("c-1", "icmp")
    assert dict(reply.labels) == {"app": "nsc", "served": "trionsm"}
    assert empty.ByteSize() == 0
    assert service.seen[0].client_token == "jwt"
    # grpcio's core rounds the grpc-timeout it sends up (to a short encoding): 10 s may arrive
    # as a little over 10 s.
    assert 5 < service.seen[0].remaining() <= 11


async def test_grpcio_sees_our_errors_as_grpc_statuses(
    pb: SimpleNamespace, our_server: tuple[Service, str], grpcio_channel: grpc.Channel
) -> None:
    stub = pb.networkservice_grpc.NetworkServiceStub(grpcio_channel)
    request = pb.networkservice.NetworkServiceRequest(
        connection=pb.connection.Connection(id="c-1", network_service="missing")
    )
    with trio.fail_after(HANG):
        with pytest.raises(grpc.RpcError) as info:
            await in_thread(lambda: stub.Request(request, timeout=10))
        error: Any = info.value
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == "no such network service"
        assert ("trionsm-hop-bin", b"nse-1") in error.trailing_metadata()
        teleport = grpcio_channel.unary_unary("/networkservice.NetworkService/Teleport")
        with pytest.raises(grpc.RpcError) as info:
            await in_thread(lambda: teleport(b"", timeout=10))
        error = info.value
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "Teleport" in error.details()


async def test_grpcio_reads_a_server_stream(
    pb: SimpleNamespace, our_server: tuple[Service, str], grpcio_channel: grpc.Channel
) -> None:
    stub = pb.connection_grpc.MonitorConnectionStub(grpcio_channel)
    selector = pb.connection.MonitorScopeSelector(network_services=["3"])
    with trio.fail_after(HANG):
        events = await in_thread(lambda: list(stub.MonitorConnections(selector, timeout=10)))
    assert [list(event.connections) for event in events] == [["0"], ["1"], ["2"]]


async def test_grpcio_registers_finds_and_unregisters_an_endpoint(
    pb: SimpleNamespace, our_server: tuple[Service, str], grpcio_channel: grpc.Channel
) -> None:
    service = our_server[0]
    stub = pb.registry_grpc.NetworkServiceEndpointRegistryStub(grpcio_channel)
    expires = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)
    endpoint = pb.registry.NetworkServiceEndpoint(
        name="nse-icmp-1",
        network_service_names=["icmp"],
        network_service_labels={"icmp": pb.registry.NetworkServiceLabels(labels={"app": "x"})},
        url="tcp://10.0.0.1:5002",
    )
    endpoint.expiration_time.FromDatetime(expires)
    with trio.fail_after(HANG):
        registered = await in_thread(lambda: stub.Register(endpoint, timeout=10))
        query = pb.registry.NetworkServiceEndpointQuery(network_service_endpoint=endpoint)
        found = await in_thread(lambda: list(stub.Find(query, timeout=10)))
        await in_thread(lambda: stub.Unregister(endpoint, timeout=10))
    assert registered == endpoint
    assert [response.network_service_endpoint for response in found] == [endpoint]
    assert service.endpoints == {}
    ours = NetworkServiceEndpoint.parse(endpoint.SerializeToString())
    assert ours.expiration_time == expires
    assert ours.network_service_labels == {"icmp": NetworkServiceLabels(labels={"app": "x"})}


async def test_grpcio_checks_our_health(
    pb: SimpleNamespace, our_server: tuple[Service, str], grpcio_channel: grpc.Channel
) -> None:
    stub = pb.health_grpc.HealthStub(grpcio_channel)
    with trio.fail_after(HANG):
        reply = await in_thread(lambda: stub.Check(pb.health.HealthCheckRequest(), timeout=10))
    assert reply.status == pb.health.HealthCheckResponse.SERVING


# ------------------------------------------------------------------ our client, grpcio server


@pytest.fixture
async def grpcio_server(pb: SimpleNamespace) -> AsyncIterator[tuple[str, list[Any]]]:
    """A grpcio server (thread pool) for NetworkService and MonitorConnection."""
    seen: list[Any] = []

    class NetworkService(pb.networkservice_grpc.NetworkServiceServicer):  # type: ignore[misc,name-defined]
        def Request(self, request: Any, context: Any) -> Any:
            seen.append(dict(context.invocation_metadata()))
            if request.connection.network_service == "missing":
                context.abort(grpc.StatusCode.NOT_FOUND, "grpcio has no such service")
            reply = pb.connection.Connection()
            reply.CopyFrom(request.connection)
            reply.labels["served"] = "grpcio"
            return reply

        def Close(self, request: Any, context: Any) -> Any:
            return pb.networkservice.google_dot_protobuf_dot_empty__pb2.Empty()

    class Monitor(pb.connection_grpc.MonitorConnectionServicer):  # type: ignore[misc,name-defined]
        def MonitorConnections(self, request: Any, context: Any) -> Iterator[Any]:
            for n in range(int(request.network_services[0])):
                event = pb.connection.ConnectionEvent()
                event.connections[str(n)].id = str(n)
                yield event
            if request.network_services[1:] == ["quiet"]:
                stopping.wait(10)  # a quiet stream, until the server stops

    stopping = threading.Event()
    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=NO_PROXY)
    pb.networkservice_grpc.add_NetworkServiceServicer_to_server(NetworkService(), server)
    pb.connection_grpc.add_MonitorConnectionServicer_to_server(Monitor(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"tcp://127.0.0.1:{port}", seen
    finally:
        stopping.set()
        await in_thread(lambda: server.stop(grace=None).wait())


async def test_a_quiet_stream_to_a_grpcio_server_survives_our_keepalive(
    grpcio_server: tuple[str, list[Any]],
) -> None:
    """Our client PINGs only servers that welcome it: grpcio answers a PING per second on a
    quiet stream with GOAWAY too_many_pings (after about 4 s), and so does grpc-go."""
    url, _ = grpcio_server
    selector = MonitorScopeSelector(network_services=["1", "quiet"])
    with trio.fail_after(HANG):
        async with (
            open_client(url) as client,
            client.monitor_connection.monitor_connections(selector) as events,
        ):
            await events.__anext__()
            with trio.move_on_after(5):  # the server stays quiet: the stream stays open
                await events.__anext__()


async def test_our_client_calls_a_grpcio_server(grpcio_server: tuple[str, list[Any]]) -> None:
    url, seen = grpcio_server
    request = NetworkServiceRequest(
        connection=Connection(id="c-1", network_service="icmp", labels={"app": "nsc"})
    )
    with trio.fail_after(HANG):
        async with open_client(url) as client:
            reply = await client.network_service.request(
                request, timeout=10, metadata={"nsm-client-token": "jwt"}
            )
            assert await client.network_service.close(reply) == Empty()
            selector = MonitorScopeSelector(network_services=["3"])
            async with client.monitor_connection.monitor_connections(selector) as events:
                ids = [next(iter(event.connections)) async for event in events]
            missing = NetworkServiceRequest(connection=Connection(network_service="missing"))
            with pytest.raises(NotFound, match="grpcio has no such service") as info:
                await client.network_service.request(missing)
            assert info.value.hop == url  # a foreign server: the target is the hop
            bogus = attrs.evolve(NETWORK_SERVICE.methods[0], name="Teleport")
            with pytest.raises(Unimplemented, match="Teleport"):
                await client.channel.unary(bogus, request, CallOptions())
    assert reply.labels == {"app": "nsc", "served": "grpcio"}
    assert ids == ["0", "1", "2"]
    assert seen[0]["nsm-client-token"] == "jwt"
