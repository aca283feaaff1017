"""The gRPC carrier at a server's stream limit: a clear error, never a silent hang; and the
memory decoded messages take.

A raw HTTP/2 server (h2's state machine over a Trio socket) stands for a foreign gRPC server
with a small SETTINGS_MAX_CONCURRENT_STREAMS (grpcio's is 100). Every wait is bounded by
``fail_after`` (a hang catcher, not a speed test).
"""

from __future__ import annotations

import contextlib

import attrs
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trio

from tests.transport.test_grpc import HANG, grpc_frame, request, serve_raw
from trionsm.api.connection import Connection, MonitorScopeSelector, Path, PathSegment
from trionsm.errors import ResourceExhausted
from trionsm.transport import open_client
from trionsm.transport._codec import decode

MONITOR = "/connection.MonitorConnection/MonitorConnections"


@attrs.define
class Capped:
    """A raw gRPC server allowing ``limit`` concurrent streams: a monitor stream gets one event
    and stays open; any other call gets a Connection and OK."""

    limit: int
    open_streams: int = 0

    async def converse(self, sock: trio.SocketStream) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.limit},
        )
        conn.initiate_connection()
        await sock.send_all(conn.data_to_send())
        paths: dict[int, str] = {}
        async with sock:
            while data := await sock.receive_some(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        paths[event.stream_id] = dict(event.headers)[":path"]  # type: ignore[arg-type]
                        self.open_streams += 1
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        self._answer(conn, event.stream_id, paths[event.stream_id])
                    elif isinstance(event, h2.events.StreamReset):
                        self.open_streams -= 1
                await sock.send_all(conn.data_to_send())

    def _answer(self, conn: h2.connection.H2Connection, stream_id: int, path: str) -> None:
        headers = [(":status", "200"), ("content-type", "application/grpc")]
        conn.send_headers(stream_id, headers)
        if path == MONITOR:
            conn.send_data(stream_id, grpc_frame(b""))  # an empty ConnectionEvent; stays open
            return
        conn.send_data(stream_id, grpc_frame(bytes(Connection(id="c-1"))))
        conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
        self.open_streams -= 1


async def test_a_stream_past_the_servers_limit_is_resource_exhausted_not_a_hang(
    nursery: trio.Nursery,
) -> None:
    """grpclib queues a stream past the server's limit silently, for as long as the open streams
    live (a monitor stream lives for good): the eleventh monitor stream on a channel to a server
    allowing 10 used to hang, and every unary call after it too."""
    server = Capped(limit=10)
    port = await nursery.start(serve_raw, server.converse)
    target = f"tcp://127.0.0.1:{port}"
    async with open_client(target) as client, contextlib.AsyncExitStack() as streams:
        for _ in range(9):  # a tenth of the limit (one) stays free for unary calls
            events = await streams.enter_async_context(
                client.monitor_connection.monitor_connections(MonitorScopeSelector())
            )
            with trio.fail_after(HANG):
                await events.__anext__()
        with (
            trio.fail_after(HANG),
            pytest.raises(ResourceExhausted, match="allows 10 concurrent streams") as info,
        ):
            async with client.monitor_connection.monitor_connections(
                MonitorScopeSelector()
            ) as events:
                await events.__anext__()
        assert info.value.hop == target
        for _ in range(3):  # unary calls still pass, one after another
            with trio.fail_after(HANG):
                assert (await client.network_service.request(request())).id == "c-1"
        assert server.open_streams == 9


def test_decoded_messages_share_equal_strings() -> None:
    """A hop holding thousands of decoded connections holds one copy of each repeated string
    (names, tokens of the same second), not one per connection; long strings are not kept."""
    segments = [PathSegment(name="nsmgr-1", id=f"id-{n}", token="t" * 300) for n in range(2)]
    data = bytes(Connection(network_service="bench", path=Path(path_segments=segments)))
    first, second = (decode(Connection, data, what="test") for _ in range(2))
    assert isinstance(first, Connection)
    assert isinstance(second, Connection)
    assert first == second
    assert first.network_service is second.network_service
    a, b = first.path.path_segments, second.path.path_segments  # type: ignore[union-attr]
    assert a[0].token is b[1].token
    assert a[0].name is b[1].name
    assert a[0].id is b[0].id
    long = bytes(Connection(network_service="x" * 2000))
    once, again = (decode(Connection, long, what="test") for _ in range(2))
    assert isinstance(once, Connection)
    assert isinstance(again, Connection)
    assert once.network_service is not again.network_service
