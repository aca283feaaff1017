"""Transport benchmark: our carriers against a raw grpclib baseline measured in the same run.

Prints one JSON object (last line of stdout). Every figure uses a realistic payload, a 4-segment
``Connection`` as request and reply, unless its key says ``empty``.

* ``grpc_unary_ratio_vs_raw_grpclib``: our gRPC carrier's sequential unary calls/s over a minimal
  grpclib client and server exchanging the same message on plain asyncio in a separate process
  (target >= 0.8). The baseline is what grpclib itself can do on this machine right now.
* ``zmq_vs_grpc_unary_ratio``: our ZeroMQ carrier over our gRPC carrier, sequential unary calls/s
  (target >= 1.4), also with empty messages (``..._empty``): the codec bounds both.
* ``inproc_calls_per_s``, ``monitor_events_per_s`` per carrier, ``codec_serialize_us``,
  ``codec_parse_us``: reported.

Numbers are ratios against baselines taken in the same run because the machine is a noisy 2-core
VM; absolute figures are printed for context only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from trionsm.api.connection import Connection, ConnectionEvent, MonitorScopeSelector
from trionsm.api.google.protobuf import Empty
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.samples import sample_connection
from trionsm.transport import MONITOR_CONNECTION, NETWORK_SERVICE, CallContext, open_client, serve

TARGETS = {"grpc_unary_ratio_vs_raw_grpclib": 0.8, "zmq_vs_grpc_unary_ratio": 1.4}


class Echo:
    """NetworkService + MonitorConnection handlers that reply with canned messages."""

    def __init__(self, reply: Connection) -> None:
        self.reply = reply
        self.event = ConnectionEvent(connections={reply.id: reply})

    async def request(self, request: NetworkServiceRequest, ctx: CallContext) -> Connection:
        return self.reply if request.connection is not None else Connection()

    async def close(self, connection: Connection, ctx: CallContext) -> Empty:
        return Empty()

    async def monitor_connections(
        self, selector: MonitorScopeSelector, ctx: CallContext
    ) -> AsyncIterator[ConnectionEvent]:
        for _ in range(int(selector.network_services[0])):
            yield self.event


def codec_figures(message: Connection, rounds: int) -> dict[str, float]:
    data = bytes(message)
    serialize, parse = [], []
    for _ in range(rounds):
        begin = time.perf_counter_ns()
        bytes(message)
        serialize.append(time.perf_counter_ns() - begin)
        begin = time.perf_counter_ns()
        Connection.parse(data)
        parse.append(time.perf_counter_ns() - begin)
    return {
        "codec_serialize_us": round(statistics.median(serialize) / 1000, 1),
        "codec_parse_us": round(statistics.median(parse) / 1000, 1),
        "connection_bytes": len(data),
    }


async def rate(call: Callable[[], Awaitable[Any]], seconds: float) -> float:
    """Sequential calls per second over ``seconds`` (after a short warm-up)."""
    for _ in range(20):
        await call()
    count = 0
    begin = time.perf_counter()
    deadline = begin + seconds
    while time.perf_counter() < deadline:
        await call()
        count += 1
    return count / (time.perf_counter() - begin)


async def measure_carrier(url: str, seconds: float, events: int) -> dict[str, float]:
    connection = sample_connection()
    request = NetworkServiceRequest(connection=connection)
    empty = NetworkServiceRequest()
    handlers = {NETWORK_SERVICE: Echo(connection), MONITOR_CONNECTION: Echo(connection)}
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve(url, handlers, task_status=task_status)
        )
        async with open_client(server.url) as client:
            unary = await rate(lambda: client.network_service.request(request), seconds)
            unary_empty = await rate(lambda: client.network_service.request(empty), seconds)
            selector = MonitorScopeSelector(network_services=[str(events)])
            begin = time.perf_counter()
            async with client.monitor_connection.monitor_connections(selector) as stream:
                received = sum([1 async for _ in stream])
            events_per_s = received / (time.perf_counter() - begin)
        nursery.cancel_scope.cancel()
    return {
        "unary_calls_per_s": round(unary, 1),
        "unary_empty_calls_per_s": round(unary_empty, 1),
        "monitor_events_per_s": round(events_per_s, 1),
    }


_RAW_GRPCLIB = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from grpclib.client import Channel
    from grpclib.server import Server
    from trionsm.api.connection import Connection
    from trionsm.api.networkservice import (
        NetworkServiceBase, NetworkServiceRequest, NetworkServiceStub,
    )
    from trionsm.samples import sample_connection

    class Echo(NetworkServiceBase):
        def __init__(self, reply):
            self.reply = reply
        async def request(self, message):
            return self.reply if message.connection is not None else Connection()

    async def rate(call, seconds):
        for _ in range(20):
            await call()
        count, begin = 0, time.perf_counter()
        while time.perf_counter() < begin + seconds:
            await call()
            count += 1
        return count / (time.perf_counter() - begin)

    async def main(seconds):
        connection = sample_connection()
        server = Server([Echo(connection)])
        await server.start("127.0.0.1", 0)
        port = server._server.sockets[0].getsockname()[1]
        channel = Channel("127.0.0.1", port)
        stub = NetworkServiceStub(channel)
        full = NetworkServiceRequest(connection=connection)
        empty = NetworkServiceRequest()
        result = {
            "unary_calls_per_s": await rate(lambda: stub.request(full), seconds),
            "unary_empty_calls_per_s": await rate(lambda: stub.request(empty), seconds),
        }
        channel.close()
        server.close()
        await server.wait_closed()
        print(json.dumps(result))

    asyncio.run(main(float(sys.argv[1])))
    """
)


def raw_grpclib(seconds: float) -> dict[str, float]:
    """The baseline: grpclib on plain asyncio in a separate process (no trio-asyncio there)."""
    out = subprocess.run(
        [sys.executable, "-c", _RAW_GRPCLIB, str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {key: round(value, 1) for key, value in json.loads(out.splitlines()[-1]).items()}


async def run(seconds: float, events: int) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "transport"}
    result.update(codec_figures(sample_connection(), 2000))
    print("raw grpclib baseline (separate process)...", file=sys.stderr)
    baseline = raw_grpclib(seconds)
    result["raw_grpclib"] = baseline
    carriers = {
        "inproc": "inproc://bench",
        "grpc": "tcp://127.0.0.1:0",
        "zmq": "zmq+tcp://127.0.0.1:0",
    }
    for name, url in carriers.items():
        print(f"{name}...", file=sys.stderr)
        result[name] = await measure_carrier(url, seconds, events)
    grpc, zmq = result["grpc"], result["zmq"]
    result["inproc_calls_per_s"] = result["inproc"]["unary_calls_per_s"]
    result["monitor_events_per_s"] = {c: result[c]["monitor_events_per_s"] for c in carriers}
    result["grpc_unary_ratio_vs_raw_grpclib"] = round(
        grpc["unary_calls_per_s"] / baseline["unary_calls_per_s"], 3
    )
    result["zmq_vs_grpc_unary_ratio"] = round(
        zmq["unary_calls_per_s"] / grpc["unary_calls_per_s"], 3
    )
    result["zmq_vs_grpc_unary_ratio_empty"] = round(
        zmq["unary_empty_calls_per_s"] / grpc["unary_empty_calls_per_s"], 3
    )
    result["targets"] = TARGETS
    result["meets_targets"] = {key: result[key] >= target for key, target in TARGETS.items()}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--events", type=int, default=5000, help="monitor events to stream")
    args = parser.parse_args()
    result = trio.run(run, args.seconds, args.events)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
