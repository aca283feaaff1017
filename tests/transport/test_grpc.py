"""What only the gRPC carrier has: bad input on a real socket, keepalive, mTLS, HTTP/2 details.

The conformance suite covers what every carrier shares. These tests use real sockets and the real
clock; every wait is bounded with ``fail_after`` (a hang catcher, not a speed test). Raw HTTP/2
clients are built from h2's state machine over a Trio socket, so the server sees exactly the bytes
a broken or hostile client would send.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import h2.config
import h2.connection
import h2.events
import pytest
import trio

from trionsm.api.connection import Connection, ConnectionEvent, MonitorScopeSelector
from trionsm.api.google.protobuf import Empty
from trionsm.api.ipam import PrefixRequest, PrefixResponse
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.errors import (
    AlreadyExists,
    InvalidArgument,
    ResourceExhausted,
    StatusCode,
    Unavailable,
)
from trionsm.transport import (
    IPAM,
    MONITOR_CONNECTION,
    NETWORK_SERVICE,
    CallContext,
    open_client,
    serve,
)

HANG = 10  # seconds: a hang catcher, not a speed test
REQUEST = "/networkservice.NetworkService/Request"


class Service:
    """NetworkService + MonitorConnection handlers that record what they saw."""

    def __init__(self) -> None:
        self.seen: list[CallContext] = []
        self.started = trio.Event()
        self.cancelled = trio.Event()
        self.stream_closed = trio.Event()

    async def request(self, request: NetworkServiceRequest, ctx: CallContext) -> Connection:
        self.seen.append(ctx)
        connection = request.connection or Connection()
        if connection.labels.get("do") == "hang":
            self.started.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                self.cancelled.set()
                raise
        return Connection(id=connection.id, labels={"served": "yes"})

    async def close(self, connection: Connection, ctx: CallContext) -> Empty:
        return Empty()

    async def monitor_connections(
        self, selector: MonitorScopeSelector, ctx: CallContext
    ) -> AsyncIterator[ConnectionEvent]:
        try:
            yield ConnectionEvent(connections={"0": Connection(id="0")})
            await trio.sleep_forever()
        finally:
            self.stream_closed.set()

    async def manage_prefixes(
        self, requests: AsyncIterator[PrefixRequest], ctx: CallContext
    ) -> AsyncIterator[PrefixResponse]:
        async for request in requests:
            yield PrefixResponse(prefix=request.prefix)


async def start(
    nursery: trio.Nursery, service: Service, url: str = "tcp://127.0.0.1:0", **kw: Any
) -> Any:
    handlers = {NETWORK_SERVICE: service, MONITOR_CONNECTION: service, IPAM: service}
    return await nursery.start(
        lambda task_status: serve(url, handlers, hop="nse-1", task_status=task_status, **kw)
    )


def request(**labels: str) -> NetworkServiceRequest:
    return NetworkServiceRequest(connection=Connection(id="c-1", labels=labels))


# ----------------------------------------------------------------------------- raw HTTP/2 clients


@attrs.define
class Answer:
    """What a raw client got back: response headers and trailers merged, and how it ended."""

    headers: dict[str, str] = attrs.field(factory=dict)
    reset: bool = False
    closed: bool = False  # the server closed the connection

    @property
    def status(self) -> int | None:
        value = self.headers.get("grpc-status")
        return None if value is None else int(value)


def grpc_frame(payload: bytes, *, declared: int | None = None, compressed: bool = False) -> bytes:
    size = len(payload) if declared is None else declared
    return bytes([compressed]) + size.to_bytes(4, "big") + payload


async def raw_call(port: int, path: str, body: bytes, *, end: bool = True) -> Answer:
    """One gRPC request built by hand; returns once the server answered, then says goodbye.

    The goodbye (GOAWAY, then waiting for the server to close) makes the server's side of the
    connection gone when this returns.
    """
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    answer = Answer()
    async with await trio.open_tcp_stream("127.0.0.1", port) as sock:
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", f"127.0.0.1:{port}"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
        ]
        conn.send_headers(stream_id, headers)
        conn.send_data(stream_id, body, end_stream=end)
        await sock.send_all(conn.data_to_send())
        done = False
        while not done:
            data = await sock.receive_some(65536)
            if not data:
                answer.closed = True
                return answer
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    answer.headers.update(dict(event.headers))  # type: ignore[arg-type]
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    answer.reset = isinstance(event, h2.events.StreamReset)
                    done = done or event.stream_id == stream_id
                elif isinstance(event, h2.events.ConnectionTerminated):
                    done = True
            await sock.send_all(conn.data_to_send())
        conn.close_connection()
        await sock.send_all(conn.data_to_send())
        while await sock.receive_some(65536):
            pass  # until the server has closed its side
    return answer


async def raw_bytes(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh TCP connection; return what came back before the server closed."""
    received = b""
    async with await trio.open_tcp_stream("127.0.0.1", port) as sock:
        await sock.send_all(data)
        while chunk := await sock.receive_some(65536):
            received += chunk
    return received


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def trio_tasks() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


async def settled(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds: a condition polled every 10 ms, bounded by HANG.

    Polling, because what it watches (the kernel's fd table, the server noticing a client's
    close in its asyncio loop) has no event to wait on.
    """
    with trio.fail_after(HANG):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


# ----------------------------------------------------------------------------------- bad input


async def test_bad_input_gets_a_clear_answer_and_leaks_nothing(nursery: trio.Nursery) -> None:
    service = Service()
    server = await start(nursery, service)
    port = server.address.port
    async with open_client(server.url) as client:  # warm up: first-use imports, caches
        await client.network_service.request(request())
    await settled(lambda: server.connections == 0)
    fds, tasks = open_fds(), trio_tasks()
    good = bytes(request(app="nsc"))
    with trio.fail_after(HANG):
        # not HTTP/2 at all: the server closes the connection
        await raw_bytes(port, b"\x16\x03\x01garbage" * 100)
        await raw_bytes(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # a valid preface, then a DATA frame far over the 16 KiB frame size limit: GOAWAY
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        oversized_frame = ((1 << 24) - 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
        await raw_bytes(port, preface + oversized_frame + b"x" * 100_000)

        unknown = await raw_call(port, "/networkservice.NetworkService/Teleport", grpc_frame(good))
        assert unknown.status == StatusCode.UNIMPLEMENTED
        assert "Teleport" in unknown.headers["grpc-message"]

        truncated_protobuf = await raw_call(port, REQUEST, grpc_frame(good[:-3]))
        assert truncated_protobuf.status == StatusCode.INVALID_ARGUMENT
        message = truncated_protobuf.headers["grpc-message"]
        assert "NetworkService/Request" in message
        assert "NetworkServiceRequest" in message

        truncated_frame = await raw_call(port, REQUEST, grpc_frame(good, declared=len(good) + 9))
        assert truncated_frame.status == StatusCode.INVALID_ARGUMENT
        assert "truncated" in truncated_frame.headers["grpc-message"]

        huge = await raw_call(port, REQUEST, grpc_frame(b"x" * 1000, declared=8 << 20), end=False)
        assert huge.status == StatusCode.RESOURCE_EXHAUSTED
        assert "limit" in huge.headers["grpc-message"]

        compressed = await raw_call(port, REQUEST, grpc_frame(good, compressed=True))
        assert compressed.status == StatusCode.UNIMPLEMENTED

        no_message = await raw_call(port, REQUEST, b"")
        assert no_message.status == StatusCode.INVALID_ARGUMENT

        # a bidi call: the handler answers the good request, then the bad one ends the call
        good_prefix = grpc_frame(bytes(PrefixRequest(prefix="169.254.0.0/16")))
        bidi = await raw_call(port, "/ipam.IPAM/ManagePrefixes", good_prefix + grpc_frame(b"\xff"))
        assert bidi.status == StatusCode.INVALID_ARGUMENT
        assert "PrefixRequest" in bidi.headers["grpc-message"]

        # the server keeps serving a good client
        async with open_client(server.url) as client:
            reply = await client.network_service.request(request(app="nsc"))
            assert reply.labels == {"served": "yes"}
    await settled(lambda: server.connections == 0)
    await settled(lambda: open_fds() <= fds)
    await settled(lambda: trio_tasks() <= tasks)
    assert len(service.seen) == 2  # no bad request reached the handler


async def test_an_oversized_request_is_refused_by_our_client_and_by_the_server(
    nursery: trio.Nursery,
) -> None:
    server = await start(nursery, Service())
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            with pytest.raises(ResourceExhausted, match="limit") as info:
                await client.network_service.request(request(blob="x" * (5 << 20)))
            assert info.value.hop == server.url  # refused before sending
            assert (await client.network_service.request(request())).labels["served"] == "yes"
        async with open_client(server.url, max_message_bytes=8 << 20) as client:
            with pytest.raises(ResourceExhausted, match="limit") as info:
                await client.network_service.request(request(blob="x" * (5 << 20)))
            assert info.value.hop == "nse-1"  # refused by the server before it is buffered
            assert (await client.network_service.request(request())).labels["served"] == "yes"


# ---------------------------------------------------------------------------- call context


async def test_the_handler_sees_peer_deadline_and_metadata(nursery: trio.Nursery) -> None:
    service = Service()
    server = await start(nursery, service)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            await client.network_service.request(
                request(), timeout=5.0, metadata={"NSM-Client-Token": "jwt", "Path": "{}"}
            )
    (ctx,) = service.seen
    assert ctx.peer is not None
    assert ctx.peer.address.startswith("tcp://127.0.0.1:")
    assert ctx.peer.identity is None
    assert ctx.client_token == "jwt"
    assert ctx.registry_path == "{}"
    assert 3.0 < ctx.remaining() <= 5.0


async def test_unix_socket_peer_and_cleanup(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "nsm.sock"
    service = Service()
    with trio.fail_after(HANG):
        async with trio.open_nursery() as inner:
            server = await start(inner, service, f"unix://{path}")
            assert path.exists()
            with pytest.raises(AlreadyExists, match="live server"):
                await start(nursery, Service(), f"unix://{path}")
            async with open_client(server.url) as client:
                await client.network_service.request(request())
            inner.cancel_scope.cancel()
    assert service.seen[0].peer is not None
    assert service.seen[0].peer.address == f"unix://{path}"
    assert not path.exists()  # the server removed the socket file it created


async def test_a_stale_unix_socket_file_is_replaced(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # a server that died without cleaning up
    server = await start(nursery, Service(), f"unix://{path}")
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            assert (await client.network_service.request(request())).labels["served"] == "yes"


async def test_a_taken_port_is_already_exists(nursery: trio.Nursery) -> None:
    server = await start(nursery, Service())
    with pytest.raises(AlreadyExists, match="in use"):
        await start(nursery, Service(), server.url)


# ------------------------------------------------------------------------------ cancellation


async def test_cancelling_a_unary_call_cancels_the_handler(nursery: trio.Nursery) -> None:
    service = Service()
    server = await start(nursery, service)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            async with trio.open_nursery() as calls:
                calls.start_soon(client.network_service.request, request(do="hang"))
                await service.started.wait()
                calls.cancel_scope.cancel()
            await service.cancelled.wait()
            assert (await client.network_service.request(request())).labels["served"] == "yes"


async def test_stopping_the_server_cancels_calls_in_flight(nursery: trio.Nursery) -> None:
    service = Service()
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[Any]) -> None:
        with scope:
            async with trio.open_nursery() as inner:
                task_status.started(await start(inner, service))

    server = await nursery.start(run)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client, trio.open_nursery() as calls:

            async def call() -> None:
                with pytest.raises(Unavailable, match=server.url):
                    await client.network_service.request(request(do="hang"))

            calls.start_soon(call)
            await service.started.wait()
            scope.cancel()
    assert service.cancelled.is_set()


# ------------------------------------------------------------------------------ misc wire


async def test_hundreds_of_open_streams_on_one_connection_block_nothing(
    nursery: trio.Nursery,
) -> None:
    """h2 defaults to 100 concurrent streams and a grpclib client queues the 101st silently."""
    server = await start(nursery, Service())
    count, opened, all_open = 300, 0, trio.Event()
    selector = MonitorScopeSelector(network_services=["icmp"])

    async def watch(client: Any) -> None:
        nonlocal opened
        async with client.monitor_connection.monitor_connections(selector) as events:
            await events.__anext__()
            opened += 1
            if opened == count:
                all_open.set()
            await trio.sleep_forever()

    with trio.fail_after(HANG * 3):
        async with open_client(server.url) as client, trio.open_nursery() as streams:
            for _ in range(count):
                streams.start_soon(watch, client)
            await all_open.wait()
            assert (await client.network_service.request(request())).labels["served"] == "yes"
            assert server.connections == 1
            streams.cancel_scope.cancel()


async def test_metadata_that_grpc_cannot_carry_is_invalid_argument(nursery: trio.Nursery) -> None:
    server = await start(nursery, Service())
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            with pytest.raises(InvalidArgument, match="metadata"):
                await client.network_service.request(request(), metadata={"k": "line\nbreak"})


async def test_an_error_leaves_the_client_block_as_itself(nursery: trio.Nursery) -> None:
    """Not wrapped in an exception group by the nurseries inside the channel."""
    server = await start(nursery, Service())

    async def fail_inside() -> None:
        async with open_client(server.url) as client:
            await client.channel.aclose()
            await client.network_service.request(request())

    with trio.fail_after(HANG), pytest.raises(Unavailable, match="closed"):
        await fail_inside()


async def test_a_closed_channel_is_unavailable(nursery: trio.Nursery) -> None:
    server = await start(nursery, Service())
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            await client.channel.aclose()
            with pytest.raises(Unavailable, match="closed"):
                await client.network_service.request(request())


async def test_nothing_listening_is_unavailable_naming_the_target(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for url in (f"tcp://127.0.0.1:{port}", f"unix://{tmp_path}/nobody.sock"):
        with trio.fail_after(HANG):
            async with open_client(url) as client:
                with pytest.raises(Unavailable) as info:
                    await client.network_service.request(request())
        assert info.value.hop == url
        assert url in str(info.value)


async def _silent_listener(task_status: trio.TaskStatus[int]) -> None:
    """Accept TCP connections and never say a word (a frozen process, another service)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def keep(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    await trio.serve_listeners(keep, listeners)


async def test_a_silent_peer_is_unavailable_not_a_hang(nursery: trio.Nursery) -> None:
    port = await nursery.start(_silent_listener)
    with trio.fail_after(HANG):
        async with open_client(f"tcp://127.0.0.1:{port}") as client:
            with pytest.raises(Unavailable):
                await client.network_service.request(NetworkServiceRequest())
    nursery.cancel_scope.cancel()


async def serve_raw(
    converse: Callable[[trio.SocketStream], Awaitable[None]],
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``converse`` for each TCP connection to a free loopback port (``started`` with it)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def connection(sock: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # the client closed first
            await converse(sock)

    await trio.serve_listeners(connection, listeners)


@attrs.define
class Greedy:
    """A raw HTTP/2 gRPC server answering every call with a reply declared as 1 GiB."""

    sent: int = 0  # reply bytes it managed to send, as flow control let it
    resets: int = 0  # streams the client reset
    reset: trio.Event = attrs.field(factory=trio.Event)

    CAP = 64 << 20  # sends at most this much of the 1 GiB, then waits

    async def converse(self, sock: trio.SocketStream) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        await sock.send_all(conn.data_to_send())
        pending: dict[int, bytes] = {}
        async with sock:
            while data := await sock.receive_some(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = [(":status", "200"), ("content-type", "application/grpc")]
                        conn.send_headers(event.stream_id, headers)
                        pending[event.stream_id] = grpc_frame(b"", declared=1 << 30)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamReset):
                        pending.pop(event.stream_id, None)
                        self.resets += 1
                        self.reset.set()
                for stream_id, head in pending.items():
                    while self.sent < self.CAP:
                        room = min(conn.local_flow_control_window(stream_id), 16384)
                        if room <= len(head):
                            break
                        conn.send_data(stream_id, head + bytes(room - len(head)))
                        self.sent += room - len(head)
                        head = b""
                    pending[stream_id] = head
                await sock.send_all(conn.data_to_send())


async def test_a_huge_reply_is_refused_before_it_is_read(nursery: trio.Nursery) -> None:
    """grpclib would buffer a reply of any declared size; our client reads the length first."""
    greedy = Greedy()
    port = await nursery.start(serve_raw, greedy.converse)
    with trio.fail_after(HANG):
        async with open_client(f"tcp://127.0.0.1:{port}") as client:
            with pytest.raises(ResourceExhausted, match="reply of 1073741824 bytes") as info:
                await client.network_service.request(request())
            assert info.value.hop == f"tcp://127.0.0.1:{port}"
            events = client.monitor_connection.monitor_connections(MonitorScopeSelector())
            with pytest.raises(ResourceExhausted, match="reply of 1073741824 bytes"):
                async with events as replies:
                    await replies.__anext__()
            while greedy.resets < 2:
                await greedy.reset.wait()
                greedy.reset = trio.Event()
    assert greedy.sent < 12 << 20  # what flow control let through before the resets


class _PingsSent:
    """A predicate for :func:`settled`: the connection sent ``count`` more PINGs, or closed."""

    def __init__(self, protocol: Any, count: int) -> None:
        self.protocol = protocol
        self.left = count
        self.last = protocol.connection.last_ping_sent

    def __call__(self) -> bool:
        sent = self.protocol.connection.last_ping_sent
        if sent != self.last:
            self.last, self.left = sent, self.left - 1
        return self.left <= 0 or bool(self.protocol.handler.connection_lost)


async def test_a_loop_behind_on_its_reads_does_not_take_a_live_peer_for_dead(
    nursery: trio.Nursery,
) -> None:
    """Under load trio-asyncio reads a socket again only once its queue of callbacks has drained,
    while a due timer runs ahead of that queue: the keepalive timer fired on time, found nothing
    read for a second (the peer's acks unread in the socket) and closed a live connection (the
    1,000-stream conformance test under CPU starvation). Here the client stops reading."""
    service = Service()
    server = await start(nursery, service)
    selector = MonitorScopeSelector(network_services=["icmp"])
    async with (
        open_client(server.url) as client,
        client.monitor_connection.monitor_connections(selector) as events,
    ):
        with trio.fail_after(HANG):
            await events.__anext__()
        protocol = client.channel._grpc._protocol  # type: ignore[attr-defined]
        transport = protocol._transport
        transport.pause_reading()  # what a loop seconds behind does to this socket
        try:
            await settled(_PingsSent(protocol, 4))  # three keepalive windows ended unanswered
        finally:
            if not transport.is_closing():
                transport.resume_reading()
        assert not protocol.handler.connection_lost
        with trio.fail_after(HANG):
            assert (await client.network_service.request(request())).labels["served"] == "yes"
        assert server.connections == 1
        assert not service.stream_closed.is_set()
