"""One conformance suite, run against every carrier.

Each carrier gets the same calls and must give the same answers: unary and streaming calls, cancel
from either side, deadlines, the typed error mapping, many concurrent streams, large messages,
server death mid-stream and reconnection after a restart on the same URL. The carriers are listed
in ``CARRIERS``; inproc runs twice, once with every message and error encoded as on the wire.

These tests use the real clock (the gRPC and ZeroMQ carriers do real I/O); every wait is bounded
with ``fail_after`` as a hang catcher.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import pytest
import trio

from trionsm.api.connection import Connection, ConnectionEvent, MonitorScopeSelector
from trionsm.api.google.protobuf import Empty
from trionsm.api.ipam import PrefixRequest, PrefixResponse
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TrionsmError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from trionsm.transport import (
    IPAM,
    MONITOR_CONNECTION,
    NETWORK_SERVICE,
    CallContext,
    CallOptions,
    open_client,
    serve,
)

HANG = 30  # seconds: a hang catcher, not a speed test

_names = itertools.count()


@attrs.frozen
class Carrier:
    name: str
    url: Callable[[], str]
    roundtrip_bytes: bool = False


def _free_port() -> int:
    """A TCP port free a moment ago: port 0 would make restart-on-the-same-URL moot."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _socket_path(kind: str) -> str:
    return f"/tmp/trionsm-conformance-{kind}-{os.getpid()}-{next(_names)}.sock"


CARRIERS = [
    Carrier("inproc", lambda: f"inproc://conformance-{next(_names)}"),
    Carrier("inproc-bytes", lambda: f"inproc://conformance-{next(_names)}", roundtrip_bytes=True),
    Carrier("zmq-tcp", lambda: f"zmq+tcp://127.0.0.1:{_free_port()}"),
    Carrier("zmq-ipc", lambda: f"zmq+ipc://{_socket_path('zmq')}"),
    Carrier("grpc-tcp", lambda: f"tcp://127.0.0.1:{_free_port()}"),
    Carrier("grpc-unix", lambda: f"unix://{_socket_path('grpc')}"),
]


@pytest.fixture(params=CARRIERS, ids=lambda c: c.name)
def carrier(request: pytest.FixtureRequest) -> Carrier:
    return request.param  # type: ignore[no-any-return]


WIRE_CARRIERS = [c for c in CARRIERS if c.name != "inproc"]


@pytest.fixture(params=WIRE_CARRIERS, ids=lambda c: c.name)
def wire_carrier(request: pytest.FixtureRequest) -> Carrier:
    """The carriers that encode every message (plain inproc shares the objects)."""
    return request.param  # type: ignore[no-any-return]


ERRORS = [
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Unauthenticated,
    ResourceExhausted,
    FailedPrecondition,
    Unavailable,
    DeadlineExceeded,
]


class Service:
    """NetworkService + MonitorConnection + IPAM handlers with knobs for the tests."""

    def __init__(self) -> None:
        self.seen: list[CallContext] = []
        self.stream_closed = trio.Event()
        self.stream_started = trio.Event()
        self.bidi_closed = trio.Event()

    async def request(self, request: NetworkServiceRequest, ctx: CallContext) -> Connection:
        self.seen.append(ctx)
        connection = request.connection or Connection()
        command = connection.labels.get("do", "")
        if command == "sleep":
            await trio.sleep(float(connection.labels["seconds"]))
        elif command == "raise":
            error: type[TrionsmError] = globals()[connection.labels["error"]]
            raise error("told to fail", hop="endpoint-1", service=connection.network_service)
        elif command == "crash":
            raise ZeroDivisionError("a bug in the handler")
        elif command == "unencodable":
            return Connection(id="x", labels={"k": 3})  # type: ignore[dict-item]
        elif command == "big":
            return Connection(id="big", labels={"blob": "x" * int(connection.labels["bytes"])})
        return Connection(
            id=connection.id,
            network_service=connection.network_service,
            labels={**connection.labels, "served": "yes"},
        )

    async def close(self, connection: Connection, ctx: CallContext) -> Empty:
        return Empty()

    async def monitor_connections(
        self, selector: MonitorScopeSelector, ctx: CallContext
    ) -> AsyncIterator[ConnectionEvent]:
        self.stream_started.set()
        try:
            names = selector.network_services
            count = int(names[0]) if names else 0
            for n in range(count):
                yield ConnectionEvent(connections={str(n): Connection(id=str(n))})
            if len(names) > 1 and names[1] == "fail":
                raise NotFound("no more events", hop="endpoint-1", service="icmp")
            if len(names) > 1 and names[1] == "forever":
                await trio.sleep_forever()
            if len(names) > 2 and names[1] == "big":
                yield ConnectionEvent(
                    connections={"big": Connection(id="big", labels={"blob": "x" * int(names[2])})}
                )
            if len(names) > 1 and names[1] == "unencodable":
                yield ConnectionEvent(connections={"x": Connection(labels={"k": 3})})  # type: ignore[dict-item]
        finally:
            self.stream_closed.set()

    async def manage_prefixes(
        self, requests: AsyncIterator[PrefixRequest], ctx: CallContext
    ) -> AsyncIterator[PrefixResponse]:
        self.bidi_closed = trio.Event()
        try:
            async for request in requests:
                yield PrefixResponse(prefix=request.prefix, exclude_prefixes=["done"])
                if request.prefix == "once":  # ends before the caller ends its requests
                    return
                if request.prefix == "fail":
                    raise NotFound("no more prefixes", hop="endpoint-1")
        finally:
            self.bidi_closed.set()


async def start(
    nursery: trio.Nursery,
    carrier: Carrier,
    service: Service,
    url: str | None = None,
    **options: Any,
) -> Any:
    handlers = {NETWORK_SERVICE: service, MONITOR_CONNECTION: service, IPAM: service}
    return await nursery.start(
        lambda task_status: serve(
            url or carrier.url(),
            handlers,
            hop="endpoint-1",
            roundtrip_bytes=carrier.roundtrip_bytes,
            task_status=task_status,
            **options,
        )
    )


async def drain(
    stream: AbstractAsyncContextManager[AsyncIterator[Any]],
    received: list[Any] | None = None,
    on_event: Callable[[], object] | None = None,
) -> list[Any]:
    """Consume a stream to its end, keeping what arrived (also when it ends with an error)."""
    received = [] if received is None else received
    async with stream as events:
        async for event in events:
            received.append(event)
            if on_event is not None:
                on_event()
    return received


def connection(**labels: str) -> NetworkServiceRequest:
    return NetworkServiceRequest(
        connection=Connection(id="c-1", network_service="icmp", labels=labels)
    )


async def test_unary_round_trip_with_metadata(carrier: Carrier, nursery: trio.Nursery) -> None:
    service = Service()
    server = await start(nursery, carrier, service)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            reply = await client.network_service.request(
                connection(app="nsc"), metadata={"NSM-Client-Token": "jwt.token"}
            )
            assert reply.labels == {"app": "nsc", "served": "yes"}
            assert await client.network_service.close(reply) == Empty()
    ctx = service.seen[0]
    assert ctx.method == "/networkservice.NetworkService/Request"
    assert ctx.client_token == "jwt.token"
    assert ctx.peer is not None


async def test_server_stream_ends_cleanly(carrier: Carrier, nursery: trio.Nursery) -> None:
    server = await start(nursery, carrier, Service())
    with trio.fail_after(HANG):
        async with (
            open_client(server.url) as client,
            client.monitor_connection.monitor_connections(
                MonitorScopeSelector(network_services=["5"])
            ) as events,
        ):
            ids = [next(iter(event.connections)) async for event in events]
    assert ids == ["0", "1", "2", "3", "4"]


async def test_an_error_ends_a_stream_after_the_events_before_it(
    carrier: Carrier, nursery: trio.Nursery
) -> None:
    server = await start(nursery, carrier, Service())
    received: list[ConnectionEvent] = []
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            events = client.monitor_connection.monitor_connections(
                MonitorScopeSelector(network_services=["3", "fail"])
            )
            with pytest.raises(NotFound, match="no more events") as info:
                await drain(events, received)
    assert len(received) == 3
    assert (info.value.hop, info.value.service) == ("endpoint-1", "icmp")


async def test_leaving_the_stream_cancels_the_handler(
    carrier: Carrier, nursery: trio.Nursery
) -> None:
    service = Service()
    server = await start(nursery, carrier, service)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            async with client.monitor_connection.monitor_connections(
                MonitorScopeSelector(network_services=["1", "forever"])
            ) as events:
                async for _event in events:
                    break
            await service.stream_closed.wait()


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
async def test_errors_cross_as_their_own_class(
    carrier: Carrier, nursery: trio.Nursery, error: type[TrionsmError]
) -> None:
    server = await start(nursery, carrier, Service())
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            with pytest.raises(error) as info:
                await client.network_service.request(connection(do="raise", error=error.__name__))
            assert type(info.value) is error
            assert info.value.reason == "told to fail"
            assert info.value.hop == "endpoint-1"
            assert info.value.service == "icmp"
            # the server keeps serving
            assert (await client.network_service.request(connection())).labels["served"] == "yes"


async def test_a_handler_bug_is_internal_and_the_server_keeps_serving(
    carrier: Carrier, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start(nursery, carrier, Service())
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            with pytest.raises(Internal, match="ZeroDivisionError: a bug in the handler"):
                await client.network_service.request(connection(do="crash"))
            assert (await client.network_service.request(connection())).labels["served"] == "yes"
    assert "handler for /networkservice.NetworkService/Request crashed" in caplog.text


@pytest.mark.parametrize("seconds", [0.2, -1.0])
async def test_unary_deadline_names_the_hop_called(
    carrier: Carrier, nursery: trio.Nursery, seconds: float
) -> None:
    """The caller enforces the call's deadline: every carrier names the server it called."""
    service = Service()
    server = await start(nursery, carrier, service)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            with pytest.raises(DeadlineExceeded, match="deadline") as info:
                await client.network_service.request(
                    connection(do="sleep", seconds="10"), timeout=seconds
                )
    assert info.value.hop == server.url
    assert "/networkservice.NetworkService/Request" in info.value.reason
    if seconds < 0:
        assert service.seen == []  # a call past its deadline never reaches the handler


@pytest.mark.parametrize("seconds", [0.2, -1.0])
async def test_stream_deadline_names_the_hop_called(
    carrier: Carrier, nursery: trio.Nursery, seconds: float
) -> None:
    server = await start(nursery, carrier, Service())
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            events = client.monitor_connection.monitor_connections(
                MonitorScopeSelector(network_services=["1", "forever"]), timeout=seconds
            )
            with pytest.raises(DeadlineExceeded, match="deadline") as info:
                await drain(events)
    assert info.value.hop == server.url
    assert "/connection.MonitorConnection/MonitorConnections" in info.value.reason


async def test_an_unknown_method_is_unimplemented(carrier: Carrier, nursery: trio.Nursery) -> None:
    server = await start(nursery, carrier, Service())
    bogus = attrs.evolve(NETWORK_SERVICE.methods[0], name="Teleport")
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            with pytest.raises(Unimplemented, match="Teleport"):
                await client.channel.unary(bogus, connection(), CallOptions())


async def test_a_thousand_concurrent_streams_on_one_client(
    carrier: Carrier, nursery: trio.Nursery
) -> None:
    server = await start(nursery, carrier, Service())
    done = 0

    async def watch(client: Any) -> None:
        nonlocal done
        async with client.monitor_connection.monitor_connections(
            MonitorScopeSelector(network_services=["2"])
        ) as events:
            assert len([event async for event in events]) == 2
        done += 1

    with trio.fail_after(HANG * 4):
        async with open_client(server.url) as client, trio.open_nursery() as streams:
            for _ in range(1000):
                streams.start_soon(watch, client)
    assert done == 1000


async def test_large_messages(carrier: Carrier, nursery: trio.Nursery) -> None:
    server = await start(nursery, carrier, Service())
    big = "x" * (1 << 20)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            reply = await client.network_service.request(connection(blob=big))
    assert reply.labels["blob"] == big


async def test_server_death_mid_stream_is_unavailable(
    carrier: Carrier, nursery: trio.Nursery
) -> None:
    service = Service()
    server_scope = trio.CancelScope()
    stopped = trio.Event()

    async def run_server(task_status: trio.TaskStatus[Any]) -> None:
        with server_scope:
            async with trio.open_nursery() as inner:
                task_status.started(await start(inner, carrier, service))
        stopped.set()

    server = await nursery.start(run_server)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            events = client.monitor_connection.monitor_connections(
                MonitorScopeSelector(network_services=["1", "forever"])
            )
            with pytest.raises(Unavailable):
                await drain(events, on_event=server_scope.cancel)
            await stopped.wait()
            with pytest.raises(Unavailable):
                await client.network_service.request(connection())


async def test_reconnect_after_the_server_restarts_on_the_same_url(
    carrier: Carrier, nursery: trio.Nursery
) -> None:
    url = carrier.url()
    with trio.fail_after(HANG):
        async with open_client(url) as client:
            async with trio.open_nursery() as first:
                await start(first, carrier, Service(), url)
                assert (await client.network_service.request(connection())).id == "c-1"
                first.cancel_scope.cancel()
            with pytest.raises(Unavailable):
                await client.network_service.request(connection())
            await start(nursery, carrier, Service(), url)
            assert (await client.network_service.request(connection())).id == "c-1"


async def test_bidirectional_stream(carrier: Carrier, nursery: trio.Nursery) -> None:
    server = await start(nursery, carrier, Service())
    with trio.fail_after(HANG):
        async with open_client(server.url) as client, client.ipam.manage_prefixes() as stream:
            for prefix in ("169.254.1.0/24", "169.254.2.0/24"):
                await stream.send(PrefixRequest(prefix=prefix))
            await stream.end()
            replies = [reply async for reply in stream]
    assert [r.prefix for r in replies] == ["169.254.1.0/24", "169.254.2.0/24"]  # type: ignore[attr-defined]


async def test_messages_are_not_mutated_by_the_trip(
    carrier: Carrier, nursery: trio.Nursery
) -> None:
    server = await start(nursery, carrier, Service())
    request = connection(app="nsc")
    assert request.connection is not None
    request.connection.path = None
    before = bytes(request)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            await client.network_service.request(request)
    assert bytes(request) == before


async def test_a_callers_own_timeout_in_a_stream_block_stays_its_own(
    carrier: Carrier, nursery: trio.Nursery
) -> None:
    """Only the call's deadline becomes DeadlineExceeded; the caller's scopes behave as in Trio."""
    server = await start(nursery, carrier, Service())
    forever = MonitorScopeSelector(network_services=["1", "forever"])

    async def read_with_fail_after(client: Any, call_timeout: float | None) -> None:
        async with client.monitor_connection.monitor_connections(
            forever, timeout=call_timeout
        ) as events:
            with trio.fail_after(0.1):
                async for _event in events:
                    pass

    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            for timeout in (None, HANG):
                with pytest.raises(trio.TooSlowError):
                    await read_with_fail_after(client, timeout)
                async with client.monitor_connection.monitor_connections(
                    forever, timeout=timeout
                ) as events:
                    with trio.move_on_after(0.1) as own:
                        async for _event in events:
                            pass
                assert own.cancelled_caught
                with pytest.raises(trio.TooSlowError), trio.fail_after(0.1):
                    await client.network_service.request(
                        connection(do="sleep", seconds="10"), timeout=timeout
                    )
            events = client.monitor_connection.monitor_connections(
                MonitorScopeSelector(network_services=["2"])
            )
            assert len(await drain(events)) == 2  # the client still works


async def test_an_unencodable_reply_is_internal_naming_the_server(
    wire_carrier: Carrier, nursery: trio.Nursery
) -> None:
    server = await start(nursery, wire_carrier, Service())
    received: list[ConnectionEvent] = []
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            events = client.monitor_connection.monitor_connections(
                MonitorScopeSelector(network_services=["1", "unencodable"])
            )
            with pytest.raises(Internal) as info:
                await drain(events, received)
            assert info.value.hop == "endpoint-1"
            assert len(received) == 1
            with pytest.raises(Internal) as info:
                await client.network_service.request(connection(do="unencodable"))
            assert info.value.hop == "endpoint-1"


async def test_a_bidi_handler_may_end_before_the_caller_ends_its_requests(
    carrier: Carrier, nursery: trio.Nursery
) -> None:
    """The replies then end as the handler ended them; end() is a no-op, send() Unavailable."""
    service = Service()
    server = await start(nursery, carrier, service)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            async with client.ipam.manage_prefixes() as stream:
                await stream.send(PrefixRequest(prefix="once"))
                assert len([reply async for reply in stream]) == 1
                await stream.end()
                with pytest.raises(Unavailable):
                    await stream.send(PrefixRequest(prefix="late"))
            async with client.ipam.manage_prefixes() as stream:
                await stream.send(PrefixRequest(prefix="once"))
                await service.bidi_closed.wait()
                await stream.end()
                assert len([reply async for reply in stream]) == 1
            async with client.ipam.manage_prefixes() as stream:
                await stream.send(PrefixRequest(prefix="fail"))
                with pytest.raises(NotFound, match="no more prefixes"):
                    await drain_bidi(stream)
                await stream.end()


async def drain_bidi(stream: Any) -> None:
    async for _reply in stream:
        pass


MIB = 1 << 20
REQUEST_PATH = "/networkservice.NetworkService/Request"


async def test_one_message_size_limit_both_ways(carrier: Carrier, nursery: trio.Nursery) -> None:
    """4 MiB by default on every carrier: the sender refuses to send more, naming the hop."""
    service = Service()
    server = await start(nursery, carrier, service)
    selector = MonitorScopeSelector(network_services=["2", "big", str(4 * MIB + 1)])
    received: list[ConnectionEvent] = []
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            with pytest.raises(ResourceExhausted, match="over the 4194304-byte") as info:
                await client.network_service.request(connection(blob="x" * (4 * MIB)))
            assert info.value.hop == server.url  # our client refused to send it
            assert REQUEST_PATH in info.value.reason
            assert f"{len(bytes(connection(blob='x' * (4 * MIB))))} bytes" in info.value.reason
            assert service.seen == []
            with pytest.raises(ResourceExhausted, match="reply of 4194") as info:
                await client.network_service.request(connection(do="big", bytes=str(4 * MIB)))
            assert info.value.hop == "endpoint-1"  # the server refused to send it
            assert REQUEST_PATH in info.value.reason
            with pytest.raises(ResourceExhausted, match="reply of 4194") as info:
                await drain(client.monitor_connection.monitor_connections(selector), received)
            assert info.value.hop == "endpoint-1"
            assert len(received) == 2
            just_under = 4 * MIB - 100
            reply = await client.network_service.request(
                connection(do="big", bytes=str(just_under))
            )
            assert len(reply.labels["blob"]) == just_under


async def test_the_receiver_enforces_its_own_limit(carrier: Carrier, nursery: trio.Nursery) -> None:
    """A peer with a larger limit is refused by the receiver's (configurable) limit."""
    service = Service()
    server = await start(nursery, carrier, service, max_message_bytes=64 * 1024)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            with pytest.raises(ResourceExhausted, match=r"request of .* 65536-byte") as info:
                await client.network_service.request(connection(blob="x" * 100_000))
            assert info.value.hop == "endpoint-1"
            assert service.seen == []
        async with open_client(server.url, max_message_bytes=1024) as client:
            with pytest.raises(ResourceExhausted, match=r"reply of .* 1024-byte") as info:
                await client.network_service.request(connection(do="big", bytes="2000"))
            assert info.value.hop == server.url
            assert (await client.network_service.request(connection())).labels["served"] == "yes"


BAD_METADATA = {
    "reserved": {"grpc-timeout": "1S"},
    "binary": {"token-bin": "abc"},
    "key-character": {"nsm client token": "x"},
    "newline": {"nsm-client-token": "a\nb"},
    "non-ascii": {"nsm-client-token": "caf\u00e9"},
    "empty-value": {"nsm-client-token": ""},
    "too-big": {"nsm-client-token": "x" * 9000},
}


@pytest.mark.parametrize("metadata", BAD_METADATA.values(), ids=BAD_METADATA.keys())
async def test_metadata_follows_grpcs_rules_on_every_carrier(
    carrier: Carrier, nursery: trio.Nursery, metadata: dict[str, str]
) -> None:
    service = Service()
    server = await start(nursery, carrier, service)
    (key,) = metadata
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            with pytest.raises(InvalidArgument, match=key) as info:
                await client.network_service.request(connection(), metadata=metadata)
            assert info.value.hop == server.url
            with pytest.raises(InvalidArgument, match=key):
                await drain(
                    client.monitor_connection.monitor_connections(
                        MonitorScopeSelector(network_services=["1"]), metadata=metadata
                    )
                )
            good = {"NSM-Client-Token": "jwt.x-y_z", "path": '{"index": 1}'}
            await client.network_service.request(connection(), metadata=good)
    assert len(service.seen) == 1
    assert service.seen[0].client_token == "jwt.x-y_z"
