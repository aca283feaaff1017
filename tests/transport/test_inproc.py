"""What only the inproc carrier has: fault hooks, per-run name tables, the byte round trip."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from trionsm.api.connection import Connection, ConnectionEvent, MonitorScopeSelector
from trionsm.api.google.protobuf import Empty
from trionsm.api.ipam import PrefixRequest, PrefixResponse
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.errors import AlreadyExists, DeadlineExceeded, Internal, NotFound, Unavailable
from trionsm.transport import (
    IPAM,
    MONITOR_CONNECTION,
    NETWORK_SERVICE,
    CallContext,
    InprocServer,
    open_client,
    serve,
)


class Service:
    def __init__(self) -> None:
        self.requests = 0

    async def request(self, request: NetworkServiceRequest, ctx: CallContext) -> Connection:
        self.requests += 1
        connection = request.connection or Connection()
        if connection.labels.get("bad") == "reply":
            return Connection(id="x", labels={"k": 3})  # type: ignore[dict-item]
        return connection

    async def close(self, connection: Connection, ctx: CallContext) -> Empty:
        return Empty()

    async def monitor_connections(
        self, selector: MonitorScopeSelector, ctx: CallContext
    ) -> AsyncIterator[ConnectionEvent]:
        yield ConnectionEvent()
        await trio.sleep_forever()


async def _serve(nursery: trio.Nursery, url: str, service: Service, **kw: bool) -> InprocServer:
    handlers = {NETWORK_SERVICE: service, MONITOR_CONNECTION: service}
    return await nursery.start(  # type: ignore[no-any-return]
        lambda task_status: serve(url, handlers, hop="nse", task_status=task_status, **kw)
    )


async def test_fail_next_fails_exactly_that_many_calls(nursery: trio.Nursery) -> None:
    service = Service()
    server = await _serve(nursery, "inproc://faulty", service)
    server.faults.fail_next(2, NotFound("injected", hop="nse"))
    with trio.fail_after(10):
        async with open_client(server.url) as client:
            for _ in range(2):
                with pytest.raises(NotFound, match="injected"):
                    await client.network_service.request(NetworkServiceRequest())
            await client.network_service.request(NetworkServiceRequest())
    assert service.requests == 1
    assert server.faults.calls == 3


async def test_drop_streams_breaks_every_stream_in_flight(nursery: trio.Nursery) -> None:
    server = await _serve(nursery, "inproc://dropper", Service())
    with trio.fail_after(10):
        async with (
            open_client(server.url) as client,
            client.monitor_connection.monitor_connections(MonitorScopeSelector()) as events,
        ):
            assert isinstance(await events.__anext__(), ConnectionEvent)
            assert server.drop_streams() == 1
            with pytest.raises(Unavailable, match="went away"):
                await events.__anext__()


async def test_a_name_is_served_once_per_run(nursery: trio.Nursery) -> None:
    await _serve(nursery, "inproc://taken", Service())
    with pytest.raises(AlreadyExists, match="already served"):
        await _serve(nursery, "inproc://taken", Service())


def test_each_trio_run_has_its_own_names() -> None:
    async def serve_once() -> None:
        async with trio.open_nursery() as nursery:
            await _serve(nursery, "inproc://per-run", Service())
            nursery.cancel_scope.cancel()

    trio.run(serve_once)
    trio.run(serve_once)  # the name from the first run is not taken in the second


async def test_roundtrip_bytes_catches_what_the_wire_would_refuse(nursery: trio.Nursery) -> None:
    server = await _serve(nursery, "inproc://strict", Service(), roundtrip_bytes=True)
    request = NetworkServiceRequest(connection=Connection(labels={"bad": "reply"}))
    with trio.fail_after(10):
        async with open_client(server.url) as client:
            with pytest.raises(Internal, match="does not survive the wire") as info:
                await client.network_service.request(request)
            assert info.value.hop == "nse"
            assert (await client.network_service.request(NetworkServiceRequest())) is not None


async def test_without_roundtrip_messages_are_shared_not_copied(nursery: trio.Nursery) -> None:
    server = await _serve(nursery, "inproc://shared", Service())
    connection = Connection(id="same-object")
    with trio.fail_after(10):
        async with open_client(server.url) as client:
            reply = await client.network_service.request(
                NetworkServiceRequest(connection=connection)
            )
    assert reply is connection


async def test_a_closed_client_is_unavailable(nursery: trio.Nursery) -> None:
    server = await _serve(nursery, "inproc://closing", Service())
    async with open_client(server.url) as client:
        pass
    with pytest.raises(Unavailable, match="channel closed"):
        await client.network_service.request(NetworkServiceRequest())


class Impatient(Service):
    async def request(self, request: NetworkServiceRequest, ctx: CallContext) -> Connection:
        with trio.fail_after(0.01):  # the handler's own timeout, not the call's deadline
            await trio.sleep(1)
        return Connection()


async def test_a_handlers_own_timeout_is_not_the_calls_deadline(nursery: trio.Nursery) -> None:
    server = await _serve(nursery, "inproc://impatient", Impatient())
    with trio.fail_after(10):
        async with open_client(server.url) as client:
            with pytest.raises(Internal, match="TooSlowError"):
                await client.network_service.request(NetworkServiceRequest())


async def test_a_call_past_its_deadline_never_reaches_the_handler(nursery: trio.Nursery) -> None:
    service = Service()
    server = await _serve(nursery, "inproc://late", service)
    with trio.fail_after(10):
        async with open_client(server.url) as client:
            with pytest.raises(DeadlineExceeded, match="deadline passed before the call"):
                await client.network_service.request(NetworkServiceRequest(), timeout=-1)
    assert service.requests == 0


class OneShot:
    async def manage_prefixes(
        self, requests: AsyncIterator[PrefixRequest], ctx: CallContext
    ) -> AsyncIterator[PrefixResponse]:
        yield PrefixResponse(prefix="169.254.9.0/24")  # answers once, reads nothing


async def test_sending_to_a_finished_bidi_handler_fails_instead_of_hanging(
    nursery: trio.Nursery,
) -> None:
    server = await nursery.start(
        lambda task_status: serve("inproc://oneshot", {IPAM: OneShot()}, task_status=task_status)
    )
    with trio.fail_after(10):
        async with open_client(server.url) as client, client.ipam.manage_prefixes() as stream:
            assert [r.prefix async for r in stream] == ["169.254.9.0/24"]  # type: ignore[attr-defined]

            async def send_many() -> None:
                for _ in range(100):  # more than the stream's buffer: a hang without the fix
                    await stream.send(PrefixRequest(prefix="169.254.10.0/24"))

            with pytest.raises(Unavailable, match="stream closed"):
                await send_many()


class _StopAfterFirstStep(trio.abc.Instrument):
    """Stops ``server`` right after ``task``'s first step: while the call sits at its first
    checkpoint, exactly where a server stopping concurrently could slip in."""

    def __init__(self, server: InprocServer) -> None:
        self.server = server
        self.task: trio.lowlevel.Task | None = None

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task and not self.server.stopped:
            self.server._stop()


async def test_a_call_racing_a_server_stop_is_unavailable_and_never_runs(
    nursery: trio.Nursery,
) -> None:
    service = Service()
    server = await _serve(nursery, "inproc://stopping", service)
    instrument = _StopAfterFirstStep(server)
    outcome: list[BaseException] = []

    async def call(client: Any) -> None:
        instrument.task = trio.lowlevel.current_task()
        try:
            await client.network_service.request(NetworkServiceRequest())
        except Unavailable as error:
            outcome.append(error)

    trio.lowlevel.add_instrument(instrument)
    try:
        with trio.fail_after(10):
            async with open_client(server.url) as client, trio.open_nursery() as calls:
                calls.start_soon(call, client)
    finally:
        trio.lowlevel.remove_instrument(instrument)
    assert server.stopped
    assert service.requests == 0
    assert len(outcome) == 1
