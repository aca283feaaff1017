"""The gRPC carrier's keepalive: a dead or partitioned peer is dropped within seconds, a slow one
(a process paused in a long garbage collection, a loaded CPU) is waited for, a frozen one is given
up on with a reason.

Real parts: partitions are nftables rules dropping a loopback port's packets (a table of this
test's own, deleted by its exact name), paused peers are real server processes stopped with
SIGSTOP. Every wait is bounded by ``fail_after`` (a hang catcher, not a speed test).
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.transport.test_grpc import HANG, Service, _PingsSent, request, settled, start
from trionsm.api.connection import MonitorScopeSelector
from trionsm.errors import Unavailable
from trionsm.transport import _grpc_keepalive, open_client
from trionsm.transport._grpc_keepalive import MAX_SILENT_WINDOWS, Verdict, verdict


@pytest.mark.parametrize(
    ("heard", "unread", "lag", "took", "silent", "expected"),
    [
        (True, False, 0.0, False, 0, Verdict.WAIT),  # the peer talked: alive
        (True, False, 0.0, False, MAX_SILENT_WINDOWS, Verdict.WAIT),
        (False, False, 0.0, False, 0, Verdict.CLOSE),  # silence, PING not taken: partitioned
        (False, False, 0.2, False, 0, Verdict.CLOSE),
        (False, True, 0.0, False, 0, Verdict.WAIT),  # its bytes wait unread: we are behind
        (False, False, 0.3, False, 0, Verdict.WAIT),  # our loop is behind: cannot tell
        (False, False, 0.0, True, 0, Verdict.WAIT),  # its host took the PING: a slow process
        (False, False, 0.0, True, MAX_SILENT_WINDOWS - 1, Verdict.WAIT),
        (False, False, 0.0, True, MAX_SILENT_WINDOWS, Verdict.CLOSE),  # but not forever
        (False, True, 0.0, True, MAX_SILENT_WINDOWS, Verdict.CLOSE),
        (False, False, 5.0, False, MAX_SILENT_WINDOWS, Verdict.CLOSE),
    ],
)
def test_the_keepalive_rule(
    heard: bool, unread: bool, lag: float, took: bool, silent: int, expected: Verdict
) -> None:
    assert verdict(heard=heard, unread=unread, lag=lag, took=took, silent=silent) is expected


# ------------------------------------------------------------------------------ partitions


@asynccontextmanager
async def partition(port: int) -> AsyncIterator[None]:
    """Drop every packet to and from loopback TCP ``port`` while the block runs (nftables)."""
    table = f"tnsm_{secrets.token_hex(4)}"
    rules = textwrap.dedent(f"""
        table inet {table} {{
            chain input {{
                type filter hook input priority 0; policy accept;
                iifname "lo" tcp dport {port} drop
                iifname "lo" tcp sport {port} drop
            }}
        }}
    """)
    await trio.run_process(["nft", "-f", "-"], stdin=rules.encode())
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await trio.run_process(["nft", "delete", "table", "inet", table])


async def test_a_partition_breaks_streams_on_both_ends_within_seconds(
    nursery: trio.Nursery,
) -> None:
    service = Service()
    server = await start(nursery, service)
    port = server.address.port
    async with open_client(server.url) as client:
        selector = MonitorScopeSelector(network_services=["icmp"])
        async with client.monitor_connection.monitor_connections(selector) as events:
            with trio.fail_after(HANG):
                await events.__anext__()
            async with partition(port):
                began = trio.current_time()
                with (
                    trio.fail_after(HANG),
                    pytest.raises(Unavailable, match=f"127.0.0.1:{port}.*acknowledged nothing"),
                ):
                    await events.__anext__()
                client_noticed = trio.current_time() - began
                with trio.fail_after(HANG):
                    await service.stream_closed.wait()  # the server's keepalive ended it too
                server_noticed = trio.current_time() - began
        with trio.fail_after(HANG):  # healed: the next call reconnects
            assert (await client.network_service.request(request())).labels["served"] == "yes"
    assert client_noticed < 5.0
    assert server_noticed < 5.0


@pytest.mark.slow
async def test_a_process_starved_of_cpu_waits_longer_for_a_silent_peer_but_not_forever(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other processes starving ours (as ``yes`` loaders did) can stall the peer's end too: a
    window in which this thread waited for a CPU is extended instead of ending in a close, up to
    ``MAX_SILENT_WINDOWS`` in a row. The starvation is simulated: the thread's runqueue wait
    grows by half a second per reading; the partition is real."""
    waited = iter(itertools.count(step=0.5))
    monkeypatch.setattr(_grpc_keepalive, "cpu_wait", lambda: next(waited))
    monkeypatch.setattr(_grpc_keepalive, "MAX_SILENT_WINDOWS", 2)
    seen: list[tuple[bool, int, Verdict]] = []

    def spy(**facts: Any) -> Verdict:
        seen.append((facts["heard"], facts["silent"], verdict(**facts)))
        return seen[-1][2]

    monkeypatch.setattr(_grpc_keepalive, "verdict", spy)
    service = Service()
    server = await start(nursery, service)
    async with open_client(server.url) as client:
        selector = MonitorScopeSelector(network_services=["icmp"])
        async with client.monitor_connection.monitor_connections(selector) as events:
            with trio.fail_after(HANG):
                await events.__anext__()
            async with partition(server.address.port):
                with trio.fail_after(HANG), pytest.raises(Unavailable):
                    await events.__anext__()
    silent = {(windows, outcome) for heard, windows, outcome in seen if not heard}  # both ends
    assert silent == {(0, Verdict.WAIT), (1, Verdict.WAIT), (2, Verdict.CLOSE)}


# ------------------------------------------------------------------------------ paused peers

SERVER = """
import sys, trio
from trionsm.api.connection import Connection, ConnectionEvent
from trionsm.api.google.protobuf import Empty
from trionsm.transport import MONITOR_CONNECTION, NETWORK_SERVICE, serve

class Service:
    async def request(self, request, ctx):
        return Connection(id=request.connection.id, labels={"served": "yes"})
    async def close(self, connection, ctx):
        return Empty()
    async def monitor_connections(self, selector, ctx):
        yield ConnectionEvent(connections={"0": Connection(id="0")})
        await trio.sleep_forever()

async def main(url):
    handlers = {NETWORK_SERVICE: Service(), MONITOR_CONNECTION: Service()}
    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: serve(
            url, handlers, hop="paused", task_status=task_status))
        print(server.url, flush=True)

trio.run(main, sys.argv[1])
"""


@asynccontextmanager
async def server_process(url: str) -> AsyncIterator[tuple[trio.Process, str]]:
    """A gRPC server in its own process (so it can be stopped); yields it and its URL."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", SERVER, url], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        line = b""
        with trio.fail_after(HANG * 3):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some()
                assert chunk, "the server process exited"
                line += chunk
        yield process, line.decode().strip()
    finally:
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGCONT)
            process.kill()
            await process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["unix", "tcp"])
async def test_a_paused_peer_process_is_waited_for(tmp_path: Path, scheme: str) -> None:
    """A node holding 10,000 connections pauses for seconds in a full garbage collection; its
    peers took that for a dead node and dropped every connection ("Connection lost"). Here the
    server process is stopped (SIGSTOP) while the client's keepalive windows end unanswered,
    then resumed: the stream and the connection live on."""
    url = f"unix://{tmp_path}/s.sock" if scheme == "unix" else "tcp://127.0.0.1:0"
    async with server_process(url) as (process, served), open_client(served) as client:
        selector = MonitorScopeSelector(network_services=["icmp"])
        async with client.monitor_connection.monitor_connections(selector) as events:
            with trio.fail_after(HANG):
                await events.__anext__()
            protocol = client.channel._grpc._protocol  # type: ignore[attr-defined]
            os.kill(process.pid, signal.SIGSTOP)
            try:
                await settled(_PingsSent(protocol, 4))  # three windows ended unanswered
            finally:
                os.kill(process.pid, signal.SIGCONT)
            assert not protocol.handler.connection_lost
            with trio.fail_after(HANG):
                reply = await client.network_service.request(request())
            assert reply.labels["served"] == "yes"
            assert client.channel._grpc._protocol is protocol  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_a_frozen_peer_is_given_up_naming_the_silence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_grpc_keepalive, "MAX_SILENT_WINDOWS", 2)
    async with (
        server_process(f"unix://{tmp_path}/s.sock") as (process, served),
        open_client(served) as client,
    ):
        selector = MonitorScopeSelector(network_services=["icmp"])
        async with client.monitor_connection.monitor_connections(selector) as events:
            with trio.fail_after(HANG):
                await events.__anext__()
            os.kill(process.pid, signal.SIGSTOP)
            with (
                trio.fail_after(HANG),
                pytest.raises(Unavailable, match=r"answered no keepalive PING for \d"),
            ):
                await events.__anext__()
