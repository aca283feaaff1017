"""What only the ZeroMQ carrier has: dead and frozen peers, bad input, flow control, CurveZMQ.

The conformance suite covers the behaviour every carrier shares. Real sockets and processes, so the
real clock; every wait is bounded with ``fail_after`` (a hang catcher, not a speed test).
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import zmq

from trionsm.api.connection import Connection, ConnectionEvent, MonitorScopeSelector
from trionsm.api.google.protobuf import Empty
from trionsm.api.ipam import PrefixRequest, PrefixResponse
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    StatusCode,
    Unauthenticated,
    Unavailable,
)
from trionsm.transport import (
    IPAM,
    MONITOR_CONNECTION,
    NETWORK_SERVICE,
    CallContext,
    CallOptions,
    open_client,
    parse_url,
    serve,
)
from trionsm.transport._zmq import MAX_FRAME, WINDOW, CurveKeys, ZmqServer
from trionsm.transport._zmq_envelope import encode_call, encode_cancel, encode_data
from trionsm.transport._zmq_socket import MonitorEvent, TrioSocket

HANG = 10
REQUEST = NETWORK_SERVICE.method("request")
MONITOR = MONITOR_CONNECTION.method("monitor_connections")


class Service:
    """NetworkService + MonitorConnection + IPAM handlers that record what they saw."""

    def __init__(self) -> None:
        self.seen: list[CallContext] = []
        self.started = trio.Event()
        self.closed = trio.Event()
        self.yielded = 0
        self.consumed = 0

    async def request(self, request: NetworkServiceRequest, ctx: CallContext) -> Connection:
        self.seen.append(ctx)
        connection = request.connection or Connection()
        if connection.labels.get("do") == "hang":
            self.started.set()
            try:
                await trio.sleep_forever()
            finally:
                self.closed.set()
        return Connection(id=connection.id, labels={"served": "yes"})

    async def close(self, connection: Connection, ctx: CallContext) -> Empty:
        return Empty()

    async def monitor_connections(
        self, selector: MonitorScopeSelector, ctx: CallContext
    ) -> AsyncIterator[ConnectionEvent]:
        self.seen.append(ctx)
        self.started.set()
        try:
            limit = int(selector.network_services[0]) if selector.network_services else math.inf
            while self.yielded < limit:
                yield ConnectionEvent(connections={str(self.yielded): Connection()})
                self.yielded += 1
            await trio.sleep_forever()
        finally:
            self.closed.set()

    async def manage_prefixes(
        self, requests: AsyncIterator[PrefixRequest], ctx: CallContext
    ) -> AsyncIterator[PrefixResponse]:
        async for request in requests:
            self.consumed += 1
            yield PrefixResponse(prefix=request.prefix)


async def start(
    nursery: trio.Nursery,
    url: str = "zmq+tcp://127.0.0.1:0",
    service: Service | None = None,
    **kw: Any,
) -> ZmqServer:
    service = service or Service()
    handlers = {NETWORK_SERVICE: service, MONITOR_CONNECTION: service, IPAM: service}
    return await nursery.start(  # type: ignore[no-any-return]
        lambda task_status: serve(url, handlers, hop="nse-1", task_status=task_status, **kw)
    )


async def read_all(events: AsyncIterator[Any], into: list[Any]) -> None:
    async for event in events:
        into.append(event)


def request(**labels: str) -> NetworkServiceRequest:
    return NetworkServiceRequest(connection=Connection(id="c-1", labels=labels))


# -- a real dead peer: the server in another process -----------------------------------------

SERVER_PROCESS = textwrap.dedent(
    """
    import trio
    from trionsm.api.connection import ConnectionEvent
    from trionsm.transport import MONITOR_CONNECTION, serve

    class Monitor:
        async def monitor_connections(self, selector, ctx):
            yield ConnectionEvent()
            await trio.sleep_forever()

    async def main():
        async with trio.open_nursery() as nursery:
            url, handlers = "zmq+tcp://127.0.0.1:0", {MONITOR_CONNECTION: Monitor()}
            server = await nursery.start(
                lambda task_status: serve(url, handlers, task_status=task_status)
            )
            print(server.url, flush=True)

    trio.run(main)
    """
)


async def read_line(stream: trio.abc.ReceiveStream) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some()
        if not chunk:
            raise EOFError(f"the server process exited after printing {data!r}")
        data += chunk
    return data.decode().strip()


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(signal.SIGKILL, id="killed"),
        pytest.param(signal.SIGSTOP, id="frozen", marks=pytest.mark.slow),
    ],
)
async def test_a_dead_or_frozen_server_process_fails_the_stream(how: signal.Signals) -> None:
    """SIGKILL closes the socket (the kernel says so); SIGSTOP leaves it open: heartbeats tell."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", SERVER_PROCESS], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(HANG * 3):  # Python and the stack take ~1 s to start
            url = await read_line(process.stdout)
        with trio.fail_after(HANG):
            async with (
                open_client(url) as client,
                client.monitor_connection.monitor_connections(MonitorScopeSelector()) as events,
            ):
                await events.__anext__()
                process.send_signal(how)
                begin = trio.current_time()
                with pytest.raises(Unavailable, match=r"lost the connection|going away"):
                    await events.__anext__()
                if how == signal.SIGSTOP:
                    assert trio.current_time() - begin > 1.0  # it took the heartbeat timeout
                with pytest.raises(Unavailable):
                    await client.network_service.request(request())
    finally:
        process.kill()
        with trio.fail_after(HANG):
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


# -- bad input: the server answers what it can, drops the rest and keeps serving --------------


def pack(fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


def call(call_id: int, method: str, payload: bytes | None, **extra: Any) -> bytes:
    fields = msgpack.unpackb(
        encode_call(call_id, method, payload, metadata={}, timeout=None, window=WINDOW)
    )
    return pack(fields | extra)


@pytest.fixture
async def raw(nursery: trio.Nursery) -> AsyncIterator[Callable[[str], TrioSocket]]:
    """Raw DEALER sockets (the test task is their owner), closed at the end."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sockets: list[TrioSocket] = []

    def dial(url: str) -> TrioSocket:
        dealer = context.socket(zmq.DEALER)
        dealer.connect(f"tcp://{url.removeprefix('zmq+tcp://')}")
        sockets.append(TrioSocket(dealer, "raw"))
        return sockets[-1]

    yield dial
    for sock in sockets:
        sock.close()
    context.term()


async def reply_to(sock: TrioSocket, frames: list[bytes]) -> dict[str, Any]:
    await sock.send_multipart(frames)
    (frame,) = await sock.recv_multipart()
    return msgpack.unpackb(frame)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("frames", "status", "match"),
    [
        (
            [call(1, "/networkservice.NetworkService/Teleport", b"")],
            StatusCode.UNIMPLEMENTED,
            "Teleport",
        ),
        (
            [call(1, REQUEST.path, b"\x08")],
            StatusCode.INVALID_ARGUMENT,
            "/networkservice.NetworkService/Request: request is not a valid NetworkServiceRequest",
        ),
        (
            [call(1, REQUEST.path, bytes(request(label="x" * 20))[:-3])],  # truncated
            StatusCode.INVALID_ARGUMENT,
            "request is not a valid NetworkServiceRequest",
        ),
        ([call(1, REQUEST.path, b"", v=2)], StatusCode.INVALID_ARGUMENT, "version 2"),
        ([call(1, REQUEST.path, b"", m=None)], StatusCode.INVALID_ARGUMENT, "'m' must be a str"),
        ([call(1, REQUEST.path, None)], StatusCode.INVALID_ARGUMENT, "has no request"),
        ([call(1, MONITOR.path, b"", w=0)], StatusCode.INVALID_ARGUMENT, "positive window"),
        ([call(1, REQUEST.path, b""), b"extra"], StatusCode.INVALID_ARGUMENT, "one frame"),
        ([pack({"v": 1, "k": "bye", "id": 1})], None, None),
        (
            [pack({"v": 1, "k": "error", "id": 1, "st": 2, "r": "", "h": None, "s": None})],
            StatusCode.INVALID_ARGUMENT,
            "does not send error",
        ),
        (
            [pack({"v": 1, "k": "teleport", "id": 1})],
            StatusCode.INVALID_ARGUMENT,
            "unknown envelope kind",
        ),
    ],
    ids=[
        "unknown-method",
        "bad-protobuf",
        "truncated-protobuf",
        "version",
        "no-method",
        "no-request",
        "zero-window",
        "two-frames",
        "bye-from-client",
        "error-from-client",
        "unknown-kind",
    ],
)
async def test_bad_envelopes_with_a_call_id_get_an_error_reply(
    nursery: trio.Nursery,
    raw: Callable[[str], TrioSocket],
    frames: list[bytes],
    status: StatusCode | None,
    match: str | None,
) -> None:
    server = await start(nursery)
    sock = raw(server.url)
    with trio.fail_after(HANG):
        if status is None:  # a bye from a client is nonsense without a call: dropped
            await sock.send_multipart(frames)
        else:
            answer = await reply_to(sock, frames)
            assert (answer["k"], answer["id"], answer["st"]) == ("error", 1, status)
            assert match is not None
            assert match in answer["r"]
            assert answer["h"] == "nse-1"
        # the same connection keeps working, and nothing was left running
        answer = await reply_to(sock, [call(2, REQUEST.path, bytes(request()))])
        assert answer["k"] == "data"
    assert server.active_calls == 0
    assert server.stats.dropped == (1 if status is None else 0)


@pytest.mark.parametrize(
    "frame", [b"\xc1", b"", pack([1, 2, 3]), pack({"v": 1, "k": "call"}), pack({"id": "x"})]
)
async def test_bad_envelopes_without_a_call_id_are_dropped_and_counted(
    nursery: trio.Nursery, raw: Callable[[str], TrioSocket], frame: bytes
) -> None:
    server = await start(nursery)
    sock = raw(server.url)
    with trio.fail_after(HANG):
        await sock.send_multipart([frame])
        answer = await reply_to(sock, [call(2, REQUEST.path, bytes(request()))])
    assert answer["k"] == "data"
    assert server.stats.dropped == 1


async def test_random_frames_never_stop_the_server(
    nursery: trio.Nursery, raw: Callable[[str], TrioSocket]
) -> None:
    """Garbage, truncated and mangled envelopes: each is answered or dropped, none is fatal."""
    rng = random.Random(726)
    valid = call(1, REQUEST.path, bytes(request()))
    frames = [rng.randbytes(rng.randrange(64)) for _ in range(100)]
    frames += [valid[: rng.randrange(len(valid))] for _ in range(50)]
    frames += [bytes(b ^ (rng.random() < 0.05) * 0xFF for b in valid) for _ in range(50)]
    server = await start(nursery)
    sock = raw(server.url)
    with trio.fail_after(HANG):
        for frame in frames:
            await sock.send_multipart([frame])
        await sock.send_multipart([call(10**9, REQUEST.path, bytes(request()))])
        while (answer := msgpack.unpackb((await sock.recv_multipart())[0]))["id"] != 10**9:
            assert answer["k"] in ("data", "error")
    assert answer["k"] == "data"
    assert server.stats.dropped > 0
    assert server.stats.rejected > 0


async def test_a_duplicate_call_id_is_refused_and_fails_that_call(
    nursery: trio.Nursery, raw: Callable[[str], TrioSocket]
) -> None:
    service = Service()
    server = await start(nursery, service=service)
    sock = raw(server.url)
    with trio.fail_after(HANG):
        await sock.send_multipart([call(1, REQUEST.path, bytes(request(do="hang")))])
        await service.started.wait()
        answer = await reply_to(sock, [call(1, REQUEST.path, bytes(request()))])
        assert "already in use" in answer["r"]
        await service.closed.wait()  # the first call with that id was cancelled too
    assert server.active_calls == 0


async def test_too_many_calls_in_flight_is_resource_exhausted(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("trionsm.transport._zmq_server.MAX_CALLS", 1)
    service = Service()
    server = await start(nursery, service=service)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client, trio.open_nursery() as callers:
            callers.start_soon(client.network_service.request, request(do="hang"))
            await service.started.wait()
            with pytest.raises(ResourceExhausted, match="more than 1 calls in flight"):
                await client.network_service.request(request())
            callers.cancel_scope.cancel()


class Hoarder:
    """An IPAM handler that does not read its requests until told to."""

    def __init__(self) -> None:
        self.release = trio.Event()

    async def manage_prefixes(
        self, requests: AsyncIterator[PrefixRequest], ctx: CallContext
    ) -> AsyncIterator[PrefixResponse]:
        await self.release.wait()
        async for request in requests:
            yield PrefixResponse(prefix=request.prefix)


async def test_requests_beyond_the_credit_are_resource_exhausted(
    nursery: trio.Nursery, raw: Callable[[str], TrioSocket]
) -> None:
    hoarder = Hoarder()
    server = await nursery.start(
        lambda task_status: serve(
            "zmq+tcp://127.0.0.1:0", {IPAM: hoarder}, hop="ipam", task_status=task_status
        )
    )
    sock = raw(server.url)
    data = pack({"id": 1, "v": 1, "k": "data", "p": bytes(PrefixRequest(prefix="10.0.0.0/8"))})
    with trio.fail_after(HANG):
        await sock.send_multipart([call(1, IPAM.methods[0].path, None)])
        for _ in range(WINDOW + 1):
            await sock.send_multipart([data])
        (frame,) = await sock.recv_multipart()
    answer = msgpack.unpackb(frame)
    assert (answer["k"], answer["st"]) == ("error", StatusCode.RESOURCE_EXHAUSTED)
    assert "ahead of its credit" in answer["r"]
    assert server.active_calls == 0
    hoarder.release.set()


async def test_an_oversized_message_drops_that_connection_only(
    nursery: trio.Nursery, raw: Callable[[str], TrioSocket]
) -> None:
    """libzmq enforces ZMQ_MAXMSGSIZE by closing the connection; other clients do not notice."""
    server = await start(nursery)
    big, other = raw(server.url), raw(server.url)
    monitor = TrioSocket(big.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED), "monitor")
    try:
        with trio.fail_after(HANG):
            async with open_client(server.url) as client:
                assert (await client.network_service.request(request())).labels["served"] == "yes"
                await big.send_multipart([b"\x00" * (MAX_FRAME + 1)])
                event = MonitorEvent.parse(await monitor.recv_multipart())
                assert event.event == zmq.EVENT_DISCONNECTED
                answer = await reply_to(other, [call(1, REQUEST.path, bytes(request()))])
                assert answer["k"] == "data"
                assert (await client.network_service.request(request())).labels["served"] == "yes"
    finally:
        big.socket.disable_monitor()
        monitor.close()
    assert server.stats.dropped == 0


async def test_the_client_refuses_an_oversized_request_without_sending_it(
    nursery: trio.Nursery,
) -> None:
    server = await start(nursery)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            with pytest.raises(ResourceExhausted, match="over the 4194304-byte message limit"):
                await client.network_service.request(request(blob="x" * (4 << 20)))
            assert (await client.network_service.request(request())).labels["served"] == "yes"


async def test_a_client_that_vanishes_has_its_calls_cancelled(
    nursery: trio.Nursery, raw: Callable[[str], TrioSocket]
) -> None:
    """No cancel envelope: the ping sweep finds the connection gone and cancels the stream."""
    service = Service()
    server = await start(nursery, service=service)
    sock = raw(server.url)
    with trio.fail_after(HANG):
        await sock.send_multipart([call(1, MONITOR.path, bytes(MonitorScopeSelector()), w=1)])
        await service.started.wait()
        sock.close()
        await service.closed.wait()
    assert server.active_calls == 0
    assert server.stats.peers_lost == 1


async def test_nothing_leaks(raw: Callable[[str], TrioSocket]) -> None:
    """Serving, bad input, cancelled calls and shutdown leave no descriptor behind."""
    before = len(os.listdir("/proc/self/fd"))
    async with trio.open_nursery() as nursery:
        service = Service()
        server = await start(nursery, service=service)
        with trio.fail_after(HANG):
            async with open_client(server.url) as client:
                with trio.move_on_after(0.2):
                    await client.network_service.request(request(do="hang"))
                await service.closed.wait()
                async with client.monitor_connection.monitor_connections(
                    MonitorScopeSelector(network_services=["3"])
                ) as events:
                    await events.__anext__()
            # the client's cancel envelope reaches the server asynchronously
            while server.active_calls:  # noqa: ASYNC110 - no event to wait on; bounded above
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(os.listdir("/proc/self/fd")) == before


# -- cancellation, deadlines, shutdown ---------------------------------------------------------


async def test_a_cancelled_caller_cancels_the_handler(nursery: trio.Nursery) -> None:
    service = Service()
    server = await start(nursery, service=service)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            async with trio.open_nursery() as callers:
                callers.start_soon(client.network_service.request, request(do="hang"))
                await service.started.wait()
                callers.cancel_scope.cancel()
            await service.closed.wait()
    assert server.active_calls == 0


async def test_the_handler_runs_under_the_callers_deadline(nursery: trio.Nursery) -> None:
    service = Service()
    server = await start(nursery, service=service)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            await client.network_service.request(request(), timeout=5.0)
            await client.network_service.request(request())
    assert 0 < service.seen[0].remaining() <= 5.0
    assert service.seen[1].deadline == math.inf


async def test_a_stopping_server_says_bye_and_calls_fail_at_once(nursery: trio.Nursery) -> None:
    service = Service()
    server_scope = trio.CancelScope()

    async def run_server(task_status: trio.TaskStatus[ZmqServer]) -> None:
        with server_scope:
            async with trio.open_nursery() as inner:
                task_status.started(await start(inner, service=service))

    server = await nursery.start(run_server)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client, trio.open_nursery() as callers:

            async def hang() -> None:
                with pytest.raises(Unavailable, match=r"going away|lost the connection"):
                    await client.network_service.request(request(do="hang"))

            callers.start_soon(hang)
            await service.started.wait()
            server_scope.cancel()


async def test_a_call_while_no_server_runs_fails_fast(tmp_path: Path) -> None:
    with trio.fail_after(HANG):
        async with open_client(f"zmq+ipc://{tmp_path}/nobody.sock") as client:
            begin = trio.current_time()
            with pytest.raises(Unavailable, match="cannot connect"):
                await client.network_service.request(request())
            assert trio.current_time() - begin < 2.0  # one reconnect interval, not a timeout


# -- flow control --------------------------------------------------------------------------


async def test_a_slow_reader_holds_back_a_fast_stream(nursery: trio.Nursery) -> None:
    service = Service()
    server = await start(nursery, service=service)
    with trio.fail_after(HANG):
        async with (
            open_client(server.url) as client,
            client.monitor_connection.monitor_connections(
                MonitorScopeSelector(network_services=[str(5 * WINDOW)])
            ) as events,
        ):
            received = 0
            async for _ in events:
                received += 1
                assert service.yielded <= received + WINDOW
                if received == 5 * WINDOW:
                    break


async def test_a_long_bidirectional_stream(nursery: trio.Nursery) -> None:
    service = Service()
    server = await start(nursery, service=service)
    count = 5 * WINDOW
    with trio.fail_after(HANG):
        async with open_client(server.url) as client, client.ipam.manage_prefixes() as stream:

            async def send_all() -> None:
                for n in range(count):
                    await stream.send(PrefixRequest(prefix=f"169.254.{n % 250}.0/24"))
                await stream.end()

            async with trio.open_nursery() as senders:
                senders.start_soon(send_all)
                replies = [reply async for reply in stream]
    assert len(replies) == count == service.consumed


async def test_a_server_that_ignores_credit_fails_the_stream(tmp_path: Path) -> None:
    """A rogue server (a raw ROUTER here) cannot make the client buffer without bound."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = TrioSocket(context.socket(zmq.ROUTER), "rogue")
    try:
        router.socket.bind(f"ipc://{tmp_path}/rogue.sock")
        with trio.fail_after(HANG):
            async with (
                open_client(f"zmq+ipc://{tmp_path}/rogue.sock") as client,
                client.monitor_connection.monitor_connections(MonitorScopeSelector()) as events,
            ):
                peer, frame = await router.recv_multipart()
                call_id = msgpack.unpackb(frame)["id"]
                event = bytes(ConnectionEvent())
                for _ in range(WINDOW + 1):  # nobody reads yet: no credit comes back
                    await router.send_multipart([peer, encode_data(call_id, event)])
                (frame,) = (await router.recv_multipart())[1:]
                assert msgpack.unpackb(frame) == msgpack.unpackb(encode_cancel(call_id))
                received: list[Any] = []
                with pytest.raises(Internal, match="more than our credit allows"):
                    await read_all(events, received)
                assert len(received) == WINDOW
    finally:
        router.close()
        context.term()


# -- addresses -------------------------------------------------------------------------------


async def test_ipc_socket_files_are_removed_and_served_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    url = f"zmq+ipc://{tmp_path}/nse.sock"
    async with trio.open_nursery() as first:
        server = await start(first, url)
        assert server.url == url
        assert (tmp_path / "nse.sock").exists()
        with pytest.raises(AlreadyExists, match="already served"):
            await start(nursery, url)
        first.cancel_scope.cancel()
    assert not (tmp_path / "nse.sock").exists()
    (tmp_path / "file").write_text("not a socket")
    with pytest.raises(FailedPrecondition, match="no socket"):
        await start(nursery, f"zmq+ipc://{tmp_path}/file")
    assert (tmp_path / "file").read_text() == "not a socket"


async def test_a_tcp_port_in_use_is_already_exists(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    with pytest.raises(AlreadyExists, match="in use"):
        await start(nursery, server.url)
    assert parse_url(server.url).port != 0


async def test_port_zero_cannot_be_dialed() -> None:
    with pytest.raises(InvalidArgument, match="port 0"):
        async with open_client("zmq+tcp://127.0.0.1:0"):
            pass


# -- CurveZMQ and ZAP --------------------------------------------------------------------------


async def test_curve_clients_are_identified_by_their_key(nursery: trio.Nursery) -> None:
    alice = CurveKeys.generate()
    server_keys = CurveKeys.generate(clients={alice.public: "spiffe://example.org/sa/alice"})
    service = Service()
    server = await start(nursery, service=service, curve=server_keys)
    with trio.fail_after(HANG):
        async with open_client(server.url, curve=alice.dialing(server_keys)) as client:
            assert (await client.network_service.request(request())).labels["served"] == "yes"
    peer = service.seen[0].peer
    assert peer is not None
    assert peer.identity == "spiffe://example.org/sa/alice"
    assert peer.address.startswith("zmq+tcp://127.0.0.1")


async def test_curve_without_a_client_list_names_the_key(nursery: trio.Nursery) -> None:
    server_keys = CurveKeys.generate()
    client_keys = CurveKeys.generate().dialing(server_keys)
    service = Service()
    server = await start(nursery, service=service, curve=server_keys)
    with trio.fail_after(HANG):
        async with open_client(server.url, curve=client_keys) as client:
            await client.network_service.request(request())
    assert service.seen[0].peer is not None
    assert service.seen[0].peer.identity == f"curve:{client_keys.public.decode()}"


@pytest.mark.parametrize("who", ["unknown key", "plain client", "wrong server key"])
async def test_peers_without_the_right_keys_cannot_call(nursery: trio.Nursery, who: str) -> None:
    alice, mallory = CurveKeys.generate(), CurveKeys.generate()
    server_keys = CurveKeys.generate(clients={alice.public: "alice"})
    service = Service()
    server = await start(nursery, service=service, curve=server_keys)
    curve, error = {
        "unknown key": (mallory.dialing(server_keys), Unauthenticated),
        # a mechanism mismatch: the client may read the server's greeting or find it closed first
        "plain client": (None, (Unauthenticated, Unavailable)),
        "wrong server key": (alice.dialing(mallory), Unavailable),
    }[who]
    with trio.fail_after(HANG):
        async with open_client(server.url, curve=curve) as client:
            for _ in range(2):  # also after libzmq stopped redialing on its own
                with pytest.raises(error):
                    await client.network_service.request(request())
    assert service.seen == []


async def test_an_unknown_curve_argument_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="CurveKeys"):
        async with open_client("zmq+tcp://127.0.0.1:1", curve="secret"):
            pass


async def test_a_stream_deadline_reaches_the_server(nursery: trio.Nursery) -> None:
    service = Service()
    server = await start(nursery, service=service)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            deadline = trio.current_time() + 3.0
            async with client.channel.stream(
                MONITOR, MonitorScopeSelector(), CallOptions(deadline=deadline)
            ) as events:
                await events.__aiter__().__anext__()
    ctx = service.seen[0]
    assert ctx.method == MONITOR.path
    # one clock on both ends: the server's deadline is the client's, later by the trip's time
    assert deadline - 0.001 <= ctx.deadline < deadline + 1.0


async def test_leaving_a_client_cancels_its_streams_on_the_server(nursery: trio.Nursery) -> None:
    service = Service()
    server = await start(nursery, service=service)
    with trio.fail_after(HANG):
        async with open_client(server.url) as client:
            async with client.monitor_connection.monitor_connections(
                MonitorScopeSelector(network_services=["1"])
            ) as events:
                await events.__anext__()
                await client.channel.aclose()
                with pytest.raises(Unavailable, match="channel closed"):
                    await events.__anext__()
            with pytest.raises(Unavailable, match="channel closed"):
                await client.network_service.request(request())
        await service.closed.wait()
    assert server.active_calls == 0
